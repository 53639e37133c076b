//! ExperimentHandle: what a running experiment offers its owner (the CLI,
//! the daemon, a library user): its trials now, a stream of its events,
//! its concurrency, cancel, and its summary at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use tokio::sync::{broadcast, oneshot};

use super::experiment::{ExperimentMsg, Outcome};
use super::{Observer, Settings, Summary, SweepError, SweepEvent};
use crate::trial::Trial;

/// Why a trial was not stopped or restarted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrialControlError {
    /// The experiment has no such trial.
    #[error("there is no trial {0}")]
    NoSuchTrial(crate::trial::TrialId),
    /// The trial (or the experiment) is in no state for it; says which.
    #[error("{0}")]
    Refused(String),
}

/// Events a slow subscriber may fall behind by before it misses some (it
/// is told how many, and can read the trials again).
pub(super) const EVENT_BUFFER: usize = 4096;

/// The caller's observer, and the broadcast every handle's subscribers read.
pub(super) fn broadcasting(observer: Option<Observer>, events: broadcast::Sender<Timed>) -> Observer {
    let started = Instant::now();
    let at = chrono::Utc::now();
    Arc::new(move |event: &SweepEvent| {
        if let Some(o) = &observer {
            o(event);
        }
        // No subscriber is not an error.
        let elapsed = started.elapsed();
        let when = at + chrono::Duration::from_std(elapsed).unwrap_or_default();
        let _ = events.send(Timed { event: event.clone(), elapsed, at: when });
    })
}

/// An event with its wall time.
#[derive(Debug, Clone)]
pub struct Timed {
    /// What happened.
    pub event: SweepEvent,
    /// Since this session of the experiment started.
    pub elapsed: Duration,
    /// When (UTC).
    pub at: chrono::DateTime<chrono::Utc>,
}

pub(super) struct Parts {
    pub(super) actor: ActorRef<ExperimentMsg>,
    pub(super) join: tokio::task::JoinHandle<()>,
    pub(super) done: oneshot::Receiver<Outcome>,
    pub(super) settings: Arc<Settings>,
    pub(super) events: broadcast::Sender<Timed>,
    pub(super) started: Instant,
    pub(super) scratch: Option<tempfile::TempDir>,
}

/// How the experiment ended, once it did.
struct Done {
    waiting: Option<(oneshot::Receiver<Outcome>, tokio::task::JoinHandle<()>, Option<tempfile::TempDir>)>,
    /// The summary, or why there is none.
    ended: Option<Result<Summary, String>>,
}

/// A running experiment; clones share it.
#[derive(Clone)]
pub struct ExperimentHandle {
    actor: ActorRef<ExperimentMsg>,
    settings: Arc<Settings>,
    events: broadcast::Sender<Timed>,
    started: Instant,
    done: Arc<tokio::sync::Mutex<Done>>,
}

impl ExperimentHandle {
    pub(super) fn new(p: Parts) -> Self {
        let done = Done { waiting: Some((p.done, p.join, p.scratch)), ended: None };
        ExperimentHandle {
            actor: p.actor,
            settings: p.settings,
            events: p.events,
            started: p.started,
            done: Arc::new(tokio::sync::Mutex::new(done)),
        }
    }

    /// The experiment's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Its trials as they stand now; empty once it ended (see [`wait`](Self::wait)).
    pub async fn trials(&self) -> Vec<Trial> {
        match self.actor.call(ExperimentMsg::Snapshot, Some(Duration::from_secs(10))).await {
            Ok(ractor::rpc::CallResult::Success(t)) => t,
            _ => Vec::new(),
        }
    }

    /// Every event from now on, with its time.
    pub fn subscribe(&self) -> broadcast::Receiver<Timed> {
        self.events.subscribe()
    }

    /// Keeps at most `n` trials alive from the next placement on; running
    /// trials over a lowered limit finish.
    pub fn set_concurrency(&self, n: u32) {
        let _ = self.actor.cast(ExperimentMsg::SetConcurrency(n));
    }

    /// Stops one trial at its next report; it ends pruned, "stopped on request".
    pub async fn stop_trial(&self, id: crate::trial::TrialId) -> Result<(), TrialControlError> {
        self.ask(|reply| ExperimentMsg::StopTrial(id, reply)).await
    }

    /// Starts a running trial's next attempt from its last checkpoint.
    pub async fn restart_trial(&self, id: crate::trial::TrialId) -> Result<(), TrialControlError> {
        self.ask(|reply| ExperimentMsg::RestartTrial(id, reply)).await
    }

    async fn ask(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Result<(), TrialControlError>>) -> ExperimentMsg,
    ) -> Result<(), TrialControlError> {
        match self.actor.call(msg, Some(Duration::from_secs(10))).await {
            Ok(ractor::rpc::CallResult::Success(answer)) => answer,
            _ => Err(TrialControlError::Refused("the experiment is not running".into())),
        }
    }

    /// Stops the experiment: running trials stop at their next report and
    /// stay resumable; [`wait`](Self::wait) then says `interrupted`.
    pub fn cancel(&self) {
        let _ = self.actor.cast(ExperimentMsg::Interrupt);
    }

    /// Whether it ended.
    pub fn is_finished(&self) -> bool {
        self.done.try_lock().is_ok_and(|d| d.ended.is_some())
    }

    /// Waits for the end and returns the summary (every caller gets it;
    /// an error is itself only once, then its text).
    pub async fn wait(&self) -> Result<Summary, SweepError> {
        let mut done = self.done.lock().await;
        if let Some((rx, join, _scratch)) = done.waiting.as_mut() {
            let outcome = rx.await.unwrap_or_else(|_| {
                // Its supervisor stopped on an error before it could say why:
                // the journal's failure, when there is one, is why.
                let why = match self.settings.journal.as_ref().and_then(crate::journal::Journal::error) {
                    Some(e) => format!("the journal failed: {e}"),
                    None => "its supervisor stopped without a summary (see gauntlet.log)".into(),
                };
                Err(SweepError::Aborted(why))
            });
            let _ = join.await;
            done.waiting = None; // the scratch checkpoints go with it
            let summary = outcome.map(|(trials, interrupted, stopped)| Summary {
                trials,
                metric: self.settings.metric.clone(),
                mode: self.settings.mode,
                elapsed: self.started.elapsed(),
                interrupted,
                stopped,
            });
            done.ended = Some(summary.as_ref().map(Clone::clone).map_err(ToString::to_string));
            return summary;
        }
        match done.ended.clone() {
            Some(Ok(summary)) => Ok(summary),
            Some(Err(e)) => Err(SweepError::Earlier(e)),
            None => Err(SweepError::Aborted("the experiment ended without a summary".into())),
        }
    }
}
