fn main() -> std::process::ExitCode {
    // The bwrap+landlock backend's inner half: no CLI parsing, no logging,
    // nothing between bwrap and the sandboxed command but the ruleset.
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(a) if a == agentd::sandbox::helper::SUBCOMMAND => std::process::exit(agentd::sandbox::helper::main(args)),
        // Domain-rule egress: the relay inside the sandbox's namespace.
        Some(a) if a == agentd::sandbox::egress::relay::SUBCOMMAND => {
            std::process::exit(agentd::sandbox::egress::relay::main(args))
        }
        // The process agents are forked from: nothing runs before it.
        Some(a) if a == agentd::zygote::SUBCOMMAND => std::process::exit(agentd::zygote::main()),
        _ => {}
    }
    agentd::cli::main()
}
