"""mcpgw: one MCP server in front of many upstream MCP servers, with a control plane on every step.

The package is organised by the product's own concepts: `config` (servers.toml), `front` (the
MCP server agents talk to), `pipeline` (the ordered stages every step passes through),
`upstream` (connectors to the servers behind the gateway) and `catalog` (the merged,
namespaced index of what they offer).
"""

__version__ = "0.1.0"
