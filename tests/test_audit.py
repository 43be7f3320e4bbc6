"""The audit trail end to end: a real gateway process with the kit upstream records what agents
do; `mcpgw audit ...` subprocesses read it back; shutdowns, crashes and an unreachable store."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp.types as t
import pytest
from mcp import Client, MCPError
from opentelemetry.sdk.trace import TracerProvider

from mcpgw.audit.redact import Redactor
from mcpgw.audit.writer import AuditTrail
from mcpgw.cli import build_parser
from mcpgw.config import AuditSettings
from mcpgw.pipeline import Caller, Pipeline, Step, StepKind
from mcpgw.pipeline.stages.audit import Audit
from mcpgw.pipeline.stages.identify import Identify
from mcpgw.pipeline.stages.record import Record

from .conftest import KIT, PY, ROOT, gateway_http, gateway_stdio, stdio_server_toml, text, wait_until, write_config

CONFIG_SECRET = "planted-config-secret-77"
FAST = "restart_backoff = 0.2\nrestart_backoff_max = 0.5\nhealth_interval = 600\n"


async def mcpgw(config: Path, *args: str, check: bool = True) -> tuple[int, str, str]:
    """Run `mcpgw audit ARGS --config CONFIG` as a subprocess; (exit code, stdout, stderr)."""
    with anyio.fail_after(60):
        done = await anyio.run_process([PY, "-m", "mcpgw", "audit", *args, "--config", str(config)], check=False,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    out, err = done.stdout.decode(), done.stderr.decode()
    if check:
        assert done.returncode == 0, f"exit {done.returncode}\n{out}\n{err}"
    return done.returncode, out, err


def audit_cli(config: Path, *args: str, check: bool = True) -> tuple[int, str, str]:
    """The same command in this process (the subprocess form is tested once per command: the
    interpreter's start-up is most of a command's time)."""
    out, err = io.StringIO(), io.StringIO()
    parsed = build_parser().parse_args(["audit", *args, "--config", str(config)])
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = parsed.func(parsed)
    if check:
        assert code == 0, f"exit {code}\n{out.getvalue()}\n{err.getvalue()}"
    return code, out.getvalue(), err.getvalue()


async def query(config: Path, *filters: str, subprocess: bool = False) -> list[dict[str, Any]]:
    if subprocess:
        code, out, _ = await mcpgw(config, "query", "--json", *filters, check=False)
    else:
        code, out, _ = audit_cli(config, "query", "--json", *filters, check=False)
    assert code in (0, 1)
    return [json.loads(line) for line in out.splitlines()]


def store_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob("mcpgw-audit.db*")))


async def on_elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
    return t.ElicitResult(action="decline")


async def on_sample(context: Any, params: t.CreateMessageRequestParams) -> t.CreateMessageResult:
    return t.CreateMessageResult(role="assistant", content=t.TextContent(type="text", text="hi there"),
                                 model="test-model")


@pytest.mark.anyio
async def test_a_session_is_recorded_redacted_linked_and_verifiable(tmp_path: Path) -> None:
    config = write_config(tmp_path, stdio_server_toml("kit", KIT, extra=f"""
        env = {{ KIT_API_SECRET = "{CONFIG_SECRET}" }}
        [audit.redact.tools]
        "kit__e*" = ["note"]
        """), gateway=FAST)
    async with gateway_stdio(config, mode="legacy", sampling_callback=on_sample,
                             elicitation_callback=on_elicit) as agent:
        planted = [
            {"text": "key sk-PLANTED0123456789abcdef"},
            {"text": f"config secret {CONFIG_SECRET}"},
            {"text": "hello", "password": "PLANTED-password"},
            {"text": "hello", "note": "PLANTED-note"},
        ]
        for arguments in planted:
            await agent.call_tool("kit__echo", arguments)
        assert text(await agent.call_tool("kit__sample", {"prompt": "say hi"})) == "model test-model said: hi there"
        await agent.call_tool("kit__ask_name", {})
        assert (await agent.call_tool("kit__fail", {})).is_error
        with pytest.raises(MCPError):
            await agent.call_tool("kit__nope", {})
        assert (await agent.call_tool("kit__crash", {})).is_error

        async def back() -> bool:
            return not (await agent.call_tool("kit__echo", {"text": "after the crash"})).is_error

        await wait_until(back, timeout=30, interval=0.1)
    # The agent closed stdin: the gateway stopped and flushed the trail before exiting.

    rows = await query(config, subprocess=True)
    calls = [r for r in rows if r["kind"] == "tools/call"]
    assert [(r["target"], r["outcome"]) for r in calls][:9] == [
        ("kit__echo", "ok"), ("kit__echo", "ok"), ("kit__echo", "ok"), ("kit__echo", "ok"),
        ("kit__sample", "ok"), ("kit__ask_name", "ok"), ("kit__fail", "error"), ("kit__nope", "not_found"),
        ("kit__crash", "unavailable"),
    ]
    first = calls[0]
    assert first["subject"] == "local" and first["transport"] == "stdio" and first["protocol"] == "2025-11-25"
    assert first["client_name"] and first["upstream"] == "kit" and first["upstream_target"] == "echo"
    assert first["session_id"] is None and first["trace_id"] is None  # no tracing configured: NULL, not made up
    assert first["latency_us"] > 0 and first["request_bytes"] > 0 and first["response_bytes"] > 0
    assert calls[6]["error"] == "it failed on purpose"
    kinds = [r["kind"] for r in rows]
    assert kinds.count("upstream/connect") >= 2 and "upstream/lost" in kinds
    lost = next(r for r in rows if r["kind"] == "upstream/lost")
    assert lost["outcome"] == "error" and lost["target"] == "kit"

    # Redaction happened before storage: no planted secret is anywhere in the database files.
    data = store_bytes(tmp_path)
    assert b"hello" in data and b"say hi" in data  # the file is readable text where it may be
    for secret in (b"PLANTED", CONFIG_SECRET.encode()):
        assert secret not in data
    assert calls[3]["arguments"] == '{"text":"hello","note":"[REDACTED]"}'

    # Lineage: the sampling and elicitation round-trips hang under the calls that caused them.
    sample = calls[4]
    _, out, _ = await mcpgw(config, "lineage", sample["step_id"], "--json")
    tree = json.loads(out)
    assert len(tree) == 1 and tree[0]["step_id"] == sample["step_id"]
    [child] = tree[0]["children"]
    assert child["kind"] == "sampling/createMessage" and child["outcome"] == "ok"
    assert child["parent_id"] == sample["step_id"] and json.loads(child["arguments"])["messages"]
    _, out, _ = audit_cli(config, "lineage", child["step_id"])  # from the child: the same tree
    assert out.splitlines()[0].startswith("tools/call kit__sample via kit → ok")
    assert out.splitlines()[1].startswith("└─ sampling/createMessage")
    _, out, _ = audit_cli(config, "lineage", calls[5]["step_id"], "--json")
    assert json.loads(out)[0]["children"][0]["outcome"] == "declined"

    # Filters, export formats.
    assert len(await query(config, "--tool", "kit__e*", "--outcome", "ok", "--kind", "tools/call")) == 5
    assert len(await query(config, "--outcome", "error,not_found", "--kind", "tools/*")) == 2
    assert await query(config, "--principal", "someone-else") == []
    assert len(await query(config, "--since", "1h", "--until", "2999-01-01T00:00:00Z")) == len(rows)
    _, out, _ = await mcpgw(config, "export", "--format", "csv")
    assert out.splitlines()[0].startswith("seq,step_id,parent_id,trace_id")
    assert len(out.splitlines()) == len(rows) + 1
    _, out, _ = audit_cli(config, "export", "--format", "jsonl", "--outcome", "ok")
    assert all(json.loads(line)["outcome"] == "ok" for line in out.splitlines())
    code, _, err = audit_cli(config, "query", "--since", "yesterday-ish", check=False)
    assert code == 2 and "not a time: 'yesterday-ish'" in err

    # The chain verifies; one edited row is named.
    _, out, _ = await mcpgw(config, "verify")
    assert out.splitlines()[-1].startswith(f"OK: {len(rows)} record(s) in 1 chain(s) verify")
    with sqlite3.connect(tmp_path / "mcpgw-audit.db") as db:
        db.execute("UPDATE mcpgw_audit_steps SET subject = 'mallory' WHERE seq = 3")
    code, out, _ = await mcpgw(config, "verify", check=False)
    assert code == 1 and "BROKEN: record seq=3 " in out and "do not match its hash" in out


@pytest.mark.anyio
async def test_sigterm_flushes_every_record(tmp_path: Path) -> None:
    # Flushes are a minute apart: every record in the store got there through the shutdown.
    config = write_config(tmp_path, stdio_server_toml("kit", KIT, extra="[audit]\nflush_interval = 60\n"))
    async with gateway_http(config) as (base, proc):
        async with Client(f"{base}/mcp", mode="legacy", cache=None) as agent:
            for i in range(40):
                await agent.call_tool("kit__echo", {"text": f"call {i}"})
        assert not (await query(config, "--kind", "tools/call"))
        async with httpx2.AsyncClient() as http:
            audit = (await http.get(f"{base}/readyz")).json()["audit"]
        # 40 calls and the upstream's connect record; only the connect may have been written yet
        assert audit["queued"] + audit["written"] == 41 and audit["queued"] >= 40 and audit["dropped"] == 0
        assert audit["url"].startswith("sqlite:///") and audit["reachable"] is True
        proc.proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await proc.proc.wait()
    assert "AUDIT RECORDS" not in proc.text  # nothing dropped or lost on the way out
    rows = await query(config, "--kind", "tools/call")
    assert [json.loads(r["arguments"])["text"] for r in rows] == [f"call {i}" for i in range(40)]
    _, out, _ = audit_cli(config, "verify")
    assert ", closed" in out and "OK:" in out


@pytest.mark.anyio
async def test_kill_9_loses_at_most_the_unflushed_tail_and_the_chain_still_verifies(tmp_path: Path) -> None:
    config = write_config(tmp_path, stdio_server_toml("kit", KIT))
    calls = 150
    async with gateway_http(config) as (base, proc), Client(f"{base}/mcp", mode="legacy", cache=None) as agent:
        for i in range(calls):
            await agent.call_tool("kit__echo", {"text": f"call {i}"})
        proc.proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            await proc.proc.wait()
    rows = await query(config, "--kind", "tools/call")
    kept = [json.loads(r["arguments"])["text"] for r in rows]
    assert kept == [f"call {i}" for i in range(len(kept))], "what survives is a prefix: no holes"
    print(f"kill -9 after {calls} answered calls: {calls - len(kept)} record(s) lost (flush_interval 0.05 s)")
    _, out, _ = audit_cli(config, "verify")
    assert "open (running, or the process ended without closing)" in out and "OK:" in out


@pytest.mark.anyio
async def test_fail_closed_refuses_calls_while_the_store_is_unreachable(tmp_path: Path) -> None:
    missing = tmp_path / "store"  # SQLite cannot open a file in a directory that does not exist
    config = write_config(tmp_path, stdio_server_toml("kit", KIT, extra=f"""
        [audit]
        url = "sqlite:///{missing}/audit.db"
        mode = "fail-closed"
        """))
    async with gateway_stdio(config, mode="legacy") as agent:
        with pytest.raises(MCPError) as info:
            await agent.call_tool("kit__echo", {"text": "refused"})
        assert "audit store is unreachable and [audit] mode is fail-closed" in info.value.message
        await agent.list_tools()  # listings are not recorded, so not refused
        missing.mkdir()

        async def accepted() -> bool:
            try:
                await agent.call_tool("kit__echo", {"text": "accepted"})
            except MCPError:
                return False
            return True

        await wait_until(accepted, timeout=30, interval=0.2)
    rows = await query(config, "--kind", "tools/call")
    assert rows[0]["outcome"] == "unavailable" and rows[-1]["outcome"] == "ok"
    assert {json.loads(r["arguments"])["text"] for r in rows} == {"refused", "accepted"}


@pytest.mark.anyio
async def test_gateway_writes_to_postgresql(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path, stdio_server_toml("kit", KIT, extra=f'[audit]\nurl = "{pg_url}"\n'))
    async with gateway_stdio(config, mode="auto") as agent:
        for i in range(5):
            await agent.call_tool("kit__echo", {"text": f"pg {i}"})
    rows = await query(config, "--kind", "tools/call")
    assert [r["protocol"] for r in rows] == ["2026-07-28"] * 5
    _, out, _ = audit_cli(config, "verify")
    assert "OK: 6 record(s) in 1 chain(s)" in out and "postgres" in out


@pytest.mark.anyio
async def test_trace_and_span_ids_come_from_the_current_span(tmp_path: Path) -> None:
    """In process: the tracing stage (outermost) makes a span current around the step."""
    url = f"sqlite:///{tmp_path}/audit.db"
    settings = AuditSettings(url=url, flush_interval=0.01)
    trail = AuditTrail(settings)
    trail.start()

    async def dispatch(step: Step, call_next: Any) -> Any:
        return "done"

    dispatch.slot = "dispatch"  # type: ignore[attr-defined]
    pipeline = Pipeline([Audit(trail, settings, Redactor(settings.redact)), Record(), Identify(),
                         dispatch])  # type: ignore[list-item]
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as span:
        await pipeline.run(Step(StepKind.TOOL_CALL, Caller("stdio"), target="x__y", arguments={}))
    await pipeline.run(Step(StepKind.TOOL_CALL, Caller("stdio"), target="x__z", arguments={}))
    await trail.aclose()
    with sqlite3.connect(tmp_path / "audit.db") as db:
        rows = db.execute("SELECT target, trace_id, span_id FROM mcpgw_audit_steps ORDER BY seq").fetchall()
    ctx = span.get_span_context()
    assert rows == [("x__y", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"), ("x__z", None, None)]


def test_audit_cli_without_a_store_says_so(tmp_path: Path) -> None:
    import subprocess

    config = write_config(tmp_path, "")
    done = subprocess.run([PY, "-m", "mcpgw", "audit", "verify", "--config", str(config)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 1 and "no audit trail at" in done.stderr and sys.executable


class TcpSwitch:
    """A TCP forwarder on 127.0.0.1 to a real server that can be switched off: then it cuts every
    open connection and closes new ones at once, as a store that went away would."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.on = True
        self._scopes: set[anyio.CancelScope] = set()

    def off(self) -> None:
        self.on = False
        for scope in list(self._scopes):
            scope.cancel()

    async def serve(self, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if not self.on:
                return
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    async with await anyio.connect_tcp(*self.target) as server, anyio.create_task_group() as tg:
                        async def pump(src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream) -> None:
                            async for chunk in src:
                                await dst.send(chunk)
                            tg.cancel_scope.cancel()

                        tg.start_soon(pump, client, server)
                        tg.start_soon(pump, server, client)
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
                finally:
                    self._scopes.discard(scope)


@pytest.mark.anyio
async def test_fail_closed_refuses_calls_while_postgresql_is_away_and_loses_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    from sqlalchemy.engine import make_url

    real = make_url(pg_url)
    switch = TcpSwitch(real.host or "127.0.0.1", real.port or 5432)
    async with anyio.create_task_group() as tg:
        port = await tg.start(switch.serve)
        via = real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        config = write_config(tmp_path, stdio_server_toml("kit", KIT, extra=f"""
            [audit]
            url = "{via}"
            mode = "fail-closed"
            """))
        async with gateway_stdio(config, mode="legacy") as agent:
            await agent.call_tool("kit__echo", {"text": "before"})
            switch.off()

            async def refused() -> bool:
                try:
                    await agent.call_tool("kit__echo", {"text": "during"})
                except MCPError as exc:
                    return "fail-closed" in exc.message
                return False

            await wait_until(refused, timeout=30, interval=0.2)
            switch.on = True

            async def accepted() -> bool:
                try:
                    await agent.call_tool("kit__echo", {"text": "after"})
                except MCPError:
                    return False
                return True

            await wait_until(accepted, timeout=30, interval=0.2)
        tg.cancel_scope.cancel()
    # Read through the real server: every call, accepted or refused, is in the trail, once.
    direct = tmp_path / "direct.toml"
    direct.write_text(f'[audit]\nurl = "{pg_url}"\n')
    rows = await query(direct, "--kind", "tools/call")
    texts = [json.loads(r["arguments"])["text"] for r in rows]
    assert texts[0] == "before" and texts[-1] == "after" and "during" in texts
    assert {r["outcome"] for r in rows if json.loads(r["arguments"])["text"] == "during"} <= {"ok", "unavailable"}
    assert any(r["outcome"] == "unavailable" for r in rows)
    assert len({r["step_id"] for r in rows}) == len(rows)
    _, out, _ = audit_cli(direct, "verify")
    assert "OK:" in out


@pytest.mark.anyio
@pytest.mark.parametrize(("agent_mode", "upstream", "child_kind"), [
    ("legacy", "legacy", "sampling/createMessage"),  # a pushed request, attributed to the one agent
    ("auto", "legacy", "sampling/createMessage"),  # the gateway parks the call for a 2026 agent
    ("auto", "modern", "tools/call"),  # input-required passes through; the agent's retry answers it
])
async def test_lineage_in_every_era_combination(tmp_path: Path, agent_mode: str, upstream: str,
                                                child_kind: str) -> None:
    extra = 'protocol = "legacy"\n' if upstream == "legacy" else ""
    config = write_config(tmp_path, stdio_server_toml("kit", KIT, extra=extra))
    async with gateway_stdio(config, mode=agent_mode, sampling_callback=on_sample) as agent:
        assert text(await agent.call_tool("kit__sample", {"prompt": "say hi"})) == "model test-model said: hi there"
    [root, *_] = await query(config, "--tool", "kit__sample", "--kind", "tools/call")
    _, out, _ = audit_cli(config, "lineage", root["step_id"], "--json")
    [tree] = json.loads(out)
    assert tree["step_id"] == root["step_id"] and tree["outcome"] == "ok"
    assert [c["kind"] for c in tree["children"]] == [child_kind]
    assert tree["children"][0]["outcome"] == "ok" and tree["children"][0]["parent_id"] == root["step_id"]


@pytest.mark.anyio
async def test_reload_applies_new_redaction_and_says_a_new_store_needs_a_restart(tmp_path: Path) -> None:
    body = stdio_server_toml("kit", KIT)
    config = write_config(tmp_path, body)
    async with gateway_http(config) as (base, proc), Client(f"{base}/mcp", mode="legacy", cache=None) as agent:
        await agent.call_tool("kit__echo", {"text": "project-falcon"})
        config.write_text(config.read_text() + '\n[audit]\nurl = "sqlite:///elsewhere.db"\n'
                          '[audit.redact]\npatterns = ["project-[a-z]+"]\n')
        await proc.wait_for("configuration reloaded")
        await agent.call_tool("kit__echo", {"text": "project-falcon"})
    assert "[audit] url changed: this takes a restart" in proc.text
    assert not (tmp_path / "elsewhere.db").exists()
    config.write_text(body)  # read the trail the gateway kept writing to
    rows = await query(config, "--kind", "tools/call")
    assert [json.loads(r["arguments"])["text"] for r in rows] == ["project-falcon", "[REDACTED]"]


POLICY = """
    [[roles]]
    name = "local agents"
    match = { subjects = ["anonymous"] }  # loopback HTTP without [auth]
    allow = ["kit__*"]

    [[rules]]
    name = "shouting is denied"
    tool = "kit__echo"
    when = { text = { pattern = "[A-Z !]+" } }
    effect = "deny"

    [[rules]]
    name = "refunds need a human"
    tool = "kit__echo"
    when = { text = { pattern = "refund.*" } }
    effect = "approve"

    [[limits]]
    name = "one pid a minute"
    tools = ["kit__pid"]
    rate = "1/minute"
    """


async def approve(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
    return t.ElicitResult(action="accept", content={"approve": True})


@pytest.mark.anyio
async def test_policy_decisions_principal_and_trace_ids_are_recorded(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.toml").write_text(textwrap.dedent(POLICY))
    config = write_config(tmp_path, stdio_server_toml("kit", KIT) + '\n[telemetry]\nexporter = "console"\n')
    async with gateway_http(config) as (base, proc), Client(f"{base}/mcp", mode="legacy", cache=None,
                                                            elicitation_callback=approve) as agent:
        await agent.call_tool("kit__echo", {"text": "hello"})
        with pytest.raises(MCPError):
            await agent.call_tool("kit__echo", {"text": "HELLO!"})
        assert text(await agent.call_tool("kit__echo", {"text": "refund 5"})) == "refund 5"
        await agent.call_tool("kit__pid", {})
        assert (await agent.call_tool("kit__pid", {})).is_error  # a limit refuses with a tool error result
        span = json.loads((await proc.wait_for(r'^\{"name": "tools/call kit__echo".*\}$')).group(0))
    rows = await query(config, "--kind", "tools/call")
    assert [(r["outcome"], r["rule"]) for r in rows] == [
        ("ok", "role 'local agents' allow 'kit__*'"), ("denied", "shouting is denied"),
        ("approved", "refunds need a human"), ("ok", "role 'local agents' allow 'kit__*'"),
        ("limited", "one pid a minute")]
    assert rows[0]["subject"] == "anonymous" and rows[0]["transport"] == "http" and rows[0]["session_id"]
    assert rows[0]["trace_id"] == span["context"]["trace_id"].removeprefix("0x")
    assert rows[0]["span_id"] == span["context"]["span_id"].removeprefix("0x")
    assert len({r["trace_id"] for r in rows}) == 5
    _, out, _ = audit_cli(config, "lineage", rows[2]["trace_id"], "--json")
    [tree] = json.loads(out)
    assert tree["step_id"] == rows[2]["step_id"]
    assert [(c["kind"], c["outcome"]) for c in tree["children"]] == [("elicitation/create", "ok")]
