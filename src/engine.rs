//! The engine: one worker pool (its cluster node and local worker
//! processes) hosting any number of experiments at once, and the life of a
//! run directory (create, resume, repair, tidy). `gauntlet run` is an engine
//! with one experiment; the daemon is an engine with many. Both edges stay
//! thin: everything that decides lives here or below.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gauntlet::engine::EngineError> {
//! use gauntlet::engine::{Engine, EngineOptions, Run};
//! let engine = Engine::start(EngineOptions { workers: 2, ..EngineOptions::default() }).await?;
//! let run = tokio::task::spawn_blocking(|| Run::create("exp.toml".as_ref(), "runs/exp".as_ref()))
//!     .await
//!     .expect("not cancelled")?;
//! let handle = engine.launch(run, None).await?;
//! let summary = handle.wait().await?;
//! println!("best: {:?}", summary.best());
//! engine.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::CheckpointStore;
use crate::cluster::local::{Capacity, LocalWorkers, Spec};
use crate::cluster::node::{self, NodeError};
use crate::cluster::wire::ExperimentSource;
use crate::config::{Config, ConfigError, ConfigFormat};
use crate::data::DataError;
use crate::journal::{self, Event, Journal, JournalError, ReplayError, RunState};
use crate::run_dir::{RunDir, RunDirError};
use crate::supervision::pool::Pool;
use crate::supervision::{ExperimentHandle, Observer, Sweep, SweepError};
use crate::trainable::Trainable;
use crate::trial::TrialStatus;

/// Why the engine or a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A mistake in what was asked (exit code 2 at the command line).
    #[error("{0}")]
    Usage(String),
    /// The config is bad.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data is bad.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The run directory is not one.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The journal cannot be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The journal's events do not replay.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The cluster node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// An actor could not start.
    #[error(transparent)]
    Sweep(#[from] SweepError),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl EngineError {
    /// Whether the input is at fault (a config, a flag, a directory, data)
    /// rather than the machine.
    pub fn is_usage(&self) -> bool {
        match self {
            EngineError::Usage(_)
            | EngineError::Config(_)
            | EngineError::Data(_)
            | EngineError::RunDir(_)
            | EngineError::Replay(_) => true,
            EngineError::Journal(e) => {
                matches!(e, JournalError::Corrupt { .. } | JournalError::Header { .. } | JournalError::Busy { .. })
            }
            EngineError::Node(e) => !matches!(e, NodeError::Start { .. }),
            EngineError::Sweep(_) | EngineError::Io { .. } => false,
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
        let what = what.into();
        move |source| EngineError::Io { what, source }
    }
}

/// How to start an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Local worker processes to start (capped by what the machine holds).
    pub workers: u32,
    /// Where the cap came from, for its warning (`--workers`, say).
    pub workers_from: String,
    /// Also accept workers from other machines here; needs `secret`.
    pub listen: Option<String>,
    /// The flag that set `listen`, for messages (`--listen` when empty).
    pub listen_from: String,
    /// The secret workers present; a random one when `None` and nobody
    /// else joins.
    pub secret: Option<String>,
    /// GPU indexes for the local workers, split into `gpus_per_worker` each.
    pub gpus: Vec<u32>,
    /// GPUs each local worker owns.
    pub gpus_per_worker: u32,
    /// libtorch threads per local worker slot (0: each experiment's own).
    pub threads: u32,
    /// Where the local workers' logs go.
    pub log_dir: PathBuf,
    /// Data each local worker holds (for the memory cap).
    pub data_bytes: u64,
}

/// A worker pool that hosts experiments.
pub struct Engine {
    pool: Pool,
    local: Option<LocalWorkers>,
    /// Warnings from starting (local workers capped).
    pub warnings: Vec<String>,
    /// Where remote workers join (with `listen`).
    pub listening: Option<SocketAddr>,
}

