//! The supervision tree: actors that own the lifecycles of an experiment.
//!
//! ```text
//! WorkerPool                  knows the workers and their slots; places
//! │                           attempts; notices dead workers
//! ExperimentSupervisor        keeps `concurrency` trials alive: spawns and
//! │                           restarts TrialActors, copies PBT donors' checkpoints
//! ├── Leaderboard             owns the ExperimentState: proposals, every
//! │                           report and its decision, every event journalled
//! └── TrialActor ×N           one attempt of one trial: on an in-process slot
//!                             thread, or on a worker's slot via the pool
//! ```
//! Library sweeps of closures train on in-process slot threads; the CLI's
//! sweeps train in worker processes ([`crate::worker`]), local or remote,
//! so that a segfault or the OOM killer takes down one worker, not the sweep.
//! Every state change also goes to the journal ([`crate::journal`]), written
//! by a dedicated thread rather than an actor: its fdatasync blocks for
//! milliseconds and must not stall a tokio worker.
//!
//! A trial that panics makes its TrialActor fail; the supervisor's
//! `handle_supervisor_evt` restarts it from its last checkpoint after a
//! backoff, up to `max_restarts`, then marks it `failed` (the pure policy
//! of [`restart`]). Actors carry
//! messages and own lifecycles; the decisions are made by the pure
//! [`crate::state::ExperimentState`] and its policies in [`crate::search`]
//! and [`crate::schedule`].

mod experiment;
mod handle;
pub(crate) mod handover;
mod leaderboard;
pub mod pool;
pub mod restart;
pub(crate) mod slots;
mod trial;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::Actor;

use crate::checkpoint::CheckpointStore;
use crate::cluster::wire::{Experiment, ExperimentSource};
use crate::config::{ChaosConfig, Config, FaultConfig, Mode, SchedulerConfig, SearchConfig, SearchSpace};
use crate::journal::{Journal, RunState};
use crate::run_dir::RunDir;
use crate::schedule::Scheduler;
use crate::search::Searcher;
use crate::state::{ExperimentState, Setup, StopRules};
use crate::trainable::{ContextSettings, Trainable};
use crate::trial::{Trial, TrialStatus};

pub use handle::{ExperimentHandle, Timed, TrialControlError};
pub use leaderboard::SweepEvent;
pub use restart::backoff;
pub(crate) use trial::INCOMING_PREFIX;

/// Called by the leaderboard for every event; must be quick.
pub type Observer = Arc<dyn Fn(&SweepEvent) + Send + Sync>;

/// Why a sweep could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// An actor could not be started.
    #[error("cannot start the {what}: {message}")]
    Spawn {
        /// Which actor.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// A dimension of the search space is unusable.
    #[error("search space `{name}`: {message}")]
    Space {
        /// The dimension.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The slot threads could not be started.
    #[error("cannot start slot threads: {0}")]
    Threads(std::io::Error),
    /// The journal could not be written.
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    /// The run directory could not be written.
    #[error("run directory: {0}")]
    RunDir(std::io::Error),
    /// The engine stopped without a result.
    #[error("the experiment stopped unexpectedly: {0}")]
    Aborted(String),
    /// The error an earlier [`ExperimentHandle::wait`] returned, as its text.
    #[error("{0}")]
    Earlier(String),
}

/// The result of a sweep.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Every trial, by id.
    pub trials: Vec<Trial>,
    /// The experiment's metric.
    pub metric: String,
    /// Its direction.
    pub mode: Mode,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether the sweep was interrupted before its budget was spent.
    pub interrupted: bool,
    /// Why the sweep stopped early, when a stop rule ended it
    /// (`stop_at`, `epoch_budget`, `time_budget`).
    pub stopped: Option<String>,
}

impl Summary {
    /// The trial with the best metric.
    pub fn best(&self) -> Option<&Trial> {
        self.ranked().into_iter().next()
    }

    /// Trials with a metric, best first.
    pub fn ranked(&self) -> Vec<&Trial> {
        rank(&self.trials, self.mode)
    }

    /// How many trials ended with `status`.
    pub fn count(&self, status: TrialStatus) -> usize {
        self.trials.iter().filter(|s| s.status == status).count()
    }

    /// The distinct reasons trials failed, most common first.
    pub fn failures(&self) -> Vec<Failure> {
        failures(&self.trials)
    }

