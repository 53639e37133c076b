//! The daemon: `gauntlet daemon --state-dir DIR`. One engine hosting many
//! experiments, an HTTP API under `/api/v1` (actix-web on the actors' own
//! tokio runtime; no actix actors), a dashboard at `/`, and Prometheus
//! metrics at `/metrics`.
//!
//! ```text
//! STATE/token                 the API's bearer token (0600), made on first start
//! STATE/experiments/<id>/     one run directory each (journal, trials, results)
//! STATE/workers/              the local workers' logs
//! STATE/daemon.log            the daemon's log
//! ```
//! Killed and started again, the daemon lists every experiment as before
//! and continues the unfinished ones from their journals.
//!
//! The server future and every actor run on the daemon's one tokio
//! runtime; actix-web's own worker threads (actix-rt, one single-threaded
//! runtime each) only parse requests and call the actors, and every file
//! read goes through `spawn_blocking`.

mod api;
mod metrics;
pub mod registry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::{Engine, EngineError, EngineOptions};
pub use api::ApiError;
use registry::Registry;

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Where experiments, the token and logs live.
    pub state_dir: PathBuf,
    /// The HTTP address.
    pub listen: SocketAddr,
    /// Serve a non-loopback address without TLS.
    pub insecure: bool,
    /// The engine: local workers, remote workers' address and secret.
    pub engine: EngineOptions,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A mistake in the flags (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A file of the state directory.
    #[error("{0}")]
    State(String),
    /// The HTTP server.
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl DaemonError {
    /// Whether the user's input is at fault.
    pub fn is_usage(&self) -> bool {
        match self {
            DaemonError::Usage(_) => true,
            DaemonError::Engine(e) => e.is_usage(),
            _ => false,
        }
    }
}

/// The token file's name in the state directory.
pub const TOKEN_FILE: &str = "token";

/// The environment variable clients read the token from.
pub const TOKEN_ENV: &str = "GAUNTLET_TOKEN";

/// The largest token file read.
pub const MAX_TOKEN_BYTES: u64 = 4096;

/// Reads a token file: its text, trimmed (empty if it is), at most
/// [`MAX_TOKEN_BYTES`] and UTF-8.
pub fn read_token(path: &Path) -> std::io::Result<String> {
    let bytes = crate::files::read_at_most(path, MAX_TOKEN_BYTES)?.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("over {MAX_TOKEN_BYTES} bytes: not a token"))
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text: not a token"))?;
    Ok(text.trim().to_owned())
}

/// Reads the token, or makes one (0600) on first start.
pub fn token(state_dir: &Path) -> Result<String, DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(TOKEN_FILE);
    let bad = |e: std::io::Error| DaemonError::State(format!("{}: {e}", path.display()));
    match read_token(&path) {
        Ok(t) if !t.is_empty() => return Ok(t),
        Ok(_) => {
            return Err(DaemonError::State(format!(
                "{} is empty: remove it and a new token is made at the next start",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(e)),
    }
    let token = crate::cluster::node::random_secret();
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(bad)?;
    file.write_all(format!("{token}\n").as_bytes()).map_err(bad)?;
    file.sync_all().map_err(bad)?;
    Ok(token)
}

/// The lock file of a state directory.
const LOCK_FILE: &str = "daemon.lock";

/// Takes the state directory's lock, or says which daemon holds it.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let bad = |e: std::io::Error| DaemonError::State(format!("{}: {e}", path.display()));
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(bad)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(bad)?;
            file.rewind().map_err(bad)?;
            write!(file, "{}", std::process::id()).map_err(bad)?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.take(32).read_to_string(&mut pid);
            Err(DaemonError::Usage(format!(
                "--state-dir {}: another daemon (process {}) uses it; stop that one, or give this one another \
                 state directory",
                dir.display(),
                pid.trim()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(bad(e)),
    }
}

/// Runs the daemon until SIGINT or SIGTERM, on a runtime of its own.
pub fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    if !options.listen.ip().is_loopback() && !options.insecure {
        return Err(DaemonError::Usage(format!(
            "--listen {}: not a loopback address, and the daemon serves plain HTTP (TLS is not built in): its \
             token and experiments would cross the network unencrypted. Listen on 127.0.0.1 and put a TLS proxy \
             in front, or pass --insecure on a network you trust",
            options.listen
        )));
    }
    std::fs::create_dir_all(&options.state_dir)
        .map_err(|e| DaemonError::State(format!("cannot create {}: {e}", options.state_dir.display())))?;
    // One daemon a state directory: a second would find every running experiment's journal
    // locked and list it as failed. Held (the file open) until this function returns.
    let _lock = lock_state_dir(&options.state_dir)?;
    let token = token(&options.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| DaemonError::State(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(options, token))
}

async fn serve(options: DaemonOptions, token: String) -> Result<(), DaemonError> {
    let engine = Engine::start(options.engine.clone()).await?;
    let registry = Registry::open(engine, options.state_dir.join("experiments"))
        .await
        .map_err(|e| DaemonError::State(e.to_string()))?;
    let state = Arc::new(api::AppState::new(registry.clone(), token));
    let server =
        api::server(state, options.listen).map_err(|source| DaemonError::Http { addr: options.listen, source })?;
    let addr = server.1;
    tracing::info!("serving the API on http://{addr}/api/v1 and the dashboard on http://{addr}/");
    eprintln!("gauntlet daemon: http://{addr}/ (token in {})", options.state_dir.join(TOKEN_FILE).display());
    let handle = server.0.handle();
    let serving = tokio::spawn(server.0);
    crate::engine::shutdown_signal().await;
    tracing::info!("stopping: running trials checkpoint at their next report");
    handle.stop(true).await;
    let _ = serving.await;
    registry.shutdown().await;
    Ok(())
}
