// The lead's clap CLI replaces this; only `agentd mcp-watch DIR` lives here
// for now so the MCP tests and examples can start the built-in server.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir, rest @ ..] if cmd == "mcp-watch" => {
            let mut options = agentd::mcp::watch_server::WatchOptions::default();
            if let [flag, ms] = rest
                && flag == "--debounce-ms"
            {
                options.debounce = std::time::Duration::from_millis(ms.parse()?);
            }
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .init();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(agentd::mcp::watch_server::serve_stdio_with(
                    std::path::Path::new(dir),
                    options,
                ))
        }
        _ => anyhow::bail!("usage: agentd mcp-watch DIR [--debounce-ms N]"),
    }
}
