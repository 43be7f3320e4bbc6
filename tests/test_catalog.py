"""The merged catalog: namespacing, filters, name rules, collisions, pagination."""

from __future__ import annotations

import re
from pathlib import Path

import mcp.types as t
import pytest

from mcpgw.catalog import Catalog, InvalidCursor, export_name, paginate
from mcpgw.config import parse_config


def tools(*names: str) -> list[t.Tool]:
    return [t.Tool(name=n, input_schema={"type": "object"}) for n in names]


def catalog(text: str) -> Catalog:
    return Catalog(parse_config(text, Path("servers.toml"), {}))


SERVERS = """
[servers.a]
kind = "stdio"
command = "x"
tools = { include = ["get_*", "list"], exclude = ["get_secret"] }

[servers.b]
kind = "stdio"
command = "x"
prefix = ""

[servers.c]
kind = "stdio"
command = "x"
"""


def test_prefix_filters_and_unprefixed() -> None:
    cat = catalog(SERVERS)
    assert cat.update("a", tools("get_user", "get_secret", "list", "delete"))
    assert cat.update("b", tools("search"))
    assert [x.name for x in cat.tools] == ["a__get_user", "a__list", "search"]
    entry = cat.lookup("a__get_user")
    assert entry is not None and (entry.upstream, entry.name) == ("a", "get_user")
    assert cat.lookup("a__get_secret") is None
    assert not cat.update("b", tools("search")), "an identical listing is not a change"


def test_collision_with_unprefixed_server_is_reported_and_config_order_wins() -> None:
    cat = catalog(SERVERS)
    cat.update("c", tools("x"))
    cat.update("b", tools("c__x", "other"))
    entry = cat.lookup("c__x")
    assert entry is not None and entry.upstream == "b", "b is listed before c in the config"
    assert len(cat.problems["c"]) == 1
    assert "collides with server 'b'" in cat.problems["c"][0]
    assert sorted(x.name for x in cat.tools) == ["c__x", "other"]
    cat.update("b", tools("other"))  # the collision goes away: c's tool comes back
    entry = cat.lookup("c__x")
    assert entry is not None and entry.upstream == "c"
    assert "c" not in cat.problems


def test_upstream_going_down_removes_its_tools() -> None:
    cat = catalog(SERVERS)
    cat.update("c", tools("x", "y"))
    assert len(cat) == 2
    assert cat.update("c", [])
    assert len(cat) == 0 and cat.lookup("c__x") is None


@pytest.mark.parametrize(
    ("prefix", "name", "expected"),
    [
        ("gh", "create_issue", "gh__create_issue"),
        ("gh", "create issue/now", "gh__create_issue_now"),
        ("", "ünïcode", "_n_code"),
        ("gh", "x" * 200, None),
    ],
)
def test_export_name_is_always_a_valid_mcp_tool_name(prefix: str, name: str, expected: str | None) -> None:
    out = export_name(prefix, "__", name)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,128}", out)
    if expected is not None:
        assert out == expected
    else:
        assert len(out) == 128 and out != export_name(prefix, "__", "x" * 199), "long names stay distinct"


def test_names_that_map_to_the_same_export_are_not_merged() -> None:
    cat = catalog(SERVERS)
    cat.update("c", tools("a b", "a_b"))
    assert [x.name for x in cat.tools] == ["c__a_b"]
    assert any("withheld" in p for p in cat.problems["c"])


def test_pagination_walks_every_tool_once_even_if_the_catalog_changes() -> None:
    listing = tools(*(f"t{i:04d}" for i in range(2500)))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = paginate(listing, cursor, 1000)
        seen += [x.name for x in page]
        pages += 1
        if cursor is None:
            break
        if pages == 1:  # a tool before the cursor disappears between pages: nothing after it is skipped
            listing = [x for x in listing if x.name != "t0005"]
    assert pages == 3
    assert len(seen) == 2500 and len(set(seen)) == 2500


def test_bad_cursor() -> None:
    with pytest.raises(InvalidCursor):
        paginate(tools("a"), "not-a-cursor!!", 10)
