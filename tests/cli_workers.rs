//! Worker processes over ractor_cluster on loopback, with the real binary:
//! workers killed with SIGKILL, workers joining late or leaving on SIGTERM,
//! a wrong secret, a coordinator that dies, a trial process that aborts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use gauntlet::journal::{self, Event, Record};
use gauntlet::TrialId;

const SECRET: &str = "loopback-test-secret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `gauntlet run` that takes workers on `port` (and spawns `workers` of its own).
fn coordinator(config: &Path, out: &Path, port: u16, workers: u32) -> Running {
    let child = gauntlet()
        .args(["run", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--workers", &workers.to_string()])
        .env("GAUNTLET_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gauntlet binary starts");
    Running(child)
}

/// `gauntlet worker --join` with `secret`.
fn worker(port: u16, slots: u32, secret: &str, log: &Path) -> Running {
    worker_with(port, slots, secret, log, &[])
}

/// [`worker`] with more flags.
fn worker_with(port: u16, slots: u32, secret: &str, log: &Path, flags: &[&str]) -> Running {
    let log = std::fs::File::create(log).unwrap();
    let child = gauntlet()
        .args(["worker", "--join", &format!("127.0.0.1:{port}"), "--slots", &slots.to_string()])
        .args(flags)
        .env("GAUNTLET_SECRET", secret)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the gauntlet binary starts");
    Running(child)
}

fn wait_exit(r: &mut Running, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = r.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process {} still running after {limit:?}", r.0.id());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the run has `n` reports.
fn wait_reports(out: &Path, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while reported(out) < n {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn records(out: &Path) -> Vec<Record> {
    journal::read(&out.join(journal::JOURNAL_FILE)).map(|c| c.records).unwrap_or_default()
}

/// The trial ids a worker process (by pid) started, in journal order.
fn started_on(records: &[Record], pid: u32) -> Vec<TrialId> {
    let tag = format!("-{pid}-");
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::TrialStarted { id, worker: Some(w), .. } if w.contains(&tag) => Some(*id),
            _ => None,
        })
        .collect()
}

fn kill(pid: u32, signal: &str) {
    let ok = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {signal} {pid}");
}

fn sleep_config(name: &str, trials: u32, concurrency: u32, epoch_ms: u32, epochs: u32) -> String {
    synthetic_config(
        name,
        &format!(
            r#"max_trials = {trials}
concurrency = {concurrency}
[model]
kind = "sleep"
epoch_ms = {epoch_ms}
quality = {{ uniform = [0.1, 0.9] }}
[train]
max_epochs = {epochs}
"#
        ),
    )
}

fn mlp_config(name: &str, trials: u32, concurrency: u32, epochs: u32, chaos: &str) -> String {
    synthetic_config(
        name,
        &format!(
            r#"max_trials = {trials}
concurrency = {concurrency}
[data]
source = "synthetic"
samples = 6000
features = 40
classes = 4
[model]
kind = "mlp"
hidden_layers = 2
hidden_units = {{ int = [64, 128] }}
[train]
optimizer = "adam"
lr = {{ loguniform = [1e-3, 1e-2] }}
batch_size = 32
max_epochs = {epochs}
[fault]
max_restarts = 20
restart_backoff_ms = 10
checkpoint_every = 1
{chaos}
"#
        ),
    )
}

/// Per trial: its standing in `status --json`.
fn standings(out: &Path) -> BTreeMap<u64, serde_json::Value> {
    let doc = status_json(out);
    doc["trials"].as_array().unwrap().iter().map(|t| (t["id"].as_u64().unwrap(), t.clone())).collect()
}

#[test]
fn a_worker_killed_with_sigkill_loses_no_trial_and_its_trial_continues_from_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "exp.toml", &mlp_config("killed-worker", 6, 3, 8, ""));
    let out = tmp.path().join("run");
    let port = free_port();
    let mut coord = coordinator(&config, &out, port, 0);
    let mut workers: Vec<Running> =
        (0..3).map(|i| worker(port, 1, SECRET, &tmp.path().join(format!("w{i}.log")))).collect();
    let victim = workers[1].0.id();

    // Kill the worker once its trial has two checkpoints at the coordinator.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (trial, killed_at) = loop {
        assert!(Instant::now() < deadline, "the victim's trial never checkpointed twice");
        let recs = records(&out);
        if let Some(&id) = started_on(&recs, victim).first() {
            let ckpts = recs.iter().filter(|r| matches!(r.event, Event::CheckpointWritten { id: i, .. } if i == id));
            if ckpts.count() >= 2 {
                kill(victim, "-KILL");
                break (id, journal::now_ms());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = wait_exit(&mut coord, Duration::from_secs(120));
    assert!(status.success(), "the sweep completes: {status:?}");

    let recs = records(&out);
    // The loss was noticed within 5 seconds.
    let preempted = recs
        .iter()
        .find(|r| matches!(&r.event, Event::TrialPreempted { id, .. } if *id == trial))
        .expect("the victim's trial was preempted");
    assert!(
        preempted.at_ms.saturating_sub(killed_at) < 5000,
        "noticed {} ms after the kill",
        preempted.at_ms - killed_at
    );
    // It continued elsewhere from the last checkpoint the coordinator had.
    let at = recs.iter().position(|r| std::ptr::eq(r, preempted)).unwrap();
    let last_ckpt = recs[..at]
        .iter()
        .filter_map(|r| match r.event {
            Event::CheckpointWritten { id, epoch } if id == trial => Some(epoch),
            _ => None,
        })
        .max()
        .unwrap();
    let restart = recs[at..]
        .iter()
        .find_map(|r| match &r.event {
            Event::TrialStarted { id, from_epoch, worker, .. } if *id == trial => Some((*from_epoch, worker.clone())),
            _ => None,
        })
        .expect("the trial started again");
    assert_eq!(restart.0, Some(last_ckpt), "continues from its last checkpoint");
    assert!(!restart.1.unwrap().contains(&format!("-{victim}-")), "on another worker");

    // Nothing lost, nothing duplicated, nothing counted as a restart.
    let s = standings(&out);
    assert_eq!(s.keys().copied().collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
    for (id, t) in &s {
        assert_eq!(t["status"], "completed", "trial {id}: {t}");
        assert_eq!(t["epochs"], 8, "trial {id}");
        assert_eq!(t["restarts"], 0, "trial {id}: a lost worker is not a restart");
    }
    let mut ends: BTreeMap<TrialId, usize> = BTreeMap::new();
    for r in &recs {
        if let Event::TrialEnded { id, .. } = r.event {
            *ends.entry(id).or_default() += 1;
        }
    }
    assert!(ends.values().all(|&n| n == 1), "each trial ends once: {ends:?}");
    // The survivors exit when the sweep is over.
    for (i, w) in workers.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
        assert!(wait_exit(w, Duration::from_secs(15)).success(), "worker {i} exits cleanly");
    }
}

#[test]
fn a_worker_that_joins_late_gets_trials_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "exp.toml", &sleep_config("late-joiner", 16, 3, 60, 4));
    let out = tmp.path().join("run");
    let port = free_port();
    let mut coord = coordinator(&config, &out, port, 1);
    wait_reports(&out, 3, "the local worker never reported");
    // The secret is the file's first line; what follows is not part of it.
    let secret_file = write(tmp.path(), "secret", &format!("{SECRET}\nnot part of the secret\n"));
    let mut late = worker_with(
        port,
        2,
        "the file comes first",
        &tmp.path().join("late.log"),
        &["--secret-file", secret_file.to_str().unwrap()],
    );
    assert!(wait_exit(&mut coord, Duration::from_secs(120)).success());
    assert!(wait_exit(&mut late, Duration::from_secs(15)).success(), "the late worker exits when the sweep ends");
    let recs = records(&out);
    let on_late = started_on(&recs, late.0.id());
    assert!(on_late.len() >= 3, "the late worker ran trials: {on_late:?}");
    let s = standings(&out);
    assert_eq!(s.len(), 16);
    assert!(s.values().all(|t| t["status"] == "completed" || t["status"] == "pruned"));
}

#[test]
fn a_worker_with_the_wrong_secret_is_refused_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "exp.toml", &sleep_config("wrong-secret", 40, 1, 100, 3));
    let out = tmp.path().join("run");
    let port = free_port();
    let _coord = coordinator(&config, &out, port, 1);
    wait_reports(&out, 1, "the sweep never started");
    let log = tmp.path().join("intruder.log");
    let mut intruder = worker(port, 1, "not-the-secret", &log);
    let status = wait_exit(&mut intruder, Duration::from_secs(20));
    assert_eq!(status.code(), Some(2), "refused is a usage error");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("secret"), "the worker says why: {said}");
    assert!(started_on(&records(&out), intruder.0.id()).is_empty(), "no trial ran on it");
    // A worker of one process a GPU (no GPU is needed to be refused) ends as its
    // slot processes did: exit 2, where it said 0 before.
    let log = tmp.path().join("gpu-intruder.log");
    let mut launcher = worker_with(port, 2, "not-the-secret", &log, &["--gpus", "0,1"]);
    let status = wait_exit(&mut launcher, Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(std::fs::read_to_string(&log).unwrap().contains("was refused"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let coord_log = std::fs::read_to_string(out.join("gauntlet.log")).unwrap();
        if coord_log.contains("closed before it passed the shared-secret handshake") {
            break;
        }
        assert!(Instant::now() < deadline, "the coordinator logs the refusal:\n{coord_log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_spent_time_budget_ends_a_run_whose_trials_wait_for_a_worker_that_never_comes() {
    // Before, trials waiting for a slot never reported, so never heard the
    // budget was spent: the run waited for ever.
    let tmp = tempfile::tempdir().unwrap();
    let text = sleep_config("no-worker", 4, 2, 200, 6).replace("[model]", "time_budget = \"2s\"\n[model]");
    let config = write(tmp.path(), "exp.toml", &text);
    let out = tmp.path().join("run");
    let mut run = coordinator(&config, &out, free_port(), 0);
    let status = wait_exit(&mut run, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "the budget ends the sweep");
    let trials = status_json(&out)["trials"].as_array().unwrap().clone();
    assert!(!trials.is_empty() && trials.iter().all(|t| t["status"] == "paused" && t["epochs"] == 0), "{trials:?}");
}

#[test]
fn a_listen_address_that_cannot_be_used_is_a_usage_error_before_the_run_directory_appears() {
    // Before: a taken port was exit 1 ("Actor panicked during startup ..."),
    // and every bad address left a run directory that `resume` was then
    // suggested for.
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "exp.toml", &sleep_config("listen", 2, 1, 10, 1));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (listen, says) in [
        (taken.as_str(), "its port is in use"),
        ("garbage", "address `garbage`"),
        ("127.0.0.1:99999", "address `127.0.0.1:99999`"),
    ] {
        let out = tmp.path().join("run");
        let o = gauntlet()
            .args(["run", config.to_str().unwrap(), "--out", out.to_str().unwrap(), "--listen", listen])
            .env("GAUNTLET_SECRET", SECRET)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{listen}: {}", stderr(&o));
        assert!(stderr(&o).contains("--listen") && stderr(&o).contains(says), "{listen}: {}", stderr(&o));
        assert!(!out.exists(), "{listen}: the run directory appeared");
    }
}

#[test]
fn listening_without_a_secret_and_a_worker_without_one_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "exp.toml", &sleep_config("no-secret", 2, 1, 10, 1));
    let o = gauntlet()
        .args(["run", config.to_str().unwrap(), "--out"])
        .arg(tmp.path().join("run"))
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("GAUNTLET_SECRET")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--secret-file"), "{}", stderr(&o));
    let o = gauntlet().args(["worker", "--join", "127.0.0.1:9"]).env_remove("GAUNTLET_SECRET").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("GAUNTLET_SECRET"), "{}", stderr(&o));
    let empty = write(tmp.path(), "empty-secret", "\n");
    let o = gauntlet().args(["worker", "--join", "127.0.0.1:9", "--secret-file"]).arg(&empty).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("empty-secret") && stderr(&o).contains("empty"), "{}", stderr(&o));
    // An address where nothing listens: said in words, after the timeout.
    let o = gauntlet()
        .args(["worker", "--join", &format!("127.0.0.1:{}", free_port()), "--connect-timeout", "1"])
        .env("GAUNTLET_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Connection refused") && stderr(&o).contains("gave up after 1s"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Os {"), "{}", stderr(&o));
    // A file without end is not read whole.
    let o = gauntlet().args(["worker", "--join", "127.0.0.1:9", "--secret-file", "/dev/zero"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("first line is over 4096 bytes"), "{}", stderr(&o));
}

#[test]
fn a_stalled_worker_that_was_given_up_joins_again_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "exp.toml", &sleep_config("stalled", 8, 2, 200, 4));
    let out = tmp.path().join("run");
    let port = free_port();
    // Its only worker: the sweep ends only if the worker comes back.
    let mut coord = coordinator(&config, &out, port, 0);
    let log = tmp.path().join("w.log");
    let mut w = worker_with(port, 2, SECRET, &log, &["--reconnect-for", "60"]);
    wait_reports(&out, 2, "the worker never reported");
    // Stopped past the coordinator's lease (4 s): it gives the worker up and re-queues its trials.
    kill(w.0.id(), "-STOP");
    std::thread::sleep(Duration::from_millis(5500));
    kill(w.0.id(), "-CONT");
    let status = wait_exit(&mut coord, Duration::from_secs(120));
    assert!(status.success(), "{status}");
    assert!(wait_exit(&mut w, Duration::from_secs(15)).success());
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("gave up on this worker") && said.contains("trying to join it again"), "{said}");
    let coord_log = std::fs::read_to_string(out.join("gauntlet.log")).unwrap();
    assert!(coord_log.contains("no worker is connected"), "the coordinator says why nothing runs:\n{coord_log}");
    let s = standings(&out);
    assert_eq!(s.len(), 8);
    assert!(s.values().all(|t| t["status"] == "completed"), "{s:?}");
}

