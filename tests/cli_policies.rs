//! Search and scheduling policies beyond random search and ASHA through the
//! real binary: Sobol points, median stopping and asynchronous Hyperband; a
//! run killed with SIGKILL and resumed ends exactly as an uninterrupted one
//! (concurrency 1), and each kind's table refuses the keys of another.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// `tables`: the `[search]` and `[scheduler]` sections.
fn config(name: &str, tables: &str) -> String {
    format!(
        r#"
[experiment]
name = "{name}"
seed = 11
max_trials = 14
concurrency = 1
[model]
kind = "sleep"
epoch_ms = 15
quality = {{ uniform = [0.1, 0.9] }}
[train]
max_epochs = 9
{tables}
"#
    )
}

/// (id, params, status, epochs) of every trial.
fn outcome(dir: &Path) -> Vec<(u64, String, String, u64)> {
    status_json(dir)["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_u64().unwrap(),
                t["params"].to_string(),
                t["status"].as_str().unwrap().to_owned(),
                t["epochs"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn run_and_kill(tmp: &Path, name: &str, config: &str, reports: usize) -> PathBuf {
    let cfg = write(tmp, &format!("{name}.toml"), config);
    let out = tmp.join(name);
    let mut guard = spawn_run(&cfg, &out);
    let start = Instant::now();
    while reported(&out) < reports {
        assert!(guard.0.try_wait().unwrap().is_none(), "{name}: ended before {reports} reports");
        assert!(start.elapsed() < Duration::from_secs(60), "{name}: too slow");
        std::thread::sleep(Duration::from_millis(2));
    }
    guard.0.kill().unwrap();
    guard.0.wait().unwrap();
    out
}

/// Runs `tables` to the end, then killed at three points and resumed: the
/// same trials, parameters, statuses and epochs. Returns the outcome.
fn resumes_exactly(kind: &str, tables: &str) -> Vec<(u64, String, String, u64)> {
    let tmp = tempfile::tempdir().unwrap();
    let reference = run_ok(tmp.path(), &config(kind, tables));
    let expected = outcome(&reference);
    assert_eq!(expected.len(), 14);
    // Early, in the middle, and near the end of the run.
    let total = reported(&reference);
    assert!(total > 20, "{kind}: {total} reports");
    for reports in [5, total / 2, total - 4] {
        let dir = run_and_kill(tmp.path(), &format!("{kind}-killed-{reports}"), &config(kind, tables), reports);
        let o = gauntlet().args(["resume", dir.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "resume after {reports} reports: {}", stderr(&o));
        assert_eq!(outcome(&dir), expected, "{kind}: killed after {reports} reports, resumed");
    }
    expected
}

#[test]
fn tpe_learns_from_finished_and_pruned_trials_and_resumes_the_same_sequence() {
    let tables = "[search]\nalgorithm = \"tpe\"\nstartup_trials = 4\n[scheduler]\nkind = \"asha\"";
    let expected = resumes_exactly("tpe", tables);
    // After 4 random start-up trials, proposals lean towards high quality (the metric climbs to it).
    let quality = |t: &(u64, String, String, u64)| {
        serde_json::from_str::<serde_json::Value>(&t.1).unwrap()["quality"].as_f64().unwrap()
    };
    let late: Vec<f64> = expected[8..].iter().map(quality).collect();
    let high = late.iter().filter(|q| **q > 0.5).count();
    assert!(high >= 4, "late TPE proposals: {late:?}");
}

fn prunes_and_resumes_exactly(kind: &str, scheduler: &str) {
    let expected = resumes_exactly(kind, &format!("[scheduler]\n{scheduler}"));
    let pruned = expected.iter().filter(|t| t.2 == "pruned").count();
    assert!(pruned >= 3, "{kind} pruned {pruned} of 14: {expected:?}");
    assert!(expected.iter().any(|t| t.2 == "completed" && t.3 == 9), "{kind}: some trial trains to the end");
}

#[test]
fn sobol_points_spread_evenly_and_resume_the_same_sequence() {
    let expected = resumes_exactly("sobol", "[search]\nalgorithm = \"sobol\"\n[scheduler]\nkind = \"asha\"");
    // 14 points in one dimension: the first 8 fall one in each eighth of [0.1, 0.9].
    let qualities: Vec<f64> = expected[..8]
        .iter()
        .map(|t| serde_json::from_str::<serde_json::Value>(&t.1).unwrap()["quality"].as_f64().unwrap())
        .collect();
    let mut eighths: Vec<usize> = qualities.iter().map(|q| ((q - 0.1) / 0.1) as usize).collect();
    eighths.sort_unstable();
    assert_eq!(eighths, (0..8).collect::<Vec<_>>(), "{qualities:?}");
}

#[test]
fn median_stopping_prunes_and_resumes_exactly() {
    prunes_and_resumes_exactly("median", "kind = \"median\"\nstartup_trials = 3\nwarmup_epochs = 1");
}

#[test]
fn hyperband_prunes_by_bracket_and_resumes_exactly() {
    prunes_and_resumes_exactly("hyperband", "kind = \"hyperband\"\ngrace_epochs = 1\nreduction_factor = 3");
    // Trials of the patient bracket (every third-ish id) all train to the end.
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_ok(tmp.path(), &config("hb", "[scheduler]\nkind = \"hyperband\""));
    let h = gauntlet::schedule::Hyperband::new(&Default::default(), 9);
    for (id, _, status, epochs) in outcome(&dir) {
        if h.bracket_of(gauntlet::TrialId(id as u32)) == 2 {
            assert_eq!(
                (status.as_str(), epochs),
                ("completed", 9),
                "trial {id} is in the bracket that never stops early"
            );
        }
    }
}

#[test]
fn promotion_asha_pauses_promotes_and_resumes_exactly() {
    let expected = resumes_exactly("asha-promotion", "[scheduler]\nkind = \"asha\"\npromotion = true");
    // Nothing is left paused or running: promoted trials trained on, the rest were never promoted.
    assert!(expected.iter().all(|t| t.2 == "completed" || t.2 == "pruned"), "{expected:?}");
    assert!(expected.iter().any(|t| t.2 == "completed" && t.3 == 9), "the best are promoted to the end: {expected:?}");
    assert!(expected.iter().filter(|t| t.2 == "pruned").count() >= 7, "most wait at a rung: {expected:?}");
    // A promoted trial continues from its checkpoint: a later attempt reports the epoch after its rung.
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_ok(tmp.path(), &config("promo", "[scheduler]\nkind = \"asha\"\npromotion = true"));
    let lines = results(&dir);
    let paused: Vec<&serde_json::Value> = lines.iter().filter(|l| l["decision"] == "pause").collect();
    assert!(!paused.is_empty());
    let promoted = paused.iter().any(|p| {
        lines.iter().any(|l| {
            l["trial"] == p["trial"]
                && l["attempt"].as_u64() > p["attempt"].as_u64()
                && l["epoch"].as_u64() == p["epoch"].as_u64().map(|e| e + 1)
        })
    });
    assert!(promoted, "a paused trial continued after its rung: {lines:#?}");
}

#[test]
fn promotion_asha_with_fewer_trials_than_eta_still_trains_its_best_to_the_end() {
    // Two trials and η = 3: no rung ever holds 3, so rounding the top third
    // down would promote nobody and end both pruned after one epoch.
    let tmp = tempfile::tempdir().unwrap();
    let cfg =
        config("few", "[scheduler]\nkind = \"asha\"\npromotion = true").replace("max_trials = 14", "max_trials = 2");
    let trials = outcome(&run_ok(tmp.path(), &cfg));
    let quality = |t: &(u64, String, String, u64)| {
        serde_json::from_str::<serde_json::Value>(&t.1).unwrap()["quality"].as_f64().unwrap()
    };
    let best = trials.iter().max_by(|a, b| quality(a).total_cmp(&quality(b))).unwrap();
    assert_eq!((best.2.as_str(), best.3), ("completed", 9), "the better trial trains to the end: {trials:?}");
    let other = trials.iter().find(|t| t.0 != best.0).unwrap();
    assert_eq!((other.2.as_str(), other.3), ("pruned", 1), "the other waits at the first rung: {trials:?}");
}

#[test]
fn promotion_asha_rounds_up_only_once_every_trial_waits_so_early_arrivals_are_not_promoted_for_being_early() {
    // Nine trials at once: rounding up while others were still on their way
    // promoted the first to arrive at each rung (1 of 1), whatever its quality.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config("nine", "[scheduler]\nkind = \"asha\"\npromotion = true")
        .replace("max_trials = 14", "max_trials = 9")
        .replace("concurrency = 1", "concurrency = 9");
    let mut trials = outcome(&run_ok(tmp.path(), &cfg));
    let quality = |t: &(u64, String, String, u64)| {
        serde_json::from_str::<serde_json::Value>(&t.1).unwrap()["quality"].as_f64().unwrap()
    };
    trials.sort_by(|a, b| quality(b).total_cmp(&quality(a)));
    let epochs: Vec<u64> = trials.iter().map(|t| t.3).collect();
    // Best first: the best trains to the end, the next two to rung 3, the rest wait at rung 1.
    assert_eq!(epochs, [9, 3, 3, 1, 1, 1, 1, 1, 1], "{trials:?}");
    assert_eq!(trials[0].2, "completed", "{trials:?}");
}

#[test]
fn each_kind_takes_only_its_own_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("kind = \"median\"\ngrace_epochs = 1", "unknown field `grace_epochs`"),
        ("kind = \"fifo\"\nreduction_factor = 3", "unknown field `reduction_factor`"),
        ("kind = \"asha\"\nstartup_trials = 3", "unknown field `startup_trials`"),
        ("kind = \"hyperband\"\nbrackets = 0", "scheduler.brackets"),
        ("kind = \"median\"\nwarmup_epochs = 9", "scheduler.warmup_epochs"),
        ("kind = \"pbt2\"", "scheduler.kind: unknown kind `pbt2`"),
        // A value of the wrong type names its key (the section alone before), in words.
        ("kind = \"pbt\"\ninterval = \"2\"", "scheduler.interval: invalid type: string \"2\", expected a whole number"),
        ("kind = \"asha\"\npromotion = \"yes\"", "scheduler.promotion: invalid type"),
        ("kind = \"pbt\"\nperturb = [1.2]", "scheduler.perturb: invalid length 1"),
        ("grace_epochs = 1", "scheduler.kind: missing"),
        ("kind = \"pbt\"\ngrace_epochs = 1", "unknown field `grace_epochs`"),
        ("kind = \"pbt\"\ninterval = 9", "scheduler.interval"),
        ("kind = \"pbt\"\nquantile = 0.75", "scheduler.quantile"),
        ("kind = \"pbt\"\nperturb = [0.8, -1.0]", "scheduler.perturb"),
        ("kind = \"pbt\"\nmutate = [\"epoch_ms\"]", "not a searched parameter"),
    ];
    for (table, phrase) in cases {
        let cfg = write(tmp.path(), "bad.toml", &config("bad", &format!("[scheduler]\n{table}")));
        let o = run_in(tmp.path(), &["validate", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{table}: {}", stderr(&o));
        assert!(stderr(&o).contains("scheduler") && stderr(&o).contains(phrase), "{table}: {}", stderr(&o));
    }
    for (table, phrase) in [
        ("algorithm = \"sobol\"\ngrid_points = 3", "unknown field `grid_points`"),
        ("algorithm = \"grid\"\ngrid_points = 0", "search.grid_points"),
        ("algorithm = \"tpe2\"", "search.algorithm: unknown algorithm `tpe2`"),
        ("algorithm = \"tpe\"\nstartup_trials = -1", "search.startup_trials: invalid value"),
    ] {
        let cfg = write(tmp.path(), "bad.toml", &config("bad", &format!("[search]\n{table}")));
        let o = run_in(tmp.path(), &["validate", cfg.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{table}: {}", stderr(&o));
        assert!(stderr(&o).contains("search") && stderr(&o).contains(phrase), "{table}: {}", stderr(&o));
    }
}
