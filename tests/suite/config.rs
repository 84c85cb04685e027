//! The config loader: every error with its exact position, compatibility
//! with the Python agentd format, interpolation and includes.

use std::path::Path;
use std::time::Duration;

use agentd::config::{self, Config, ConfigErrors, McpTransport, RestartPolicy, SubscriptionTarget};
use agentd::sandbox::Backend;

use crate::support::{agentd, stderr, stdout, tempdir, write};

fn env(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/home/tester".into()),
        "MODEL" => Some("gpt-4o-mini".into()),
        "TOKEN" => Some("s3cret".into()),
        _ => None,
    }
}

fn load(path: &Path) -> Result<Config, ConfigErrors> {
    config::load_with_env(path, &env)
}

/// Loads `text` as the main config and returns its rendered errors.
fn errors_of(text: &str) -> Vec<String> {
    let dir = tempdir();
    let path = write(dir.path(), "agentd.yaml", text);
    let errs = load(&path).expect_err("config should be invalid");
    let prefix = format!("{}:", path.display());
    errs.0
        .iter()
        .map(|e| {
            e.to_string()
                .strip_prefix(&prefix)
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string())
        })
        .collect()
}

fn one_error(text: &str) -> String {
    let errs = errors_of(text);
    assert_eq!(errs.len(), 1, "expected exactly one error, got {errs:#?}");
    errs.into_iter().next().unwrap_or_default()
}

#[test]
fn yaml_syntax_error_names_line_and_column() {
    let e = one_error("agents:\n  - name: a\n    model: [unclosed\n");
    assert!(e.starts_with("4:1: YAML syntax error"), "{e}");
}

#[test]
fn unknown_key_suggests_the_closest_field() {
    let e = one_error("agents:\n  - name: a\n    model: m\n    system_promt: hi\n");
    assert_eq!(
        e,
        "4:5: agents[0].system_promt: unknown key \"system_promt\"; did you mean \"system_prompt\"?"
    );
}

#[test]
fn unknown_key_without_close_match_lists_the_valid_ones() {
    let e = one_error("zzz: 1\n");
    assert!(
        e.starts_with("1:1: zzz: unknown key \"zzz\"; expected one of: state_dir, include"),
        "{e}"
    );
}

#[test]
fn wrong_types_are_reported_with_their_field() {
    let errs = errors_of(
        "agents:\n  - name: a\n    model: m\n    mcp_servers: {command: x}\n    limits:\n      max_turns: many\n",
    );
    assert_eq!(
        errs,
        vec![
            "4:18: agents[0].mcp_servers: expected a list, found a mapping".to_string(),
            "6:18: agents[0].limits.max_turns: expected a whole number, found \"many\"".to_string(),
        ]
    );
}

#[test]
fn duplicate_agent_names_point_at_both_definitions() {
    let e = one_error("agents:\n  - name: a\n    model: m\n  - name: a\n    model: m\n");
    assert!(
        e.starts_with("4:11: agents[1].name: duplicate agent name \"a\" (first defined at "),
        "{e}"
    );
    assert!(e.ends_with("agentd.yaml:2)"), "{e}");
}

#[test]
fn invalid_cron_expression_is_reported() {
    let e = one_error(
        "agents:\n  - name: a\n    model: m\n    schedules:\n      - cron: \"61 * * * *\"\n        prompt: p\n",
    );
    assert!(
        e.starts_with("5:15: agents[0].schedules[0].cron: invalid cron expression \"61 * * * *\""),
        "{e}"
    );
}

#[test]
fn malformed_subscription_uri_is_reported() {
    let e = one_error("agents:\n  - name: a\n    model: m\n    subscriptions: [\"no scheme here\"]\n");
    assert!(
        e.starts_with("4:21: agents[0].subscriptions[0]: malformed URI \"no scheme here\""),
        "{e}"
    );
}

