"""Opening the audit store and keeping its schema current.

One URL picks the engine: `sqlite:///PATH` (WAL mode, so readers such as `mcpgw audit tail`
never block the gateway's writes) or `postgresql+psycopg://...`. The gateway creates and
migrates the schema when it starts; the CLI only reads, and refuses a store it cannot find
rather than creating an empty one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url

from mcpgw.audit.models import META, SCHEMA_VERSION, STEPS, TABLES

MIGRATIONS: dict[int, Callable[[Connection], None]] = {}
"""`MIGRATIONS[n]` brings a store from schema version n to n + 1 (none yet: version 1 is the first)."""


class StoreError(Exception):
    """The store cannot be used as it is (not found, or written by a newer mcpgw)."""


def shown_url(url: str) -> str:
    """The URL with any password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL: readers do not block the writer; NORMAL: a commit survives a killed process
            # (the WAL is in the OS cache), only a power loss can take the last commits.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                         connect_args={"connect_timeout": 5})


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def migrate(engine: Engine) -> int:
    """Create the tables if needed and bring them to `SCHEMA_VERSION`; returns the version found."""
    with engine.begin() as conn:
        existing = set(inspect(conn).get_table_names())
        fresh = STEPS.name not in existing
        for table in TABLES:
            table.create(conn, checkfirst=True)
        row = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).first()
        found = SCHEMA_VERSION if fresh and row is None else int(row[0]) if row else 1
        if found > SCHEMA_VERSION:
            raise StoreError(f"the audit store has schema version {found}, newer than this mcpgw understands "
                             f"({SCHEMA_VERSION}); upgrade mcpgw")
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
        if row is None:
            conn.execute(META.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif found != SCHEMA_VERSION:
            conn.execute(META.update().where(META.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))
        return found


def open_existing(url: str) -> Engine:
    """An engine on a store that must already exist (for the CLI, which never creates one)."""
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise StoreError(f"no audit trail at {path} (the gateway creates it when it serves with auditing on)")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            version = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar() \
                if META.name in tables else None
    except Exception as exc:
        raise StoreError(f"cannot open the audit store {shown_url(url)}: {exc}") from None
    if STEPS.name not in tables:
        raise StoreError(f"{shown_url(url)} holds no audit trail (no {STEPS.name} table)")
    if version is not None and int(version) > SCHEMA_VERSION:
        raise StoreError(f"the audit store has schema version {version}, newer than this mcpgw understands")
    return engine
