"""A `PolicySet` compiled for one snapshot into the decisions the pipeline asks for.

Cost per call does not grow with the number of rules: the roles of a principal are matched once
per principal, the visibility of a name once per (roles, name), the argument rules that can
apply to a tool are selected once per tool; all three are cached (bounded) for the snapshot's
lifetime, and a reload builds a new `Policy` with empty caches.

Decisions name the rule that made them, so `mcpgw check --as`, errors and the audit trail can
say why.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

from mcpgw.pipeline.step import Principal
from mcpgw.policy.models import Condition, PolicySet, Role, Rule

Effect = Literal["allow", "deny", "approve"]
CACHE_LIMIT = 200_000


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    rule: str
    """Which rule decided, in words: "role 'support' allow 'crm__*'", "defaults: deny", ..."""
    message: str | None = None


ALLOW_ALL = Decision("allow", "no policy configured")


def glob_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """One compiled test for a set of globs (fnmatch, case-sensitive)."""
    if not patterns:
        return lambda _: False
    if "*" in patterns:
        return lambda _: True
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda value: regex.match(value) is not None


class _Role:
    def __init__(self, role: Role) -> None:
        self.name = role.name
        self.scopes = frozenset(role.match.scopes)
        self._subjects = glob_matcher(role.match.subjects)
        self._clients = glob_matcher(role.match.clients)
        self._groups = glob_matcher(role.match.groups)
        self.allow = tuple((p, glob_matcher((p,))) for p in role.allow)
        self.deny = tuple((p, glob_matcher((p,))) for p in role.deny)
        self.allows_any = glob_matcher(role.allow)
        self.denies_any = glob_matcher(role.deny)

    def matches(self, principal: Principal) -> bool:
        return (
            bool(self.scopes.intersection(principal.scopes))
            or self._subjects(principal.subject)
            or (principal.client_id is not None and self._clients(principal.client_id))
            or any(self._groups(group) for group in principal.roles)
        )


class _Rule:
    def __init__(self, rule: Rule, index: int) -> None:
        self.rule = rule
        self.label = rule.name or f"rule #{index + 1} ({rule.effect} {rule.tool})"
        self.applies_to = glob_matcher((rule.tool,))
        self.roles = frozenset(rule.roles)
        self.conditions = tuple((path.split("."), path, cond) for path, cond in rule.when.items())

    def matches(self, arguments: dict[str, Any] | None) -> bool:
        unknown = False
        for parts, _, condition in self.conditions:
            holds = _holds(condition, _lookup(arguments, parts))
            if holds is False:
                return False
            unknown = unknown or holds is None
        # A value the condition cannot judge (a string where a number was expected) must not
        # slip past a deny or an approval: it counts as matching those, and never as an allow.
        return not unknown or self.rule.effect != "allow"


_MISSING = object()


def _lookup(arguments: dict[str, Any] | None, parts: list[str]) -> Any:
    value: Any = arguments or {}
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _holds(c: Condition, value: Any) -> bool | None:
    """True / False, or None when the value's type does not let the condition judge it."""
    if c.present is not None and (value is not _MISSING) != c.present:
        return False
    if value is _MISSING:
        return c.present is False
    verdict: bool | None = True
    if c.equals is not None and value != c.equals:
        return False
    if c.in_ is not None and value not in c.in_:
        return False
    if c.not_in is not None and value in c.not_in:
        return False
    if c.max is not None or c.min is not None:
        number = _number(value)
        if number is None:
            verdict = None
        elif (c.max is not None and number > c.max) or (c.min is not None and number < c.min):
            return False
    if c.pattern is not None:
        if not isinstance(value, str):
            verdict = None
        elif re.fullmatch(c.pattern, value) is None:
            return False
    if c.max_length is not None or c.min_length is not None:
        if not isinstance(value, str | list | dict):
            verdict = None
        elif (c.max_length is not None and len(value) > c.max_length) or (
                c.min_length is not None and len(value) < c.min_length):
            return False
    return verdict


