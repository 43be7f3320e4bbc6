"""`mcpgw`: serve the gateway, check a config, list the catalog, pin tool definitions, read the
audit trail.

Exit codes: 0 ok; 1 the config is valid but something is wrong at run time (an upstream failed,
tools were withheld or quarantined); 2 the config itself is invalid or the command line is wrong.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from mcpgw import __version__
from mcpgw.audit.commands import add_audit_parser
from mcpgw.audit.store import StoreError
from mcpgw.config import Config, ConfigError, load_config
from mcpgw.netutil import is_loopback
from mcpgw.pinning.lockfile import write_lock
from mcpgw.policy.explain import parse_principal, print_decisions
from mcpgw.policy.loader import PolicyError

if TYPE_CHECKING:
    from mcpgw.gateway import Gateway

UP = "up"
"""`Status.UP` of an upstream, as readiness reports spell it (the upstream module imports the SDK,
which `mcpgw audit` and config errors should not wait ~0.5 s for)."""

log = logging.getLogger("mcpgw")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # watchfiles logs every change it sees: with the log file beside servers.toml that would be a
    # feedback loop (each log line is a change), so it is kept to warnings whatever the level.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.error", "sse_starlette"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path(os.environ.get("MCPGW_CONFIG", "servers.toml")),
                        help="path to servers.toml (default: ./servers.toml, or $MCPGW_CONFIG)")
    parser.add_argument("--policies", type=Path, default=None,
                        help="policies folder: every *.toml in it is merged (default: policies/ beside the "
                             "config; no folder = no policy)")
    parser.add_argument("--log-level", default=os.environ.get("MCPGW_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])


def _tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running server.

    Everything imported so far (the SDK's thousands of pydantic classes) is moved out of the
    collector's sight, and young collections run less often: a 10,000-tool listing otherwise
    spends more time in the cyclic collector than in building the answer (see bench/).
    """
    gc.freeze()  # no gc.collect() first: it costs ~0.1 s on the way to answering initialize
    gc.set_threshold(20_000, 20, 20)


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    auth = config.auth
    if args.transport != "stdio" and not auth.enabled and not is_loopback(args.host):
        print(
            f"mcpgw: refusing to serve on {args.host}: without [auth] the HTTP front is only offered on "
            "loopback (127.0.0.1, ::1, localhost). Configure [auth], put an authenticating reverse proxy "
            "in front, or bind to loopback.",
            file=sys.stderr,
        )
        return 2
    from mcpgw.gateway import Gateway
    from mcpgw.telemetry import start_telemetry

    telemetry = start_telemetry(config.telemetry, config.gateway.name)
    gateway = Gateway(config, args.policies, telemetry=telemetry, audit=True)
    _tune_gc()
    try:
        if args.transport == "stdio":
            from mcpgw.front.stdio import serve_stdio

            anyio.run(serve_stdio, gateway)
        else:
            from mcpgw.front.http import serve_http

            if auth.enabled:
                how = " and ".join(x for x in (auth.jwks_url and "JWTs checked against " + auth.jwks_url,
                                              auth.introspection_url and "opaque tokens introspected at "
                                              + auth.introspection_url) if x)
                log.info("[auth]: HTTP callers need an access token from %s for %s (%s)", auth.issuer,
                         auth.audience, how)
            else:
                log.info("no [auth] configured: the HTTP front accepts unauthenticated clients on loopback only")
            anyio.run(serve_http, gateway, args.host, args.port)
    finally:
        if telemetry is not None:
            telemetry.shutdown()  # a no-op when the gateway's run already flushed
    return 0


async def _settle(config: Config, policies: Path | None = None) -> tuple[Gateway, dict[str, Any]]:
    """Start every upstream once, wait until each is up or has failed, and take a report."""
    from mcpgw.gateway import Gateway

    gateway = Gateway(config, policies)
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        await gateway.wait_settled(config.gateway.connect_timeout + 1)
        report = gateway.readiness()
        tg.cancel_scope.cancel()
    return gateway, report