#[test]
fn connections_that_do_not_pass_the_handshake_are_bounded_in_number_size_and_time() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    // Two at a time, one local worker of one slot: a worker that joins gets the other trial.
    let config = write(tmp.path(), "exp.toml", &sleep_config("guarded", 200, 2, 200, 5));
    let out = tmp.path().join("run");
    let port = free_port();
    let _coord = coordinator(&config, &out, port, 1);
    wait_reports(&out, 1, "the sweep never started");
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    // Closed by the coordinator within the socket's read timeout: 0 bytes, or a reset.
    let closed = |s: &mut std::net::TcpStream| match s.read(&mut [0u8; 64]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    // A frame declared larger than the limit (4 MiB) is refused at once.
    let mut big = connect();
    big.write_all(&(16u64 << 20).to_be_bytes()).unwrap();
    let started = Instant::now();
    assert!(closed(&mut big) && started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // 64 silent connections at most; more are closed at once, the rest after the deadline.
    let mut idle: Vec<std::net::TcpStream> = (0..70).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut at_once = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        at_once += usize::from(closed(s));
    }
    assert!(at_once >= 6, "{at_once} of 70 closed at once");
    let started = Instant::now();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert!(closed(s), "an idle connection stayed open");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(20), "closed after the 10 s handshake deadline, not {waited:?}");
    // The sweep's own worker was never disturbed, and a real worker still joins.
    let mut w = worker(port, 1, SECRET, &tmp.path().join("w.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while started_on(&records(&out), w.0.id()).is_empty() {
        assert!(Instant::now() < deadline, "the new worker never got a trial");
        std::thread::sleep(Duration::from_millis(100));
    }
    kill(w.0.id(), "-TERM");
    let _ = wait_exit(&mut w, Duration::from_secs(30));
    let coord_log = std::fs::read_to_string(out.join("gauntlet.log")).unwrap();
    assert!(coord_log.contains("others are in the shared-secret handshake"), "{coord_log}");
    assert!(coord_log.contains("did not pass the shared-secret handshake within"), "{coord_log}");
}

