//! Killing `gauntlet run` with SIGKILL at several points and resuming it
//! with `gauntlet resume`: the journal brings back every trial, the searcher
//! and the scheduler, so the resumed run ends as an uninterrupted one would.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn config(concurrency: u32) -> String {
    synthetic_config(
        "resumable",
        &format!(
            r#"max_trials = 8
concurrency = {concurrency}
[data]
source = "synthetic"
samples = 4000
features = 20
classes = 4
[model]
kind = "mlp"
hidden_units = {{ int = [16, 96], log = true }}
dropout = {{ uniform = [0.0, 0.3] }}
[train]
optimizer = {{ choice = ["adam", "sgd"] }}
lr = {{ loguniform = [1e-3, 3e-2] }}
batch_size = 32
max_epochs = 6
[scheduler]
kind = "asha"
grace_epochs = 1
reduction_factor = 2
"#
        ),
    )
}

/// Starts a run and SIGKILLs it once `results.jsonl` holds `reports` lines.
fn run_and_kill(tmp: &Path, name: &str, config: &str, reports: usize) -> PathBuf {
    let cfg = write(tmp, &format!("{name}.toml"), config);
    let out = tmp.join(name);
    let mut guard = spawn_run(&cfg, &out);
    let child = &mut guard.0;
    let start = Instant::now();
    loop {
        if reported(&out) >= reports {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "{name}: the run ended before {reports} reports");
        assert!(start.elapsed() < Duration::from_secs(120), "{name}: too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    out
}

fn resume(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["resume", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    gauntlet().args(args).output().unwrap()
}

/// (id, params, status) of every trial.
fn outcome(dir: &Path) -> Vec<(u64, String, String)> {
    let status = status_json(dir);
    status["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_u64().unwrap(), t["params"].to_string(), t["status"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn killed_at_any_point_and_resumed_ends_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let reference = run_ok(tmp.path(), &config(1));
    let expected = outcome(&reference);
    assert_eq!(expected.len(), 8);
    assert!(expected.iter().any(|t| t.2 == "pruned") && expected.iter().any(|t| t.2 == "completed"));

    for (i, reports) in [1, 4, 9, 15].into_iter().enumerate() {
        let dir = run_and_kill(tmp.path(), &format!("killed-{i}"), &config(1), reports);
        // Status works on the dead run and shows what was running.
        let before = status_json(&dir);
        assert_eq!(before["finished"], false);
        let o = resume(&dir, &[]);
        assert!(o.status.success(), "resume after {reports} reports: {}", stderr(&o));
        assert_eq!(outcome(&dir), expected, "killed after {reports} reports");

        // Epochs continued: per trial, the epochs reported after the kill
        // start where the checkpoints were, so no trial trained from scratch twice.
        let mut by_trial: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
        for l in results(&dir) {
            by_trial
                .entry(l["trial"].as_u64().unwrap())
                .or_default()
                .push((l["attempt"].as_u64().unwrap(), l["epoch"].as_u64().unwrap()));
        }
        for (trial, reports) in &by_trial {
            for w in reports.windows(2) {
                let ((a0, e0), (a1, e1)) = (w[0], w[1]);
                if a1 == a0 {
                    assert_eq!(e1, e0 + 1, "trial {trial}: {reports:?}");
                } else {
                    // A new attempt continues after the last checkpoint: the
                    // epoch just reported, or the one before it when the kill
                    // came between a report and its checkpoint.
                    assert!(e1 == e0 + 1 || e1 == e0, "trial {trial} restarted from scratch: {reports:?}");
                }
            }
        }
        // A second resume finds nothing to do.
        let again = resume(&dir, &[]);
        assert!(again.status.success());
        assert!(stdout(&again).contains("finished already"), "{}", stdout(&again));
    }
}

#[test]
fn two_slots_killed_and_resumed_lose_and_duplicate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_and_kill(tmp.path(), "two", &config(2), 10);
    let o = resume(&dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status = status_json(&dir);
    assert_eq!(status["finished"], true);
    let trials = status["trials"].as_array().unwrap();
    let ids: BTreeSet<u64> = trials.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..8).collect(), "every id once, none reused, none lost");
    let mut seen: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for l in results(&dir) {
        seen.entry(l["trial"].as_u64().unwrap()).or_default().insert(l["epoch"].as_u64().unwrap());
    }
    for t in trials {
        let s = t["status"].as_str().unwrap();
        assert!(s == "completed" || s == "pruned", "stuck: {t}");
        if s == "completed" {
            assert_eq!(t["epochs"], 6);
        }
        let epochs = t["epochs"].as_u64().unwrap();
        assert_eq!(seen[&t["id"].as_u64().unwrap()], (1..=epochs).collect(), "every epoch reported: {t}");
    }
}

/// Decisions reach trials before their reports are durable (see the
/// leaderboard's doc); what a resume reads must never be ahead of the
/// journal. Killed at any moment while four workers report and checkpoint
/// every epoch on a slow disk (each journal commit 40 ms more), no trial
/// has a checkpoint of an epoch its journal lacks, and the resumed run
/// completes every trial with every epoch.
#[test]
fn killed_while_checkpointing_no_checkpoint_is_ahead_of_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let config = r#"
[experiment]
name = "ahead"
max_trials = 24
concurrency = 4
seed = 5
[model]
kind = "sleep"
epoch_ms = 4
quality = { uniform = [0.0, 0.99] }
[train]
max_epochs = 20
[scheduler]
kind = "fifo"
[fault]
checkpoint_every = 1
[chaos]
journal_sync_ms = 40
"#;
    for (i, reports) in [30, 120, 300].into_iter().enumerate() {
        let dir = run_and_kill(tmp.path(), &format!("ahead-{i}"), config, reports);
        let status = status_json(&dir);
        let mut checked = 0;
        for t in status["trials"].as_array().unwrap() {
            let id = t["id"].as_u64().unwrap();
            let journalled = t["epochs"].as_u64().unwrap();
            let Ok(entries) = std::fs::read_dir(dir.join("trials").join(id.to_string())) else { continue };
            for entry in entries {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                if let Some(epoch) = name.strip_prefix("ckpt-").and_then(|e| e.parse::<u64>().ok()) {
                    assert!(
                        epoch <= journalled,
                        "killed after {reports} reports: trial {id} has {name} but its journal ends at epoch {journalled}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 0, "killed after {reports} reports: no checkpoint on disk to check");
        let o = resume(&dir, &[]);
        assert!(o.status.success(), "resume after {reports} reports: {}", stderr(&o));
        let status = status_json(&dir);
        let trials = status["trials"].as_array().unwrap();
        assert_eq!(trials.len(), 24);
        for t in trials {
            assert_eq!((t["status"].as_str(), t["epochs"].as_u64()), (Some("completed"), Some(20)), "{t}");
        }
    }
}

#[test]
fn a_torn_tail_is_cut_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_ok(tmp.path(), &config(2).replace("max_trials = 8", "max_trials = 2"));
    let journal = dir.join("journal.msgpack");
    let whole = std::fs::metadata(&journal).unwrap().len();
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2]); // a frame header promising 40 bytes, cut short
    std::fs::write(&journal, &bytes).unwrap();
    let o = gauntlet().args(["status", dir.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let warning = format!("the last 6 bytes, from byte {whole}, are a frame cut short");
    assert!(stderr(&o).contains(&warning), "{}", stderr(&o));
    let o = resume(&dir, &[]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("finished already"));
}

#[test]
fn corruption_in_the_middle_is_an_error_until_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_and_kill(tmp.path(), "corrupt", &config(2), 12);
    let journal = dir.join("journal.msgpack");
    let mut bytes = std::fs::read(&journal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&journal, &bytes).unwrap();

    let o = gauntlet().args(["status", dir.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("corrupt frame at byte"), "{}", stderr(&o));
    let o = resume(&dir, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--repair"), "{}", stderr(&o));

    let o = resume(&dir, &["--repair"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("repair:") && stderr(&o).contains("dropping"), "{}", stderr(&o));
    let status = status_json(&dir);
    let trials: &Vec<Value> = status["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 8);
    assert!(trials.iter().all(|t| t["status"] == "completed" || t["status"] == "pruned"), "{status}");
    // results.jsonl holds the journal's reports, no more: the repair dropped some it had.
    let rows: Vec<(u64, u64, u64)> = results(&dir)
        .iter()
        .map(|l| (l["trial"].as_u64().unwrap(), l["attempt"].as_u64().unwrap(), l["epoch"].as_u64().unwrap()))
        .collect();
    let journaled: Vec<(u64, u64, u64)> = gauntlet::journal::read(&journal)
        .unwrap()
        .records
        .iter()
        .filter_map(|r| match &r.event {
            gauntlet::journal::Event::Report { id, attempt, epoch, .. } => {
                Some((u64::from(id.0), u64::from(*attempt), u64::from(*epoch)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(rows, journaled, "results.jsonl is the journal's reports, in order");
}

#[test]
fn resume_refuses_a_live_run() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "live.toml", &config(1).replace("max_epochs = 6", "max_epochs = 100000"));
    let out = tmp.path().join("live");
    let _guard = spawn_run(&cfg, &out);
    let start = Instant::now();
    while reported(&out) < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "the run never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = std::fs::metadata(out.join("journal.msgpack")).unwrap().len();
    let results_file = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(out.join("results.jsonl")).unwrap().ino()
    };
    let results_before = results_file();
    let o = resume(&out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("another gauntlet process is writing this run"), "{}", stderr(&o));
    // The live run's journal was not cut, nor its results.jsonl replaced under it.
    assert!(std::fs::metadata(out.join("journal.msgpack")).unwrap().len() >= before);
    assert_eq!(results_file(), results_before, "results.jsonl is still the file the run appends to");
    // Status reads a live run.
    let status = status_json(&out);
    assert_eq!(status["trials"][0]["status"], "running");
}

/// A copy, in `tmp` under `name`, of the run directory that the previous main
/// (d933a1e) wrote (tests/data/run-d933a1e).
fn copy_of_earlier_run(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir(&dir).unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/run-d933a1e"), &dir);
    dir
}

/// A run directory that the previous main (d933a1e) wrote and that was
/// killed with SIGKILL after 7 reports: this version resumes it, and it ends
/// as this version's own uninterrupted run of the same config.
#[test]
fn a_run_killed_under_the_previous_version_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_of_earlier_run(tmp.path(), "earlier");
    assert_eq!(status_json(&dir)["finished"], false);
    let o = resume(&dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/run-d933a1e.toml");
    let reference = run_ok(tmp.path(), &std::fs::read_to_string(config).unwrap());
    assert_eq!(outcome(&dir), outcome(&reference), "the resumed run ends as an uninterrupted one");
}

/// A journal of another format version is refused by resume and status,
/// naming both versions and what to do, and is left byte for byte as it was.
#[test]
fn a_journal_of_another_format_version_is_refused_and_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_of_earlier_run(tmp.path(), "later");
    let journal = dir.join("journal.msgpack");
    let mut bytes = std::fs::read(&journal).unwrap();
    assert_eq!(&bytes[..8], b"GAUNTLET");
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&journal, &bytes).unwrap();
    for args in [&["resume"][..], &["status"][..]] {
        let o = gauntlet().args(args).arg(&dir).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("journal.msgpack: journal format version 2; this gauntlet reads version 1"), "{err}");
        assert!(err.contains("open the run with the gauntlet that wrote it"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(std::fs::read(&journal).unwrap(), bytes, "the refused journal is not touched");
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_command_run_whose_directory_is_gone_is_refused_on_resume_and_stays_resumable() {
    // Its programs run in the config file's directory: with it gone, every
    // unfinished trial crashed in turn and the run ended as finished.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write(
        &src,
        "prog.py",
        "import json, os, time\nfor e in range(int(os.environ['GAUNTLET_FIRST_EPOCH']), 7):\n    time.sleep(0.1)\n    \
         print(json.dumps({'epoch': e, 'score': e}), flush=True)\n",
    );
    let config = "[experiment]\nname = \"moved\"\nmetric = \"score\"\nmax_trials = 4\nconcurrency = 2\n[model]\n\
                  kind = \"command\"\ncommand = \"python3 prog.py\"\n[train]\nlr = { uniform = [0.1, 1.0] }\n\
                  max_epochs = 6\n";
    let dir = run_and_kill(&src, "run", config, 3);
    let out = tmp.path().join("run");
    std::fs::rename(&dir, &out).unwrap();
    let moved = tmp.path().join("elsewhere");
    std::fs::rename(&src, &moved).unwrap();
    let o = resume(&out, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("model.command") && err.contains(&src.display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(status_json(&out)["trials"].as_array().unwrap().iter().all(|t| t["status"] != "failed"));
    // Put back, it resumes and finishes.
    std::fs::rename(&moved, &src).unwrap();
    let o = resume(&out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let trials = status_json(&out)["trials"].as_array().unwrap().clone();
    assert_eq!(trials.len(), 4);
    assert!(trials.iter().all(|t| t["status"] == "completed"), "{trials:?}");
}

#[test]
fn a_run_whose_outputs_cannot_be_written_stays_resumable_and_its_resume_writes_them() {
    // The outputs failed (a full disk, permissions): the run was journalled
    // as finished all the same, so best/ and leaderboard.csv never came.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(
        tmp.path(),
        "out.toml",
        "[experiment]\nname = \"outputs\"\nmax_trials = 4\nconcurrency = 2\n[model]\nkind = \"sleep\"\nepoch_ms = 150\n\
         quality = { uniform = [0.1, 0.9] }\n[train]\nmax_epochs = 4\n",
    );
    let out = tmp.path().join("run");
    let mut run = spawn_run(&cfg, &out);
    let start = Instant::now();
    while !out.join("journal.msgpack").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the run never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A directory where leaderboard.csv goes: its rename fails at the end.
    let blocker = out.join("leaderboard.csv");
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    let status = run.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(run.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains(&blocker.display().to_string()), "the error names the file: {err}");
    assert!(!out.join("best").exists());
    std::fs::remove_dir_all(&blocker).unwrap();
    let o = resume(&out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("finished already"), "{}", stderr(&o));
    assert!(out.join("best/params.json").is_file() && blocker.is_file());
    let trials = status_json(&out)["trials"].as_array().unwrap().clone();
    assert!(trials.len() == 4 && trials.iter().all(|t| t["status"] == "completed"), "{trials:?}");
}

#[test]
fn cluster_flags_that_cannot_be_are_refused_before_the_run_directory_is_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = run_and_kill(tmp.path(), "flags", &config(1), 2);
    let journal = std::fs::read(dir.join("journal.msgpack")).unwrap();
    for (flags, says) in [
        (&["--workers", "0"][..], "--workers 0 needs --listen"),
        (&["--listen", "127.0.0.1:0"][..], "needs a shared secret"),
    ] {
        let o = gauntlet()
            .args(["resume", dir.to_str().unwrap()])
            .args(flags)
            .env_remove("GAUNTLET_SECRET")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert!(!stderr(&o).contains("resuming"), "refused before it began: {}", stderr(&o));
        assert_eq!(std::fs::read(dir.join("journal.msgpack")).unwrap(), journal, "{flags:?}: the journal is untouched");
    }
    let cfg = write(tmp.path(), "new.toml", &config(1));
    let fresh = tmp.path().join("fresh");
    let o = gauntlet()
        .args(["run", cfg.to_str().unwrap(), "--out", fresh.to_str().unwrap(), "--workers", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!fresh.exists(), "no run directory was made");
    // With good flags it resumes, and parts of a checkpoint that was
    // arriving from a worker when the run was killed are removed.
    let staged = dir.join("trials/0/.incoming-7.tmp");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("weights.safetensors"), vec![0u8; 4096]).unwrap();
    assert!(resume(&dir, &[]).status.success());
    assert!(!staged.exists(), "the cut-short checkpoint's parts are gone");
}