def _pinning_line(config: Config) -> str:
    gw = config.gateway
    scan = f"scan = {gw.scan!r}"
    if config.lock is None:
        return f"pinning: off (no {config.lock_path}; run `mcpgw lock` to pin tool definitions); {scan}"
    if gw.pin == "off":
        return f"pinning: off ([gateway] pin = 'off'; {config.lock_path} is ignored); {scan}"
    return (f"pinning: pin = {gw.pin!r} against {config.lock_path} ({config.lock.count()} approved "
            f"definition(s)); {scan}")


def _print_pinning(info: dict[str, Any]) -> None:
    for held in info["quarantined"]:
        print(f"       QUARANTINED {held['message']}")
        for line in held["diff"].splitlines():
            print(f"         {line}")
    for finding in info["scan_findings"]:
        print(f"       scan: [{finding['rule']}] {finding['kind']} {finding['name']} {finding['field']}: "
              f"{finding['excerpt']}")


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    principal = parse_principal(args.as_) if args.as_ else None
    print(f"{config.source}: configuration is valid ({len(config.servers)} server(s))")
    gateway, report = anyio.run(_settle, config, args.policies)
    policy = gateway.policy
    if not args.json:
        if policy.present:
            print(f"{gateway.policies_dir}: policy is valid ({len(policy.source.roles)} role(s), "
                  f"{len(policy.source.rules)} rule(s), {len(policy.source.limits)} limit(s); "
                  f"default {policy.source.defaults.effect})")
        else:
            print(f"{gateway.policies_dir}: no policies folder: every tool is allowed to every caller")
        limits = config.limits
        if policy.source.limits or limits.url:
            where = (f"in Redis at {limits.display_url} (when unreachable: {limits.on_unavailable})" if limits.url
                     else "in this process")
            print(f"rate limits: {len(policy.source.limits)} limit(s) on tools/call; counters {where}")
        print(_pinning_line(config))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    failed = False
    if not args.json:
        for name, info in report["upstreams"].items():
            server = config.servers[name]
            status = info["status"]
            mark = "ok  " if status == UP else "FAIL"
            counts = ", ".join(f"{info[k]} {k.replace('_', ' ')}" for k in ("tools", "prompts", "resources",
                                                                              "resource_templates") if info[k])
            detail = (counts or "nothing offered") if status == UP else info["error"] or status
            print(f"  {mark} {name:<20} {server.kind:<6} prefix={config.prefix_of(name)!r:<12} {detail}")
            for warning in info["warnings"]:
                print(f"       warning: {warning}")
            for problem in info["catalog_problems"]:
                print(f"       problem: {problem}")
            _print_pinning(info)
            catalog = gateway.catalog
            for label, index in (("tool", catalog.tools_index), ("prompt", catalog.prompts_index),
                                 ("resource", catalog.resources_index), ("template", catalog.templates_index)):
                for exported in sorted(k for k, e in index.merged.items() if e.upstream == name):
                    print(f"       {label:<9}{exported}")
        disabled = [n for n, s in config.servers.items() if not s.enabled]
        for name in disabled:
            print(f"  off  {name:<20} (enabled = false)")
        print(f"catalog: {report['tools']} tool(s), {report['prompts']} prompt(s), {report['resources']} "
              f"resource(s), {report['resource_templates']} resource template(s) from "
              f"{report['upstreams_up']}/{report['upstreams_total']} upstream(s) up")
    held = sum(len(info["quarantined"]) for info in report["upstreams"].values())
    if held and not args.json:
        print(f"{held} tool(s)/prompt(s) quarantined: review the changes above; `mcpgw lock` approves what the "
              "upstreams serve now")
    for info in report["upstreams"].values():
        if info["status"] != UP or any("withheld" in p for p in info["catalog_problems"]):
            failed = True
    if principal is not None:
        print_decisions(gateway, principal)
    return 1 if failed or held else 0


