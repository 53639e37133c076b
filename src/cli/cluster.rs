//! The coordinator's side of the cluster for `run` and `resume` (its node,
//! pool and local workers), and the `worker` subcommand.

use super::ExitCode;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gauntlet::cluster::local::{LocalWorkers, Spec};
use gauntlet::cluster::node::{self, NodeError};
// The most slots one worker offers (each is a thread, or a process with `--gpus`).
use gauntlet::cluster::wire::MAX_SLOTS;
use gauntlet::engine::{Engine, EngineOptions};
use gauntlet::worker::{self, WorkerError, WorkerExit, WorkerOptions};

use super::UsageError;

/// The longest wait a worker's flags may ask for: a week, in seconds.
const MAX_WAIT_SECS: u64 = 7 * 24 * 3600;

/// Where trials run: flags shared by `run` and `resume`.
#[derive(Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Local worker processes to spawn (default: the experiment's
    /// concurrency; 0: only workers that join with `gauntlet worker`).
    #[arg(long)]
    workers: Option<u32>,
    /// Also accept workers from other machines on ADDR (HOST:PORT); needs
    /// a shared secret (GAUNTLET_SECRET or --secret-file).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// A file whose first line is the secret workers must present.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// GPU indexes for the local workers, e.g. `0,1`; each worker owns
    /// `gpus_per_trial` of them (exported as CUDA_VISIBLE_DEVICES).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    gpus: Vec<u32>,
}

impl ClusterArgs {
    /// Whether local workers may be started (`--workers 0` starts none).
    pub fn spawns_workers(&self) -> bool {
        self.workers != Some(0)
    }

    /// The engine these flags ask for: `default_workers` local workers
    /// unless `--workers` says otherwise, each holding `data_bytes` of data.
    /// Refuses flags that cannot make a cluster, before a run directory is
    /// touched (the experiment's own worker count is checked when it is known).
    pub fn check(&self) -> anyhow::Result<()> {
        let secret = node::read_secret(self.secret_file.as_deref()).map_err(usage)?;
        gauntlet::engine::check_cluster(
            self.workers.unwrap_or(1),
            self.listen.is_some(),
            secret.is_some(),
            "--listen",
        )?;
        if let Some(listen) = &self.listen {
            let flag = |e: NodeError| UsageError(format!("--listen: {e}"));
            node::check_listen(node::resolve(listen).map_err(flag)?).map_err(flag)?;
        }
        Ok(())
    }

    pub fn engine_options(
        &self,
        default_workers: u32,
        gpus_per_trial: u32,
        threads: u32,
        log_dir: PathBuf,
        data_bytes: u64,
    ) -> anyhow::Result<EngineOptions> {
        let secret = node::read_secret(self.secret_file.as_deref()).map_err(usage)?;
        Ok(EngineOptions {
            workers: self.workers.unwrap_or(default_workers),
            workers_from: if self.workers.is_some() { "--workers" } else { "experiment.concurrency" }.into(),
            listen: self.listen.clone(),
            listen_from: "--listen".into(),
            secret,
            gpus: self.gpus.clone(),
            gpus_per_worker: gpus_per_trial,
            threads,
            log_dir,
            data_bytes,
        })
    }
}

/// Starts an engine (its warnings go to the log and stderr), saying where
/// workers join.
pub async fn start_engine(options: EngineOptions) -> anyhow::Result<Engine> {
    let engine = Engine::start(options).await?;
    if let Some(addr) = engine.listening {
        eprintln!("listening for workers on {addr}");
    }
    Ok(engine)
}

fn usage(e: NodeError) -> anyhow::Error {
    match e {
        NodeError::Start { .. } => anyhow::Error::new(e),
        e => UsageError(e.to_string()).into(),
    }
}

