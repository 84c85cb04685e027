//! Fence parsing (every form and edge) and the fence runner.

use std::path::Path;
use std::time::Duration;

use agentd::fence::{self, Block, FenceOutcome, Lang};
use agentd::sandbox::SandboxPolicy;
use proptest::prelude::*;

fn exec(lang: Lang, code: &str) -> (Lang, String) {
    (lang, code.to_string())
}

/// The execute blocks of `text`, as (lang, code).
fn executes(text: &str) -> Vec<(Lang, String)> {
    fence::parse(text)
        .into_iter()
        .filter_map(|b| match b {
            Block::Execute { lang, code, .. } => Some((lang, code)),
            _ => None,
        })
        .collect()
}

#[test]
fn bash_sh_and_python_execute_fences_are_found_in_order() {
    let text = "Let me look.\n```bash:execute\nls -la\n```\nthen\n```sh:execute\necho $0\n```\n\
                ```python:execute\nprint(1)\n```\n";
    assert_eq!(
        executes(text),
        vec![
            exec(Lang::Bash, "ls -la\n"),
            exec(Lang::Sh, "echo $0\n"),
            exec(Lang::Python, "print(1)\n")
        ]
    );
}

#[test]
fn python3_is_an_alias_for_python() {
    assert_eq!(executes("```python3:execute\nx\n```"), vec![exec(Lang::Python, "x\n")]);
}

#[test]
fn plain_fences_are_text_and_never_run() {
    let text = "```bash\nrm -rf /\n```\n```\nplain\n```\n~~~python\nprint(2)\n~~~\n```json\n{}\n```\n";
    assert_eq!(fence::parse(text), vec![]);
}

