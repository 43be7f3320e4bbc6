"""Read a policies folder (`*.toml`, merged in name order) into a `PolicySet`, or say precisely
what is wrong: every problem of every file, each as `file:line: key: message`.

A missing folder is not an error: it means no policy (everything the catalog holds is allowed,
as before policies existed). An empty or unreadable folder that exists is an error, because a
policy the operator thinks is active must not quietly be absent.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mcpgw.config._lines import line_of, locate_keys
from mcpgw.config.loader import ConfigError, Problem, readable
from mcpgw.policy.models import Defaults, PolicyFile, PolicySet


class PolicyError(Exception):
    """One or more policy files cannot be used. `str()` lists every problem, one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(e.render() for e in errors))


def default_policies_dir(config_path: Path | None) -> Path:
    return (config_path.resolve().parent if config_path else Path.cwd()) / "policies"


def load_policies(folder: Path | None) -> PolicySet:
    if folder is None or not folder.exists():
        return PolicySet()
    if not folder.is_dir():
        raise PolicyError([ConfigError(folder, [Problem((), "not a directory")])])
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise PolicyError([ConfigError(folder, [Problem((), "the policies folder holds no *.toml file; remove the "
                                                            "folder for no policy, or add a file")])])
    errors: list[ConfigError] = []
    parsed: list[tuple[Path, PolicyFile, dict[Any, int]]] = []
    for path in files:
        try:
            parsed.append(_parse(path))
        except ConfigError as exc:
            errors.append(exc)
    if errors:
        raise PolicyError(errors)
    return _merge(parsed)


def _parse(path: Path) -> tuple[Path, PolicyFile, dict[Any, int]]:
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        raise ConfigError(path, [Problem((), f"invalid TOML: {exc}", int(match.group(1)) if match else None)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [Problem((), f"cannot read: {exc}")]) from None
    lines = locate_keys(text)
    try:
        policy = PolicyFile.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            loc = tuple(item["loc"])
            problems.append(Problem(loc, readable(item, "the policy reference"), line_of(lines, loc)))
        raise ConfigError(path, problems) from None
    return path, policy, lines


def _merge(parsed: list[tuple[Path, PolicyFile, dict[Any, int]]]) -> PolicySet:
    errors: list[ConfigError] = []
    defaults: Defaults | None = None
    defaults_from: Path | None = None
    roles: dict[str, Path] = {}
    for path, policy, lines in parsed:
        problems: list[Problem] = []
        if policy.defaults is not None:
            if defaults is not None and policy.defaults != defaults:
                problems.append(Problem(("defaults",), f"conflicts with [defaults] in {defaults_from}; "
                                        "keep one", line_of(lines, ("defaults",))))
            defaults, defaults_from = policy.defaults, path
        for index, role in enumerate(policy.roles):
            if role.name in roles:
                where = ("roles", index, "name")
                problems.append(Problem(where, f"role {role.name!r} is already defined in {roles[role.name]}",
                                        line_of(lines, where)))
            roles[role.name] = path
        if problems:
            errors.append(ConfigError(path, problems))
    for path, policy, lines in parsed:
        problems = []
        referencing = [("rules", i, r.roles) for i, r in enumerate(policy.rules)]
        referencing += [("limits", i, lim.roles) for i, lim in enumerate(policy.limits)]
        for kind, index, names in referencing:
            for name in names:
                if name not in roles:
                    where = (kind, index, "roles")
                    problems.append(Problem(where, f"unknown role {name!r} (defined roles: "
                                            f"{', '.join(sorted(roles)) or 'none'})", line_of(lines, where)))
        if problems:
            errors.append(ConfigError(path, problems))
    if errors:
        raise PolicyError(errors)
    return PolicySet(
        defaults=defaults or Defaults(),
        roles=tuple(r for _, p, _ in parsed for r in p.roles),
        rules=tuple(r for _, p, _ in parsed for r in p.rules),
        limits=tuple(limit for _, p, _ in parsed for limit in p.limits),
        files=tuple(str(path) for path, _, _ in parsed),
        present=True,
    )