    /// Whether the sweep failed as a whole: at least half of its ended
    /// trials failed, or none of them gave a result (all failed or
    /// diverged, or none reported the experiment's metric).
    pub fn failed(&self) -> bool {
        let ended: Vec<&Trial> = self.trials.iter().filter(|s| s.status.is_final()).collect();
        let failed = ended.iter().filter(|s| s.status == TrialStatus::Failed).count();
        !ended.is_empty() && (2 * failed >= ended.len() || !self.gave_a_result())
    }

    /// Whether a trial ended with a result: completed or pruned, having
    /// reported the experiment's metric.
    pub fn gave_a_result(&self) -> bool {
        self.trials
            .iter()
            .any(|s| matches!(s.status, TrialStatus::Completed | TrialStatus::Pruned) && s.best_metric.is_some())
    }
}

/// Trials that failed for one reason.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Failure {
    /// How many trials failed so.
    pub count: usize,
    /// The first of them.
    pub first_trial: crate::trial::TrialId,
    /// Its error, as it was.
    pub error: String,
}

/// Groups failed trials by their error with the numbers taken out (the
/// same crash in another epoch, the same size error for other sizes).
pub fn failures(standings: &[Trial]) -> Vec<Failure> {
    let mut groups: Vec<(String, Failure)> = Vec::new();
    for s in standings.iter().filter(|s| s.status == TrialStatus::Failed) {
        let error = s.error.clone().unwrap_or_else(|| "(no error text)".into());
        let key: String = masked_scratch(&error)
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect::<String>()
            .split('#')
            .filter(|p| !p.is_empty() && *p != ".")
            .collect::<Vec<_>>()
            .join("#");
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, f)) => f.count += 1,
            None => groups.push((key, Failure { count: 1, first_trial: s.id, error })),
        }
    }
    let mut out: Vec<Failure> = groups.into_iter().map(|(_, f)| f).collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_trial.cmp(&b.first_trial)));
    out
}

/// `error` with each trial's scratch directory name (`gauntlet-trial-3-0-5WQRd2`,
/// random) made one word, so that errors that differ only there group together.
fn masked_scratch(error: &str) -> String {
    let prefix = crate::files::TRIAL_SCRATCH;
    let mut out = String::with_capacity(error.len());
    let mut rest = error;
    while let Some(at) = rest.find(prefix) {
        out.push_str(&rest[..at + prefix.len()]);
        out.push('*');
        let tail = &rest[at + prefix.len()..];
        rest = &tail[tail.find(|c: char| c == '/' || c.is_whitespace()).unwrap_or(tail.len())..];
    }
    out.push_str(rest);
    out
}

/// Trials with a finite metric, best first (ties: lower id first).
pub fn rank(standings: &[Trial], mode: Mode) -> Vec<&Trial> {
    let mut out: Vec<&Trial> = standings.iter().filter(|s| s.best_metric.is_some_and(f64::is_finite)).collect();
    out.sort_by(|a, b| {
        let (x, y) = (mode.score(a.best_metric.unwrap()), mode.score(b.best_metric.unwrap()));
        y.total_cmp(&x).then(a.id.cmp(&b.id))
    });
    out
}

/// Everything the actors share about one experiment.
pub(crate) struct Settings {
    pub name: String,
    pub metric: String,
    pub mode: Mode,
    pub seed: u64,
    pub concurrency: u32,
    pub threads_per_trial: u32,
    pub fault: FaultConfig,
    /// What each trial's context is given.
    pub context: Arc<ContextSettings>,
    pub trainable: Arc<dyn Trainable>,
    pub checkpoints: CheckpointStore,
    pub run_dir: Option<Arc<RunDir>>,
    pub journal: Option<Journal>,
    pub observer: Option<Observer>,
    pub pool: Option<pool::Hosted>,
    /// Counts the in-process slots' jobs and messages, for the actor
    /// thread that waits on them ([`handover`]).
    pub handover: handover::Handover,
    /// Wall time this session may still run before the time budget is spent.
    pub time_left: Option<Duration>,
    /// Time earlier sessions ran.
    pub spent: Duration,
    /// When this session started.
    pub started: Instant,
}

impl Settings {
    /// Now, as a report's stamp.
    pub(crate) fn stamp(&self) -> crate::trial::Stamp {
        let unix_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let elapsed_ms = (self.spent + self.started.elapsed()).as_millis() as u64;
        crate::trial::Stamp { unix_ms, elapsed_ms }
    }
}

