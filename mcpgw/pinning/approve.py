"""`mcpgw lock`: turn what the upstreams serve now into a new lock, and say what that approves.

An upstream that could not be listed keeps its previous entries (and the command fails): a
lock must never silently stop pinning a server because it happened to be down. A server that
is disabled keeps its entries too; one removed from the configuration loses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mcpgw.catalog import Listing
from mcpgw.config.models import Config
from mcpgw.pinning.lockfile import LockFile, Pinned, PinnedServer, pin


@dataclass
class Relock:
    lock: LockFile
    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(line.lstrip().startswith(("+", "~", "-")) or "removed from the configuration" in line
                   for line in self.lines)


def _pins(listing: Listing) -> PinnedServer:
    return PinnedServer(tools={tool.name: pin(tool) for tool in listing.tools},
                        prompts={prompt.name: pin(prompt) for prompt in listing.prompts})


def _compare(kind: str, old: Mapping[str, Pinned], new: Mapping[str, Pinned]) -> tuple[list[str], int]:
    both = sorted(new.keys() & old.keys())
    lines = [f"    + {kind} {name}" for name in sorted(new.keys() - old.keys())]
    lines += [f"    ~ {kind} {name}" for name in both if new[name].sha256 != old[name].sha256]
    lines += [f"    - {kind} {name}" for name in sorted(old.keys() - new.keys())]
    return lines, sum(1 for name in both if new[name].sha256 == old[name].sha256)


def relock(old: LockFile | None, config: Config, listings: Mapping[str, Listing | None],
           errors: Mapping[str, str]) -> Relock:
    """The new lock for `config`. `listings[name]` is None for an upstream that is not up."""
    previous = old.servers if old is not None else {}
    servers: dict[str, PinnedServer] = {}
    result = Relock(LockFile())
    for name, server in config.servers.items():
        before = previous.get(name)
        kept = f"its {len(before.tools)} tool(s) and {len(before.prompts)} prompt(s) in the lock are kept" \
            if before is not None else "it has no entries in the lock"
        if not server.enabled:
            if before is not None:
                servers[name] = before
            result.lines.append(f"  {name}: disabled (enabled = false): {kept}")
            continue
        listing = listings.get(name)
        if listing is None:
            if before is not None:
                servers[name] = before
            result.failed.append(name)
            result.lines.append(f"  {name}: FAILED ({errors.get(name) or 'not up'}): {kept}")
            continue
        now = _pins(listing)
        servers[name] = now
        tools, same_tools = _compare("tool", before.tools if before else {}, now.tools)
        prompts, same_prompts = _compare("prompt", before.prompts if before else {}, now.prompts)
        counts = {"added": sum(x.lstrip().startswith("+") for x in tools + prompts),
                  "changed": sum(x.lstrip().startswith("~") for x in tools + prompts),
                  "removed": sum(x.lstrip().startswith("-") for x in tools + prompts)}
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        result.lines.append(f"  {name}: {summary + ', ' if summary else ''}{same_tools + same_prompts} unchanged")
        result.lines += tools + prompts
    for name in sorted(previous.keys() - config.servers.keys()):
        result.lines.append(f"  {name}: removed from the configuration: its entries are dropped")
    result.lock = LockFile(servers=servers)
    return result
