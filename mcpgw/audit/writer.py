"""The audit writer: records leave the request path at once and reach the store in batches.

A request only appends a dict of raw values to a bounded in-memory queue (a few µs). One
dedicated thread per gateway process does the rest: it redacts, serialises, hashes (one chain
per writer, see `mcpgw.audit.chain`) and inserts up to `batch_size` records per transaction,
every `flush_interval` seconds or sooner when a batch is full. A thread rather than a task: the
database drivers are blocking, and a thread is not cancelled with the request or the gateway's
task group, so `close()` can flush whatever is left after the last step ended.

When the store is unreachable the thread keeps the batch, retries with backoff and says so in
the log; `reachable` turns false, which the audit stage uses to refuse calls in fail-closed
mode. When the queue is full a record is dropped — loudly: an error in the log (repeated every
10 s while it lasts), a count in `/readyz`, and an `audit/gap` record in the trail itself saying
how many records are missing, written as soon as the store takes writes again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict, deque
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import Dialect, Engine, select, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from mcpgw import __version__
from mcpgw.audit.chain import genesis, record_hash
from mcpgw.audit.models import RECORD_FIELDS, STEPS, WRITERS
from mcpgw.audit.redact import Redactor
from mcpgw.audit.store import make_engine, migrate, shown_url
from mcpgw.config.models import AuditSettings
from mcpgw.pipeline.step import new_step_id

log = logging.getLogger("mcpgw.audit")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOUD_EVERY = 10.0
"""Seconds between repeats of the "queue full" error while records are being dropped."""
IDLE_PROBE = 1.0
"""Seconds of quiet after which the thread checks the store is still there (for fail-closed)."""
RETRY_MAX = 5.0
AWAITING_MAX = 10_000


_seconds: tuple[int, str] = (-1, "")


def iso(ns: int) -> str:
    """ISO-8601 UTC with microseconds; the seconds part is cached (records come many per second)."""
    global _seconds
    seconds, micros = divmod(ns // 1000, 1_000_000)
    if _seconds[0] != seconds:
        _seconds = (seconds, (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_seconds[1]}.{micros:06d}Z"


def blank() -> dict[str, Any]:
    return dict.fromkeys(RECORD_FIELDS)


_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode
_lists: dict[tuple[str, ...], str] = {}


def _json_list(value: tuple[str, ...]) -> str:
    """Roles and scopes repeat from step to step: encode each distinct tuple once."""
    found = _lists.get(value)
    if found is None:
        found = _json(list(value))
        if len(_lists) < 1000:
            _lists[value] = found
    return found


_AGENT_TEXT = ("target", "error", "session_id", "client_name", "client_version", "subject", "client_id",
               "upstream_target")
"""Fields whose text comes from outside the gateway; PostgreSQL refuses text holding NUL."""


def _is_outage(exc: Exception) -> bool:
    """A store that cannot be reached (retry the same records later), as opposed to a record the
    store refuses (retrying would block the trail for ever)."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _safe(value: Any) -> Any:
    return value.replace("\x00", "\\u0000") if isinstance(value, str) and "\x00" in value else value


def finish(row: dict[str, Any]) -> dict[str, Any]:
    """Turn a queued record (raw values) into a storable one. Runs in the writer thread."""
    redactor: Redactor = row.pop("_redactor")
    row["ts"] = iso(row.pop("_ns"))
    arguments = row["arguments"]
    if arguments is not None:
        if hasattr(arguments, "model_dump"):
            arguments = arguments.model_dump(mode="json", by_alias=True, exclude_none=True)
        raw = _json(arguments)
        row["request_bytes"] = len(raw) if raw.isascii() else len(raw.encode())
        clean = redactor.arguments(row["target"] or "", arguments)
        row["arguments"] = raw if clean is arguments else _json(clean)
    for name in ("roles", "scopes"):
        if row[name] is not None:
            row[name] = _json_list(tuple(row[name]))
    if row["error"]:
        row["error"] = redactor.text(row["error"])
    for name in _AGENT_TEXT:
        value = row[name]
        if value is not None and "\x00" in value:
            row[name] = _safe(value)
    return row


def _insert_of(dialect: Dialect) -> tuple[str, tuple[str, ...] | None]:
    """The INSERT for a record in this dialect's paramstyle, and the column order if positional."""
    compiled = STEPS.insert().compile(dialect=dialect, column_keys=[*RECORD_FIELDS, "hash"])
    return str(compiled), tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None