/// What a resumed sweep starts from.
struct Prior {
    /// The state replay left.
    state: ExperimentState,
    /// Wall time spent in earlier sessions.
    spent: Duration,
}

/// A sweep, configured and ready to run: the library's entry point.
///
/// ```no_run
/// use gauntlet::{Domain, Mode, SearchSpace, Sweep, TrainError, TrialContext};
/// let space = SearchSpace::new().with("x", Domain::Uniform { low: -1.0, high: 1.0 });
/// let summary = Sweep::new("demo", space, |ctx: &mut TrialContext| -> Result<(), TrainError> {
///     let x = ctx.float("x")?;
///     for epoch in ctx.first_epoch()..=ctx.max_epochs() {
///         ctx.report(epoch, &[("score", -(x * x) * f64::from(epoch))])?;
///     }
///     Ok(())
/// })
/// .metric("score", Mode::Max)
/// .max_trials(20)
/// .run_blocking()
/// .unwrap();
/// println!("best: {:?}", summary.best());
/// ```
pub struct Sweep {
    name: String,
    space: SearchSpace,
    trainable: Arc<dyn Trainable>,
    metric: String,
    mode: Mode,
    seed: u64,
    max_trials: u32,
    concurrency: u32,
    threads_per_trial: u32,
    max_epochs: u32,
    search: SearchConfig,
    scheduler: SchedulerConfig,
    rules: StopRules,
    time_budget: Option<Duration>,
    fault: FaultConfig,
    chaos: ChaosConfig,
    run_dir: Option<Arc<RunDir>>,
    journal: Option<Journal>,
    prior: Option<Prior>,
    observer: Option<Observer>,
    pool: Option<(pool::Pool, ExperimentSource)>,
    priority: i32,
    handover: handover::Handover,
}

impl Sweep {
    /// A sweep of `trainable` over `space` with defaults: random search,
    /// FIFO, 16 trials, 10 epochs, one slot per core, metric `val_accuracy` maximised.
    pub fn new(name: impl Into<String>, space: SearchSpace, trainable: impl Trainable) -> Self {
        Self::new_shared(name, space, Arc::new(trainable))
    }

    /// [`Sweep::new`] with a trainable already shared.
    pub fn new_shared(name: impl Into<String>, space: SearchSpace, trainable: Arc<dyn Trainable>) -> Self {
        Sweep {
            name: name.into(),
            space,
            trainable,
            metric: "val_accuracy".into(),
            mode: Mode::Max,
            seed: 0,
            max_trials: 16,
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            threads_per_trial: 1,
            max_epochs: 10,
            search: SearchConfig::default(),
            scheduler: SchedulerConfig::default(),
            rules: StopRules::default(),
            time_budget: None,
            fault: FaultConfig::default(),
            chaos: ChaosConfig::default(),
            run_dir: None,
            journal: None,
            prior: None,
            observer: None,
            pool: None,
            priority: 0,
            handover: Default::default(),
        }
    }

    /// A sweep as a config file describes it.
    pub fn from_config(config: &Config, trainable: impl Trainable) -> Self {
        Self::from_config_shared(config, Arc::new(trainable))
    }

    /// [`Sweep::from_config`] with a trainable already shared.
    pub fn from_config_shared(config: &Config, trainable: Arc<dyn Trainable>) -> Self {
        let e = &config.experiment;
        Sweep::new_shared(e.name.clone(), config.space.clone(), trainable)
            .metric(e.metric.clone(), e.mode)
            .seed(e.seed)
            .max_trials(e.max_trials)
            .concurrency(e.slots())
            .priority(e.priority)
            .threads_per_trial(e.threads_per_trial)
            .max_epochs(config.max_epochs)
            .search(config.search.clone())
            .scheduler(config.scheduler.clone())
            .stop_rules(e.stop_rules())
            .time_budget(e.time_budget())
            .fault(config.fault.clone())
            .chaos(config.chaos.clone())
    }

