"""Serve the gateway to one local agent over stdin/stdout (what Claude Desktop launches).

Only protocol goes to stdout; the SDK points fd 1 at stderr while serving, and all logging is
configured to stderr by the CLI. The gateway shuts down when the agent closes stdin or on
SIGTERM/SIGINT; either way every stdio upstream is stopped (stdin closed, then SIGTERM, then
SIGKILL to its process group) before the gateway exits, so no child outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import anyio.to_thread
from anyio import CancelScope
from mcp.server.stdio import stdio_server

from mcpgw.front.server import build_server
from mcpgw.gateway import Gateway

log = logging.getLogger("mcpgw.front")

WRITE_OUT_GRACE = 5.0
"""Seconds the session gets to write its last answers after stdin is ended on shutdown."""


async def stop_on_signals(scope: CancelScope, gateway: Gateway, stdin: StdinLines | None) -> None:
    """SIGTERM/SIGINT: refuse new requests, let those in flight finish (bounded), then stop.

    Stopping is done by ending stdin, as if the agent had closed it, so the answers of the
    requests that just finished are still written out; cancelling is only the fallback.
    """
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for received in signals:
            log.info("received %s; shutting down", signal.Signals(received).name)
            await gateway.drain(gateway.config.gateway.shutdown_grace)
            if stdin is not None:
                stdin.close()
                await anyio.sleep(WRITE_OUT_GRACE)
            scope.cancel()
            return


class StdinLines:
    """Lines from the agent, read from a private duplicate of fd 0 without a blocking thread.

    The SDK reads stdin in a worker thread that cannot be interrupted, so a gateway told to stop
    (SIGTERM) while its agent keeps stdin open would hang until the next line. An asyncio pipe
    reader is cancellable. fd 0 itself is pointed at /dev/null, so nothing else in the process
    (or a child) can read the agent's messages.
    """

    def __init__(self) -> None:
        self._fd = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)

        self._transport: asyncio.ReadTransport | None = None

    def close(self) -> None:
        """End the lines, as if the agent had closed stdin."""
        if self._transport is not None:
            self._transport.close()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        pipe = os.fdopen(self._fd, "rb", buffering=0)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        try:
            transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
            self._transport = transport
        except ValueError:  # not a pipe, socket or tty (a regular file): fall back to a thread
            async for line in _thread_lines(pipe):
                yield line
            return
        try:
            while raw := await reader.readline():
                yield raw.decode("utf-8", errors="replace")
        finally:
            transport.close()


async def _thread_lines(pipe: Any) -> AsyncIterator[str]:
    while line := await anyio.to_thread.run_sync(pipe.readline, abandon_on_cancel=True):
        yield line.decode("utf-8", errors="replace")


class StdoutPipe:
    """Answers to the agent, written to a private duplicate of fd 1 by the event loop.

    The SDK writes each message through a worker thread (about 0.14 ms of the gateway's CPU per
    call, measured by bench/). fd 1 itself is pointed at stderr, so a stray print from anything
    in the process lands in the log instead of corrupting the protocol stream.
    """

    def __init__(self) -> None:
        self._fd = os.dup(1)
        os.dup2(2, 1)
        self._writer: asyncio.StreamWriter | None = None
        self._fallback: Any = None

    async def _open(self) -> None:
        pipe = os.fdopen(self._fd, "wb", buffering=0)
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
        except ValueError:  # a regular file: write through a thread, as the SDK does
            self._fallback = anyio.wrap_file(pipe)
            return
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def write(self, text: str) -> None:
        if self._writer is None and self._fallback is None:
            await self._open()
        if self._writer is not None:
            self._writer.write(text.encode("utf-8"))
        else:
            await self._fallback.write(text.encode("utf-8"))

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer.drain()
        elif self._fallback is not None:
            await self._fallback.flush()


async def serve_stdio(gateway: Gateway) -> None:
    server, _notifier = build_server(gateway, default_transport="stdio")
    stdin = StdinLines() if sys.platform != "win32" else None
    stdout = StdoutPipe() if sys.platform != "win32" else None
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, tg.cancel_scope, gateway, stdin)
        await tg.start(gateway.run)
        async with stdio_server(stdin=cast(Any, stdin), stdout=cast(Any, stdout)) as (read, write):
            await server.run(read, write, server.create_initialization_options())
        tg.cancel_scope.cancel()
