"""A stdio MCP server (the Python SDK's FastMCP) with one tool,
`trace_context`, that answers the `_meta.traceparent` its call carried
(or "none"): what a traced MCP server would continue its trace from."""
from mcp.server.fastmcp import Context, FastMCP

server = FastMCP("meta-echo")


@server.tool()
def trace_context(ctx: Context) -> str:
    """Returns the W3C traceparent this call carried in _meta."""
    meta = ctx.request_context.meta
    extra = (meta.model_extra or {}) if meta is not None else {}
    return str(extra.get("traceparent", "none"))


server.run()