    /// The metric to optimise and its direction.
    pub fn metric(mut self, metric: impl Into<String>, mode: Mode) -> Self {
        self.metric = metric.into();
        self.mode = mode;
        self
    }
    /// The experiment seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// The number of trials.
    pub fn max_trials(mut self, n: u32) -> Self {
        self.max_trials = n.max(1);
        self
    }
    /// Slots used at once.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// libtorch threads per trial.
    pub fn threads_per_trial(mut self, n: u32) -> Self {
        self.threads_per_trial = n.max(1);
        self
    }
    /// The epoch budget of one trial.
    pub fn max_epochs(mut self, n: u32) -> Self {
        self.max_epochs = n.max(1);
        self
    }
    /// The search algorithm.
    pub fn search(mut self, search: SearchConfig) -> Self {
        self.search = search;
        self
    }
    /// The early-stopping policy.
    pub fn scheduler(mut self, scheduler: SchedulerConfig) -> Self {
        self.scheduler = scheduler;
        self
    }
    /// Stops the sweep early on reports: a metric target, an epoch budget.
    pub fn stop_rules(mut self, rules: StopRules) -> Self {
        self.rules = rules;
        self
    }
    /// Stops the sweep after this much wall time in all (earlier sessions of
    /// a resumed run included); running trials complete at their next report.
    pub fn time_budget(mut self, budget: Option<Duration>) -> Self {
        self.time_budget = budget;
        self
    }
    /// Restart policy and checkpoint cadence.
    pub fn fault(mut self, fault: FaultConfig) -> Self {
        self.fault = fault;
        self
    }
    /// Injected failures.
    pub fn chaos(mut self, chaos: ChaosConfig) -> Self {
        self.chaos = chaos;
        self
    }
    /// Writes results, checkpoints and the best model into a run directory.
    pub fn run_dir(mut self, dir: RunDir) -> Self {
        self.run_dir = Some(Arc::new(dir));
        self
    }
    /// Records every state change in a journal (see [`crate::journal`]).
    pub fn journal(mut self, journal: Journal) -> Self {
        self.journal = Some(journal);
        self
    }
    /// Continues a run from its replayed journal: finished trials stay as
    /// they are, unfinished ones continue from their last checkpoints, new
    /// proposals continue the searcher's sequence and ids.
    pub fn resume(mut self, run: &RunState) -> Self {
        self.prior = Some(Prior { state: run.state.clone(), spent: run.spent });
        self
    }
    /// Trains in the worker processes of `pool` rather than on in-process
    /// slot threads (the trainable then only describes models); `source` is
    /// what the workers load the experiment from, and they train its trials
    /// with this sweep's settings.
    pub fn workers(mut self, pool: pool::Pool, source: ExperimentSource) -> Self {
        self.pool = Some((pool, source));
        self
    }

