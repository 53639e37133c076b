//! Experiment stop rules through the real binary: `stop_at` (a metric
//! target), `epoch_budget` (epochs across trials) and `time_budget` each end
//! the sweep cleanly, and a run killed with SIGKILL and resumed keeps to
//! what was spent.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use gauntlet::journal::{self, Event};

fn config(name: &str, rules: &str, trials: u32, concurrency: u32, epoch_ms: u32) -> String {
    format!(
        r#"
[experiment]
name = "{name}"
seed = 5
max_trials = {trials}
concurrency = {concurrency}
{rules}
[model]
kind = "sleep"
epoch_ms = {epoch_ms}
quality = {{ uniform = [0.1, 0.9] }}
[train]
max_epochs = 5
"#
    )
}

fn summary(dir: &Path, cfg: &Path) -> (std::process::Output, serde_json::Value) {
    let o = run_in(dir, &["run", cfg.to_str().unwrap(), "--out", dir.join("run").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = serde_json::from_slice(&o.stdout).unwrap();
    (o, v)
}

/// (id, status, epochs) of every trial in a summary or `status --json`.
fn trials(v: &serde_json::Value) -> Vec<(u64, String, u64)> {
    v["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["status"].as_str().unwrap().to_owned(), t["epochs"].as_u64().unwrap()))
        .collect()
}

fn events(dir: &Path) -> Vec<Event> {
    journal::read(&dir.join(journal::JOURNAL_FILE)).unwrap().records.into_iter().map(|r| r.event).collect()
}

#[test]
fn stop_at_ends_the_sweep_once_a_trial_reaches_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "exp.toml", &config("target", "stop_at = 0.6", 200, 2, 5));
    let (_, s) = summary(tmp.path(), &cfg);
    let trials = s["trials"].as_array().unwrap();
    assert!(trials.len() < 200, "the sweep stopped early: {} trials", trials.len());
    assert!(s["stopped"].as_str().unwrap().contains("stop_at = 0.6"), "{}", s["stopped"]);
    assert!(s["best"]["best_metric"].as_f64().unwrap() >= 0.6);
    assert!(trials.iter().all(|t| t["status"] == "completed"), "running trials complete at their next report");
    let status = status_json(&tmp.path().join("run"));
    assert_eq!(status["finished"], true);
}

#[test]
fn the_epoch_budget_counts_every_epoch_and_survives_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let text = config("epochs", "epoch_budget = 23", 100, 1, 20);
    let cfg = write(tmp.path(), "exp.toml", &text);
    let (_, s) = summary(tmp.path(), &cfg);
    assert_eq!(results(&tmp.path().join("run")).len(), 23, "exactly the budget, at concurrency 1");
    assert!(s["stopped"].as_str().unwrap().contains("epoch budget (23 epochs)"));
    let expected = trials(&s);

    // Killed after 12 epochs and resumed: the same trials, epochs and statuses.
    let cfg = write(tmp.path(), "killed.toml", &text);
    let out = tmp.path().join("killed");
    let mut run = spawn_run(&cfg, &out);
    let start = Instant::now();
    while reported(&out) < 12 {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(2));
    }
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let o = gauntlet().args(["resume", out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(trials(&status_json(&out)), expected);
    // An epoch re-run after the kill is reported again, but counted once.
    assert!(results(&out).len() >= 23 && results(&out).len() <= 24, "{}", results(&out).len());
}

#[test]
fn the_time_budget_stops_the_sweep_and_counts_earlier_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let text = config("timed", "time_budget = \"3s\"", 1000, 2, 100);
    let cfg = write(tmp.path(), "exp.toml", &text);
    let out = tmp.path().join("run");
    let mut run = spawn_run(&cfg, &out);
    let start = Instant::now();
    while reported(&out) < 4 {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
    }
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let before = events(&out).len();
    let o = gauntlet().args(["resume", out.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["stopped"], "the time budget is spent");
    let all = events(&out);
    assert!(all[before..].contains(&Event::SweepResumed), "the resume is a new session");
    assert!(all.iter().any(|e| matches!(e, Event::BudgetSpent { .. })));
    assert!(s["trials"].as_array().unwrap().len() < 1000);
    let state = journal::replay(journal::read(&out.join(journal::JOURNAL_FILE)).unwrap().records, &out).unwrap();
    assert!(state.spent >= Duration::from_secs(3), "both sessions count: {:?}", state.spent);
    assert!(state.finished());
    let o = gauntlet().args(["resume", out.to_str().unwrap()]).output().unwrap();
    assert!(stdout(&o).contains("finished already"), "{}", stdout(&o));
}
