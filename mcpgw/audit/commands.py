"""`mcpgw audit tail | query | export | lineage | verify`: the audit trail from the command line.

Each reads `[audit] url` from the config (`--config`, default ./servers.toml) and only reads
the store: it never creates or migrates one. Exit codes: 0 ok; 1 nothing found, a broken chain,
or a store that cannot be opened; 2 a bad config or command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from mcpgw.audit.chain import verify
from mcpgw.audit.lineage import lineage, render
from mcpgw.audit.query import Filters, line, parse_time, records, write_csv, write_jsonl
from mcpgw.audit.store import StoreError, open_existing, shown_url
from mcpgw.config import Config

TAIL_POLL = 0.5


def add_filter_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--principal", "--subject", dest="subject", help="subject or client id")
    parser.add_argument("--tool", help="exported tool, prompt or URI; * and ? are wildcards")
    parser.add_argument("--outcome", action="append", default=[],
                        help="ok, error, denied, limited, ... (repeat or comma-separate for several)")
    parser.add_argument("--kind", help="tools/call, resources/read, sampling/createMessage, upstream/*, ...")
    parser.add_argument("--upstream", help="the upstream server's name")
    parser.add_argument("--since", help="ISO-8601 time, or 30s, 10m, 2h, 1d ago")
    parser.add_argument("--until", help="ISO-8601 time, or 30s, 10m, 2h, 1d ago")
    parser.add_argument("--trace", help="an OpenTelemetry trace id")


def filters_of(args: argparse.Namespace) -> Filters:
    outcomes = tuple(o.strip() for value in args.outcome for o in value.split(",") if o.strip())
    return Filters(subject=args.subject, tool=args.tool, outcome=outcomes, kind=args.kind, upstream=args.upstream,
                   since=parse_time(args.since) if args.since else None,
                   until=parse_time(args.until) if args.until else None, trace=args.trace)


def _engine(config: Config) -> Engine:
    if not config.audit.enabled:
        raise StoreError(f"{config.source}: [audit] enabled = false: there is no audit trail to read")
    return open_existing(config.audit.url)


def cmd_query(config: Config, args: argparse.Namespace) -> int:
    engine = _engine(config)
    count = 0
    for row in records(engine, filters_of(args), limit=args.limit, last=args.last):
        print(json.dumps(row, ensure_ascii=False) if args.json else line(row))
        count += 1
    if not args.json:
        print(f"{count} record(s)", file=sys.stderr)
    return 0 if count else 1


def cmd_tail(config: Config, args: argparse.Namespace) -> int:
    engine = _engine(config)
    filters = filters_of(args)
    seen = 0
    for row in records(engine, filters, limit=args.lines, last=True):
        print(json.dumps(row, ensure_ascii=False) if args.json else line(row), flush=True)
        seen = row["seq"]
    if not args.follow:
        return 0
    if seen == 0:  # nothing matched yet: follow from the store's current end, not from the start
        seen = max((r["seq"] for r in records(engine, Filters(), limit=1, last=True)), default=0)
    try:
        while True:
            for row in records(engine, filters, after=seen):
                print(json.dumps(row, ensure_ascii=False) if args.json else line(row), flush=True)
                seen = row["seq"]
            time.sleep(TAIL_POLL)
    except KeyboardInterrupt:
        return 0


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    engine = _engine(config)
    rows = records(engine, filters_of(args))
    write: Callable[..., int] = write_jsonl if args.format == "jsonl" else write_csv
    if args.output is None:
        count = write(rows, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8", newline="") as out:
            count = write(rows, out)
    print(f"exported {count} record(s)" + (f" to {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def cmd_lineage(config: Config, args: argparse.Namespace) -> int:
    roots = lineage(_engine(config), args.id)
    if not roots:
        print(f"mcpgw: no step or trace with id {args.id!r} in the audit trail", file=sys.stderr)
        return 1
    print(json.dumps(roots, ensure_ascii=False, indent=2) if args.json else render(roots))
    return 0


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    report = verify(_engine(config))
    if args.json:
        print(json.dumps({"ok": report.ok, "records": report.records, "problem": report.problem,
                          "chains": [vars(c) for c in report.chains]}, indent=2))
    else:
        for chain in report.chains:
            state = "closed" if chain.closed else "open (running, or the process ended without closing)"
            print(f"  writer {chain.writer}: {chain.records} record(s) checked, {state}")
        if report.ok:
            print(f"OK: {report.records} record(s) in {len(report.chains)} chain(s) verify "
                  f"({shown_url(config.audit.url)})")
        else:
            print(f"BROKEN: {report.problem}")
    return 0 if report.ok else 1


def add_audit_parser(sub: Any, add_config_args: Callable[[argparse.ArgumentParser], None],
                     run: Callable[[Callable[[Config, argparse.Namespace], int]], Callable[..., int]]) -> None:
    audit = sub.add_parser("audit", help="read, export and verify the audit trail")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    query = commands.add_parser("query", help="records matching filters, oldest first")
    add_config_args(query)
    add_filter_args(query)
    query.add_argument("--limit", type=int, default=None)
    query.add_argument("--last", action="store_true", help="with --limit: the newest matching records")
    query.add_argument("--json", action="store_true", help="one JSON object per line")
    query.set_defaults(func=run(cmd_query))

    tail = commands.add_parser("tail", help="the newest records, then new ones as they are written")
    add_config_args(tail)
    add_filter_args(tail)
    tail.add_argument("-n", "--lines", type=int, default=10)
    tail.add_argument("--no-follow", dest="follow", action="store_false", help="print and exit")
    tail.add_argument("--json", action="store_true")
    tail.set_defaults(func=run(cmd_tail))

    export = commands.add_parser("export", help="every matching record, with its hash, as JSON lines or CSV")
    add_config_args(export)
    add_filter_args(export)
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: stdout)")
    export.set_defaults(func=run(cmd_export))

    tree = commands.add_parser("lineage", help="the tree of steps around a step id or a trace id")
    add_config_args(tree)
    tree.add_argument("id", metavar="TRACE_OR_STEP_ID")
    tree.add_argument("--json", action="store_true")
    tree.set_defaults(func=run(cmd_lineage))

    check = commands.add_parser("verify", help="recompute every hash chain; name the first broken record")
    add_config_args(check)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=run(cmd_verify))
