//! `gauntlet run` on synthetic data: real libtorch training, ASHA pruning,
//! the run directory, `gauntlet status`.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::*;
use serde_json::Value;

fn asha_config(name: &str) -> String {
    synthetic_config(
        name,
        &format!(
            r#"max_trials = 12
concurrency = 2
{SYNTHETIC_DATA}
{MLP_MODEL}
[train]
optimizer = {{ choice = ["adam", "sgd"] }}
lr = {{ loguniform = [1e-4, 5e-2] }}
batch_size = 64
max_epochs = 9

[scheduler]
kind = "asha"
grace_epochs = 1
reduction_factor = 3
"#
        ),
    )
}

#[test]
fn asha_sweep_completes_and_prunes_early() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_ok(tmp.path(), &asha_config("asha"));

    let status = status_json(&dir);
    let trials = status["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 12);
    for t in trials {
        for key in ["id", "status", "params", "epochs", "best_metric", "restarts", "error"] {
            assert!(t.get(key).is_some(), "status --json lacks `{key}`: {t}");
        }
        let s = t["status"].as_str().unwrap();
        assert!(s == "completed" || s == "pruned", "trial ended {s}: {t}");
        if s == "completed" {
            assert_eq!(t["epochs"], 9, "{t}");
        }
    }
    let pruned: Vec<&Value> = trials.iter().filter(|t| t["status"] == "pruned").collect();
    assert!(!pruned.is_empty(), "ASHA pruned nothing");
    assert!(pruned.iter().all(|t| t["epochs"].as_u64().unwrap() < 9));

    // A pruned trial stops at once: its prune decision is its last report.
    let lines = results(&dir);
    let mut last: BTreeMap<u64, &Value> = BTreeMap::new();
    for l in &lines {
        last.insert(l["trial"].as_u64().unwrap(), l);
    }
    for t in &pruned {
        let l = last[&t["id"].as_u64().unwrap()];
        assert_eq!(l["decision"], "prune", "{l}");
        assert_eq!(l["epoch"], t["epochs"]);
    }
    // Every epoch of every trial is in results.jsonl exactly once.
    let epochs: u64 = trials.iter().map(|t| t["epochs"].as_u64().unwrap()).sum();
    assert_eq!(lines.len() as u64, epochs);
    let keys: HashSet<(u64, u64)> =
        lines.iter().map(|l| (l["trial"].as_u64().unwrap(), l["epoch"].as_u64().unwrap())).collect();
    assert_eq!(keys.len(), lines.len());

    // Outputs: leaderboard, best model with params and a model description.
    let csv = std::fs::read_to_string(dir.join("leaderboard.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.starts_with("rank,trial,status,val_accuracy"));
    for f in ["best/params.json", "best/model.json", "best/weights.safetensors", "gauntlet.log", "config.toml"] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let best: Value = serde_json::from_slice(&std::fs::read(dir.join("best/trial.json")).unwrap()).unwrap();
    let top = trials.iter().map(|t| t["best_metric"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(best["best_metric"].as_f64().unwrap(), top);
    // It learned something: 3 classes, chance is 1/3.
    assert!(top > 0.6, "best accuracy {top}");
    assert_eq!(status["finished"], true);
}

#[test]
fn same_seed_gives_the_same_trials() {
    let tmp = tempfile::tempdir().unwrap();
    let config =
        asha_config("seeded").replace("max_trials = 12", "max_trials = 4").replace("max_epochs = 9", "max_epochs = 2");
    let a = status_json(&run_ok(tmp.path(), &config));
    let b = status_json(&run_ok(tmp.path(), &config));
    let params = |s: &Value| s["trials"].as_array().unwrap().iter().map(|t| t["params"].clone()).collect::<Vec<_>>();
    assert_eq!(params(&a), params(&b));
    let c = status_json(&run_ok(tmp.path(), &config.replace("seed = 3", "seed = 4")));
    assert_ne!(params(&a), params(&c));
}

#[test]
fn grid_search_visits_each_combination_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = synthetic_config(
        "grid",
        &format!(
            r#"max_trials = 100
concurrency = 2
{SYNTHETIC_DATA}
[model]
kind = "mlp"
hidden_units = {{ choice = [8, 16, 32] }}
[train]
optimizer = {{ choice = ["adam", "sgd"] }}
max_epochs = 1
[search]
algorithm = "grid"
"#
        ),
    );
    let status = status_json(&run_ok(tmp.path(), &config));
    let trials = status["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6, "3 x 2 combinations");
    let combos: HashSet<String> = trials.iter().map(|t| t["params"].to_string()).collect();
    assert_eq!(combos.len(), 6);
    assert!(trials.iter().all(|t| t["status"] == "completed"));
    // A grid larger than max_trials is cut short: validate and run say so.
    let cut = write(tmp.path(), "cut.toml", &config.replace("max_trials = 100", "max_trials = 4"));
    let o = run_in(tmp.path(), &["validate", cut.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("the grid has 6 combinations but experiment.max_trials = 4"), "{}", stderr(&o));
    let whole = write(tmp.path(), "whole.toml", &config);
    let o = run_in(tmp.path(), &["validate", whole.to_str().unwrap()]);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

#[test]
fn yaml_configs_run_with_the_same_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = r#"
experiment: { name: yaml, max_trials: 2, concurrency: 1 }
data: { source: synthetic, samples: 300, features: 6, classes: 2 }
model: { kind: mlp, hidden_units: { int: [4, 16] } }
train: { max_epochs: 2, lr: { loguniform: [0.001, 0.01] } }
"#;
    let cfg = write(tmp.path(), "exp.yaml", yaml);
    let out = tmp.path().join("run");
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: Value = serde_json::from_slice(&o.stdout).expect("--json prints one JSON document");
    assert_eq!(summary["trials"].as_array().unwrap().len(), 2);
    assert!(summary["best"]["best_metric"].as_f64().is_some());
    assert!(out.join("config.yaml").is_file());
}

#[test]
fn status_table_lists_every_trial() {
    let tmp = tempfile::tempdir().unwrap();
    let config =
        asha_config("table").replace("max_trials = 12", "max_trials = 3").replace("max_epochs = 9", "max_epochs = 1");
    let dir = run_ok(tmp.path(), &config);
    let o = gauntlet().args(["status", dir.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("table — 3 trials, finished"), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains("completed")).count(), 3, "{text}");
}

#[test]
fn refuses_to_overwrite_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config =
        asha_config("twice").replace("max_trials = 12", "max_trials = 1").replace("max_epochs = 9", "max_epochs = 1");
    let dir = run_ok(tmp.path(), &config);
    let cfg = tmp.path().join("exp-again.toml");
    std::fs::write(&cfg, &config).unwrap();
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already holds a run"), "{}", stderr(&o));
}

#[test]
fn a_reader_that_goes_away_ends_no_command_with_a_panic() {
    // `gauntlet status --json | head -c 10` panicked (exit 101): printing to a
    // closed pipe. Now the command ends as it would have, its output cut short.
    let tmp = tempfile::tempdir().unwrap();
    let config = "[experiment]\nname = \"pipe\"\nmax_trials = 3\n[model]\nkind = \"sleep\"\nepoch_ms = 1\n\
                  [train]\nmax_epochs = 2\n";
    let cfg = write(tmp.path(), "pipe.toml", config);
    for args in [vec!["run", cfg.to_str().unwrap(), "--out", "out"], vec!["status", "out", "--json"]] {
        let mut child = gauntlet()
            .args(&args)
            .current_dir(tmp.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before the first line
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
}