#[test]
fn an_experiment_no_local_worker_can_load_fails_its_trials_instead_of_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let rows: String = (0..40).map(|i| format!("{},{},{}\n", i % 7, i % 5, i % 2)).collect();
    write(tmp.path(), "rows.csv", &format!("a,b,y\n{rows}"));
    let config = write(
        tmp.path(),
        "exp.toml",
        "[experiment]\nname = \"unloadable\"\nmax_trials = 3\nconcurrency = 1\n[data]\nsource = \"csv\"\n\
         path = \"rows.csv\"\nlabel = \"y\"\n[model]\nkind = \"mlp\"\nhidden_units = 8\n[train]\nmax_epochs = 1\n",
    );
    let out = tmp.path().join("run");
    let port = free_port();
    let mut coord = coordinator(&config, &out, port, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(out.join("gauntlet.log")).unwrap_or_default().contains("hosting an experiment") {
        assert!(Instant::now() < deadline, "the coordinator never hosted the experiment");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Gone after the coordinator checked it, before a worker loads it.
    std::fs::remove_file(tmp.path().join("rows.csv")).unwrap();
    let mut w = worker_with(port, 1, SECRET, &tmp.path().join("w.log"), &["--local"]);
    let status = wait_exit(&mut coord, Duration::from_secs(60));
    assert_eq!(status.code(), Some(4), "every trial failed, saying why");
    let s = standings(&out);
    assert_eq!(s.len(), 3);
    for t in s.values() {
        assert_eq!(t["status"], "failed", "{t}");
        let error = t["error"].as_str().unwrap();
        assert!(error.contains("no worker can load the experiment") && error.contains("rows.csv"), "{error}");
    }
    let _ = wait_exit(&mut w, Duration::from_secs(15));
}

#[test]
fn workers_of_a_dead_coordinator_exit_instead_of_training_on() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "exp.toml", &sleep_config("orphans", 40, 2, 200, 5));
    let out = tmp.path().join("run");
    let port = free_port();
    let mut coord = coordinator(&config, &out, port, 0);
    let mut w = worker_with(port, 2, SECRET, &tmp.path().join("w.log"), &["--reconnect-for", "2"]);
    wait_reports(&out, 2, "the worker never reported");
    kill(coord.0.id(), "-KILL");
    let _ = coord.0.wait();
    // It tries to join again for 2 s, then gives up.
    let status = wait_exit(&mut w, Duration::from_secs(15));
    assert_eq!(status.code(), Some(3), "the worker exits saying it lost the coordinator");
    let said = std::fs::read_to_string(tmp.path().join("w.log")).unwrap();
    assert!(said.contains("lost the coordinator") && said.contains("gauntlet resume"), "{said}");
}

