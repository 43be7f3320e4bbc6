"""`mcpgw check --as ...`: what the policy decides for one caller, tool by tool, and why."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpgw.pipeline.step import Principal

if TYPE_CHECKING:
    from mcpgw.gateway import Gateway

_KEYS = {"sub": "subject", "subject": "subject", "client": "client_id", "client_id": "client_id",
         "scope": "scopes", "scopes": "scopes", "group": "roles", "groups": "roles", "role": "roles", "roles": "roles"}


def parse_principal(text: str) -> Principal:
    """`sub=alice,scopes=support+billing,client=cli,groups=ops` (keys may repeat)."""
    fields: dict[str, list[str]] = {"subject": [], "client_id": [], "scopes": [], "roles": []}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in _KEYS:
            raise ValueError(f"--as: cannot read {pair!r}; use key=value pairs with keys "
                             "sub, client, scopes, groups (e.g. 'sub=alice,scopes=support+billing')")
        fields[_KEYS[key.strip()]] += [v for v in value.replace(" ", "+").split("+") if v]
    if len(fields["subject"]) > 1 or len(fields["client_id"]) > 1:
        raise ValueError("--as: give at most one sub and one client")
    return Principal(
        subject=fields["subject"][0] if fields["subject"] else "anonymous",
        client_id=fields["client_id"][0] if fields["client_id"] else None,
        scopes=tuple(fields["scopes"]),
        roles=tuple(fields["roles"]),
    )


def print_decisions(gateway: Gateway, principal: Principal) -> None:
    policy = gateway.policy
    roles = policy.roles_of(principal)
    print(f"as {principal.subject!r} (client {principal.client_id!r}, scopes {list(principal.scopes)}, "
          f"groups {list(principal.roles)}): roles {list(roles) or 'none'}")
    tools = gateway.catalog.tools
    width = max((len(t.name) for t in tools), default=0)
    for tool in tools:
        decision = policy.visible(tool.name, roles)
        effect, why = decision.effect, decision.rule
        notes: list[str] = []
        if effect != "deny" and policy.present:
            for rule in policy.rules_for(tool.name):
                if rule.roles and not rule.roles.intersection(roles):
                    continue
                if not rule.conditions:
                    if rule.rule.effect == "deny" or (rule.rule.effect == "approve" and effect == "allow"):
                        effect, why = rule.rule.effect, rule.label
                    continue
                conditions = ", ".join(f"{path} {c.model_dump(exclude_none=True, by_alias=True)}"
                                       for _, path, c in rule.conditions)
                notes.append(f"{rule.rule.effect} when {conditions} ({rule.label})")
        print(f"  {effect:<8} {tool.name:<{width}}  {why}")
        for note in notes:
            print(f"  {'':<8} {'':<{width}}    + {note}")
