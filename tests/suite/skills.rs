//! Skills end to end: SKILL.md validation in `agentd check`, generated
//! bindings for MCP tools (compiled by a real python3), and the tool
//! bridge under every sandbox backend, with a real agentd, the real
//! server-everything, real sandboxes and a scripted model on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentd::agent::bridge::client;
use agentd::domain::{Lease, TaskId, TaskState};
use agentd::ledger::{Step, Task};
use agentd::mcp::ToolInfo;
use agentd::skills::{self, generate};
use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::llm_server::{LlmServer, Reply};
use crate::support::mcp::server_everything_js;
use crate::support::{agentd, agentd_bin, stderr, stdout, tempdir, wait_for, write};

const KEY: &str = "sk-test-skills";

struct Setup {
    dir: tempfile::TempDir,
    inbox: PathBuf,
    config: PathBuf,
}

impl Setup {
    /// One agent with server-everything and an inbox (mcp-watch) whose
    /// changes start tasks, a local skill, and `sandbox` as its policy.
    fn new(base_url: &str, sandbox: &str, extra: &str) -> Setup {
        let dir = tempdir();
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(&inbox).expect("inbox");
        write(
            dir.path(),
            "skills/greet/SKILL.md",
            "---\nname: greet\ndescription: Greets people politely.\n---\nSay hello.\n",
        );
        let config = write(
            dir.path(),
            "agentd.yaml",
            &format!(
                r#"shutdown_grace: 2s
agents:
  - name: skilled
    model: test-model
    llm: {{base_url: "{base_url}", api_key_env: TEST_LLM_KEY, request_timeout: 20s, max_retries: 1}}
    restart: {{backoff_min: 20ms, backoff_max: 100ms}}
    sandbox: {sandbox}
    skills: [skills/greet]
    mcp_servers:
      - name: inbox
        command: {bin}
        args: [mcp-watch, "{inbox}", --debounce-ms, "20"]
      - name: everything
        command: node
        args: ["{everything}", stdio]
    subscriptions:
      - {{uri: "file://{inbox}/*.md", server: inbox, debounce: 50ms}}
{extra}"#,
                bin = agentd_bin().display(),
                inbox = inbox.display(),
                everything = server_everything_js().display(),
            ),
        );
        Setup { dir, inbox, config }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn workdir(&self) -> PathBuf {
        self.state().join("agents/skilled/work")
    }

    fn start(&self) -> Daemon {
        let d = Daemon::start(&self.config, &self.state(), &[("TEST_LLM_KEY", KEY)]);
        d.running_pid("skilled");
        d
    }

    /// Starts a task by dropping a note into the inbox; waits for its end.
    fn run_task(&self, d: &Daemon) -> (Task, Vec<Step>) {
        std::fs::write(self.inbox.join("go.md"), "go\n").expect("write note");
        let t = wait_for(Duration::from_secs(60), || {
            tasks(&d.state_dir).into_iter().find(|t| t.state.is_final())
        })
        .unwrap_or_else(|| panic!("no finished task; log:\n{}", d.log_text()));
        let steps = ledger(&d.state_dir).steps(t.id).unwrap_or_default();
        (t, steps)
    }
}

use crate::support::daemon::{ledger, tasks};

fn test_lease(generation: u64) -> Lease {
    Lease {
        agent: "a".into(),
        pid: 1,
        generation,
    }
}

fn fence_results(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter(|s| s.kind == "fence")
        .map(|s| s.payload["result"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn bridge_steps(steps: &[Step]) -> Vec<&Value> {
    steps
        .iter()
        .filter(|s| s.kind == "bridge")
        .map(|s| &s.payload)
        .collect()
}

const PYTHON_GET_SUM: &str =
    "```python:execute\nimport mcp_everything as ev\nprint(ev.get_sum(2, 3).split()[-1].rstrip('.'))\n```\n";

/// The python fence prints 5 through the bindings; the call is journaled.
fn python_fence_gets_the_sum(sandbox: &str) {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[PYTHON_GET_SUM]),
        Reply::stream_text(&["Done."]),
    ]);
    let s = Setup::new(&llm.base_url(), sandbox, "");
    let d = s.start();
    let (t, steps) = s.run_task(&d);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}\n{}", d.log_text());
    let fences = fence_results(&steps);
    assert_eq!(fences.len(), 1, "{steps:#?}");
    assert!(
        fences[0].contains("exit code 0") && fences[0].contains("stdout:\n5\n"),
        "{}\nlog:\n{}",
        fences[0],
        d.log_text()
    );
    let bridged = bridge_steps(&steps);
    assert_eq!(bridged.len(), 1, "{steps:#?}");
    assert_eq!(bridged[0]["name"], "get-sum");
    assert!(
        bridged[0]["result"].as_str().unwrap_or("").contains('5'),
        "{:?}",
        bridged[0]
    );