def cmd_lock(args: argparse.Namespace) -> int:
    config = _load(args)
    path = config.lock_path
    assert path is not None  # a config read from a file always has one
    # Pinning is off while listing: what the upstreams serve now is what is being approved.
    unpinned = config.model_copy(update={"gateway": config.gateway.model_copy(update={"pin": "off"})})
    gateway, report = anyio.run(_settle, unpinned)
    # The report was taken while the upstreams ran; their listings outlive the stop.
    listings = {name: gateway.upstreams[name].listing if info["status"] == UP else None
                for name, info in report["upstreams"].items()}
    errors = {name: str(info["error"] or info["status"]) for name, info in report["upstreams"].items()}
    from mcpgw.pinning.approve import relock

    result = relock(config.lock, config, listings, errors)
    if config.lock is not None and result.lock == config.lock:
        print(f"{path}: unchanged ({result.lock.count()} approved definition(s))")
    else:
        write_lock(path, result.lock)
        print(f"{path}: written ({len(result.lock.servers)} server(s), {result.lock.count()} definition(s))")
    for line in result.lines:
        print(line)
    findings = sum(len(f) for f in gateway.catalog.findings.values())
    if findings:
        print(f"note: the description scanner has {findings} finding(s) in what the upstreams serve; a lock does "
              "not clear them (`mcpgw check` shows them)")
    if result.failed:
        print(f"mcpgw: {len(result.failed)} upstream(s) could not be listed ({', '.join(result.failed)}); their "
              "previous entries were kept", file=sys.stderr)
    return 1 if result.failed else 0


def cmd_tools(args: argparse.Namespace) -> int:
    config = _load(args)
    gateway, report = anyio.run(_settle, config, args.policies)
    tools = gateway.catalog.tools
    if args.json:
        print(json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools], indent=2))
    else:
        width = max((len(t.name) for t in tools), default=0)
        for tool in tools:
            first_line = (tool.description or "").strip().splitlines()[0:1]
            print(f"{tool.name:<{width}}  {first_line[0] if first_line else ''}")
    down = [n for n, info in report["upstreams"].items() if info["status"] != UP]
    for name in down:
        print(f"mcpgw: upstream {name!r} is not up: {report['upstreams'][name]['error']}", file=sys.stderr)
    held = [q for qs in gateway.catalog.quarantine.values() for q in qs]
    if held:
        names = ", ".join(q.exported for q in held)
        print(f"mcpgw: {len(held)} tool(s)/prompt(s) quarantined and not listed ({names}); `mcpgw check` says why",
              file=sys.stderr)
    return 1 if down else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcpgw", description="An MCP gateway.")
    parser.add_argument("--version", action="version", version=f"mcpgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    _add_config_args(serve)
    serve.add_argument("--transport", choices=["stdio", "http", "sse"], default="stdio",
                       help="stdio (default; what agent hosts launch) or http (Streamable HTTP at /mcp and "
                            "legacy SSE at /sse on one port; 'sse' is the same server)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8808, help="0 picks a free port (printed on stderr)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate the config, start every upstream once, print the catalog")
    _add_config_args(check)
    check.add_argument("--json", action="store_true", help="print the readiness report as JSON")
    check.add_argument("--as", dest="as_", metavar="PRINCIPAL", default=None,
                       help="also print, for every tool, what the policy decides for this caller, e.g. "
                            "'sub=alice,scopes=support+billing,client=cli,groups=ops'")
    check.set_defaults(func=cmd_check)

    lock = sub.add_parser("lock", help="start every upstream once and pin its tool and prompt definitions in "
                                       "servers.lock (approving what they serve now)")
    _add_config_args(lock)
    lock.set_defaults(func=cmd_lock)

    tools = sub.add_parser("tools", help="list the namespaced tool catalog")
    _add_config_args(tools)
    tools.add_argument("--json", action="store_true", help="print full tool definitions as JSON")
    tools.set_defaults(func=cmd_tools)

    def with_config(command: Callable[[Config, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            config = _load(args)
            try:
                return command(config, args)
            except (StoreError, ValueError) as exc:
                print(f"mcpgw: {exc}", file=sys.stderr)
                return 1 if isinstance(exc, StoreError) else 2
        return run

    add_audit_parser(sub, _add_config_args, with_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = args.command in ("check", "tools", "lock", "audit") and args.log_level == "info"
    _setup_logging("warning" if quiet else args.log_level)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"mcpgw: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mcpgw audit export | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


def _entry() -> Any:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
