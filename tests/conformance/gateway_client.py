"""The gateway as the client under test for the conformance suite's client-side auth scenarios.

The suite runs its own MCP server and authorization server, then runs this script with the
server's URL as the last argument and the credentials in `MCP_CONFORMANCE_CONTEXT`. The script
configures that server as an upstream with `oauth_client_credentials` (no token_url: the gateway
must discover it) and lists the gateway's catalog with `mcpgw tools`, which connects to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> int:
    url = sys.argv[-1]
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT", "{}"))
    scenario = os.environ.get("MCP_CONFORMANCE_SCENARIO", "")
    if "private_key_pem" in context:  # private_key_jwt: the key comes in through the environment, as in production
        credentials = 'client_auth = "private_key_jwt"\nprivate_key = "${CONFORMANCE_KEY_PEM}"\n'
        credentials += f'signing_alg = {json.dumps(context.get("signing_algorithm", "ES256"))}\n'
        os.environ["CONFORMANCE_KEY_PEM"] = context["private_key_pem"]
    else:
        method = "client_secret_post" if scenario.endswith("-post") else "client_secret_basic"
        credentials = f'client_secret = {json.dumps(context["client_secret"])}\nclient_auth = "{method}"\n'
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "servers.toml"
        config.write_text(
            "[gateway]\nconnect_timeout = 20\nrestart_backoff = 30\n\n"
            f'[servers.up]\nkind = "http"\nurl = {json.dumps(url)}\n'
            f'[servers.up.auth]\ntype = "oauth_client_credentials"\nclient_id = {json.dumps(context["client_id"])}\n'
            + credentials
        )
        done = subprocess.run([sys.executable, "-m", "mcpgw", "tools", "--config", str(config)], timeout=60)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
