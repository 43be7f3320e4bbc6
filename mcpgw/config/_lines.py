"""Map TOML key paths to the line that defines them, so config errors can name a line.

`tomllib` parses to plain dicts and forgets positions. Rather than depend on a second parser,
this scans the text once for table headers and `key =` lines. It understands what a
hand-written config file contains (tables, arrays of tables, dotted and quoted keys, inline
tables, multi-line strings and arrays); for anything it cannot place, callers fall back to
the nearest enclosing key that it did place.
"""

from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_TABLE = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")
_ARRAY_TABLE = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_INLINE_KEY = re.compile(rf"(?:^|[{{,])\s*({_DOTTED})\s*=")


def _split_dotted(text: str) -> tuple[str, ...]:
    parts = re.findall(_KEY, text)
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in parts)


def locate_keys(text: str) -> dict[KeyPath, int]:
    """Return `{key path: 1-based line}` for every table and key the scanner recognises."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    array_counts: dict[tuple[str, ...], int] = {}
    in_multiline: str | None = None
    bracket_depth = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw
        if in_multiline is not None:
            if in_multiline in line:
                in_multiline = None
            continue
        if bracket_depth > 0:
            bracket_depth += line.count("[") - line.count("]")
            continue
        if match := _ARRAY_TABLE.match(line):
            path = _split_dotted(match.group(1))
            index = array_counts.get(path, -1) + 1
            array_counts[path] = index
            table = (*path, index)
            lines.setdefault(path, number)
            lines.setdefault(table, number)
            continue
        if match := _TABLE.match(line):
            table = _split_dotted(match.group(1))
            for depth in range(1, len(table) + 1):
                lines.setdefault(table[:depth], number)
            continue
        if match := _ASSIGN.match(line):
            key = (*table, *_split_dotted(match.group(1)))
            for depth in range(len(table) + 1, len(key) + 1):
                lines.setdefault(key[:depth], number)
            value = match.group(2)
            if value.lstrip().startswith("{"):
                for inner in _INLINE_KEY.finditer(value):
                    lines.setdefault((*key, *_split_dotted(inner.group(1))), number)
            for quote in ('"""', "'''"):
                if value.count(quote) % 2 == 1:
                    in_multiline = quote
            stripped = re.sub(_QUOTED, "", value.split("#", 1)[0])
            bracket_depth = max(stripped.count("[") - stripped.count("]"), 0)
    return lines


def line_of(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, or of its nearest ancestor the scanner placed."""
    for depth in range(len(path), 0, -1):
        if (found := lines.get(path[:depth])) is not None:
            return found
    return None
