//! Subcommands: `run`, `resume`, `validate`, `status`, `worker`, `predict`,
//! `daemon` and its clients `submit`, `ls`, `top`, `cancel`, `logs`.

/// `print!` to stdout that stops, quietly, once its reader is gone
/// (`gauntlet status --json | head`): the command still ends as it would,
/// with its own exit code, where `print!` panicked (exit 101).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!($($arg)*)) };
}

/// [`out!`] with a newline, as `println!`.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*))) };
}

mod client;
mod cluster;
mod progress;
mod table;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gauntlet::config::{Config, ConfigError};
use gauntlet::data::DataError;
use gauntlet::engine::{EngineError, Opened, Run};
use gauntlet::journal::{JournalError, ReplayError};
use gauntlet::run_dir::{RunDir, RunDirError, StatusDoc};
use gauntlet::supervision::rank;
use gauntlet::trainable;
use gauntlet::Summary;

/// Fault-tolerant hyperparameter sweeps: supervised trials, libtorch training, early pruning.
#[derive(Parser)]
#[command(name = "gauntlet", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment described by a config file (TOML; YAML or JSON by its extension).
    Run {
        /// The config file.
        config: PathBuf,
        /// The run directory [default: runs/<name>-<timestamp>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the final summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// Check a config file without running anything.
    Validate {
        /// The config file.
        config: PathBuf,
        /// Also check that this run directory could be created.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Continue an interrupted run from its journal and checkpoints.
    Resume {
        /// The run directory.
        dir: PathBuf,
        /// Truncate a journal that is corrupt in the middle at the damage
        /// (what follows is dropped, and said), then resume.
        #[arg(long)]
        repair: bool,
        /// Print the final summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// Join a sweep as a worker process and run its trials.
    Worker(cluster::WorkerArgs),
    /// Predict with a run's best model: a batch file (csv, npy, IDX) to CSV,
    /// or `--input -`: JSON lines in, one JSON prediction per line out.
    Predict {
        /// The model directory (a run's `best/`).
        #[arg(long)]
        model: PathBuf,
        /// The samples: a .csv, .npy or IDX file, or `-` for JSON lines on stdin.
        #[arg(long)]
        input: PathBuf,
        /// Where the predictions go [default: stdout].
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Host many experiments: an HTTP API, a dashboard at /, /metrics;
    /// unfinished experiments continue after a restart.
    Daemon(client::DaemonArgs),
    /// Submit an experiment config to a daemon; prints its id.
    Submit {
        /// The config file (TOML, or YAML/JSON by extension).
        config: PathBuf,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// List a daemon's experiments.
    Ls {
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// A live leaderboard of one of a daemon's experiments.
    Top {
        /// The experiment id.
        id: String,
        /// Print it once rather than redrawing it each second.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Cancel one of a daemon's experiments (running trials checkpoint).
    Cancel {
        /// The experiment id.
        id: String,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// One trial's reports and program output, from a daemon.
    Logs {
        /// The experiment id.
        id: String,
        /// The trial number.
        trial: u32,
        #[command(flatten)]
        client: client::ClientArgs,
    },
    /// Show the trials of a run: live, finished or dead.
    Status {
        /// The run directory.
        dir: PathBuf,
        /// Print JSON: an object with a `trials` array.
        #[arg(long)]
        json: bool,
    },
}

/// Whether an error is the user's input (exit code 2) rather than a failure.
pub fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<ConfigError>()
            || c.is::<DataError>()
            || c.is::<RunDirError>()
            || c.is::<UsageError>()
            || c.downcast_ref::<EngineError>().is_some_and(EngineError::is_usage)
            || c.is::<ReplayError>()
            || c.is::<gauntlet::predict::PredictError>()
            || matches!(
                c.downcast_ref::<JournalError>(),
                Some(JournalError::Corrupt { .. } | JournalError::Header { .. } | JournalError::Busy { .. })
            )
    })
}

/// A command-line mistake.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

impl Cli {
    /// Whether this command may train (so `main` loads libtorch's CUDA half
    /// first, where the machine has a GPU: [`gauntlet::cuda`]).
    pub fn may_train(&self) -> bool {
        matches!(self.command, Command::Run { .. } | Command::Resume { .. } | Command::Worker(_) | Command::Daemon(_))
    }

    /// Whether this command may start local worker processes (so `main`
    /// starts the spawner that forks them).
    pub fn spawns_workers(&self) -> bool {
        match &self.command {
            Command::Run { cluster, .. } | Command::Resume { cluster, .. } => cluster.spawns_workers(),
            Command::Daemon(args) => args.spawns_workers(),
            Command::Worker(args) => args.spawns_workers(),
            _ => false,
        }
    }
}

/// A process exit code. Not `std::process::ExitCode`: `main` ends the
/// process itself ([`gauntlet::cluster::spawner::fast_exit`]), and a forked
/// worker returns its code to the spawner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(pub u8);

impl ExitCode {
    pub const SUCCESS: ExitCode = ExitCode(0);
}

impl From<u8> for ExitCode {
    fn from(code: u8) -> Self {
        ExitCode(code)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, out, json, cluster } => run_experiment(&config, out, json, &cluster),
        Command::Validate { config, out } => validate(&config, out.as_deref()),
        Command::Resume { dir, repair, json, cluster } => resume(&dir, repair, json, &cluster),
        Command::Worker(args) => cluster::worker(args),
        Command::Predict { model, input, output } => predict(&model, &input, output.as_deref()),
        Command::Status { dir, json } => status(&dir, json),
        Command::Daemon(args) => client::daemon(args),
        Command::Submit { config, client } => client::submit(&config, &client),
        Command::Ls { client } => client::ls(&client),
        Command::Top { id, once, client } => client::top(&id, once, &client),
        Command::Cancel { id, client } => client::cancel(&id, &client),
        Command::Logs { id, trial, client } => client::logs(&id, trial, &client),
    }
}

fn predict(model: &Path, input: &Path, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let model = gauntlet::predict::Model::load(model)?;
    // `/dev/stdout` is this process's own standard output, as it was opened (appending, say).
    let output = output.filter(|p| *p != Path::new("/dev/stdout")).map(Output::resolve).transpose()?;
    if input == Path::new("-") {
        // A stream: answers go out as they come.
        let out: Box<dyn Write> = match &output {
            Some(o) => Box::new(std::io::BufWriter::new(o.open_direct()?)),
            None => Box::new(std::io::stdout().lock()),
        };
        model.stream(std::io::stdin().lock(), out)?;
        return Ok(ExitCode::SUCCESS);
    }
    // A batch: read and predicted in full before the output is touched (it may be the input,
    // and a bad input must not cost the old output), then written whole or not at all.
    let probs = model.predict_file(input)?;
    let mut csv_out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["row".to_owned(), "predicted".to_owned()];
    header.extend(model.class_names().iter().map(|c| format!("p_{c}")));
    csv_out.write_record(&header)?;
    for (i, p) in probs.iter().enumerate() {
        let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(c, _)| c);
        let mut record = vec![i.to_string(), model.class_name(best).unwrap_or_default().to_owned()];
        record.extend(p.iter().map(|v| format!("{v:.6}")));
        csv_out.write_record(&record)?;
    }
    let bytes = csv_out.into_inner().map_err(|e| anyhow::anyhow!("cannot write the predictions: {e}"))?;
    match output {
        Some(o) => o.write_whole(&bytes)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `predict --output` writes: a regular file (new, or replaced whole
/// through a sibling and a rename, a symbolic link followed to it), or
/// something else that is written into as it is (a device, a pipe).
struct Output {
    /// The path as given, for messages.
    given: PathBuf,
    /// The file itself (links followed, when it exists).
    path: PathBuf,
    /// Replaced whole (a regular file, or none yet), else written into.
    replace: bool,
    /// The existing file's permissions, which its replacement keeps.
    permissions: Option<std::fs::Permissions>,
}

impl Output {
    fn resolve(given: &Path) -> anyhow::Result<Output> {
        let bad = |why: String| UsageError(format!("--output {}: {why}", given.display()));
        let direct =
            |path: &Path| Output { given: given.to_owned(), path: path.to_owned(), replace: false, permissions: None };
        // A descriptor this process was given (`/dev/stdout`, `>(gzip > p.gz)`): written into as it is.
        let descriptor = ["/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/"].iter().any(|p| given.starts_with(p));
        if descriptor {
            return Ok(direct(given));
        }
        match std::fs::symlink_metadata(given) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = given.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if !parent.is_dir() {
                    return Err(bad(format!("its directory {} does not exist", parent.display())).into());
                }
                Ok(Output { given: given.to_owned(), path: given.to_owned(), replace: true, permissions: None })
            }
            Err(e) => Err(bad(format!("cannot use it: {e}")).into()),
            Ok(_) => {
                // Links followed: the file (or device, or pipe) they lead to.
                let meta = std::fs::metadata(given).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => bad("is a link to a file that does not exist".into()),
                    _ => bad(format!("cannot use it: {e}")),
                })?;
                if meta.is_dir() {
                    return Err(bad("is a directory: expected a file".into()).into());
                }
                if !meta.is_file() {
                    return Ok(direct(given));
                }
                let path = std::fs::canonicalize(given).map_err(|e| bad(format!("cannot resolve it: {e}")))?;
                // A file this user may not write is not replaced behind its owner's back.
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| bad(format!("cannot write it: {e}")))?;
                Ok(Output { given: given.to_owned(), path, replace: true, permissions: Some(meta.permissions()) })
            }
        }
    }

    /// Opens it to be written into as the answers come.
    fn open_direct(&self) -> anyhow::Result<std::fs::File> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(self.replace);
        Ok(options
            .open(&self.path)
            .map_err(|e| UsageError(format!("--output {}: cannot write it: {e}", self.given.display())))?)
    }

    /// Writes `bytes` as its whole content: a regular file appears whole
    /// (a sibling, then a rename), keeping its permissions.
    fn write_whole(&self, bytes: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        let bad = |e: std::io::Error| UsageError(format!("--output {}: cannot write it: {e}", self.given.display()));
        if !self.replace {
            let mut f = self.open_direct()?;
            return Ok(f.write_all(bytes).and_then(|()| f.flush()).map_err(bad)?);
        }
        let name = self.path.file_name().map_or_else(|| "predictions".into(), |n| n.to_string_lossy().into_owned());
        let tmp = self.path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let written = std::fs::write(&tmp, bytes)
            .and_then(|()| match &self.permissions {
                Some(p) => std::fs::set_permissions(&tmp, p.clone()),
                None => Ok(()),
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(bad(e).into());
        }
        Ok(())
    }
}

