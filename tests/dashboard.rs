//! The dashboard in a real browser: Debian's headless Chromium driven over
//! WebDriver (chromedriver), against a real daemon on loopback. It must
//! list the experiment, draw learning curves and parallel coordinates, fill
//! the leaderboard, follow the experiment live to its end, and it leaves a
//! screenshot in `target/tmp/dashboard.png`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let req = ureq::http::Request::builder().method(method).uri(url).header("Content-Type", "application/json");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut res = agent().run(req.body(body.into_bytes()).unwrap()).unwrap();
    let text = res.body_mut().with_config().limit(64 << 20).read_to_string().unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert!(res.status().is_success(), "{method} {url}: {text}");
    v
}

/// A WebDriver session, closed when dropped.
struct Browser {
    base: String,
    session: String,
    _driver: Running,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "{CHROMIUM} and {CHROMEDRIVER} are needed: scripts/test installs them (Debian's chromium, chromium-driver)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Running(
            std::process::Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent().get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1400,1800".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
        }}});
        let session =
            call("POST", &format!("{base}/session"), Some(caps))["value"]["sessionId"].as_str().unwrap().to_owned();
        Browser { base, session, _driver: driver, _profile: profile }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn open(&self, url: &str) {
        call("POST", &self.url("/url"), Some(json!({ "url": url })));
    }

    fn eval(&self, script: &str) -> Value {
        call("POST", &self.url("/execute/sync"), Some(json!({ "script": script, "args": [] })))["value"].clone()
    }

    /// Evaluates `script` until it returns true.
    fn until(&self, what: &str, script: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval(script) == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: the page has {}", self.eval("return document.body.innerText"));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn screenshot(&self, path: &std::path::Path) {
        let png = call("GET", &self.url("/screenshot"), None)["value"].as_str().unwrap().to_owned();
        let bytes = base64::engine::general_purpose::STANDARD.decode(png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = agent().delete(&format!("{}/session/{}", self.base, self.session)).call();
    }
}

#[test]
fn the_dashboard_lists_experiments_and_draws_curves_and_parameters_live() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let err = state.join("stderr");
    let _daemon = Running(
        gauntlet()
            .args(["daemon", "--state-dir", state.to_str().unwrap(), "--listen", "127.0.0.1:0", "--workers", "2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let said = std::fs::read_to_string(&err).unwrap_or_default();
        if let Some(rest) = said.split("gauntlet daemon: http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the daemon never served:\n{said}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let token = std::fs::read_to_string(state.join("token")).unwrap().trim().to_owned();
    let config = r#"
[experiment]
name = "dash"
max_trials = 16
concurrency = 2
[model]
kind = "sleep"
epoch_ms = 150
quality = { uniform = [0.1, 0.9] }
[train]
max_epochs = 9
lr = { loguniform = [0.0001, 0.1] }
[scheduler]
kind = "asha"
grace_epochs = 1
reduction_factor = 3
"#;
    let mut res = agent()
        .post(&format!("http://{addr}/api/v1/experiments"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/toml")
        .send(config)
        .unwrap();
    let created: Value = serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let browser = Browser::start();
    // Without a token the page asks for one.
    browser.open(&format!("http://{addr}/"));
    browser.eval("localStorage.clear(); return true");
    browser.open(&format!("http://{addr}/?fresh"));
    browser.until("the token form", "return !document.getElementById('login').hidden", Duration::from_secs(20));
    browser.open(&format!("http://{addr}/#token={token}&experiment={id}"));
    browser.until(
        "the experiment is listed",
        &format!("return [...document.querySelectorAll('#experiments tbody tr')].some(r => r.dataset.id === '{id}')"),
        Duration::from_secs(30),
    );
    browser.until(
        "learning curves of several trials",
        "return document.querySelectorAll('#curves polyline').length >= 3",
        Duration::from_secs(60),
    );
    browser.until(
        "parallel coordinates with an axis per searched parameter and the metric",
        "return document.querySelectorAll('#parallel polyline').length >= 3 && \
         [...document.querySelectorAll('#parallel text')].map(t => t.textContent).join(' ').includes('lr')",
        Duration::from_secs(60),
    );
    // It follows the experiment live to its end: pruned trials cut short and marked.
    browser.until(
        "the page shows the experiment finished",
        "return document.getElementById('exp-summary').textContent.startsWith('finished')",
        Duration::from_secs(120),
    );
    browser.until(
        "16 leaderboard rows, pruned ones marked on the curves",
        "return document.querySelectorAll('#leaderboard tbody tr').length === 16 && \
         document.querySelectorAll('#curves .pruned-mark').length > 0 && \
         document.querySelectorAll('#best path').length === 1",
        Duration::from_secs(30),
    );
    // Sorting by a column.
    browser.eval("document.querySelector('#leaderboard th[data-key=\"id\"]').click(); return true");
    browser.until(
        "sorted by trial",
        "return document.querySelector('#leaderboard th[data-key=\"id\"]').textContent.includes('▼')",
        Duration::from_secs(10),
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(shots).unwrap();
    browser.screenshot(&shots.join("dashboard.png"));
}
