"""Reading the audit trail: filters shared by `query`, `tail` and `export`, and the output forms."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from sqlalchemy import ColumnElement, Engine, Select, and_, or_, select

from mcpgw.audit.models import STEPS
from mcpgw.audit.writer import iso

COLUMNS: tuple[str, ...] = tuple(c.name for c in STEPS.columns)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(value: str, now: datetime | None = None) -> str:
    """`10m`, `2h`, `1d` ago, or an ISO-8601 time (UTC unless it says otherwise), as stored."""
    now = now or datetime.now(UTC)
    if match := _RELATIVE.match(value.strip()):
        moment = now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not a time: {value!r} (use ISO-8601 like 2026-01-31T12:00:00Z, or 30s, 10m, 2h, 1d)")\
                from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return iso((delta // timedelta(microseconds=1)) * 1000)


def _like(glob: str) -> str:
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


@dataclass(frozen=True)
class Filters:
    subject: str | None = None
    tool: str | None = None
    outcome: tuple[str, ...] = ()
    kind: str | None = None
    upstream: str | None = None
    since: str | None = None
    until: str | None = None
    trace: str | None = None

    def where(self) -> ColumnElement[bool]:
        c = STEPS.c
        terms: list[ColumnElement[bool]] = []
        if self.subject:
            terms.append(or_(c.subject == self.subject, c.client_id == self.subject))
        if self.tool:
            terms.append(c.target.like(_like(self.tool), escape="\\"))
        if self.outcome:
            terms.append(c.outcome.in_(self.outcome))
        if self.kind:
            terms.append(c.kind.like(_like(self.kind), escape="\\"))
        if self.upstream:
            terms.append(c.upstream == self.upstream)
        if self.since:
            terms.append(c.ts >= self.since)
        if self.until:
            terms.append(c.ts < self.until)
        if self.trace:
            terms.append(c.trace_id == self.trace)
        return and_(True, *terms)


def selection(filters: Filters, *, after: int = 0) -> Select[Any]:
    return select(STEPS).where(filters.where(), STEPS.c.seq > after).order_by(STEPS.c.seq)


def records(engine: Engine, filters: Filters, *, limit: int | None = None, last: bool = False,
            after: int = 0) -> Iterator[dict[str, Any]]:
    """Matching records in store order; with `last`, the last `limit` of them (still in order)."""
    query = selection(filters, after=after)
    if last and limit is not None:
        inner = query.order_by(None).order_by(STEPS.c.seq.desc()).limit(limit).subquery()
        query = select(inner).order_by(inner.c.seq)
    elif limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query).mappings():
            yield dict(row)


def line(row: Mapping[str, Any]) -> str:
    """One record as a line for people: time, outcome, kind, target, who, latency, step id, error."""
    latency = f"{row['latency_us'] / 1000:.1f}ms" if row["latency_us"] is not None else "-"
    target = row["target"] or "-"
    who = row["subject"] or "-"
    parent = f" parent={row['parent_id']}" if row["parent_id"] else ""
    error = f"  {row['error']}" if row["error"] else ""
    return (f"{row['ts']}  {row['outcome']:<11} {row['kind']:<22} {target:<28} {who:<12} {latency:>9}  "
            f"{row['step_id']}{parent}{error}")


def write_jsonl(rows: Iterator[Mapping[str, Any]], out: IO[str]) -> int:
    count = 0
    for row in rows:
        out.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
        count += 1
    return count


def write_csv(rows: Iterator[Mapping[str, Any]], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(dict(row))
        count += 1
    return count
