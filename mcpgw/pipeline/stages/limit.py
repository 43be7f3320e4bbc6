"""Limit: rate limits from `policies/*.toml`, enforced on every `tools/call` before it is forwarded.

Placed after authorize (a call the policy refuses costs nothing) and resolve (a per-upstream
limit needs the upstream), before guard_in (nobody is asked to approve a call that a limit
would refuse). Only `tools/call` counts: limits are written over tool names (`tools` globs over
exported names); listings, prompts, resources and completions are not limited.

Which limits apply to a call depends on the caller (roles, subject, client) and the tool. Both
are resolved once and cached for the snapshot: the caller's limits once per principal, the
buckets of a (caller, tool, upstream) once — so a call costs two dictionary lookups and one
`acquire`, whatever the number of limits. The counters live in the `Limiter` (in process or
in Redis), which outlives this stage: a policy reload builds a new stage on the same limiter.
Each limit's keys carry a hash of its definition, so an unchanged limit keeps counting across
reloads and an edited one starts afresh.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from mcpgw.limits.base import Bucket, Limiter, LimiterUnavailable
from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import LimitsUnavailable, RateLimited
from mcpgw.pipeline.step import NOBODY, Principal, Step, StepKind
from mcpgw.policy.engine import Policy, glob_matcher
from mcpgw.policy.models import Limit as LimitRule

CACHE_LIMIT = 200_000
NO_ROLE = "-"
"""The per-role bucket of callers that hold none of the roles concerned."""


def rule_digest(rule: LimitRule) -> str:
    """Identifies a limit's definition: its counters' keys start with it."""
    return hashlib.sha256(rule.model_dump_json().encode()).hexdigest()[:12]


class CompiledLimit:
    __slots__ = ("_clients", "_subjects", "count", "everyone", "global_bucket", "key", "label", "name", "per",
                 "roles", "rule", "summary", "tools", "window")

    def __init__(self, rule: LimitRule, key_prefix: str) -> None:
        self.rule = rule
        self.count, window = rule.per_window
        self.window = float(window)
        self.per = rule.per
        self.key = f"{key_prefix}{rule_digest(rule)}:"
        self.summary = f"{rule.rate} per {rule.per} on tools {', '.join(rule.tools)}"
        self.name = rule.name
        self.label = rule.name or self.summary
        """What `step.rule` and the audit trail say decided a refusal."""
        self.tools = glob_matcher(rule.tools)
        self.roles = frozenset(rule.roles)
        self._subjects = glob_matcher(rule.subjects)
        self._clients = glob_matcher(rule.clients)
        self.everyone = not (rule.roles or rule.subjects or rule.clients)
        self.global_bucket = Bucket(self.key + "global", self.count, self.window)

    def covers(self, principal: Principal, roles: tuple[str, ...]) -> bool:
        """A limit that names roles, subjects or clients applies to a caller matching any of them."""
        return (
            self.everyone
            or not self.roles.isdisjoint(roles)
            or self._subjects(principal.subject)
            or (principal.client_id is not None and self._clients(principal.client_id))
        )

    def buckets(self, who: _Who, upstream: str) -> list[Bucket]:
        if self.per == "global":
            return [self.global_bucket]
        if self.per == "principal":
            return [Bucket(self.key + who.principal_key, self.count, self.window)]
        if self.per == "upstream":
            return [Bucket(f"{self.key}u:{upstream}", self.count, self.window)]
        # per role: one bucket per role concerned that the caller holds (the limit's roles, or all
        # of the caller's when it names none); callers holding none of them share one bucket.
        held = [r for r in who.roles if not self.roles or r in self.roles] or [NO_ROLE]
        return [Bucket(f"{self.key}r:{role}", self.count, self.window) for role in held]

    def refusal_message(self, target: str, retry_after: float) -> str:
        which = f"{self.name!r} ({self.summary})" if self.name else f"({self.summary})"
        return f"rate limit {which} reached for {target!r}; retry in {_seconds(retry_after)} s"


class _Who:
    """A caller as the limits see it: the limits that cover it and its bucket names."""

    __slots__ = ("limits", "principal_key", "roles")

    def __init__(self, limits: tuple[CompiledLimit, ...], roles: tuple[str, ...], principal: Principal) -> None:
        self.limits = limits
        self.roles = roles
        self.principal_key = f"p:{principal.issuer or ''}#{principal.subject}"


_Plan = tuple[tuple[Bucket, ...], tuple[CompiledLimit, ...]]
"""The buckets a call counts against, and for each the limit it belongs to."""


class Limit:
    slot = "limit"

    def __init__(self, policy: Policy, limiter: Limiter, key_prefix: str = "mcpgw:limit:") -> None:
        self.policy = policy
        self.limiter = limiter
        compiled: dict[str, CompiledLimit] = {}
        for rule in policy.source.limits:
            # Two identical limits would share keys and count every call twice: keep one.
            limit = CompiledLimit(rule, key_prefix)
            compiled.setdefault(limit.key, limit)
        self.limits = tuple(compiled.values())
        self._who: dict[Principal, _Who] = {}
        self._plans: dict[tuple[_Who, str, str], _Plan] = {}

    async def __call__(self, step: Step, call_next: Next) -> Any:
        if not self.limits or step.kind is not StepKind.TOOL_CALL:
            return await call_next(step)
        principal = step.principal or NOBODY
        who = self._who.get(principal) or self._who_of(principal)
        upstream = step.route.upstream if step.route is not None else ""
        plan = self._plans.get((who, step.target, upstream)) or self._plan(who, step.target, upstream)
        buckets, owners = plan
        if buckets:
            try:
                refusal = await self.limiter.acquire(buckets)
            except LimiterUnavailable:
                raise LimitsUnavailable(f"rate limits cannot be checked right now, so {step.target!r} was not "
                                        "called (the gateway fails closed); try again shortly") from None
            if refusal is not None:
                limit = owners[refusal.index]
                step.rule = limit.label
                retry_after = math.ceil(refusal.retry_after * 1000) / 1000
                raise RateLimited(limit.refusal_message(step.target, retry_after), limit=limit.label,
                                  retry_after=retry_after)
        return await call_next(step)

    def _who_of(self, principal: Principal) -> _Who:
        roles = self.policy.roles_of(principal)
        who = _Who(tuple(limit for limit in self.limits if limit.covers(principal, roles)), roles, principal)
        if len(self._who) >= CACHE_LIMIT:
            self._who.clear()
            self._plans.clear()  # keyed by the _Who objects just dropped
        self._who[principal] = who
        return who

    def _plan(self, who: _Who, tool: str, upstream: str) -> _Plan:
        buckets: list[Bucket] = []
        owners: list[CompiledLimit] = []
        for limit in who.limits:
            if limit.tools(tool):
                for bucket in limit.buckets(who, upstream):
                    buckets.append(bucket)
                    owners.append(limit)
        plan = (tuple(buckets), tuple(owners))
        if len(self._plans) >= CACHE_LIMIT:
            self._plans.clear()
        self._plans[(who, tool, upstream)] = plan
        return plan


def _seconds(value: float) -> str:
    """Rounded up, so an agent that waits that long finds room: 0.2, 2.5, 12, 3600."""
    if value < 10:
        return f"{math.ceil(value * 10) / 10:g}"
    return str(math.ceil(value))