impl Engine {
    /// Starts the cluster node, the pool and the local workers (as many as
    /// asked, at most what the machine holds: see [`Capacity`]).
    pub async fn start(options: EngineOptions) -> Result<Engine, EngineError> {
        let listen: SocketAddr = match &options.listen {
            Some(addr) => node::resolve(addr)?,
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let listen_flag = if options.listen_from.is_empty() { "--listen" } else { options.listen_from.as_str() };
        check_cluster(options.workers, options.listen.is_some(), options.secret.is_some(), listen_flag)?;
        let secret = options.secret.clone().unwrap_or_else(node::random_secret);
        let gpus = per_worker_gpus(&options.gpus, options.gpus_per_worker)?;
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let name = format!("coordinator-{}", std::process::id());
        let node = node::start(&name, listen, &secret, events_tx).await.map_err(|e| match e {
            NodeError::Bind { .. } => EngineError::Usage(format!("{listen_flag}: {e}")),
            e => e.into(),
        })?;
        let pool = Pool::start().await?;
        let forward = pool.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                forward.node_event(event);
            }
        });
        let ip = if listen.ip().is_unspecified() { [127, 0, 0, 1].into() } else { listen.ip() };
        let join = SocketAddr::new(ip, node.port);
        let mut warnings = Vec::new();
        let listening = options.listen.is_some().then(|| SocketAddr::new(listen.ip(), node.port));
        if let Some(addr) = listening {
            tracing::info!("listening for workers on {addr}");
            if !node::is_loopback(&listen) {
                warnings.push(format!(
                    "cluster traffic on {listen} is not encrypted (TLS is not configured): run it on a trusted \
                     network or through a tunnel"
                ));
            }
        }
        let (count, warning) = local_workers(options.workers as usize, options.data_bytes, &options.workers_from);
        warnings.extend(warning);
        let local = if count > 0 {
            let spec = Spec {
                exe: std::env::current_exe()
                    .map_err(EngineError::io("cannot find the gauntlet binary to start workers"))?,
                join: join.to_string(),
                threads: options.threads,
                secret,
                log_dir: options.log_dir.clone(),
                gpus: (0..count).map(|i| (!gpus.is_empty()).then(|| gpus[i % gpus.len()].clone())).collect(),
                local: true,
            };
            let on_exit = pool.clone();
            let what = format!("cannot start local workers (logs in {})", options.log_dir.display());
            Some(
                LocalWorkers::start(spec, count, move |exit| on_exit.worker_exited(exit))
                    .map_err(EngineError::io(what))?,
            )
        } else {
            None
        };
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(Engine { pool, local, warnings, listening })
    }

    /// The worker pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Starts a run on the engine's workers; `observer` hears every event
    /// as it happens (a progress display).
    pub async fn launch(&self, run: Run, observer: Option<Observer>) -> Result<ExperimentHandle, EngineError> {
        let spec = run.spec.clone();
        let mut sweep = run.into_sweep();
        if let Some(o) = observer {
            sweep = sweep.observer(move |e| o(e));
        }
        Ok(sweep.workers(self.pool.clone(), spec).spawn().await?)
    }

    /// Tells the workers the engine is done and waits for the local ones to exit.
    pub async fn shutdown(self) {
        let started = std::time::Instant::now();
        if let Some(local) = &self.local {
            local.stop_respawning();
        }
        self.pool.shutdown().await;
        let told = started.elapsed();
        if let Some(local) = self.local {
            let _ = tokio::task::spawn_blocking(move || local.shutdown(Duration::from_secs(3))).await;
        }
        tracing::info!(?told, took = ?started.elapsed(), "workers stopped");
    }
}

/// Resolves on SIGINT or SIGTERM (never, where signals cannot be watched).
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The local worker processes to start when `what` asks for `asked`, each
/// holding `data_bytes`: at most what the machine holds ([`Capacity`]), with
/// a warning that says why when that is fewer.
pub fn local_workers(asked: usize, data_bytes: u64, what: &str) -> (usize, Option<String>) {
    let capacity = Capacity::of_machine(data_bytes);
    if asked <= capacity.limit {
        return (asked, None);
    }
    let warning = format!(
        "{what} asks for {asked} local workers; starting {}, the most this machine holds ({}). Workers that \
         join with --listen add slots beyond that",
        capacity.limit,
        capacity.explain()
    );
    (capacity.limit, Some(warning))
}

/// Splits the GPU list into one group of `per` GPUs for each worker.
/// Refuses a cluster that cannot be: `--listen` without a shared secret,
/// or no local workers (`--workers 0`) and none that may join. Pure: the
/// CLI asks before it touches a run directory.
/// `listen_flag` names the flag that sets `listen` (`--listen`, or the daemon's `--workers-listen`).
pub fn check_cluster(workers: u32, listen: bool, secret: bool, listen_flag: &str) -> Result<(), EngineError> {
    if listen && !secret {
        return Err(EngineError::Usage(format!(
            "{listen_flag} lets workers on other machines join, so it needs a shared secret: put one in a file \
             (`chmod 600`) and pass --secret-file FILE, or set GAUNTLET_SECRET; workers need the same one"
        )));
    }
    if workers == 0 && !listen {
        return Err(EngineError::Usage(format!(
            "--workers 0 needs {listen_flag}: with no local workers, workers must join"
        )));
    }
    Ok(())
}