#[test]
fn create_fence_names_the_file() {
    let blocks = fence::parse("```notes/todo.md:create\n# Todo\n- a\n```\n");
    match &blocks[..] {
        [Block::Create { path, content, span }] => {
            assert_eq!(path, "notes/todo.md");
            assert_eq!(content, "# Todo\n- a\n");
            assert_eq!(span.line, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_longer_fence_contains_a_shorter_one_in_a_heredoc() {
    let text = "````bash:execute\ncat > README.md <<'EOF'\n```sh\necho inner\n```\nEOF\n````\nafter\n";
    assert_eq!(
        executes(text),
        vec![exec(
            Lang::Bash,
            "cat > README.md <<'EOF'\n```sh\necho inner\n```\nEOF\n"
        )]
    );
}

#[test]
fn tilde_fences_close_only_with_tildes() {
    let text = "~~~bash:execute\necho a\n```\necho b\n~~~\n";
    assert_eq!(executes(text), vec![exec(Lang::Bash, "echo a\n```\necho b\n")]);
}

#[test]
fn a_closing_fence_may_be_longer_but_not_shorter() {
    assert_eq!(
        executes("````sh:execute\nx\n```\ny\n`````\n"),
        vec![exec(Lang::Sh, "x\n```\ny\n")]
    );
}

#[test]
fn a_closing_fence_cannot_carry_an_info_string() {
    assert_eq!(
        executes("```sh:execute\nx\n```bash\ny\n```\n"),
        vec![exec(Lang::Sh, "x\n```bash\ny\n")]
    );
}

#[test]
fn crlf_line_endings_are_normalised() {
    let text = "intro\r\n```bash:execute\r\necho a\r\necho b\r\n```\r\nafter\r\n";
    assert_eq!(executes(text), vec![exec(Lang::Bash, "echo a\necho b\n")]);
}

#[test]
fn indented_fences_lose_their_indentation() {
    let text = "1. First:\n   ```bash:execute\n   echo one\n     echo two\n   ```\n2. Then:\n    \
                ```sh:execute\n    echo deep\n    ```\n";
    assert_eq!(
        executes(text),
        vec![
            exec(Lang::Bash, "echo one\n  echo two\n"),
            exec(Lang::Sh, "echo deep\n")
        ]
    );
}

#[test]
fn an_unclosed_fence_is_reported_not_run() {
    let blocks = fence::parse("ok\n```bash:execute\nrm -rf important\n");
    match &blocks[..] {
        [Block::Unclosed { tag, span }] => {
            assert_eq!(tag, "bash:execute");
            assert_eq!(span.line, 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unclosed_plain_fence_is_just_text() {
    assert_eq!(fence::parse("```\nno end"), vec![]);
}

#[test]
fn an_unknown_language_is_invalid() {
    match &fence::parse("```ruby:execute\nputs 1\n```\n")[..] {
        [Block::Invalid { reason, .. }] => assert!(reason.contains("ruby"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_info_string_may_carry_more_words() {
    assert_eq!(
        executes("```bash:execute title=\"x\"\necho\n```"),
        vec![exec(Lang::Bash, "echo\n")]
    );
}

#[test]
fn inline_triple_backticks_do_not_open_a_fence() {
    assert_eq!(
        fence::parse("use ```bash:execute``` blocks\n```bash:execute\nid\n```\n").len(),
        1
    );
}

#[test]
fn xml_invoke_executes_with_command_or_code() {
    let text = "<function_calls>\n<invoke name=\"bash:execute\">\n<parameter name=\"command\">echo 'a < b' && ls</parameter>\n\
                </invoke>\n<invoke name=\"python:execute\"><parameter name=\"code\">\nprint(1)\n</parameter></invoke>\n\
                </function_calls>";
    assert_eq!(
        executes(text),
        vec![exec(Lang::Bash, "echo 'a < b' && ls"), exec(Lang::Python, "print(1)")]
    );
}

#[test]
fn xml_invoke_creates_with_path_and_content() {
    let text = "<invoke name=\"create\"><parameter name=\"path\">a/b.txt</parameter>\
                <parameter name=\"content\">hello\nworld</parameter></invoke>\
                <invoke name='c.md:create'><parameter name='content'>x</parameter></invoke>";
    let got: Vec<(String, String)> = fence::parse(text)
        .into_iter()
        .map(|b| match b {
            Block::Create { path, content, .. } => (path, content),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![("a/b.txt".into(), "hello\nworld".into()), ("c.md".into(), "x".into())]
    );
}

#[test]
fn xml_invoke_without_its_parameter_is_invalid_and_unclosed_is_reported() {
    let blocks = fence::parse(
        "<invoke name=\"bash:execute\"><parameter name=\"cmd\">x</parameter></invoke>\n\
         <invoke name=\"sh:execute\"><parameter name=\"command\">echo cut off",
    );
    match &blocks[..] {
        [Block::Invalid { reason, .. }, Block::Unclosed { tag, span }] => {
            assert!(reason.contains("command"), "{reason}");
            assert_eq!(tag, "sh:execute");
            assert_eq!(span.line, 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fences_and_xml_blocks_keep_document_order_and_positions() {
    let text = "a\n<invoke name=\"sh:execute\"><parameter name=\"command\">one</parameter></invoke>\n\
                ```bash:execute\ntwo\n```\n<invoke name=\"sh:execute\"><parameter name=\"command\">three</parameter></invoke>";
    let blocks = fence::parse(text);
    let codes: Vec<_> = blocks
        .iter()
        .map(|b| match b {
            Block::Execute { code, span, .. } => (code.trim().to_string(), span.line),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(codes, vec![("one".into(), 2), ("two".into(), 3), ("three".into(), 6)]);
    for b in &blocks {
        let s = b.span();
        assert!(s.start < s.end && s.end <= text.len());
    }
    assert!(text[blocks[1].span().start..].starts_with("```bash:execute"));
}

#[test]
fn invoke_inside_a_plain_fence_is_an_example_not_a_call() {
    let text = "```xml\n<invoke name=\"bash:execute\"><parameter name=\"command\">rm -rf x</parameter></invoke>\n```\n";
    assert_eq!(fence::parse(text), vec![]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_parser_never_panics_on_arbitrary_text(text in any::<String>()) {
        for b in fence::parse(&text) {
            let s = b.span();
            prop_assert!(s.start <= s.end && s.end <= text.len());
        }
    }

    #[test]
    fn the_parser_never_panics_on_fence_shaped_text(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("```".to_string()), Just("````".to_string()), Just("~~~".to_string()),
                Just("bash:execute".to_string()), Just("x.md:create".to_string()), Just(":create".to_string()),
                Just("\n".to_string()), Just("\r\n".to_string()), Just("   ".to_string()), Just("\t".to_string()),
                Just("<invoke name=\"".to_string()), Just("\">".to_string()), Just("</invoke>".to_string()),
                Just("<parameter name='command'>".to_string()), Just("</parameter>".to_string()),
                Just("é€😀".to_string()), "[a-z ]{0,5}",
            ],
            0..40,
        )
    ) {
        let text: String = parts.concat();
        let blocks = fence::parse(&text);
        let mut last_start = 0;
        for b in &blocks {
            let s = b.span();
            prop_assert!(s.start <= s.end && s.end <= text.len());
            prop_assert!(s.start >= last_start, "document order");
            last_start = s.start;
        }
    }
}

fn policy() -> SandboxPolicy {
    let text = include_str!("../../sandbox/default.yaml");
    let mut p = agentd::config::load_sandbox_profile_str(Path::new("sandbox/default.yaml"), text).unwrap();
    p.timeout = Duration::from_secs(20);
    p
}

#[tokio::test(flavor = "current_thread")]
async fn execute_runs_blocks_in_order_and_reports_each() {
    let wd = crate::support::sandbox_workdir("fence-");
    let reply = "```data/in.txt:create\nhello\n```\n```bash:execute\ntr a-z A-Z < data/in.txt; echo oops >&2; exit 3\n```\n\
                 ```python:execute\nprint(open('data/in.txt').read().strip()[::-1])\n```\n```bash:execute\nnever closed\n";
    let blocks = fence::parse(reply);
    let results = fence::execute(&blocks, &policy(), wd.path(), &Default::default()).await;
    assert_eq!(results.len(), 4);
    assert_eq!(
        std::fs::read_to_string(wd.path().join("data/in.txt")).unwrap(),
        "hello\n"
    );
    match &results[1].outcome {
        FenceOutcome::Ran(o) => {
            assert_eq!(
                (o.exit_code, o.stdout.as_str(), o.stderr.as_str()),
                (Some(3), "HELLO\n", "oops\n")
            );
        }
        other => panic!("{other:?}"),
    }
    let rendered: Vec<String> = results.iter().map(|r| r.render_for_model()).collect();
    assert!(rendered[0].contains("created data/in.txt (6 bytes)"), "{}", rendered[0]);
    assert!(rendered[1].contains("exit code 3"), "{}", rendered[1]);
    assert!(
        rendered[1].contains("stdout:\nHELLO\n") && rendered[1].contains("stderr:\noops\n"),
        "{}",
        rendered[1]
    );
    assert!(
        rendered[1].contains("duration ") && rendered[1].contains("timed_out: false"),
        "{}",
        rendered[1]
    );
    assert!(rendered[2].contains("olleh"), "{}", rendered[2]);
    assert!(
        rendered[3].contains("not run") && rendered[3].contains("not closed"),
        "{}",
        rendered[3]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn render_reports_timeouts_and_cut_output() {
    let wd = crate::support::sandbox_workdir("fence-");
    let mut p = policy();
    p.timeout = Duration::from_secs(1);
    p.limits.output_bytes = 1024;
    let blocks = fence::parse("```bash:execute\nseq 1 100000; sleep 30\n```\n");
    let r = fence::execute(&blocks, &p, wd.path(), &Default::default()).await;
    let text = r[0].render_for_model();
    assert!(text.contains("timed out") && text.contains("timed_out: true"), "{text}");
    assert!(text.contains("output cut") && text.contains("agentd cut"), "{text}");
    assert!(
        text.contains("\n1\n2\n") && text.contains("100000\n"),
        "head and tail kept: {text}"
    );
    assert!(text.len() < 2048, "{} bytes", text.len());
}

#[test]
fn create_refuses_absolute_paths_dotdot_and_symlinks_out() {
    let wd = crate::support::sandbox_workdir("fence-");
    let outside = crate::support::sandbox_workdir("outside-");
    std::os::unix::fs::symlink(outside.path(), wd.path().join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("f"), wd.path().join("out-file")).unwrap();
    std::fs::create_dir(wd.path().join("sub")).unwrap();
    std::os::unix::fs::symlink("sub", wd.path().join("in")).unwrap();

    for bad in [
        "/etc/passwd",
        "../x",
        "a/../../x",
        "out/x",
        "out/deeper/x",
        "out-file",
        "",
        "sub",
    ] {
        let e = fence::create(wd.path(), bad, "x").unwrap_err();
        assert!(e.contains("refused") || e.contains("not a file"), "{bad}: {e}");
    }
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing may land outside"
    );

    // A symlink that stays inside is fine, and so are new directories.
    assert!(fence::create(wd.path(), "in/ok.txt", "ok").is_ok());
    assert_eq!(std::fs::read_to_string(wd.path().join("sub/ok.txt")).unwrap(), "ok");
    assert!(fence::create(wd.path(), "new/dir/f.txt", "x").is_ok());
    assert!(fence::create(wd.path(), "./dot.txt", "x").is_ok());
}

#[tokio::test(flavor = "current_thread")]
async fn a_sandbox_error_is_reported_to_the_model_not_raised() {
    let wd = crate::support::sandbox_workdir("fence-");
    let mut p = policy();
    p.read_only.push("relative/path".into());
    let r = fence::execute(
        &fence::parse("```sh:execute\ntrue\n```"),
        &p,
        wd.path(),
        &Default::default(),
    )
    .await;
    assert!(
        r[0].render_for_model().contains("not run: sandbox"),
        "{}",
        r[0].render_for_model()
    );
}

proptest! {
    #[test]
    fn any_code_without_fence_lines_round_trips(
        lines in proptest::collection::vec("[^`~\r\n]{0,30}", 0..20),
        ticks in 3usize..6,
    ) {
        let code: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let fence_line = "`".repeat(ticks);
        let text = format!("intro\n{fence_line}bash:execute\n{code}{fence_line}\noutro\n");
        prop_assert_eq!(executes(&text), vec![exec(Lang::Bash, &code)]);
    }
}

#[test]
fn created_files_belong_to_the_workdir_owner_so_sandboxed_code_can_edit_them() {
    use std::os::unix::fs::MetadataExt;
    let wd = crate::support::sandbox_workdir("fence-owner-");
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test hands the workdir to another uid: run as root"
    );
    std::os::unix::fs::chown(wd.path(), Some(64_999), Some(64_999)).unwrap();
    fence::create(wd.path(), "dir/notes.md", "x").unwrap();
    for p in ["dir", "dir/notes.md"] {
        let m = std::fs::metadata(wd.path().join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (64_999, 64_999), "{p}");
    }
}
