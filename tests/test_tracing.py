"""OpenTelemetry end to end: one trace from the agent through the gateway to the upstream.

A real OTLP/HTTP receiver on 127.0.0.1 (Starlette + uvicorn, decoding the protobuf export
requests) collects what a real gateway process exports; the kit upstream reports the `_meta` and
HTTP headers it received, so each test sees both ends of the propagation.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as t
import pytest
import uvicorn
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcpgw.config import TelemetrySettings, load_config
from mcpgw.gateway import Gateway
from mcpgw.telemetry import start_telemetry

from .conftest import KIT, gateway_http, gateway_params, kit_http, stdio_server_toml, write_config

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "20"}
"""Export batches every 20 ms, so a test sees spans while its connection is still open."""


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status: int
    resource: dict[str, Any]


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which in ("string_value", "bool_value", "int_value", "double_value") else str(v)


@dataclass
class OtlpReceiver:
    """Collects the spans of every `POST /v1/traces` it is sent."""

    url: str = ""
    spans: list[Span] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    async def export(self, request: Request) -> Response:
        self.authorizations.append(request.headers.get("authorization"))
        body = ExportTraceServiceRequest.FromString(await request.body())
        for resource_spans in body.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(Span(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name,
                                           s.kind, {a.key: _value(a.value) for a in s.attributes},
                                           s.status.code, resource))
        self._changed.set()
        self._changed = anyio.Event()
        return Response(b"", media_type="application/x-protobuf")

    async def wait_for(self, predicate: Callable[[list[Span]], Any], timeout: float = 20) -> Any:
        with anyio.fail_after(timeout):
            while not (found := predicate(self.spans)):
                await self._changed.wait()
            return found

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    app = Starlette(routes=[Route("/v1/traces", receiver.export, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound before serving: the port is known and connections queue
    receiver.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/traces"
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        try:
            yield receiver
        finally:
            tg.cancel_scope.cancel()
            sock.close()


def traceparent() -> tuple[str, str, str]:
    """An agent's own span context: (trace id, span id, traceparent)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def telemetry_toml(receiver: OtlpReceiver, extra: str = "") -> str:
    return f'\n[telemetry]\nexporter = "otlp"\nendpoint = "{receiver.url}"\nservice_name = "gw-under-test"\n{extra}\n'


def parse_traceparent(value: str) -> tuple[str, str]:
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", value)
    assert match, value
    return match.group(1), match.group(2)


@asynccontextmanager
async def agent(front: str, mode: str, config: Path, header: str | None = None,
                **client_kw: Any) -> AsyncIterator[Client]:
    if front == "stdio":
        async with Client(gateway_params(config, env=FAST_EXPORT), mode=mode, cache=None, **client_kw) as client:
            yield client
        return
    async with gateway_http(config, env=FAST_EXPORT) as (base, _):
        headers = {"traceparent": header} if header else None
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=None)) as http, \
                Client(streamable_http_client(f"{base}/mcp", http_client=http), mode=mode, cache=None,
                       **client_kw) as client:
            yield client


@asynccontextmanager
async def upstream_toml(kind: str) -> AsyncIterator[str]:
    if kind in ("stdio", "stdio-legacy"):
        yield stdio_server_toml("kit", KIT, extra='protocol = "legacy"\n' if kind == "stdio-legacy" else "")
        return
    async with kit_http(kind) as (base, _pid):
        yield f'\n[servers.kit]\nkind = "{kind}"\nurl = "{base}/{"mcp" if kind == "http" else "sse"}"\n'


@pytest.mark.anyio
@pytest.mark.parametrize(("front", "mode", "upstream", "carrier"), [
    ("stdio", "legacy", "stdio", "meta"),
    ("stdio", "auto", "http", "meta"),
    ("http", "auto", "sse", "header"),
    ("http", "legacy", "stdio-legacy", "meta"),
])
async def test_one_trace_from_agent_through_gateway_to_upstream(
    tmp_path: Path, front: str, mode: str, upstream: str, carrier: str
) -> None:
    trace_id, agent_span, parent = traceparent()
    async with otlp_receiver() as receiver, upstream_toml(upstream) as servers:
        config = write_config(tmp_path, servers + telemetry_toml(receiver))
        header = parent if carrier == "header" else None
        meta: Any = {"traceparent": parent} if carrier == "meta" else None
        async with agent(front, mode, config, header=header) as client:
            result = await client.call_tool("kit__meta", {}, meta=meta)
            era = client.protocol_version
            step, sent = await receiver.wait_for(lambda spans: _step_and_send(spans, "tools/call kit__meta", "meta"))
    seen = (result.structured_content or {})
    upstream_trace, upstream_parent = parse_traceparent(seen["meta"]["traceparent"])

    # The gateway's span continues the agent's trace, under the agent's span...
    assert (step.trace_id, step.parent_id) == (trace_id, agent_span)
    assert step.kind == 2  # SERVER
    assert step.attributes["mcp.method.name"] == "tools/call"
    assert step.attributes["gen_ai.operation.name"] == "execute_tool"
    assert step.attributes["gen_ai.tool.name"] == "kit__meta"
    assert step.attributes["mcp.protocol.version"] == era
    assert step.attributes["network.transport"] == ("pipe" if front == "stdio" else "tcp")
    assert step.attributes["mcpgw.upstream"] == "kit"
    assert step.attributes["mcpgw.upstream.target"] == "meta"
    assert step.attributes["mcpgw.outcome"] == "ok"
    assert re.fullmatch(r"[0-9a-f]{32}", step.attributes["mcpgw.step.id"])
    assert step.resource["service.name"] == "gw-under-test"
    # ...the upstream request is its child, and the upstream continues from that request's span.
    assert (sent.trace_id, sent.parent_id, sent.kind) == (trace_id, step.span_id, 3)  # CLIENT
    assert (upstream_trace, upstream_parent) == (trace_id, sent.span_id)
    if upstream in ("http", "sse"):
        assert seen["headers"]["traceparent"] == seen["meta"]["traceparent"]
    else:
        assert "headers" not in seen


