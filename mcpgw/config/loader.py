"""Read `servers.toml` into a `Config`, or fail with errors that name file, key and line.

Order matters: TOML syntax first (tomllib reports the line), then `${VAR}` interpolation on the
raw data (so an unset variable is reported at the key that uses it), then pydantic validation,
then the cross-server checks no single model can make (names, prefixes).
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mcpgw.config._lines import KeyPath, line_of, locate_keys
from mcpgw.config.auth import AUTH_TYPES
from mcpgw.config.models import KNOWN_KINDS, NAME_RE, PLANNED_KINDS, PLANNED_TABLES, Config
from mcpgw.pinning.lockfile import LockError, read_lock

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, placed as precisely as we can."""

    path: KeyPath
    message: str
    line: int | None = None

    @property
    def key(self) -> str:
        return ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in self.path).replace(".[", "[")


class ConfigError(Exception):
    """A config file that cannot be used. `str()` is ready to print, one problem per line."""

    def __init__(self, file: Path | str, problems: list[Problem]) -> None:
        self.file = Path(file)
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        out = []
        for p in self.problems:
            where = f"{self.file}:{p.line}" if p.line else str(self.file)
            out.append(f"{where}: {p.key}: {p.message}" if p.path else f"{where}: {p.message}")
        return "\n".join(out)


def builtin_variables(config_path: Path) -> dict[str, str]:
    """Variables the gateway defines itself; the environment can override them.

    `MCPGW_PYTHON` lets a config launch example servers with the interpreter that runs the
    gateway (so they share its virtualenv), and `MCPGW_CONFIG_DIR` lets paths be written
    relative to the config file wherever the gateway is started from.
    """
    return {"MCPGW_PYTHON": sys.executable, "MCPGW_CONFIG_DIR": str(config_path.resolve().parent)}


