"""The policy language: loading (precise errors), matching principals, deny-wins, argument rules."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mcpgw.pipeline.step import Principal
from mcpgw.policy.engine import Policy
from mcpgw.policy.explain import parse_principal
from mcpgw.policy.loader import PolicyError, load_policies

SUPPORT = Principal(subject="alice", client_id="desk-app", scopes=("support",))
BILLING = Principal(subject="bob", client_id="desk-app", scopes=("billing",), roles=("finance",))
NOBODY = Principal(subject="eve", client_id="other")


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def compile_policy(tmp_path: Path, text: str, *more: tuple[str, str]) -> Policy:
    folder = tmp_path / "policies"
    write(folder, "main.toml", text)
    for name, body in more:
        write(folder, name, body)
    return Policy(load_policies(folder))


BASE = """
    [[roles]]
    name = "support"
    match = { scopes = ["support"] }
    allow = ["crm__*", "time__*"]
    deny  = ["crm__delete_*"]

    [[roles]]
    name = "finance"
    match = { groups = ["finance"] }
    allow = ["payments__*", "crm__delete_invoice"]

    [[roles]]
    name = "desk"
    match = { clients = ["desk-*"] }
    allow = ["mcpgw://crm/*", "crm_prompt"]
    """


def test_no_folder_means_no_policy_and_everything_allowed(tmp_path: Path) -> None:
    policy = Policy(load_policies(tmp_path / "absent"))
    assert not policy.present
    assert policy.check_call("anything__at_all", {}, ()).effect == "allow"


def test_roles_match_on_scopes_groups_clients_and_subjects(tmp_path: Path) -> None:
    policy = compile_policy(tmp_path, BASE + """
        [[roles]]
        name = "admins"
        match = { subjects = ["root", "ad*"] }
        allow = ["*"]
        """)
    assert policy.roles_of(SUPPORT) == ("support", "desk")
    assert policy.roles_of(BILLING) == ("finance", "desk")
    assert policy.roles_of(NOBODY) == ()
    assert policy.roles_of(Principal(subject="admin7")) == ("admins",)


def test_deny_wins_over_allow_even_from_another_role(tmp_path: Path) -> None:
    policy = compile_policy(tmp_path, BASE)
    both = ("support", "finance")
    assert policy.visible("crm__get_customer", ("support",)).effect == "allow"
    decision = policy.visible("crm__delete_invoice", both)
    assert decision.effect == "deny" and decision.rule == "role 'support' deny 'crm__delete_*'"
    assert policy.visible("crm__delete_invoice", ("finance",)).effect == "allow"


def test_default_effect_and_resources_prompts_by_uri_and_name(tmp_path: Path) -> None:
    policy = compile_policy(tmp_path, BASE)
    assert policy.visible("payments__refund", ("support",)).rule == "defaults: deny"
    assert policy.visible("mcpgw://crm/customers/1", ("desk",)).effect == "allow"
    assert policy.visible("mcpgw://hr/people/1", ("desk",)).effect == "deny"
    assert policy.visible("crm_prompt", ("desk",)).effect == "allow"
    allowing = compile_policy(tmp_path / "b", '[defaults]\neffect = "allow"\n' + BASE)
    assert allowing.visible("payments__refund", ("support",)).effect == "allow"
    assert allowing.visible("crm__delete_x", ("support",)).effect == "deny"


RULES = BASE + """
    [[rules]]
    name = "small refunds need approval"
    tool = "payments__refund"
    when = { amount = { max = 100 } }
    effect = "approve"

    [[rules]]
    name = "no large refunds"
    tool = "payments__refund"
    when = { amount = { min = 100.01 } }
    effect = "deny"
    message = "refunds over 100 go through the finance desk"

    [[rules]]
    tool = "crm__search"
    when = { query = { pattern = "[a-z ]+", max_length = 20 }, "filter.region" = { in = ["eu", "us"] } }
    effect = "allow"

    [[rules]]
    tool = "crm__export"
    effect = "approve"
    roles = ["support"]
    """


def test_argument_rules_deny_wins_then_approve(tmp_path: Path) -> None:
    policy = compile_policy(tmp_path, RULES)
    finance = ("finance",)
    assert policy.check_call("payments__refund", {"amount": 50}, finance).effect == "approve"
    big = policy.check_call("payments__refund", {"amount": 5000}, finance)
    assert big.effect == "deny" and big.rule == "no large refunds" and "finance desk" in (big.message or "")
    # A value the rule cannot judge (a string for a number) is not a way around it.
    sneaky = policy.check_call("payments__refund", {"amount": "5000"}, finance)
    assert sneaky.effect == "deny"
    # Rules never grant what roles do not: a support agent cannot refund at all.
    assert policy.check_call("payments__refund", {"amount": 50}, ("support",)).rule == "defaults: deny"


def test_allow_rules_are_the_only_argument_shapes_permitted(tmp_path: Path) -> None:
    policy = compile_policy(tmp_path, RULES)
    support = ("support",)
    ok = {"query": "acme corp", "filter": {"region": "eu"}}
    assert policy.check_call("crm__search", ok, support).effect == "allow"
    for bad in ({"query": "ACME; DROP", "filter": {"region": "eu"}},
                {"query": "a" * 21, "filter": {"region": "eu"}},
                {"query": "acme", "filter": {"region": "apac"}},
                {"query": "acme"},
                {"query": 7, "filter": {"region": "eu"}}):
        decision = policy.check_call("crm__search", bad, support)
        assert decision.effect == "deny" and "no allow rule matches" in decision.rule, bad


def test_rules_limited_to_roles(tmp_path: Path) -> None:
    policy = compile_policy(tmp_path, '[defaults]\neffect = "allow"\n' + RULES)
    assert policy.check_call("crm__export", {}, ("support",)).effect == "approve"
    assert policy.check_call("crm__export", {}, ("finance",)).effect == "allow"
    assert policy.may_ask("crm__export") and not policy.may_ask("crm__get")


@pytest.mark.parametrize(("condition", "value", "effect"), [
    ("{ equals = 'x' }", "x", "deny"), ("{ equals = 'x' }", "y", "allow"),
    ("{ in = [1, 2] }", 2, "deny"), ("{ not_in = [1, 2] }", 2, "allow"),
    ("{ present = false }", None, "deny"), ("{ present = true }", None, "allow"),
    ("{ min_length = 3 }", [1, 2, 3], "deny"), ("{ max = 10 }", True, "deny"),
])
def test_each_condition(tmp_path: Path, condition: str, value: object, effect: str) -> None:
    policy = compile_policy(tmp_path, f"""
        [defaults]
        effect = "allow"
        [[rules]]
        tool = "t"
        when = {{ arg = {condition} }}
        effect = "deny"
        """)
    arguments = {} if value is None else {"arg": value}
    assert policy.check_call("t", arguments, ()).effect == effect


def test_errors_name_file_line_and_key_for_every_problem(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    write(folder, "a.toml", """
        [[roles]]
        name = "support"
        match = { scope = ["support"] }
        allow = ["crm__*"]

        [[rules]]
        tool = "x"
        effect = "maybe"
        """)
    write(folder, "b.toml", """
        [[roles]]
        name = "ops"
        match = { subjects = ["*"] }

        [[limits]]
        rate = "sixty per minute"

        [[rules]]
        tool = "y"
        effect = "deny"
        roles = ["nobody"]
        when = { n = { pattern = "(" } }
        """)
    with pytest.raises(PolicyError) as info:
        load_policies(folder)
    text = str(info.value)
    assert f"{folder}/a.toml:4: roles[0].match.scope: unknown key" in text
    assert f"{folder}/a.toml:9: rules[0].effect: Input should be 'allow', 'deny' or 'approve'" in text
    assert f"{folder}/b.toml:7: limits[0].rate: rate must look like N/second" in text
    assert "b.toml:13: rules[0].when.n.pattern: invalid regular expression" in text


def test_cross_file_problems(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    write(folder, "a.toml", '[defaults]\neffect = "deny"\n[[roles]]\nname = "x"\nmatch = { subjects = ["*"] }\n')
    write(folder, "b.toml", '[defaults]\neffect = "allow"\n[[roles]]\nname = "x"\nmatch = { subjects = ["*"] }\n'
                            '[[rules]]\ntool = "t"\neffect = "deny"\nroles = ["ghost"]\n')
    with pytest.raises(PolicyError) as info:
        load_policies(folder)
    text = str(info.value)
    assert "b.toml:1: defaults: conflicts with [defaults] in" in text
    assert "b.toml:4: roles[0].name: role 'x' is already defined in" in text
    assert "b.toml:9: rules[0].roles: unknown role 'ghost'" in text


def test_an_existing_but_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    with pytest.raises(PolicyError, match=r"holds no \*\.toml file"):
        load_policies(tmp_path / "policies")


def test_parse_principal_for_check_as() -> None:
    principal = parse_principal("sub=alice,scopes=support+billing,client=cli,groups=ops")
    assert principal == Principal(subject="alice", client_id="cli", scopes=("support", "billing"), roles=("ops",))
    with pytest.raises(ValueError, match="cannot read 'role'"):
        parse_principal("sub=alice,role")
