"""The merged, namespaced index of everything the upstreams offer: tools, prompts, resources.

Each upstream's own names are filtered (`tools.include` / `tools.exclude` for tools), prefixed,
made valid, and merged:
- tools and prompts become `<prefix><separator><name>`, restricted to the MCP tool-name alphabet;
- resource URIs and URI templates become `mcpgw://<prefix>/<original URI>`, which any client can
  read back through the gateway (the prefix says which upstream, the rest is the upstream's own
  URI, untouched).
An upstream with `prefix = ""` keeps its own names and URIs.

Routing is by exact lookup of the exported name (or by the URI's prefix), never by guessing, so a
separator inside an upstream's own names cannot misroute a call and a URI that belongs to no
configured upstream is refused. Collisions are resolved by config order (the earlier server keeps
the name) and reported, never silently merged.

Before an upstream's tools and prompts enter, `mcpgw.pinning` reviews them: a definition that
changed since it was approved in the lock file (or, under `pin = "strict"`, one that is not in
it), or one the description scanner flags under `scan = "block"`, is quarantined — kept out of
the catalog, and remembered so that a request for it is refused saying why.

The catalog is rebuilt for one upstream at a time and keeps ready-to-serve sorted tuples, so a
list request costs a slice, not a rebuild.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any, Generic, TypeVar

import mcp.types as t
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from mcpgw.config.models import Config
from mcpgw.pinning.review import Pins, Quarantine
from mcpgw.pinning.scan import Finding

log = logging.getLogger("mcpgw")

TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_NAME = 128
URI_SCHEME = "mcpgw"
_URI_PREFIX = f"{URI_SCHEME}://"


class Kind(StrEnum):
    TOOL = "tool"
    PROMPT = "prompt"
    RESOURCE = "resource"
    TEMPLATE = "resource template"


@dataclass(frozen=True, slots=True)
class Listing:
    """What one upstream offers, in its own names."""

    tools: tuple[t.Tool, ...] = ()
    prompts: tuple[t.Prompt, ...] = ()
    resources: tuple[t.Resource, ...] = ()
    templates: tuple[t.ResourceTemplate, ...] = ()


Item = TypeVar("Item", t.Tool, t.Prompt, t.Resource, t.ResourceTemplate)


@dataclass(frozen=True, slots=True)
class Entry(Generic[Item]):
    exported: str
    upstream: str
    name: str
    """The upstream's own name (tools, prompts) or URI / URI template (resources, templates)."""
    item: Item
    """The definition as the agent sees it (exported name or URI)."""


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
    if len(cleaned) > MAX_NAME:
        digest = hashlib.sha256(full.encode()).hexdigest()[:8]
        cleaned = f"{cleaned[: MAX_NAME - 9]}_{digest}"
    return cleaned


def export_uri(prefix: str, uri: str) -> str:
    """`mcpgw://<prefix>/<uri>`; an unprefixed upstream's URIs are left as they are."""
    return f"{_URI_PREFIX}{prefix}/{uri}" if prefix else uri


def split_uri(uri: str) -> tuple[str, str] | None:
    """`mcpgw://<prefix>/<rest>` -> (prefix, rest); None for any other URI."""
    if not uri.startswith(_URI_PREFIX):
        return None
    prefix, sep, rest = uri[len(_URI_PREFIX) :].partition("/")
    return (prefix, rest) if sep and prefix and rest else None


def _selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return any(fnmatchcase(name, p) for p in include) and not any(fnmatchcase(name, p) for p in exclude)


@dataclass
class _Index(Generic[Item]):
    """One kind's merged index."""

    kind: Kind
    per_upstream: dict[str, dict[str, Entry[Item]]] = field(default_factory=dict)
    merged: dict[str, Entry[Item]] = field(default_factory=dict)
    items: tuple[Item, ...] = ()
    remembered: dict[str, str] = field(default_factory=dict)

    def replace(self, upstream: str, entries: dict[str, Entry[Item]], online: bool) -> bool:
        previous = self.per_upstream.get(upstream, {})
        if not online:
            for exported in previous:
                self.remembered[exported] = upstream
        else:
            self.remembered = {k: v for k, v in self.remembered.items() if v != upstream}
        self.per_upstream[upstream] = entries
        return previous.keys() != entries.keys() or any(previous[k].item != e.item for k, e in entries.items())

    def merge(self, order: dict[str, int], problems: dict[str, list[str]]) -> None:
        merged: dict[str, Entry[Item]] = {}
        for upstream in sorted(self.per_upstream, key=lambda n: order.get(n, len(order))):
            for exported, entry in self.per_upstream[upstream].items():
                if (holder := merged.get(exported)) is not None:
                    problems.setdefault(upstream, []).append(
                        f"{self.kind.value} {entry.name!r} withheld: exported as {exported!r}, which collides with "
                        f"server {holder.upstream!r}'s {self.kind.value} {holder.name!r} (servers listed earlier in "
                        "the config win; set a distinct prefix)"
                    )
                    continue
                merged[exported] = entry
        self.merged = merged
        self.items = tuple(merged[k].item for k in sorted(merged))