/// Whether stdout's reader has gone: nothing more is written to it.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Whether stdout's reader has gone (a loop that only prints may end).
pub(crate) fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// What [`out!`] and [`outln!`] do.
pub(crate) fn write_out(args: std::fmt::Arguments) {
    use std::io::Write;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if stdout.write_fmt(args).and_then(|()| stdout.flush()).is_err() {
        // A closed pipe, a full disk: the rest would fail alike.
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}

fn validate(path: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let least = trainable::Shape::least(&config);
    config.model.check_space(&config.space, &least).map_err(|message| model_too_large(path, message))?;
    let dir = out.map_or_else(|| default_out(&config), Path::to_owned);
    check_out(&dir, out.is_some())?;
    // What `run` would refuse: a directory that holds a run, or someone's files.
    gauntlet::engine::Run::check_new_dir(&dir).map_err(|e| UsageError(e.to_string()))?;
    for w in config.warnings() {
        eprintln!("warning: {}: {w}", path.display());
    }
    let searched: Vec<&str> = config.space.searched().collect();
    outln!(
        "{}: ok: experiment `{}`, {} trials, {} search over {} parameter(s) [{}], {} scheduler, {} epochs",
        path.display(),
        config.experiment.name,
        config.experiment.max_trials,
        config.search.name(),
        searched.len(),
        searched.join(", "),
        config.scheduler.kind(),
        config.max_epochs,
    );
    Ok(ExitCode::SUCCESS)
}

fn status(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let (_, state, warnings) = gauntlet::engine::read_run(dir)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let e = &state.config.experiment;
    let doc = StatusDoc {
        experiment: e.name.clone(),
        metric: e.metric.clone(),
        mode: e.mode,
        finished: state.finished(),
        trials: state.trials().to_vec(),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let done = if doc.finished { "finished" } else { "not finished" };
        outln!("{} — {} trials, {done}; metric {} ({:?})", doc.experiment, doc.trials.len(), doc.metric, doc.mode);
        out!("{}", table::standings(&doc.trials, &doc.metric, doc.mode, usize::MAX));
    }
    Ok(ExitCode::SUCCESS)
}

fn model_too_large(file: &Path, message: String) -> ConfigError {
    ConfigError::Invalid { file: file.to_owned(), key: "model".into(), message }
}

/// `runs/<name>-<timestamp>`.
fn default_out(config: &Config) -> PathBuf {
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    PathBuf::from("runs").join(format!("{}-{stamp}", config.experiment.name))
}

/// Refuses a run directory that cannot be one: a file, a path through a
/// file, or a name longer than file systems hold. `flag`: it came from
/// `--out` (else from `experiment.name`).
fn check_out(dir: &Path, flag: bool) -> Result<(), UsageError> {
    let named = if flag { "--out" } else { "experiment.name (the run directory's name)" };
    let bad = |why: String| UsageError(format!("{named}: {}: {why}", dir.display()));
    if dir.as_os_str().is_empty() {
        return Err(bad("expected a directory path".into()));
    }
    if dir.as_os_str().len() > 4000 {
        return Err(bad(format!("{} bytes long: paths are at most 4095 bytes", dir.as_os_str().len())));
    }
    if let Some(long) = dir.components().map(|c| c.as_os_str()).find(|c| c.len() > 255) {
        return Err(bad(format!(
            "the name `{}…` is {} bytes long: file systems hold at most 255 bytes a name",
            long.to_string_lossy().chars().take(20).collect::<String>(),
            long.len()
        )));
    }
    if let Some(file) = dir.ancestors().find(|a| !a.as_os_str().is_empty() && a.exists() && !a.is_dir()) {
        return Err(bad(format!("{} is a file, not a directory: expected a run directory", file.display())));
    }
    Ok(())
}

fn resume(dir: &Path, repair: bool, json: bool, cluster: &cluster::ClusterArgs) -> anyhow::Result<ExitCode> {
    cluster.check()?;
    let run = match Run::open(dir, repair)? {
        Opened::Finished(_) if json => return status(dir, true),
        Opened::Finished(_) => {
            outln!("{}: this run finished already; nothing to resume", dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        Opened::Run(run) => *run,
    };
    for w in &run.warnings {
        eprintln!("{}{w}", if w.starts_with("repair:") { "" } else { "warning: " });
    }
    let _log = init_logging(&run.run_dir, true)?;
    install_panic_hook();
    let state = run.resumed.as_ref().expect("an opened run is resumed");
    let unfinished = state.unfinished().len();
    tracing::info!(
        events = state.events,
        trials = state.trials().len(),
        unfinished,
        "resuming experiment {}",
        run.config.experiment.name
    );
    if !json {
        eprintln!(
            "resuming {}: {} trials so far, {unfinished} to continue from their checkpoints",
            dir.display(),
            state.trials().len()
        );
    }
    execute(run, json, cluster)
}

fn run_experiment(
    config_path: &Path,
    out: Option<PathBuf>,
    json: bool,
    cluster: &cluster::ClusterArgs,
) -> anyhow::Result<ExitCode> {
    let (config, text) = Config::load_with_text(config_path)?;
    for w in config.warnings() {
        eprintln!("warning: {}: {w}", config_path.display());
    }
    let flag = out.is_some();
    let dir = out.unwrap_or_else(|| default_out(&config));
    check_out(&dir, flag)?;
    cluster.check()?;
    let started = Instant::now();
    let run = Run::create_from(config, &text, config_path, &dir)?;
    let loaded = started.elapsed();
    let _log = init_logging(&run.run_dir, false)?;
    install_panic_hook();
    tracing::info!(config = %config_path.display(), dir = %dir.display(), "starting experiment {}", run.config.experiment.name);
    tracing::info!("data checked in {loaded:.1?}; each worker loads it once for all its trials");
    execute(run, json, cluster)
}

/// Runs (or resumes) the sweep on an engine of its own and prints the outcome.
fn execute(run: Run, json: bool, cluster: &cluster::ClusterArgs) -> anyhow::Result<ExitCode> {
    let config = run.config.clone();
    let run_dir = run.run_dir.clone();
    let progress =
        progress::Progress::new(config.experiment.max_trials, &config.experiment.metric, config.experiment.mode);
    if let Some(state) = &run.resumed {
        progress.prior(state.trials());
    }
    let observer = progress.clone();
    let e = &config.experiment;
    let options = cluster.engine_options(
        e.slots(),
        e.gpus_per_trial,
        e.threads_per_trial,
        run_dir.root().join("workers"),
        run.trainable.resident_bytes(),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = runtime.block_on(async {
        let engine = cluster::start_engine(options).await?;
        let handle = engine.launch(run, Some(Arc::new(move |e: &gauntlet::SweepEvent| observer.on_event(e)))).await;
        let summary = match handle {
            Ok(handle) => {
                tokio::select! {
                    _ = handle.wait() => {}
                    _ = shutdown_signal() => handle.cancel(),
                }
                handle.wait().await.map_err(anyhow::Error::from)
            }
            Err(e) => Err(e.into()),
        };
        engine.shutdown().await;
        summary
    })?;
    progress.finish();
    report(&summary, &run_dir, json)?;
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else if summary.failed() {
        use gauntlet::TrialStatus::*;
        let where_ = if json { "`failures` in the JSON" } else { "the reasons above" };
        let mut what = format!("{} of {} trials failed", summary.count(Failed), summary.trials.len());
        if summary.count(Diverged) > 0 {
            what += &format!(", {} diverged (their reasons are in `gauntlet status`)", summary.count(Diverged));
        }
        if !summary.gave_a_result() {
            what += &format!(", none reported {} and ended", summary.metric);
        }
        let reasons = if summary.failures().is_empty() { String::new() } else { format!("; see {where_}") };
        eprintln!("error: the sweep failed: {what} (exit code {FAILED_SWEEP}){reasons}");
        ExitCode::from(FAILED_SWEEP)
    } else {
        ExitCode::SUCCESS
    })
}

/// The exit code of a sweep that ran but failed (see [`Summary::failed`]).
const FAILED_SWEEP: u8 = 4;

fn report(summary: &Summary, run_dir: &RunDir, json: bool) -> anyhow::Result<()> {
    let failures = summary.failures();
    if json {
        let out = serde_json::json!({
            "dir": run_dir.root(),
            "interrupted": summary.interrupted,
            "stopped": summary.stopped,
            "failed": summary.failed(),
            "failures": failures,
            "elapsed_s": summary.elapsed.as_secs_f64(),
            "metric": summary.metric,
            "best": summary.best(),
            "trials": summary.trials,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    use gauntlet::TrialStatus::*;
    outln!(
        "\n{} trials in {:.1?}: {} completed, {} pruned, {} failed, {} diverged{}",
        summary.trials.len(),
        summary.elapsed,
        summary.count(Completed),
        summary.count(Pruned),
        summary.count(Failed),
        summary.count(Diverged),
        if summary.interrupted { format!(", {} paused (interrupted)", summary.count(Paused)) } else { String::new() },
    );
    out!("{}", table::standings(&summary.trials, &summary.metric, summary.mode, 10));
    if let Some(why) = &summary.stopped {
        outln!("\nstopped early: {why}");
    }
    if !failures.is_empty() {
        outln!("\nwhy trials failed:");
        for f in &failures {
            outln!("  {:>5} x {} (first: trial {})", f.count, one_line(&f.error, 300), f.first_trial);
        }
    }
    match rank(&summary.trials, summary.mode).first() {
        Some(best) => {
            // best/ holds the best checkpoint, which may be of another epoch
            // than the best report (checkpoint_every > 1, ties).
            let weights = std::fs::read(run_dir.best_dir().join("trial.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["checkpoint_epoch"].as_u64());
            let note = match weights {
                None => " (no checkpoint was saved: params only)".to_owned(),
                Some(e) if Some(e as u32) != best.best_epoch => format!(" (weights of epoch {e})"),
                Some(_) => String::new(),
            };
            outln!(
                "\nbest: trial {} with {} = {:.4} at epoch {}; model in {}{note}",
                best.id,
                summary.metric,
                best.best_metric.unwrap_or(f64::NAN),
                best.best_epoch.unwrap_or(0),
                run_dir.best_dir().display()
            )
        }
        None => outln!("\nno trial reported {}", summary.metric),
    }
    outln!("results: {}", run_dir.root().display());
    if summary.interrupted {
        outln!("interrupted: continue with `gauntlet resume {}`", run_dir.root().display());
    }
    Ok(())
}

/// The first line of `text`, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

/// Resolves on SIGINT or SIGTERM, saying so.
async fn shutdown_signal() {
    gauntlet::engine::shutdown_signal().await;
    eprintln!("\ninterrupted: stopping running trials at their next epoch...");
}

/// Logs to `DIR/gauntlet.log` (info and up) and to stderr (warnings);
/// `RUST_LOG` overrides both.
fn init_logging(run_dir: &RunDir, append: bool) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(run_dir.log_file())
        .with_context(|| format!("cannot create {}", run_dir.log_file().display()))?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    install_logs(writer, "info,ractor=warn,ractor_cluster=error", "warn,ractor=error,ractor_cluster=error");
    Ok(guard)
}

/// Logs to `file` (everything at `file_default` and up, plain text) and to
/// stderr (`stderr_default` and up, coloured on a terminal only); `RUST_LOG`
/// overrides both levels.
pub(crate) fn install_logs(
    file: tracing_appender::non_blocking::NonBlocking,
    file_default: &str,
    stderr_default: &str,
) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = |default: &str| EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::registry()
        .with(fmt::layer().with_writer(file).with_ansi(false).with_filter(filter(file_default)))
        .with(
            fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                // Colour for a terminal only: a file or a pipe gets the text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter(stderr_default)),
        )
        .init();
}

/// Panics on slot threads are trial crashes, handled and logged by the
/// supervisor; keep them out of the terminal.
pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let on_slot = std::thread::current().name().is_some_and(|n| n.starts_with("gauntlet-slot"));
        if on_slot {
            tracing::debug!("{info}");
        } else {
            default(info);
        }
    }));
}
