//! `gauntlet daemon` and the commands that talk to one: `submit`, `ls`,
//! `top`, `cancel`, `logs`.

use super::ExitCode;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gauntlet::daemon::{self, DaemonOptions};

use super::UsageError;

/// `gauntlet daemon`.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Where experiments, the API token and logs live.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// The HTTP address of the API and dashboard.
    #[arg(long, default_value = "127.0.0.1:8470", value_name = "HOST:PORT")]
    listen: String,
    /// Serve a non-loopback --listen address without TLS.
    #[arg(long)]
    insecure: bool,
    /// Local worker processes (default: one per core).
    #[arg(long)]
    workers: Option<u32>,
    /// Also accept workers from other machines on ADDR (HOST:PORT); needs
    /// a shared secret (GAUNTLET_SECRET or --secret-file).
    #[arg(long, value_name = "ADDR")]
    workers_listen: Option<String>,
    /// A file whose first line is the secret workers must present.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
}

impl DaemonArgs {
    /// Whether the daemon starts local workers (`--workers 0` starts none).
    pub fn spawns_workers(&self) -> bool {
        self.workers != Some(0)
    }
}

pub fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    let listen: SocketAddr =
        gauntlet::cluster::node::resolve(&args.listen).map_err(|e| UsageError(format!("--listen: {e}")))?;
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| UsageError(format!("--state-dir: cannot create {}: {e}", args.state_dir.display())))?;
    let _log = init_daemon_logging(&args.state_dir)?;
    super::install_panic_hook();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let secret =
        gauntlet::cluster::node::read_secret(args.secret_file.as_deref()).map_err(|e| UsageError(e.to_string()))?;
    let engine = gauntlet::engine::EngineOptions {
        workers: args.workers.unwrap_or(cores),
        workers_from: if args.workers.is_some() { "--workers" } else { "one worker per core" }.into(),
        listen: args.workers_listen.clone(),
        listen_from: "--workers-listen".into(),
        secret,
        gpus: Vec::new(),
        gpus_per_worker: 0,
        threads: 0,
        log_dir: args.state_dir.join("workers"),
        data_bytes: 0,
    };
    let options = DaemonOptions { state_dir: args.state_dir.clone(), listen, insecure: args.insecure, engine };
    match daemon::run(options) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is_usage() => Err(UsageError(e.to_string()).into()),
        Err(e) => Err(e.into()),
    }
}

fn init_daemon_logging(dir: &Path) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let path = dir.join("daemon.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    super::install_logs(
        writer,
        "info,ractor=warn,ractor_cluster=error,actix_server=warn",
        "warn,ractor=error,ractor_cluster=error,actix_server=error",
    );
    Ok(guard)
}

/// How a client finds the daemon.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The daemon's URL.
    #[arg(long, env = "GAUNTLET_DAEMON", default_value = "http://127.0.0.1:8470", value_name = "URL")]
    daemon: String,
    /// The daemon's state directory, to read its token from (else GAUNTLET_TOKEN).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let token = match (&args.state_dir, std::env::var(daemon::TOKEN_ENV)) {
            (Some(dir), _) => {
                let file = dir.join(daemon::TOKEN_FILE);
                daemon::read_token(&file)
                    .map_err(|e| UsageError(format!("--state-dir: cannot read the token {}: {e}", file.display())))?
            }
            (None, Ok(t)) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                return Err(UsageError(format!(
                    "the daemon needs its token: pass --state-dir DIR (the daemon's) or set {}",
                    daemon::TOKEN_ENV
                ))
                .into())
            }
        };
        let base = args.daemon.trim_end_matches('/').to_owned();
        let authority = base.strip_prefix("http://").unwrap_or_default();
        if authority.is_empty()
            || authority.contains(['/', '?', '#', '@'])
            || !authority.bytes().all(|b| b.is_ascii_graphic())
            || (!authority.ends_with(']')
                && authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_err()))
        {
            return Err(UsageError(format!("--daemon {base}: expected http://HOST:PORT, with no path")).into());
        }
        // A header value is visible ASCII: a token with control characters is no token.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UsageError(format!(
                "the token (from {}): expected the text of the daemon's token file, without control characters \
                 or spaces",
                if args.state_dir.is_some() { "--state-dir" } else { daemon::TOKEN_ENV }
            ))
            .into());
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Ok(Client { base, token, agent: config.into() })
    }

    fn answer(&self, result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> anyhow::Result<String> {
        let mut res = result.map_err(|e| match e {
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Timeout(_) => {
                anyhow::anyhow!("cannot reach the daemon at {}: {e} (is `gauntlet daemon` running?)", self.base)
            }
            e => anyhow::anyhow!("cannot talk to the daemon at {}: {e}", self.base),
        })?;
        let status = res.status();
        // The longest answer: a trial's 100,000 reports.
        let text = res
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .context("cannot read the daemon's answer")?;
        if status.is_success() {
            return Ok(text);
        }
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        if status.is_client_error() {
            Err(UsageError(format!("the daemon refused: {why} (HTTP {})", status.as_u16())).into())
        } else {
            Err(anyhow::anyhow!("the daemon failed: {why} (HTTP {})", status.as_u16()))
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        self.answer(self.agent.get(&url).header("Authorization", &format!("Bearer {}", self.token)).call())
    }

    fn post(&self, path: &str, content_type: &str, body: &str) -> anyhow::Result<String> {
        self.post_query(path, &[], content_type, body)
    }

    /// [`Client::post`] with query parameters, percent-encoded.
    fn post_query(&self, path: &str, query: &[(&str, &str)], content_type: &str, body: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", content_type);
        for (key, value) in query {
            req = req.query(*key, *value);
        }
        self.answer(req.send(body))
    }

    fn json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.get(path)?)?)
    }
}

