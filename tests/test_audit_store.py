"""The audit store on its own: a real SQLite file and (when MCPGW_TEST_POSTGRES_URL is set) a real
PostgreSQL database, written by the real writer thread; hash chains verified and then broken."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import text

from mcpgw.audit.chain import verify
from mcpgw.audit.models import SCHEMA_VERSION
from mcpgw.audit.redact import Redactor, configured_secrets
from mcpgw.audit.store import StoreError, make_engine, migrate, open_existing
from mcpgw.audit.writer import AuditTrail, blank
from mcpgw.config import AuditRedaction, AuditSettings, ConfigError, parse_config

from .conftest import PY, run_process, wait_until

REDACTOR = Redactor(AuditRedaction())


def record(i: int, **fields: Any) -> dict[str, Any]:
    row = blank()
    row.update(_ns=time.time_ns(), _redactor=REDACTOR, step_id=f"step-{i:06d}", kind="tools/call",
               target="kit__echo", arguments={"i": i}, outcome="ok", subject="tester", latency_us=10)
    row.update(fields)
    return row


def settings(url: str, **kw: Any) -> AuditSettings:
    return AuditSettings(url=url, flush_interval=0.01, **kw)


async def write(url: str, count: int, **kw: Any) -> AuditTrail:
    trail = AuditTrail(settings(url, **kw))
    trail.start()
    for i in range(count):
        assert trail.submit(record(i))
    await trail.aclose()
    assert trail.written == count and trail.dropped == 0
    return trail


# -- configuration ---------------------------------------------------------------------------


def test_audit_table_is_parsed_and_a_relative_sqlite_path_is_beside_the_config(tmp_path: Path) -> None:
    config = parse_config('[audit]\nurl = "sqlite:///trail/a.db"\nmode = "fail-closed"\n'
                          '[audit.redact.tools]\n"gh__*" = ["token", "auth.password"]\n', tmp_path / "servers.toml")
    assert config.audit.url == f"sqlite:///{tmp_path.resolve()}/trail/a.db"
    assert config.audit.mode == "fail-closed"
    assert config.audit.redact.tools == {"gh__*": ("token", "auth.password")}
    default = parse_config("", tmp_path / "servers.toml")
    assert default.audit.enabled and default.audit.url == f"sqlite:///{tmp_path.resolve()}/mcpgw-audit.db"


def test_bad_audit_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[audit]\nurl = "mysql://x/y"\nmode = "sometimes"\n[audit.redact]\npatterns = ["("]\n',
                     tmp_path / "servers.toml")
    rendered = info.value.render()
    assert "servers.toml:2: audit.url: must be sqlite:///PATH or postgresql+psycopg://" in rendered
    assert "servers.toml:3: audit.mode:" in rendered
    assert "audit.redact.patterns: invalid regular expression '('" in rendered


# -- redaction -------------------------------------------------------------------------------


def test_redaction_of_keys_token_shapes_configured_secrets_and_tool_paths(tmp_path: Path) -> None:
    config = parse_config(
        '[servers.crm]\nkind = "http"\nurl = "http://127.0.0.1:1/mcp"\n'
        'headers = { Authorization = "Bearer crm-secret-42" }\n'
        '[servers.tz]\nkind = "stdio"\ncommand = "x"\nenv = { TZ = "UTC", DB_PASSWORD = "hunter2hunter2" }\n'
        '[audit.redact.tools]\n"gh__*" = ["body.private", "items.*.pin"]\n', tmp_path / "servers.toml")
    secrets = configured_secrets(config)
    assert "crm-secret-42" in secrets and "hunter2hunter2" in secrets and "UTC" not in secrets
    redactor = Redactor(config.audit.redact, secrets)
    args = {
        "query": "use crm-secret-42 and hunter2hunter2 please",
        "api_key": "abc", "max_tokens": 100, "Authorization": {"user": "x"},
        "note": "key sk-ant-REDACTME0123456789abcdef and ghp_0123456789abcdefghijABCDEFGHIJ and "
                "jwt eyJhbGciOi.eyJzdWIiOiJ4In0.c2lnbmF0dXJl and postgres://bob:s3cret@db/x",
        "body": {"private": {"deep": 1}, "public": "ok"},
        "items": [{"pin": 1234, "name": "a"}, {"pin": 5678}],
    }
    clean = redactor.arguments("gh__create", args)
    marker = "[REDACTED]"
    assert clean["query"] == f"use {marker} and {marker} please"
    assert clean["api_key"] == marker and clean["Authorization"] == marker and clean["max_tokens"] == 100
    for secret in ("REDACTME", "ghp_", "eyJ", "s3cret"):
        assert secret not in clean["note"]
    assert "bob" not in clean["note"] or "s3cret" not in clean["note"]
    assert clean["body"] == {"private": marker, "public": "ok"}
    assert clean["items"] == [{"pin": marker, "name": "a"}, {"pin": marker}]
    assert args["api_key"] == "abc", "the step's own arguments are not changed"
    assert redactor.arguments("other__tool", {"body": {"private": 1}}) == {"body": {"private": 1}}
    assert redactor.text("upstream said: bad token crm-secret-42") == f"upstream said: bad token {marker}"


# -- the store, the writer, the chain ---------------------------------------------------------


@pytest.mark.anyio
async def test_records_reach_sqlite_and_their_chain_verifies(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    trail = await write(url, 250, batch_size=64)
    engine = open_existing(url)
    report = verify(engine)
    assert report.ok, report.problem
    assert report.records == 250 and len(report.chains) == 1 and report.chains[0].closed
    with sqlite3.connect(tmp_path / "audit.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = db.execute("SELECT value FROM mcpgw_audit_meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == str(SCHEMA_VERSION)
        order = [r[0] for r in db.execute("SELECT step_id FROM mcpgw_audit_steps ORDER BY seq")]
    assert order == [f"step-{i:06d}" for i in range(250)]
    # A second process (a restart) is a second chain in the same store; both verify.
    await write(url, 5)
    report = verify(engine)
    assert report.ok and len(report.chains) == 2 and report.records == 255
    assert trail.writer in {c.writer for c in report.chains}


@pytest.mark.anyio
async def test_verify_names_an_edited_a_removed_and_a_cut_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    await write(f"sqlite:///{path}", 10)
    engine = open_existing(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE mcpgw_audit_steps SET outcome = 'denied' WHERE seq = 4")
    report = verify(engine)
    assert not report.ok and "record seq=4 (step step-000003" in (report.problem or "")
    assert "contents do not match its hash" in (report.problem or "")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE mcpgw_audit_steps SET outcome = 'ok' WHERE seq = 4")
    assert verify(engine).ok
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM mcpgw_audit_steps WHERE seq = 6")
    report = verify(engine)
    assert not report.ok and "record seq=7" in (report.problem or "") and "removed" in (report.problem or "")
    path.unlink()
    await write(f"sqlite:///{path}", 10)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM mcpgw_audit_steps WHERE seq = 10")
    report = verify(open_existing(f"sqlite:///{path}"))
    assert not report.ok and "says 10 record(s), the store holds 9" in (report.problem or "")


def test_a_store_from_a_newer_mcpgw_is_refused_and_a_missing_one_is_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    with pytest.raises(StoreError, match="no audit trail at"):
        open_existing(url)
    assert not (tmp_path / "audit.db").exists()
    engine = make_engine(url)
    assert migrate(engine) == SCHEMA_VERSION
    assert migrate(engine) == SCHEMA_VERSION  # idempotent
    with engine.begin() as conn:
        conn.execute(text("UPDATE mcpgw_audit_meta SET value = '99' WHERE key = 'schema_version'"))
    with pytest.raises(StoreError, match="schema version 99, newer"):
        migrate(engine)


@pytest.mark.anyio
async def test_buffer_mode_keeps_records_until_the_store_is_back_and_says_loudly_when_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "not-yet"
    trail = AuditTrail(settings(f"sqlite:///{missing}/audit.db", queue_size=3))
    trail.start()
    try:
        await wait_until(lambda: trail.reachable is False)
        with caplog.at_level(logging.ERROR, logger="mcpgw.audit"):
            accepted = [trail.submit(record(i)) for i in range(5)]
        assert accepted == [True, True, True, False, False]
        assert trail.dropped == 2
        assert any("AUDIT RECORDS DROPPED" in r.getMessage() and "queue is full (3 records" in r.getMessage()
                   for r in caplog.records)
        missing.mkdir()
        await wait_until(lambda: trail.written == 4, timeout=30)
    finally:
        await trail.aclose()
    with sqlite3.connect(missing / "audit.db") as db:
        rows = db.execute("SELECT kind, step_id, error FROM mcpgw_audit_steps ORDER BY seq").fetchall()
    assert rows[0][0] == "audit/gap" and rows[0][2].startswith("2 audit record(s) dropped")
    assert [r[1] for r in rows[1:]] == ["step-000000", "step-000001", "step-000002"]
    assert verify(open_existing(f"sqlite:///{missing}/audit.db")).ok


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_two_writers_share_one_postgresql_store_and_each_chain_verifies(pg_url: str) -> None:
    first, second = AuditTrail(settings(pg_url, batch_size=50)), AuditTrail(settings(pg_url, batch_size=50))
    first.start()
    second.start()
    for i in range(300):  # interleaved: the rows of both writers alternate in the table
        first.submit(record(i))
        second.submit(record(1000 + i))
        if i % 100 == 0:
            await anyio.sleep(0.02)
    first.submit(record(300, target="nul\x00in a name"))  # PostgreSQL text cannot hold NUL
    first.submit(record(301, latency_us=2**70))  # a value the store refuses: a stand-in takes its place
    await first.aclose()
    await second.aclose()
    engine = open_existing(pg_url)
    report = verify(engine)
    assert report.ok, report.problem
    assert report.records == 602 and sorted(c.records for c in report.chains) == [300, 302]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT target FROM mcpgw_audit_steps WHERE step_id = 'step-000300'")).scalar() \
            == "nul\\u0000in a name"
        stand_in = conn.execute(text("SELECT kind, error FROM mcpgw_audit_steps WHERE step_id = 'step-000301'")).one()
    assert stand_in.kind == "tools/call" and stand_in.error.startswith("this record could not be stored: ")
    with engine.begin() as conn:
        conn.execute(text("UPDATE mcpgw_audit_steps SET subject = 'mallory' WHERE chain_seq = 123 AND writer = :w"),
                     {"w": second.writer})
    report = verify(engine)
    assert not report.ok and f"writer {second.writer}, #123" in (report.problem or "")
    engine.dispose()


@pytest.mark.anyio
async def test_tail_prints_the_newest_records_then_follows_new_ones(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/audit.db"
    await write(url, 30)
    config = tmp_path / "servers.toml"
    config.write_text('[audit]\nurl = "sqlite:///audit.db"\n')  # relative: beside the config
    argv = [PY, "-m", "mcpgw", "audit", "tail", "--config", str(config), "-n", "3", "--tool", "kit__*"]
    async with run_process(argv, read="stdout") as tail:
        await tail.wait_for(r"step-000029")
        assert [line.split()[-1] for line in tail.lines] == ["step-000027", "step-000028", "step-000029"]
        trail = AuditTrail(settings(url))
        trail.start()
        trail.submit(record(100, target="other__tool"))  # filtered out
        trail.submit(record(101))
        await trail.aclose()
        await tail.wait_for(r"step-000101")
        assert not any("step-000100" in line for line in tail.lines)
