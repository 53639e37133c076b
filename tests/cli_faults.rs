//! Crashing trials through the real CLI: injected panics ([chaos]) are
//! restarted from their last checkpoint, and trials that crash too often
//! fail with their error while the sweep goes on.

mod common;

use std::collections::BTreeMap;

use common::*;

fn chaos_config(name: &str, probability: f64, max_restarts: u32) -> String {
    synthetic_config(
        name,
        &format!(
            r#"max_trials = 6
concurrency = 2
{SYNTHETIC_DATA}
{MLP_MODEL}
[train]
lr = {{ loguniform = [1e-3, 1e-2] }}
max_epochs = 6

[fault]
max_restarts = {max_restarts}
checkpoint_every = 1
restart_backoff_ms = 10

[chaos]
panic_probability = {probability}
"#
        ),
    )
}

#[test]
fn crashed_trials_resume_from_their_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_ok(tmp.path(), &chaos_config("chaos", 0.3, 20));
    let status = status_json(&dir);
    let trials = status["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    assert!(trials.iter().all(|t| t["status"] == "completed" && t["epochs"] == 6), "{status}");
    let restarted: u64 = trials.iter().map(|t| t["restarts"].as_u64().unwrap()).sum();
    assert!(restarted > 0, "with p = 0.3 over 36 epochs some trial must have crashed");

    // Per trial and attempt, the epochs reported.
    let mut attempts: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
    for l in results(&dir) {
        let key = (l["trial"].as_u64().unwrap(), l["attempt"].as_u64().unwrap());
        attempts.entry(key).or_default().push(l["epoch"].as_u64().unwrap());
    }
    let mut resumed_past_one = false;
    for ((trial, attempt), epochs) in &attempts {
        // Within an attempt, epochs count up by one.
        assert!(epochs.windows(2).all(|w| w[1] == w[0] + 1), "trial {trial} attempt {attempt}: {epochs:?}");
        if *attempt == 0 {
            assert_eq!(epochs[0], 1);
            continue;
        }
        // A restart continues after the last checkpointed epoch: the crash
        // came during the epoch after the previous attempt's last report
        // (every reported epoch was checkpointed), so nothing is re-run and
        // nothing is lost.
        let before = attempts.range((*trial, 0)..(*trial, *attempt)).rev().find_map(|(_, e)| e.last().copied());
        assert_eq!(epochs[0], before.unwrap_or(0) + 1, "trial {trial} attempt {attempt} did not continue");
        resumed_past_one |= epochs[0] > 1;
    }
    assert!(resumed_past_one, "no restart continued past epoch 1: {attempts:?}");
    let log = std::fs::read_to_string(dir.join("gauntlet.log")).unwrap();
    assert!(log.contains("restarting from the last checkpoint"), "{log}");
}

#[test]
fn trials_that_keep_crashing_fail_with_their_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "doomed.toml", &chaos_config("doomed", 1.0, 2));
    let dir = tmp.path().join("run");
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "a sweep whose every trial failed exits 4: {}", stderr(&o));
    let said = stdout(&o);
    assert!(said.contains("    6 x ") && said.contains("injected panic"), "one reason, counted: {said}");
    let status = status_json(&dir);
    let trials = status["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6, "the sweep went on after failures");
    for t in trials {
        assert_eq!(t["status"], "failed", "{t}");
        assert_eq!(t["restarts"], 2, "{t}");
        let error = t["error"].as_str().unwrap();
        assert!(error.contains("chaos: injected panic"), "{error}");
        assert!(error.contains("gave up after 2 restarts"), "{error}");
    }
    // p = 1 crashes every attempt in its first epoch: nothing was reported.
    assert!(results(&dir).is_empty());
    assert!(trials.iter().all(|t| t["epochs"] == 0));
}
