//! The daemon, as a real process on loopback: submitting, watching the
//! event stream, cancelling, changing concurrency, two experiments sharing
//! slots within their caps, SIGKILL and restart, remote workers that
//! reconnect by themselves, refused requests, /metrics through a
//! Prometheus text parser, and the CLI clients.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A daemon process, SIGKILLed when dropped.
struct Daemon {
    process: Running,
    addr: String,
    token: String,
}

fn start_daemon(state: &Path, extra: &[&str]) -> Daemon {
    start_daemon_with(state, extra, &[])
}

fn start_daemon_with(state: &Path, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    std::fs::create_dir_all(state).unwrap();
    let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let err = state.join(format!("stderr-{n}"));
    let err_file = std::fs::File::create(&err).unwrap();
    let child = gauntlet()
        .args(["daemon", "--state-dir", state.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .expect("the gauntlet binary starts");
    let mut process = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let said = std::fs::read_to_string(&err).unwrap_or_default();
        if let Some(rest) = said.split("gauntlet daemon: http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!("the daemon exited ({status}) before serving:\n{said}");
        }
        assert!(Instant::now() < deadline, "the daemon never said where it serves:\n{said}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let token = std::fs::read_to_string(state.join("token")).unwrap().trim().to_owned();
    Daemon { process, addr, token }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

impl Daemon {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// (status, JSON body) of a GET with the token.
    fn get(&self, path: &str) -> (u16, Value) {
        let mut res =
            agent().get(&self.url(path)).header("Authorization", &format!("Bearer {}", self.token)).call().unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut res = agent()
            .post(&self.url(path))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn submit(&self, config: &str) -> String {
        let (status, body) = self.post("/api/v1/experiments", "application/toml", config.as_bytes());
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    fn experiment(&self, id: &str) -> Value {
        let (status, body) = self.get("/api/v1/experiments");
        assert_eq!(status, 200, "{body}");
        body["experiments"].as_array().unwrap().iter().find(|e| e["id"] == id).cloned().unwrap_or(Value::Null)
    }

    /// Polls the listing of `id` until `done` holds.
    fn wait_for(&self, id: &str, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let e = self.experiment(id);
            if done(&e) {
                return e;
            }
            assert!(Instant::now() < deadline, "{what}: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn sleep_experiment(name: &str, trials: u32, concurrency: u32, epoch_ms: u32, epochs: u32) -> String {
    synthetic_config(
        name,
        &format!(
            "max_trials = {trials}\nconcurrency = {concurrency}\n[model]\nkind = \"sleep\"\nepoch_ms = {epoch_ms}\n\
             quality = {{ uniform = [0.1, 0.9] }}\n[train]\nmax_epochs = {epochs}\n"
        ),
    )
}

fn count(e: &Value, status: &str) -> u64 {
    e["trials"][status].as_u64().unwrap_or(0)
}

/// The number of an event id `LIFE-NUMBER`.
fn seq(id: &str) -> u64 {
    id.split_once('-').and_then(|(_, n)| n.parse().ok()).unwrap_or_else(|| panic!("event id `{id}`"))
}

/// Reads server-sent events (id, kind, data) from `path` until `enough`
/// events came or `limit` passed.
fn read_events(
    d: &Daemon,
    path: &str,
    last_id: Option<&str>,
    enough: usize,
    limit: Duration,
) -> Vec<(String, String, Value)> {
    let mut stream = std::net::TcpStream::connect(&d.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let last = last_id.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n{last}\r\n", d.addr, d.token)
        .unwrap();
    let mut reader = BufReader::new(stream);
    let deadline = Instant::now() + limit;
    let mut events = Vec::new();
    let (mut id, mut kind, mut data) = (String::new(), String::new(), String::new());
    let mut line = String::new();
    while events.len() < enough && Instant::now() < deadline {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => continue, // the read timeout: look at the deadline
        }
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id: ") {
            id = v.to_owned();
        } else if let Some(v) = l.strip_prefix("event: ") {
            kind = v.to_owned();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data = v.to_owned();
        } else if l.is_empty() && !kind.is_empty() {
            events.push((id.clone(), std::mem::take(&mut kind), serde_json::from_str(&data).unwrap_or(Value::Null)));
        }
    }
    events
}

#[test]
fn submit_watch_change_concurrency_and_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(&tmp.path().join("state"), &["--workers", "2"]);
    let id = d.submit(&sleep_experiment("watched", 40, 1, 150, 4));
    // The stream: its state, trials and reports, each with an increasing id.
    let events = read_events(&d, &format!("/api/v1/experiments/{id}/events"), None, 12, Duration::from_secs(60));
    assert!(events.len() >= 12, "{events:?}");
    let life = events[0].0.split_once('-').map(|(l, _)| l.to_owned()).unwrap();
    assert!(
        events.windows(2).all(|w| seq(&w[1].0) == seq(&w[0].0) + 1 && w[1].0.starts_with(&format!("{life}-"))),
        "ids count up by one: {events:?}"
    );
    let report = events.iter().find(|e| e.1 == "report").expect("a report event");
    assert!(report.2["at"].as_str().is_some_and(|a| a.starts_with("20")), "{report:?}");
    assert!(report.2["elapsed_s"].as_f64().is_some_and(|s| s > 0.0), "{report:?}");
    assert!(report.2["value"].is_number() && report.2["epoch"].is_number(), "{report:?}");
    // A client that saw event 5 gets 6 onwards.
    let fifth = format!("{life}-5");
    let again = read_events(&d, &format!("/api/v1/experiments/{id}/events"), Some(&fifth), 3, Duration::from_secs(30));
    assert_eq!(again.first().map(|e| seq(&e.0)), Some(6), "{again:?}");
    // With concurrency 1, one trial runs at a time; then two.
    assert!(count(&d.experiment(&id), "running") <= 1);
    let (status, body) =
        d.post(&format!("/api/v1/experiments/{id}/concurrency"), "application/json", br#"{"concurrency": 2}"#);
    assert_eq!(status, 200, "{body}");
    let e = d.wait_for(&id, "two trials run after the concurrency change", Duration::from_secs(60), |e| {
        count(e, "running") == 2
    });
    assert_eq!(e["concurrency"], 2);
    // One trial stopped, another restarted from its checkpoint.
    let (_, detail) = d.get(&format!("/api/v1/experiments/{id}?status=running"));
    let running: Vec<u64> =
        detail["leaderboard"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(running.len(), 2, "{detail}");
    let (status, body) =
        d.post(&format!("/api/v1/experiments/{id}/trials/{}/stop", running[0]), "application/json", b"");
    assert_eq!(status, 202, "{body}");
    let (status, body) =
        d.post(&format!("/api/v1/experiments/{id}/trials/{}/restart", running[1]), "application/json", b"");
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, t0) = d.get(&format!("/api/v1/experiments/{id}/trials/{}", running[0]));
        let (_, t1) = d.get(&format!("/api/v1/experiments/{id}/trials/{}", running[1]));
        let stopped = t0["trial"]["status"] == "pruned" && t0["trial"]["error"] == "stopped on request";
        let restarted = t1["trial"]["attempts"].as_u64() >= Some(2);
        if stopped && restarted {
            // The new attempt went on from the checkpoint of the epoch the old one stopped at.
            let reports = t1["reports"].as_array().unwrap();
            let later = reports.iter().find(|r| r["attempt"].as_u64() >= Some(1));
            if let Some(r) = later {
                assert!(r["epoch"].as_u64() >= Some(2), "it started over: {reports:?}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "stop and restart: {t0} {t1}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) =
        d.post(&format!("/api/v1/experiments/{id}/trials/{}/stop", running[0]), "application/json", b"");
    assert_eq!(status, 409, "a trial that ended does not stop again: {body}");
    let (status, body) =
        d.post(&format!("/api/v1/experiments/{id}/trials/{}/restart", running[0]), "application/json", b"");
    assert_eq!(status, 409, "a trial that ended does not restart: {body}");
    for action in ["stop", "restart"] {
        let (status, body) =
            d.post(&format!("/api/v1/experiments/{id}/trials/99999/{action}"), "application/json", b"");
        assert_eq!(status, 404, "{action} of a trial that does not exist: {body}");
    }
    // Cancel: running trials stop (paused, resumable), the experiment says cancelled.
    let (status, body) = d.post(&format!("/api/v1/experiments/{id}/cancel"), "application/json", b"");
    assert_eq!(status, 202, "{body}");
    let e = d.wait_for(&id, "the experiment is cancelled", Duration::from_secs(60), |e| e["status"] == "cancelled");
    assert_eq!(count(&e, "running"), 0, "{e}");
    assert!(count(&e, "completed") < 40, "it stopped early: {e}");
    // Once it does not run: a trial it has is a 409, one it never had a 404.
    for (trial, expected) in [("0", 409), ("99999", 404)] {
        for action in ["stop", "restart"] {
            let (status, body) =
                d.post(&format!("/api/v1/experiments/{id}/trials/{trial}/{action}"), "application/json", b"");
            assert_eq!(status, expected, "{action} trial {trial} of a cancelled experiment: {body}");
        }
    }
    // The detail has the leaderboard and the best value over time.
    let (status, detail) = d.get(&format!("/api/v1/experiments/{id}"));
    assert_eq!(status, 200);
    assert!(!detail["leaderboard"].as_array().unwrap().is_empty());
    assert!(!detail["best_over_time"].as_array().unwrap().is_empty(), "{detail}");
    let (status, trial) = d.get(&format!("/api/v1/experiments/{id}/trials/0"));
    assert_eq!(status, 200);
    let reports = trial["reports"].as_array().unwrap();
    assert!(
        !reports.is_empty() && reports.iter().all(|r| r["at"].is_string() && r["elapsed_s"].is_number()),
        "{trial}"
    );
}

#[test]
fn two_experiments_share_the_slots_within_their_caps() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(&tmp.path().join("state"), &["--workers", "3"]);
    // One name for both: ids tell experiments apart.
    let a = d.submit(&sleep_experiment("share", 8, 2, 120, 4));
    let b = d.submit(&sleep_experiment("share", 8, 2, 120, 4));
    assert_ne!(a, b);
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut both, mut most) = (false, 0);
    loop {
        let (_, list) = d.get("/api/v1/experiments");
        let find = |id: &str| list["experiments"].as_array().unwrap().iter().find(|e| e["id"] == id).cloned().unwrap();
        let (ea, eb) = (find(&a), find(&b));
        let (ra, rb) = (count(&ea, "running"), count(&eb, "running"));
        assert!(ra <= 2 && rb <= 2, "an experiment over its cap: {ra} and {rb}");
        most = most.max(ra + rb);
        both |= ra > 0 && rb > 0;
        if ea["status"] == "finished" && eb["status"] == "finished" {
            assert_eq!((count(&ea, "completed"), count(&eb, "completed")), (8, 8));
            break;
        }
        assert!(Instant::now() < deadline, "not finished: {ea} {eb}");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(both, "the two experiments ran at the same time");
    // The event listing can lag a placement by a moment; the pool's own count cannot.
    assert!(most <= 4, "{most}");
    let metrics = scrape(&d);
    let busy = gauge(&metrics, "gauntlet_slots", &[("state", "busy")]);
    let free = gauge(&metrics, "gauntlet_slots", &[("state", "free")]);
    assert_eq!((busy, free), (Some(0.0), Some(3.0)), "three slots, none busy at the end");
    // Each worker loaded each experiment once and dropped it when it ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let logs: Vec<String> = std::fs::read_dir(tmp.path().join("state/workers"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect();
        let each = |what: &str| logs.iter().map(|l| l.matches(what).count()).collect::<Vec<_>>();
        let (loads, drops) = (each("loading an experiment"), each("dropping its data"));
        if logs.len() == 3 && loads == [2, 2, 2] && drops == [2, 2, 2] {
            break;
        }
        assert!(Instant::now() < deadline, "loads {loads:?}, drops {drops:?} in {} worker logs", logs.len());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/metrics`, parsed by a Prometheus text-format parser.
fn scrape(d: &Daemon) -> prometheus_parse::Scrape {
    let mut res =
        agent().get(&d.url("/metrics")).header("Authorization", &format!("Bearer {}", d.token)).call().unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let text = res.body_mut().read_to_string().unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

fn gauge(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).and_then(
        |x| match x.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v)
            | prometheus_parse::Value::Counter(v) => Some(v),
            _ => None,
        },
    )
}

#[test]
fn metrics_are_prometheus_text_with_bounded_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(&tmp.path().join("state"), &["--workers", "1"]);
    let id = d.submit(&sleep_experiment("metered", 3, 1, 50, 2));
    d.wait_for(&id, "it finishes", Duration::from_secs(60), |e| e["status"] == "finished");
    let s = scrape(&d);
    assert_eq!(gauge(&s, "gauntlet_trials", &[("experiment", &id), ("status", "completed")]), Some(3.0));
    assert_eq!(gauge(&s, "gauntlet_reports", &[("experiment", &id)]), Some(6.0));
    assert!(gauge(&s, "gauntlet_best_value", &[("experiment", &id)]).is_some_and(|v| v > 0.0));
    assert!(gauge(&s, "gauntlet_journal_bytes", &[("experiment", &id)]).is_some_and(|v| v > 0.0));
    assert_eq!(gauge(&s, "gauntlet_workers", &[]), Some(1.0));
    for sample in &s.samples {
        for (k, _) in sample.labels.iter() {
            assert!(["experiment", "status", "state"].contains(&k.as_str()), "label {k} on {}", sample.metric);
        }
    }
}

#[test]
fn concurrent_resumes_of_a_paused_experiment_start_it_once_and_a_paused_one_can_be_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(&tmp.path().join("state"), &["--workers", "2"]);
    let id = d.submit(&sleep_experiment("paused", 40, 2, 150, 4));
    d.wait_for(&id, "some reports", Duration::from_secs(60), |e| e["reports"].as_u64() >= Some(2));
    let pause = |d: &Daemon| {
        let (status, body) = d.post(&format!("/api/v1/experiments/{id}/pause"), "application/json", b"");
        assert_eq!(status, 202, "{body}");
        d.wait_for(&id, "paused", Duration::from_secs(60), |e| e["status"] == "paused");
    };
    pause(&d);
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|_| s.spawn(|| d.post(&format!("/api/v1/experiments/{id}/resume"), "application/json", b"")))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(status, _)| *status == 202), "{answers:?}");
    d.wait_for(&id, "running again", Duration::from_secs(60), |e| e["status"] == "running" && count(e, "running") > 0);
    pause(&d);
    let (status, body) = d.post(&format!("/api/v1/experiments/{id}/cancel"), "application/json", b"");
    assert_eq!(status, 202, "{body}");
    d.wait_for(&id, "cancelled", Duration::from_secs(10), |e| e["status"] == "cancelled");
    let (status, body) = d.post(&format!("/api/v1/experiments/{id}/resume"), "application/json", b"");
    assert_eq!(status, 409, "a cancelled experiment stays cancelled: {body}");
}

#[test]
fn a_killed_daemon_restarts_with_every_experiment_and_continues_the_unfinished() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut d = start_daemon(&state, &["--workers", "2"]);
    let done = d.submit(&sleep_experiment("quick", 2, 2, 30, 2));
    d.wait_for(&done, "the quick one finishes", Duration::from_secs(60), |e| e["status"] == "finished");
    let long = d.submit(&sleep_experiment("long", 10, 2, 200, 4));
    d.wait_for(&long, "some reports", Duration::from_secs(60), |e| e["reports"].as_u64() >= Some(4));
    let stream = format!("/api/v1/experiments/{long}/events");
    let old = read_events(&d, &stream, None, 2, Duration::from_secs(30));
    assert_eq!(old.len(), 2, "{old:?}");
    let _ = d.process.0.kill();
    let _ = d.process.0.wait();
    let d = start_daemon(&state, &["--workers", "2"]);
    assert_eq!(d.token, std::fs::read_to_string(state.join("token")).unwrap().trim(), "the same token");
    let e = d.experiment(&done);
    assert_eq!((e["status"].as_str(), count(&e, "completed")), (Some("finished"), 2), "{e}");
    // A client that saw events of the daemon's previous life is told to
    // reset, although this life has numbered as many events already.
    let new = read_events(&d, &stream, None, 3, Duration::from_secs(30));
    assert!(new.len() == 3 && seq(&new[2].0) >= seq(&old[0].0), "{new:?}");
    assert_ne!(new[0].0.split_once('-').unwrap().0, old[0].0.split_once('-').unwrap().0, "a new life");
    for stale in [old[0].0.as_str(), "1000000"] {
        let events = read_events(&d, &stream, Some(stale), 1, Duration::from_secs(30));
        assert_eq!(events.first().map(|e| e.1.as_str()), Some("reset"), "after {stale}: {events:?}");
    }
    let e = d.wait_for(&long, "the long one finishes after the restart", Duration::from_secs(120), |e| {
        e["status"] == "finished"
    });
    assert_eq!(count(&e, "completed"), 10, "no trial lost: {e}");
    let (_, detail) = d.get(&format!("/api/v1/experiments/{long}"));
    for t in detail["leaderboard"].as_array().unwrap() {
        assert_eq!((t["status"].as_str(), t["epochs"].as_u64()), (Some("completed"), Some(4)), "{t}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token is the owner's alone");
    }
}

#[test]
fn a_remote_worker_joins_the_restarted_daemon_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let workers = format!("127.0.0.1:{port}");
    let flags = ["--workers", "0", "--workers-listen", workers.as_str()];
    let secret = "s3cret-for-the-daemon-test";
    let daemon = |state: &Path| start_daemon_with(state, &flags, &[("GAUNTLET_SECRET", secret)]);
    let mut d = daemon(&state);
    let log = std::fs::File::create(tmp.path().join("worker.log")).unwrap();
    let _worker = Running(
        gauntlet()
            .args(["worker", "--join", &workers, "--slots", "2", "--reconnect-for", "60"])
            .env("GAUNTLET_SECRET", secret)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let id = d.submit(&sleep_experiment("remote", 8, 2, 200, 4));
    d.wait_for(&id, "the remote worker trains", Duration::from_secs(60), |e| e["reports"].as_u64() >= Some(3));
    let _ = d.process.0.kill();
    let _ = d.process.0.wait();
    std::thread::sleep(Duration::from_millis(500));
    let d = daemon(&state);
    let deadline = Instant::now() + Duration::from_secs(120);
    let e = loop {
        let e = d.experiment(&id);
        if e["status"] == "finished" {
            break e;
        }
        let said = std::fs::read_to_string(tmp.path().join("worker.log")).unwrap_or_default();
        let tail: Vec<&str> = said.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        assert!(
            Instant::now() < deadline,
            "the worker came back and finished it: {e}\nworker log:\n{}",
            tail.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(count(&e, "completed"), 8, "{e}");
    let said = std::fs::read_to_string(tmp.path().join("worker.log")).unwrap();
    assert!(said.contains("trying to join it again"), "{said}");
}

#[test]
fn bad_requests_get_json_errors_and_the_daemon_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(&tmp.path().join("state"), &["--workers", "1"]);
    let raw = |method: &str, path: &str, auth: Option<&str>, body: &[u8], kind: &str| -> (u16, Value) {
        let req = ureq::http::Request::builder().method(method).uri(d.url(path)).header("Content-Type", kind);
        let req = match auth {
            Some(a) => req.header("Authorization", a),
            None => req,
        };
        let mut res = agent().run(req.body(body.to_vec()).unwrap()).unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    };
    let bearer = format!("Bearer {}", d.token);
    let good = Some(bearer.as_str());
    // A body that never arrives: refused when its deadline passes, not waited for.
    let slow = {
        let (addr, token) = (d.addr.clone(), d.token.clone());
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
            let started = Instant::now();
            write!(
                s,
                "POST /api/v1/experiments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/toml\r\nContent-Length: 500\r\n\r\n[experiment]\n"
            )
            .unwrap();
            let mut answer = String::new();
            let _ = BufReader::new(s).read_line(&mut answer);
            (answer, started.elapsed())
        })
    };
    // Only the health check goes without the token.
    assert_eq!(raw("GET", "/api/v1/health", None, b"", "text/plain").0, 200);
    for auth in [None, Some("Bearer wrong"), Some(d.token.as_str()), Some("Basic Zm9vOmJhcg==")] {
        let (status, body) = raw("GET", "/api/v1/experiments", auth, b"", "text/plain");
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("token")), "{body}");
    }
    assert_eq!(raw("GET", "/metrics", None, b"", "text/plain").0, 401);
    // A config refused as `validate` refuses it, naming the key.
    let (status, body) = raw(
        "POST",
        "/api/v1/experiments",
        good,
        b"[experiment]\nname = \"x\"\nmax_trials = 0\n[model]\nkind = \"sleep\"\n",
        "application/toml",
    );
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("experiment.max_trials"), "{body}");
    let (status, body) = raw("POST", "/api/v1/experiments", good, b"{\"experiment\": [1,", "application/json");
    assert_eq!(status, 422, "{body}");
    let (status, body) = raw("POST", "/api/v1/experiments", good, b"x", "image/png");
    assert_eq!(status, 415, "{body}");
    // Oversized bodies.
    let big = vec![b'#'; 2 << 20];
    let (status, body) = raw("POST", "/api/v1/experiments", good, &big, "application/toml");
    assert_eq!(status, 413, "{body}");
    // Malformed control bodies, unknown ids, traversal attempts.
    let id = d.submit(&sleep_experiment("target", 2, 1, 50, 2));
    for body in [&b"{"[..], b"{\"concurrency\": -1}", b"{\"concurrency\": 0}", b"{\"other\": 1}", b"[]"] {
        let (status, answer) =
            raw("POST", &format!("/api/v1/experiments/{id}/concurrency"), good, body, "application/json");
        assert!(status == 400 || status == 409, "{}: {status} {answer}", String::from_utf8_lossy(body));
        assert!(answer["error"].is_string(), "{answer}");
    }
    for path in [
        "/api/v1/experiments/..%2F..%2Ftoken",
        "/api/v1/experiments/%2e%2e",
        "/api/v1/experiments/0001-x%2F..%2F..%2Ftoken",
        "/api/v1/experiments/9999-nothing",
        "/api/v1/experiments/../../token",
        "/api/v1/experiments/0001-target/trials/..%2F..%2Fjournal.msgpack",
        "/api/v1/experiments/0001-target/trials/99999",
        "/api/v1/nothing",
    ] {
        let (status, body) = raw("GET", path, good, b"", "text/plain");
        assert!((400..500).contains(&status), "{path}: {status} {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
        assert!(!body.to_string().contains(&d.token), "{path} leaked the token");
    }
    // A wrong method is a 405 naming the right ones; a bad query string a JSON 400 naming it.
    for (method, path, allow) in [
        ("DELETE", "/api/v1/experiments".to_owned(), "GET, HEAD, POST"),
        ("GET", format!("/api/v1/experiments/{id}/cancel"), "POST"),
        ("HEAD", format!("/api/v1/experiments/{id}/events"), "GET"),
    ] {
        let req = ureq::http::Request::builder().method(method).uri(d.url(&path)).header("Authorization", &bearer);
        let mut res = agent().run(req.body(Vec::new()).unwrap()).unwrap();
        assert_eq!(res.status().as_u16(), 405, "{method} {path}");
        assert_eq!(res.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow));
        if method != "HEAD" {
            let body: Value = serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
            assert!(body["error"].as_str().unwrap().contains(allow), "{body}");
        }
    }
    // HEAD is GET's answer without its body (curl -I), the token checked as for GET.
    for (path, auth, want) in [
        ("/api/v1/health".to_owned(), "", "200"),
        (format!("/api/v1/experiments/{id}"), bearer.as_str(), "200"),
        (format!("/api/v1/experiments/{id}"), "Bearer wrong", "401"),
    ] {
        let mut s = std::net::TcpStream::connect(&d.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = if auth.is_empty() { String::new() } else { format!("Authorization: {auth}\r\n") };
        write!(s, "HEAD {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n", d.addr).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
        assert!(answer.starts_with(&format!("HTTP/1.1 {want}")), "HEAD {path}: {answer:?}");
        assert!(answer.ends_with("\r\n\r\n"), "HEAD {path} sends no body: {answer:?}");
        if want == "200" {
            assert!(answer.to_lowercase().contains("content-type: application/json"), "{answer:?}");
        }
    }
    for path in [
        format!("/api/v1/experiments/{id}?limit=-1"),
        format!("/api/v1/experiments/{id}/events?after=abc"),
        format!("/api/v1/experiments/{id}?limt=5"),
        format!("/api/v1/experiments/{id}/curves?top=3&bogus=1"),
        "/api/v1/experiments?limit=5".to_owned(),
        format!("/api/v1/experiments/{id}/trials/0?x=1"),
        format!("/api/v1/experiments/{id}/trials/0/log?tail=9"),
    ] {
        let (status, body) = raw("GET", &path, good, b"", "text/plain");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("query string")), "{path}: {body}");
    }
    // Still serving.
    let e =
        d.wait_for(&id, "the experiment finishes all the same", Duration::from_secs(60), |e| e["status"] == "finished");
    let (answer, waited) = slow.join().unwrap();
    assert!(answer.contains(" 408 "), "{answer:?} after {waited:?}");
    assert!(waited < Duration::from_secs(60), "{waited:?}");
    assert_eq!(count(&e, "completed"), 2);
    let (status, doc) = d.get("/api/v1/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/api/v1/experiments/{id}/events"].is_object());
}

#[test]
fn a_non_loopback_address_without_tls_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let o = gauntlet()
        .args(["daemon", "--state-dir", tmp.path().to_str().unwrap(), "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("TLS") && stderr(&o).contains("--insecure"), "{}", stderr(&o));
    // Worker flags are named as the daemon spells them (its --listen is the HTTP address).
    let state = tmp.path().to_str().unwrap();
    for (extra, phrase) in [
        (&["--workers", "0"][..], "--workers 0 needs --workers-listen"),
        (&["--workers", "1", "--workers-listen", "127.0.0.1:0"][..], "--workers-listen lets workers"),
    ] {
        let o = gauntlet()
            .args(["daemon", "--state-dir", state, "--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("GAUNTLET_SECRET")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(phrase), "{extra:?}: {}", stderr(&o));
    }
}

#[test]
fn the_cli_clients_submit_list_watch_cancel_and_show_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let d = start_daemon(&state, &["--workers", "1"]);
    let url = format!("http://{}", d.addr);
    let client = |args: &[&str]| {
        gauntlet().args(args).args(["--daemon", &url, "--state-dir", state.to_str().unwrap()]).output().unwrap()
    };
    let config = write(tmp.path(), "exp.toml", &sleep_experiment("from-cli", 30, 1, 100, 3));
    let o = client(&["submit", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    assert!(id.ends_with("-from-cli"), "{id}");
    d.wait_for(&id, "reports", Duration::from_secs(60), |e| e["reports"].as_u64() >= Some(2));
    let o = client(&["ls", "--json"]);
    let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(listed["experiments"].as_array().unwrap().iter().any(|e| e["id"] == id.as_str()), "{listed}");
    let o = client(&["ls"]);
    assert!(stdout(&o).contains(&id), "{}", stdout(&o));
    let o = client(&["top", &id, "--once"]);
    assert!(o.status.success() && stdout(&o).contains("trial"), "{}{}", stdout(&o), stderr(&o));
    let o = client(&["logs", &id, "0", "--json"]);
    let logs: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert!(logs["reports"].as_array().is_some_and(|r| !r.is_empty()), "{}", stderr(&o));
    let o = client(&["cancel", &id]);
    assert!(o.status.success(), "{}", stderr(&o));
    d.wait_for(&id, "cancelled", Duration::from_secs(60), |e| e["status"] == "cancelled");
    // Columns line up: the reports under their header.
    let o = client(&["ls"]);
    let listing = stdout(&o);
    let lines: Vec<&str> = listing.lines().collect();
    let end = lines[0].find("reports").unwrap() + "reports".len();
    let row = lines.iter().find(|l| l.starts_with(id.as_str())).unwrap();
    assert!(row.as_bytes()[end - 1].is_ascii_digit() && row.as_bytes()[end] == b' ', "{lines:?}");
    // Mistakes are usage errors, sent nowhere: an id that is no id (it would have
    // reached another endpoint), a malformed daemon URL, a token with control characters.
    for bad in ["../../etc", &format!("{id}/resume?"), &format!("{id}?limit=1#"), "a b"] {
        let o = client(&["cancel", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("is not an experiment id"), "{bad}: {}", stderr(&o));
    }
    for daemon in [format!("{url}/a b"), "http://127.0.0.1:99999".to_owned()] {
        let o = gauntlet().args(["ls", "--daemon", &daemon, "--state-dir", state.to_str().unwrap()]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{daemon}: {}", stderr(&o));
        assert!(stderr(&o).contains("--daemon"), "{}", stderr(&o));
    }
    // A second daemon on the same state directory is refused (it listed the first one's experiments as failed).
    let o = gauntlet()
        .args(["daemon", "--state-dir", state.to_str().unwrap(), "--listen", "127.0.0.1:0", "--workers", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let pid = d.process.0.id().to_string();
    assert!(stderr(&o).contains("another daemon") && stderr(&o).contains(&pid), "{}", stderr(&o));
    let o = gauntlet().args(["ls", "--daemon", &url]).env("GAUNTLET_TOKEN", "abc\u{1}def").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("GAUNTLET_TOKEN"), "{}", stderr(&o));
    let o = gauntlet().args(["ls", "--daemon", &url]).env_remove("GAUNTLET_TOKEN").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("GAUNTLET_TOKEN"), "{}", stderr(&o));
}

#[test]
fn the_best_model_of_a_finished_experiment_predicts_over_http() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(&tmp.path().join("state"), &["--workers", "1"]);
    let config = synthetic_config(
        "predicts",
        &format!("max_trials = 2\nconcurrency = 1\n{SYNTHETIC_DATA}{MLP_MODEL}[train]\nmax_epochs = 2\n"),
    );
    let id = d.submit(&config);
    let path = format!("/api/v1/experiments/{id}/predict");
    let rows = |n: usize, width: usize| serde_json::json!({ "rows": vec![vec![0.5f32; width]; n] }).to_string();
    let e = d.wait_for(&id, "it finishes", Duration::from_secs(120), |e| e["status"] == "finished");
    assert_eq!(count(&e, "completed"), 2, "{e}");
    // More rows than one forward pass takes (256): one answer each, in order.
    let (status, body) = d.post(&path, "application/json", rows(300, 12).as_bytes());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["classes"].as_array().map(Vec::len), Some(3), "{body}");
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 300);
    for p in predictions {
        let sum: f64 = p["probabilities"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3 && p["class"].is_string(), "{p}");
    }
    assert!(predictions.iter().all(|p| p == &predictions[0]), "the same row, the same answer");
    // Rows of the wrong width, and values no float32 holds, are 400s naming them.
    let (status, body) = d.post(&path, "application/json", br#"{"rows": [[0,0,0,0,0,0,0,0,0,0,0,0], [1, 2]]}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("sample 2 (rows[1]): 2 values, expected 12 features"), "{body}");
    // A request holds at most 10,000 rows (8 MiB of short rows would cost the daemon a gigabyte).
    let (status, body) = d.post(&path, "application/json", rows(10_001, 12).as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("10001 rows, expected 1 to 10000"), "{body}");
    let mut huge = vec![0.0f64; 12];
    huge[4] = 1e39;
    let (status, body) =
        d.post(&path, "application/json", serde_json::json!({ "rows": [huge] }).to_string().as_bytes());
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("sample 1, feature 5"), "{body}");
    let (status, body) = d.post(&path, "application/json", br#"{"rows": []}"#);
    assert_eq!((status, body["error"].as_str().is_some()), (400, true), "{body}");
    let other = format!("/api/v1/experiments/{id}x/predict");
    let (status, body) = d.post(&other, "application/json", rows(1, 12).as_bytes());
    assert_eq!(status, 404, "{id}: {body}");
    // A kind that leaves no model says so (it said the model appears when the experiment ends).
    let sleep = d.submit(&sleep_experiment("no-model", 1, 1, 1, 1));
    let (status, body) =
        d.post(&format!("/api/v1/experiments/{sleep}/predict"), "application/json", rows(1, 1).as_bytes());
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("model.kind = \"sleep\" leaves no model"), "{body}");
}

#[test]
fn stops_and_resumes_that_cross_end_as_asked_and_a_set_concurrency_outlives_a_pause() {
    let tmp = tempfile::tempdir().unwrap();
    let d = start_daemon(&tmp.path().join("state"), &["--workers", "2"]);
    let act = |id: &str, what: &str| d.post(&format!("/api/v1/experiments/{id}/{what}"), "application/json", b"");
    // A resume sent while a pause is under way: accepted, and it runs again once paused (it stayed paused).
    let id = d.submit(&sleep_experiment("crossing", 40, 2, 200, 20));
    d.wait_for(&id, "some reports", Duration::from_secs(60), |e| e["reports"].as_u64() >= Some(2));
    let (status, body) =
        d.post(&format!("/api/v1/experiments/{id}/concurrency"), "application/json", br#"{"concurrency": 1}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(act(&id, "pause").0, 202);
    let (status, body) = act(&id, "resume");
    assert_eq!(status, 202, "{body}");
    // It goes down (trials checkpoint) and comes up again by itself: its state events say
    // paused, then running (replayed from the first event: the daemon keeps the last 1024).
    let events =
        read_events(&d, &format!("/api/v1/experiments/{id}/events?after=0"), None, 1000, Duration::from_secs(8));
    let states: Vec<&str> = events.iter().filter(|e| e.1 == "state").filter_map(|e| e.2["status"].as_str()).collect();
    let paused = states.iter().position(|s| *s == "paused").unwrap_or_else(|| panic!("never paused: {states:?}"));
    assert!(states[paused..].contains(&"running"), "running again after the pause: {states:?}");
    let e = d.wait_for(&id, "trials running", Duration::from_secs(60), |e| count(e, "running") > 0);
    // The concurrency set before the pause still holds.
    assert_eq!(e["concurrency"], 1, "{e}");
    assert!(count(&e, "running") <= 1, "{e}");
    assert_eq!(act(&id, "cancel").0, 202);
    d.wait_for(&id, "cancelled", Duration::from_secs(60), |e| e["status"] == "cancelled");
    // A pause after a cancel does not make it resumable: cancelled for good. Epochs of
    // 5 s keep the run going down while the pause comes.
    let id = d.submit(&sleep_experiment("slow", 4, 2, 5000, 3));
    d.wait_for(&id, "trials running", Duration::from_secs(60), |e| count(e, "running") > 0);
    // Pause, resume, pause while it goes down: the last word holds, it stays paused.
    for what in ["pause", "resume", "pause"] {
        assert_eq!(act(&id, what).0, 202, "{what}");
    }
    d.wait_for(&id, "paused", Duration::from_secs(60), |e| e["status"] == "paused");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(d.experiment(&id)["status"], "paused");
    assert_eq!(act(&id, "resume").0, 202);
    d.wait_for(&id, "trials running", Duration::from_secs(60), |e| count(e, "running") > 0);
    assert_eq!(act(&id, "cancel").0, 202);
    let (status, body) = act(&id, "pause");
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("being cancelled"), "{body}");
    let (status, _) = act(&id, "resume");
    assert_eq!(status, 409);
    d.wait_for(&id, "cancelled", Duration::from_secs(60), |e| e["status"] == "cancelled");
    assert_eq!(act(&id, "resume").0, 409, "a cancelled experiment stays cancelled");
}

#[test]
fn a_command_experiment_runs_in_the_daemon_and_its_log_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let program = write(
        tmp.path(),
        "count.py",
        "import json, os\nfor e in range(1, 4):\n    print('epoch', e, 'in', os.getcwd())\n    \
         print(json.dumps({'epoch': e, 'val_accuracy': 0.1 * e}), flush=True)\n",
    );
    let d = start_daemon(&tmp.path().join("state"), &["--workers", "1"]);
    let config = format!(
        "[experiment]\nname = \"cmd\"\nmax_trials = 2\nconcurrency = 1\n[model]\nkind = \"command\"\n\
         command = \"python3 {}\"\n[train]\nmax_epochs = 3\n",
        program.display()
    );
    let id = d.submit(&config);
    let e = d.wait_for(&id, "it finishes", Duration::from_secs(120), |e| e["status"] != "running");
    assert_eq!((e["status"].as_str(), count(&e, "completed")), (Some("finished"), 2), "{e}");
    let (status, log) = d.get(&format!("/api/v1/experiments/{id}/trials/0/log"));
    assert_eq!(status, 200, "{log}");
    let log = log.as_str().map(str::to_owned).unwrap_or_else(|| log.to_string());
    assert!(log.contains("epoch 3 in") && log.contains(&id), "it ran in its run directory: {log}");
    // A program that is not there is refused at submission, naming it; no directory is left.
    let missing = config.replace(&program.display().to_string(), "/nonexistent/train.py");
    let (status, body) = d.post("/api/v1/experiments", "application/toml", missing.replace("python3 ", "").as_bytes());
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("/nonexistent/train.py"), "{body}");
    // `gauntlet submit` sends the config file's directory: a program named relative to it
    // runs there, as under `gauntlet run` (before, every trial failed in the run directory).
    let relative = write(tmp.path(), "cmd.toml", &config.replace(&program.display().to_string(), "count.py"));
    let o = gauntlet()
        .args(["submit", relative.to_str().unwrap(), "--daemon", &format!("http://{}", d.addr)])
        .args(["--state-dir", tmp.path().join("state").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    let e = d.wait_for(&id, "it finishes", Duration::from_secs(120), |e| e["status"] != "running");
    assert_eq!((e["status"].as_str(), count(&e, "completed")), (Some("finished"), 2), "{e}");
    let (_, log) = d.get(&format!("/api/v1/experiments/{id}/trials/0/log"));
    let log = log.as_str().map(str::to_owned).unwrap_or_else(|| log.to_string());
    let here = std::fs::canonicalize(tmp.path()).unwrap();
    assert!(log.contains(&format!("epoch 3 in {}", here.display())), "it ran in the config's directory: {log}");
    let (status, body) = d.post("/api/v1/experiments?dir=relative/dir", "application/toml", config.as_bytes());
    assert_eq!(status, 400, "{body}");
}