fn per_worker_gpus(gpus: &[u32], per: u32) -> Result<Vec<String>, EngineError> {
    if gpus.is_empty() || per == 0 {
        return Ok(Vec::new());
    }
    if gpus.len() < per as usize {
        return Err(EngineError::Usage(format!(
            "--gpus lists {} GPU(s) but experiment.gpus_per_trial is {per}",
            gpus.len()
        )));
    }
    Ok(gpus
        .chunks(per as usize)
        .filter(|c| c.len() == per as usize)
        .map(|c| c.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .collect())
}

/// A run directory ready to run: created from a config, or opened with its
/// journal replayed and the disk made to agree with it. Both steps block
/// (files, data loading): call them off the tokio workers.
pub struct Run {
    /// The experiment's config.
    pub config: Config,
    /// Its run directory.
    pub run_dir: RunDir,
    /// Its journal, open for appending.
    pub journal: Journal,
    /// The model description and data, checked.
    pub trainable: Arc<dyn Trainable>,
    /// What workers load.
    pub spec: ExperimentSource,
    /// The replayed state of a resumed run.
    pub resumed: Option<RunState>,
    /// What the user should hear (a torn journal tail, a repair).
    pub warnings: Vec<String>,
}

/// What opening a run directory found.
pub enum Opened {
    /// It finished: nothing to resume.
    Finished(Box<RunState>),
    /// It continues.
    Run(Box<Run>),
}

impl Run {
    /// Whether a new run may go into `dir`: it holds no run (but one that
    /// died before recording its config) and no one else's files. Changes
    /// nothing (`gauntlet validate --out` asks it too).
    pub fn check_new_dir(dir: &Path) -> Result<(), EngineError> {
        let existing = dir.join(journal::JOURNAL_FILE);
        let died_young = existing.exists() && journal::read(&existing).is_ok_and(|c| c.records.is_empty());
        if existing.exists() && !died_young {
            return Err(EngineError::Usage(format!(
                "{} already holds a run; continue it with `gauntlet resume {}`, or choose another --out",
                dir.display(),
                dir.display()
            )));
        }
        // A run writes config.toml, gauntlet.log, best/ ... into its directory:
        // never over someone's files. An empty trials/ alone is what a run
        // that died before its journal leaves.
        let born_dead = |entries: std::fs::ReadDir| {
            entries
                .filter_map(Result::ok)
                .all(|e| e.file_name() == "trials" && std::fs::read_dir(e.path()).is_ok_and(|mut t| t.next().is_none()))
        };
        if !died_young && std::fs::read_dir(dir).is_ok_and(|entries| !born_dead(entries)) {
            return Err(EngineError::Usage(format!(
                "{} holds files but no run: expected a new or empty directory for the run; choose another --out",
                dir.display()
            )));
        }
        Ok(())
    }

    /// Creates a run in `dir` (which must not hold one) from the config file
    /// at `config_path`: checks the config and its data first, so that bad
    /// input leaves no directory behind, then records the config.
    pub fn create(config_path: &Path, dir: &Path) -> Result<Run, EngineError> {
        let (config, text) = Config::load_with_text(config_path)?;
        Self::create_from(config, &text, config_path, dir)
    }

    /// [`Run::create`] from a config already parsed from `text`, which was
    /// read from (or stands for) `config_path`.
    pub fn create_from(config: Config, text: &str, config_path: &Path, dir: &Path) -> Result<Run, EngineError> {
        Self::check_new_dir(dir)?;
        let existing = dir.join(journal::JOURNAL_FILE);
        if existing.exists() {
            // A run that died before recording its config: nothing to keep.
            std::fs::remove_file(&existing)
                .map_err(EngineError::io(format!("cannot remove {}", existing.display())))?;
        }
        // Bad data is bad input too: find out before a run directory appears.
        let trainable = config.model.build(&config)?;
        trainable.check_space(&config.space).map_err(|message| ConfigError::Invalid {
            file: config_path.to_owned(),
            key: "model".into(),
            message,
        })?;
        let run_dir = RunDir::create(dir)
            .map_err(|e| EngineError::Usage(format!("cannot create the run directory {}: {e}", dir.display())))?;
        // The journal first: a run that dies from here on leaves a directory
        // a new run may take (the journal holds no record yet).
        let journal = Journal::create(&run_dir.journal_file())?;
        run_dir
            .save_config(config_path, text)
            .map_err(EngineError::io(format!("cannot copy the config into {}", dir.display())))?;
        journal.slow_commits(config.chaos.journal_sync_ms);
        let config_path_abs = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned());
        let format = ConfigFormat::of(config_path);
        let spec = ExperimentSource {
            name: config.experiment.name.clone(),
            config_text: text.to_owned(),
            format,
            config_path: config_path_abs.clone(),
        };
        let yaml = format == ConfigFormat::Yaml;
        journal.append_durable(Event::ExperimentCreated {
            config_path: config_path_abs,
            yaml,
            config_text: text.to_owned(),
        })?;
        Ok(Run { config, run_dir, journal, trainable, spec, resumed: None, warnings: Vec::new() })
    }

    /// Opens the run in `dir` to continue it: replays its journal (with
    /// `repair`, one corrupt in the middle is cut at the damage), and makes
    /// the disk agree with it (see [`tidy_for_resume`]).
    pub fn open(dir: &Path, repair: bool) -> Result<Opened, EngineError> {
        let run_dir = RunDir::open(dir)?;
        let mut warnings = Vec::new();
        // The lock before the read: a live run is refused, and one that ends
        // meanwhile is read whole (its tail would be cut off otherwise).
        // A journal this process may not write (a read-only archive) is read
        // unlocked: enough to say a finished run finished.
        let (mut locked, unwritable) = match Journal::lock_existing(&run_dir.journal_file()) {
            Ok(l) => (Some(l), None),
            Err(JournalError::Io { source, path })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                (None, Some(JournalError::Io { source, path }))
            }
            Err(e) => return Err(e.into()),
        };
        let contents = read_journal(&run_dir, repair, &mut warnings)?;
        let valid_len = contents.valid_len;
        // As the replay decides it: the last stop says whether the run finished.
        let finished = contents.records.iter().rev().find_map(|r| match r.event {
            Event::SweepStopped { finished } => Some(finished),
            _ => None,
        });
        // Under the lock, results.jsonl anew from the journal.
        let journal = match (finished, locked.take()) {
            (Some(true), l) => {
                locked = l;
                None
            }
            (_, Some(l)) => {
                let journal = Journal::append_locked(l, &run_dir.journal_file(), valid_len)?;
                export_results(&run_dir, &contents.records)?;
                Some(journal)
            }
            (_, None) => return Err(unwritable.expect("no lock: the journal is not writable").into()),
        };
        let state = journal::replay(contents.records, &run_dir.journal_file())?;
        if state.finished() {
            return Ok(Opened::Finished(Box::new(state)));
        }
        if let Some(e) = unwritable.filter(|_| journal.is_none() && locked.is_none()) {
            return Err(e.into());
        }
        let config = state.config.clone();
        config.check_files(&state.config_path)?;
        let trainable = config.model.build(&config)?;
        let journal = match (journal, locked) {
            (Some(j), _) => j,
            (None, Some(locked)) => Journal::append_locked(locked, &run_dir.journal_file(), valid_len)?,
            (None, None) => Journal::append_to(&run_dir.journal_file(), valid_len)?,
        };
        journal.slow_commits(config.chaos.journal_sync_ms);
        tidy_for_resume(&run_dir, &config, &state, &journal)?;
        let spec = ExperimentSource {
            name: config.experiment.name.clone(),
            config_text: state.config_text.clone(),
            format: state.format,
            config_path: state.config_path.clone(),
        };
        let run = Run { config, run_dir, journal, trainable, spec, resumed: Some(state), warnings };
        Ok(Opened::Run(Box::new(run)))
    }

    /// The sweep this run is.
    pub fn into_sweep(self) -> Sweep {
        let mut sweep =
            Sweep::from_config_shared(&self.config, self.trainable).run_dir(self.run_dir).journal(self.journal);
        if let Some(state) = &self.resumed {
            sweep = sweep.resume(state);
        }
        sweep
    }
}

