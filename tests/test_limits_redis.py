"""The Redis limiter against a real Redis: the same exact edges as in process, atomicity across
clients, the script surviving a flush, keys that expire, and outages handled as configured.

Needs MCPGW_TEST_REDIS_URL (CI sets it); every test uses keys under a prefix of its own and
deletes them afterwards. The outage tests run a private `redis-server` they can stop and start.
"""

from __future__ import annotations

import logging
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from mcpgw.config.limits import LimitsSettings
from mcpgw.limits import Bucket, Guarded, LimiterUnavailable, LocalLimiter, RedisLimiter, Refusal, build_limiter
from tests.conftest import REDIS_URL, needs_redis, run_process

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


@asynccontextmanager
async def limiter(clock: Clock | None = None, url: str | None = None) -> AsyncIterator[RedisLimiter]:
    url = url or REDIS_URL
    assert url is not None
    redis = RedisLimiter(url, display_url="redis://test", timeout=0.5, clock=clock)
    try:
        yield redis
    finally:
        await redis.aclose()


@needs_redis
async def test_exact_edges_with_an_injected_clock(prefix: str) -> None:
    clock = Clock()
    bucket = [Bucket(prefix + "k", 3, 60.0)]
    start = clock.now
    async with limiter(clock) as redis:
        for offset in (0.0, 10.0, 20.0):
            clock.now = start + offset
            assert await redis.acquire(bucket) is None
        clock.now = start + 30.0
        assert await redis.acquire(bucket) == Refusal(0, 30.0)
        clock.now = start + 59.999
        refusal = await redis.acquire(bucket)
        assert refusal is not None and refusal.retry_after == pytest.approx(0.001)
        clock.now = start + 60.0
        assert await redis.acquire(bucket) is None
        assert await redis.acquire(bucket) is not None
        clock.now = start + 70.0
        assert await redis.acquire(bucket) is None


@needs_redis
async def test_on_the_servers_clock_n_pass_then_a_refusal_for_about_one_window(prefix: str) -> None:
    bucket = [Bucket(prefix + "k", 5, 3600.0)]
    async with limiter() as redis:
        assert [await redis.acquire(bucket) for _ in range(5)] == [None] * 5
        refusal = await redis.acquire(bucket)
        assert refusal is not None and refusal.index == 0
        assert 3590 < refusal.retry_after <= 3600
        ttl = await redis._client.pttl(prefix + "k")
        assert 3_590_000 < ttl <= 3_600_000  # the key goes away one window after its last call


@needs_redis
async def test_all_or_nothing_across_buckets(prefix: str) -> None:
    roomy, tight = Bucket(prefix + "roomy", 2, 60.0), Bucket(prefix + "tight", 1, 60.0)
    async with limiter() as redis:
        assert await redis.acquire([tight]) is None
        for _ in range(3):
            refusal = await redis.acquire([roomy, tight])
            assert refusal is not None and refusal.index == 1
        assert [await redis.acquire([roomy]) for _ in range(3)][:2] == [None, None]


@needs_redis
async def test_concurrent_replicas_admit_exactly_the_limit(prefix: str) -> None:
    bucket = [Bucket(prefix + "shared", 25, 3600.0)]
    admitted = 0

    async def replica() -> None:
        nonlocal admitted
        async with limiter() as redis, anyio.create_task_group() as tg:
            async def one() -> None:
                nonlocal admitted
                refusal = await redis.acquire(bucket)
                admitted += refusal is None
            for _ in range(20):
                tg.start_soon(one)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(replica)
    assert admitted == 25


@needs_redis
async def test_the_script_is_loaded_again_after_a_flush(prefix: str) -> None:
    async with limiter() as redis:
        assert await redis.acquire([Bucket(prefix + "k", 2, 60.0)]) is None
        await redis._client.script_flush()
        assert await redis.acquire([Bucket(prefix + "k", 2, 60.0)]) is None
        assert await redis.acquire([Bucket(prefix + "k", 2, 60.0)]) is not None


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_redis_fails_fast_and_says_where_never_the_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    settings = LimitsSettings(url=url)
    assert settings.display_url is not None and "hunter2" not in settings.display_url
    assert "hunter2" not in repr(settings)
    async with limiter(url=url) as redis:
        redis.display_url = settings.display_url
        with anyio.fail_after(2), pytest.raises(LimiterUnavailable) as caught:
            await redis.acquire([Bucket("k", 1, 60.0)])
    assert settings.display_url in str(caught.value) and "hunter2" not in str(caught.value)


async def test_fail_closed_refuses_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    guarded = build_limiter(LimitsSettings(url=f"redis://127.0.0.1:{closed_port()}/0"))
    assert isinstance(guarded, Guarded)
    caplog.set_level(logging.ERROR, "mcpgw.limits")
    for _ in range(5):
        with pytest.raises(LimiterUnavailable):
            await guarded.acquire([Bucket("k", 100, 60.0)])
    assert [r.getMessage() for r in caplog.records if "REFUSED" in r.getMessage()] != []
    assert len(caplog.records) == 1
    await guarded.aclose()


@asynccontextmanager
async def private_redis(port: int) -> AsyncIterator[None]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    async with run_process(argv, read="stdout") as proc:
        await proc.wait_for("Ready to accept connections", timeout=10)
        yield


async def test_local_fallback_serves_during_an_outage_and_says_so_at_both_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    clock = Clock()
    shared = RedisLimiter(f"redis://127.0.0.1:{port}/0", display_url=f"redis://127.0.0.1:{port}/0", timeout=0.5)
    guarded = Guarded(shared, fallback=LocalLimiter(clock), where=shared.display_url, retry_interval=1.0,
                      clock=clock)
    caplog.set_level(logging.ERROR, "mcpgw.limits")
    bucket = [Bucket("mcpgw-test:fallback", 2, 60.0)]
    try:
        async with private_redis(port):
            assert await guarded.acquire(bucket) is None  # shared
        # the server is gone: counted in process, one ERROR for the outage
        assert [await guarded.acquire(bucket) for _ in range(3)][:2] == [None, None]
        assert await guarded.acquire(bucket) is not None
        assert guarded.down and len(caplog.records) == 1 and "counting in this process" in caplog.text
        async with private_redis(port):
            clock.now += 1.0  # past retry_interval: Redis is tried again
            # Redis again (a new, empty server): the in-process bucket, which is full, is not used
            assert [await guarded.acquire(bucket) for _ in range(3)][:2] == [None, None]
            assert await guarded.acquire(bucket) is not None
        assert not guarded.down
        assert len(caplog.records) == 2 and "reachable again" in caplog.records[1].getMessage()
    finally:
        await guarded.aclose()