class Catalog:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._order = {name: i for i, name in enumerate(config.servers)}
        enabled = [n for n, s in config.servers.items() if s.enabled]
        self._by_prefix = {config.prefix_of(n): n for n in enabled if config.prefix_of(n)}
        self._unprefixed = [n for n in enabled if not config.prefix_of(n)]
        self.tools_index: _Index[t.Tool] = _Index(Kind.TOOL)
        self.prompts_index: _Index[t.Prompt] = _Index(Kind.PROMPT)
        self.resources_index: _Index[t.Resource] = _Index(Kind.RESOURCE)
        self.templates_index: _Index[t.ResourceTemplate] = _Index(Kind.TEMPLATE)
        self._templates: dict[str, list[tuple[UriTemplate, Entry[t.ResourceTemplate]]]] = {}
        self._own_problems: dict[str, list[str]] = {}
        self.problems: dict[str, list[str]] = {}
        """Per upstream: names that were renamed or withheld, and why."""
        self.pins = Pins(config)
        self.quarantine: dict[str, list[Quarantine]] = {}
        """Per upstream: tools and prompts held out of the catalog by pinning or scanning."""
        self.findings: dict[str, list[Finding]] = {}
        """Per upstream: what the description scanner found (whether or not it blocked)."""
        self._held: dict[tuple[str, str], Quarantine] = {}
        self.version = 0

    # -- building ----------------------------------------------------------------------------

    def update(self, upstream: str, listing: Listing | Sequence[t.Tool], *, online: bool = True) -> set[Kind]:
        """Replace one upstream's offer. Returns the kinds whose exported lists changed.

        `online=False` means the upstream went away: its entries leave the catalog, but their
        names are remembered so a request for one can say which upstream is down rather than
        claim it does not exist.
        """
        if not isinstance(listing, Listing):
            listing = Listing(tools=tuple(listing))
        server = self._config.servers[upstream]
        prefix = self._config.prefix_of(upstream)
        sep = self._config.gateway.separator
        problems: list[str] = []

        held: list[Quarantine] = []
        findings: list[Finding] = []

        def named(kind: Kind, items: Iterable[Any]) -> dict[str, Entry[Any]]:
            if kind is Kind.TOOL:
                items = [i for i in items if _selected(i.name, server.tools.include, server.tools.exclude)]
            review = self.pins.review(upstream, "tool" if kind is Kind.TOOL else "prompt", list(items),
                                      lambda name: export_name(prefix, sep, name))
            held.extend(review.held)
            findings.extend(review.findings)
            entries: dict[str, Entry[Any]] = {}
            for item in review.admitted:
                exported = export_name(prefix, sep, item.name)
                if exported != (f"{prefix}{sep}{item.name}" if prefix else item.name):
                    problems.append(f"{kind.value} {item.name!r} exported as {exported!r} (not a valid name as is)")
                if exported in entries:
                    problems.append(f"{kind.value} {item.name!r} withheld: its exported name {exported!r} is "
                                    f"already used by this server's {kind.value} {entries[exported].name!r}")
                    continue
                entries[exported] = Entry(exported, upstream, item.name, item.model_copy(update={"name": exported}))
            return entries

        def located(items: Iterable[Any], attr: str) -> dict[str, Entry[Any]]:
            entries: dict[str, Entry[Any]] = {}
            for item in items:
                original = str(getattr(item, attr))
                exported = export_uri(prefix, original)
                entries[exported] = Entry(exported, upstream, original, item.model_copy(update={attr: exported}))
            return entries

        changed: set[Kind] = set()
        if self.tools_index.replace(upstream, named(Kind.TOOL, listing.tools), online):
            changed.add(Kind.TOOL)
        if self.prompts_index.replace(upstream, named(Kind.PROMPT, listing.prompts), online):
            changed.add(Kind.PROMPT)
        if self.resources_index.replace(upstream, located(listing.resources, "uri"), online):
            changed.add(Kind.RESOURCE)
        templates = located(listing.templates, "uri_template")
        if self.templates_index.replace(upstream, templates, online):
            changed.add(Kind.TEMPLATE)
        compiled = []
        for entry in templates.values():
            try:
                compiled.append((UriTemplate.parse(entry.name), entry))
            except InvalidUriTemplate:
                problems.append(f"resource template {entry.name!r} is not a valid URI template; reads through it "
                                "are only possible with its mcpgw:// form")
        self._templates[upstream] = compiled
        self._hold(upstream, held, findings)
        if changed or problems != self._own_problems.get(upstream, []):
            self._own_problems[upstream] = problems
            self._merge()
        return changed

    def _hold(self, upstream: str, held: list[Quarantine], findings: list[Finding]) -> None:
        before = self.quarantine.get(upstream, [])
        fresh = [q for q in held if q not in before]
        for reason in ("changed", "new", "scan"):
            names = [q.exported for q in fresh if q.reason == reason]
            if names:
                shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
                why = {"changed": f"changed since approved in {self.pins.lock_name}",
                       "new": f"not in {self.pins.lock_name} (pin = \"strict\")",
                       "scan": "flagged by the description scanner (scan = \"block\")"}[reason]
                log.warning("upstream %s: quarantined %d definition(s) %s: %s; run `mcpgw check` to see why, "
                            "`mcpgw lock` to approve", upstream, len(names), why, shown)
        if findings and findings != self.findings.get(upstream, []) and self.pins.scan_mode == "warn":
            rules = ", ".join(sorted({f.rule for f in findings}))
            log.warning("upstream %s: %d finding(s) of the tool-description scanner (%s); run `mcpgw check` to "
                        "see them", upstream, len(findings), rules)
        self.quarantine[upstream] = held
        self.findings[upstream] = findings
        self._held = {(q.kind, q.exported): q for qs in self.quarantine.values() for q in qs}

    def quarantined(self, kind: Kind, exported: str) -> Quarantine | None:
        """The quarantine holding the tool or prompt an agent named, if that is why it is not listed."""
        return self._held.get((kind.value, exported))

    def _merge(self) -> None:
        problems = {name: list(found) for name, found in self._own_problems.items()}
        for index in (self.tools_index, self.prompts_index, self.resources_index, self.templates_index):
            index.merge(self._order, problems)
        self.problems = {k: v for k, v in problems.items() if v}
        self.version += 1

    # -- reading -----------------------------------------------------------------------------

    def lookup(self, exported: str) -> Entry[t.Tool] | None:
        return self.tools_index.merged.get(exported)

    def lookup_prompt(self, exported: str) -> Entry[t.Prompt] | None:
        return self.prompts_index.merged.get(exported)

    def route_uri(self, uri: str) -> tuple[str, str] | None:
        """(upstream, upstream's own URI) for a URI an agent sent, or None if it belongs to no upstream.

        A listed resource routes exactly; `mcpgw://<prefix>/...` routes to the upstream with that
        prefix (template expansions, resource links); an unprefixed upstream's URI routes only if
        it is listed or matches one of that upstream's templates.
        """
        if (entry := self.resources_index.merged.get(uri)) is not None:
            return entry.upstream, entry.name
        if (split := split_uri(uri)) is not None:
            prefix, rest = split
            upstream = self._by_prefix.get(prefix)
            return (upstream, rest) if upstream is not None else None
        for upstream in self._unprefixed:
            for template, _entry in self._templates.get(upstream, []):
                if template.match(uri) is not None:
                    return upstream, uri
        return None

    def route_template(self, exported: str) -> tuple[str, str] | None:
        entry = self.templates_index.merged.get(exported)
        if entry is not None:
            return entry.upstream, entry.name
        return None

    def owner_while_offline(self, exported: str) -> str | None:
        """The upstream that served `exported` (a tool or prompt name) before it went down, if any."""
        return self.tools_index.remembered.get(exported) or self.prompts_index.remembered.get(exported)

    def input_schema(self, exported: str) -> dict[str, object] | None:
        entry = self.tools_index.merged.get(exported)
        return entry.item.input_schema if entry else None

    @property
    def tools(self) -> tuple[t.Tool, ...]:
        return self.tools_index.items

    @property
    def prompts(self) -> tuple[t.Prompt, ...]:
        return self.prompts_index.items

    @property
    def resources(self) -> tuple[t.Resource, ...]:
        return self.resources_index.items

    @property
    def templates(self) -> tuple[t.ResourceTemplate, ...]:
        return self.templates_index.items

    def counts_of(self, upstream: str) -> dict[str, int]:
        return {
            "tools": sum(e.upstream == upstream for e in self.tools_index.merged.values()),
            "prompts": sum(e.upstream == upstream for e in self.prompts_index.merged.values()),
            "resources": sum(e.upstream == upstream for e in self.resources_index.merged.values()),
            "resource_templates": sum(e.upstream == upstream for e in self.templates_index.merged.values()),
        }

    def __len__(self) -> int:
        return len(self.tools_index.merged)

    # -- outbound URI rewriting ---------------------------------------------------------------

    def exported_uri(self, upstream: str, uri: str) -> str:
        prefix = self._config.prefix_of(upstream)
        return export_uri(prefix, uri)


def encode_cursor(last_key: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_key}".encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}") from None
    if not raw.startswith("v1:"):
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}")
    return raw[3:]


def item_key(item: Any) -> str:
    """The exported identifier of a listed item: a tool's or prompt's name, a resource's URI."""
    if isinstance(item, t.Resource):
        return str(item.uri)
    if isinstance(item, t.ResourceTemplate):
        return item.uri_template
    return str(item.name)


def paginate(items: Sequence[Item], cursor: str | None, size: int) -> tuple[list[Item], str | None]:
    """A page of a key-sorted list. The cursor is the last key served, so a catalog that changes
    between pages neither repeats nor skips the entries that did not change."""
    start = 0
    if cursor:
        after = decode_cursor(cursor)
        lo, hi = 0, len(items)
        while lo < hi:  # first index whose key sorts after the cursor
            mid = (lo + hi) // 2
            if item_key(items[mid]) <= after:
                lo = mid + 1
            else:
                hi = mid
        start = lo
    page = list(items[start : start + size])
    more = start + size < len(items)
    return page, encode_cursor(item_key(page[-1])) if more and page else None
