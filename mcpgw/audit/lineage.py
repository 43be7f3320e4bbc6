"""Lineage: the tree of steps that caused one another, from a step id or a trace id.

From a step id: up its `parent_id` links to the root, then every descendant of that root. From
a trace id: every record of the trace and their descendants (a record whose parent is not in
the set is a root of its own). Reads a bounded number of levels, so a damaged store with a
parent cycle cannot loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, select

from mcpgw.audit.models import STEPS

MAX_DEPTH = 64


def _rows(conn: Any, where: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(STEPS).where(where).order_by(STEPS.c.seq)).mappings()]


def lineage(engine: Engine, ident: str) -> list[dict[str, Any]]:
    """The roots of the tree (each with `children`, recursively); empty if `ident` is unknown."""
    c = STEPS.c
    with engine.connect() as conn:
        found = _rows(conn, c.step_id == ident)
        if found:
            root = found[0]
            for _ in range(MAX_DEPTH):
                if not root["parent_id"]:
                    break
                parents = _rows(conn, c.step_id == root["parent_id"])
                if not parents:
                    break
                root = parents[0]
            nodes = [root]
        else:
            nodes = _rows(conn, c.trace_id == ident)
        frontier = [n["step_id"] for n in nodes]
        seen = set(frontier)
        for _ in range(MAX_DEPTH):
            if not frontier:
                break
            children = [r for r in _rows(conn, c.parent_id.in_(frontier)) if r["step_id"] not in seen]
            seen.update(r["step_id"] for r in children)
            nodes += children
            frontier = [r["step_id"] for r in children]
    return build_tree(nodes)


def build_tree(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {n["step_id"]: {**n, "children": []} for n in nodes}
    roots: list[dict[str, Any]] = []
    for node in sorted(by_id.values(), key=lambda n: n["seq"]):
        parent = by_id.get(node["parent_id"]) if node["parent_id"] else None
        (parent["children"] if parent is not None else roots).append(node)
    return roots


def _label(node: Mapping[str, Any]) -> str:
    latency = f" {node['latency_us'] / 1000:.1f}ms" if node["latency_us"] is not None else ""
    where = f" via {node['upstream']}" if node["upstream"] and node["upstream"] != node["target"] else ""
    who = f" by {node['subject']}" if node["subject"] else ""
    error = f" ({node['error']})" if node["error"] else ""
    return (f"{node['kind']} {node['target'] or '-'}{where} → {node['outcome']}{latency}{who}  "
            f"[{node['step_id']}]{error}")


def render(roots: list[dict[str, Any]]) -> str:
    lines: list[str] = []

    def walk(node: Mapping[str, Any], prefix: str, last: bool, top: bool) -> None:
        lines.append(_label(node) if top else f"{prefix}{'└─ ' if last else '├─ '}{_label(node)}")
        below = prefix if top else prefix + ("   " if last else "│  ")
        kids = node["children"]
        for i, child in enumerate(kids):
            walk(child, below, i == len(kids) - 1, False)

    for root in roots:
        if root.get("trace_id"):
            lines.append(f"trace {root['trace_id']}")
        walk(root, "", True, True)
    return "\n".join(lines)
