"""An MCP server (the Python SDK's FastMCP) that answers the trace context
a tool call carried: `trace_context` the `_meta.traceparent` (or "none"),
`trace_header` the `traceparent` HTTP header (or "none"; over stdio there
is no header). Over stdio by default; `--http PORT` serves streamable HTTP
on 127.0.0.1:PORT/mcp."""
import sys

from mcp.server.fastmcp import Context, FastMCP

http_port = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] == "--http" else None
server = FastMCP("meta-echo", host="127.0.0.1", port=http_port or 8000)


@server.tool()
def trace_context(ctx: Context) -> str:
    """Returns the W3C traceparent this call carried in _meta."""
    meta = ctx.request_context.meta
    extra = (meta.model_extra or {}) if meta is not None else {}
    return str(extra.get("traceparent", "none"))


@server.tool()
def trace_header(ctx: Context) -> str:
    """Returns the traceparent HTTP header of this call's request."""
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    return str(headers.get("traceparent", "none")) if headers is not None else "none"


server.run(transport="streamable-http" if http_port else "stdio")