def _step_and_send(spans: list[Span], step_name: str, upstream_name: str) -> tuple[Span, Span] | None:
    steps = [s for s in spans if s.name == step_name]
    sends = [s for s in spans if s.name == f"MCP send tools/call {upstream_name}"]
    return (steps[0], sends[0]) if steps and sends else None


@pytest.mark.anyio
@pytest.mark.parametrize("upstream", ["stdio", "stdio-legacy"])
async def test_questions_to_the_agent_are_child_spans_of_the_step(tmp_path: Path, upstream: str) -> None:
    trace_id, agent_span, parent = traceparent()
    asked_meta: list[dict[str, Any]] = []

    async def on_elicit(context: Any, params: t.ElicitRequestParams) -> t.ElicitResult:
        asked_meta.append(dict(params.meta or {}))
        return t.ElicitResult(action="accept", content={"name": "Ada"})

    async with otlp_receiver() as receiver, upstream_toml(upstream) as servers:
        config = write_config(tmp_path, servers + telemetry_toml(receiver))
        async with agent("stdio", "legacy", config, elicitation_callback=on_elicit) as client:
            result = await client.call_tool("kit__ask_name", {}, meta={"traceparent": parent})  # type: ignore[typeddict-unknown-key]
            assert result.content[0].text == "hello Ada"  # type: ignore[union-attr]

            def asked(spans: list[Span]) -> Any:
                step = [s for s in spans if s.name == "tools/call kit__ask_name"]
                ask = [s for s in spans if s.name == "ask elicitation/create"]
                send = [s for s in spans if s.name == "MCP send elicitation/create"]
                return (step[0], ask[0], send[0]) if step and ask and send else None

            step, ask, send = await receiver.wait_for(asked)
    assert (step.trace_id, step.parent_id) == (trace_id, agent_span)
    assert (ask.trace_id, ask.parent_id) == (trace_id, step.span_id)
    assert ask.attributes["mcp.method.name"] == "elicitation/create"
    assert (send.trace_id, send.parent_id) == (trace_id, ask.span_id)
    # The agent's SDK sees the question as part of the same trace.
    assert parse_traceparent(asked_meta[0]["traceparent"]) == (trace_id, send.span_id)


@pytest.mark.anyio
@pytest.mark.parametrize("front", ["http", "stdio"])
async def test_spans_are_flushed_on_shutdown_and_secrets_stay_out(tmp_path: Path, front: str) -> None:
    """Batches are due only after a minute here: the spans arrive because shutting down (SIGTERM
    on HTTP, the agent closing stdin on stdio) flushes them. The collector gets its header;
    neither it, the upstream's credential, the arguments nor a URI's query reach an attribute;
    the credentials never reach the log."""
    collector_token, upstream_token, argument, uri_token = (
        f"{what}-{secrets.token_hex(8)}" for what in ("collector", "upstream", "argument", "uri"))
    env = {"COLLECTOR_TOKEN": collector_token, "UP_TOKEN": upstream_token, "OTEL_BSP_SCHEDULE_DELAY": "60000"}

    async def exercise(client: Client) -> None:
        await client.call_tool("kit__echo", {"text": argument})
        with pytest.raises(MCPError):
            await client.read_resource(f"mcpgw://kit/kit://nothing?token={uri_token}")
        assert receiver.spans == [], "nothing is exported before the schedule delay or shutdown"

    log = ""
    async with otlp_receiver() as receiver, kit_http("http") as (kit_base, _):
        config = write_config(
            tmp_path,
            f'\n[servers.kit]\nkind = "http"\nurl = "{kit_base}/mcp"\n'
            'headers = { Authorization = "Bearer ${UP_TOKEN}" }\n'
            + telemetry_toml(receiver, 'headers = { Authorization = "Bearer ${COLLECTOR_TOKEN}" }'),
        )
        if front == "stdio":
            async with Client(gateway_params(config, env=env), mode="auto", cache=None) as client:
                await exercise(client)
            # The SDK client closed the gateway's stdin and waited for it to exit.
        else:
            async with gateway_http(config, "--log-level", "debug", env=env) as (base, gateway):
                async with Client(f"{base}/mcp", mode="auto", cache=None) as client:
                    await exercise(client)
                gateway.proc.send_signal(signal.SIGTERM)
                with anyio.fail_after(20):
                    await gateway.proc.wait()  # uvicorn re-raises the SIGTERM it handled: the status is -15
                log = gateway.text
    spans = receiver.spans
    names = {s.name for s in spans}
    assert {"tools/call kit__echo", "resources/read", "MCP send tools/call echo"} <= names
    assert set(receiver.authorizations) == {f"Bearer {collector_token}"}
    read = next(s for s in spans if s.name == "resources/read")
    assert read.attributes["mcp.resource.uri"] == "mcpgw://kit/kit://nothing"
    assert read.attributes["mcpgw.upstream.target"] == "kit://nothing"
    dumped = json.dumps([s.attributes for s in spans] + [s.resource for s in spans])
    for secret in (collector_token, upstream_token, argument, uri_token):
        assert secret not in dumped
    assert collector_token not in log and upstream_token not in log


