"""Authorize: what this principal may see and call, decided by the compiled policy.

Listings are filtered per principal (cached per roles and catalog version), so an agent never
sees what it may not call; a call to a name it may not see fails exactly like a call to a name
that does not exist. Argument rules are decided here too; a rule that asks for a human's
approval only marks the step — the guard_in stage asks, after limits, right before forwarding.
"""

from __future__ import annotations

from typing import Any

from mcpgw.catalog import item_key
from mcpgw.pipeline.chain import Next
from mcpgw.pipeline.errors import PolicyDenied, UnknownTarget, unknown_target_message
from mcpgw.pipeline.step import NOBODY, Step, StepKind
from mcpgw.policy.engine import Policy


class Authorize:
    slot = "authorize"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._filtered: dict[tuple[StepKind, tuple[str, ...]], tuple[Any, tuple[Any, ...]]] = {}

    async def __call__(self, step: Step, call_next: Next) -> Any:
        policy = self.policy
        if not policy.present:
            return await call_next(step)
        roles = policy.roles_of(step.principal or NOBODY)
        if step.kind.is_listing:
            return self._filter(step.kind, roles, await call_next(step))
        if step.kind is StepKind.TOOL_CALL:
            decision = policy.check_call(step.target, step.arguments, roles)
        else:
            decision = policy.visible(step.target, roles)
        step.rule = decision.rule
        if decision.effect == "deny":
            if policy.visible(step.target, roles).effect == "deny":
                raise UnknownTarget(unknown_target_message(step.kind, step.target))
            reason = f": {decision.message}" if decision.message else ""
            raise PolicyDenied(f"{step.target!r} was denied by policy ({decision.rule}){reason}")
        step.needs_approval = decision.effect == "approve"
        return await call_next(step)

    def _filter(self, kind: StepKind, roles: tuple[str, ...], items: Any) -> Any:
        key = (kind, roles)
        cached = self._filtered.get(key)
        if cached is not None and cached[0] is items:
            return cached[1]
        visible = self.policy.visible
        filtered = tuple(item for item in items if visible(item_key(item), roles).effect != "deny")
        if len(self._filtered) > 10_000:
            self._filtered.clear()
        self._filtered[key] = (items, filtered)
        return filtered
