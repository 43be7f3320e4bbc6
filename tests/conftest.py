"""Shared fixtures: real upstream servers, real gateway processes, real SDK clients.

Nothing here is a mock. Upstreams are `tests/upstreams/*.py` run as subprocesses (stdio) or as
HTTP servers on 127.0.0.1; the gateway runs either as a `python -m mcpgw serve` subprocess or
in-process behind the SDK's in-memory client.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
UPSTREAMS = Path(__file__).resolve().parent / "upstreams"
KIT = UPSTREAMS / "kit_server.py"
RAW = UPSTREAMS / "raw_server.py"
SILENT = UPSTREAMS / "silent_server.py"
PY = sys.executable


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stdio_server_toml(name: str, script: Path, *args: str, extra: str = "") -> str:
    quoted = ", ".join(f'"{a}"' for a in (str(script), *args))
    return textwrap.dedent(f"""
        [servers.{name}]
        kind = "stdio"
        command = "{PY}"
        args = [{quoted}]
        """) + textwrap.dedent(extra)


def write_config(tmp_path: Path, body: str, gateway: str = "") -> Path:
    """A servers.toml. Unless a test sets its own, `startup_wait` is long: on a loaded machine the
    upstreams' start-up is slow, and a test's first request should wait for them, not race them."""
    gateway = textwrap.dedent(gateway)
    if "startup_wait" not in gateway:
        gateway += "\nstartup_wait = 60\n"
    path = tmp_path / "servers.toml"
    path.write_text(f"[gateway]\n{gateway}\n" + textwrap.dedent(body))
    return path


def gateway_params(config: Path, env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=PY,
        args=["-m", "mcpgw", "serve", "--config", str(config)],
        env={"PYTHONPATH": str(ROOT), **(env or {})},
        cwd=str(ROOT),
    )


@asynccontextmanager
async def gateway_stdio(config: Path, mode: str = "auto", env: dict[str, str] | None = None,
                        **client_kw: Any) -> AsyncIterator[Client]:
    """A gateway subprocess on stdio, and an SDK client connected to it."""
    async with Client(gateway_params(config, env), mode=mode, cache=None, **client_kw) as client:
        yield client


class Process:
    """A subprocess whose stderr (or stdout) is drained in the background, so it never blocks."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = anyio.Event()

    async def _pump(self, stream: anyio.abc.ByteReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.lines.append(line.decode(errors="replace"))
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        regex = re.compile(pattern)
        with anyio.fail_after(timeout):
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                if self.proc.returncode is not None:
                    raise RuntimeError(f"process exited ({self.proc.returncode}):\n" + "\n".join(self.lines[-30:]))
                changed = self._changed
                with anyio.move_on_after(0.5):  # also re-check the exit status now and then
                    await changed.wait()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def run_process(argv: list[str], *, read: str = "stderr", env: dict[str, str] | None = None,
                      cwd: Path | None = None) -> AsyncIterator[Process]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = await anyio.open_process(argv, env=full_env, cwd=cwd or ROOT, start_new_session=True)
    wrapper = Process(proc)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wrapper._pump, proc.stderr if read == "stderr" else proc.stdout)
            other = proc.stdout if read == "stderr" else proc.stderr
            assert other is not None
            tg.start_soon(_discard, other)
            try:
                yield wrapper
            finally:
                await terminate(proc)
                tg.cancel_scope.cancel()
    finally:
        await terminate(proc)


async def _discard(stream: anyio.abc.ByteReceiveStream) -> None:
    async for _ in stream:
        pass


async def terminate(proc: anyio.abc.Process) -> None:
    """SIGTERM the process group, then SIGKILL after a bounded wait."""
    if proc.returncode is not None:
        return
    with anyio.CancelScope(shield=True):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with anyio.move_on_after(5):
            await proc.wait()
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        with anyio.move_on_after(5):
            await proc.wait()


