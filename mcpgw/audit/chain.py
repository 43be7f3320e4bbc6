"""Tamper evidence: every record carries a SHA-256 over its fields and its predecessor's hash.

There is one chain per writer (one gateway process), not one for the whole store: several
gateways sharing a PostgreSQL database then write concurrently without a global lock, and each
chain is still total. A chain starts from a genesis value derived from the writer's id and is
numbered `chain_seq` 1, 2, 3...; the `writers` table holds each chain's length and head hash,
updated in the same transaction as the records. `verify` therefore detects an edited record
(its hash no longer matches), a removed or reordered record (a gap in `chain_seq` or a
`prev_hash` that is not its predecessor's hash) and records cut from the end (the chain is
shorter than, or its head differs from, what its writer row says).

What it does not do: someone able to rewrite the whole database can recompute every hash.
Anchoring chain heads outside the store is the remedy; it is not part of this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from mcpgw.audit.models import RECORD_FIELDS, STEPS, WRITERS


def genesis(writer: str) -> str:
    return hashlib.sha256(f"mcpgw-audit-genesis:{writer}".encode()).hexdigest()


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def record_hash(row: Mapping[str, Any]) -> str:
    """The hash of one record: SHA-256 of the compact JSON array of its `RECORD_FIELDS` values
    (including prev_hash), in that order. Documented so that anyone can re-check an export."""
    return hashlib.sha256(_encode([row[name] for name in RECORD_FIELDS]).encode()).hexdigest()


@dataclass
class ChainReport:
    writer: str
    records: int = 0
    expected: int | None = None
    closed: bool = False


@dataclass
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)
    problem: str | None = None
    """The first broken record (or chain), named; None when every chain verifies."""

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def records(self) -> int:
        return sum(c.records for c in self.chains)


def _where(row: Mapping[Any, Any]) -> str:
    return f"record seq={row['seq']} (step {row['step_id']}, writer {row['writer']}, #{row['chain_seq']})"


def verify_rows(rows: Iterable[Mapping[Any, Any]], writers: Mapping[str, Mapping[Any, Any]]) -> VerifyReport:
    """Check rows ordered by (writer, chain_seq) against each other and the writer rows."""
    report = VerifyReport()
    current: ChainReport | None = None
    prev = ""
    seen: set[str] = set()

    def close_chain() -> str | None:
        if current is None:
            return None
        info = writers.get(current.writer)
        if info is None:
            return f"writer {current.writer}: {current.records} record(s) but no writer row (it was removed)"
        current.expected, current.closed = info["records"], info["closed"] is not None
        if info["records"] != current.records:
            return (f"writer {current.writer}: its writer row says {info['records']} record(s), the store holds "
                    f"{current.records} (records were removed from the end of the chain, or the row was edited)")
        if info["head"] != (prev if current.records else None):
            return f"writer {current.writer}: the chain's last hash differs from the head its writer row recorded"
        return None

    for row in rows:
        if current is None or row["writer"] != current.writer:
            if problem := close_chain():
                report.problem = problem
                return report
            current = ChainReport(row["writer"])
            report.chains.append(current)
            seen.add(row["writer"])
            prev = genesis(row["writer"])
        expected_seq = current.records + 1
        if row["chain_seq"] != expected_seq:
            report.problem = (f"{_where(row)}: expected #{expected_seq} of this writer's chain "
                              f"(record(s) before it were removed)")
            return report
        if row["prev_hash"] != prev:
            report.problem = f"{_where(row)}: its prev_hash is not the hash of the record before it"
            return report
        if record_hash(row) != row["hash"]:
            report.problem = f"{_where(row)}: its contents do not match its hash (the record was changed)"
            return report
        prev = row["hash"]
        current.records += 1
    if problem := close_chain():
        report.problem = problem
        return report
    for name, info in writers.items():
        if name not in seen and info["records"]:
            report.problem = f"writer {name}: its writer row says {info['records']} record(s), the store holds none"
            return report
        if name not in seen:
            report.chains.append(ChainReport(name, 0, 0, info["closed"] is not None))
    return report


def verify(engine: Engine) -> VerifyReport:
    """Recompute every chain in the store. Streams rows: memory does not grow with the store."""
    with engine.connect() as conn:
        writers = {r["writer"]: r for r in conn.execute(select(WRITERS)).mappings()}
        result = conn.execution_options(yield_per=5000).execute(
            select(STEPS).order_by(STEPS.c.writer, STEPS.c.chain_seq)
        )
        return verify_rows(result.mappings(), writers)
