"""servers.toml: every bad config gives a precise error naming file, key and line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mcpgw.config import ConfigError, StdioServer, load_config, parse_config

from .conftest import ROOT


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), Path("/etc/mcpgw/servers.toml"), env or {})
    return info.value.render().splitlines()


def test_valid_config_with_defaults_and_interpolation(tmp_path: Path) -> None:
    path = tmp_path / "servers.toml"
    path.write_text(textwrap.dedent("""
        [servers.time]
        kind = "stdio"
        command = "${MCPGW_PYTHON}"
        args = ["-m", "x", "price: $$5"]
        env = { TOKEN = "${MY_TOKEN}" }
        cwd = "sub"

        [servers.crm]
        kind = "http"
        url = "https://crm.example.com/mcp"
        headers = { Authorization = "Bearer ${MY_TOKEN}" }
        prefix = ""
        timeout = 5
        tools = { include = ["get_*"], exclude = ["get_secret"] }
        """))
    config = load_config(path, env={"MY_TOKEN": "t0k"})
    time = config.servers["time"]
    assert isinstance(time, StdioServer)
    assert time.command == sys.executable
    assert time.args == ("-m", "x", "price: $5")
    assert time.env == {"TOKEN": "t0k"}
    assert time.cwd == tmp_path / "sub"
    assert config.gateway.separator == "__"
    assert config.prefix_of("time") == "time"
    assert config.prefix_of("crm") == ""
    assert config.timeout_of("crm") == 5
    assert config.timeout_of("time") == config.gateway.call_timeout
    assert config.servers["crm"].headers == {"Authorization": "Bearer t0k"}


def test_bad_toml_names_the_line() -> None:
    out = problems("""
        [gateway]
        name = "x"
        separator =
        """)
    assert len(out) == 1
    assert out[0].startswith("/etc/mcpgw/servers.toml:4: invalid TOML")


def test_unknown_kind() -> None:
    out = problems("""
        [servers.web]
        kind = "websocket"
        url = "http://x"
        """)
    assert out == ["/etc/mcpgw/servers.toml:3: servers.web.kind: unknown kind 'websocket'; expected one of stdio, "
                   "http, sse"]


def test_missing_kind_and_missing_command() -> None:
    out = problems("""
        [servers.a]
        command = "x"

        [servers.b]
        kind = "stdio"
        args = ["x"]
        """)
    assert "/etc/mcpgw/servers.toml:2: servers.a: missing key 'kind' (one of stdio, http, sse)" in out
    assert "/etc/mcpgw/servers.toml:5: servers.b.command: missing required key" in out


def test_unset_variable_is_an_error_not_an_empty_string() -> None:
    out = problems("""
        [servers.crm]
        kind = "http"
        url = "https://crm.example.com/mcp"

        [servers.crm.headers]
        Authorization = "Bearer ${CRM_TOKEN}"
        """)
    assert out == ["/etc/mcpgw/servers.toml:7: servers.crm.headers.Authorization: environment variable "
                   "${CRM_TOKEN} is not set"]


def test_unknown_keys_and_bad_values_all_reported_at_once() -> None:
    out = problems("""
        [gateway]
        separater = "."
        call_timeout = -1

        [servers.a]
        kind = "http"
        url = "ftp://nope"
        comand = "x"
        """)
    assert "/etc/mcpgw/servers.toml:3: gateway.separater: unknown key (check the spelling; see the configuration " \
           "reference in the README)" in out
    assert any(line.startswith("/etc/mcpgw/servers.toml:4: gateway.call_timeout: Input should be greater than 0")
               for line in out)
    assert "/etc/mcpgw/servers.toml:8: servers.a.url: must be an http:// or https:// URL, got 'ftp://nope'" in out
    assert any(line.startswith("/etc/mcpgw/servers.toml:9: servers.a.comand: unknown key") for line in out)


def test_duplicate_prefix() -> None:
    out = problems("""
        [servers.a]
        kind = "stdio"
        command = "x"

        [servers.b]
        kind = "stdio"
        command = "y"
        prefix = "a"
        """)
    assert out == ["/etc/mcpgw/servers.toml:9: servers.b.prefix: prefix 'a' is already used by server 'a'; "
                   "two upstreams cannot share a namespace"]


def test_bad_server_name_and_separator() -> None:
    out = problems("""
        [gateway]
        separator = "/"

        [servers."my server"]
        kind = "stdio"
        command = "x"
        """)
    assert any("servers.toml:3: gateway.separator: separator may only use" in line for line in out)
    assert any("servers.toml:5: servers.my server: server names may only use" in line for line in out)


def test_planned_kinds_and_tables_are_refused_not_ignored() -> None:
    out = problems("""
        [llm]
        default = "openai"

        [servers.pets]
        kind = "openapi"
        spec = "x.json"
        """)
    assert any(line.startswith("/etc/mcpgw/servers.toml:2: llm: [llm] is not supported") for line in out)
    assert "/etc/mcpgw/servers.toml:6: servers.pets.kind: kind 'openapi' is not supported by this version of " \
           "mcpgw yet" in out


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/servers.toml")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[servers.a]\nkind = "nope"\n', "servers.toml:2: servers.a.kind: unknown kind 'nope'"),
        ("[servers.a\n", "invalid TOML"),
        ('[servers.a]\nkind = "stdio"\ncommand = "${UNSET_FOR_TEST}"\n', "servers.toml:3: servers.a.command: "
         "environment variable ${UNSET_FOR_TEST} is not set"),
    ],
)
def test_cli_check_and_tools_exit_2_with_the_error_on_stderr(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "servers.toml"
    path.write_text(body)
    for command in ("check", "tools"):
        done = subprocess.run([sys.executable, "-m", "mcpgw", command, "--config", str(path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done
        assert expected in done.stderr
        assert done.stdout == ""
