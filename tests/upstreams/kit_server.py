"""A real upstream MCP server for tests and benchmarks, with tools that exercise the gateway.

Run: `python kit_server.py [--transport stdio|http|sse] [--tools N] [--name NAME]`.
Over HTTP/SSE it binds 127.0.0.1 on a free port and prints `PORT <n>` on stdout.
Set `KIT_MARKER_DIR` to a directory to have `hang` leave a file there when it is cancelled, and
`KIT_CALLS_FILE` to a file to have every tools/call that reaches the server appended to it.
`KIT_DESCRIPTIONS` (JSON, `{"echo": "...", "prompt:greet": "..."}`) replaces descriptions at start;
the `redescribe` tool ({"name", "description"}) replaces one at run time and announces list_changed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp.types as t
from mcp import MCPError
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourceUpdated, ToolsListChanged

CALLS_FILE = os.environ.get("KIT_CALLS_FILE")
OBJ: dict[str, Any] = {"type": "object"}
PNG_1PX = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)).decode()
WAV = base64.b64encode(b"RIFF\x24\x00\x00\x00WAVEfmt ").decode()


def base_tools() -> dict[str, dict[str, Any]]:
    return {
        "echo": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "pid": OBJ,
        "slow": {"type": "object", "properties": {"steps": {"type": "integer"}, "delay": {"type": "number"}}},
        "hang": OBJ,
        "content": OBJ,
        "fail": OBJ,
        "rpc_error": OBJ,
        "crash": OBJ,
        "grow": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        "meta": OBJ,
        "ask_name": OBJ,
        "sample": {"type": "object", "properties": {"prompt": {"type": "string"}}},
        "roots": OBJ,
        "touch": {"type": "object", "properties": {"uri": {"type": "string"}}, "required": ["uri"]},
        "log": {"type": "object", "properties": {"level": {"type": "string"}, "text": {"type": "string"}}},
        "redescribe": {"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
                       "required": ["name", "description"]},
    }


class Kit:
    def __init__(self, name: str, extra: int) -> None:
        self.name = name
        self.tools = base_tools()
        for i in range(extra):
            self.tools[f"t{i:05d}"] = {"type": "object", "properties": {"x": {"type": "integer"}}}
        self.descriptions: dict[str, str] = json.loads(os.environ.get("KIT_DESCRIPTIONS") or "{}")
        self.bus = InMemorySubscriptionBus()
        self.sessions: set[ServerSession] = set()
        self.subscribed: dict[str, set[ServerSession]] = {}

    async def subscribe(self, ctx: ServerRequestContext[Any], params: t.SubscribeRequestParams) -> t.EmptyResult:
        self.subscribed.setdefault(str(params.uri), set()).add(ctx.session)
        return t.EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any], params: t.UnsubscribeRequestParams) -> t.EmptyResult:
        self.subscribed.pop(str(params.uri), None)
        return t.EmptyResult()

    async def on_initialized(self, ctx: ServerRequestContext[Any], params: Any) -> None:
        self.sessions.add(ctx.session)

    async def list_tools(self, ctx: ServerRequestContext[Any], params: Any) -> t.ListToolsResult:
        return t.ListToolsResult(tools=[
            t.Tool(name=n, description=self.descriptions.get(n, f"{self.name} tool {n}"), input_schema=s)
            for n, s in self.tools.items()
        ])

    async def call_tool(self, ctx: ServerRequestContext[Any], params: t.CallToolRequestParams) -> t.CallToolResult:
        args = params.arguments or {}
        name = params.name
        if CALLS_FILE:  # a record of every call that reached this server, for "nothing was forwarded" tests
            with open(CALLS_FILE, "a", encoding="utf-8") as calls:
                calls.write(json.dumps({"tool": name, "arguments": args}) + "\n")
        text = lambda s: t.CallToolResult(content=[t.TextContent(type="text", text=s)])  # noqa: E731
        if name == "echo":
            return t.CallToolResult(content=[t.TextContent(type="text", text=str(args.get("text", "")))],
                                    structured_content={"text": args.get("text"), "server": self.name})
        if name == "pid":
            return t.CallToolResult(content=[t.TextContent(type="text", text=str(os.getpid()))],
                                    structured_content={"pid": os.getpid()})
        if name == "slow":
            steps = int(args.get("steps", 3))
            for i in range(1, steps + 1):
                await ctx.session.report_progress(i, steps, f"step {i}")
                await anyio.sleep(float(args.get("delay", 0.01)))
            return text(f"done {steps}")
        if name == "hang":
            try:
                await anyio.sleep_forever()
            finally:
                marker = os.environ.get("KIT_MARKER_DIR")
                if marker:
                    Path(marker, f"cancelled-{self.name}").write_text("cancelled")
        if name == "content":
            return t.CallToolResult(
                content=[
                    t.TextContent(type="text", text="plain text", annotations=t.Annotations(audience=["user"])),
                    t.ImageContent(type="image", data=PNG_1PX, mime_type="image/png"),
                    t.AudioContent(type="audio", data=WAV, mime_type="audio/wav"),
                    t.EmbeddedResource(type="resource", resource=t.TextResourceContents(
                        uri="kit://doc/1", mime_type="text/plain", text="embedded body")),
                    t.EmbeddedResource(type="resource", resource=t.BlobResourceContents(
                        uri="kit://blob/1", mime_type="application/octet-stream", blob=WAV)),
                    t.ResourceLink(type="resource_link", uri="kit://doc/2", name="doc2", mime_type="text/plain"),
                ],
                structured_content={"kinds": 6, "nested": {"a": [1, 2, 3]}},
                _meta={"kit/trace": "abc"},
            )
        if name == "fail":
            return t.CallToolResult(content=[t.TextContent(type="text", text="it failed on purpose")], is_error=True)
        if name == "rpc_error":
            raise MCPError(t.INVALID_PARAMS, "kit refuses these arguments")
        if name == "crash":
            os._exit(3)
        if name == "grow":
            self.tools[str(args["name"])] = OBJ
            await self.changed()
            return text(f"added {args['name']}")
        if name == "redescribe":
            self.descriptions[str(args["name"])] = str(args["description"])
            await self.changed()
            return text(f"redescribed {args['name']}")
        if name == "touch":
            uri = str(args["uri"])
            await self.bus.publish(ResourceUpdated(uri))
            for session in list(self.subscribed.get(uri, ())):
                await session.send_resource_updated(uri)
            return text(f"touched {uri}")
        if name == "log":
            level = args.get("level", "info")
            await ctx.session.send_log_message(level, {"text": args.get("text", "")}, logger="kitlog",
                                               related_request_id=ctx.request_id)
            return text("logged")
        if name in ("ask_name", "sample", "roots"):
            return await self.ask(ctx, params, name)
        if name == "meta":
            raw = (ctx.params or {}).get("_meta") or {}
            seen: dict[str, Any] = {"meta": raw}
            if ctx.request is not None:  # over HTTP: the W3C trace context headers of this request, too
                seen["headers"] = {k: v for k, v in ctx.request.headers.items() if k in ("traceparent", "tracestate")}
            return t.CallToolResult(content=[t.TextContent(type="text", text="meta")], structured_content=seen)
        if name in self.tools:
            return text(f"{self.name}:{name}")
        raise MCPError(t.INVALID_PARAMS, f"Unknown tool: {name}")

    async def ask(self, ctx: ServerRequestContext[Any], params: t.CallToolRequestParams, name: str) -> Any:
        """Era-portable questions: pushed mid-call at 2025-era, input-required at 2026-07-28."""
        question: Any
        if name == "ask_name":
            question = t.ElicitRequest(params=t.ElicitRequestFormParams(
                message="What is your name?",
                requested_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}))
        elif name == "sample":
            prompt = str((params.arguments or {}).get("prompt", "hello"))
            question = t.CreateMessageRequest(params=t.CreateMessageRequestParams(
                messages=[t.SamplingMessage(role="user", content=t.TextContent(type="text", text=prompt))],
                max_tokens=50))
        else:
            question = t.ListRootsRequest()
        modern = ctx.protocol_version == "2026-07-28"
        if modern:
            answers = params.input_responses or {}
            if "q" not in answers:
                return t.InputRequiredResult(input_requests={"q": question}, request_state=f"{self.name}-state")
            if params.request_state != f"{self.name}-state":
                raise MCPError(t.INVALID_PARAMS, f"bad request state {params.request_state!r}")
            answer: Any = answers["q"]
        else:
            result_type: Any = {"ask_name": t.ElicitResult, "sample": t.CreateMessageResult,
                                "roots": t.ListRootsResult}[name]
            answer = await ctx.session.send_request(question, result_type)
        if isinstance(answer, t.ElicitResult):
            text = f"hello {answer.content['name']}" if answer.action == "accept" and answer.content else answer.action
        elif isinstance(answer, t.CreateMessageResult):
            content = answer.content
            text = f"model {answer.model} said: {content.text if isinstance(content, t.TextContent) else content}"
        else:
            text = "roots: " + ", ".join(str(r.uri) for r in answer.roots)
        return t.CallToolResult(content=[t.TextContent(type="text", text=text)])

    async def changed(self) -> None:
        await self.bus.publish(ToolsListChanged())
        for session in list(self.sessions):
            await session.send_tool_list_changed()


    async def list_resources(self, ctx: ServerRequestContext[Any], params: Any) -> t.ListResourcesResult:
        return t.ListResourcesResult(resources=[
            t.Resource(uri="kit://doc/1", name="doc1", mime_type="text/plain"),
            t.Resource(uri="kit://doc/2", name="doc2", mime_type="text/plain"),
            t.Resource(uri="kit://blob/1", name="blob1", mime_type="application/octet-stream"),
        ])

    async def list_templates(self, ctx: ServerRequestContext[Any], params: Any) -> t.ListResourceTemplatesResult:
        return t.ListResourceTemplatesResult(resource_templates=[
            t.ResourceTemplate(uri_template="kit://items/{id}", name="item", mime_type="application/json"),
        ])

    async def read_resource(self, ctx: ServerRequestContext[Any], params: t.ReadResourceRequestParams) -> Any:
        uri = str(params.uri)
        if uri.startswith("kit://doc/"):
            return t.ReadResourceResult(contents=[t.TextResourceContents(uri=uri, mime_type="text/plain",
                                                                         text=f"{self.name} document {uri[10:]}")])
        if uri == "kit://blob/1":
            return t.ReadResourceResult(contents=[t.BlobResourceContents(uri=uri, blob=WAV,
                                                                         mime_type="application/octet-stream")])
        if uri.startswith("kit://items/"):
            return t.ReadResourceResult(contents=[t.TextResourceContents(
                uri=uri, mime_type="application/json", text=f'{{"id": "{uri[12:]}", "server": "{self.name}"}}')])
        raise MCPError(-32002, f"Resource not found: {uri}")

    async def list_prompts(self, ctx: ServerRequestContext[Any], params: Any) -> t.ListPromptsResult:
        return t.ListPromptsResult(prompts=[
            t.Prompt(name="greet", description=self.descriptions.get("prompt:greet", "Greet someone"), arguments=[
                t.PromptArgument(name="who", required=True), t.PromptArgument(name="tone")]),
        ])

    async def get_prompt(self, ctx: ServerRequestContext[Any], params: t.GetPromptRequestParams) -> Any:
        if params.name != "greet":
            raise MCPError(t.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        args = params.arguments or {}
        return t.GetPromptResult(description="a greeting", messages=[
            t.PromptMessage(role="user", content=t.TextContent(type="text", text=f"Say hi to {args.get('who')}")),
            t.PromptMessage(role="user", content=t.EmbeddedResource(type="resource", resource=t.TextResourceContents(
                uri="kit://doc/1", mime_type="text/plain", text="context"))),
        ])

    async def complete(self, ctx: ServerRequestContext[Any], params: t.CompleteRequestParams) -> t.CompleteResult:
        ref = params.ref
        if isinstance(ref, t.PromptReference) and ref.name == "greet" and params.argument.name == "who":
            pool = ["alice", "albert", "bob"]
        elif isinstance(ref, t.ResourceTemplateReference) and ref.uri == "kit://items/{id}":
            pool = ["1", "12", "42"]
        else:
            pool = []
        values = [v for v in pool if v.startswith(params.argument.value)]
        return t.CompleteResult(completion=t.Completion(values=values, total=len(values), has_more=False))


class KitServer(Server[Any]):
    def create_initialization_options(self, notification_options: Any = None, experimental_capabilities: Any = None,
                                      extensions: Any = None) -> Any:
        return super().create_initialization_options(notification_options or NotificationOptions(tools_changed=True),
                                                     experimental_capabilities, extensions)


def build(name: str, extra: int) -> KitServer:
    kit = Kit(name, extra)
    server = KitServer(name, version="1.0", on_list_tools=kit.list_tools, on_call_tool=kit.call_tool,
                       on_list_resources=kit.list_resources, on_list_resource_templates=kit.list_templates,
                       on_read_resource=kit.read_resource, on_list_prompts=kit.list_prompts,
                       on_get_prompt=kit.get_prompt, on_completion=kit.complete,
                       on_subscribe_resource=kit.subscribe, on_unsubscribe_resource=kit.unsubscribe,
                       on_subscriptions_listen=ListenHandler(kit.bus))
    server.add_notification_handler("notifications/initialized", t.NotificationParams, kit.on_initialized)
    return server


async def serve_stdio(server: KitServer) -> None:
    from mcp.server.stdio import stdio_server

    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def serve_web(server: KitServer, transport: str) -> None:
    import contextlib

    from _web import serve_on_free_port
    from mcp.server.sse import SseServerTransport
    from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    manager = StreamableHTTPSessionManager(app=server)
    sse = SseServerTransport("/messages/")

    async def handle_sse(request: Request) -> Response:
        async with sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await server.run(read, write, server.create_initialization_options())
        return Response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        async with manager.run():
            yield

    app = Starlette(routes=[Route("/mcp", StreamableHTTPASGIApp(manager)), Route("/sse", handle_sse),
                            Mount("/messages/", app=sse.handle_post_message)], lifespan=lifespan)
    await serve_on_free_port(app)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", default="stdio", choices=["stdio", "http", "sse"])
    parser.add_argument("--tools", type=int, default=0, help="extra generated tools")
    parser.add_argument("--name", default="kit")
    args = parser.parse_args()
    server = build(args.name, args.tools)
    if args.transport == "stdio":
        anyio.run(serve_stdio, server)
    else:
        anyio.run(serve_web, server, args.transport)


if __name__ == "__main__":
    print(f"kit server {os.getpid()} starting", file=sys.stderr, flush=True)
    main()
