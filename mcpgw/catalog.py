"""The merged, namespaced index of everything the upstreams offer.

Each upstream's own tool names are filtered (`tools.include` / `tools.exclude`), prefixed
(`<prefix><separator><name>`), made valid MCP tool names, and merged. Routing is by exact
lookup of the exported name, never by splitting it, so a separator inside an upstream's own
names cannot misroute a call. Collisions are resolved by config order (the earlier server keeps
the name) and reported, never silently merged.

The catalog is rebuilt for one upstream at a time and keeps a ready-to-serve, sorted tuple, so
`tools/list` costs a slice, not a rebuild.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import mcp.types as t

from mcpgw.config.models import Config

TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME = 128


@dataclass(frozen=True, slots=True)
class Entry:
    exported: str
    upstream: str
    name: str
    tool: t.Tool


class InvalidCursor(ValueError):
    pass


def export_name(prefix: str, separator: str, name: str) -> str:
    """The gateway-side name: prefixed, restricted to the MCP tool-name alphabet, at most 128 chars.

    Illegal characters become `_`; an over-long name is cut and suffixed with a short hash of the
    original, so the mapping stays deterministic and distinct names stay distinct.
    """
    full = f"{prefix}{separator}{name}" if prefix else name
    if TOOL_NAME_RE.match(full):
        return full
    cleaned = _INVALID_CHARS.sub("_", full) or "_"
    if cleaned != full or len(cleaned) > MAX_NAME:
        digest = hashlib.sha256(full.encode()).hexdigest()[:8]
        if len(cleaned) > MAX_NAME:
            cleaned = f"{cleaned[: MAX_NAME - 9]}_{digest}"
    return cleaned


def _selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return any(fnmatchcase(name, p) for p in include) and not any(fnmatchcase(name, p) for p in exclude)


class Catalog:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._order = {name: i for i, name in enumerate(config.servers)}
        self._per_upstream: dict[str, dict[str, Entry]] = {}
        self._index: dict[str, Entry] = {}
        self._sorted: tuple[t.Tool, ...] = ()
        self._names: tuple[str, ...] = ()
        self._own_problems: dict[str, list[str]] = {}
        self._remembered: dict[str, str] = {}
        self.problems: dict[str, list[str]] = {}
        """Per upstream: names that were renamed or withheld, and why."""
        self.version = 0

    # -- building ----------------------------------------------------------------------------

    def update(self, upstream: str, tools: Sequence[t.Tool], *, online: bool = True) -> bool:
        """Replace one upstream's tools. Returns whether the exported catalog changed.

        `online=False` means the upstream went away: its tools leave the catalog, but their
        names are remembered so a call to one can say which upstream is down rather than
        claim the tool does not exist.
        """
        if not online:
            for exported in self._per_upstream.get(upstream, {}):
                self._remembered[exported] = upstream
        else:
            self._remembered = {k: v for k, v in self._remembered.items() if v != upstream}
        server = self._config.servers[upstream]
        prefix = self._config.prefix_of(upstream)
        sep = self._config.gateway.separator
        problems: list[str] = []
        entries: dict[str, Entry] = {}
        for tool in tools:
            if not _selected(tool.name, server.tools.include, server.tools.exclude):
                continue
            exported = export_name(prefix, sep, tool.name)
            if exported != (f"{prefix}{sep}{tool.name}" if prefix else tool.name):
                problems.append(f"tool {tool.name!r} exported as {exported!r} (not a valid MCP tool name as is)")
            if exported in entries:
                problems.append(f"tool {tool.name!r} withheld: its exported name {exported!r} is already "
                                f"used by this server's tool {entries[exported].name!r}")
                continue
            entries[exported] = Entry(exported, upstream, tool.name, tool.model_copy(update={"name": exported}))
        previous = self._per_upstream.get(upstream, {})
        self._per_upstream[upstream] = entries
        self._own_problems[upstream] = problems
        changed = previous.keys() != entries.keys() or any(previous[k].tool != e.tool for k, e in entries.items())
        if changed:
            self._merge()
        return changed

    def _merge(self) -> None:
        index: dict[str, Entry] = {}
        problems = {name: list(found) for name, found in self._own_problems.items()}
        for upstream in sorted(self._per_upstream, key=lambda n: self._order.get(n, len(self._order))):
            for exported, entry in self._per_upstream[upstream].items():
                if (holder := index.get(exported)) is not None:
                    problems.setdefault(upstream, []).append(
                        f"tool {entry.name!r} withheld: exported name {exported!r} collides with server "
                        f"{holder.upstream!r}'s tool {holder.name!r} (servers listed earlier in the config win; "
                        "set a distinct prefix)"
                    )
                    continue
                index[exported] = entry
        self._index = index
        names = sorted(index)
        self._names = tuple(names)
        self._sorted = tuple(index[n].tool for n in names)
        self.problems = {k: v for k, v in problems.items() if v}
        self.version += 1

    # -- reading -----------------------------------------------------------------------------

    def lookup(self, exported: str) -> Entry | None:
        return self._index.get(exported)

    def owner_while_offline(self, exported: str) -> str | None:
        """The upstream that served `exported` before it went down, if any."""
        return self._remembered.get(exported)

    def input_schema(self, exported: str) -> dict[str, object] | None:
        entry = self._index.get(exported)
        return entry.tool.input_schema if entry else None

    @property
    def tools(self) -> tuple[t.Tool, ...]:
        return self._sorted

    def tools_of(self, upstream: str) -> list[Entry]:
        return [e for e in self._index.values() if e.upstream == upstream]

    def __len__(self) -> int:
        return len(self._index)


def encode_cursor(last_name: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_name}".encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}") from None
    if not raw.startswith("v1:"):
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}")
    return raw[3:]


def paginate(tools: Sequence[t.Tool], cursor: str | None, size: int) -> tuple[list[t.Tool], str | None]:
    """A page of a name-sorted tool list. The cursor is the last name served, so a catalog that
    changes between pages neither repeats nor skips the tools that did not change."""
    start = 0
    if cursor:
        after = decode_cursor(cursor)
        lo, hi = 0, len(tools)
        while lo < hi:  # first index whose name sorts after the cursor
            mid = (lo + hi) // 2
            if tools[mid].name <= after:
                lo = mid + 1
            else:
                hi = mid
        start = lo
    page = list(tools[start : start + size])
    more = start + size < len(tools)
    return page, encode_cursor(page[-1].name) if more and page else None
