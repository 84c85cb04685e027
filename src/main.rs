fn main() -> std::process::ExitCode {
    // The bwrap+landlock backend's inner half: no CLI parsing, no logging,
    // nothing between bwrap and the sandboxed command but the ruleset.
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == agentd::sandbox::helper::SUBCOMMAND) {
        std::process::exit(agentd::sandbox::helper::main(args));
    }
    agentd::cli::main()
}