class Policy:
    """The compiled policy of one snapshot."""

    def __init__(self, policy: PolicySet) -> None:
        self.source = policy
        self.present = policy.present
        self._default = Decision(policy.defaults.effect, f"defaults: {policy.defaults.effect}")
        self._roles = tuple(_Role(r) for r in policy.roles)
        self._rules = tuple(_Rule(r, i) for i, r in enumerate(policy.rules))
        self._role_cache: dict[Hashable, tuple[str, ...]] = {}
        self._visible_cache: dict[tuple[tuple[str, ...], str], Decision] = {}
        self._rules_cache: dict[str, tuple[_Rule, ...]] = {}
        self._by_name = {r.name: r for r in self._roles}

    def roles_of(self, principal: Principal) -> tuple[str, ...]:
        """The policy roles a principal holds (cached per principal)."""
        roles = self._role_cache.get(principal)
        if roles is None:
            roles = tuple(r.name for r in self._roles if r.matches(principal))
            if len(self._role_cache) >= CACHE_LIMIT:
                self._role_cache.clear()
            self._role_cache[principal] = roles
        return roles

    def visible(self, name: str, roles: tuple[str, ...]) -> Decision:
        """May a principal holding `roles` see (and so call) `name`? Deny wins over allow."""
        if not self.present:
            return ALLOW_ALL
        key = (roles, name)
        decision = self._visible_cache.get(key)
        if decision is None:
            decision = self._decide_visible(name, roles)
            if len(self._visible_cache) >= CACHE_LIMIT:
                self._visible_cache.clear()
            self._visible_cache[key] = decision
        return decision

    def _decide_visible(self, name: str, roles: tuple[str, ...]) -> Decision:
        held = [self._by_name[r] for r in roles]
        for role in held:
            if role.denies_any(name):
                pattern = next(p for p, match in role.deny if match(name))
                return Decision("deny", f"role {role.name!r} deny {pattern!r}")
        for role in held:
            if role.allows_any(name):
                pattern = next(p for p, match in role.allow if match(name))
                return Decision("allow", f"role {role.name!r} allow {pattern!r}")
        return self._default

    def may_ask(self, name: str) -> bool:
        """Could a call of `name` need a human's approval (for some caller and arguments)?"""
        return any(r.rule.effect == "approve" for r in self.rules_for(name))

    def rules_for(self, name: str) -> tuple[_Rule, ...]:
        rules = self._rules_cache.get(name)
        if rules is None:
            rules = tuple(r for r in self._rules if r.applies_to(name))
            if len(self._rules_cache) >= CACHE_LIMIT:
                self._rules_cache.clear()
            self._rules_cache[name] = rules
        return rules

    def check_call(self, name: str, arguments: dict[str, Any] | None, roles: tuple[str, ...]) -> Decision:
        """The decision for one tools/call: visibility, then the argument rules.

        Among the rules that apply to the tool and the caller's roles: a matching `deny` wins,
        then a matching `approve`; if the tool has `allow` rules, one of them must match
        (they are the only argument shapes permitted), else the call is denied.
        """
        decision = self.visible(name, roles)
        if decision.effect == "deny" or not self.present:
            return decision
        applicable = [r for r in self.rules_for(name) if not r.roles or r.roles.intersection(roles)]
        if not applicable:
            return decision
        matched = [r for r in applicable if r.matches(arguments)]
        for effect in ("deny", "approve"):
            for rule in matched:
                if rule.rule.effect == effect:
                    return Decision(effect, rule.label, rule.rule.message)
        allows = [r for r in applicable if r.rule.effect == "allow"]
        if allows and not any(r in matched for r in allows):
            return Decision("deny", f"{', '.join(r.label for r in allows)}: no allow rule matches these arguments",
                            "these arguments are not among those the policy allows for this tool")
        if allows:
            return Decision("allow", next(r.label for r in matched if r.rule.effect == "allow"))
        return decision