def interpolate(data: Any, env: Mapping[str, str], path: KeyPath = ()) -> tuple[Any, list[Problem]]:
    """Replace `${VAR}` in every string; `$$` is a literal `$`. Unset variables are problems."""
    problems: list[Problem] = []
    if isinstance(data, str):
        def sub(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group(1)
            if name not in env:
                problems.append(Problem(path, f"environment variable ${{{name}}} is not set"))
                return ""
            return env[name]

        return _VAR.sub(sub, data), problems
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out[key], found = interpolate(value, env, (*path, key))
            problems += found
        return out, problems
    if isinstance(data, list):
        items = []
        for index, value in enumerate(data):
            item, found = interpolate(value, env, (*path, index))
            items.append(item)
            problems += found
        return items, problems
    return data, problems


def _precheck(data: dict[str, Any]) -> list[Problem]:
    """Problems that pydantic would report confusingly (a tagged union with an unknown tag)."""
    problems: list[Problem] = []
    for table in sorted(PLANNED_TABLES & data.keys()):
        problems.append(
            Problem((table,), f"[{table}] is not supported by this version of mcpgw yet; remove it "
                    "(it is refused rather than ignored so that nothing you configured is silently off)")
        )
    servers = data.get("servers", {})
    if not isinstance(servers, dict):
        return [*problems, Problem(("servers",), "must be a table of [servers.NAME] tables")]
    for name, server in servers.items():
        if not NAME_RE.match(name):
            problems.append(Problem(("servers", name), "server names may only use letters, digits, '_', '.' "
                                    "and '-' (at most 64), because they become tool-name prefixes"))
        if not isinstance(server, dict):
            problems.append(Problem(("servers", name), "must be a table"))
            continue
        kind = server.get("kind")
        if kind is None:
            problems.append(Problem(("servers", name), f"missing key 'kind' (one of {', '.join(KNOWN_KINDS)})"))
        elif kind in PLANNED_KINDS:
            problems.append(Problem(("servers", name, "kind"),
                                    f"kind {kind!r} is not supported by this version of mcpgw yet"))
        elif kind not in KNOWN_KINDS:
            problems.append(Problem(("servers", name, "kind"),
                                    f"unknown kind {kind!r}; expected one of {', '.join(KNOWN_KINDS)}"))
        problems += _precheck_auth(name, server)
    return problems


def _precheck_auth(name: str, server: dict[str, Any]) -> list[Problem]:
    auth = server.get("auth")
    if auth is None:
        return []
    where = ("servers", name, "auth")
    if server.get("kind") == "stdio":
        return [Problem(where, "a stdio upstream gets its secrets through `env` (e.g. env = { API_TOKEN = "
                        "\"${API_TOKEN}\" }); [servers.NAME.auth] is for http and sse upstreams")]
    if not isinstance(auth, dict):
        return [Problem(where, "must be a table")]
    kind = auth.get("type")
    if kind is None:
        return [Problem(where, f"missing key 'type' (one of {', '.join(AUTH_TYPES)})")]
    if kind in ("passthrough", "forward", "caller"):
        return [Problem((*where, "type"), "passing the caller's token upstream is not offered: the MCP "
                        "authorization spec forbids it (a token is for one audience); use token_exchange")]
    if kind not in AUTH_TYPES:
        return [Problem((*where, "type"), f"unknown auth type {kind!r}; expected one of {', '.join(AUTH_TYPES)}")]
    return []


def _from_validation_error(err: ValidationError, data: dict[str, Any]) -> list[Problem]:
    problems = []
    for item in err.errors():
        loc = list(item["loc"])
        # Tagged-union errors carry the tag as a path element (servers.x.stdio.command): drop it.
        if len(loc) >= 3 and loc[0] == "servers" and loc[2] in KNOWN_KINDS:
            server = data.get("servers", {}).get(loc[1], {})
            if isinstance(server, dict) and server.get("kind") == loc[2]:
                del loc[2]
        if len(loc) >= 4 and loc[0] == "servers" and loc[2] == "auth" and loc[3] in AUTH_TYPES:
            del loc[3]
        problems.append(Problem(tuple(loc), readable(item, "the configuration reference")))
    return problems


def readable(item: Any, reference: str) -> str:
    """A pydantic error in the words a config file's author needs."""
    message: str = item["msg"]
    if item["type"] == "missing":
        return "missing required key"
    if item["type"] == "extra_forbidden":
        return f"unknown key (check the spelling; see {reference} in the README)"
    return message.removeprefix("Value error, ")


def _cross_checks(config: Config) -> list[Problem]:
    problems = []
    seen: dict[str, str] = {}
    for name, server in config.servers.items():
        prefix = config.prefix_of(name)
        if prefix == "" or not server.enabled:
            continue
        if prefix in seen:
            problems.append(Problem(("servers", name, "prefix"),
                                    f"prefix {prefix!r} is already used by server {seen[prefix]!r}; "
                                    "two upstreams cannot share a namespace"))
        seen[prefix] = name
    return problems


def parse_config(text: str, path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Parse config text. `path` is used for error messages and relative paths."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(match.group(1)) if match else None
        raise ConfigError(path, [Problem((), f"invalid TOML: {exc}", line)]) from None
    lines = locate_keys(text)
    scope = {**builtin_variables(path), **(os.environ if env is None else env)}
    data, problems = interpolate(raw, scope)
    prechecked = _precheck(data)
    problems += prechecked
    # Validate what the pre-check did not already condemn, so one run reports every problem.
    condemned = {p.path[:2] for p in prechecked}
    servers = data.get("servers")
    if isinstance(servers, dict):
        data = {**data, "servers": {k: v for k, v in servers.items() if ("servers", k) not in condemned}}
    data = {k: v for k, v in data.items() if (k,) not in condemned}
    config: Config | None = None
    try:
        config = Config.model_validate({**data, "source": path})
    except ValidationError as exc:
        problems += _from_validation_error(exc, data)
    if config is not None and not problems:
        problems += _cross_checks(config)
    if problems:
        placed = [Problem(p.path, p.message, p.line or line_of(lines, p.path)) for p in problems]
        raise ConfigError(path, placed)
    assert config is not None
    return _resolve_paths(config, path)


def _resolve_paths(config: Config, path: Path) -> Config:
    """Relative `cwd`s and SQLite audit paths are relative to the config file, not to wherever
    the gateway (or `mcpgw audit`) was started."""
    base = path.resolve().parent
    servers = {}
    for name, server in config.servers.items():
        if server.kind == "stdio":
            cwd = base if server.cwd is None else (base / server.cwd if not server.cwd.is_absolute() else server.cwd)
            server = server.model_copy(update={"cwd": cwd})
        servers[name] = server
    audit = config.audit
    database = audit.url.removeprefix("sqlite:///")
    if audit.url.startswith("sqlite:///") and database and not database.startswith((":memory:", "/")):
        audit = audit.model_copy(update={"url": f"sqlite:///{base / database}"})
    return config.model_copy(update={"servers": servers, "audit": audit})


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file, and the lock file beside it if there is one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [Problem((), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [Problem((), f"cannot read: {exc}")]) from None
    config = parse_config(text, path, env)
    lock_path = config.lock_path
    if lock_path is None:
        return config
    try:
        lock = read_lock(lock_path)
    except LockError as exc:
        keyed = [Problem(tuple(key.split(".")) if key else (), message) for key, message in exc.problems]
        raise ConfigError(lock_path, keyed) from None
    return config.model_copy(update={"lock": lock}) if lock is not None else config
