//! What worker processes cost: the real binary, real processes, loopback.
//!
//! 1. Dispatch rate: no-op trials (`kind = "sleep"`, `epoch_ms = 0`, one
//!    report each) through 4 local workers: trials per second.
//! 2. Efficiency: 400 trials that sleep 0.2 s in 5 reports of 40 ms, over
//!    4 workers x 8 slots that join with `gauntlet worker`: the ideal is
//!    400 x 0.2 / 32 = 2.5 s.
//!
//! Times come from the journal (first trial start to last trial end), so
//! process start-up and libtorch loading are not counted; the wall time of
//! the whole command is printed beside them.
//!
//! `cargo bench --bench workers [-- --trials N]` (or `scripts/bench-workers`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gauntlet::journal::{self, Event};

const BIN: &str = env!("CARGO_BIN_EXE_gauntlet");
const SECRET: &str = "bench-secret";

fn config(name: &str, trials: u32, concurrency: u32, epoch_ms: u32, epochs: u32) -> String {
    format!(
        r#"[experiment]
name = "{name}"
max_trials = {trials}
concurrency = {concurrency}
[model]
kind = "sleep"
epoch_ms = {epoch_ms}
quality = {{ uniform = [0.0, 0.99] }}
[train]
max_epochs = {epochs}
[scheduler]
kind = "fifo"
[fault]
checkpoint_every = 1000000
"#
    )
}

/// (first start → last end) from the journal, and trials ended.
fn span(out: &Path) -> (Duration, usize) {
    let records = journal::read(&out.join(journal::JOURNAL_FILE)).expect("journal").records;
    let first = records.iter().find(|r| matches!(r.event, Event::TrialStarted { .. })).map(|r| r.at_ms).unwrap();
    let ends: Vec<u64> =
        records.iter().filter(|r| matches!(r.event, Event::TrialEnded { .. })).map(|r| r.at_ms).collect();
    (Duration::from_millis(ends.iter().max().unwrap() - first), ends.len())
}

fn run(config_text: &str, dir: &Path, extra: &[&str], workers: &[u32]) -> (Duration, Duration, usize) {
    let cfg = dir.join("exp.toml");
    std::fs::write(&cfg, config_text).unwrap();
    let out = dir.join("run");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let mut coord = Command::new(BIN)
        .args(["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("GAUNTLET_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut joined: Vec<Child> = workers
        .iter()
        .map(|slots| {
            Command::new(BIN)
                .args(["worker", "--join", &format!("127.0.0.1:{port}"), "--slots", &slots.to_string()])
                .env("GAUNTLET_SECRET", SECRET)
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let status = coord.wait().unwrap();
    let wall = started.elapsed();
    for w in &mut joined {
        let _ = w.wait();
    }
    assert!(status.success(), "the sweep failed: {status:?}");
    let (span, ended) = span(&out);
    (span, wall, ended)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let trials: u32 =
        args.iter().position(|a| a == "--trials").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(2000);

    let tmp = tempfile::tempdir().unwrap();
    let d1 = tmp.path().join("dispatch");
    std::fs::create_dir_all(&d1).unwrap();
    let (span1, wall1, n1) = run(&config("dispatch", trials, 4, 0, 1), &d1, &["--workers", "4"], &[]);
    println!(
        "dispatch: {n1} no-op trials over 4 local workers: {:.0} trials/s ({:.2?} first start to last end; {:.2?} wall with start-up)",
        n1 as f64 / span1.as_secs_f64(),
        span1,
        wall1
    );

    let d2 = tmp.path().join("efficiency");
    std::fs::create_dir_all(&d2).unwrap();
    let (span2, wall2, n2) = run(&config("efficiency", 400, 32, 40, 5), &d2, &["--workers", "0"], &[8, 8, 8, 8]);
    let ideal = 400.0 * 0.2 / 32.0;
    println!(
        "efficiency: {n2} trials x 0.2 s (5 reports) over 4 workers x 8 slots: {:.2?} against the ideal {ideal:.2} s: \
         {:.1}% efficient, {:.1}% overhead ({:.2?} wall with start-up)",
        span2,
        100.0 * ideal / span2.as_secs_f64(),
        100.0 * (span2.as_secs_f64() / ideal - 1.0),
        wall2
    );
}
