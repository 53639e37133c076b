//! Real signals on `gauntlet run`: SIGINT and SIGTERM stop the sweep
//! gracefully; no trial is left `running`.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

fn long_config() -> String {
    synthetic_config(
        "long",
        &format!(
            r#"max_trials = 10
concurrency = 2
{SYNTHETIC_DATA}
{MLP_MODEL}
[train]
max_epochs = 100000
"#
        ),
    )
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("gauntlet did not stop within {limit:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn interrupted_by(signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "long.toml", &long_config());
    let out = tmp.path().join("run");
    let mut guard = spawn_run(&cfg, &out);
    let child = &mut guard.0;
    // Wait until two trials are training (each has reported twice).
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap_or_default();
        let mut epochs = std::collections::BTreeMap::new();
        for l in lines.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            epochs.insert(l["trial"].as_u64().unwrap(), l["epoch"].as_u64().unwrap());
        }
        if epochs.values().filter(|&&e| e >= 2).count() == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "trials never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = wait(child, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let mut out_text = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out_text).unwrap();
    assert!(out_text.contains("gauntlet resume"), "says how to resume: {out_text}");

    let doc = status_json(&out);
    assert_eq!(doc["finished"], false);
    let trials = doc["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2, "no trial started after the signal");
    for t in trials {
        assert_eq!(t["status"], "paused", "{t}");
        let epochs = t["epochs"].as_u64().unwrap();
        assert!(epochs >= 2);
        // The stopping trial checkpointed its last reported epoch.
        let ckpt = out.join(format!("trials/{}/ckpt-{epochs:06}/weights.safetensors", t["id"]));
        assert!(ckpt.is_file(), "missing {}", ckpt.display());
    }
    // Every report up to the stop is on disk; the run can be resumed.
    let epochs: u64 = trials.iter().map(|t| t["epochs"].as_u64().unwrap()).sum();
    assert_eq!(results(&out).len() as u64, epochs);
}

#[test]
fn sigint_pauses_running_trials() {
    interrupted_by("-INT");
}

#[test]
fn sigterm_pauses_running_trials() {
    interrupted_by("-TERM");
}
