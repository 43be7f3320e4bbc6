"""The front: the MCP server agents connect to, over stdio, Streamable HTTP and SSE.

It knows MCP and the transports; it builds `Step`s and hands them to the pipeline. It knows
nothing of upstream wire formats or of policy.
"""
