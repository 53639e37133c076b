//! Trainables: the code that trains one trial, and the context it trains in.
//!
//! A [`Trainable`] receives a [`TrialContext`]: the trial's parameters and
//! seed, the checkpoint to resume from, and the way to report an epoch and
//! save a checkpoint. It runs on a dedicated slot thread, never on a tokio
//! worker, and knows nothing of actors. [`mlp`] is the built-in libtorch
//! trainable; closures are trainables too, which is how tests and
//! benchmarks run sweeps without libtorch. Each model kind's module
//! declares what it knows about itself ([`kind`]), and builds its trainable
//! with [`kind::Model::build`].

pub mod cnn;
pub mod command;
pub mod fit;
pub mod kind;
pub mod mlp;
pub mod optim;
pub mod size;
pub mod sleep;
pub mod torchscript;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::{Mode, Params};
use crate::schedule::Decision;
use crate::trial::{divergence, splitmix64, AttemptEnd, Report, TrialId};

/// Trains one trial. Implemented for closures `Fn(&mut TrialContext) -> Result<(), TrainError>`.
pub trait Trainable: Send + Sync + 'static {
    /// Trains until the budget is spent or a report says stop (`?` on
    /// [`TrialContext::report`] propagates the stop). Resume from
    /// [`TrialContext::resume`] when it is set.
    fn train(&self, ctx: &mut TrialContext) -> Result<(), TrainError>;

    /// Called once on each slot thread before it runs trials.
    fn init_thread(&self, _threads: u32) {}

    /// The memory it holds in every process that trains it (its data set).
    fn resident_bytes(&self) -> u64 {
        0
    }

    /// Refuses a search space whose every network is too large to train
    /// (see [`size`]), saying how large the smallest one is.
    fn check_space(&self, _space: &crate::config::SearchSpace) -> Result<(), String> {
        Ok(())
    }

    /// Describes the model a trial with `params` trains, for `best/model.json`.
    fn describe(&self, _params: &Params) -> Option<serde_json::Value> {
        None
    }
}

impl<F> Trainable for F
where
    F: Fn(&mut TrialContext) -> Result<(), TrainError> + Send + Sync + 'static,
{
    fn train(&self, ctx: &mut TrialContext) -> Result<(), TrainError> {
        self(ctx)
    }
}

/// What a built-in network's size depends on in the data.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// Features per sample.
    pub features: usize,
    /// Each sample as channels x height x width, when it is an image.
    pub image: Option<[usize; 3]>,
    /// Classes.
    pub classes: usize,
    /// Training samples (the largest batch there can be).
    pub rows: usize,
}

impl Shape {
    /// The shape of loaded data.
    pub fn of(data: &crate::data::Dataset) -> Self {
        let image = match data.shape.as_deref() {
            Some(&[c, h, w]) => Some([c, h, w]),
            _ => None,
        };
        Shape { features: data.features, image, classes: data.classes, rows: data.train.rows() }
    }

    /// What a config tells of its data without reading it: exact for
    /// synthetic data and Fashion-MNIST, the least there can be otherwise
    /// (one feature, one pixel, two classes), so that a space refused on it
    /// is too large for any data.
    pub fn least(config: &crate::config::Config) -> Self {
        let d = &config.data;
        let train = |n: usize| n - ((n as f64 * d.validation_fraction).round() as usize).clamp(1, n.max(2) - 1);
        match d.source.known() {
            Some(k) => {
                let n = d.max_samples.map_or(k.samples, |m| m.min(k.samples));
                Shape { features: k.features, image: k.image, classes: k.classes, rows: train(n) }
            }
            None => Shape { features: 1, image: Some([1, 1, 1]), classes: 2, rows: 1 },
        }
    }

    /// The batch a trial with `params` trains on: its `batch_size`, at most every training sample.
    pub fn batch(&self, params: &crate::config::Params) -> f64 {
        let size = params.get("batch_size").and_then(|v| v.as_i64()).unwrap_or(1).max(1) as f64;
        size.min(self.rows.max(1) as f64)
    }
}

