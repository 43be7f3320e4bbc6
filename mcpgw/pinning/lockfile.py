"""`servers.lock`: the tool and prompt definitions an operator approved, per upstream.

A definition is pinned by the sha256 of its canonical JSON (sorted keys, no whitespace, UTF-8)
as the upstream sent it, under the upstream's own name: renaming a server's prefix or the
separator does not invalidate the lock, and neither do fields a model never reads (`_meta`,
`icons`). The definition itself is stored beside its hash so that a later change can be shown
as a diff rather than as two opaque hashes.

The file is JSON with sorted keys and one key per line, so a `git diff` of an approval reads as
what changed upstream. It is written atomically (a temporary file renamed over the old one): a
gateway watching it never reads half a file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcpgw.pinning.scan import is_tool, visible

if TYPE_CHECKING:  # the SDK costs ~0.5 s to import; `mcpgw audit` and config checks do not need it
    import mcp.types as t

LOCK_VERSION: Literal[1] = 1
# Model attribute -> wire name, for the fields a model reads. Anything else (`_meta`, `icons`,
# `execution`) may change freely without unpinning a tool.
_TOOL_FIELDS = {"name": "name", "title": "title", "description": "description", "input_schema": "inputSchema",
                "output_schema": "outputSchema", "annotations": "annotations"}
_PROMPT_FIELDS = {"name": "name", "title": "title", "description": "description", "arguments": "arguments"}
PinKind = Literal["tool", "prompt"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pinned(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    definition: dict[str, Any]


class PinnedServer(_Model):
    tools: dict[str, Pinned] = Field(default_factory=dict)
    prompts: dict[str, Pinned] = Field(default_factory=dict)

    def table(self, kind: PinKind) -> dict[str, Pinned]:
        return self.tools if kind == "tool" else self.prompts


class LockFile(_Model):
    version: Literal[1] = LOCK_VERSION
    servers: dict[str, PinnedServer] = Field(default_factory=dict)

    def count(self) -> int:
        return sum(len(s.tools) + len(s.prompts) for s in self.servers.values())


class LockError(Exception):
    """A lock file that cannot be used; `problems` are (key path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, m in problems))


def definition(item: t.Tool | t.Prompt) -> dict[str, Any]:
    """The model-visible part of a tool or prompt, as JSON data."""
    fields = _TOOL_FIELDS if is_tool(item) else _PROMPT_FIELDS
    return item.model_dump(mode="json", by_alias=True, exclude_none=True, include=set(fields))


def canonical(defn: Mapping[str, Any]) -> str:
    return json.dumps(defn, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(defn: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(defn).encode()).hexdigest()


def pin(item: t.Tool | t.Prompt) -> Pinned:
    defn = definition(item)
    return Pinned(sha256=digest(defn), definition=defn)


def parse_lock(text: str) -> LockFile:
    """Parse and verify a lock file: every stored hash must match its stored definition, so a
    hand edit that changes a definition without re-approving it is caught, not trusted."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LockError([("", f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                              "delete it and run `mcpgw lock` to write a new one")]) from None
    if isinstance(data, dict) and data.get("version") not in (None, LOCK_VERSION):
        raise LockError([("version", f"lock file version {data.get('version')!r} is not supported by this "
                                     f"mcpgw (it reads version {LOCK_VERSION})")])
    try:
        lock = LockFile.model_validate(data)
    except ValidationError as exc:
        raise LockError([(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]) from None
    problems = []
    for server, pinned in lock.servers.items():
        for kind in ("tools", "prompts"):
            for name, entry in getattr(pinned, kind).items():
                if digest(entry.definition) != entry.sha256:
                    problems.append((f"servers.{server}.{kind}.{name}", "sha256 does not match the stored "
                                     "definition (edited by hand?); run `mcpgw lock` to approve what the upstream "
                                     "serves now"))
    if problems:
        raise LockError(problems)
    return lock


def read_lock(path: Path) -> LockFile | None:
    """The lock at `path`, or None when there is none (pinning is then off)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LockError([("", f"cannot read: {exc}")]) from None
    return parse_lock(text)


def render_lock(lock: LockFile) -> str:
    return json.dumps(lock.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lock(path: Path, lock: LockFile) -> None:
    """Write atomically: a temporary file in the same directory, flushed, then renamed over."""
    text = render_lock(lock)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def readable(defn: Mapping[str, Any]) -> list[str]:
    """A definition as lines a person can diff: text fields line by line, schemas as indented JSON,
    invisible characters spelled out (a change that hides in them must show in the diff)."""
    lines: list[str] = []
    first = [k for k in ("name", "title", "description") if k in defn]
    for key in [*first, *sorted(k for k in defn if k not in first)]:
        value = defn[key]
        if isinstance(value, str):
            parts = visible(value, keep_newlines=True).splitlines() or [""]
            lines.append(f"{key}: {parts[0]}")
            lines.extend(f"  {part}" for part in parts[1:])
        else:
            rendered = visible(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False),
                               keep_newlines=True).splitlines()
            lines.append(f"{key}: {rendered[0]}")
            lines.extend(f"  {line}" for line in rendered[1:])
    return lines


def diff(approved: Mapping[str, Any], now: Mapping[str, Any], label: str) -> str:
    """A unified diff from the approved definition to the one the upstream serves now."""
    return "\n".join(difflib.unified_diff(readable(approved), readable(now), f"{label} (approved)",
                                          f"{label} (served now)", lineterm=""))