@pytest.mark.anyio
async def test_console_exporter_prints_spans_as_json_lines_on_stderr(tmp_path: Path) -> None:
    trace_id, agent_span, parent = traceparent()
    config = write_config(tmp_path, stdio_server_toml("kit", KIT) + '\n[telemetry]\nexporter = "console"\n')
    async with gateway_http(config) as (base, gateway), Client(f"{base}/mcp", mode="legacy", cache=None) as client:
        await client.call_tool("kit__echo", {"text": "hi"}, meta={"traceparent": parent})  # type: ignore[typeddict-unknown-key]
        line = await gateway.wait_for(r'^\{"name": "tools/call kit__echo".*\}$')
    span = json.loads(line.group(0))
    assert span["kind"] == "SpanKind.SERVER"
    assert span["context"]["trace_id"] == f"0x{trace_id}"
    assert span["parent_id"] == f"0x{agent_span}"
    assert span["attributes"]["gen_ai.tool.name"] == "kit__echo"
    assert span["attributes"]["mcp.session.id"]  # a 2025-era Streamable HTTP session
    assert span["attributes"]["mcpgw.outcome"] == "ok"


@pytest.mark.anyio
async def test_off_by_default_the_gateway_is_transparent_to_trace_context(tmp_path: Path) -> None:
    """No [telemetry]: no spans, and the agent's trace context reaches the upstream unchanged."""
    trace_id, agent_span, parent = traceparent()
    config = write_config(tmp_path, stdio_server_toml("kit", KIT))
    async with Client(gateway_params(config), mode="legacy", cache=None) as client:
        result = await client.call_tool("kit__meta", {}, meta={"traceparent": parent, "tracestate": "a=1"})  # type: ignore[typeddict-unknown-key]
    meta = (result.structured_content or {})["meta"]
    assert (meta["traceparent"], meta["tracestate"]) == (parent, "a=1")


@pytest.mark.anyio
async def test_off_by_default_costs_nothing(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, stdio_server_toml("kit", KIT)))
    assert not config.telemetry.enabled
    threads = threading.active_count()
    assert start_telemetry(config.telemetry, "mcpgw") is None
    assert threading.active_count() == threads
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # nothing installed
    assert "Trace" not in [type(stage).__name__ for stage in Gateway(config).pipeline.stages]


def test_telemetry_table_is_validated(tmp_path: Path) -> None:
    from mcpgw.config import ConfigError

    path = write_config(tmp_path, '[telemetry]\nexporter = "jaeger"\nsample_ratio = 2\nendpoint = "collector:4318"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    rendered = info.value.render()
    assert re.search(r"servers.toml:\d+: telemetry.exporter: Input should be 'none', 'otlp' or 'console'", rendered)
    assert re.search(r"servers.toml:\d+: telemetry.sample_ratio: Input should be less than or equal to 1", rendered)
    assert re.search(r"servers.toml:\d+: telemetry.endpoint: must be an http:// or https:// URL", rendered)
    os.environ.pop("MCPGW_TEST_UNSET", None)
    path.write_text('[telemetry]\nexporter = "otlp"\nheaders = { "x-key" = "${MCPGW_TEST_UNSET}" }\n')
    with pytest.raises(ConfigError, match=r"telemetry.headers.x-key: environment variable"):
        load_config(path)
    path.write_text('[telemetry]\nexporter = "otlp"\nheaders = { "x-key" = "hunter2" }\n')
    settings = load_config(path).telemetry
    assert settings.enabled and "hunter2" not in repr(settings)
    assert TelemetrySettings().exporter == "none"


@pytest.mark.anyio
async def test_a_reload_that_changes_telemetry_says_it_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path, stdio_server_toml("kit", KIT))
    gateway = Gateway(load_config(path))
    path.write_text(path.read_text() + '\n[telemetry]\nexporter = "console"\n')
    with caplog.at_level("WARNING", logger="mcpgw"):
        await gateway.reload(load_config(path))
    assert "[telemetry] changed: the change takes effect when the gateway is restarted" in caplog.text
    assert gateway.tracer is None and "Trace" not in [type(s).__name__ for s in gateway.pipeline.stages]