    // The model was told where its skills are: the local one and the
    // generated one for server-everything.
    let system = llm.requests()[0].json()["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(system.contains("- greet: Greets people politely."), "{system}");
    assert!(system.contains("- mcp-everything: "), "{system}");
}

#[test]
fn python_fence_calls_get_sum_through_generated_bindings_under_landlock() {
    python_fence_gets_the_sum("{profile: default}");
}

#[test]
fn python_fence_calls_get_sum_through_generated_bindings_under_bwrap() {
    python_fence_gets_the_sum("{profile: default, backend: bwrap}");
}

#[test]
fn python_fence_calls_get_sum_through_generated_bindings_under_bwrap_and_landlock() {
    python_fence_gets_the_sum("strict");
}

#[test]
fn bash_fence_calls_get_sum_through_agentd_tool_call_and_it_shows_in_agentd_show() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[
            "```bash:execute\nagentd tool call get-sum --json '{\"a\": 2, \"b\": 3}' | grep -o '[0-9]*\\.$' | tr -d .\n```\n",
        ]),
        Reply::stream_text(&["Done."]),
    ]);
    let s = Setup::new(&llm.base_url(), "{profile: default, backend: bwrap}", "");
    let d = s.start();
    let (t, steps) = s.run_task(&d);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    let fences = fence_results(&steps);
    assert!(
        fences[0].contains("stdout:\n5\n"),
        "{}\nlog:\n{}",
        fences[0],
        d.log_text()
    );

    let state = d.state_dir.display().to_string();
    let out = agentd(&["show", &t.id.to_string(), "--state-dir", &state]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("[bridge]") && text.contains("get-sum"), "{text}");
}

#[test]
fn the_bridge_refuses_unknown_tools_and_oversize_requests() {
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[
            "```bash:execute\nagentd tool call no-such-tool --json '{}'; echo \"exit=$?\"\n```\n",
            "```python:execute\nimport mcp_everything as ev\ntry:\n    ev.echo('x' * 5000)\nexcept ev.ToolError as e:\n    print('refused:', e)\n```\n",
        ]),
        Reply::stream_text(&["Done."]),
    ]);
    let s = Setup::new(
        &llm.base_url(),
        "{profile: default}",
        "    bridge: {max_request: 1KiB}\n",
    );
    let d = s.start();
    let (t, steps) = s.run_task(&d);
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    let fences = fence_results(&steps);
    assert!(
        fences[0].contains("unknown tool \"no-such-tool\"") && fences[0].contains("exit=1"),
        "{}",
        fences[0]
    );
    assert!(
        fences[1].contains("refused: refused: the request is larger than the bridge allows (1024 bytes"),
        "{}",
        fences[1]
    );
    // The unknown tool was an authenticated call, so it is journaled.
    let bridged = bridge_steps(&steps);
    assert_eq!(bridged.len(), 1, "{steps:#?}");
    assert!(bridged[0]["error"].as_str().unwrap_or("").contains("unknown tool"));
}