class AuditTrail:
    """The audit trail of one gateway process: a queue, a writer thread, one hash chain."""

    def __init__(self, settings: AuditSettings) -> None:
        self.settings = settings
        self.url = settings.url
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._queue: deque[dict[str, Any]] = deque()
        self._bound = settings.queue_size
        self._batch_size = settings.batch_size
        self._interval = settings.flush_interval
        self._wake = threading.Event()
        self._drained = threading.Condition()
        self._attempted = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._batch: list[dict[str, Any]] = []
        self._chain_seq = 0
        self._prev = genesis(self.writer)
        self._resync = False
        self._insert: tuple[str, tuple[str, ...] | None] | None = None
        self._last_ok = time.monotonic()
        self._loud_at = 0.0
        self.reachable: bool | None = None
        """None until the first attempt to open the store has ended; then whether the last write worked."""
        self.last_error: str | None = None
        self.written = 0
        self.dropped = 0
        self._gaps_recorded = 0
        self.closed = False
        self._awaiting: OrderedDict[str, str] = OrderedDict()

    # -- the request side (event loop thread) ----------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._batch)

    @property
    def full(self) -> bool:
        return len(self._queue) >= self._bound

    def submit(self, row: dict[str, Any]) -> bool:
        """Queue a record (raw values plus `_ns` and `_redactor`). False if it had to be dropped."""
        if self.closed or len(self._queue) >= self._bound:
            self._drop()
            return False
        self._queue.append(row)
        if len(self._queue) >= self._batch_size:
            self._wake.set()
        return True

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._loud_at >= LOUD_EVERY:
            self._loud_at = now
            state = "slow" if self.reachable else f"unreachable: {self.last_error or '?'}"
            why = "the audit trail is closed" if self.closed else (
                f"the audit queue is full ({self._bound} records, [audit] queue_size) because the store at "
                f"{shown_url(self.url)} is {state}")
            log.error("AUDIT RECORDS DROPPED: %s; %d record(s) dropped so far. The trail will hold an audit/gap "
                      "record with the count.", why, self.dropped)

    def awaiting_answers(self, request_state: str, step_id: str) -> None:
        """A step ended asking the agent for input (a 2026-07-28 input-required result): the retry
        that echoes `request_state` is recorded as its child. Bounded: old questions are forgotten."""
        self._awaiting[request_state] = step_id
        if len(self._awaiting) > AWAITING_MAX:
            self._awaiting.popitem(last=False)

    def answered(self, request_state: str) -> str | None:
        """The step whose question this retry answers, if it is remembered."""
        return self._awaiting.pop(request_state, None)

    async def wait_first_attempt(self, timeout: float) -> None:
        if not self._attempted.is_set():
            await anyio.to_thread.run_sync(self._attempted.wait, timeout)

    def stats(self) -> dict[str, Any]:
        return {"url": shown_url(self.url), "writer": self.writer, "reachable": self.reachable,
                "error": self.last_error, "queued": self.queued, "written": self.written, "dropped": self.dropped}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mcpgw-audit", daemon=True)
            self._thread.start()

    async def flush(self, timeout: float) -> bool:
        """Write what is queued now (bounded by `timeout`); True if the queue emptied."""
        self._wake.set()
        return await anyio.to_thread.run_sync(self._wait_drained, timeout)

    def _wait_drained(self, timeout: float) -> bool:
        with self._drained:
            return self._drained.wait_for(lambda: not self.queued or not self._running(), timeout)

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Write every queued record (bounded by `timeout` while the store is unreachable), then stop."""
        self.closed = True
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            await anyio.to_thread.run_sync(thread.join, timeout)
        left = self.queued
        if left:
            log.error("AUDIT RECORDS LOST: %d record(s) could not be written before shutdown; the store at %s is "
                      "unreachable (%s)", left, shown_url(self.url), self.last_error)
        else:
            log.info("audit trail closed: %d record(s) written by %s", self.written, self.writer)

    # -- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        backoff = self._interval
        while True:
            if self._attempted.is_set():  # the store is opened at once, not one interval later
                self._wake.wait(self._interval if self.reachable is not False else backoff)
            self._wake.clear()
            stopping = self._stopping
            try:
                self._cycle()
            except Exception as exc:  # boundary: the store failing must never stop the gateway
                self._failed(exc)
                backoff = min(max(backoff * 2, 0.1), RETRY_MAX)
                continue  # even when stopping: aclose's join timeout bounds how long it is waited for
            backoff = self._interval
            with self._drained:
                self._drained.notify_all()
            if stopping and not self.queued:
                self._close_writer()
                return

    def _cycle(self) -> None:
        if self._engine is None:
            engine = make_engine(self.url)
            try:
                migrate(engine)
                with engine.begin() as conn:
                    conn.execute(WRITERS.insert().values(
                        writer=self.writer, host=socket.gethostname(), pid=os.getpid(), started=iso(time.time_ns()),
                        records=0, head=None, gateway_version=__version__))
            except Exception:
                engine.dispose()
                raise
            self._engine = engine
            self._ok()
        if self._resync:
            self._resync_chain()
        wrote = False
        while self._batch or self._queue:
            if not self._batch:
                self._batch = self._take()
            try:
                self._write(self._batch)
            except Exception as exc:
                if _is_outage(exc):
                    raise  # keep the batch and retry
                self._write_one_by_one(self._batch)
            self.written += len(self._batch)
            self._batch = []
            wrote = True
            self._ok()
        if not wrote and time.monotonic() - self._last_ok > IDLE_PROBE:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            self._ok()

    def _take(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        gap = self.dropped - self._gaps_recorded
        if gap:
            batch.append(self._gap_record(gap))
            self._gaps_recorded += gap
        queue = self._queue
        while queue and len(batch) < self._batch_size:
            batch.append(finish(queue.popleft()))
        return batch

    def _gap_record(self, count: int) -> dict[str, Any]:
        row = blank()
        row.update(step_id=new_step_id(), ts=iso(time.time_ns()), kind="audit/gap", outcome="error",
                   error=f"{count} audit record(s) dropped: the queue was full ([audit] queue_size = {self._bound})")
        return row

    def _write(self, batch: list[dict[str, Any]]) -> None:
        assert self._engine is not None
        seq, prev = self._chain_seq, self._prev
        for row in batch:
            seq += 1
            row["writer"], row["chain_seq"], row["prev_hash"] = self.writer, seq, prev
            prev = row["hash"] = record_hash(row)
        with self._engine.begin() as conn:
            if self._insert is None:
                self._insert = _insert_of(conn.dialect)
            sql, order = self._insert
            # The driver's own executemany: the Core insert spends more time binding 30 columns
            # per row than SQLite spends storing them.
            conn.exec_driver_sql(sql, [tuple(r[k] for k in order) for r in batch] if order else batch)
            conn.execute(WRITERS.update().where(WRITERS.c.writer == self.writer).values(records=seq, head=prev))
        self._chain_seq, self._prev = seq, prev

    def _write_one_by_one(self, batch: list[dict[str, Any]]) -> None:
        """The store refused the batch for what is in it, not for an outage: write its records one
        at a time, and put a stand-in (same step id, kind and outcome, the store's reason as the
        error) in place of any record the store refuses, so one bad value never blocks the trail."""
        for row in batch:
            try:
                self._write([row])
            except Exception as exc:
                if _is_outage(exc):
                    raise
                cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
                reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
                log.error("AUDIT RECORD REFUSED by the store (%s); a stand-in record is written instead", reason)
                stand_in = blank()
                stand_in.update({k: _safe(row[k]) for k in ("step_id", "parent_id", "ts", "kind", "outcome")},
                                error=f"this record could not be stored: {_safe(reason)}")
                self._write([stand_in])

    def _resync_chain(self) -> None:
        """After a failed write, ask the store where the chain stands: a commit whose answer was
        lost (a dropped connection) must not be written twice."""
        assert self._engine is not None
        with self._engine.connect() as conn:
            row = conn.execute(select(WRITERS.c.records, WRITERS.c.head).where(WRITERS.c.writer == self.writer)).one()
        if row.records > self._chain_seq:
            self.written += len(self._batch)
            self._batch = []
            self._chain_seq, self._prev = row.records, row.head
        self._resync = False

    def _close_writer(self) -> None:
        if self._engine is None:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(WRITERS.update().where(WRITERS.c.writer == self.writer).values(closed=iso(time.time_ns())))
        except Exception as exc:  # boundary: the records are written; only the closing mark is missing
            log.warning("audit: could not mark writer %s closed: %s", self.writer, exc)
        self._engine.dispose()

    def _ok(self) -> None:
        self._last_ok = time.monotonic()
        if self.reachable is False:
            log.warning("audit store %s is reachable again; writing %d queued record(s)", shown_url(self.url),
                        self.queued)
        self.reachable = True
        self.last_error = None
        self._attempted.set()

    def _failed(self, exc: Exception) -> None:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.reachable is not False or message != self.last_error:
            log.error("AUDIT STORE UNREACHABLE (%s): %s; %d record(s) queued, retrying", shown_url(self.url),
                      message, self.queued)
        self.reachable = False
        self.last_error = message
        self._resync = self._engine is not None
        self._attempted.set()
