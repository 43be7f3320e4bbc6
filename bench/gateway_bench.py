"""mcpgw benchmark harness: latency, throughput, tools/list, start-up and memory, in one run.

    .venv/bin/python bench/gateway_bench.py                 # full run (~3-5 min on 2 cores)
    .venv/bin/python bench/gateway_bench.py --quick         # smoke run (< 1 min)
    .venv/bin/python bench/gateway_bench.py --json out.json # also write every number as JSON

Everything runs on 127.0.0.1 against the real test upstream `tests/upstreams/kit_server.py`.
Every process the harness starts is tracked and killed on exit (including the upstreams a
gateway started, which the SDK puts in their own sessions). See bench/README.md.
"""

from __future__ import annotations

import argparse
import atexit
import compileall
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psutil
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "tests" / "upstreams" / "kit_server.py"
SILENT = ROOT / "tests" / "upstreams" / "silent_server.py"
SRC: Path | None = None
"""With --snapshot (the default) a copy of mcpgw/ made at start, first on every PYTHONPATH: a run
measures one version of the code even if the work tree changes while it runs."""
PY = sys.executable
HOST = "127.0.0.1"
ECHO_ARGS = {"text": "hello"}
CALL_TIMEOUT = 30.0  # seconds; every awaited call is bounded

TARGET_TP_RATIO = 0.70
TARGET_SERVER_LIST_MS = 50.0
TARGET_STARTUP_S = 0.5


# ---------------------------------------------------------------------------------------------
# process hygiene
# ---------------------------------------------------------------------------------------------


class Reaper:
    """Tracks every process this harness starts (and their descendants) and kills them on exit."""

    def __init__(self) -> None:
        self.known: dict[int, psutil.Process] = {}
        self._descendants: dict[int, list[psutil.Process]] = {}
        self.lock = threading.Lock()

    def track(self, pid: int) -> psutil.Process | None:
        """Call right after starting a process (while it certainly is ours and alive)."""
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return None
        with self.lock:
            self.known[pid] = proc
        return proc

    def snapshot_tree(self, pid: int) -> None:
        """Remember a process's descendants while it is alive: once it dies they are re-parented
        and can no longer be found from here (SDK-started upstreams run in their own session)."""
        with self.lock:
            proc = self.known.get(pid)
        if proc is None:
            proc = self.track(pid)
        try:
            if proc is None or not proc.is_running():
                return
            kids = proc.children(recursive=True)
        except psutil.NoSuchProcess:
            return
        with self.lock:
            for kid in kids:
                self.known.setdefault(kid.pid, kid)
            self._descendants.setdefault(pid, [])
            seen = {k.pid for k in self._descendants[pid]}
            self._descendants[pid] += [k for k in kids if k.pid not in seen]

    def stop(self, pid: int, grace: float = 5.0) -> None:
        """SIGTERM a process we started, then its descendants; SIGKILL what is left.

        Uses the psutil handle taken while the process was alive, so a recycled pid is never
        signalled (psutil checks the creation time before sending a signal)."""
        with self.lock:
            proc: psutil.Process | None = self.known.get(pid)
        if proc is None:
            return
        kids: list[psutil.Process] = []
        try:
            if proc.is_running():
                kids = proc.children(recursive=True)
                with self.lock:
                    for kid in kids:
                        self.known.setdefault(kid.pid, kid)
        except psutil.NoSuchProcess:
            pass
        with self.lock:  # also the descendants remembered earlier (already re-parented if it died)
            kids = list({k.pid: k for k in [*kids, *self._descendants.get(pid, [])]}.values())
        if proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
            _, alive = psutil.wait_procs([proc], timeout=grace)
            for p in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            psutil.wait_procs(alive, timeout=2)
        self._kill(kids)

    def _kill(self, procs: list[psutil.Process]) -> None:
        live = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.terminate()
                    live.append(p)
        _, alive = psutil.wait_procs(live, timeout=3)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=2)

    def sweep(self) -> int:
        """Kill everything still alive that we started: our own descendants plus remembered ones."""
        me = psutil.Process()
        with self.lock:
            procs = {p.pid: p for p in self.known.values()}
        with contextlib.suppress(psutil.NoSuchProcess):
            for kid in me.children(recursive=True):
                procs[kid.pid] = kid
        survivors = []
        for p in procs.values():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                # is_running() also guards against pid reuse (it compares create_time)
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    survivors.append(p)
        self._kill(survivors)
        return len(survivors)


REAPER = Reaper()


class RssSampler(threading.Thread):
    """Samples the RSS of watched processes (the process alone, not its children) every 20 ms."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.interval = interval
        self.watch: dict[str, psutil.Process] = {}
        self.peak: dict[str, int] = {}
        self.hwm: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def add(self, label: str, pid: int) -> None:
        with contextlib.suppress(psutil.NoSuchProcess), self.lock:
            self.watch[label] = psutil.Process(pid)

    def finish(self, label: str) -> None:
        """Stop watching; also read the kernel's own high-water mark (VmHWM) while still alive."""
        with self.lock:
            proc = self.watch.pop(label, None)
        if proc is None:
            return
        self._sample(label, proc)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.hwm[label] = int(line.split()[1]) * 1024

    def _sample(self, label: str, proc: psutil.Process) -> None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            rss = proc.memory_info().rss
            if rss > self.peak.get(label, 0):
                self.peak[label] = rss

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                items = list(self.watch.items())
            for label, proc in items:
                self._sample(label, proc)


RSS = RssSampler()


class LineReader:
    """Bounded line reads from a pipe (never blocks past a deadline)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def readline(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line within {timeout:.1f}s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                raise EOFError("pipe closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_config(path: Path, servers: dict[str, dict[str, Any]], gateway: dict[str, Any] | None = None) -> Path:
    """Write `<path without suffix>/servers.toml` and return it. Each config gets a directory of its
    own: the gateway watches its config's directory for hot reload, and must not see our logs."""
    folder = path.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "servers.toml"
    lines = ["[gateway]"]
    for k, v in {"call_timeout": 60, **(gateway or {})}.items():
        lines.append(f"{k} = {json.dumps(v)}")
    for name, spec in servers.items():
        lines.append(f"\n[servers.{name}]")
        for k, v in spec.items():
            if isinstance(v, list):
                lines.append(f"{k} = [{', '.join(toml_str(str(x)) for x in v)}]")
            elif isinstance(v, str):
                lines.append(f"{k} = {toml_str(v)}")
            else:
                lines.append(f"{k} = {json.dumps(v)}")
    if not AUDIT:
        lines.append("\n[audit]\nenabled = false")
    path.write_text("\n".join(lines) + "\n")
    return path


AUDIT = True
"""Whether the measured gateways keep their audit trail (on by default, as `mcpgw serve` does)."""


def snapshot_sources(tmp: Path) -> None:
    """Copy mcpgw/ and tests/upstreams/ into `tmp` and use the copies for the whole run."""
    global SRC, KIT, SILENT
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    src = tmp / "src"
    shutil.copytree(ROOT / "mcpgw", src / "mcpgw", ignore=ignore)
    upstreams = shutil.copytree(ROOT / "tests" / "upstreams", tmp / "upstreams", ignore=ignore)
    compileall.compile_dir(str(src), quiet=1)  # as warm a bytecode cache as the work tree's
    SRC, KIT, SILENT = src, upstreams / "kit_server.py", upstreams / "silent_server.py"
    sys.path.insert(0, str(src))  # the in-process section imports mcpgw from the copy too


def child_env() -> dict[str, str] | None:
    """Environment for processes we spawn with subprocess (None: inherit ours unchanged)."""
    if SRC is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    return env


def kit_stdio_spec(tools: int = 0, name: str = "kit") -> dict[str, Any]:
    return {"kind": "stdio", "command": "${MCPGW_PYTHON}", "args": [str(KIT), "--tools", str(tools), "--name", name]}