    /// What each trial's context is given: derived here alone, for the
    /// in-process slots and for the workers alike.
    fn context(&self) -> ContextSettings {
        ContextSettings {
            metric: self.metric.clone(),
            mode: self.mode,
            max_epochs: self.max_epochs,
            checkpoint_every: self.fault.checkpoint_every,
            max_checkpoint_bytes: self.fault.max_checkpoint_bytes(),
            threads: self.threads_per_trial,
            panic_probability: self.chaos.panic_probability,
            abort_probability: self.chaos.abort_probability,
        }
    }
    /// Where this experiment stands when it shares a pool: free slots go to
    /// the highest priority first (see [`pool`]). Default 0.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    /// Receives every event (progress displays).
    pub fn observer(mut self, observer: impl Fn(&SweepEvent) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// Runs the sweep to the end on the current tokio runtime.
    pub async fn run(self) -> Result<Summary, SweepError> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until the budget is spent or `interrupt` resolves; then running
    /// trials stop at their next report and the summary says `interrupted`.
    pub async fn run_until(self, interrupt: impl std::future::Future<Output = ()>) -> Result<Summary, SweepError> {
        let handle = self.spawn().await?;
        tokio::pin!(interrupt);
        tokio::select! {
            _ = handle.wait() => {}
            _ = &mut interrupt => handle.cancel(),
        }
        handle.wait().await
    }

    /// Starts the sweep and returns at once with its handle: status, events,
    /// concurrency, cancel, and [`ExperimentHandle::wait`] for the summary.
    pub async fn spawn(self) -> Result<ExperimentHandle, SweepError> {
        let started = Instant::now();
        for (name, domain) in self.space.dims() {
            domain.check().map_err(|message| SweepError::Space { name: name.clone(), message })?;
        }
        // Checkpoints live in the run directory, or in a temporary one that
        // lives as long as the sweep.
        let (checkpoints, scratch) = match &self.run_dir {
            Some(dir) => (CheckpointStore::new(dir.trials_dir(), self.fault.keep_checkpoints as usize), None),
            None => {
                let scratch = tempfile::tempdir().map_err(SweepError::RunDir)?;
                (CheckpointStore::new(scratch.path(), 2), Some(scratch))
            }
        };
        let context = self.context();
        let prior = self.prior.unwrap_or_else(|| Prior {
            state: ExperimentState::new(Setup {
                metric: self.metric.clone(),
                mode: self.mode,
                max_epochs: self.max_epochs,
                max_trials: self.max_trials,
                space: self.space.clone(),
                searcher: Searcher::new(&self.search, &self.space, self.seed),
                scheduler: Scheduler::new(&self.scheduler, self.max_epochs, self.seed, &self.space),
                rules: self.rules.clone(),
            }),
            spent: Duration::ZERO,
        });
        // Donor checkpoints that exploits decided before a resume still wait
        // to be copied; the checkpoints the journal knows of may be picked.
        for t in prior.state.trials() {
            if let Some(e) = &t.exploit {
                checkpoints.pin(e.donor, e.epoch);
            }
            if let Some(epoch) = t.last_checkpoint {
                checkpoints.known(t.id, epoch);
            }
        }
        // Sharing a pool: the workers load the experiment before its trials come.
        let hosted = match self.pool {
            Some((pool, source)) => {
                Some(pool.host(Experiment::new(source, context.clone()), self.concurrency, self.priority).await?)
            }
            None => None,
        };
        let (events, _) = tokio::sync::broadcast::channel(handle::EVENT_BUFFER);
        let settings = Arc::new(Settings {
            name: self.name,
            metric: self.metric,
            mode: self.mode,
            seed: self.seed,
            concurrency: self.concurrency,
            threads_per_trial: self.threads_per_trial,
            fault: self.fault,
            context: Arc::new(context),
            trainable: self.trainable,
            checkpoints,
            run_dir: self.run_dir,
            journal: self.journal,
            observer: Some(handle::broadcasting(self.observer, events.clone())),
            pool: hosted.clone(),
            handover: self.handover,
            time_left: self.time_budget.map(|b| b.saturating_sub(prior.spent)),
            spent: prior.spent,
            started,
        });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let args = experiment::Args { settings: settings.clone(), state: prior.state, done: done_tx };
        // Unnamed: experiments are told apart by their handles (a daemon hosts
        // many of one name; ractor's registry would refuse the second).
        let spawned = Actor::spawn(None, experiment::ExperimentSupervisor, args).await;
        let (actor, join) = match spawned {
            Ok(s) => s,
            Err(e) => {
                if let Some(h) = &hosted {
                    h.unhost();
                }
                return Err(SweepError::Spawn { what: "experiment supervisor", message: e.to_string() });
            }
        };
        Ok(ExperimentHandle::new(handle::Parts { actor, join, done: done_rx, settings, events, started, scratch }))
    }

    /// Runs the sweep on a runtime of its own.
    pub fn run_blocking(self) -> Result<Summary, SweepError> {
        // One thread for the actors: they only pass messages (training runs
        // on slot threads, file work on the blocking pool, the journal on
        // its own thread), and a message between two actors on one thread
        // wakes nobody. Before it parks, it waits briefly for a busy slot's
        // next message, which then finds it awake (see [`handover`]).
        let handover = self.handover.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || handover.wait())
            .build()
            .map_err(SweepError::Threads)?;
        rt.block_on(self.run())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_differ_in_a_scratch_directory_name_group_together() {
        let trial = |id: u32, error: &str| Trial {
            status: TrialStatus::Failed,
            error: Some(error.to_owned()),
            ..Trial::pending(crate::trial::TrialId(id), crate::config::Params::new())
        };
        let trials = [
            trial(0, "can't open file '/tmp/gauntlet-trial-11-0-5WQRd2/x.py': No such file"),
            trial(1, "can't open file '/tmp/gauntlet-trial-11-1-Zq0aBc/x.py': No such file"),
            trial(2, "another error"),
        ];
        let f = failures(&trials);
        assert_eq!(f.iter().map(|f| f.count).collect::<Vec<_>>(), [2, 1], "{f:?}");
        assert_eq!(masked_scratch("a gauntlet-trial-1-2-xyz b"), "a gauntlet-trial-* b");
    }
}
