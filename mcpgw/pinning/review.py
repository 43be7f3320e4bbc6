"""Decide, per tool and prompt of one upstream's listing, whether it may enter the catalog.

Compiled once per config snapshot (the lock file is read with the config, so a reload — SIGHUP,
an edit of servers.toml, or `mcpgw lock` rewriting servers.lock — brings a new one). A held
definition is a `Quarantine`: it is kept out of every listing, calls to it are refused with a
message that says why, and `mcpgw check` prints it with the change that caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import mcp.types as t

from mcpgw.config.models import Config
from mcpgw.pinning.lockfile import PinKind, definition, diff, digest
from mcpgw.pinning.scan import Finding, Scanner

Reason = Literal["changed", "new", "scan"]


@dataclass(frozen=True, slots=True)
class Quarantine:
    upstream: str
    kind: PinKind
    name: str
    """The upstream's own name."""
    exported: str
    reason: Reason
    lock_name: str
    diff: str = ""
    """For `changed`: a unified diff from the approved definition to the one served now."""
    rules: tuple[str, ...] = ()
    """For `scan`: the ids of the rules it tripped."""

    def message(self) -> str:
        what = f"{self.kind} {self.exported!r} is quarantined"
        if self.reason == "changed":
            return (f"{what}: its definition changed since it was approved in {self.lock_name} (run `mcpgw check` "
                    "to see the change, `mcpgw lock` to approve it)")
        if self.reason == "new":
            return (f"{what}: it is not in {self.lock_name} and [gateway] pin = \"strict\" admits only approved "
                    f"{self.kind}s (run `mcpgw check` to see it, `mcpgw lock` to approve it)")
        return (f"{what}: its definition matches tool-poisoning patterns ({', '.join(self.rules)}) and [gateway] "
                "scan = \"block\" (run `mcpgw check` to see the findings)")

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "exported": self.exported, "reason": self.reason,
                "message": self.message(), "diff": self.diff, "rules": list(self.rules)}


@dataclass(slots=True)
class Review:
    admitted: list[Any] = field(default_factory=list)
    held: list[Quarantine] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


class Pins:
    """The pinning and scanning rules of one config snapshot."""

    def __init__(self, config: Config) -> None:
        gateway = config.gateway
        self.lock = config.lock
        self.mode = gateway.pin if config.lock is not None else "off"
        self.scan_mode = gateway.scan
        path = config.lock_path
        self.lock_name = path.name if path is not None else "servers.lock"
        prefixes = {name: config.prefix_of(name) for name, server in config.servers.items() if server.enabled}
        self._scanner = Scanner(prefixes, gateway.separator) if gateway.scan != "off" else None

    @property
    def active(self) -> bool:
        return self.mode != "off" or self._scanner is not None

    def review(self, upstream: str, kind: PinKind, items: Sequence[t.Tool] | Sequence[t.Prompt],
               exported_of: Callable[[str], str]) -> Review:
        review = Review()
        if not self.active:
            review.admitted = list(items)
            return review
        pinned = self.lock.servers.get(upstream) if self.lock is not None and self.mode != "off" else None
        table = pinned.table(kind) if pinned is not None else {}
        for item in items:
            found = self._scanner.scan(upstream, kind, item) if self._scanner is not None else []
            review.findings += found
            held: Quarantine | None = None
            if self.mode != "off":
                defn = definition(item)
                approved = table.get(item.name)
                if approved is None:
                    if self.mode == "strict":
                        held = Quarantine(upstream, kind, item.name, exported_of(item.name), "new", self.lock_name)
                elif approved.sha256 != digest(defn):
                    held = Quarantine(upstream, kind, item.name, exported_of(item.name), "changed", self.lock_name,
                                      diff=diff(approved.definition, defn, f"{upstream}/{item.name}"))
            if held is None and found and self.scan_mode == "block":
                rules = tuple(dict.fromkeys(f.rule for f in found))
                held = Quarantine(upstream, kind, item.name, exported_of(item.name), "scan", self.lock_name,
                                  rules=rules)
            if held is None:
                review.admitted.append(item)
            else:
                review.held.append(held)
        return review
