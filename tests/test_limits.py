"""Rate limits in process: the sliding window at its exact edges (an injected clock, no sleeps),
which calls count against which buckets, and what a refusal says.

The limit stage runs in a real `Pipeline` behind the real record stage, on a `Policy` compiled
from a real `PolicySet`; the innermost stage is a stand-in for dispatch that counts the calls
that got through.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from mcpgw.config import ConfigError, parse_config
from mcpgw.limits import Bucket, LocalLimiter, Refusal
from mcpgw.pipeline import Caller, Outcome, Pipeline, Principal, Route, Step, StepKind
from mcpgw.pipeline.errors import RateLimited
from mcpgw.pipeline.stages.limit import Limit
from mcpgw.pipeline.stages.record import Record
from mcpgw.policy.engine import Policy
from mcpgw.policy.models import Limit as LimitRule
from mcpgw.policy.models import Match, PolicySet, Role


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Dispatch:
    slot = "dispatch"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, step: Step, call_next: Any) -> Any:
        self.calls.append(step.target)
        return "ok"


ALICE = Principal(subject="alice", scopes=("support",))
BOB = Principal(subject="bob", scopes=("support",))
CAROL = Principal(subject="carol", scopes=("sales",), client_id="cli")
ROLES = (
    Role(name="support", match=Match(scopes=("support",)), allow=("*",)),
    Role(name="sales", match=Match(scopes=("sales",)), allow=("*",)),
)


def policy(*limits: LimitRule) -> Policy:
    return Policy(PolicySet(roles=ROLES, limits=limits, present=True))


class Harness:
    def __init__(self, *limits: LimitRule, limiter: LocalLimiter | None = None) -> None:
        self.clock = Clock()
        self.limiter = limiter or LocalLimiter(self.clock)
        self.dispatch = Dispatch()
        self.stage = Limit(policy(*limits), self.limiter)
        self.pipeline = Pipeline([Record(), self.stage, self.dispatch])

    async def call(self, tool: str = "crm__find", who: Principal = ALICE, upstream: str = "crm",
                   kind: StepKind = StepKind.TOOL_CALL) -> Step:
        step = Step(kind, Caller("stdio"), target=tool, principal=who, route=Route(upstream, tool.split("__")[-1]))
        with contextlib.suppress(RateLimited):
            await self.pipeline.run(step)
        return step

    async def admitted(self, n: int, **kw: Any) -> list[Outcome | None]:
        return [(await self.call(**kw)).outcome for _ in range(n)]


def test_sliding_window_exact_at_both_edges() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    bucket = [Bucket("k", 3, 60.0)]
    start = clock.now
    for offset in (0.0, 10.0, 20.0):
        clock.now = start + offset
        assert limiter.acquire_now(bucket) is None
    clock.now = start + 30.0
    assert limiter.acquire_now(bucket) == Refusal(0, 30.0)  # the first call leaves the window at +60
    clock.now = start + 59.999
    refusal = limiter.acquire_now(bucket)
    assert refusal is not None and refusal.retry_after == pytest.approx(0.001)
    clock.now = start + 60.0  # a call exactly one window old no longer counts
    assert limiter.acquire_now(bucket) is None
    assert limiter.acquire_now(bucket) is not None  # the +10 and +20 calls and this one fill it again
    clock.now = start + 70.0
    assert limiter.acquire_now(bucket) is None


def test_a_refusal_by_one_bucket_consumes_nothing_from_the_others() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    roomy, tight = Bucket("roomy", 2, 60.0), Bucket("tight", 1, 60.0)
    assert limiter.acquire_now([tight]) is None
    for _ in range(5):
        assert limiter.acquire_now([roomy, tight]) == Refusal(1, 60.0)
    assert limiter.acquire_now([roomy]) is None
    assert limiter.acquire_now([roomy]) is None  # both units of `roomy` were still there
    assert limiter.acquire_now([roomy]) is not None


def test_idle_keys_are_swept() -> None:
    clock = Clock()
    limiter = LocalLimiter(clock)
    for i in range(3000):
        limiter.acquire_now([Bucket(f"early-{i}", 1, 1.0)])
    clock.now += 1.0  # the early callers' windows are over
    for i in range(1097):
        limiter.acquire_now([Bucket(f"late-{i}", 1, 1.0)])
    assert len(limiter) == 1097  # the table passed 4096 keys: the idle ones were dropped
    assert limiter.acquire_now([Bucket("late-0", 1, 1.0)]) is not None  # the active ones were kept


@pytest.mark.anyio
async def test_n_allowed_then_refused_with_retry_after_then_allowed_after_the_window() -> None:
    h = Harness(LimitRule(rate="3/minute", tools=("crm__*",), name="crm-calls"))
    assert await h.admitted(3) == [Outcome.OK] * 3
    h.clock.now += 20
    refused = await h.call()
    assert refused.outcome is Outcome.LIMITED
    assert refused.rule == "crm-calls"
    assert refused.error == ("rate limit 'crm-calls' (3/minute per principal on tools crm__*) reached for "
                             "'crm__find'; retry in 40 s")
    h.clock.now += 39.999
    assert (await h.call()).outcome is Outcome.LIMITED
    h.clock.now += 0.001
    assert await h.admitted(3) == [Outcome.OK] * 3
    assert (await h.call()).outcome is Outcome.LIMITED
    assert len(h.dispatch.calls) == 6  # a refused call never reached dispatch


@pytest.mark.anyio
async def test_the_refusal_carries_the_limit_and_seconds_to_wait() -> None:
    h = Harness(LimitRule(rate="2/second"))
    await h.admitted(2)
    h.clock.now += 0.25
    step = Step(StepKind.TOOL_CALL, Caller("stdio"), target="crm__find", principal=ALICE, route=Route("crm", "find"))
    with pytest.raises(RateLimited) as caught:
        await h.pipeline.run(step)
    assert caught.value.limit == "2/second per principal on tools *" == step.rule
    assert caught.value.retry_after == 0.75
    assert caught.value.message.endswith("retry in 0.8 s")


@pytest.mark.anyio
async def test_only_tool_calls_count_and_only_the_tools_named() -> None:
    h = Harness(LimitRule(rate="1/minute", tools=("crm__*",)))
    assert (await h.call("crm__find")).outcome is Outcome.OK
    assert (await h.call("crm__find")).outcome is Outcome.LIMITED
    assert (await h.call("crm__other")).outcome is Outcome.LIMITED  # one bucket for every matching tool
    assert (await h.call("hr__find", upstream="hr")).outcome is Outcome.OK
    for kind in (StepKind.PROMPT_GET, StepKind.RESOURCE_READ, StepKind.COMPLETE):
        assert (await h.call("crm__find", kind=kind)).outcome is Outcome.OK


@pytest.mark.anyio
async def test_per_principal_role_global_and_upstream() -> None:
    h = Harness(LimitRule(rate="1/minute", tools=("a__*",), per="principal"),
                LimitRule(rate="1/minute", tools=("b__*",), per="role"),
                LimitRule(rate="1/minute", tools=("c__*",), per="global"),
                LimitRule(rate="1/minute", tools=("d__*", "e__*"), per="upstream"))
    # per principal: alice and bob each have their own
    assert [(await h.call("a__x", who)).outcome for who in (ALICE, BOB, ALICE)] == [
        Outcome.OK, Outcome.OK, Outcome.LIMITED]
    # per role: alice and bob share the support bucket; carol is in sales
    assert [(await h.call("b__x", who)).outcome for who in (ALICE, BOB, CAROL)] == [
        Outcome.OK, Outcome.LIMITED, Outcome.OK]
    # global: one bucket for everyone
    assert [(await h.call("c__x", who)).outcome for who in (ALICE, CAROL)] == [Outcome.OK, Outcome.LIMITED]
    # per upstream: whoever calls, one bucket per upstream
    assert [(await h.call(tool, who, upstream=tool[0])).outcome
            for tool, who in (("d__x", ALICE), ("d__y", CAROL), ("e__x", CAROL))] == [
        Outcome.OK, Outcome.LIMITED, Outcome.OK]


@pytest.mark.anyio
async def test_who_a_limit_applies_to() -> None:
    h = Harness(LimitRule(rate="1/minute", roles=("sales",)),
                LimitRule(rate="1/minute", subjects=("b*",), tools=("x__*",)),
                LimitRule(rate="1/minute", clients=("cli",), tools=("y__*",)))
    assert await h.admitted(3, who=ALICE) == [Outcome.OK] * 3  # support: not concerned
    assert await h.admitted(2, who=CAROL) == [Outcome.OK, Outcome.LIMITED]
    assert [(await h.call("x__t", who)).outcome for who in (ALICE, BOB, BOB)] == [
        Outcome.OK, Outcome.OK, Outcome.LIMITED]
    assert [(await h.call("y__t", who)).outcome for who in (ALICE, ALICE)] == [Outcome.OK, Outcome.OK]


@pytest.mark.anyio
async def test_several_limits_on_one_call_all_or_nothing() -> None:
    h = Harness(LimitRule(rate="3/minute", name="wide"), LimitRule(rate="1/minute", tools=("crm__slow",), name="slow"))
    assert (await h.call("crm__slow")).outcome is Outcome.OK
    refused = await h.call("crm__slow")
    assert refused.rule == "slow"
    # the refused call took nothing from "wide": two more calls fit
    assert await h.admitted(3, tool="crm__find") == [Outcome.OK, Outcome.OK, Outcome.LIMITED]


@pytest.mark.anyio
async def test_a_policy_reload_keeps_counting_unchanged_limits_and_restarts_edited_ones() -> None:
    kept = LimitRule(rate="2/minute", tools=("crm__*",))
    h = Harness(kept, LimitRule(rate="2/minute", tools=("hr__*",)))
    await h.admitted(2)
    await h.admitted(2, tool="hr__x", upstream="hr")
    # a reload: a new policy and a new stage on the same limiter; the hr limit is edited
    stage = Limit(policy(kept, LimitRule(rate="3/minute", tools=("hr__*",))), h.limiter)
    h.pipeline = Pipeline([Record(), stage, h.dispatch])
    assert (await h.call()).outcome is Outcome.LIMITED
    assert await h.admitted(4, tool="hr__x", upstream="hr") == [Outcome.OK] * 3 + [Outcome.LIMITED]


@pytest.mark.anyio
async def test_identical_limits_count_once_and_no_limits_costs_nothing() -> None:
    rule = LimitRule(rate="2/minute")
    h = Harness(rule, rule)
    assert await h.admitted(3) == [Outcome.OK, Outcome.OK, Outcome.LIMITED]
    free = Harness()
    assert await free.admitted(100) == [Outcome.OK] * 100
    assert len(free.limiter) == 0


def test_the_limits_table() -> None:
    path = Path("/etc/mcpgw/servers.toml")
    config = parse_config('[limits]\nurl = "redis://:${PW}@redis.internal:6380/2"\non_unavailable = "local"\n',
                          path, {"PW": "pa55word"})
    assert config.limits.url == "redis://:pa55word@redis.internal:6380/2"
    assert config.limits.display_url == "redis://redis.internal:6380/2"
    assert "pa55word" not in repr(config)
    assert parse_config("", path, {}).limits.url is None  # default: counters in process, fail-closed
    with pytest.raises(ConfigError) as caught:
        parse_config('[limits]\nurl = "http://:pa55word@x"\non_unavailable = "open"\nkey_prefx = "a"\n', path, {})
    rendered = caught.value.render()
    assert "servers.toml:2: limits.url: must be a redis://host[:port][/db], rediss://... or unix:///path URL" \
        in rendered
    assert "servers.toml:3: limits.on_unavailable:" in rendered and "'fail-closed' or 'local'" in rendered
    assert "servers.toml:4: limits.key_prefx: unknown key" in rendered
    assert "pa55word" not in rendered