#[test]
fn the_bridge_has_no_address_outside_the_run_and_a_leaked_token_opens_nothing() {
    // The fence leaks the token and what it knows of the bridge into the
    // workdir, then waits until the test has looked from outside.
    let llm = LlmServer::start(vec![
        Reply::stream_text(&[
            "```bash:execute\necho \"$AGENTD_BRIDGE_TOKEN\" > token; env | grep AGENTD_ > env.txt\n\
             for i in $(seq 300); do [ -e go ] && break; sleep 0.1; done\n\
             agentd tool call get-sum --json '{\"a\": 1, \"b\": 1}'\n```\n",
        ]),
        Reply::stream_text(&["Done."]),
    ]);
    let s = Setup::new(&llm.base_url(), "{profile: default}", "");
    let d = s.start();
    std::fs::write(s.inbox.join("go.md"), "go\n").expect("write note");
    let wd = s.workdir();
    let (token, env) = wait_for(Duration::from_secs(60), || {
        let token = std::fs::read_to_string(wd.join("token")).ok()?;
        let env = std::fs::read_to_string(wd.join("env.txt")).ok()?;
        (token.ends_with('\n') && env.ends_with('\n')).then(|| (token.trim().to_owned(), env))
    })
    .unwrap_or_else(|| panic!("the fence never wrote the token; log:\n{}", d.log_text()));
    assert_eq!(token.len(), 32, "{token}");
    // What the sandbox was told names a descriptor, not a place: nothing
    // a process outside the run could open or connect to.
    assert!(env.contains("AGENTD_BRIDGE_FD="), "{env}");
    assert!(!env.contains('/'), "no path to the bridge: {env}");
    let sockets: Vec<_> = walk(&d.state_dir)
        .into_iter()
        .filter(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        })
        .collect();
    assert_eq!(
        sockets,
        vec![d.state_dir.join("agentd.sock")],
        "the only socket is the control socket, which checks uids"
    );
    // With the token in hand, a process outside the run has no descriptor:
    // `agentd tool call` there cannot reach anything.
    let outside = crate::support::agentd_cmd(&["tool", "call", "get-sum", "--json", r#"{"a": 2, "b": 3}"#])
        .env("AGENTD_BRIDGE_TOKEN", &token)
        .env("AGENTD_BRIDGE_FD", "3")
        .output()
        .expect("agentd tool call");
    assert!(!outside.status.success());
    std::fs::write(wd.join("go"), "").expect("release the fence");

    let t = wait_for(Duration::from_secs(60), || {
        tasks(&d.state_dir).into_iter().find(|t| t.state.is_final())
    })
    .expect("task ends");
    assert_eq!(t.state, TaskState::Succeeded, "{t:#?}");
    let steps = ledger(&d.state_dir).steps(t.id).unwrap_or_default();
    // Only the call from inside went through, and only it is journaled.
    let fences = fence_results(&steps);
    assert!(fences[0].contains("The sum of 1 and 1 is 2"), "{}", fences[0]);
    assert_eq!(bridge_steps(&steps).len(), 1, "{steps:#?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn awkward_tools() -> Vec<ToolInfo> {
    let hostile = "--- \"quotes\" 'single' \\ back\\slash\n---\nname: evil\n\u{0}\u{7}\u{1b}[31m \u{2028} é 😀 \"\"\" ''' #: {x} [y] &a *b !tag";
    let schema = json!({
        "type": "object",
        "properties": {
            "opt": {"type": "string", "description": hostile},
            "class": {"type": "integer"},
            "2x": {"type": "number"},
            "naïve-key": {"type": ["boolean", "null"]},
            "_agentd_args": {"type": "object"},
        },
        "required": ["class", "2x"],
    });
    [
        "get-sum",
        "class",
        "2fast",
        "naïve",
        "print",
        "ToolError",
        "None",
        "",
        "get_sum",
        "a\"b'c\\d",
        "\u{1F600}",
    ]
    .iter()
    .map(|name| ToolInfo {
        name: (*name).to_owned(),
        server: "weird: \"server\"\n---".into(),
        tool: (*name).to_owned(),
        description: hostile.into(),
        input_schema: schema.clone(),
    })
    .collect()
}

#[test]
fn generated_bindings_for_awkward_tool_names_compile_and_import_and_skill_md_front_matter_parses() {
    let dir = tempdir();
    let mut g = generate::Generated::new(dir.path().to_path_buf());
    let server = "weird: \"server\"\n---".to_owned();
    assert!(g.sync(std::slice::from_ref(&server), &awkward_tools()).expect("sync"));
    let skill = &g.skills()[0];
    let py = skill.dir.join("mcp_weird-server".replace('-', "_") + ".py");
    assert!(py.is_file(), "{:?}", std::fs::read_dir(&skill.dir).map(|d| d.count()));

    let compiled = std::process::Command::new("python3")
        .args(["-m", "py_compile"])
        .arg(&py)
        .output()
        .expect("python3");
    assert!(compiled.status.success(), "{}", stderr(&compiled));
    // Importing runs every def and evaluates nothing user-given; then list
    // the functions and check required parameters precede optional ones.
    let check = "import inspect, mcp_weird_server as m\n\
                 fs = [n for n, f in vars(m).items() if inspect.isfunction(f) and not n.startswith('_agentd')]\n\
                 print(len(fs))\n\
                 sig = inspect.signature(m.get_sum)\n\
                 print(' '.join(p.name + ('?' if p.default is None else '') for p in sig.parameters.values()))\n\
                 print(m.get_sum.__doc__.splitlines()[0])";
    let imported = std::process::Command::new("python3")
        .args(["-c", check])
        .env("PYTHONPATH", &skill.dir)
        .output()
        .expect("python3");
    assert!(imported.status.success(), "{}", stderr(&imported));
    let out = stdout(&imported);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "11", "one function per tool: {out}");
    // Properties come in key order; required ones first.
    assert_eq!(lines[1], "t_2x class_ t__agentd_args? na_ve_key? opt?", "{out}");
    assert!(lines[2].starts_with("--- \"quotes\" 'single' \\ back\\slash"), "{out}");

    // The front matter is valid YAML and a valid skill.
    let md = skill.dir.join(skills::SKILL_FILE);
    let text = std::fs::read_to_string(&md).expect("SKILL.md");
    let parsed = skills::parse_skill(&skill.dir, &md, &text).unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert_eq!(parsed.name, "mcp-weird-server");
    assert!(
        parsed.description.contains("weird: \"server\""),
        "{}",
        parsed.description
    );
}

#[test]
fn agentd_check_reports_a_broken_skill_md_with_file_and_line() {
    let dir = tempdir();
    write(
        dir.path(),
        "skills/notes/SKILL.md",
        "---\nname: notes\ndescription: [oops\n---\n",
    );
    write(dir.path(), "skills/other/SKILL.md", "---\nname: other\n---\nbody\n");
    let config = write(
        dir.path(),
        "agentd.yaml",
        "agents:\n  - name: a\n    model: m\n    skills: [skills/notes, skills/other, skills/missing]\n",
    );
    let out = agentd(&["check", config.to_str().unwrap_or_default()]);
    assert!(!out.status.success());
    let err = stderr(&out) + &stdout(&out);
    let notes = dir.path().join("skills/notes/SKILL.md");
    let other = dir.path().join("skills/other/SKILL.md");
    // The unclosed list is found where the front matter ends.
    assert!(
        err.contains(&format!("{}:4:1: YAML syntax error", notes.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:2:1: description: missing required field", other.display())),
        "{err}"
    );
    assert!(
        err.contains("skill directory") && err.contains("missing does not exist"),
        "{err}"
    );
}

fn shipped(skill: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("skills").join(skill)
}

#[test]
fn the_shipped_skills_are_valid_and_the_example_config_checks() {
    for name in ["markdown-notes", "data-summary"] {
        let dir = shipped(name);
        let md = dir.join(skills::SKILL_FILE);
        let text = std::fs::read_to_string(&md).expect("SKILL.md");
        let s = skills::parse_skill(&dir, &md, &text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(s.name, name);
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/skills.yaml");
    let out = agentd(&["check", example.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains("  skill data-summary: ") && summary.contains("  skill markdown-notes: "),
        "{summary}"
    );
}

/// Runs a shipped skill's script the way the model does: in a sandbox,
/// with the skill directory read-only and the workdir writable.
fn run_in_sandbox(backend: agentd::sandbox::Backend, skill: &str, script: &str) -> agentd::sandbox::RunOutcome {
    let wd = tempdir();
    let policy = agentd::config::resolve_sandbox_profile("default", Some(Path::new("/nonexistent")))
        .map(|(p, _)| agentd::sandbox::SandboxPolicy { backend, ..p })
        .expect("default profile");
    crate::support::give_to_sandbox_user(wd.path());
    let exposed = agentd::sandbox::Exposed {
        read_only: vec![shipped(skill)],
        env: vec![("SKILL".into(), shipped(skill).display().to_string())],
        ..Default::default()
    };
    let argv = vec!["sh".to_string(), "-c".into(), script.into()];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt
        .block_on(agentd::sandbox::run(&policy, wd.path(), &argv, &exposed))
        .expect("sandbox run");
    // Keep the workdir until the run is over.
    drop(wd);
    out
}

#[test]
fn markdown_notes_adds_searches_and_indexes_notes_inside_the_sandbox() {
    for backend in [agentd::sandbox::Backend::Landlock, agentd::sandbox::Backend::Bwrap] {
        let o = run_in_sandbox(
            backend,
            "markdown-notes",
            "set -e; n=\"python3 $SKILL/scripts/notes.py\"\n\
             $n add decisions 'Use SQLite' 'Because WAL mode lets readers in.'\n\
             echo 'Ring Bob on Monday' | $n add todo 'Call Bob' -\n\
             $n search wal readers; $n list; cat notes/INDEX.md\n\
             $n add ../escape t t || echo \"refused=$?\"\n\
             touch $SKILL/x 2>/dev/null || echo skill-read-only",
        );
        assert!(o.success(), "{backend:?}: {o:?}");
        let out = &o.stdout;
        assert!(
            out.contains("decisions: ") && out.contains("Use SQLite -- Because WAL"),
            "{out}"
        );
        assert!(out.contains("decisions (1 entries)\ntodo (1 entries)"), "{out}");
        assert!(out.contains("- [todo](todo.md)"), "{out}");
        assert!(out.contains("refused=2") && out.contains("skill-read-only"), "{out}");
    }
}

#[test]
fn data_summary_reports_types_missing_values_and_statistics() {
    let o = run_in_sandbox(
        agentd::sandbox::Backend::Landlock,
        "data-summary",
        "printf 'name;age;city\\nann;31;Oslo\\nbob;;Rome\\ncid;40;Oslo\\n' > people.csv\n\
         printf '{\"items\": [{\"n\": 1.5, \"ok\": true}, {\"n\": 2.5, \"ok\": false}, {\"ok\": true}]}' > items.json\n\
         python3 $SKILL/scripts/summarize.py people.csv --json; echo ---\n\
         python3 $SKILL/scripts/summarize.py items.json",
    );
    assert!(o.success(), "{o:?}");
    let (json_part, text_part) = o.stdout.split_once("---\n").expect("two reports");
    let s: Value = serde_json::from_str(json_part).expect("JSON report");
    assert_eq!(s["rows"], 3);
    let age = &s["columns"][1];
    assert_eq!(
        (age["name"].as_str(), age["type"].as_str()),
        (Some("age"), Some("integer"))
    );
    assert_eq!((age["missing"].as_u64(), age["mean"].as_f64()), (Some(1), Some(35.5)));
    assert_eq!(s["columns"][2]["top"][0], json!(["Oslo", 2]));
    assert!(text_part.contains("items.json: 3 rows, 2 columns"), "{text_part}");
    assert!(
        text_part.contains("n (number), missing 1") && text_part.contains("mean 2 "),
        "{text_part}"
    );
    assert!(text_part.contains("ok (boolean)"), "{text_part}");
}

/// A bridge as the agent child runs it, served by a one-worker runtime;
/// this test process is the caller, holding a dialer made for its own uid.
struct BridgeHarness {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    dialer: std::os::fd::OwnedFd,
    bridge: Option<agentd::agent::bridge::Bridge>,
    journal: tokio::sync::mpsc::UnboundedReceiver<agentd::protocol::FromChild>,
}

impl BridgeHarness {
    fn start(servers: &[agentd::config::McpServerSpec], limits: agentd::config::BridgeSpec) -> BridgeHarness {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempdir();
        let (events, _rx) = tokio::sync::mpsc::channel(16);
        let hub = std::sync::Arc::new(rt.block_on(agentd::mcp::McpHub::start(servers, &[], events)));
        let (outbox, journal) = agentd::agent::Outbox::channel();
        let (bridge, dialer) = {
            let _guard = rt.enter();
            let bridge = agentd::agent::bridge::Bridge::start(hub, limits, outbox);
            let dialer = bridge.dialer(nix::unistd::geteuid().as_raw()).expect("dialer");
            (bridge, dialer)
        };
        BridgeHarness {
            rt,
            _dir: dir,
            dialer,
            bridge: Some(bridge),
            journal,
        }
    }

    fn call(&self, token: &str, tool: &str, args: Value) -> agentd::agent::bridge::Reply {
        client::call(
            std::os::fd::AsFd::as_fd(&self.dialer),
            token,
            tool,
            args.as_object().cloned().unwrap_or_default(),
        )
        .expect("bridge answers")
    }

    fn bridge(&self) -> &agentd::agent::bridge::Bridge {
        self.bridge.as_ref().expect("bridge")
    }
}

impl Drop for BridgeHarness {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.bridge.take();
    }
}

fn error_of(r: &agentd::agent::bridge::Reply) -> &str {
    assert!(!r.ok, "{r:?}");
    r.error.as_deref().unwrap_or("")
}

#[test]
fn the_bridge_takes_only_the_running_tasks_token_and_journals_with_its_lease() {
    let mut h = BridgeHarness::start(&[], Default::default());
    assert!(error_of(&h.call("guess", "get-sum", json!({}))).contains("no task is running"));

    let token = h.bridge().begin(TaskId(7), &test_lease(7)).expect("token");
    assert!(error_of(&h.call("guess", "get-sum", json!({}))).contains("wrong or expired token"));
    assert!(h.journal.try_recv().is_err(), "unauthenticated calls are not journaled");

    // This agent has no tools at all: nothing is callable.
    assert!(error_of(&h.call(&token, "get-sum", json!({}))).contains("unknown tool \"get-sum\""));
    match h.journal.try_recv() {
        Ok(agentd::protocol::FromChild::Step { task, lease, step }) => {
            assert_eq!(
                (task.0, lease.to_string(), step.kind.as_str()),
                (7, "a:1:7".to_owned(), "bridge")
            );
            assert_eq!(step.payload["name"], "get-sum");
        }
        other => panic!("expected a bridge step, got {other:?}"),
    }

    h.bridge().end();
    assert!(error_of(&h.call(&token, "get-sum", json!({}))).contains("no task is running"));
}

#[test]
fn the_bridge_replaces_an_oversize_reply_with_an_error_and_times_out_slow_calls() {
    let limits = agentd::config::BridgeSpec {
        max_reply: 160,
        call_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let h = BridgeHarness::start(&[crate::support::mcp::server_everything("everything")], limits);
    let token = h.bridge().begin(TaskId(1), &test_lease(1)).expect("token");
    let big = h.call(&token, "echo", json!({"message": "x".repeat(200)}));
    assert!(error_of(&big).contains("bridge.max_reply"), "{big:?}");
    let slow = h.call(
        &token,
        "trigger-long-running-operation",
        json!({"duration": 5, "steps": 1}),
    );
    assert!(
        error_of(&slow).contains("timed out after 300ms (bridge.call_timeout)"),
        "{slow:?}"
    );
    // A small reply still fits.
    let ok = h.call(&token, "get-sum", json!({"a": 1, "b": 2}));
    assert!(ok.ok && ok.text.as_deref().unwrap_or("").contains('3'), "{ok:?}");
}
