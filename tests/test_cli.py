"""The CLI on good and partly failing configs: what it prints and how it exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import KIT, ROOT, stdio_server_toml, write_config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcpgw", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_check_and_tools_on_the_bundled_default_config() -> None:
    checked = run("check", "--config", str(ROOT / "servers.toml"))
    assert checked.returncode == 0, checked.stderr
    assert "ok   clock" in checked.stdout and "ok   notes" in checked.stdout
    assert "tool     clock__now" in checked.stdout
    assert "catalog: 7 tool(s)" in checked.stdout
    listed = run("tools", "--config", str(ROOT / "servers.toml"), "--json")
    assert listed.returncode == 0, listed.stderr
    tools = {tool["name"]: tool for tool in json.loads(listed.stdout)}
    assert set(tools) == {"clock__now", "clock__convert", "clock__add_days", "notes__add_note", "notes__list_notes",
                          "notes__read_note", "notes__search_notes"}
    assert tools["clock__convert"]["inputSchema"]["required"] == ["time", "from_timezone", "to_timezone"]


def test_check_exits_1_naming_the_failed_upstream(tmp_path: Path) -> None:
    body = stdio_server_toml("kit", KIT) + '\n[servers.broken]\nkind = "stdio"\ncommand = "/nonexistent/server"\n'
    config = write_config(tmp_path, body, gateway="connect_timeout = 20\nrestart_backoff = 30")
    checked = run("check", "--config", str(config))
    assert checked.returncode == 1
    assert "FAIL broken" in checked.stdout and "command not found: '/nonexistent/server'" in checked.stdout
    assert "ok   kit" in checked.stdout
    tools = run("tools", "--config", str(config))
    assert tools.returncode == 1
    assert "kit__echo" in tools.stdout
    assert "upstream 'broken' is not up: command not found" in tools.stderr
