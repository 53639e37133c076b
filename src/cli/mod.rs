//! Subcommands: `run`, `validate`, `status`.

mod progress;
mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gauntlet::config::{Config, ConfigError};
use gauntlet::data::{DataError, Dataset};
use gauntlet::run_dir::{RunDir, RunDirError};
use gauntlet::supervision::rank;
use gauntlet::trainable::mlp::MlpTrainable;
use gauntlet::{Summary, Sweep};

/// Fault-tolerant hyperparameter sweeps: supervised trials, libtorch training, early pruning.
#[derive(Parser)]
#[command(name = "gauntlet", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment described by a config file (TOML, or YAML by extension).
    Run {
        /// The config file.
        config: PathBuf,
        /// The run directory [default: runs/<name>-<timestamp>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the final summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check a config file without running anything.
    Validate {
        /// The config file.
        config: PathBuf,
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
    e.chain().any(|c| c.is::<ConfigError>() || c.is::<DataError>() || c.is::<RunDirError>() || c.is::<UsageError>())
}

/// A command-line mistake.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, out, json } => run_experiment(&config, out, json),
        Command::Validate { config } => validate(&config),
        Command::Status { dir, json } => status(&dir, json),
    }
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let searched: Vec<&str> = config.space.searched().collect();
    println!(
        "{}: ok: experiment `{}`, {} trials, {:?} search over {} parameter(s) [{}], {:?} scheduler, {} epochs",
        path.display(),
        config.experiment.name,
        config.experiment.max_trials,
        config.search.algorithm,
        searched.len(),
        searched.join(", "),
        config.scheduler.kind,
        config.max_epochs,
    );
    Ok(ExitCode::SUCCESS)
}

fn status(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let doc = RunDir::open(dir)?.read_status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let state = if doc.finished { "finished" } else { "not finished" };
        println!("{} — {} trials, {state}; metric {} ({:?})", doc.experiment, doc.trials.len(), doc.metric, doc.mode);
        print!("{}", table::standings(&doc.trials, &doc.metric, doc.mode, usize::MAX));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_experiment(config_path: &Path, out: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let dir = out.unwrap_or_else(|| {
        let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
        PathBuf::from("runs").join(format!("{}-{stamp}", config.experiment.name))
    });
    if dir.join("status.json").exists() {
        return Err(
            UsageError(format!("{} already holds a run; choose another --out (or delete it)", dir.display())).into()
        );
    }
    // Bad data is bad input too: find out before a run directory appears.
    let started = Instant::now();
    let data = Arc::new(Dataset::load(&config)?);
    let loaded = started.elapsed();
    let run_dir = RunDir::create(&dir).with_context(|| format!("cannot create run directory {}", dir.display()))?;
    run_dir.save_config(config_path).context("cannot copy the config into the run directory")?;
    let _log = init_logging(&run_dir)?;
    install_panic_hook();
    tracing::info!(config = %config_path.display(), dir = %dir.display(), "starting experiment {}", config.experiment.name);
    tracing::info!(
        train = data.train.rows(),
        validation = data.validation.rows(),
        features = data.features,
        "data loaded in {loaded:.1?}"
    );
    let trainable = MlpTrainable::new(data);
    tracing::info!(device = ?trainable.device(), "training device");

    let progress =
        progress::Progress::new(config.experiment.max_trials, &config.experiment.metric, config.experiment.mode);
    let observer = progress.clone();
    let sweep = Sweep::from_config(&config, trainable).run_dir(run_dir.clone()).observer(move |e| observer.on_event(e));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = runtime.block_on(sweep.run_until(shutdown_signal()))?;
    progress.finish();
    report(&summary, &run_dir, json)?;
    Ok(if summary.interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS })
}

fn report(summary: &Summary, run_dir: &RunDir, json: bool) -> anyhow::Result<()> {
    if json {
        let out = serde_json::json!({
            "dir": run_dir.root(),
            "interrupted": summary.interrupted,
            "elapsed_s": summary.elapsed.as_secs_f64(),
            "metric": summary.metric,
            "best": summary.best(),
            "trials": summary.standings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    use gauntlet::TrialStatus::*;
    println!(
        "\n{} trials in {:.1?}: {} completed, {} pruned, {} failed, {} diverged{}",
        summary.standings.len(),
        summary.elapsed,
        summary.count(Completed),
        summary.count(Pruned),
        summary.count(Failed),
        summary.count(Diverged),
        if summary.interrupted { format!(", {} paused (interrupted)", summary.count(Paused)) } else { String::new() },
    );
    print!("{}", table::standings(&summary.standings, &summary.metric, summary.mode, 10));
    match rank(&summary.standings, summary.mode).first() {
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
            println!(
                "\nbest: trial {} with {} = {:.4} at epoch {}; model in {}{note}",
                best.id,
                summary.metric,
                best.best_metric.unwrap_or(f64::NAN),
                best.best_epoch.unwrap_or(0),
                run_dir.best_dir().display()
            )
        }
        None => println!("\nno trial reported {}", summary.metric),
    }
    println!("results: {}", run_dir.root().display());
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("\ninterrupted: stopping running trials at their next epoch...");
}

/// Logs to `DIR/gauntlet.log` (info and up) and to stderr (warnings);
/// `RUST_LOG` overrides both.
fn init_logging(run_dir: &RunDir) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, EnvFilter};
    let file = std::fs::File::create(run_dir.log_file())
        .with_context(|| format!("cannot create {}", run_dir.log_file().display()))?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let file_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ractor=warn"));
    let stderr_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,ractor=error"));
    tracing_subscriber::registry()
        .with(fmt::layer().with_writer(writer).with_ansi(false).with_filter(file_filter))
        .with(fmt::layer().with_writer(std::io::stderr).with_target(false).with_filter(stderr_filter))
        .init();
    Ok(guard)
}

/// Panics on slot threads are trial crashes, handled and logged by the
/// supervisor; keep them out of the terminal.
fn install_panic_hook() {
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