#[test]
fn unknown_sandbox_profile_suggests_a_known_one() {
    let e = one_error("agents:\n  - name: a\n    model: m\n    sandbox: stirct\n");
    assert_eq!(
        e,
        "4:14: agents[0].sandbox: unknown sandbox profile \"stirct\"; did you mean \"strict\"?"
    );
}

#[test]
fn missing_include_file_is_reported() {
    let e = one_error("include: [agents/nothere.yaml]\n");
    assert!(e.starts_with("1:11: include[0]: include file "), "{e}");
    assert!(e.ends_with("agents/nothere.yaml does not exist"), "{e}");
}

#[test]
fn bad_durations_and_sizes_are_reported() {
    let errs = errors_of(
        "agents:\n  - name: a\n    model: m\n    limits: {task_timeout: soon}\n    sandbox:\n      limits: {memory: lots}\n",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("4:28: agents[0].limits.task_timeout: invalid duration \"soon\""),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("6:24: agents[0].sandbox.limits.memory: invalid size \"lots\""),
        "{errs:#?}"
    );
}

#[test]
fn unset_variable_names_the_field() {
    let e = one_error("agents:\n  - name: a\n    model: ${NOPE}\n");
    assert!(
        e.starts_with("3:12: agents[0].model: environment variable NOPE is not set"),
        "{e}"
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let errs = errors_of(
        "stat_dir: /x\nagents:\n  - name: Bad\n    model: m\n    restart: {policy: sometimes}\n  - name: b\n",
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs[0].starts_with("1:1: stat_dir: unknown key \"stat_dir\"; did you mean \"state_dir\"?"));
    assert!(
        errs[1].starts_with("3:11: agents[0].name: invalid agent name \"Bad\""),
        "{errs:#?}"
    );
    assert!(
        errs[2].starts_with("5:23: agents[0].restart.policy: unknown restart policy \"sometimes\""),
        "{errs:#?}"
    );
    assert!(
        errs[3].starts_with("6:5: agents[1].model: missing required field \"model\""),
        "{errs:#?}"
    );
}

#[test]
fn errors_in_included_files_name_that_file() {
    let dir = tempdir();
    write(
        dir.path(),
        "agents/a.yaml",
        "name: a\nmodel: m\nmcp_servers:\n  - type: carrier-pigeon\n",
    );
    let main = write(dir.path(), "agentd.yaml", "include: agents/*.yaml\n");
    let errs = load(&main).expect_err("invalid");
    assert_eq!(errs.0.len(), 1);
    let e = errs.0[0].to_string();
    assert!(
        e.contains("agents/a.yaml:4:11: mcp_servers[0].type: unknown server type \"carrier-pigeon\""),
        "{e}"
    );
}

/// The Python agentd daemon's config format loads unchanged.
#[test]
fn python_agentd_config_loads_unchanged() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "config.yaml",
        r#"agents:
  - name: news
    model: gpt-4o-mini
    system_prompt: You summarize web pages when they change.
    mcp_servers:
      - type: stdio
        command: uvx
        arguments: ["mcp-server-fetch"]
        env_vars: ["FETCH_USER_AGENT=agentd"]
        tool_filter: ["fetch"]
    subscriptions:
      - "tool://fetch/?url=https://example.com"
"#,
    );
    let cfg = load(&path).expect("python config loads");
    let a = &cfg.agents[0];
    assert_eq!(a.name.as_str(), "news");
    assert_eq!(a.model, "gpt-4o-mini");
    let s = &a.mcp_servers[0];
    assert_eq!(s.name, "mcp-server-fetch");
    assert_eq!(s.tool_filter.as_deref(), Some(&["fetch".to_string()][..]));
    match &s.transport {
        McpTransport::Stdio { command, args, env, .. } => {
            assert_eq!(command, "uvx");
            assert_eq!(args, &["mcp-server-fetch"]);
            assert_eq!(env.get("FETCH_USER_AGENT").map(String::as_str), Some("agentd"));
        }
        other => panic!("expected stdio, got {other:?}"),
    }
    match &a.subscriptions[0].target {
        SubscriptionTarget::Tool { tool, arguments } => {
            assert_eq!(tool, "fetch");
            assert_eq!(arguments["url"], "https://example.com");
        }
        other => panic!("expected a tool subscription, got {other:?}"),
    }
    // Defaults fill what the Python format leaves out.
    assert_eq!(a.restart.policy, RestartPolicy::OnFailure);
    assert_eq!(a.sandbox_profile, "default");
}