/// The largest answer a client reads (a trial of 100,000 reports is about 16 MB).
const MAX_ANSWER_BYTES: u64 = 256 << 20;

/// `id` if it is an experiment id as the daemon issues them: it goes into URLs.
fn checked_id(id: &str) -> anyhow::Result<&str> {
    if daemon::registry::valid_id(id) {
        Ok(id)
    } else {
        Err(UsageError(format!(
            "`{id}` is not an experiment id (expected digits, a dash and lower-case letters, digits or dashes, as \
             `gauntlet submit` and `gauntlet ls` print them)"
        ))
        .into())
    }
}

/// `gauntlet submit CONFIG`.
pub fn submit(config: &Path, args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let limit = gauntlet::config::MAX_CONFIG_BYTES;
    let bytes = gauntlet::files::read_at_most(config, limit)
        .map_err(|e| UsageError(format!("{}: cannot read it: {e}", config.display())))?
        .ok_or_else(|| {
            UsageError(format!("{}: larger than {limit} bytes: expected a config file", config.display()))
        })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| UsageError(format!("{}: not UTF-8 text: expected a config file", config.display())))?;
    let kind = match config.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => "application/yaml",
        Some("json") => "application/json",
        _ => "application/toml",
    };
    // Relative paths in the config are relative to its file, on this machine (the daemon's: loopback).
    let dir = std::fs::canonicalize(config)
        .ok()
        .and_then(|c| c.parent().map(Path::to_owned))
        .ok_or_else(|| UsageError(format!("{}: cannot find the directory it is in", config.display())))?;
    let dir = dir.to_str().ok_or_else(|| {
        UsageError(format!("{}: its directory's path is not UTF-8, which a request cannot carry", dir.display()))
    })?;
    let client = Client::new(args)?;
    let answer: serde_json::Value =
        serde_json::from_str(&client.post_query("/api/v1/experiments", &[("dir", dir)], kind, &text)?)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        outln!("{}", answer["id"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

/// `gauntlet ls`.
pub fn ls(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(args)?;
    let answer = client.json("/api/v1/experiments")?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<28} {:<10} {:>12} {:>9}  trials", "id", "status", "best", "reports");
    for e in answer["experiments"].as_array().into_iter().flatten() {
        let counts: Vec<String> =
            e["trials"].as_object().into_iter().flatten().map(|(s, n)| format!("{n} {s}")).collect();
        outln!(
            "{:<28} {:<10} {:>12} {:>9}  {}/{}: {}",
            e["id"].as_str().unwrap_or_default(),
            e["status"].as_str().unwrap_or_default(),
            e["best"].as_f64().map_or("-".into(), |b| format!("{b:.4}")),
            e["reports"].to_string(),
            e["total_trials"],
            e["max_trials"],
            counts.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `gauntlet top ID`: the leaderboard, redrawn each second until the
/// experiment stops (or once, with `--json` or `--once`).
pub fn top(id: &str, once: bool, args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let id = checked_id(id)?;
    let client = Client::new(args)?;
    let path = format!("/api/v1/experiments/{id}?limit=20");
    loop {
        let answer = client.json(&path)?;
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&answer)?);
            return Ok(ExitCode::SUCCESS);
        }
        let e = &answer["experiment"];
        let mut out = String::new();
        if !once {
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&format!(
            "{} ({}) — {}; best {} = {}; {} reports\n\n{:>6} {:<10} {:>10} {:>6}  params\n",
            e["name"].as_str().unwrap_or_default(),
            id,
            e["status"].as_str().unwrap_or_default(),
            answer["metric"].as_str().unwrap_or_default(),
            e["best"].as_f64().map_or("-".into(), |b| format!("{b:.4}")),
            e["reports"],
            "trial",
            "status",
            "best",
            "epochs"
        ));
        for t in answer["leaderboard"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{:>6} {:<10} {:>10} {:>6}  {}\n",
                t["id"].to_string(),
                t["status"].as_str().unwrap_or_default(),
                t["best_metric"].as_f64().map_or("-".into(), |b| format!("{b:.4}")),
                t["epochs"].to_string(),
                t["params"]
            ));
        }
        out!("{out}");
        if once || e["status"] != "running" || super::stdout_gone() {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `gauntlet cancel ID`.
pub fn cancel(id: &str, args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let id = checked_id(id)?;
    let client = Client::new(args)?;
    let answer = client.post(&format!("/api/v1/experiments/{id}/cancel"), "application/json", "")?;
    if args.json {
        outln!("{answer}");
    } else {
        outln!("{id}: cancelling; running trials stop at their next report");
    }
    Ok(ExitCode::SUCCESS)
}

/// `gauntlet logs ID TRIAL`: the trial's reports, then its program's output.
pub fn logs(id: &str, trial: u32, args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let id = checked_id(id)?;
    let client = Client::new(args)?;
    let answer = client.json(&format!("/api/v1/experiments/{id}/trials/{trial}"))?;
    let log = client.get(&format!("/api/v1/experiments/{id}/trials/{trial}/log"))?;
    if args.json {
        let out = serde_json::json!({ "trial": answer["trial"], "reports": answer["reports"], "log": log });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let t = &answer["trial"];
    outln!(
        "trial {trial}: {}, {} epochs, params {}",
        t["status"].as_str().unwrap_or_default(),
        t["epochs"],
        t["params"]
    );
    if let Some(e) = t["error"].as_str() {
        outln!("error: {e}");
    }
    for r in answer["reports"].as_array().into_iter().flatten() {
        outln!("{r}");
    }
    if !log.is_empty() {
        outln!("--- output ---\n{log}");
    }
    Ok(ExitCode::SUCCESS)
}
