"""Repair what upstreams send so one bad definition cannot break the gateway's own answers.

The rules are deliberately small: a tool must have a string name; its `inputSchema` must be a
JSON object schema (MCP requires `"type": "object"`, and a client's `tools/list` validation
fails on anything else); an `outputSchema` that is not an object schema is dropped, since the
gateway cannot forward a tool whose result shape it cannot describe truthfully.
"""

from __future__ import annotations

from typing import Any

_OPEN_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}


def sanitize_tool(raw: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """Return (repaired tool dict or None to drop it, notes about what was changed)."""
    notes: list[str] = []
    if not isinstance(raw, dict):
        return None, ["dropped: not a JSON object"]
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        return None, ["dropped: missing or non-string name"]
    tool = dict(raw)
    schema = tool.get("inputSchema")
    if not isinstance(schema, dict):
        tool["inputSchema"] = dict(_OPEN_OBJECT)
        notes.append("inputSchema was not a JSON object; replaced with an open object schema")
    elif schema.get("type") != "object":
        if "type" not in schema:
            tool["inputSchema"] = {**schema, "type": "object"}
            notes.append('inputSchema had no "type"; set to "object"')
        else:
            tool["inputSchema"] = dict(_OPEN_OBJECT)
            notes.append(f'inputSchema type was {schema.get("type")!r}, not "object"; replaced with an open object')
    if "outputSchema" in tool:
        out = tool["outputSchema"]
        if out is not None and not (isinstance(out, dict) and out.get("type") == "object"):
            del tool["outputSchema"]
            notes.append('outputSchema was not an object schema; dropped')
    return tool, notes
