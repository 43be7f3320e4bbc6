"""A tap on an upstream transport's streams: notices disconnects and repairs tool listings.

Two problems are solved at the transport layer because nothing above it can:
- The SDK client does not wake up when an idle stdio child dies; the read stream ending is the
  earliest and cheapest signal, so the tap turns it into an event the supervisor awaits.
- The SDK client validates a whole `tools/list` result at once, so one malformed tool from one
  upstream would hide all of that upstream's tools. The tap sees responses before the client
  does and repairs or drops malformed tools one by one, reporting each as a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Self

import anyio
import mcp.types as t
from mcp.shared.message import SessionMessage
from mcp_types.jsonrpc import JSONRPCRequest, JSONRPCResponse
from pydantic import BaseModel, ValidationError

from mcpgw.upstream.schemas import sanitize_tool

Warn = Callable[[str], None]


class _Taps:
    def __init__(self, warn: Warn) -> None:
        self.warn = warn
        self.closed = anyio.Event()
        self.list_ids: dict[Any, str] = {}
        """Ids of our listing requests in flight, and their methods."""


class _Tap:
    """Common part of both taps: wraps one SDK stream, closes it on exit."""

    def __init__(self, inner: Any, taps: _Taps) -> None:
        self._inner = inner
        self._taps = taps

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _ReadTap(_Tap):
    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._taps.closed.set()
            raise
        if isinstance(item, SessionMessage):
            message = item.message
            if isinstance(message, JSONRPCResponse) and message.id in self._taps.list_ids:
                method = self._taps.list_ids.pop(message.id)
                _repair_listing(method, message.result, self._taps.warn)
        return item

    async def aclose(self) -> None:
        self._taps.closed.set()
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None


    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)


class _WriteTap(_Tap):
    async def send(self, item: SessionMessage, /) -> None:
        message = item.message
        if isinstance(message, JSONRPCRequest) and message.method in _LISTINGS:
            self._taps.list_ids[message.id] = message.method
        await self._inner.send(item)



_LISTINGS: dict[str, tuple[str, type[BaseModel]]] = {
    "tools/list": ("tools", t.Tool),
    "prompts/list": ("prompts", t.Prompt),
    "resources/list": ("resources", t.Resource),
    "resources/templates/list": ("resourceTemplates", t.ResourceTemplate),
}


def _repair_listing(method: str, result: dict[str, Any], warn: Warn) -> None:
    field, model = _LISTINGS[method]
    items = result.get(field)
    if not isinstance(items, list):
        return
    kind = field.rstrip("s").replace("resourceTemplate", "resource template")
    kept = []
    for index, raw in enumerate(items):
        key = "uriTemplate" if model is t.ResourceTemplate else "uri" if model is t.Resource else "name"
        label = raw.get(key) if isinstance(raw, dict) and isinstance(raw.get(key), str) else f"#{index}"
        repaired: dict[str, Any] | None = raw if isinstance(raw, dict) else None
        if model is t.Tool:
            repaired, notes = sanitize_tool(raw)
            for note in notes:
                warn(f"tool {label!r}: {note}")
        if repaired is None:
            if model is not t.Tool:
                warn(f"{kind} {label!r} dropped: not a JSON object")
            continue
        try:
            model.model_validate(repaired, by_name=False)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            warn(f"{kind} {label!r} dropped: invalid {where}: {first['msg']}")
            continue
        kept.append(repaired)
    result[field] = kept


class TappedTransport:
    """Wraps an SDK client transport (an async context manager yielding read/write streams)."""

    def __init__(self, inner: AbstractAsyncContextManager[Any], warn: Warn) -> None:
        self._inner = inner
        self.taps = _Taps(warn)

    @property
    def closed(self) -> anyio.Event:
        """Set once the upstream's read stream has ended: the connection is gone."""
        return self.taps.closed

    async def __aenter__(self) -> tuple[_ReadTap, _WriteTap]:
        read, write = await self._inner.__aenter__()
        return _ReadTap(read, self.taps), _WriteTap(write, self.taps)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self.taps.closed.set()
        return await self._inner.__aexit__(exc_type, exc, tb)