/// Writes `results.jsonl` anew from the journal's reports before a run
/// continues: lines appended for reports that never became durable (a
/// kill between the two writes, or a journal cut by `--repair`) would
/// otherwise stand beside the same epochs reported again. A journal of
/// before reports carried their time is left with its file as it is.
fn export_results(run: &RunDir, records: &[journal::Record]) -> Result<(), EngineError> {
    let reports = records.iter().filter_map(|r| match &r.event {
        Event::Report { id, attempt, epoch, metrics, decision, at } => {
            Some((id, attempt, epoch, metrics, decision, at))
        }
        _ => None,
    });
    if reports.clone().any(|r| r.5.is_none()) {
        return Ok(());
    }
    let io = EngineError::io(format!("cannot write results.jsonl in {}", run.root().display()));
    let tmp = run.root().join(".results.jsonl.tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut log = run.results_log_at(&tmp).map_err(io)?;
        for (id, attempt, epoch, metrics, decision, at) in reports {
            let report =
                crate::trial::Report { trial: *id, attempt: *attempt, epoch: *epoch, metrics: metrics.clone() };
            let at = at.as_ref().expect("checked above");
            log.append(&report, decision, at).map_err(EngineError::io("cannot write results.jsonl"))?;
        }
        log.sync().map_err(EngineError::io("cannot write results.jsonl"))?;
    }
    std::fs::rename(&tmp, run.root().join("results.jsonl"))
        .map_err(EngineError::io(format!("cannot replace results.jsonl in {}", run.root().display())))
}

