//! TrialActor: one attempt of one trial. It hands the training to a slot
//! thread, forwards the thread's end to its supervisor, and fails (so that
//! the supervisor restarts the trial) when the training crashed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::experiment::ExperimentMsg;
use super::leaderboard::{LeaderboardMsg, LeaderboardSink};
use super::slots::SlotQueue;
use super::Settings;
use crate::checkpoint::Checkpoint;
use crate::config::Params;
use crate::trainable::{ContextSettings, Stop, TrainError, TrialContext};
use crate::trial::TrialId;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AttemptEnd {
    /// Trained to its budget.
    Completed,
    /// Stopped by the scheduler.
    Pruned,
    /// Stopped because the sweep is shutting down.
    Cancelled,
    /// A loss or the metric became NaN or infinite.
    Diverged(String),
    /// Parameters the trainable cannot use: failed, never restarted.
    Invalid(String),
    /// Panicked or returned an error: restarted from the last checkpoint.
    Crashed(String),
}

impl AttemptEnd {
    fn of(result: Result<Result<(), TrainError>, Box<dyn std::any::Any + Send>>) -> Self {
        match result {
            Ok(Ok(())) | Ok(Err(TrainError::Stopped(Stop::Completed))) => AttemptEnd::Completed,
            Ok(Err(TrainError::Stopped(Stop::Pruned))) => AttemptEnd::Pruned,
            Ok(Err(TrainError::Stopped(Stop::Cancelled | Stop::Lost))) => AttemptEnd::Cancelled,
            Ok(Err(TrainError::Diverged(m))) => AttemptEnd::Diverged(m),
            Ok(Err(TrainError::Invalid(m))) => AttemptEnd::Invalid(m),
            Ok(Err(TrainError::Failed(m))) => AttemptEnd::Crashed(m),
            Err(panic) => AttemptEnd::Crashed(panic_text(panic.as_ref())),
        }
    }
}

/// The text of a panic payload.
pub(super) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// The error a TrialActor fails with when its training crashed; the
/// supervisor reads the text from it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct TrialCrash(pub String);

pub(super) struct TrialActor;

pub(super) struct Args {
    pub(super) id: TrialId,
    pub(super) attempt: u32,
    pub(super) restarts: u32,
    pub(super) seed: u64,
    pub(super) params: Params,
    pub(super) resume: Option<Checkpoint>,
    pub(super) settings: Arc<Settings>,
    pub(super) context: Arc<ContextSettings>,
    pub(super) leaderboard: ActorRef<LeaderboardMsg>,
    pub(super) supervisor: ActorRef<ExperimentMsg>,
    pub(super) slots: SlotQueue,
}

pub(super) enum TrialMsg {
    /// The slot thread returned.
    Finished(AttemptEnd),
    /// Stop at the next report (the sweep is shutting down).
    Cancel,
}

pub(super) struct State {
    id: TrialId,
    cancel: Arc<AtomicBool>,
    supervisor: ActorRef<ExperimentMsg>,
}

impl Actor for TrialActor {
    type Msg = TrialMsg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, myself: ActorRef<TrialMsg>, a: Args) -> Result<State, ActorProcessingErr> {
        let cancel = Arc::new(AtomicBool::new(false));
        let from_epoch = a.resume.as_ref().map(|c| c.epoch);
        let _ = a.leaderboard.cast(LeaderboardMsg::Started { id: a.id, attempt: a.attempt, from_epoch });
        let mut ctx = TrialContext::new(
            a.id,
            a.attempt,
            a.restarts,
            a.seed,
            a.params,
            a.resume,
            a.context,
            Box::new(LeaderboardSink::new(a.leaderboard, a.settings.journal.clone())),
            a.settings.checkpoints.clone(),
            cancel.clone(),
        );
        let trainable = a.settings.trainable.clone();
        let reply = myself.clone();
        a.slots.submit(Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(|| trainable.train(&mut ctx)));
            // The actor may be gone (sweep interrupted); nothing else to tell then.
            let _ = reply.cast(TrialMsg::Finished(AttemptEnd::of(result)));
        }))?;
        Ok(State { id: a.id, cancel, supervisor: a.supervisor })
    }

    async fn handle(
        &self,
        myself: ActorRef<TrialMsg>,
        msg: TrialMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TrialMsg::Cancel => state.cancel.store(true, Ordering::Relaxed),
            TrialMsg::Finished(AttemptEnd::Crashed(text)) => return Err(Box::new(TrialCrash(text))),
            TrialMsg::Finished(end) => {
                state.supervisor.cast(ExperimentMsg::Ended { id: state.id, end })?;
                myself.stop(None);
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<TrialMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        // Whatever stopped us, the slot thread must not train on unobserved.
        state.cancel.store(true, Ordering::Relaxed);
        Ok(())
    }
}
