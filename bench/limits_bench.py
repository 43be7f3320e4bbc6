"""What the authorize + limit stages cost per call, in process and with Redis.

    .venv/bin/python bench/limits_bench.py                          # in-process only
    .venv/bin/python bench/limits_bench.py --redis redis://127.0.0.1:6379/0

A policy of 1,000 roles, 1,000 argument rules and 1,000 limits over a catalog of 10,000 tool
names (100 upstreams x 100 tools), and 1,000 principals, each holding one role. Role i allows
upstream i % 100; rule i denies tool i's calls when `x` is huge (never, here: every call is
allowed); limit i (role i, per principal, upstream i % 100's tools) and one limit per upstream
for everyone apply, with rates no call reaches. Each call is a random (principal, tool) pair the
principal may call; the steps are built beforehand, so the time is the stages' alone, measured
around `Pipeline.run` with a do-nothing dispatch.

Printed, per pass of `--calls` calls: p50 / p99 in µs. "first" is the first pass (every cache
cold: roles of each principal, visibility and rules of each (roles, tool), limit buckets of each
(principal, tool)); "warm" repeats the same calls. Then authorize alone and limit alone (warm),
and with `--redis`, the same warm pass with the Redis limiter and its added p50 / p99.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from typing import Any

import anyio

from mcpgw.limits import LocalLimiter, RedisLimiter
from mcpgw.limits.base import Limiter
from mcpgw.pipeline import Caller, Pipeline, Principal, Route, Step, StepKind
from mcpgw.pipeline.stages.authorize import Authorize
from mcpgw.pipeline.stages.limit import Limit
from mcpgw.policy.engine import Policy
from mcpgw.policy.models import Condition, Match, PolicySet, Role, Rule
from mcpgw.policy.models import Limit as LimitRule

UPSTREAMS, TOOLS_PER, ROLES = 100, 100, 1000


class Done:
    slot = "dispatch"

    async def __call__(self, step: Step, call_next: Any) -> Any:
        return None


def policy() -> Policy:
    roles = tuple(Role(name=f"role{i}", match=Match(scopes=(f"s{i}",)), allow=(f"srv{i % UPSTREAMS:02d}__*",))
                  for i in range(ROLES))
    rules = tuple(Rule(tool=f"srv{i % UPSTREAMS:02d}__t{i:05d}", effect="deny",
                       when={"x": Condition(min=1e12)}) for i in range(ROLES))
    limits = tuple(LimitRule(roles=(f"role{i}",), tools=(f"srv{i % UPSTREAMS:02d}__*",), rate="1000000000/hour")
                   for i in range(ROLES))
    limits += tuple(LimitRule(tools=(f"srv{u:02d}__*",), rate="1000000000/day", per="upstream")
                    for u in range(UPSTREAMS))
    return Policy(PolicySet(roles=roles, rules=rules, limits=limits, present=True))


def steps(count: int, seed: int = 7) -> list[Step]:
    rng = random.Random(seed)
    principals = [Principal(subject=f"user{i}", scopes=(f"s{i}",)) for i in range(ROLES)]
    out = []
    for _ in range(count):
        i = rng.randrange(ROLES)
        upstream = f"srv{i % UPSTREAMS:02d}"
        tool = f"t{(i % UPSTREAMS) + UPSTREAMS * rng.randrange(TOOLS_PER):05d}"
        out.append(Step(StepKind.TOOL_CALL, Caller("stdio"), target=f"{upstream}__{tool}", arguments={"x": 1},
                        principal=principals[i], route=Route(upstream, tool)))
    return out


async def timed(pipeline: Pipeline, calls: list[Step]) -> list[float]:
    out = []
    run = pipeline.run
    clock = time.perf_counter_ns
    for step in calls:
        start = clock()
        await run(step)
        out.append((clock() - start) / 1000)
    return out


def summary(label: str, samples: list[float]) -> tuple[float, float]:
    p50 = statistics.median(samples)
    p99 = statistics.quantiles(samples, n=100)[98]
    print(f"  {label:<34} p50 {p50:7.2f} µs   p99 {p99:8.2f} µs   ({len(samples)} calls)")
    return p50, p99


async def main(args: argparse.Namespace) -> None:
    built = time.perf_counter()
    compiled = policy()
    local: Limiter = LocalLimiter()
    both = Pipeline([Authorize(compiled), Limit(compiled, local), Done()])
    print(f"policy: {ROLES} roles, {ROLES} rules, {len(compiled.source.limits)} limits; "
          f"{UPSTREAMS * TOOLS_PER} tool names; compiled in {time.perf_counter() - built:.2f} s")
    calls = steps(args.calls)
    print("authorize + limit, in-process limiter:")
    summary("first pass (caches cold)", await timed(both, calls))
    local_p50, local_p99 = summary("warm", await timed(both, calls))
    summary("authorize alone (warm)", await timed(Pipeline([Authorize(compiled), Done()]), calls))
    limit_only = Pipeline([Limit(compiled, local), Done()])
    summary("limit alone, first pass", await timed(limit_only, calls))
    summary("limit alone (warm)", await timed(limit_only, calls))
    print(f"  target: <= 20 µs p50 -> {'met' if local_p50 <= 20 else 'MISSED'}")
    if args.redis:
        prefix = f"mcpgw-bench:{uuid.uuid4().hex}:"
        redis = RedisLimiter(args.redis, display_url="redis", timeout=2.0)
        try:
            shared = Pipeline([Authorize(compiled), Limit(compiled, redis, prefix), Done()])
            sample = calls[: args.redis_calls]
            await timed(shared, sample[:200])
            print("authorize + limit, Redis limiter (one EVALSHA round trip per call, 2 keys):")
            p50, p99 = summary("warm", await timed(shared, sample))
            print(f"  added by Redis: p50 +{p50 - local_p50:.1f} µs, p99 +{p99 - local_p99:.1f} µs")
        finally:
            keys = [key async for key in redis._client.scan_iter(match=f"{prefix}*", count=1000)]
            for start in range(0, len(keys), 1000):
                await redis._client.delete(*keys[start:start + 1000])
            await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--redis", default=None, help="a Redis URL: also measure the Redis limiter")
    parser.add_argument("--redis-calls", type=int, default=5000)
    anyio.run(main, parser.parse_args())