/// Replays the run in `dir` without touching it (a live run's too):
/// its state now, and warnings (a torn tail).
pub fn read_run(dir: &Path) -> Result<(RunDir, RunState, Vec<String>), EngineError> {
    let run_dir = RunDir::open(dir)?;
    let mut warnings = Vec::new();
    let contents = read_journal(&run_dir, false, &mut warnings)?;
    let state = journal::replay(contents.records, &run_dir.journal_file())?;
    Ok((run_dir, state, warnings))
}

/// Reads a run's journal, saying what a torn tail loses; with `repair`, a
/// journal corrupt in the middle is read up to the damage.
fn read_journal(run: &RunDir, repair: bool, warnings: &mut Vec<String>) -> Result<journal::Contents, EngineError> {
    let path = run.journal_file();
    let contents = match journal::read(&path) {
        Err(JournalError::Corrupt { offset, after, message, .. }) if repair => {
            let bytes = std::fs::read(&path).map_err(EngineError::io(format!("cannot read {}", path.display())))?;
            let contents = journal::decode(&bytes[..offset as usize], &path)?;
            warnings.push(format!(
                "repair: {}: {message} at byte {offset}; dropping the {after} bytes from there ({} readable events kept)",
                path.display(),
                contents.records.len()
            ));
            contents
        }
        other => other?,
    };
    if contents.torn_bytes > 0 {
        warnings.push(format!(
            "{}: the last {} bytes, from byte {}, are a frame cut short by a crash; ignoring them",
            path.display(),
            contents.torn_bytes,
            contents.valid_len
        ));
    }
    Ok(contents)
}

/// Makes the disk agree with the journal before continuing: trials that
/// replay ended get their end recorded and their checkpoints trimmed, and
/// checkpoints of a history the journal does not hold (a repair cut it off)
/// are removed, so no trial resumes from them.
fn tidy_for_resume(run: &RunDir, config: &Config, state: &RunState, journal: &Journal) -> Result<(), EngineError> {
    let store = CheckpointStore::new(run.trials_dir(), config.fault.keep_checkpoints as usize);
    let tidy = EngineError::io(format!("cannot tidy the checkpoints in {}", run.trials_dir().display()));
    let mut stale = match store.discard_trials_from(state.trials().len() as u32) {
        Ok(n) => n,
        Err(e) => return Err(tidy(e)),
    };
    // Donor checkpoints that exploits still wait to copy stay.
    for e in state.trials().iter().filter_map(|t| t.exploit.as_ref()) {
        store.pin(e.donor, e.epoch);
    }
    let io = |what: &str| EngineError::io(format!("{what} in {}", run.trials_dir().display()));
    for s in state.trials() {
        stale += store.discard_after(s.id, s.epochs).map_err(io("cannot remove stale checkpoints"))?;
        // Parts of a checkpoint that was arriving from a worker when the run stopped.
        for entry in std::fs::read_dir(store.trial_dir(s.id)).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(crate::supervision::INCOMING_PREFIX) {
                std::fs::remove_dir_all(entry.path()).map_err(io("cannot remove a checkpoint cut short"))?;
            }
        }
    }
    if stale > 0 {
        tracing::warn!("removed {stale} checkpoint(s) the journal has no reports for");
    }
    for end in &state.ended_by_replay {
        journal.append(end.clone())?;
        if let Event::TrialEnded { id, status, .. } = end {
            if *status != TrialStatus::Completed {
                store.keep_only_best(*id).map_err(io("cannot trim checkpoints"))?;
            }
        }
    }
    // A new session: the time budget counts sessions, not the time between them.
    journal.append(Event::SweepResumed)?;
    journal.sync()?;
    Ok(())
}