/// Why a trial attempt stopped short of its budget, or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// The scheduler or the sweep said stop: not a failure.
    #[error("stopped: {0:?}")]
    Stopped(Stop),
    /// The loss became NaN or infinite: the trial is `diverged`, not restarted.
    #[error("diverged: {0}")]
    Diverged(String),
    /// Bad parameters for this trainable: the trial fails without restarts.
    #[error("invalid parameters: {0}")]
    Invalid(String),
    /// Anything else (I/O, libtorch): a crash, restarted from the last checkpoint.
    #[error("{0}")]
    Failed(String),
}

impl From<std::io::Error> for TrainError {
    fn from(e: std::io::Error) -> Self {
        TrainError::Failed(e.to_string())
    }
}

/// How a trainable's return (or panic) ends the attempt. Here, not in
/// [`crate::trial`], so that the trial table depends on nothing that trains.
pub fn attempt_end(result: Result<Result<(), TrainError>, Box<dyn std::any::Any + Send>>) -> AttemptEnd {
    match result {
        Ok(Ok(())) | Ok(Err(TrainError::Stopped(Stop::Completed))) => AttemptEnd::Completed,
        Ok(Err(TrainError::Stopped(Stop::Pruned))) => AttemptEnd::Pruned,
        Ok(Err(TrainError::Stopped(Stop::Exploited))) => AttemptEnd::Exploited,
        Ok(Err(TrainError::Stopped(Stop::Paused))) => AttemptEnd::Paused,
        Ok(Err(TrainError::Stopped(Stop::Cancelled | Stop::Lost))) => AttemptEnd::Cancelled,
        Ok(Err(TrainError::Diverged(m))) => AttemptEnd::Diverged(m),
        Ok(Err(TrainError::Invalid(m))) => AttemptEnd::Invalid(m),
        Ok(Err(TrainError::Failed(m))) => AttemptEnd::Crashed(m),
        Err(panic) => AttemptEnd::Crashed(crate::trial::panic_text(panic.as_ref())),
    }
}

/// Why a report said stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The scheduler pruned the trial.
    Pruned,
    /// The trial reached its epoch budget.
    Completed,
    /// The sweep is shutting down; the trial will continue on resume.
    Cancelled,
    /// The report could not be recorded (the sweep is gone): do not
    /// checkpoint the epoch, it was never reported.
    Lost,
    /// PBT exploits the trial: it continues from another trial's checkpoint,
    /// so this epoch's state is not saved.
    Exploited,
    /// The scheduler pauses the trial until it promotes it: checkpoint the
    /// epoch, then stop.
    Paused,
}

/// Where reports go: the leaderboard's side of the context.
pub trait ReportSink: Send {
    /// Records a report and returns the scheduler's decision; `None` when
    /// the sweep is gone (the trial then stops as cancelled).
    fn report(&mut self, report: Report) -> Option<Decision>;

    /// Waits until every report sent so far is durable in the journal.
    /// Called before a checkpoint is put in place: a restarted trial
    /// continues from the checkpoint on disk, so no checkpoint may be ahead
    /// of the journal (decisions themselves come back before their report
    /// is durable). `Err` when the journal failed.
    fn durable(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Notes that `checkpoint` is in place (its files are in `checkpoint.dir`).
    fn checkpoint_written(&mut self, _trial: TrialId, _checkpoint: &Checkpoint) {}

    /// Output of the trial's program (whole lines), for the trial's log.
    fn output(&mut self, _trial: TrialId, _text: &str) {}
}

/// The log of a `command` trial's program, in its directory under `trials/`.
pub const OUTPUT_LOG: &str = "output.log";

/// Settings a context needs from the experiment (sent to every worker).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ContextSettings {
    /// The experiment's metric.
    pub metric: String,
    /// Its direction.
    pub mode: Mode,
    /// The epoch budget.
    pub max_epochs: u32,
    /// Checkpoint every this many epochs.
    pub checkpoint_every: u32,
    /// The largest checkpoint an attempt may write (`fault.max_checkpoint_mb`).
    pub max_checkpoint_bytes: u64,
    /// libtorch threads for this trial.
    pub threads: u32,
    /// Probability of an injected panic in each epoch (just before its report).
    pub panic_probability: f64,
    /// Probability of an injected `abort()` of the whole process in each
    /// epoch: only for trials in worker processes.
    pub abort_probability: f64,
}

