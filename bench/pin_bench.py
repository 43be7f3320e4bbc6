"""What tool pinning and description scanning cost at catalog update, for one 10,000-tool upstream.

Run: `.venv/bin/python bench/pin_bench.py [--tools N] [--reps R]`. In-process, no upstream: the
catalog is what pays, once per listing an upstream publishes (start, list_changed, reload).
Prints the median of R runs of `Catalog.update` with pinning and scanning off, scanning only,
pinning only (every tool approved), and both; plus reading and writing a lock of N tools.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mcp.types as t

from mcpgw.catalog import Catalog, Listing
from mcpgw.config import parse_config
from mcpgw.pinning.lockfile import LockFile, PinnedServer, pin, read_lock, write_lock

DESCRIPTION = ("Search the issue tracker for issues matching a query. Returns up to `limit` issues with their "
               "title, state, labels and assignee; use the cursor from a previous page to continue. ")


def tools(n: int) -> tuple[t.Tool, ...]:
    schema = {"type": "object", "properties": {
        "query": {"type": "string", "description": "free text, or field:value pairs"},
        "limit": {"type": "integer", "description": "at most this many issues (1-100)"},
        "cursor": {"type": "string", "description": "the cursor a previous page returned"}}, "required": ["query"]}
    return tuple(t.Tool(name=f"t{i:05d}", description=f"{DESCRIPTION}#{i}", input_schema=schema) for i in range(n))


def timed(fn: Callable[[], object], reps: int) -> float:
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tools", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    listing = Listing(tools=tools(args.tools))
    lock = LockFile(servers={"big": PinnedServer(tools={x.name: pin(x) for x in listing.tools})})
    rows = []
    for label, gateway, with_lock in (("pin off, scan off (baseline)", 'pin = "off"\nscan = "off"', False),
                                      ("scan = warn only", 'pin = "off"\nscan = "warn"', False),
                                      ("pin = strict only (all approved)", 'scan = "off"', True),
                                      ("pin = strict + scan = warn", 'scan = "warn"', True)):
        config = parse_config(f'[gateway]\n{gateway}\n[servers.big]\nkind = "stdio"\ncommand = "x"\n',
                              Path("servers.toml"), {})
        config = config.model_copy(update={"lock": lock if with_lock else None})

        def update(config: object = config) -> None:
            catalog = Catalog(config)  # type: ignore[arg-type]
            catalog.update("big", listing)
            assert len(catalog.tools) == args.tools

        rows.append((label, timed(update, args.reps)))
    base = rows[0][1]
    print(f"Catalog.update of one upstream with {args.tools:,} tools (median of {args.reps}):")
    for label, ms in rows:
        print(f"  {label:<36} {ms:8.1f} ms   (+{ms - base:6.1f} ms, {(ms - base) * 1000 / args.tools:5.1f} µs/tool)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "servers.lock"
        build = timed(lambda: LockFile(servers={"big": PinnedServer(tools={x.name: pin(x) for x in listing.tools})}),
                      args.reps)
        write = timed(lambda: write_lock(path, lock), args.reps)
        read = timed(lambda: read_lock(path), args.reps)
        size = path.stat().st_size
    print(f"lock of {args.tools:,} tools: build {build:.1f} ms, write {write:.1f} ms, read + verify {read:.1f} ms, "
          f"{size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