#[test]
fn interpolation_expands_variables_and_defaults() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "agentd.yaml",
        "state_dir: ${STATE:-/tmp/st}\nagents:\n  - name: a\n    model: ${MODEL}\n    mcp_servers:\n      - {name: s, type: http, url: \"http://127.0.0.1:1/mcp\", headers: {Authorization: \"Bearer ${TOKEN}\"}}\n",
    );
    let cfg = load(&path).expect("valid");
    assert_eq!(cfg.state_dir, Path::new("/tmp/st"));
    assert_eq!(cfg.agents[0].model, "gpt-4o-mini");
    match &cfg.agents[0].mcp_servers[0].transport {
        McpTransport::Http { headers, .. } => assert_eq!(headers["Authorization"], "Bearer s3cret"),
        other => panic!("expected http, got {other:?}"),
    }
}

#[test]
fn includes_load_single_agents_and_lists_with_defaults() {
    let dir = tempdir();
    write(
        dir.path(),
        "agents/one.yaml",
        "name: one\nsystem_prompt_file: prompts/one.md\n",
    );
    write(dir.path(), "agents/prompts/one.md", "You are one.\n");
    write(
        dir.path(),
        "agents/two.yaml",
        "- name: two\n- name: three\n  model: other\n  restart: {policy: never}\n",
    );
    let main = write(
        dir.path(),
        "agentd.yaml",
        "include: [\"agents/*.yaml\"]\ndefaults:\n  model: base\n  restart: {policy: always, burst: 3}\n  limits: {max_turns: 7}\n  sandbox: strict\n",
    );
    let cfg = load(&main).expect("valid");
    let names: Vec<&str> = cfg.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["one", "two", "three"]);
    let one = cfg.agent("one").expect("one");
    assert_eq!(one.system_prompt, "You are one.\n");
    assert_eq!(one.model, "base");
    assert_eq!(one.limits.max_turns, 7);
    assert_eq!(one.restart.policy, RestartPolicy::Always);
    assert_eq!(one.restart.burst, 3);
    assert_eq!(one.sandbox.backend, Backend::BwrapLandlock);
    let three = cfg.agent("three").expect("three");
    assert_eq!(three.model, "other");
    assert_eq!(three.restart.policy, RestartPolicy::Never);
    assert_eq!(three.restart.burst, 3, "unset fields still inherit");
    assert!(
        cfg.files.iter().any(|f| f.ends_with("agents/prompts/one.md")),
        "{:?}",
        cfg.files
    );
    assert_eq!(cfg.include_globs.len(), 1);
}

#[test]
fn inline_sandbox_policy_overrides_its_base_profile() {
    let dir = tempdir();
    let main = write(
        dir.path(),
        "agentd.yaml",
        "agents:\n  - name: a\n    model: m\n    sandbox: {profile: networked, backend: bwrap, timeout: 5s, writable: [/srv/out], limits: {memory: 256MiB}}\n",
    );
    let cfg = load(&main).expect("valid");
    let a = &cfg.agents[0];
    assert_eq!(a.sandbox_profile, "inline");
    assert_eq!(a.sandbox.backend, Backend::Bwrap);
    assert_eq!(
        a.sandbox.network,
        agentd::sandbox::Network::On,
        "inherited from networked"
    );
    assert_eq!(a.sandbox.timeout, Duration::from_secs(5));
    assert_eq!(a.sandbox.limits.memory_bytes, Some(256 << 20));
    assert_eq!(a.sandbox.writable, vec![std::path::PathBuf::from("/srv/out")]);
}

