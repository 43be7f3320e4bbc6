"""The audit store's tables, and the one list of columns that the hash chain covers.

Three tables, all prefixed `mcpgw_audit_` so the store can share a database with other things:
- `steps`: one row per recorded step, chained per writer (see `mcpgw.audit.chain`);
- `writers`: one row per gateway process that wrote records, with its chain's length and head,
  updated in the same transaction as every batch: removing records from the end of a chain is
  therefore as visible as editing one;
- `meta`: the schema version, so a newer gateway can migrate and an older one can refuse.

Values are plain JSON types (text, integers, one float) so that a record hashes the same when
read back from SQLite or PostgreSQL; times are ISO-8601 UTC text, which sorts as it reads.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import BigInteger, Column, Index, Integer, Table, Text
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 1
ROW_NUMBER = BigInteger().with_variant(Integer, "sqlite")
"""64-bit row numbers; SQLite only auto-numbers an INTEGER primary key (its rowid)."""


class AuditStep(SQLModel, table=True):
    __tablename__ = "mcpgw_audit_steps"
    __table_args__ = (
        Index("mcpgw_audit_steps_chain", "writer", "chain_seq", unique=True),
        Index("mcpgw_audit_steps_ts", "ts"),
    )

    seq: int | None = Field(default=None, sa_column=Column(ROW_NUMBER, primary_key=True, autoincrement=True))
    step_id: str = Field(index=True)
    parent_id: str | None = Field(default=None, index=True)
    trace_id: str | None = Field(default=None, index=True)
    span_id: str | None = None
    session_id: str | None = None
    ts: str = Field(description="when the step started, ISO-8601 UTC with microseconds")
    subject: str | None = Field(default=None, index=True)
    client_id: str | None = None
    roles: str | None = Field(default=None, description="JSON list")
    scopes: str | None = Field(default=None, description="JSON list")
    client_name: str | None = None
    client_version: str | None = None
    protocol: str | None = None
    transport: str | None = None
    kind: str
    upstream: str | None = None
    target: str | None = Field(default=None, index=True, description="the exported tool/prompt/URI")
    upstream_target: str | None = Field(default=None, description="the upstream's own name or URI")
    arguments: str | None = Field(default=None, sa_column=Column(Text), description="JSON, after redaction")
    outcome: str = Field(index=True)
    rule: str | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    latency_us: int | None = Field(default=None, sa_column=Column(BigInteger))
    request_bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    response_bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    tokens_in: int | None = Field(default=None, sa_column=Column(BigInteger))
    tokens_out: int | None = Field(default=None, sa_column=Column(BigInteger))
    cost: float | None = None
    writer: str
    chain_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    prev_hash: str
    hash: str


class AuditWriter(SQLModel, table=True):
    __tablename__ = "mcpgw_audit_writers"

    writer: str = Field(primary_key=True)
    host: str
    pid: int
    started: str
    closed: str | None = None
    records: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    head: str | None = None
    gateway_version: str


class AuditMeta(SQLModel, table=True):
    __tablename__ = "mcpgw_audit_meta"

    key: str = Field(primary_key=True)
    value: str


def table(model: type[SQLModel]) -> Table:
    return cast(Table, cast(Any, model).__table__)


STEPS = table(AuditStep)
WRITERS = table(AuditWriter)
META = table(AuditMeta)
TABLES = (META, WRITERS, STEPS)

RECORD_FIELDS: tuple[str, ...] = tuple(c.name for c in STEPS.columns if c.name not in ("seq", "hash"))
"""Every column a record's hash covers, in hashing order: all but the store's own row number and
the hash itself. `prev_hash` is among them, which is what chains a record to the one before."""