@asynccontextmanager
async def kit_http(
    transport: str = "http", *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, int]]:
    """A kit upstream serving over HTTP on 127.0.0.1; yields its base URL and its pid."""
    async with run_process([PY, str(KIT), "--transport", transport, *args], read="stdout", env=env) as proc:
        match = await proc.wait_for(r"PORT (\d+)")
        yield f"http://127.0.0.1:{match.group(1)}", proc.proc.pid


@asynccontextmanager
async def gateway_http(
    config: Path, *extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, Process]]:
    """A gateway subprocess serving HTTP on a free loopback port; yields (base URL, process)."""
    argv = [PY, "-m", "mcpgw", "serve", "--config", str(config), "--transport", "http", "--port", "0", *extra]
    async with run_process(argv, env=env) as proc:
        match = await proc.wait_for(r"serving MCP at (http://\S+)/mcp")
        yield match.group(1), proc


async def wait_until(predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.05) -> Any:
    """Poll an async or sync predicate until truthy (for state owned by another process)."""
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)


class ToolsChanged:
    """Collects `notifications/tools/list_changed` for an agent, in either era.

    Handshake-era agents receive it through the client's message handler (pass `handler`);
    2026-07-28 agents only on a `subscriptions/listen` stream, which `during` opens around the
    action that should cause the change.
    """

    def __init__(self) -> None:
        self.seen = anyio.Event()

    async def handler(self, message: Any) -> None:
        from mcp import types

        if isinstance(message, types.ToolListChangedNotification):
            self.seen.set()

    async def during(self, agent: Client, mode: str, action: Callable[[], Any], timeout: float = 10) -> None:
        self.seen = anyio.Event()  # only a change announced after the action counts
        if mode == "auto":
            async with agent.listen(tools_list_changed=True) as subscription:
                await action()
                with anyio.fail_after(timeout):
                    await subscription.__anext__()
        else:
            await action()
            with anyio.fail_after(timeout):
                await self.seen.wait()


def namespaced_uris(result: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A dumped tool result as the gateway should relay it: every content URI in `mcpgw://<prefix>/` form."""
    out = dict(result)
    blocks = []
    for block in out.get("content", []):
        block = dict(block)
        if block.get("type") == "resource_link":
            block["uri"] = f"mcpgw://{prefix}/{block['uri']}"
        elif block.get("type") == "resource":
            block["resource"] = {**block["resource"], "uri": f"mcpgw://{prefix}/{block['resource']['uri']}"}
        blocks.append(block)
    out["content"] = blocks
    return out


def text(result: Any) -> str:
    """The text of a tool result's first content block."""
    from mcp import types

    first = result.content[0]
    assert isinstance(first, types.TextContent), first
    return first.text


@asynccontextmanager
async def agent_for(front: str, config: Path, **client_kw: Any) -> AsyncIterator[Client]:
    """An SDK client of the given era (`stdio-legacy`, `http-auto`, ...) connected to a gateway on `config`."""
    kind, mode = front.split("-")
    if kind == "stdio":
        async with gateway_stdio(config, mode=mode, **client_kw) as agent:
            yield agent
    else:
        async with gateway_http(config) as (base, _), Client(f"{base}/mcp", mode=mode, cache=None,
                                                              **client_kw) as agent:
            yield agent


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose connections see only a fresh schema of their own (dropped afterwards),
    so parallel workers and other test runs on the same database never collide."""
    base = os.environ.get("MCPGW_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("MCPGW_TEST_POSTGRES_URL is not set (CI sets it; see .ci/run)")
    from sqlalchemy import create_engine, text

    schema = f"mcpgw_test_{os.urandom(6).hex()}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


REDIS_URL = os.environ.get("MCPGW_TEST_REDIS_URL")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="MCPGW_TEST_REDIS_URL is not set (CI sets it)")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of the test's own; its keys are deleted afterwards."""
    from redis.asyncio import Redis

    assert REDIS_URL is not None
    prefix = f"mcpgw-test:{uuid.uuid4().hex}:"
    yield prefix
    client = Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