#[test]
fn a_profile_next_to_the_config_is_found() {
    let dir = tempdir();
    write(dir.path(), "sandbox/mine.yaml", "backend: none\ntimeout: 2s\n");
    let main = write(
        dir.path(),
        "agentd.yaml",
        "agents:\n  - {name: a, model: m, sandbox: mine}\n",
    );
    let cfg = load(&main).expect("valid");
    assert_eq!(cfg.agents[0].sandbox.backend, Backend::None);
    assert!(cfg.files.iter().any(|f| f.ends_with("sandbox/mine.yaml")));
}

#[test]
fn check_prints_a_summary_and_exits_zero() {
    let dir = tempdir();
    let main = write(
        dir.path(),
        "agentd.yaml",
        "agents:\n  - name: watcher\n    model: m\n    mcp_servers: [{name: fs, command: agentd, args: [mcp-watch, /tmp]}]\n    subscriptions: [\"file:///tmp/*.md\"]\n    schedules: [{cron: \"*/5 * * * *\", prompt: \"Tidy up\"}]\n",
    );
    let out = agentd(&["check", main.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = stdout(&out);
    assert!(s.contains("valid, 1 agent"), "{s}");
    assert!(s.contains("agent watcher: model m, sandbox default"), "{s}");
    assert!(
        s.contains("llm: https://api.openai.com/v1 (key variable OPENAI_API_KEY)"),
        "{s}"
    );
    assert!(s.contains("server fs: stdio: agentd mcp-watch /tmp"), "{s}");
    assert!(s.contains("subscription file:///tmp/*.md (glob"), "{s}");
    assert!(s.contains("schedule \"*/5 * * * *\" UTC: Tidy up"), "{s}");
}

#[test]
fn check_exits_one_on_errors_and_two_on_usage() {
    let dir = tempdir();
    let main = write(dir.path(), "agentd.yaml", "agents: [{name: a}]\n");
    let out = agentd(&["check", main.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("agents[0].model: missing required field \"model\""),
        "{}",
        stderr(&out)
    );
    let out = agentd(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = agentd(&["check", "/nonexistent/agentd.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/agentd.yaml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_reports_a_code_injecting_server_env_key_with_its_position() {
    let dir = tempdir();
    let main = write(
        dir.path(),
        "agentd.yaml",
        "agents:\n  - name: a\n    model: m\n    mcp_servers:\n      - name: fs\n        command: agentd\n        env:\n          API_TOKEN: x\n          LD_PRELOAD: /tmp/evil.so\n        env_vars: [\"NODE_OPTIONS=--require /tmp/evil.js\"]\n",
    );
    let out = agentd(&["check", main.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    let at = |pos: &str, field: &str, key: &str| {
        err.lines().any(|l| {
            l.starts_with(&format!("{}:{pos}: agents[0].mcp_servers[0].{field}: ", main.display()))
                && l.contains(&format!("env key \"{key}\" is not allowed"))
        })
    };
    assert!(at("9:11", "env.LD_PRELOAD", "LD_PRELOAD"), "{err}");
    assert!(at("10:20", "env_vars[0]", "NODE_OPTIONS"), "{err}");
    assert!(!err.contains("API_TOKEN"), "{err}");
}

#[test]
fn secrets_are_never_echoed_in_errors() {
    let e = one_error("agents:\n  - name: a\n    model: m\n    llm: {api_key_env: \"sk-live-abcdef\"}\n");
    assert!(!e.contains("sk-live"), "{e}");
    assert!(e.contains("takes the NAME of an environment variable"), "{e}");
}

// ---- field compatibility (issue 13) ----

fn load_env(text: &str, vars: &'static [(&'static str, &'static str)]) -> Result<Config, ConfigErrors> {
    let dir = tempdir();
    let path = write(dir.path(), "agentd.yaml", text);
    // The tempdir goes when this returns; the config is already read.
    config::load_with_env(&path, &|k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
            .or_else(|| env(k))
    })
}

#[test]
fn empty_tool_filter_means_no_filter() {
    let cfg = load_env(
        "agents:\n  - name: a\n    model: m\n    mcp_servers:\n      - {type: stdio, command: uvx, arguments: [mcp-server-fetch], tool_filter: []}\n",
        &[],
    )
    .expect("valid");
    let filter = cfg.agents[0].mcp_servers[0].tool_filter.clone();
    assert_eq!(filter, None);
    assert!(agentd::mcp::tools::tool_allowed(filter.as_deref(), "fetch"));
}

#[test]
fn openai_sdk_environment_is_honoured_without_llm() {
    let text = "agents:\n  - {name: a, model: gpt-4o-mini}\n";
    let cfg = load_env(text, &[("OPENAI_BASE_URL", "http://127.0.0.1:8/v1")]).expect("valid");
    assert_eq!(cfg.agents[0].llm.base_url, "http://127.0.0.1:8/v1");
    let cfg = load_env(text, &[]).expect("valid");
    assert_eq!(cfg.agents[0].llm.base_url, "https://api.openai.com/v1");
    assert_eq!(cfg.agents[0].llm.api_key_env.as_deref(), Some("OPENAI_API_KEY"));
    // What the config says wins over the environment.
    let cfg = load_env(
        "agents:\n  - {name: a, model: gpt-4o-mini, llm: {base_url: \"http://10.0.0.1/v1\"}}\n",
        &[("OPENAI_BASE_URL", "http://127.0.0.1:8/v1")],
    )
    .expect("valid");
    assert_eq!(cfg.agents[0].llm.base_url, "http://10.0.0.1/v1");
}

#[test]
fn litellm_model_prefixes_route_to_their_providers_or_fail_clearly() {
    let cfg = load_env("agents:\n  - {name: a, model: gemini/gemini-2.0-flash}\n", &[]).expect("valid");
    let a = &cfg.agents[0];
    assert_eq!(a.model, "gemini-2.0-flash");
    assert_eq!(
        a.llm.base_url,
        "https://generativelanguage.googleapis.com/v1beta/openai"
    );
    assert_eq!(a.llm.api_key_env.as_deref(), Some("GEMINI_API_KEY"));
    let cfg = load_env("agents:\n  - {name: a, model: claude-3-5-haiku-latest}\n", &[]).expect("valid");
    assert_eq!(cfg.agents[0].llm.base_url, "https://api.anthropic.com/v1");
    let cfg = load_env("agents:\n  - {name: a, model: ollama/llama3}\n", &[]).expect("valid");
    assert_eq!(cfg.agents[0].llm.api_key_env, None);
    let errs = load_env("agents:\n  - {name: a, model: bedrock/anthropic.claude-v2}\n", &[]).expect_err("refused");
    let msg = errs.0[0].to_string();
    assert!(
        msg.contains("agents[0].model") && msg.contains("OpenAI chat-completions"),
        "{msg}"
    );
}

#[test]
fn llm_stream_false_is_read() {
    let cfg = load_env("agents:\n  - {name: a, model: m, llm: {stream: false}}\n", &[]).expect("valid");
    assert!(!cfg.agents[0].llm.stream);
    let cfg = load_env("agents:\n  - {name: a, model: m}\n", &[]).expect("valid");
    assert!(cfg.agents[0].llm.stream);
}
#[test]
fn workdir_quota_has_defaults_and_is_set_under_limits() {
    let dir = tempdir();
    let main = write(
        dir.path(),
        "agentd.yaml",
        "agents:\n  - name: a\n    model: m\n  - name: b\n    model: m\n    limits: {workdir_size: 64MiB, workdir_files: 500}\n",
    );
    let cfg = load(&main).expect("valid");
    assert_eq!(cfg.agents[0].limits.workdir_size, 1 << 30);
    assert_eq!(cfg.agents[0].limits.workdir_files, 100_000);
    assert_eq!(cfg.agents[1].limits.workdir_size, 64 << 20);
    assert_eq!(cfg.agents[1].limits.workdir_files, 500);

    let errs = errors_of("agents:\n  - name: a\n    model: m\n    limits: {workdir_size: huge, workdir_files: 0}\n");
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("agents[0].limits.workdir_size: invalid size \"huge\"")),
        "{errs:#?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("agents[0].limits.workdir_files: workdir_files must be at least 1")),
        "{errs:#?}"
    );
}

#[test]
fn governance_keys_decode_with_defaults_prices_and_positioned_errors() {
    let dir = tempdir();
    let path = write(
        dir.path(),
        "agentd.yaml",
        "prices:\n  local-llm: {input: 0.5, output: 1.5}\ndefaults:\n  model: m\n  budget: {tokens: 2M, cost_usd: 5, per: 1d}\n\
         agents:\n  - name: a\n  - name: b\n    budget: {cost_usd: 0.5, per: 2h, on_exceed: stop}\n    \
         approve: {tools: [\"delete_*\", write_file], fences: all, timeout: 5m, on_timeout: approve}\n",
    );
    let cfg = load(&path).expect("valid");
    let a = cfg.agent("a").expect("a");
    let b = cfg.agent("b").expect("b");
    let ab = a.budget.as_ref().expect("a inherits the default budget");
    assert_eq!(
        (ab.tokens, ab.cost_usd, ab.per),
        (Some(2_000_000), Some(5.0), Duration::from_secs(86_400))
    );
    assert_eq!(ab.on_exceed, agentd::budget::OnExceed::Finish);
    let bb = b.budget.as_ref().expect("b's own");
    assert_eq!(
        (bb.tokens, bb.cost_usd, bb.on_exceed),
        (None, Some(0.5), agentd::budget::OnExceed::Stop)
    );
    let p = b.approve.as_ref().expect("approve");
    assert!(p.tool("delete_file") && p.tool("write_file") && !p.tool("read_file"));
    assert!(p.fence("python") && p.fence("create"));
    assert_eq!((p.timeout, p.on_timeout()), (Duration::from_secs(300), "approve"));
    assert!(a.approve.is_none());
    assert_eq!(cfg.prices.get("local-llm").map(|p| p.cached_input), Some(0.5));
    assert!(cfg.prices.get("gpt-4o").is_some(), "the built-in table stays");

    let errs = errors_of(
        "agents:\n  - name: a\n    model: m\n    budget: {tokens: lots, per: 1d}\n    \
         approve: {fences: [bash, perl], on_timeout: maybe}\n  - name: b\n    model: m\n    budget: {per: 1d}\n",
    );
    assert_eq!(
        errs,
        [
            "4:22: agents[0].budget.tokens: \"lots\" is not a token count: write e.g. 2M, 500k or 1500",
            "5:23: agents[0].approve.fences: unknown block kind \"perl\"; expected bash, sh, python, create",
            "5:49: agents[0].approve.on_timeout: unknown value \"maybe\"; expected deny or approve",
            "8:14: agents[1].budget: a budget needs tokens, cost_usd or both (e.g. {tokens: 2M, cost_usd: 5, per: 1d})",
        ]
    );
}

#[test]
fn http_notify_and_webhook_errors_name_their_field_and_position() {
    let errs = errors_of(
        "http: {listen: \"nonsense\"}\n\
         notify:\n  - {url: \"ftp://x\", on: [waiting, done], timeout: 0s}\n\
         agents:\n  - name: a\n    model: m\n    webhook: {dedupe_header: \"bad header\", max_body: 0}\n",
    );
    let want = [
        "1:16: http.listen: \"nonsense\" is not an address to listen on",
        "3:11: notify[0].url: \"ftp://x\" is not an http(s) URL",
        "3:36: notify[0].on[1]: unknown event \"done\"",
        "notify[0].timeout: timeout must be more than 0",
        "agents[0].webhook.secret_env: missing required field",
        "agents[0].webhook.dedupe_header: \"bad header\" is not an HTTP header name",
        "agents[0].webhook.max_body: max_body must be more than 0",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e.contains(w)), "no error like {w:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn http_is_on_at_loopback_by_default_and_off_with_false() {
    let dir = tempdir();
    let on = load(&write(dir.path(), "on.yaml", "agents: []\n")).unwrap();
    assert_eq!(on.http.unwrap().to_string(), config::DEFAULT_LISTEN);
    let off = load(&write(dir.path(), "off.yaml", "http: false\nagents: []\n")).unwrap();
    assert!(off.http.is_none());
    let unix = load(&write(
        dir.path(),
        "unix.yaml",
        "http: {listen: \"unix:api.sock\"}\nagents: []\n",
    ))
    .unwrap();
    assert_eq!(
        unix.http.unwrap().to_string(),
        format!("unix:{}", dir.path().join("api.sock").display())
    );
    let hooks = load(&write(
        dir.path(),
        "hooks.yaml",
        "notify: [{url: \"http://127.0.0.1:9/x\", secret_env: S}]\nagents:\n  - {name: a, model: m, webhook: {secret_env: H, headers: [X-GitHub-Event]}}\n",
    ))
    .unwrap();
    assert_eq!(hooks.notify[0].on.len(), 3);
    let w = hooks.agents[0].webhook.as_ref().unwrap();
    assert_eq!(
        (w.secret_env.as_str(), w.headers[0].as_str(), w.max_body),
        ("H", "x-github-event", 1024 * 1024)
    );
}

#[test]
fn check_reports_bad_egress_rules_with_positions() {
    let dir = tempdir();
    let good = write(
        dir.path(),
        "good.yaml",
        "agents:\n  - name: a\n    model: m\n    sandbox: {profile: web, network: {allow: [pypi.org, \"*.pythonhosted.org:443\"]}}\n",
    );
    let out = agentd(&["check", good.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "control: {}", stderr(&out));

    let bad = write(
        dir.path(),
        "bad.yaml",
        "agents:\n  - name: a\n    model: m\n    sandbox:\n      profile: web\n      network:\n        allow: [pypi.org, \"py pi.org\"]\n  - name: b\n    model: m\n    sandbox: {profile: default, network: {allow: [pypi.org]}}\n",
    );
    let out = agentd(&["check", bad.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("bad.yaml:7:") && e.contains("agents[0].sandbox.network.allow[1]"),
        "{e}"
    );
    assert!(
        e.contains("bad.yaml:10:") && e.contains("need a network namespace"),
        "{e}"
    );

    // ask alone is a policy (no allow list needed); its patterns and
    // timeout are checked like the others.
    let asks = write(
        dir.path(),
        "asks.yaml",
        "agents:\n  - name: a\n    model: m\n    sandbox: {profile: web, network: {ask: [\"*\"], ask_timeout: 5m}}\n",
    );
    let out = agentd(&["check", asks.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bad = write(
        dir.path(),
        "badask.yaml",
        "agents:\n  - name: a\n    model: m\n    sandbox:\n      profile: web\n      network:\n        ask: [\"x.org:http\"]\n        ask_timeout: soon\n",
    );
    let out = agentd(&["check", bad.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("badask.yaml:7:") && e.contains("agents[0].sandbox.network.ask[0]"),
        "{e}"
    );
    assert!(
        e.contains("badask.yaml:8:") && e.contains("agents[0].sandbox.network.ask_timeout"),
        "{e}"
    );
}
