"""What tracing costs per call: `echo` tools/call through `mcpgw serve` with [telemetry] off and on.

    .venv/bin/python bench/tracing_bench.py                # 5 rounds x 400 calls per variant
    .venv/bin/python bench/tracing_bench.py --rounds 3 --calls 200

Three gateways (stdio front, the kit upstream over stdio behind each) stay up side by side and
the rounds alternate between them, so machine noise hits every variant alike:
  off        no [telemetry] (the default: no trace stage, no SDK)
  on         exporter = "otlp" to a receiver in this process (127.0.0.1; decodes and counts spans)
  on-ratio0  exporter = "otlp", sample_ratio = 0 (spans are made, none kept or exported)
Printed: p50 / p99 latency per variant, the added p50 against `off`, the gateway's CPU per call
(psutil), and how many spans the receiver got (so "on" provably exported).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import psutil
from mcp import Client, StdioServerParameters, stdio_client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "tests" / "upstreams" / "kit_server.py"
PY = sys.executable


class Receiver(ThreadingHTTPServer):
    spans = 0
    lock = threading.Lock()


class ExportHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        request = ExportTraceServiceRequest.FromString(body)
        count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with self.server.lock:
            self.server.spans += count
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def config(directory: Path, telemetry: str) -> Path:
    directory.mkdir()
    path = directory / "servers.toml"
    path.write_text(f"""[gateway]
startup_wait = 60
health_interval = 600
watch_config = false

[servers.kit]
kind = "stdio"
command = "{PY}"
args = ["{KIT}"]
{telemetry}
""")
    return path


@contextlib.asynccontextmanager
async def gateway(path: Path, errlog: Any) -> AsyncIterator[tuple[Client, psutil.Process]]:
    params = StdioServerParameters(command=PY, args=["-m", "mcpgw", "serve", "--config", str(path)],
                                   env={"PYTHONPATH": str(ROOT)}, cwd=str(ROOT))
    async with Client(stdio_client(params, errlog=errlog), mode="auto", cache=None) as client:
        await client.list_tools()  # the upstream is up
        me = psutil.Process()
        gw = next(p for p in me.children(recursive=True) if str(path) in " ".join(p.cmdline()))
        yield client, gw


async def run(rounds: int, calls: int) -> None:
    receiver = Receiver(("127.0.0.1", 0), ExportHandler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    otlp = f'\n[telemetry]\nexporter = "otlp"\nendpoint = "{endpoint}"\n'
    variants = {"off": "", "on": otlp, "on-ratio0": otlp + "sample_ratio = 0\n"}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "gateways.log", "w") as errlog:
        async with contextlib.AsyncExitStack() as stack:
            gateways = {name: await stack.enter_async_context(gateway(config(Path(tmp) / name, body), errlog))
                        for name, body in variants.items()}
            for client, _ in gateways.values():  # warm-up
                for _ in range(100):
                    await client.call_tool("kit__echo", {"text": "hello"})
            for round_no in range(rounds):
                for name, (client, proc) in gateways.items():
                    before = proc.cpu_times()
                    for _ in range(calls):
                        start = time.perf_counter()
                        await client.call_tool("kit__echo", {"text": "hello"})
                        samples[name].append((time.perf_counter() - start) * 1e3)
                    after = proc.cpu_times()
                    cpu[name] += (after.user + after.system) - (before.user + before.system)
                print(f"round {round_no + 1}/{rounds} done", file=sys.stderr)
        # Leaving the stack closed each gateway's stdin: "on" flushed its last spans on the way out.
    receiver.shutdown()
    n = rounds * calls
    base = statistics.median(samples["off"])
    print(f"\necho tools/call through mcpgw (stdio front, stdio upstream), {n} calls per variant, "
          f"{rounds} interleaved rounds")
    print(f"{'variant':<11} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'gw CPU/call ms':>15}")
    for name, values in samples.items():
        values.sort()
        p50, p99 = statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]
        print(f"{name:<11} {p50:8.3f} {p99:8.3f} {p50 - base:+8.3f} {cpu[name] / n * 1e3:15.3f}")
    print(f"spans received by the OTLP receiver: {receiver.spans} "
          f"(expected {n + 100} step spans + as many upstream CLIENT spans for 'on', and a few listings)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    anyio.run(run, args.rounds, args.calls)


if __name__ == "__main__":
    main()
