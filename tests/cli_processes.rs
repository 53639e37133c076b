//! Processes a run starts, counted in /proc: never more local workers than
//! the machine holds, however many are asked for, and none left behind,
//! even when the coordinator is killed with SIGKILL while its workers start
//! up or while they train `command` programs that have children of their own.

mod common;

use std::path::Path;
use std::process::Stdio;

use std::time::{Duration, Instant};

use common::*;
use gauntlet::cluster::local::{Capacity, WORKERS_PER_CORE};

/// Every live process whose environment carries `GAUNTLET_TEST_TAG=tag`
/// (what a run started inherits it), with its name (`comm`) and command
/// line: a worker forked by the spawner keeps its coordinator's command
/// line and is named `gauntlet-worker`.
fn tagged(tag: &str) -> Vec<(u32, String)> {
    let needle = format!("GAUNTLET_TEST_TAG={tag}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            out.push((pid, format!("[{}] {cmd}", name.trim())));
        }
    }
    out
}

fn workers_of(tag: &str) -> usize {
    tagged(tag).iter().filter(|(_, cmd)| cmd.starts_with("[gauntlet-worker]") || cmd.contains(" worker ")).count()
}

/// Kills what a failed test left (so that one failure does not leak).
struct Sweeper(String);

impl Drop for Sweeper {
    fn drop(&mut self) {
        for (pid, _) in tagged(&self.0) {
            // SAFETY: plain syscall on a process this test's run started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// `gauntlet run` with its stderr in `OUT.stderr`.
fn spawn_tagged(config: &Path, out: &Path, tag: &str) -> Running {
    let err = std::fs::File::create(out.with_extension("stderr")).unwrap();
    let child = gauntlet()
        .args(["run", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .env("GAUNTLET_TEST_TAG", tag)
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("the gauntlet binary starts");
    Running(child)
}

/// Waits until no process of the run is left; how long that took.
fn wait_none_left(tag: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let left = tagged(tag);
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "still alive {limit:?} after the coordinator died: {left:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn asking_for_far_more_workers_than_the_machine_holds_starts_at_most_its_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("cap-{}", std::process::id());
    let _sweep = Sweeper(tag.clone());
    let config = write(
        tmp.path(),
        "exp.toml",
        &synthetic_config(
            "cap",
            "max_trials = 40\nconcurrency = 1000\n[model]\nkind = \"sleep\"\nepoch_ms = 100\n[train]\nmax_epochs = 3\n",
        ),
    );
    let out = tmp.path().join("run");
    let mut run = spawn_tagged(&config, &out, &tag);
    let mut most = 0;
    let status = loop {
        if let Some(status) = run.0.try_wait().unwrap() {
            break status;
        }
        most = most.max(workers_of(&tag));
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(out.with_extension("stderr")).unwrap();
    assert!(status.success(), "{err}");
    let cores = std::thread::available_parallelism().unwrap().get();
    let said: usize = err
        .split("starting ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the warning names how many it starts: {err}"));
    assert!(err.contains("experiment.concurrency asks for 1000 local workers"), "{err}");
    assert!(said <= cores * WORKERS_PER_CORE && said <= Capacity::rule(cores, None, 0).limit, "{said}");
    assert!(most <= said, "{most} local workers were alive at once, more than the {said} it said it starts");
    assert!(most >= 2, "the workers were counted: {most}");
    assert_eq!(tagged(&tag), vec![], "no process of the run outlives it");
    let status = status_json(&out);
    assert_eq!(status["trials"].as_array().unwrap().len(), 40);
    assert!(status["trials"].as_array().unwrap().iter().all(|t| t["status"] == "completed"), "{status}");
}

/// A `command` program that starts a child of its own (`sleep`), reports
/// slowly and never ends by itself before its budget.
const FAMILY: &str = r#"#!/bin/sh
sleep 600 &
epoch=1
while [ $epoch -le 100 ]; do
  sleep 0.2
  echo "{\"epoch\": $epoch, \"score\": 0.5}"
  epoch=$((epoch + 1))
done
"#;

fn family_config(tmp: &Path) -> std::path::PathBuf {
    let script = write(tmp, "family.sh", FAMILY);
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write(
        tmp,
        "exp.toml",
        r#"
[experiment]
name = "family"
metric = "score"
max_trials = 4
concurrency = 2
[model]
kind = "command"
command = "./family.sh"
[train]
lr = { uniform = [0.1, 1.0] }
max_epochs = 100
"#,
    )
}

#[test]
fn killing_the_coordinator_while_its_workers_start_leaves_no_process() {
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("start-{}", std::process::id());
    let _sweep = Sweeper(tag.clone());
    let config = family_config(tmp.path());
    let mut run = spawn_tagged(&config, &tmp.path().join("run"), &tag);
    let deadline = Instant::now() + Duration::from_secs(30);
    while workers_of(&tag) == 0 {
        assert!(Instant::now() < deadline, "no worker started");
        std::thread::sleep(Duration::from_millis(5));
    }
    run.0.kill().unwrap(); // SIGKILL, while the workers are starting up
    run.0.wait().unwrap();
    let took = wait_none_left(&tag, Duration::from_secs(10));
    eprintln!("killed during start-up: every process gone {took:?} later");
}

#[test]
fn killing_the_coordinator_while_programs_train_leaves_no_process() {
    let tmp = tempfile::tempdir().unwrap();
    let tag = format!("train-{}", std::process::id());
    let _sweep = Sweeper(tag.clone());
    let config = family_config(tmp.path());
    let out = tmp.path().join("run");
    let mut run = spawn_tagged(&config, &out, &tag);
    let deadline = Instant::now() + Duration::from_secs(60);
    while reported(&out) < 2 {
        assert!(Instant::now() < deadline, "no report");
        std::thread::sleep(Duration::from_millis(20));
    }
    let family = tagged(&tag);
    assert!(family.iter().any(|(_, c)| c.contains("] sleep 600")), "the programs' children run: {family:#?}");
    run.0.kill().unwrap(); // SIGKILL, while two programs (and their sleeps) run
    run.0.wait().unwrap();
    let took = wait_none_left(&tag, Duration::from_secs(10));
    eprintln!("killed during training: every process gone {took:?} later");
}
