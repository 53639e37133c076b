//! What the daemon costs: the real binary on loopback.
//!
//! 1. API latency: 64 client threads read status (`GET /api/v1/experiments`
//!    and one experiment's leaderboard, alternately) while 4 experiments
//!    run; p50, p99 and the request rate. Bounded: 64 x 100 requests, 60 s.
//! 2. Event-stream delivery: one client on the stream of an experiment whose
//!    trials report as fast as they can (20 epochs of 0 ms), against the
//!    reports the experiment made in the same 10 s.
//! 3. Hosting: 100 experiments of 100 trials (sleep trials, 2 epochs of
//!    1 ms) submitted at once; the time they take, then the daemon's
//!    resident memory and its CPU over 10 s of idling.
//!
//! `cargo bench --bench daemon` (or `scripts/bench-daemon`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gauntlet");

struct Daemon {
    child: Child,
    addr: String,
    token: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(state: &std::path::Path, workers: u32) -> Daemon {
    std::fs::create_dir_all(state).unwrap();
    let err = state.join("stderr");
    let child = Command::new(BIN)
        .args(["daemon", "--state-dir", state.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .args(["--workers", &workers.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let said = std::fs::read_to_string(&err).unwrap_or_default();
        if let Some(rest) = said.split("gauntlet daemon: http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the daemon never served: {said}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let token = std::fs::read_to_string(state.join("token")).unwrap().trim().to_owned();
    Daemon { child, addr, token }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn config(name: &str, trials: u32, epoch_ms: u32, epochs: u32) -> String {
    format!(
        "[experiment]\nname = \"{name}\"\nmax_trials = {trials}\nconcurrency = 1\n[model]\nkind = \"sleep\"\n\
         epoch_ms = {epoch_ms}\nquality = {{ uniform = [0.1, 0.9] }}\n[train]\nmax_epochs = {epochs}\n\
         [fault]\ncheckpoint_every = 1000000\n"
    )
}

impl Daemon {
    fn submit(&self, a: &ureq::Agent, text: &str) -> String {
        let mut res = a
            .post(&format!("http://{}/api/v1/experiments", self.addr))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/toml")
            .send(text)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
        v["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned()
    }

    fn get(&self, a: &ureq::Agent, path: &str) -> serde_json::Value {
        let mut res = a
            .get(&format!("http://{}{path}", self.addr))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap();
        serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Resident memory (kB) and CPU ticks (user + system) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    (rss, ticks)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let a = agent();

    // 1. Latency under 64 readers while experiments run.
    let d = start(&tmp.path().join("latency"), 2);
    let ids: Vec<String> = (0..4).map(|i| d.submit(&a, &config(&format!("busy-{i}"), 400, 20, 5))).collect();
    std::thread::sleep(Duration::from_secs(2));
    let (clients, each) = (64, 100);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (addr, token, id) = (d.addr.clone(), d.token.clone(), ids[c % ids.len()].clone());
            std::thread::spawn(move || {
                let a = agent();
                let mut lat = Vec::with_capacity(each);
                for i in 0..each {
                    if Instant::now() > deadline {
                        break;
                    }
                    let path = if i % 2 == 0 {
                        "/api/v1/experiments".to_owned()
                    } else {
                        format!("/api/v1/experiments/{id}?limit=20")
                    };
                    let t = Instant::now();
                    let mut res = a
                        .get(&format!("http://{addr}{path}"))
                        .header("Authorization", &format!("Bearer {token}"))
                        .call()
                        .unwrap();
                    let _ = res.body_mut().read_to_string().unwrap();
                    assert_eq!(res.status().as_u16(), 200);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let wall = started.elapsed();
    lat.sort();
    println!(
        "status reads, {clients} clients, {} requests in {wall:.2?} ({:.0}/s) while 4 experiments run: p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );

    // 2. Event-stream delivery, from an experiment that reports as fast as it can.
    let id = &d.submit(&a, &config("stream", 1000, 0, 20));
    std::thread::sleep(Duration::from_secs(1));
    let before = d.get(&a, "/api/v1/experiments");
    let reports = |v: &serde_json::Value| -> u64 {
        v["experiments"].as_array().unwrap().iter().find(|e| e["id"] == id.as_str()).unwrap()["reports"]
            .as_u64()
            .unwrap()
    };
    let r0 = reports(&before);
    let mut stream = std::net::TcpStream::connect(&d.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    write!(
        stream,
        "GET /api/v1/experiments/{id}/events?after={} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        u64::MAX / 2,
        d.token
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let (window, t0) = (Duration::from_secs(10), Instant::now());
    let (mut report_events, mut all, mut line) = (0u64, 0u64, String::new());
    while t0.elapsed() < window {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            continue;
        }
        if line.starts_with("event: ") {
            all += 1;
            report_events += u64::from(line.trim_end() == "event: report");
        }
    }
    let r1 = reports(&d.get(&a, "/api/v1/experiments"));
    println!(
        "event stream: {all} events in {window:?} ({:.0}/s), {report_events} of them reports; the experiment made {} reports meanwhile",
        all as f64 / window.as_secs_f64(),
        r1 - r0
    );
    drop(d);

    // 3. 100 experiments of 100 trials.
    let d = start(&tmp.path().join("hosting"), 2);
    let t = Instant::now();
    let ids: Vec<String> = (0..100).map(|i| d.submit(&a, &config(&format!("many-{i}"), 100, 1, 2))).collect();
    let submitted = t.elapsed();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut peak, mut finished) = (0, 0);
    while Instant::now() < deadline {
        let v = d.get(&a, "/api/v1/experiments");
        finished = v["experiments"].as_array().unwrap().iter().filter(|e| e["status"] == "finished").count();
        peak = peak.max(usage(d.pid()).0);
        if finished == ids.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let ran = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (rss, ticks0) = usage(d.pid());
    std::thread::sleep(Duration::from_secs(10));
    let (_, ticks1) = usage(d.pid());
    let hz = 100.0; // USER_HZ on Linux
    println!(
        "100 experiments x 100 trials: submitted in {submitted:.2?}, {finished} finished in {ran:.1?}; daemon resident {} MiB \
         at the end (peak {} MiB); idle CPU {:.2}% of a core over 10 s",
        rss / 1024,
        peak / 1024,
        (ticks1 - ticks0) as f64 / hz / 10.0 * 100.0
    );
}
