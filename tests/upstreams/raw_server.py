"""A hand-written JSON-RPC upstream over stdio that sends malformed tool definitions.

No SDK on purpose: an SDK server refuses to send what this one sends, and the gateway must
survive upstreams written with other, laxer SDKs.
"""

import json
import sys

TOOLS = [
    {"name": "good", "description": "fine", "inputSchema": {"type": "object"}},
    {"name": "string_schema", "inputSchema": {"type": "string"}},
    {"name": "no_type", "inputSchema": {"properties": {"a": {"type": "integer"}}}},
    {"name": "not_a_dict", "inputSchema": "oops"},
    {"name": "bad output", "inputSchema": {"type": "object"}, "outputSchema": {"type": "array"}},
    {"description": "nameless"},
    {"name": "weird/name x", "inputSchema": {"type": "object"}},
]

for line in sys.stdin:
    msg = json.loads(line)
    mid, method = msg.get("id"), msg.get("method")
    if mid is None:
        continue
    if method == "initialize":
        result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "raw", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": "raw:" + msg["params"]["name"]}]}
    else:
        print(json.dumps({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "Method not found"}}),
              flush=True)
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": mid, "result": result}), flush=True)