#[test]
fn a_worker_leaving_on_sigterm_checkpoints_and_its_trials_continue_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(tmp.path(), "exp.toml", &sleep_config("leaver", 6, 2, 150, 8));
    let out = tmp.path().join("run");
    let port = free_port();
    let mut coord = coordinator(&config, &out, port, 1);
    let mut leaver = worker(port, 1, SECRET, &tmp.path().join("leaver.log"));
    let pid = leaver.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let trial = loop {
        assert!(Instant::now() < deadline, "the leaver never trained");
        let recs = records(&out);
        let started = started_on(&recs, pid);
        let reports =
            |id: TrialId| recs.iter().filter(|r| matches!(r.event, Event::Report { id: i, .. } if i == id)).count();
        if let Some(&id) = started.first().filter(|&&id| reports(id) >= 2) {
            break id;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    kill(pid, "-TERM");
    assert!(wait_exit(&mut leaver, Duration::from_secs(10)).success(), "a worker leaves cleanly on SIGTERM");
    assert!(wait_exit(&mut coord, Duration::from_secs(120)).success());
    let recs = records(&out);
    let reason = recs
        .iter()
        .find_map(|r| match &r.event {
            Event::TrialPreempted { id, reason } if *id == trial => Some(reason.clone()),
            _ => None,
        })
        .expect("its trial was handed back");
    assert!(reason.contains("left"), "{reason}");
    // It checkpointed the epoch it stopped at and continued from there.
    let stopped_at = recs
        .iter()
        .filter_map(|r| match r.event {
            Event::Report { id, epoch, .. } if id == trial => Some(epoch),
            _ => None,
        })
        .collect::<Vec<_>>();
    let resumed_from = recs.iter().find_map(|r| match r.event {
        Event::TrialStarted { id, from_epoch: Some(e), .. } if id == trial => Some(e),
        _ => None,
    });
    assert!(
        resumed_from.is_some_and(|e| stopped_at.contains(&e)),
        "resumed from {resumed_from:?}, reports {stopped_at:?}"
    );
    let s = standings(&out);
    assert!(s.values().all(|t| t["status"] == "completed" && t["restarts"] == 0), "{s:?}");
}

#[test]
fn a_trial_process_that_aborts_is_restarted_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = mlp_config("aborts", 4, 2, 6, "[chaos]\nabort_probability = 0.12");
    let out = run_ok(tmp.path(), &cfg);
    let s = standings(&out);
    assert!(s.values().all(|t| t["status"] == "completed"), "{s:?}");
    let restarts: u64 = s.values().map(|t| t["restarts"].as_u64().unwrap()).sum();
    assert!(restarts >= 1, "some trial aborted and was restarted: {s:?}");
    let recs = records(&out);
    let errors: BTreeSet<String> = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::TrialRestarted { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect();
    assert!(errors.iter().all(|e| e.contains("SIGABRT")), "restarts name the abort: {errors:?}");
    assert_eq!(errors.len() as u64 > 0, restarts > 0);
    // Every abort cost one restart, never a lost trial.
    assert!(!recs.iter().any(|r| matches!(r.event, Event::TrialPreempted { .. })));
}

#[test]
fn checkpoints_larger_than_a_cluster_frame_travel_both_ways_in_parts() {
    let tmp = tempfile::tempdir().unwrap();
    // 2 x 2048 hidden units: the Adam state alone is over 32 MiB, twice
    // ractor_cluster's 16 MiB frame limit.
    let cfg = synthetic_config(
        "big-checkpoints",
        r#"max_trials = 1
concurrency = 1
[data]
source = "synthetic"
samples = 400
features = 16
classes = 3
[model]
kind = "mlp"
hidden_layers = 2
hidden_units = 2048
[train]
optimizer = "adam"
batch_size = 200
max_epochs = 4
[fault]
max_restarts = 10
restart_backoff_ms = 10
[chaos]
panic_probability = 0.4
"#,
    );
    let out = run_ok(tmp.path(), &cfg);
    let s = standings(&out);
    assert_eq!(s[&0]["status"], "completed", "{s:?}");
    // A restart resumed from a big checkpoint sent back to the worker.
    assert!(s[&0]["restarts"].as_u64().unwrap() >= 1, "chaos restarted the trial: {s:?}");
    let resumed = records(&out).iter().any(|r| matches!(r.event, Event::TrialStarted { from_epoch: Some(_), .. }));
    assert!(resumed, "a restart continued from a checkpoint");
    let ckpt = std::fs::read_dir(out.join("trials/0")).unwrap().filter_map(Result::ok).last().unwrap().path();
    let size = std::fs::metadata(ckpt.join("optimizer.safetensors")).unwrap().len();
    assert!(size > 16 << 20, "the optimizer state is {size} bytes");
    assert!(out.join("best/weights.safetensors").is_file());
}

#[test]
fn a_local_worker_killed_with_sigkill_is_replaced_and_its_trial_preempted() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "exp.toml", &sleep_config("respawn", 8, 2, 100, 6));
    let out = tmp.path().join("run");
    let mut coord = spawn_run(&cfg, &out);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (victim, name) = loop {
        assert!(Instant::now() < deadline, "no trial started on a local worker");
        let started = records(&out).iter().find_map(|r| match &r.event {
            Event::TrialStarted { worker: Some(w), .. } => Some(w.clone()),
            _ => None,
        });
        if let Some(w) = started.filter(|_| reported(&out) >= 2) {
            // worker-<host>-<pid>-<tag>
            let pid: u32 = w.rsplit('-').nth(1).unwrap().parse().unwrap();
            break (pid, w);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    kill(victim, "-KILL");
    assert!(wait_exit(&mut coord, Duration::from_secs(120)).success());
    let recs = records(&out);
    let workers: BTreeSet<String> = recs
        .iter()
        .filter_map(|r| match &r.event {
            Event::TrialStarted { worker: Some(w), .. } => Some(w.clone()),
            _ => None,
        })
        .collect();
    assert!(workers.len() >= 3, "a new local worker took the place of {name}: {workers:?}");
    assert!(recs
        .iter()
        .any(|r| matches!(&r.event, Event::TrialPreempted { reason, .. } if reason.contains("SIGKILL"))));
    let s = standings(&out);
    assert_eq!(s.len(), 8);
    assert!(s.values().all(|t| t["status"] == "completed" && t["restarts"] == 0), "{s:?}");
}

/// The pid of `parent`'s child process named `name` (`comm`), if any.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|entry| {
        let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(')')?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm == name).then_some(pid)
    })
}

#[test]
fn killing_the_worker_spawner_loses_no_trial_and_workers_start_with_exec() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "exp.toml", &sleep_config("spawner", 8, 2, 100, 6));
    let out = tmp.path().join("run");
    let mut coord = spawn_run(&cfg, &out);
    let deadline = Instant::now() + Duration::from_secs(60);
    while reported(&out) < 2 {
        assert!(Instant::now() < deadline, "no report");
        std::thread::sleep(Duration::from_millis(20));
    }
    let spawner = child_named(coord.0.id(), "gauntlet-spawn").expect("the coordinator forked a spawner");
    kill(spawner, "-KILL"); // its workers get SIGHUP and die with it
    assert!(wait_exit(&mut coord, Duration::from_secs(120)).success());
    let log = std::fs::read_to_string(out.join("gauntlet.log")).unwrap();
    assert!(log.contains("local worker forked"), "the first workers were forked");
    assert!(log.contains("the worker spawner is gone"), "the loss was noticed");
    assert!(log.contains("local worker started"), "their replacements were exec'd");
    let s = standings(&out);
    assert_eq!(s.len(), 8);
    assert!(s.values().all(|t| t["status"] == "completed" && t["restarts"] == 0), "{s:?}");
}