_KIT_BASE: list[int] = []


def kit_base_tools() -> int:
    """How many tools kit_server.py has besides the generated `--tools N` ones (asked once, over stdio)."""
    if not _KIT_BASE:
        peer = RawStdio([PY, str(KIT)], Path(os.devnull))
        try:
            peer.send(INIT)
            peer.wait_for(1, 30)
            peer.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            _KIT_BASE.append(len(peer.request("tools/list", {}, 30)["result"]["tools"]))
        finally:
            peer.close()
    return _KIT_BASE[0]


def gateway_argv(config: Path, transport: str = "stdio") -> list[str]:
    argv = [PY, "-m", "mcpgw", "serve", "--config", str(config), "--transport", transport]
    if transport == "http":
        argv += ["--host", HOST, "--port", "0"]
    return argv


def find_child(marker: str, timeout: float = 10.0) -> psutil.Process | None:
    """Our child process whose command line mentions `marker` (for SDK-spawned gateways)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            for kid in psutil.Process().children():
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    if marker in " ".join(kid.cmdline()):
                        return kid
        time.sleep(0.02)
    return None


@dataclass
class KitHttp:
    proc: subprocess.Popen[bytes]
    url: str


def spawn_kit_http(tools: int = 0, name: str = "kit") -> KitHttp:
    proc = subprocess.Popen(
        [PY, str(KIT), "--transport", "http", "--tools", str(tools), "--name", name],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        env=child_env(),
    )
    REAPER.track(proc.pid)
    try:
        reader = LineReader(proc.stdout.fileno())  # type: ignore[union-attr]
        while True:
            line = reader.readline(30).decode().strip()
            if line.startswith("PORT "):
                port = int(line.split()[1])
                return KitHttp(proc, f"http://{HOST}:{port}/mcp")
    except BaseException:
        REAPER.stop(proc.pid)
        raise


@dataclass
class GatewayHttp:
    proc: subprocess.Popen[bytes]
    url: str
    base: str
    t_launch: float
    t_listening: float
    log: Path


_SERVING = re.compile(rb"serving MCP at (http://127\.0\.0\.1:(\d+))/mcp")


def spawn_gateway_http(config: Path, log: Path, timeout: float = 30.0, argv: list[str] | None = None) -> GatewayHttp:
    with open(log, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv or gateway_argv(config, "http"), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=child_env())
    REAPER.track(proc.pid)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _SERVING.search(log.read_bytes())
            if m:
                base = m.group(1).decode()
                return GatewayHttp(proc, base + "/mcp", base, t0, time.perf_counter(), log)
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}: {log.read_text()[-2000:]}")
            time.sleep(0.005)
        raise TimeoutError(f"gateway did not announce its port within {timeout}s: {log.read_text()[-2000:]}")
    except BaseException:
        REAPER.stop(proc.pid)
        raise


def stop_popen(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    REAPER.stop(proc.pid, grace=grace)
    with contextlib.suppress(Exception):
        proc.wait(timeout=2)


def get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while starting still carries the report
        return exc.code, json.loads(exc.read() or b"null")


# ---------------------------------------------------------------------------------------------
# clients for the four paths
# ---------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: Path
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return str(self.args.mode)


@contextlib.asynccontextmanager
async def stdio_session(ctx: Ctx, argv: list[str], errname: str) -> AsyncIterator[Client]:
    # The SDK gives a stdio child only an allow-listed environment, plus `env`.
    params = StdioServerParameters(command=argv[0], args=argv[1:], env={"PYTHONPATH": str(SRC)} if SRC else None)
    with open(ctx.tmp / errname, "w") as errlog:
        try:
            async with Client(stdio_client(params, errlog=errlog), mode=ctx.mode) as client:
                yield client
        except BaseException:
            errlog.flush()
            tail = (ctx.tmp / errname).read_text(errors="replace").splitlines()[-40:]
            print(f"  !! {' '.join(argv[1:3])} failed; last lines of its stderr ({errname}):", file=sys.stderr)
            for line in tail:
                print(f"  !!   {line}", file=sys.stderr)
            raise


@contextlib.asynccontextmanager
async def http_session(ctx: Ctx, url: str) -> AsyncIterator[Client]:
    limits = httpx2.Limits(max_connections=128, max_keepalive_connections=128)
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60), limits=limits) as http,
        Client(streamable_http_client(url, http_client=http), mode=ctx.mode) as client,
    ):
        yield client


async def call_ok(client: Client, tool: str) -> None:
    result = await client.call_tool(tool, ECHO_ARGS, read_timeout_seconds=CALL_TIMEOUT)
    if result.is_error:
        raise RuntimeError(f"{tool} returned an error: {result.content}")


async def latency_chunk(client: Client, tool: str, n: int, samples: list[float]) -> None:
    with anyio.fail_after(max(60.0, n * 0.05)):
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await call_ok(client, tool)
            samples.append((time.perf_counter_ns() - t0) / 1e6)


async def measure_throughput(client: Client, tool: str, concurrency: int, max_calls: int,
                             seconds: float) -> dict[str, Any]:
    """Calls from `concurrency` tasks sharing one session, for `seconds` (or until `max_calls`)."""
    issued = done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued, done
        while issued < max_calls and time.perf_counter() < deadline:
            issued += 1
            await call_ok(client, tool)
            done += 1

    t0 = time.perf_counter()
    with anyio.fail_after(seconds + CALL_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
    elapsed = time.perf_counter() - t0
    return {"calls": done, "seconds": elapsed, "calls_per_s": done / elapsed if elapsed else float("nan")}


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for role, proc in procs.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            times = proc.cpu_times()
            out[role] = times.user + times.system
    return out


@dataclass
class Path4:
    key: str
    label: str
    client: Client
    tool: str
    procs: dict[str, psutil.Process]
    samples: list[float] = field(default_factory=list)
    runs: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, dict[str, float]] = field(default_factory=dict)
    calls: dict[int, int] = field(default_factory=dict)


CONCURRENCY = (1, 8, 32)
PAIRS = (("a_direct_stdio", "b_gateway_stdio", "stdio"), ("c_direct_http", "d_gateway_http", "HTTP"))


async def run_interleaved(ctx: Ctx, paths: list[Path4]) -> None:
    """All four sessions stay open; measurements alternate between paths so that a noisy moment on
    a 2-core machine hits direct and gateway alike (ratios are taken within one round)."""
    a = ctx.args
    for p in paths:
        for _ in range(a.warmup):
            await call_ok(p.client, p.tool)
    chunks = 4
    for i in range(chunks):
        n = a.calls // chunks + (1 if i < a.calls % chunks else 0)
        for p in paths:
            await latency_chunk(p.client, p.tool, n, p.samples)
    for _rep in range(a.repeats):
        for conc in CONCURRENCY:
            for p in paths:
                watched = {"client": psutil.Process(), **p.procs}
                before = cpu_seconds(watched)
                r = await measure_throughput(p.client, p.tool, conc, a.tp_max_calls, a.tp_seconds)
                after = cpu_seconds(watched)
                p.runs.setdefault(conc, []).append(r["calls_per_s"])
                p.calls[conc] = p.calls.get(conc, 0) + r["calls"]
                acc = p.cpu.setdefault(conc, {})
                for role in after:
                    if role in before:
                        acc[role] = acc.get(role, 0.0) + after[role] - before[role]


def summarize(p: Path4) -> dict[str, Any]:
    s = p.samples
    return {
        "protocol": p.client.protocol_version,
        "latency_ms": {"n": len(s), "p50": pct(s, 0.5), "p90": pct(s, 0.9), "p99": pct(s, 0.99),
                       "mean": statistics.fmean(s), "max": max(s)},
        "throughput": {
            conc: {"median": med(p.runs[conc]), "runs": p.runs[conc], "calls": p.calls[conc],
                   "cpu_ms_per_call": {role: v * 1000 / p.calls[conc] for role, v in p.cpu[conc].items()}}
            for conc in CONCURRENCY
        },
    }


async def section_calls(ctx: Ctx) -> None:
    print(f"[1-2] tools/call latency and throughput (echo), client mode={ctx.mode}, interleaved paths",
          flush=True)
    res: dict[str, Any] = {}
    ctx.results["calls"] = res
    kit = spawn_kit_http()
    gw_http: GatewayHttp | None = None
    gw_stdio: psutil.Process | None = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            # (a) direct -> kit over stdio
            ca = await stack.enter_async_context(
                stdio_session(ctx, [PY, str(KIT), "--name", "kit-direct-stdio"], "kit-direct.err"))
            kit_a = find_child("kit-direct-stdio")
            # (b) client -> mcpgw (stdio) -> kit (stdio)
            cfg_b = write_config(ctx.tmp / "gw-stdio.toml", {"kit": kit_stdio_spec()})
            cb = await stack.enter_async_context(stdio_session(ctx, gateway_argv(cfg_b), "gw-stdio.err"))
            gw_stdio = find_child(str(cfg_b))
            kids_b = gw_stdio.children() if gw_stdio is not None else []
            if gw_stdio is not None:
                REAPER.snapshot_tree(gw_stdio.pid)
                RSS.add("gateway stdio (calls)", gw_stdio.pid)
            # (c) direct -> kit over Streamable HTTP
            cc = await stack.enter_async_context(http_session(ctx, kit.url))
            # (d) client -> mcpgw (http) -> the same kit over Streamable HTTP
            cfg_d = write_config(ctx.tmp / "gw-http.toml", {"kit": {"kind": "http", "url": kit.url}})
            gw_http = spawn_gateway_http(cfg_d, ctx.tmp / "gw-http.err")
            RSS.add("gateway http (calls)", gw_http.proc.pid)
            cd = await stack.enter_async_context(http_session(ctx, gw_http.url))

            kit_c = psutil.Process(kit.proc.pid)
            paths = [
                Path4("a_direct_stdio", "a direct stdio", ca, "echo", {"kit": kit_a} if kit_a else {}),
                Path4("b_gateway_stdio", "b mcpgw stdio->stdio", cb, "kit__echo",
                      {k: v for k, v in (("gateway", gw_stdio), ("kit", kids_b[0] if kids_b else None)) if v}),
                Path4("c_direct_http", "c direct http", cc, "echo", {"kit": kit_c}),
                Path4("d_gateway_http", "d mcpgw http->http", cd, "kit__echo",
                      {"gateway": psutil.Process(gw_http.proc.pid), "kit": kit_c}),
            ]
            await run_interleaved(ctx, paths)
            for p in paths:
                res[p.key] = summarize(p)
                lat, tp = res[p.key]["latency_ms"], res[p.key]["throughput"]
                cpu = ", ".join(f"{k} {v:.2f}" for k, v in tp[8]["cpu_ms_per_call"].items())
                print(f"  {p.label:<22} p50 {lat['p50']:6.2f} ms  p99 {lat['p99']:6.2f} ms | calls/s "
                      f"c1 {tp[1]['median']:6.0f}  c8 {tp[8]['median']:6.0f}  c32 {tp[32]['median']:6.0f} | "
                      f"CPU ms/call c8: {cpu}", flush=True)
            for direct, gw, _name in PAIRS:
                for conc in CONCURRENCY:
                    ratios = [g / d for g, d in zip(res[gw]["throughput"][conc]["runs"],
                                                    res[direct]["throughput"][conc]["runs"], strict=True)]
                    res[gw]["throughput"][conc]["ratio_vs_direct"] = med(ratios)
                    res[gw]["throughput"][conc]["ratio_runs"] = ratios
            if gw_stdio is not None:
                REAPER.snapshot_tree(gw_stdio.pid)
                RSS.finish("gateway stdio (calls)")
            RSS.finish("gateway http (calls)")
    finally:
        if gw_http is not None:
            stop_popen(gw_http.proc)
        stop_popen(kit.proc)
    if ctx.args.profile:
        res["b_gateway_stdio_profile"] = await profile_gateway_calls(ctx, "stdio")
        res["d_gateway_http_profile"] = await profile_gateway_calls(ctx, "http")


def _bucket(filename: str, name: str) -> str:
    if filename.startswith("<built-in>") or filename == "":
        if name.startswith("lock.") or "thread" in name or "running_loop" in name or name == "current_task":
            return "anyio/asyncio"  # worker-thread hand-offs (the SDK's stdio server reads/writes via threads)
        if name in ("write", "read", "recv", "send", "os.write", "os.read", "socket.send", "socket.recv"):
            return "I/O syscalls"
    if "epoll" in name or name in ("select", "poll") or filename.endswith("selectors.py"):
        return "idle (waiting in epoll)"
    if name == "<module>" or "importlib" in filename or "_bootstrap" in filename:
        return "start-up (imports)"
    if "/mcpgw/" in filename:
        return "mcpgw"
    if "site-packages/h11" in filename:
        return "h11 (HTTP/1.1 parsing, both sides)"
    if any(f"site-packages/{pkg}" in filename for pkg in ("uvicorn", "starlette", "sse_starlette", "httptools")):
        return "HTTP server (uvicorn/starlette)"
    if any(f"site-packages/{pkg}" in filename for pkg in ("httpx", "httpcore")):
        return "HTTP client (httpx2)"
    if "site-packages/mcp/" in filename or "site-packages/mcp_types/" in filename:
        return "mcp SDK"
    if "pydantic" in filename:
        return "pydantic"
    if "anyio" in filename or "asyncio" in filename or "threading" in filename or "contextlib" in filename:
        return "anyio/asyncio"
    return "other"


async def profile_gateway_calls(ctx: Ctx, transport: str) -> dict[str, Any]:
    """Run path b (stdio) or d (http) once more with the gateway under pyinstrument (sampling its
    main thread during the load window only) at c=8, and say where its busy time goes. Skipped
    when pyinstrument is not installed."""
    import importlib.util

    if importlib.util.find_spec("pyinstrument") is None:
        print("  (pyinstrument not installed: gateway profile skipped; `.venv/bin/pip install pyinstrument`)")
        return {"skipped": "pyinstrument not installed"}
    out_file = ctx.tmp / f"gateway-calls-{transport}.pstats"
    launcher = [PY, str(Path(__file__).with_name("_profiled_gateway.py")), str(out_file)]

    async def load(c: Client, pid: int) -> dict[str, Any]:
        for _ in range(ctx.args.warmup):
            await call_ok(c, "kit__echo")
        os.kill(pid, signal.SIGUSR1)  # sample the load window only
        r = await measure_throughput(c, "kit__echo", 8, ctx.args.tp_max_calls, ctx.args.tp_seconds * 2)
        os.kill(pid, signal.SIGUSR2)
        for _ in range(200):
            if out_file.exists():
                break
            await anyio.sleep(0.05)
        return r

    if transport == "stdio":
        cfg = write_config(ctx.tmp / "gw-prof.toml", {"kit": kit_stdio_spec()})
        async with stdio_session(ctx, [*launcher, "serve", "--config", str(cfg)], "gw-prof.err") as c:
            gw = find_child(str(cfg))
            if gw is None:
                return {"skipped": "gateway process not found"}
            REAPER.snapshot_tree(gw.pid)
            r = await load(c, gw.pid)
    else:
        kit = spawn_kit_http()
        try:
            cfg = write_config(ctx.tmp / "gw-prof-http.toml", {"kit": {"kind": "http", "url": kit.url}})
            argv = [*launcher, "serve", "--config", str(cfg), "--transport", "http", "--host", HOST, "--port", "0"]
            gw_http = spawn_gateway_http(cfg, ctx.tmp / "gw-prof-http.err", argv=argv)
            try:
                async with http_session(ctx, gw_http.url) as c:
                    r = await load(c, gw_http.proc.pid)
            finally:
                stop_popen(gw_http.proc)
        finally:
            stop_popen(kit.proc)
    if not out_file.exists():
        return {"skipped": "no profile written"}
    stats = pstats.Stats(str(out_file))
    buckets: dict[str, float] = {}
    funcs: list[tuple[float, str]] = []
    for (filename, line, name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        b = _bucket(filename, name)
        buckets[b] = buckets.get(b, 0.0) + tt
        if b not in ("idle (waiting in epoll)", "start-up (imports)"):
            short = filename.split("site-packages/")[-1] if "site-packages/" in filename else filename
            short = short.split("/work/main/")[-1]
            funcs.append((tt, f"{short}:{line}({name})"))
    busy = sum(v for k, v in buckets.items() if k not in ("idle (waiting in epoll)", "start-up (imports)"))
    funcs.sort(reverse=True)
    result = {
        "calls": r["calls"], "calls_per_s_under_profiler": r["calls_per_s"],
        "busy_s": busy, "busy_share": {k: v / busy for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])
                                       if k not in ("idle (waiting in epoll)", "start-up (imports)")},
        "idle_s": buckets.get("idle (waiting in epoll)", 0.0),
        "top_self": [f"{tt * 1000 / r['calls']:6.3f} ms/call  {name}" for tt, name in funcs[:12]],
    }
    print(f"      gateway profile, {transport} (pyinstrument, c=8, main thread busy time): " + ", ".join(
        f"{k} {v:.0%}" for k, v in result["busy_share"].items()), flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# 3. tools/list with 1,000 and 10,000 tools
# ---------------------------------------------------------------------------------------------


async def list_all(client: Client) -> tuple[int, int]:
    cursor: str | None = None
    count = pages = 0
    for _ in range(10_000):
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        count += len(page.tools)
        pages += 1
        cursor = page.next_cursor
        if not cursor:
            break
    return count, pages


async def time_listing(client: Client, expected: int, reps: int) -> dict[str, Any]:
    count, pages = await list_all(client)  # warm-up (and correctness)
    if count != expected:
        print(f"  WARNING: listed {count} tools, expected {expected}", flush=True)
    times = []
    with anyio.fail_after(300):
        for _ in range(reps):
            t0 = time.perf_counter()
            count, pages = await list_all(client)
            times.append((time.perf_counter() - t0) * 1000)
    return {"tools": count, "expected": expected, "pages": pages, "median_ms": med(times), "min_ms": min(times),
            "runs_ms": times}


async def section_list(ctx: Ctx) -> None:
    print(f"[3] tools/list, all pages (stdio, client mode={ctx.mode})", flush=True)
    res: dict[str, Any] = {}
    ctx.results["list"] = res
    for n_extra in (1000, 10_000):
        expected = n_extra + kit_base_tools()
        reps = ctx.args.list_reps if n_extra <= 1000 else max(2, ctx.args.list_reps // 2)
        row: dict[str, Any] = {}
        res[str(n_extra)] = row
        async with stdio_session(ctx, [PY, str(KIT), "--tools", str(n_extra)], f"kit-list-{n_extra}.err") as c:
            row["direct"] = await time_listing(c, expected, reps)
        variants: tuple[tuple[str, dict[str, Any]], ...] = (("gateway", {}),
                                                            ("gateway_page_100000", {"page_size": 100000}))
        if ctx.args.quick and n_extra > 1000:
            variants = variants[:1]  # --quick: the in-process section covers one 10,000-tool page
        for variant, settings in variants:
            cfg = write_config(ctx.tmp / f"gw-list-{n_extra}-{variant}.toml", {"kit": kit_stdio_spec(n_extra)},
                               settings)
            label = f"gateway stdio ({n_extra} tools{', page_size=100000' if settings else ''})"
            async with stdio_session(ctx, gateway_argv(cfg), f"gw-list-{n_extra}-{variant}.err") as c:
                gw = find_child(str(cfg))
                if gw is not None:
                    RSS.add(label, gw.pid)
                    REAPER.snapshot_tree(gw.pid)
                try:
                    row[variant] = await time_listing(c, expected, reps)
                finally:
                    RSS.finish(label)
        big = row.get("gateway_page_100000")
        print(f"  {expected:>6} tools: direct {row['direct']['median_ms']:7.1f} ms | mcpgw "
              f"{row['gateway']['median_ms']:7.1f} ms ({row['gateway']['pages']} pages) | mcpgw page_size=100000 "
              + (f"{big['median_ms']:7.1f} ms" if big else "skipped (--quick)"), flush=True)


# ---------------------------------------------------------------------------------------------
# 3b. in-process server-side time of tools/list with 10,000 tools
# ---------------------------------------------------------------------------------------------


def _pstats_top(prof: cProfile.Profile, n: int = 12) -> list[str]:
    stream = io.StringIO()
    stats = pstats.Stats(prof, stream=stream)
    stats.sort_stats("tottime")
    rows = []
    for func, (_cc, nc, tt, ct, _callers) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:n]:  # type: ignore[attr-defined]
        filename, line, name = func
        short = filename.split("site-packages/")[-1] if "site-packages/" in filename else Path(filename).name
        rows.append(f"{tt * 1000:9.1f} ms self {ct * 1000:9.1f} ms cum {nc:7d} calls  {short}:{line}({name})")
    return rows


class GcClock:
    """Total time this process spent in the cyclic garbage collector (via gc.callbacks)."""

    def __init__(self) -> None:
        self.total_ns = 0
        self.collections = [0, 0, 0]
        self._start = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter_ns()
        else:
            self.total_ns += time.perf_counter_ns() - self._start
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


@contextlib.contextmanager
def cli_gc_policy(enabled: bool) -> Any:
    """Apply the garbage-collector settings `mcpgw serve` applies (if this mcpgw has any), then
    restore ours. Importing Gateway/build_server directly skips them, and they matter here."""
    import mcpgw.cli

    tune = getattr(mcpgw.cli, "_tune_gc", None)  # private; absent in older versions
    if not enabled or tune is None:
        yield tune is not None
        return
    old = gc.get_threshold()
    tune()
    try:
        yield True
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)


async def inprocess_one(ctx: Ctx, n_extra: int, page_size: int | None, *, cli_gc: bool = False,
                        detail: bool = True) -> dict[str, Any]:
    with cli_gc_policy(cli_gc) as applied:
        if cli_gc and not applied:
            return {"skipped": "this mcpgw has no cli._tune_gc"}
        out = await _inprocess_one(ctx, n_extra, page_size, detail)
        out["gc_policy"] = "mcpgw serve's (cli._tune_gc)" if cli_gc else "Python default"
        return out


async def _inprocess_one(ctx: Ctx, n_extra: int, page_size: int | None, detail: bool) -> dict[str, Any]:
    from mcp.types.version import LATEST_MODERN_VERSION  # type: ignore[attr-defined]
    from mcp_types import methods as wire_methods

    import mcpgw
    from mcpgw.config import load_config
    from mcpgw.front.server import build_server
    from mcpgw.gateway import Gateway

    if SRC is not None and not str(mcpgw.__file__).startswith(str(SRC)):
        raise RuntimeError(f"imported mcpgw from {mcpgw.__file__}, not from the snapshot {SRC}")

    settings = {"page_size": page_size} if page_size else {}
    cfg = write_config(ctx.tmp / f"inproc-{n_extra}-{page_size}-{detail}.toml", {"kit": kit_stdio_spec(n_extra)},
                       settings)
    config = load_config(cfg)
    gateway = Gateway(config)
    server, _notifier = build_server(gateway)
    expected = n_extra + kit_base_tools()
    reps = ctx.args.inproc_reps

    server_ns: list[int] = []
    server_gc_ns: list[int] = []
    captured: dict[str, Any] = {}
    gc_clock = GcClock()

    async def timing(rctx: Any, call_next: Any) -> Any:
        # Outermost middleware: params validation + the gateway's handler + the SDK's result
        # shaping (model_dump, per-version surface validation and dump). Not the JSON framing.
        if rctx.method != "tools/list":
            return await call_next(rctx)
        g0 = gc_clock.total_ns
        t0 = time.perf_counter_ns()
        result = await call_next(rctx)
        server_ns.append(time.perf_counter_ns() - t0)
        server_gc_ns.append(gc_clock.total_ns - g0)
        captured.setdefault(rctx.protocol_version, (rctx, result))
        return result

    server.middleware.insert(0, timing)
    out: dict[str, Any] = {"tools": expected, "page_size": page_size or config.gateway.page_size}
    with anyio.fail_after(600), gc_clock:
        async with anyio.create_task_group() as tg:
            await tg.start(gateway.run)
            try:
                if not await gateway.wait_settled(60) or len(gateway.catalog) != expected:
                    raise RuntimeError(f"in-process gateway has {len(gateway.catalog)} tools, expected {expected}: "
                                       f"{gateway.readiness()}")
                for mode in ("legacy", "auto"):
                    async with Client(server, mode=mode) as client:
                        count, pages = await list_all(client)
                        assert count == expected, count
                        client_ms, srv_ms, srv_gc_ms = [], [], []
                        for _ in range(reps):
                            server_ns.clear()
                            server_gc_ns.clear()
                            t0 = time.perf_counter()
                            count, pages = await list_all(client)
                            client_ms.append((time.perf_counter() - t0) * 1000)
                            srv_ms.append(sum(server_ns) / 1e6)
                            srv_gc_ms.append(sum(server_gc_ns) / 1e6)
                        out[mode] = {"protocol": client.protocol_version, "pages": pages,
                                     "client_total_ms": med(client_ms), "server_side_ms": med(srv_ms),
                                     "server_side_gc_ms": med(srv_gc_ms), "server_side_runs_ms": srv_ms}

                if not detail:
                    return out
                # Handler alone, then each serialization step, on a full listing (all pages).
                entry = server.get_request_handler("tools/list")
                rctx, _ = captured.get("2025-11-25") or next(iter(captured.values()))
                assert entry is not None

                async def handler_pages() -> list[Any]:
                    results, cursor = [], None
                    for _ in range(10_000):
                        params = entry.params_type.model_validate({"cursor": cursor} if cursor else {})
                        r = await entry.handler(rctx, params)
                        results.append(r)
                        cursor = r.next_cursor
                        if not cursor:
                            return results
                    return results

                def shape(results: list[Any], version: str) -> list[dict[str, Any]]:
                    dumped = [r.model_dump(by_alias=True, mode="json", exclude_none=True) for r in results]
                    return [wire_methods.serialize_server_result("tools/list", version, d) for d in dumped]

                async def breakdown(gc_on: bool) -> dict[str, float]:
                    """The handler, then the SDK's result shaping step by step (what `ServerRunner._serialize`
                    does), then JSON encoding; optionally with the cyclic GC off to show its share."""
                    steps: dict[str, list[float]] = {k: [] for k in ("handler", "model_dump", "surface_legacy",
                                                                     "surface_modern", "json_encode")}
                    if not gc_on:
                        gc.collect()
                        gc.disable()
                    try:
                        for _ in range(reps):
                            await run_steps(steps)
                    finally:
                        gc.enable()
                    return {k: med(v) for k, v in steps.items()}

                async def run_steps(steps: dict[str, list[float]]) -> None:
                    t0 = time.perf_counter()
                    results = await handler_pages()
                    t1 = time.perf_counter()
                    dumped = [r.model_dump(by_alias=True, mode="json", exclude_none=True) for r in results]
                    t2 = time.perf_counter()
                    legacy = [wire_methods.serialize_server_result("tools/list", "2025-11-25", d) for d in dumped]
                    t3 = time.perf_counter()
                    for d in dumped:
                        wire_methods.serialize_server_result("tools/list", LATEST_MODERN_VERSION, d)
                    t4 = time.perf_counter()
                    for d in legacy:
                        json.dumps({"jsonrpc": "2.0", "id": 1, "result": d}, separators=(",", ":"))
                    t5 = time.perf_counter()
                    for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                        steps[k].append(v * 1000)

                out["breakdown_ms"] = await breakdown(gc_on=True)
                out["breakdown_ms_gc_off"] = await breakdown(gc_on=False)
                out["gc_collections_total"] = list(gc_clock.collections)
                out["breakdown_pages"] = len(await handler_pages())

                if ctx.args.profile:
                    prof = cProfile.Profile()
                    prof.enable()
                    for _ in range(max(3, reps // 2)):
                        shape(await handler_pages(), "2025-11-25")
                    prof.disable()
                    out["profile_top"] = _pstats_top(prof)
            finally:
                tg.cancel_scope.cancel()
    return out


async def section_inprocess(ctx: Ctx) -> None:
    print(f"[3b] in-process server-side tools/list time, 10,000 tools (+ {kit_base_tools()} kit base tools)",
          flush=True)
    res: dict[str, Any] = {}
    ctx.results["inprocess"] = res
    variants: list[tuple[str, int | None, bool]] = [("page_100000", 100000, False),
                                                    ("page_100000_cli_gc", 100000, True)]
    if not ctx.args.quick:
        variants = [("default_page", None, False), ("default_page_cli_gc", None, True), *variants]
    for key, page_size, cli_gc in variants:
        r = await inprocess_one(ctx, 10_000, page_size, cli_gc=cli_gc, detail=not cli_gc)
        res[key] = r
        if "skipped" in r:
            print(f"  {key}: skipped ({r['skipped']})", flush=True)
            continue
        print(f"  page_size={r['page_size']:<6} GC {'as mcpgw serve' if cli_gc else 'Python default'}: server-side "
              f"legacy {r['legacy']['server_side_ms']:6.1f} ms (GC {r['legacy']['server_side_gc_ms']:.1f}), modern "
              f"{r['auto']['server_side_ms']:6.1f} ms (GC {r['auto']['server_side_gc_ms']:.1f}) "
              f"({r['legacy']['pages']} page(s)) | client round trip legacy {r['legacy']['client_total_ms']:6.1f} ms, "
              f"modern {r['auto']['client_total_ms']:6.1f} ms", flush=True)
        for key2, gc_label in (("breakdown_ms", "GC on "), ("breakdown_ms_gc_off", "GC off")):
            if key2 not in r:
                continue
            b = r[key2]
            print(f"      breakdown ({gc_label}): handler {b['handler']:.1f} ms, model_dump {b['model_dump']:.1f} ms, "
                  f"surface validate+dump legacy {b['surface_legacy']:.1f} / modern {b['surface_modern']:.1f} ms, "
                  f"json encode {b['json_encode']:.1f} ms", flush=True)


# ---------------------------------------------------------------------------------------------
# 4. start-up
# ---------------------------------------------------------------------------------------------

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "gateway-bench", "version": "0"}}}


class RawStdio:
    """A bare JSON-RPC-over-stdio peer, so start-up timing includes no client-side work."""

    def __init__(self, argv: list[str], errlog: Path) -> None:
        with open(errlog, "wb") as err:
            self.t0 = time.perf_counter()
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         start_new_session=True, bufsize=0, env=child_env())
        REAPER.track(self.proc.pid)
        self.closed = False
        self.reader = LineReader(self.proc.stdout.fileno())  # type: ignore[union-attr]
        self.next_id = 100

    def send(self, message: dict[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]

    def request(self, method: str, params: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return self.wait_for(self.next_id, timeout)

    def wait_for(self, rid: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.reader.readline(max(0.0, deadline - time.monotonic()))
            msg = json.loads(line)
            if msg.get("id") == rid:
                if "error" in msg:
                    raise RuntimeError(f"error response: {msg['error']}")
                return msg  # type: ignore[no-any-return]

    def close(self, wait: float = 5.0) -> float | None:
        """Close stdin (what an agent host does), give the process `wait` seconds to exit, then
        terminate it and its descendants. Returns how long it took to exit by itself, or None."""
        if self.closed:
            return None
        self.closed = True
        REAPER.snapshot_tree(self.proc.pid)
        t0 = time.perf_counter()
        exited: float | None = None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=wait)
            exited = time.perf_counter() - t0
        REAPER.stop(self.proc.pid, grace=3)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=2)
        return exited


def time_to_initialize(argv: list[str], errlog: Path, label: str | None = None) -> float:
    peer = RawStdio(argv, errlog)
    try:
        if label:
            RSS.add(label, peer.proc.pid)
        peer.send(INIT)
        peer.wait_for(1, 30)
        return time.perf_counter() - peer.t0
    finally:
        if label:
            RSS.finish(label)
        peer.close(wait=1.0)  # only start-up is measured here; upstreams may still be starting


def time_catalog_stdio(config: Path, errlog: Path, expected: int, label: str) -> dict[str, float]:
    peer = RawStdio(gateway_argv(config), errlog)
    try:
        RSS.add(label, peer.proc.pid)
        peer.send(INIT)
        peer.wait_for(1, 30)
        t_init = time.perf_counter() - peer.t0
        peer.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        deadline = time.monotonic() + 60
        polls = 0
        while time.monotonic() < deadline:
            polls += 1
            count, cursor = 0, None
            for _ in range(1000):
                resp = peer.request("tools/list", {"cursor": cursor} if cursor else {}, 60)
                count += len(resp["result"]["tools"])
                cursor = resp["result"].get("nextCursor")
                if not cursor:
                    break
            if count >= expected:
                t_catalog = time.perf_counter() - peer.t0
                RSS.finish(label)
                exit_s = peer.close(wait=10.0)
                return {"init_s": t_init, "catalog_s": t_catalog, "polls": polls,
                        "exit_after_eof_s": exit_s if exit_s is not None else float("nan")}
            time.sleep(0.02)
        raise TimeoutError(f"catalog never reached {expected} tools")
    finally:
        RSS.finish(label)
        peer.close()


def time_catalog_http(config: Path, errlog: Path, n: int, label: str) -> dict[str, float]:
    gw = spawn_gateway_http(config, errlog)
    try:
        RSS.add(label, gw.proc.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _status, report = get_json(gw.base + "/readyz")
            if report and report.get("upstreams_up") == n:
                REAPER.snapshot_tree(gw.proc.pid)
                return {"listening_s": gw.t_listening - gw.t_launch, "catalog_s": time.perf_counter() - gw.t_launch,
                        "tools": report.get("tools")}
            time.sleep(0.01)
        raise TimeoutError(f"/readyz never showed {n} upstreams up")
    finally:
        RSS.finish(label)
        stop_popen(gw.proc)


def time_python_c(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", code], check=True, timeout=60, stdin=subprocess.DEVNULL, env=child_env())
    return time.perf_counter() - t0


def import_profile(code: str, top: int = 10) -> list[str]:
    """`python -X importtime`: where the import time goes (the heaviest modules by self time)."""
    proc = subprocess.run([PY, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=child_env())
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(4)))
    cum = {name: c for _s, c, name in rows}
    total = sum(s_ for s_, _c, _n in rows)
    out = [f"{total / 1000:7.1f} ms all imports; cumulative: " + ", ".join(
        f"{n} {cum[n] / 1000:.0f} ms" for n in ("mcpgw.cli", "mcp", "mcp.server", "mcp.client", "mcp_types",
                                                "mcpgw.config", "pydantic", "anyio", "httpx2") if n in cum)]
    for self_us, _c, name in sorted(rows, reverse=True)[:top]:
        out.append(f"{self_us / 1000:7.1f} ms self  {name}")
    return out


def section_startup(ctx: Ctx) -> None:
    a = ctx.args
    print("[4] start-up", flush=True)
    res: dict[str, Any] = {}
    ctx.results["startup"] = res

    imports = {}
    for label, code in (("python -c pass", "pass"), ("import mcp", "import mcp"),
                        ("import mcpgw.cli", "import mcpgw.cli")):
        runs = [time_python_c(code) for _ in range(a.startup_reps)]
        imports[label] = {"median_s": med(runs), "runs_s": runs}
    res["imports"] = imports
    print("  " + " | ".join(f"{k}: {v['median_s'] * 1000:.0f} ms" for k, v in imports.items()), flush=True)

    kit_cfg = write_config(ctx.tmp / "start-kit.toml", {"kit": kit_stdio_spec()})
    silent_cfg = write_config(ctx.tmp / "start-silent.toml",
                              {"silent": {"kind": "stdio", "command": "${MCPGW_PYTHON}", "args": [str(SILENT)]}})
    init = {}
    for label, argv in (("kit_server alone (reference)", [PY, str(KIT)]),
                        ("mcpgw, kit upstream", gateway_argv(kit_cfg)),
                        ("mcpgw, silent upstream", gateway_argv(silent_cfg))):
        runs = [time_to_initialize(argv, ctx.tmp / "start.err") for _ in range(a.startup_reps)]
        init[label] = {"median_s": med(runs), "max_s": max(runs), "runs_s": runs}
        print(f"  launch -> initialize answered, {label:<30} median {med(runs) * 1000:6.0f} ms "
              f"(max {max(runs) * 1000:.0f})", flush=True)
    res["initialize"] = init

    # 40 stdio upstreams that never answer: each stdio upstream's stderr pump holds one of anyio's
    # 40 default worker-thread tokens, which the SDK's stdio server also needs to read stdin.
    many = write_config(ctx.tmp / "start-40-silent.toml",
                        {f"s{i}": {"kind": "stdio", "command": "${MCPGW_PYTHON}", "args": [str(SILENT)]}
                         for i in range(40)}, {"connect_timeout": 3})
    label = "mcpgw, 40 silent upstreams (connect_timeout=3)"
    if not a.quick:
        runs = [time_to_initialize(gateway_argv(many), ctx.tmp / "start-40.err")]
        init[label] = {"median_s": med(runs), "max_s": max(runs), "runs_s": runs}
        print(f"  launch -> initialize answered, {label} {med(runs) * 1000:6.0f} ms", flush=True)

    n = 10
    ten = write_config(ctx.tmp / "start-10.toml", {f"k{i}": kit_stdio_spec(0, f"k{i}") for i in range(n)})
    runs = [time_to_initialize(gateway_argv(ten), ctx.tmp / "start.err") for _ in range(a.startup_reps)]
    init["mcpgw, 10 kit upstreams"] = {"median_s": med(runs), "max_s": max(runs), "runs_s": runs}
    print(f"  launch -> initialize answered, {'mcpgw, 10 kit upstreams':<30} median {med(runs) * 1000:6.0f} ms "
          f"(max {max(runs) * 1000:.0f})", flush=True)
    runs_stdio = [time_catalog_stdio(ten, ctx.tmp / "start-10.err", n * kit_base_tools(),
                                     "gateway stdio, 10 upstreams")
                  for _ in range(a.catalog_reps)]
    runs_http = [time_catalog_http(ten, ctx.tmp / "start-10-http.err", n, "gateway http, 10 upstreams")
                 for _ in range(0 if a.quick else a.catalog_reps)]  # --quick: the stdio front only
    res["catalog_10_stdio"] = {"median_s": med([r["catalog_s"] for r in runs_stdio]),
                               "init_median_s": med([r["init_s"] for r in runs_stdio]),
                               "exit_median_s": med([r["exit_after_eof_s"] for r in runs_stdio]), "runs": runs_stdio}
    res["catalog_10_http"] = {"median_s": med([r["catalog_s"] for r in runs_http]),
                              "listening_median_s": med([r["listening_s"] for r in runs_http]), "runs": runs_http}
    c10s, c10h = res["catalog_10_stdio"], res["catalog_10_http"]
    http_part = (f"http front listening {c10h['listening_median_s']:.2f} s, /readyz 10/10 up {c10h['median_s']:.2f} s"
                 if runs_http else "http front skipped (--quick)")
    print(f"  10 stdio kit upstreams: stdio front initialize {c10s['init_median_s'] * 1000:.0f} ms, full catalog "
          f"({n * kit_base_tools()} tools) {c10s['median_s']:.2f} s | {http_part}", flush=True)

    worst = max(v["median_s"] for k, v in init.items() if k.startswith("mcpgw"))
    if worst > TARGET_STARTUP_S or a.profile:
        res["import_profile_mcpgw_cli"] = import_profile("import mcpgw.cli, mcpgw.front.stdio")


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "info" if ok is None else ("PASS" if ok else "MISS")


def report(ctx: Ctx) -> list[tuple[str, str, str, str]]:
    r = ctx.results
    rows: list[tuple[str, str, str, str]] = []

    def add(metric: str, value: str, target: str = "-", ok: bool | None = None) -> None:
        rows.append((metric, value, target, verdict(ok)))

    calls = r.get("calls")
    if calls:
        names = {"a_direct_stdio": "a direct -> kit (stdio)", "b_gateway_stdio": "b mcpgw stdio -> kit stdio",
                 "c_direct_http": "c direct -> kit (HTTP)", "d_gateway_http": "d mcpgw HTTP -> kit HTTP"}
        for key, name in names.items():
            if key in calls:
                lat = calls[key]["latency_ms"]
                add(f"echo latency {name}", f"p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  (n={lat['n']})")
        for direct, gw, name in (("a_direct_stdio", "b_gateway_stdio", "stdio"),
                                 ("c_direct_http", "d_gateway_http", "HTTP")):
            if direct in calls and gw in calls:
                d, g = calls[direct]["latency_ms"], calls[gw]["latency_ms"]
                add(f"added latency, {name} (gateway - direct)",
                    f"p50 +{g['p50'] - d['p50']:.2f} ms  p99 +{g['p99'] - d['p99']:.2f} ms")
        for key, name in names.items():
            if key in calls:
                tp = calls[key]["throughput"]
                add(f"calls/s {name}",
                    f"c1 {tp[1]['median']:.0f}  c8 {tp[8]['median']:.0f}  c32 {tp[32]['median']:.0f}")
        for direct, gw, name in (("a_direct_stdio", "b_gateway_stdio", "stdio"),
                                 ("c_direct_http", "d_gateway_http", "HTTP")):
            if direct in calls and gw in calls:
                for conc in CONCURRENCY:
                    ratio = calls[gw]["throughput"][conc]["ratio_vs_direct"]
                    if conc == 8:
                        add(f"throughput gateway/direct, {name}, c=8", f"{ratio:.0%}", f">= {TARGET_TP_RATIO:.0%}",
                            ratio >= TARGET_TP_RATIO)
                    else:
                        add(f"throughput gateway/direct, {name}, c={conc}", f"{ratio:.0%}")
        for key in names:
            if key in calls:
                cpu = calls[key]["throughput"][8].get("cpu_ms_per_call", {})
                add(f"CPU ms per call at c=8, {key[0]}", "  ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        for key, path in (("b_gateway_stdio_profile", "b"), ("d_gateway_http_profile", "d")):
            prof = calls.get(key) or {}
            if prof.get("busy_share"):
                add(f"gateway busy time at c=8 (pyinstrument), {path}",
                    ", ".join(f"{k} {v:.0%}" for k, v in prof["busy_share"].items()))

    lst = r.get("list")
    if lst:
        for _n, row in lst.items():
            total = row["direct"]["tools"]
            for variant, name in (("direct", "direct kit"), ("gateway", "mcpgw default page_size"),
                                  ("gateway_page_100000", "mcpgw page_size=100000")):
                if variant not in row:
                    continue
                v = row[variant]
                add(f"tools/list {total} tools, {name}", f"median {v['median_ms']:.1f} ms (min {v['min_ms']:.1f}), "
                    f"{v['pages']} page(s)")
                if v["tools"] != v.get("expected", v["tools"]):
                    add(f"  tools listed by {name}", f"{v['tools']} (expected {v['expected']})", "all", False)

    inproc = r.get("inprocess")
    if inproc:
        for res in inproc.values():
            if "skipped" in res:
                continue
            label = f"page_size={res['page_size']}" + (", GC as serve" if "serve" in res["gc_policy"] else "")
            for mode, era in (("legacy", "2025-11-25"), ("auto", "2026-07-28")):
                v = res[mode]["server_side_ms"]
                add(f"server-side tools/list {res['tools']:,} tools, {label}, {era}",
                    f"{v:.1f} ms, GC {res[mode]['server_side_gc_ms']:.1f} ({res[mode]['pages']} page(s); "
                    f"client rt {res[mode]['client_total_ms']:.0f} ms)",
                    f"<= {TARGET_SERVER_LIST_MS:.0f} ms", v <= TARGET_SERVER_LIST_MS)
        big = inproc.get("page_100000")
        if big:
            b, nb = big["breakdown_ms"], big["breakdown_ms_gc_off"]
            add("  of which: gateway handler alone (1 page)", f"{b['handler']:.1f} ms (GC off {nb['handler']:.1f})",
                f"<= {TARGET_SERVER_LIST_MS:.0f} ms", b["handler"] <= TARGET_SERVER_LIST_MS)
            add("  of which: SDK model_dump", f"{b['model_dump']:.1f} ms (GC off {nb['model_dump']:.1f})")
            add("  of which: SDK surface validate+dump, legacy", f"{b['surface_legacy']:.1f} ms "
                f"(GC off {nb['surface_legacy']:.1f})")
            add("  of which: SDK surface validate+dump, modern", f"{b['surface_modern']:.1f} ms "
                f"(GC off {nb['surface_modern']:.1f})")
            add("  (+ JSON framing, estimate)", f"{b['json_encode']:.1f} ms (GC off {nb['json_encode']:.1f})")

    st = r.get("startup")
    if st:
        for k, v in st["imports"].items():
            add(f"bare `python -c \"{k}\"`" if k != "python -c pass" else "bare `python -c pass`",
                f"{v['median_s'] * 1000:.0f} ms")
        for k, v in st["initialize"].items():
            target = k.startswith("mcpgw")
            add(f"launch -> initialize answered, {k}", f"{v['median_s'] * 1000:.0f} ms (max {v['max_s'] * 1000:.0f})",
                f"<= {TARGET_STARTUP_S * 1000:.0f} ms" if target else "-",
                v["median_s"] <= TARGET_STARTUP_S if target else None)
        add(f"10 stdio upstreams: full catalog ({10 * kit_base_tools()} tools) via stdio tools/list",
            f"{st['catalog_10_stdio']['median_s']:.2f} s")
        if st["catalog_10_http"]["runs"]:
            add("10 stdio upstreams: /readyz upstreams_up == 10 (http)", f"{st['catalog_10_http']['median_s']:.2f} s")
        add("10 stdio upstreams up: stdin EOF -> gateway exited", f"{st['catalog_10_stdio']['exit_median_s']:.2f} s")

    for name, err in r.get("errors", {}).items():
        rows.append((f"section {name}", err.strip().splitlines()[-1][:100], "runs", "ERROR"))
    for label in sorted(set(RSS.peak) | set(RSS.hwm)):
        peak = RSS.peak.get(label, 0) / 2**20
        hwm = RSS.hwm.get(label, 0) / 2**20
        add(f"peak RSS {label}", f"{peak:.1f} MiB sampled, {hwm:.1f} MiB VmHWM")
    return rows


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = [max(len(row[i]) for row in [*rows, ("metric", "value", "target", "verdict")]) for i in range(4)]
    line = "+".join("-" * (w + 2) for w in widths)
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(line)
    print(fmt.format("metric", "value", "target", "verdict"))
    print(line)
    for row in rows:
        print(fmt.format(*row))
    print(line)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

SECTIONS = ("calls", "list", "inprocess", "startup")


def source_state() -> str:
    """The commit measured, and whether mcpgw/ or tests/upstreams/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "mcpgw", "tests/upstreams"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes in mcpgw/ or tests/upstreams/' if dirty else ''}" + (
        " (measured from a copy taken at start)" if "--no-snapshot" not in sys.argv else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer calls and repeats (< 1 minute)")
    p.add_argument("--no-audit", dest="audit", action="store_false",
                   help="measure gateways with [audit] enabled = false (to see what the audit trail costs)")
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    p.add_argument("--mode", default="auto", choices=["auto", "legacy"],
                   help="client mode for the bench client (auto negotiates 2026-07-28 with these servers)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--calls", type=int, help="measured sequential calls per path (default 2000, quick 300)")
    p.add_argument("--profile", dest="profile", action="store_true", default=None,
                   help="run the profiles (pyinstrument on the gateway, cProfile on tools/list, -X importtime); "
                        "default: on for a full run, off with --quick")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiles")
    p.add_argument("--no-snapshot", dest="snapshot", action="store_false",
                   help="use mcpgw/ and tests/upstreams/ from the work tree live instead of a copy taken at start")
    a = p.parse_args(argv)
    quick = a.quick
    a.calls = a.calls or (200 if quick else 2000)
    a.warmup = 30 if quick else 200
    a.tp_seconds = 0.4 if quick else 1.5
    a.tp_max_calls = 100_000
    a.repeats = 1 if quick else 3
    if a.profile is None:
        a.profile = not quick
    a.list_reps = 3 if quick else 10
    a.inproc_reps = 2 if quick else 10
    a.startup_reps = 1 if quick else 5
    a.catalog_reps = 1 if quick else 3
    a.sections = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = set(a.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return a


def _busy_cpu_s() -> tuple[float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds spent by this harness and its processes)."""
    machine = psutil.cpu_times()
    busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    t = os.times()
    ours = t.user + t.system + t.children_user + t.children_system  # + waited-for descendants
    with contextlib.suppress(psutil.NoSuchProcess):
        for kid in psutil.Process().children(recursive=True):  # + live descendants so far
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                c = kid.cpu_times()
                ours += c.user + c.system
    return busy, ours


class Interference:
    """How much CPU *other* processes used while a section ran (a noise indicator on 2 cores)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.busy0, self.ours0 = _busy_cpu_s()

    def done(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        busy, ours = _busy_cpu_s()
        foreign = max(0.0, (busy - self.busy0) - (ours - self.ours0))
        return {"wall_s": wall, "foreign_cpu_s": foreign,
                "foreign_share": foreign / (wall * (psutil.cpu_count() or 1)) if wall else 0.0}


def section_done(ctx: Ctx, name: str, watch: Interference) -> None:
    info = watch.done()
    ctx.results.setdefault("section_seconds", {})[name] = info["wall_s"]
    ctx.results.setdefault("interference", {})[name] = info
    note = " - NOISY" if info["foreign_share"] > 0.10 else ""
    print(f"  -- {name}: {info['wall_s']:.0f} s (other processes used {info['foreign_share']:.0%} of the "
          f"machine meanwhile{note})", flush=True)


def section_failed(ctx: Ctx, name: str, exc: BaseException) -> None:
    """A failing section is reported and the run goes on with the next one."""
    import traceback

    ctx.results.setdefault("errors", {})[name] = "".join(traceback.format_exception(exc))
    print(f"  !! section {name} failed: {type(exc).__name__}: {exc}", flush=True)
    traceback.print_exception(exc, file=sys.stderr)


async def run_async(ctx: Ctx) -> None:
    for name, fn in (("calls", section_calls), ("list", section_list), ("inprocess", section_inprocess)):
        if name in ctx.args.sections:
            watch = Interference()
            try:
                await fn(ctx)
            except Exception as exc:  # one broken section must not lose the others' numbers
                section_failed(ctx, name, exc)
            section_done(ctx, name, watch)


def main(argv: list[str] | None = None) -> int:
    global AUDIT
    args = parse_args(argv)
    AUDIT = args.audit

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(REAPER.sweep)
    RSS.start()
    git = source_state()
    busy_before = psutil.cpu_percent(interval=1.0)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    print(f"mcpgw gateway bench: python {platform.python_version()}, {psutil.cpu_count()} CPU(s), "
          f"{'quick' if args.quick else 'full'} run, sections {','.join(args.sections)}; machine busy "
          f"{busy_before:.0f}% before start, load average {load_before[0]:.2f}; source {git}", flush=True)
    if busy_before > 15:
        print("WARNING: something else is using the CPU; numbers will be noisy (2-core machine)", flush=True)
    tmp = tempfile.mkdtemp(prefix="mcpgw-bench-")
    ctx = Ctx(args, Path(tmp))
    completed = False
    try:
        if args.snapshot:
            snapshot_sources(Path(tmp))
        anyio.run(run_async, ctx)
        if "startup" in args.sections:
            watch = Interference()
            try:
                section_startup(ctx)
            except Exception as exc:
                section_failed(ctx, "startup", exc)
            section_done(ctx, "startup", watch)
        completed = True
    finally:
        RSS.stopped.set()
        leftovers = REAPER.sweep()
        if leftovers:
            print(f"(cleaned up {leftovers} leftover process(es))", flush=True)
        if ctx.results.get("errors") or not completed:
            print(f"(logs of every process kept in {tmp})", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - t0

    rows = report(ctx)
    load_after = os.getloadavg()
    ctx.results["source"] = git
    ctx.results["machine"] = {"busy_percent_before": busy_before, "loadavg_before": load_before,
                              "loadavg_after": load_after, "cpus": psutil.cpu_count()}
    noise = ", ".join(f"{k} {v['foreign_share']:.0%}" for k, v in ctx.results.get("interference", {}).items())
    print(f"\n=== results (mode={args.mode}, {'quick' if args.quick else 'full'}, {elapsed:.0f} s; CPU used by "
          f"other processes during each section: {noise or 'n/a'}; source {git}) ===")
    print_table(rows)
    for key, path in (("b_gateway_stdio_profile", "b, stdio"), ("d_gateway_http_profile", "d, HTTP")):
        gprof = ctx.results.get("calls", {}).get(key) or {}
        if gprof.get("top_self"):
            print(f"\npyinstrument, gateway process (path {path}) at c=8, {gprof['calls']} calls "
                  f"({gprof['calls_per_s_under_profiler']:.0f} calls/s under the profiler), top self time per call:")
            for row in gprof["top_self"]:
                print("  " + row)
    inproc = ctx.results.get("inprocess", {})
    for key, res in inproc.items():
        if res.get("profile_top"):
            print(f"\ncProfile, handler + SDK result shaping, all pages, {key} (top by self time):")
            for row in res["profile_top"]:
                print("  " + row)
    prof = ctx.results.get("startup", {}).get("import_profile_mcpgw_cli")
    if prof:
        print("\n-X importtime, `import mcpgw.cli, mcpgw.front.stdio` (one run; heaviest modules by self time):")
        for row in prof:
            print("  " + row)
    if args.json:
        ctx.results["meta"] = {"mode": args.mode, "quick": args.quick, "elapsed_s": elapsed,
                               "python": platform.python_version(), "cpus": psutil.cpu_count(),
                               "rss_peak_bytes": RSS.peak, "rss_hwm_bytes": RSS.hwm,
                               "table": [dict(zip(("metric", "value", "target", "verdict"), r, strict=True))
                                         for r in rows]}
        args.json.write_text(json.dumps(ctx.results, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 1 if ctx.results.get("errors") else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        REAPER.sweep()
        sys.exit(130)