/// `gauntlet worker`.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The coordinator, HOST:PORT (as `gauntlet run --listen` printed it).
    #[arg(long, value_name = "HOST:PORT")]
    join: String,
    /// Trials this worker runs at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// libtorch threads per slot (default: the experiment's threads_per_trial).
    #[arg(long)]
    threads_per_slot: Option<u32>,
    /// GPU indexes the slots own, e.g. `0,1`: each slot then runs in a
    /// process of its own with CUDA_VISIBLE_DEVICES set to its GPU.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    gpus: Vec<u32>,
    /// A file whose first line is the shared secret (else GAUNTLET_SECRET).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// How long to keep trying to reach the coordinator, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    connect_timeout: u64,
    /// When the coordinator is lost (killed, restarted), keep trying to
    /// join it again for this many seconds (0: exit at once). Its running
    /// trials stop either way; the restarted coordinator continues them.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    reconnect_for: u64,
    /// Spawned by a coordinator on its own machine.
    #[arg(long, hide = true)]
    local: bool,
}

impl WorkerArgs {
    /// Whether this worker starts a process per slot (`--gpus`).
    pub fn spawns_workers(&self) -> bool {
        !self.gpus.is_empty()
    }
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    init_worker_logging();
    super::install_panic_hook();
    if !(1..=MAX_SLOTS).contains(&args.slots) {
        return Err(UsageError(format!("--slots: expected 1 to {MAX_SLOTS}, got {}", args.slots)).into());
    }
    let most = gauntlet::config::MAX_THREADS_PER_TRIAL;
    if let Some(t) = args.threads_per_slot.filter(|t| !(1..=most).contains(t)) {
        return Err(UsageError(format!("--threads-per-slot: expected 1 to {most}, got {t}")).into());
    }
    if args.gpus.len() > MAX_SLOTS as usize {
        return Err(UsageError(format!("--gpus: expected at most {MAX_SLOTS} GPUs, got {}", args.gpus.len())).into());
    }
    let secret = node::read_secret(args.secret_file.as_deref()).map_err(usage)?.ok_or_else(|| {
        UsageError(format!(
            "a worker needs the coordinator's shared secret: pass --secret-file FILE or set {}",
            node::SECRET_ENV
        ))
    })?;
    node::resolve(&args.join).map_err(usage)?;
    if args.gpus.len() > 1 || (!args.gpus.is_empty() && args.slots > 1) {
        return gpu_launcher(&args, secret);
    }
    if let Some(gpu) = args.gpus.first() {
        // Before libtorch starts: each slot's process sees only its GPU.
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("CUDA_VISIBLE_DEVICES", gpu.to_string()) };
    }
    let mut options = WorkerOptions {
        join: args.join.clone(),
        slots: args.slots,
        threads_per_slot: args.threads_per_slot,
        secret,
        local: args.local,
        connect_timeout: Duration::from_secs(args.connect_timeout),
    };
    // A local worker dies with its coordinator; a remote one joins it again once it is back.
    let reconnect = if args.local { Duration::ZERO } else { Duration::from_secs(args.reconnect_for) };
    // When the coordinator was lost, and so until when to try joining it again.
    let mut lost: Option<std::time::Instant> = None;
    let exit = loop {
        let exit = match worker::run(options.clone()) {
            Ok(exit) => exit,
            Err(WorkerError::Connect { message, .. }) if lost.is_some() => {
                // Reachable but silent (a coordinator still starting): try again while the window lasts.
                let left =
                    lost.map_or(Duration::ZERO, |until| until.saturating_duration_since(std::time::Instant::now()));
                if left.is_zero() {
                    break WorkerExit::CoordinatorLost(format!(
                        "it did not take this worker back within {reconnect:.0?}: {message}"
                    ));
                }
                tracing::warn!("rejoining failed ({message}); trying again");
                options.connect_timeout = left;
                continue;
            }
            // This secret was accepted before: a closed handshake now is a
            // coordinator still starting or a peer in its place; try again.
            Err(WorkerError::Refused(why)) if lost.is_some() => {
                let left =
                    lost.map_or(Duration::ZERO, |until| until.saturating_duration_since(std::time::Instant::now()));
                if left.is_zero() {
                    break WorkerExit::CoordinatorLost(format!("it did not take this worker back: {why}"));
                }
                tracing::warn!("rejoining failed ({why}); trying again");
                std::thread::sleep(Duration::from_secs(1).min(left));
                options.connect_timeout = left.saturating_sub(Duration::from_secs(1)).max(Duration::from_secs(1));
                continue;
            }
            Err(e @ (WorkerError::Refused(_) | WorkerError::Node(_))) => return Err(UsageError(e.to_string()).into()),
            Err(e) => return Err(e.into()),
        };
        match exit {
            WorkerExit::CoordinatorLost(why) if !reconnect.is_zero() => {
                eprintln!(
                    "worker: lost the coordinator at {} ({why}); trying to join it again for {reconnect:.0?}",
                    args.join
                );
                tracing::warn!("lost the coordinator ({why}); reconnecting for up to {reconnect:.0?}");
                options.connect_timeout = reconnect;
                lost = Some(std::time::Instant::now() + reconnect);
            }
            exit => break exit,
        }
    };
    Ok(match exit {
        WorkerExit::Shutdown(why) => {
            eprintln!("worker: exiting: {why}");
            ExitCode::SUCCESS
        }
        WorkerExit::Left => {
            eprintln!("worker: left the sweep; its trials continue elsewhere from their checkpoints");
            ExitCode::SUCCESS
        }
        WorkerExit::Refused(why) => {
            eprintln!("error: the coordinator refused this worker: {why}");
            ExitCode::from(2)
        }
        WorkerExit::HungUp(why) => {
            eprintln!(
                "error: the worker stopped on {why}; its trials continue elsewhere from their checkpoints (or \
                 `gauntlet resume DIR` continues the sweep)"
            );
            ExitCode::from(3)
        }
        WorkerExit::CoordinatorLost(why) => {
            eprintln!(
                "error: lost the coordinator at {} ({why}); its trials stop here. Continue the sweep with \
                 `gauntlet resume DIR` and start workers again",
                args.join
            );
            ExitCode::from(3)
        }
    })
}

