"""Audit trail benchmark: store throughput, added latency per call, and the kill -9 loss window.

    .venv/bin/python bench/audit_bench.py                 # everything; PostgreSQL too if
                                                          # MCPGW_TEST_POSTGRES_URL or --pg-url is set
    .venv/bin/python bench/audit_bench.py --only store    # store, latency, e2e, kill9 (comma-separated)

Sections:
- store: records of a typical tools/call (made by the audit stage from a real Step, so
  redaction, JSON, hashing and the insert are all in) submitted as fast as possible; steps/s is
  the count divided by the time until the last one is committed. SQLite file in a temp dir;
  PostgreSQL in a temporary schema, dropped afterwards.
- latency: the gateway's own pipeline in process (audit, record, identify, a trivial dispatch),
  with and without the audit stage, N sequential steps each, alternating rounds; p50 per step.
  The writer thread runs meanwhile, as in a gateway, so its share of the GIL is in the figure.
- e2e: `mcpgw serve` (stdio) with the kit upstream, echo tools/call p50 with [audit] on vs off,
  alternating call by call (the machine's load drifts; this way it hits both alike).
- kill9: `mcpgw serve --transport http`; sequential calls, then SIGKILL; how many answered calls
  have no record, and the time between the last stored record and the kill.
Targets: >= 20,000 steps/s into SQLite; <= 50 us added p50 per call.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcpgw.audit.redact import Redactor  # noqa: E402
from mcpgw.audit.writer import AuditTrail  # noqa: E402
from mcpgw.config import AuditSettings  # noqa: E402
from mcpgw.pipeline import Caller, Pipeline, Principal, Route, Step, StepKind  # noqa: E402
from mcpgw.pipeline.stages.audit import Audit  # noqa: E402
from mcpgw.pipeline.stages.identify import Identify  # noqa: E402
from mcpgw.pipeline.stages.record import Record  # noqa: E402

KIT = ROOT / "tests" / "upstreams" / "kit_server.py"
PY = sys.executable
CALLER = Caller("stdio", "2025-11-25", "bench-agent", "1.0", None)
ARGS = {"text": "hello from the benchmark", "limit": 10, "filters": {"owner": "ada", "tags": ["a", "b"]}}


def typical_rows(stage: Audit, count: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(count):
        step = Step(StepKind.TOOL_CALL, CALLER, target="kit__echo", arguments=ARGS)
        step.principal = Principal("ada", client_id="cli", roles=("dev",), scopes=("mcp",))
        step.route = Route("kit", "echo")
        step.ended_ns = step.started_ns + 1_000_000
        rows.append(stage._row(step, time.time_ns(), None, None))
    return rows


def store_throughput(url: str, count: int) -> tuple[float, float]:
    """(records per wall-clock second, records per CPU second of this process). The second does not
    depend on what else the machine runs: it is what one free core would sustain."""
    settings = AuditSettings(url=url, queue_size=count + 1)
    trail = AuditTrail(settings)
    stage = Audit(trail, settings, Redactor(settings.redact))
    rows = typical_rows(stage, count)
    trail.start()
    warm = typical_rows(stage, 1)[0]
    trail.submit(warm)
    while trail.written < 1:  # schema created, writer registered: measure steady state only
        time.sleep(0.01)
    started, cpu = time.perf_counter(), time.process_time()
    for row in rows:
        trail.submit(row)
    trail._wake.set()
    anyio.run(trail.aclose, 600.0)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert trail.written == count + 1, (trail.written, trail.dropped)
    return count / elapsed, count / cpu


async def _dispatch(step: Step, call_next: Any) -> Any:
    return "done"


_dispatch.slot = "dispatch"  # type: ignore[attr-defined]


async def pipeline_latency(rounds: int, per_round: int, url: str) -> dict[str, float]:
    settings = AuditSettings(url=url)
    trail = AuditTrail(settings)
    trail.start()
    audit = Audit(trail, settings, Redactor(settings.redact))
    on = Pipeline([audit, Record(), Identify(), _dispatch])  # type: ignore[list-item]
    off = Pipeline([Record(), Identify(), _dispatch])  # type: ignore[list-item]
    samples: dict[str, list[int]] = {"on": [], "off": []}
    for _ in range(rounds):
        for name, pipeline in (("off", off), ("on", on)):
            times = samples[name]
            for _ in range(per_round):
                step = Step(StepKind.TOOL_CALL, CALLER, target="kit__echo", arguments=ARGS)
                t0 = time.perf_counter_ns()
                await pipeline.run(step)
                times.append(time.perf_counter_ns() - t0)
            await anyio.sleep(0.06)  # let the writer flush between rounds, as between bursts of calls
    await trail.aclose()
    p50 = {k: statistics.median(v) / 1000 for k, v in samples.items()}
    p99 = {k: statistics.quantiles(v, n=100)[98] / 1000 for k, v in samples.items()}
    return {"off_p50_us": p50["off"], "on_p50_us": p50["on"], "added_p50_us": p50["on"] - p50["off"],
            "off_p99_us": p99["off"], "on_p99_us": p99["on"], "written": trail.written}


def _config(directory: Path, audit: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "servers.toml"
    path.write_text(f'[gateway]\nstartup_wait = 60\nwatch_config = false\n[servers.kit]\nkind = "stdio"\n'
                    f'command = "{PY}"\nargs = ["{KIT}"]\n{audit}\n')
    return path


async def e2e_latency(work: Path, calls: int) -> dict[str, float]:
    from mcp import Client, StdioServerParameters

    out: dict[str, float] = {}
    clients = {}
    for name, audit in (("off", "[audit]\nenabled = false\n"), ("on", "")):
        config = _config(work / f"e2e-{name}", audit)
        params = StdioServerParameters(command=PY, args=["-m", "mcpgw", "serve", "--config", str(config)],
                                       env={**os.environ, "PYTHONPATH": str(ROOT), "MCPGW_LOG_LEVEL": "warning"},
                                       cwd=str(ROOT))
        clients[name] = params
    samples: dict[str, list[int]] = {"on": [], "off": []}
    async with Client(clients["off"], mode="legacy", cache=None) as off, \
            Client(clients["on"], mode="legacy", cache=None) as on:
        for agent in (off, on):
            for _ in range(200):
                await agent.call_tool("kit__echo", {"text": "warm"})
        for _ in range(calls):  # call by call, alternating: drift in the machine's load hits both alike
            for name, agent in (("off", off), ("on", on)):
                t0 = time.perf_counter_ns()
                await agent.call_tool("kit__echo", ARGS)
                samples[name].append(time.perf_counter_ns() - t0)
    for name, values in samples.items():
        out[f"{name}_p50_ms"] = statistics.median(values) / 1e6
    out["added_p50_us"] = (out["on_p50_ms"] - out["off_p50_ms"]) * 1000
    return out


async def kill9_window(work: Path, calls: int, runs: int) -> list[dict[str, float]]:
    import sqlite3

    from mcp import Client

    results = []
    for run in range(runs):
        config = _config(work / f"kill9-{run}", "")
        argv = [PY, "-m", "mcpgw", "serve", "--config", str(config), "--transport", "http", "--port", "0"]
        logging.getLogger("mcp").setLevel(logging.CRITICAL)  # "session termination failed": it was killed
        proc = await anyio.open_process(argv, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                                        start_new_session=True)
        try:
            assert proc.stderr is not None
            buffer = b""
            with anyio.fail_after(60):
                while b"serving MCP at" not in buffer:
                    buffer += await proc.stderr.receive()
            url = buffer.split(b"serving MCP at ")[1].split()[0].decode()
            async with Client(url, mode="legacy", cache=None) as agent:
                for i in range(calls):
                    await agent.call_tool("kit__echo", {"text": f"call {i}"})
                killed = time.time()
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        with sqlite3.connect(config.parent / "mcpgw-audit.db") as db:
            count, last = db.execute(
                "SELECT count(*), max(ts) FROM mcpgw_audit_steps WHERE kind = 'tools/call'").fetchone()
        last_s = datetime.fromisoformat(last).timestamp() if last else killed
        results.append({"answered": calls, "stored": count, "lost": calls - count,
                        "window_ms": max(0.0, (killed - last_s) * 1000)})
    return results


def with_pg_schema(base: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, text

    schema = f"mcpgw_bench_{os.urandom(5).hex()}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}", drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="store,latency,e2e,kill9")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--pg-url", default=os.environ.get("MCPGW_TEST_POSTGRES_URL"))
    parser.add_argument("--calls", type=int, default=2000, help="e2e calls per path")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    only = set(args.only.split(","))
    results: dict[str, Any] = {}
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="mcpgw-audit-bench-") as tmp:
        work = Path(tmp)
        if "store" in only:
            sps, per_cpu = store_throughput(f"sqlite:///{work}/store.db", args.records)
            results["sqlite_steps_per_s"], results["sqlite_steps_per_cpu_s"] = sps, per_cpu
            print(f"store  SQLite      {sps:>10,.0f} steps/s wall, {per_cpu:,.0f} per CPU-second  ({args.records:,} "
                  f"records; {os.getloadavg()[0]:.1f} load)  target >= 20,000: {'PASS' if sps >= 20_000 else 'MISS'}",
                  flush=True)
            if args.pg_url:
                url, drop = with_pg_schema(args.pg_url)
                try:
                    sps, per_cpu = store_throughput(url, args.records)
                finally:
                    drop()
                results["postgresql_steps_per_s"], results["postgresql_steps_per_cpu_s"] = sps, per_cpu
                print(f"store  PostgreSQL  {sps:>10,.0f} steps/s wall, {per_cpu:,.0f} per CPU-second of the gateway "
                      f"process (the server's own CPU not counted)", flush=True)
            else:
                print("store  PostgreSQL  skipped (no --pg-url / MCPGW_TEST_POSTGRES_URL)")
        if "latency" in only:
            lat = anyio.run(pipeline_latency, 20, 1000, f"sqlite:///{work}/latency.db")
            results["pipeline"] = lat
            print(f"latency in-process pipeline p50: off {lat['off_p50_us']:.1f} us, on {lat['on_p50_us']:.1f} us, "
                  f"added {lat['added_p50_us']:.1f} us (p99 off {lat['off_p99_us']:.1f} / on {lat['on_p99_us']:.1f})"
                  f"  target <= 50 us: {'PASS' if lat['added_p50_us'] <= 50 else 'MISS'}", flush=True)
        if "e2e" in only:
            e2e = anyio.run(e2e_latency, work, args.calls)
            results["e2e"] = e2e
            print(f"e2e    stdio echo p50: off {e2e['off_p50_ms']:.3f} ms, on {e2e['on_p50_ms']:.3f} ms, added "
                  f"{e2e['added_p50_us']:.0f} us", flush=True)
        if "kill9" in only:
            runs = anyio.run(kill9_window, work, 300, 5)
            results["kill9"] = runs
            for r in runs:
                print(f"kill9  {r['answered']} answered, {r['stored']} stored, {r['lost']} lost, last stored record "
                      f"{r['window_ms']:.0f} ms before the kill", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