/// Everything a trial attempt sees of the engine.
pub struct TrialContext {
    id: TrialId,
    attempt: u32,
    seed: u64,
    params: Params,
    resume: Option<Checkpoint>,
    settings: Arc<ContextSettings>,
    sink: Box<dyn ReportSink>,
    store: CheckpointStore,
    cancel: Arc<AtomicBool>,
    last_score: Option<(u32, f64)>,
    restarts: u32,
}

impl TrialContext {
    /// A context for one attempt of one trial.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: TrialId,
        attempt: u32,
        restarts: u32,
        seed: u64,
        params: Params,
        resume: Option<Checkpoint>,
        settings: Arc<ContextSettings>,
        sink: Box<dyn ReportSink>,
        store: CheckpointStore,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        TrialContext { id, attempt, seed, params, resume, settings, sink, store, cancel, last_score: None, restarts }
    }

    /// The trial's id.
    pub fn id(&self) -> TrialId {
        self.id
    }

    /// 0 on the first run, n after the n-th restart.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The trial's seed (the same on every attempt).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The trial's hyperparameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The checkpoint to resume from, if this attempt is a restart.
    pub fn resume(&self) -> Option<&Checkpoint> {
        self.resume.as_ref()
    }

    /// The first epoch this attempt trains (1, or one past the checkpoint).
    pub fn first_epoch(&self) -> u32 {
        self.resume.as_ref().map_or(1, |c| c.epoch + 1)
    }

    /// The epoch budget.
    pub fn max_epochs(&self) -> u32 {
        self.settings.max_epochs
    }

    /// libtorch threads for this trial.
    pub fn threads(&self) -> u32 {
        self.settings.threads
    }

    /// Whether the sweep asked this trial to stop (checked by `report` too).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Reports an epoch's metrics (call it before saving the epoch's
    /// checkpoint, so that a crash in between re-runs the epoch rather than
    /// losing its report). Returns `Err(TrainError::Stopped(..))`
    /// when the trial must stop (propagate it with `?`) and
    /// `Err(TrainError::Diverged(..))` when a loss or the metric is not finite.
    ///
    /// Epochs run from 1 to the budget: a report of another epoch fails the
    /// trial as invalid, saying so (a program counting steps, say).
    pub fn report(&mut self, epoch: u32, metrics: &[(&str, f64)]) -> Result<(), TrainError> {
        if epoch == 0 || epoch > self.settings.max_epochs {
            return Err(TrainError::Invalid(format!(
                "reported epoch {epoch}, but epochs run from 1 to max_epochs = {} (a program gets it as \
                 GAUNTLET_MAX_EPOCHS)",
                self.settings.max_epochs
            )));
        }
        if self.settings.panic_probability > 0.0 && self.chaos_draw(epoch) < self.settings.panic_probability {
            // As if the process died during the epoch: nothing of it is reported or saved.
            panic!("chaos: injected panic in epoch {epoch} of trial {} (attempt {})", self.id, self.attempt);
        }
        if self.settings.abort_probability > 0.0 && self.chaos_draw(epoch ^ 0xAB07) < self.settings.abort_probability {
            // As if libtorch hit a segfault: the process dies, unwinding nothing.
            eprintln!("chaos: injected abort in epoch {epoch} of trial {} (attempt {})", self.id, self.attempt);
            std::process::abort();
        }
        let report = Report {
            trial: self.id,
            attempt: self.attempt,
            epoch,
            metrics: metrics.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect(),
        };
        let diverged = divergence(&report.metrics, &self.settings.metric, epoch);
        let decision = self.sink.report(report).ok_or(TrainError::Stopped(Stop::Lost))?;
        if let Some(why) = diverged {
            return Err(TrainError::Diverged(why));
        }
        if let Some((_, v)) = metrics.iter().find(|(n, _)| *n == self.settings.metric) {
            self.last_score = Some((epoch, self.settings.mode.score(*v)));
        }
        match decision {
            Decision::Prune => return Err(TrainError::Stopped(Stop::Pruned)),
            Decision::Complete => return Err(TrainError::Stopped(Stop::Completed)),
            Decision::Exploit(_) => return Err(TrainError::Stopped(Stop::Exploited)),
            Decision::Pause => return Err(TrainError::Stopped(Stop::Paused)),
            Decision::Continue => {}
        }
        if self.cancelled() {
            return Err(TrainError::Stopped(Stop::Cancelled));
        }
        Ok(())
    }

    /// The chaos draw for an epoch: a function of (seed, epoch, restarts)
    /// alone, so a run resumed after its coordinator died injects the same
    /// panics as an uninterrupted one, and a restart after a crash differs.
    fn chaos_draw(&self, epoch: u32) -> f64 {
        let key = self.seed ^ 0xC4A0_5000 ^ (u64::from(epoch) << 20) ^ (u64::from(self.restarts) << 44);
        (splitmix64(key) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Passes whole lines of the trial program's output to its log.
    pub fn output(&mut self, text: &str) {
        if !text.is_empty() {
            self.sink.output(self.id, text);
        }
    }

    /// The experiment's settings (metric, budget, threads).
    pub fn settings(&self) -> &ContextSettings {
        &self.settings
    }

    /// Whether `epoch` is due for a checkpoint (`fault.checkpoint_every`).
    pub fn checkpoint_due(&self, epoch: u32) -> bool {
        epoch.is_multiple_of(self.settings.checkpoint_every.max(1))
    }

    /// Saves a checkpoint for `epoch`: `write` puts the trainable's files in
    /// the directory it is given; the engine adds the epoch, score and seed.
    pub fn save_checkpoint(
        &mut self,
        epoch: u32,
        write: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<Checkpoint, TrainError> {
        let score = self.last_score.filter(|(e, _)| *e == epoch).map(|(_, s)| s);
        let meta = Checkpoint { epoch, score, seed: self.seed, dir: Default::default() };
        self.sink.durable().map_err(|e| {
            TrainError::Failed(format!("checkpoint of epoch {epoch} not written: the journal failed: {e}"))
        })?;
        // Measured before the checkpoint is put in place: a larger one is
        // not kept, and fails the trial (a restart would write it again).
        let limit = self.settings.max_checkpoint_bytes;
        let mut over = None;
        let saved = self
            .store
            .save(self.id, &meta, |dir| {
                write(dir)?;
                let bytes = crate::cluster::transfer::tree_bytes(dir)?;
                if bytes > limit {
                    over = Some(bytes);
                    return Err(std::io::Error::other("over the limit"));
                }
                Ok(())
            })
            .map_err(|e| match over {
                Some(bytes) => TrainError::Invalid(format!(
                    "the checkpoint of epoch {epoch} is {bytes} bytes, over fault.max_checkpoint_mb = {} MiB: \
                     raise it in the config of a new run (a run keeps the config it started with), or make the checkpoint smaller",
                    limit >> 20
                )),
                None => TrainError::Failed(format!("writing checkpoint of epoch {epoch}: {e}")),
            })?;
        self.sink.checkpoint_written(self.id, &saved);
        Ok(saved)
    }

    /// Reads a parameter as an integer.
    pub fn int(&self, name: &str) -> Result<i64, TrainError> {
        self.params
            .get(name)
            .and_then(|v| v.as_i64())
            .ok_or_else(|| TrainError::Invalid(format!("parameter `{name}` missing or not an integer")))
    }

    /// Reads a parameter as a float.
    pub fn float(&self, name: &str) -> Result<f64, TrainError> {
        self.params
            .get(name)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| TrainError::Invalid(format!("parameter `{name}` missing or not a number")))
    }

    /// Reads a parameter as a string.
    pub fn string(&self, name: &str) -> Result<&str, TrainError> {
        self.params
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| TrainError::Invalid(format!("parameter `{name}` missing or not a string")))
    }
}