/// `--gpus` with several slots: one process per slot, each owning its GPU.
fn gpu_launcher(args: &WorkerArgs, secret: String) -> anyhow::Result<ExitCode> {
    let (count, warning) =
        gauntlet::engine::local_workers(args.slots.max(args.gpus.len() as u32) as usize, 0, "--slots");
    if let Some(w) = warning {
        tracing::warn!("{w}");
        eprintln!("warning: {w}");
    }
    let spec = Spec {
        exe: std::env::current_exe().context("cannot find the gauntlet binary")?,
        join: args.join.clone(),
        threads: args.threads_per_slot.unwrap_or(0),
        secret,
        log_dir: std::env::temp_dir().join(format!("gauntlet-worker-{}", std::process::id())),
        gpus: (0..count).map(|i| Some(args.gpus[i % args.gpus.len()].to_string())).collect(),
        local: false,
    };
    let log_dir = spec.log_dir.clone();
    eprintln!("worker: {count} slot processes, logs in {}", log_dir.display());
    // How each slot process ended for good (exit 0, 2 refused, 3 coordinator lost).
    let ended: Arc<Mutex<Vec<(i32, String)>>> = Arc::default();
    let seen = ended.clone();
    let workers = LocalWorkers::start(spec, count, move |exit| {
        tracing::warn!("{}", exit.text);
        if let Some(code @ (0 | 2 | 3)) = exit.code {
            if let Ok(mut e) = seen.lock() {
                e.push((code, exit.text));
            }
        }
    })?;
    let all_ended = || ended.lock().map_or(true, |e| e.len() >= count);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let finished = async {
            while !all_ended() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = finished => {}
        }
        anyhow::Ok(())
    })?;
    workers.terminate();
    workers.shutdown(Duration::from_secs(120));
    // The launcher ends as its slots did: refused (2) before lost (3) before done.
    let ended = ended.lock().map(|e| e.clone()).unwrap_or_default();
    let worst = [2, 3].into_iter().find_map(|code| ended.iter().find(|(c, _)| *c == code));
    Ok(match worst {
        Some((code, text)) => {
            let why = if *code == 2 { "was refused" } else { "lost its coordinator" };
            eprintln!("error: a slot process {why} ({text}); its log, in {}, says why", log_dir.display());
            ExitCode::from(*code as u8)
        }
        None => ExitCode::SUCCESS,
    })
}

fn init_worker_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ractor=warn,ractor_cluster=error"));
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_env_filter(filter).init();
}
