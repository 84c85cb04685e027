//! Overhead of running `true` under each backend, as `sandbox::run` does it
//! for a fence: p50 and p99 over many runs, plus a bare `fork+exec` for
//! reference. Targets (2 cores): landlock <= 3 ms, bwrap <= 8 ms at p50.
//!
//! `cargo bench --bench sandbox` (set SANDBOX_BENCH_RUNS to change the count).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic

use std::path::Path;
use std::time::{Duration, Instant};

use agentd::sandbox::{self, Backend, SandboxPolicy};

fn policy(backend: Backend) -> SandboxPolicy {
    let text = include_str!("../../sandbox/default.yaml");
    let mut p = agentd::config::load_sandbox_profile_str(Path::new("sandbox/default.yaml"), text)
        .expect("shipped default profile decodes");
    p.backend = backend;
    sandbox::helper::set_helper_exe(env!("CARGO_BIN_EXE_agentd").into());
    p
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<10} n={:<5} p50={:>7.3} ms  p99={:>7.3} ms  min={:>7.3} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(samples[0]),
    );
}

fn main() {
    let runs: usize = std::env::var("SANDBOX_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let wd = tempfile::tempdir().expect("tempdir");
    // Sandboxed code never runs as root: as root, give the workdir to an
    // unprivileged user, as agentd does with an agent's workdir.
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(wd.path(), Some(64_998), Some(64_998)).expect("chown workdir");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let argv = vec!["true".to_string()];
    println!(
        "sandbox overhead: `true`, {runs} runs each, landlock ABI {}",
        sandbox::landlock::kernel_abi()
    );

    let mut bare = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let st = std::process::Command::new("true").status().expect("spawn true");
        assert!(st.success());
        bare.push(t.elapsed());
    }
    report("fork+exec", bare);

    for backend in [Backend::None, Backend::Landlock, Backend::Bwrap, Backend::BwrapLandlock] {
        let p = policy(backend);
        let mut samples = Vec::with_capacity(runs);
        // One warm-up run: page cache, dynamic loader.
        rt.block_on(sandbox::run(&p, wd.path(), &argv, &Default::default()))
            .expect("warm-up");
        for _ in 0..runs {
            let t = Instant::now();
            let o = rt
                .block_on(sandbox::run(&p, wd.path(), &argv, &Default::default()))
                .expect("sandbox run");
            samples.push(t.elapsed());
            assert!(o.success(), "{backend:?}: {o:?}");
        }
        report(backend.name(), samples);
    }
}
