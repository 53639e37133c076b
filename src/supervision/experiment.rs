//! ExperimentSupervisor: proposes trials, keeps at most `concurrency` of them
//! alive, and owns the restart policy. Trial crashes arrive as supervision
//! events (the TrialActor failed); normal ends arrive as messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use super::leaderboard::{self, Leaderboard, LeaderboardMsg, NextTrial};
use super::restart::{self, AfterLoss, Loss};
use super::slots::SlotPool;
use super::trial::{self, TrialActor, TrialMsg};
use super::{rank, Settings, SweepError, TrialControlError};
use crate::journal::Event;
use crate::state::ExperimentState;
use crate::trial::AttemptEnd;
use crate::trial::{trial_seed, Trial, TrialId, TrialStatus};

/// The standings, whether the sweep was interrupted, and why it stopped early.
pub(super) type Outcome = Result<(Vec<Trial>, bool, Option<String>), SweepError>;

pub(super) struct ExperimentSupervisor;

pub(super) struct Args {
    pub(super) settings: Arc<Settings>,
    /// The experiment's state: empty, or a resumed run's as replay left it.
    pub(super) state: ExperimentState,
    pub(super) done: oneshot::Sender<Outcome>,
}

impl ractor::Message for ExperimentMsg {}

pub(super) enum ExperimentMsg {
    /// Propose and start trials while slots are free.
    Fill,
    /// A trial attempt ended without crashing.
    Ended { id: TrialId, end: AttemptEnd },
    /// A crashed trial's backoff is over: start its next attempt.
    Respawn(TrialId),
    /// Stop: running trials stop at their next report and stay resumable.
    Interrupt,
    /// A stop rule fired (the leaderboard saw it on a report): propose no more.
    Spent(String),
    /// The time budget is spent.
    TimeUp,
    /// Keep at most this many trials alive from now on (the pool's cap
    /// follows; running trials over a lowered cap finish).
    SetConcurrency(u32),
    /// The trials as the leaderboard has them now.
    Snapshot(ractor::RpcReplyPort<Vec<Trial>>),
    /// Stop one trial (at its next report): it ends pruned, saying so.
    StopTrial(TrialId, ractor::RpcReplyPort<Result<(), TrialControlError>>),
    /// Start one running trial's next attempt from its last checkpoint.
    RestartTrial(TrialId, ractor::RpcReplyPort<Result<(), TrialControlError>>),
}

/// The error a trial stopped on request ends with.
pub(super) const STOPPED_BY_REQUEST: &str = "stopped on request";

/// What the supervisor holds of a trial it keeps alive: the lifecycle
/// (actor, attempt numbers, the restart policy's counts). The trial itself
/// (parameters, exploits) is the leaderboard's record, read at each attempt.
struct LiveTrial {
    seed: u64,
    /// The next attempt's number.
    attempts: u32,
    restarts: u32,
    /// Times its worker was lost under it.
    preemptions: u32,
    actor: Option<ActorRef<TrialMsg>>,
}

pub(super) struct State {
    settings: Arc<Settings>,
    leaderboard: ActorRef<LeaderboardMsg>,
    slots: Option<SlotPool>,
    interrupted: bool,
    /// Trials asked to stop (they end at their next report).
    stopping: std::collections::BTreeSet<TrialId>,
    /// Trials asked to restart (a new attempt after this one stops).
    restarting: std::collections::BTreeSet<TrialId>,
    /// Why the sweep stops early (a stop rule): nothing more is proposed.
    spent: Option<String>,
    live: BTreeMap<TrialId, LiveTrial>,
    /// The most trials alive at once.
    concurrency: u32,
    by_actor: HashMap<ActorId, TrialId>,
    done: Option<oneshot::Sender<Outcome>>,
}

impl Actor for ExperimentSupervisor {
    type Msg = ExperimentMsg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, myself: ActorRef<ExperimentMsg>, args: Args) -> Result<State, ActorProcessingErr> {
        let settings = args.settings;
        let spent = args.state.stopped().map(str::to_owned);
        // A resumed run's unfinished trials continue first, from their checkpoints.
        let mut live = BTreeMap::new();
        for t in args.state.to_continue() {
            let seed = trial_seed(settings.seed, t.id);
            let trial = LiveTrial { seed, attempts: t.attempts, restarts: t.restarts, preemptions: 0, actor: None };
            live.insert(t.id, trial);
            myself.cast(ExperimentMsg::Respawn(t.id))?;
        }
        let (leaderboard, _) = Actor::spawn_linked(
            None,
            Leaderboard,
            leaderboard::Args { settings: settings.clone(), state: args.state, supervisor: myself.clone() },
            myself.get_cell(),
        )
        .await?;
        if let Some(left) = settings.time_left.filter(|_| spent.is_none()) {
            myself.send_after(left, || ExperimentMsg::TimeUp);
        }
        // Trials train on in-process slot threads unless a worker pool trains them.
        let slots = match settings.pool {
            Some(_) => None,
            None => Some(SlotPool::start(settings.concurrency, settings.handover.clone())?),
        };
        myself.cast(ExperimentMsg::Fill)?;
        let concurrency = settings.concurrency;
        Ok(State {
            settings,
            leaderboard,
            slots,
            interrupted: false,
            stopping: Default::default(),
            restarting: Default::default(),
            spent,
            live,
            concurrency,
            by_actor: HashMap::new(),
            done: Some(args.done),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ExperimentMsg>,
        msg: ExperimentMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExperimentMsg::Fill => self.fill(&myself, state).await?,
            ExperimentMsg::Ended { id, end: AttemptEnd::Preempted(reason) } => {
                self.on_loss(&myself, state, id, Loss::Preemption, reason).await?
            }
            // Paused by the scheduler: the slot is free; it waits for its promotion.
            ExperimentMsg::Ended { id, end: AttemptEnd::Paused } => {
                self.end_trial(state, id, TrialStatus::Paused, None);
                self.fill(&myself, state).await?;
            }
            // PBT: the next attempt starts from the donor's checkpoint.
            ExperimentMsg::Ended { id, end: AttemptEnd::Exploited } => {
                if let Some(t) = state.live.get_mut(&id) {
                    t.actor = None;
                }
                if state.interrupted {
                    self.end_trial(state, id, TrialStatus::Paused, None);
                    self.fill(&myself, state).await?;
                } else {
                    self.spawn_attempt(&myself, state, id).await;
                }
            }
            ExperimentMsg::Ended { id, end: AttemptEnd::Cancelled } if state.stopping.remove(&id) => {
                state.restarting.remove(&id);
                self.end_trial(state, id, TrialStatus::Pruned, Some(STOPPED_BY_REQUEST.into()));
                self.fill(&myself, state).await?;
            }
            ExperimentMsg::Ended { id, end: AttemptEnd::Cancelled }
                if state.restarting.remove(&id) && !state.interrupted =>
            {
                if let Some(t) = state.live.get_mut(&id) {
                    t.actor = None;
                }
                tracing::info!(trial = %id, "restarting on request from its last checkpoint");
                self.spawn_attempt(&myself, state, id).await;
            }
            ExperimentMsg::StopTrial(id, reply) => {
                let answer = self.stop_trial(state, id).await;
                if answer.is_ok() && !state.stopping.contains(&id) {
                    self.fill(&myself, state).await?;
                }
                let _ = reply.send(answer);
            }
            ExperimentMsg::RestartTrial(id, reply) => {
                let answer = match state.live.get(&id).and_then(|t| t.actor.as_ref()) {
                    _ if state.interrupted => Err(TrialControlError::Refused("the experiment is stopping".into())),
                    Some(actor) => {
                        let _ = actor.cast(TrialMsg::Cancel);
                        state.restarting.insert(id);
                        Ok(())
                    }
                    None => self.record(state, id).await.and_then(|_| {
                        Err(TrialControlError::Refused(format!(
                            "trial {id} is not running: only a running trial restarts"
                        )))
                    }),
                };
                let _ = reply.send(answer);
            }
            ExperimentMsg::Ended { id, end } => {
                let status = match &end {
                    AttemptEnd::Completed => TrialStatus::Completed,
                    AttemptEnd::Pruned => TrialStatus::Pruned,
                    AttemptEnd::Cancelled => TrialStatus::Paused,
                    AttemptEnd::Diverged(_) => TrialStatus::Diverged,
                    AttemptEnd::Invalid(_) | AttemptEnd::Crashed(_) => TrialStatus::Failed,
                    AttemptEnd::Preempted(_) | AttemptEnd::Exploited | AttemptEnd::Paused => TrialStatus::Paused,
                };
                let error = match end {
                    AttemptEnd::Diverged(m)
                    | AttemptEnd::Invalid(m)
                    | AttemptEnd::Crashed(m)
                    | AttemptEnd::Preempted(m) => Some(m),
                    _ => None,
                };
                self.end_trial(state, id, status, error);
                self.fill(&myself, state).await?;
            }
            ExperimentMsg::Respawn(id) => {
                // A restart after the sweep is over (interrupted, or a budget spent) waits for the next session.
                if state.interrupted || state.spent.is_some() {
                    self.end_trial(state, id, TrialStatus::Paused, None);
                    self.fill(&myself, state).await?;
                } else if state.live.contains_key(&id) {
                    self.spawn_attempt(&myself, state, id).await;
                }
            }
            ExperimentMsg::Spent(reason) => {
                if state.spent.is_none() {
                    tracing::info!("stopping the sweep: {reason}; running trials complete at their next report");
                    state.spent = Some(reason);
                    Self::withdraw_waiting(state);
                }
                self.fill(&myself, state).await?;
            }
            ExperimentMsg::TimeUp => {
                if state.spent.is_none() {
                    let reason = "the time budget is spent".to_owned();
                    tracing::info!("stopping the sweep: {reason}; running trials complete at their next report");
                    state.leaderboard.cast(LeaderboardMsg::Stop(reason.clone()))?;
                    state.spent = Some(reason);
                    Self::withdraw_waiting(state);
                }
                self.fill(&myself, state).await?;
            }
            ExperimentMsg::SetConcurrency(n) => {
                state.concurrency = n.max(1);
                if let Some(hosted) = &state.settings.pool {
                    hosted.set_cap(state.concurrency);
                }
                tracing::info!(concurrency = state.concurrency, "concurrency changed");
                self.fill(&myself, state).await?;
            }
            ExperimentMsg::Snapshot(reply) => {
                if let Ok(ractor::rpc::CallResult::Success(trials)) =
                    state.leaderboard.call(LeaderboardMsg::Snapshot, None).await
                {
                    let _ = reply.send(trials);
                }
            }
            ExperimentMsg::Interrupt => {
                state.interrupted = true;
                let mut waiting = Vec::new();
                for (id, t) in &state.live {
                    match &t.actor {
                        Some(actor) => {
                            let _ = actor.cast(TrialMsg::Cancel);
                        }
                        None => waiting.push(*id), // backing off before a restart
                    }
                }
                for id in waiting {
                    self.end_trial(state, id, TrialStatus::Paused, None);
                }
                self.fill(&myself, state).await?;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ExperimentMsg>,
        event: SupervisionEvent,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if cell.get_id() == state.leaderboard.get_id() {
                    return self.abort(&myself, state, format!("the leaderboard failed: {err}"));
                }
                let Some(id) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                self.on_loss(&myself, state, id, Loss::Crash, err.to_string()).await?;
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if cell.get_id() == state.leaderboard.get_id() && state.done.is_some() {
                    return self.abort(&myself, state, "the leaderboard stopped".into());
                }
                state.by_actor.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<ExperimentMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        // Stopped by an error before it could say why: the journal's failure
        // is the likeliest, and the caller gets that rather than nothing.
        if let Some(done) = state.done.take() {
            let why = match state.settings.journal.as_ref().and_then(crate::journal::Journal::error) {
                Some(e) => format!("the journal failed: {e}"),
                None => "its supervisor stopped on an error (see gauntlet.log)".into(),
            };
            let _ = done.send(Err(SweepError::Aborted(why)));
        }
        // Its workers drop what they loaded for it.
        if let Some(hosted) = &state.settings.pool {
            hosted.unhost();
        }
        if let Some(slots) = state.slots.take() {
            // Slot threads finish their current job (cancelled) and exit.
            let _ = tokio::task::spawn_blocking(move || slots.join()).await;
        }
        Ok(())
    }
}

impl ExperimentSupervisor {
    /// Tells every attempt that waits for a slot that the sweep is over:
    /// without a worker it would wait for ever.
    fn withdraw_waiting(state: &State) {
        for t in state.live.values() {
            if let Some(actor) = &t.actor {
                let _ = actor.cast(TrialMsg::Withdraw);
            }
        }
    }

    /// Starts trials (promoted or new) while there are free slots and work;
    /// finishes the experiment when nothing is left to run.
    async fn fill(&self, myself: &ActorRef<ExperimentMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        let s = state.settings.clone();
        let mut idle = state.interrupted || state.spent.is_some();
        while !idle && state.live.len() < state.concurrency as usize {
            // The searcher and the scheduler are part of the experiment's state, at the leaderboard.
            let next = match state.leaderboard.call(LeaderboardMsg::Next, None).await {
                Ok(ractor::rpc::CallResult::Success(next)) => next,
                other => return Err(format!("no next trial from the leaderboard: {other:?}").into()),
            };
            let (record, attempts, restarts) = match next {
                Some(NextTrial::New(t)) => (t, 0, 0),
                Some(NextTrial::Resume(t)) => {
                    let (attempts, restarts) = (t.attempts, t.restarts);
                    (t, attempts, restarts)
                }
                None => {
                    idle = true;
                    break;
                }
            };
            let id = record.id;
            let seed = trial_seed(s.seed, id);
            state.live.insert(id, LiveTrial { seed, attempts, restarts, preemptions: 0, actor: None });
            self.start_attempt(myself, state, record).await;
        }
        if state.live.is_empty() && idle {
            if !state.interrupted {
                // Nothing runs and nothing will: trials waiting for a promotion end.
                if let Err(e) = state.leaderboard.call(LeaderboardMsg::EndWaiting, None).await {
                    tracing::error!("cannot end the trials waiting for a promotion: {e}");
                }
            }
            self.finish(myself, state).await?;
        }
        Ok(())
    }

    /// Stops one trial: a running one at its next report, one backing off
    /// or waiting for a promotion at once.
    /// A trial's record as the leaderboard has it: no such trial is
    /// `NoSuchTrial`; a leaderboard that does not answer (the experiment
    /// ending) is a refusal, not a claim that the trial does not exist.
    async fn record(&self, state: &State, id: TrialId) -> Result<Trial, TrialControlError> {
        match state.leaderboard.call(|reply| LeaderboardMsg::Record(id, reply), None).await {
            Ok(ractor::rpc::CallResult::Success(Some(t))) => Ok(t),
            Ok(ractor::rpc::CallResult::Success(None)) => Err(TrialControlError::NoSuchTrial(id)),
            _ => Err(TrialControlError::Refused("the experiment is stopping".into())),
        }
    }

    async fn stop_trial(&self, state: &mut State, id: TrialId) -> Result<(), TrialControlError> {
        if let Some(t) = state.live.get(&id) {
            match &t.actor {
                Some(actor) => {
                    let _ = actor.cast(TrialMsg::Cancel);
                    state.stopping.insert(id);
                }
                None => self.end_trial(state, id, TrialStatus::Pruned, Some(STOPPED_BY_REQUEST.into())),
            }
            return Ok(());
        }
        match self.record(state, id).await? {
            t if t.status.is_final() => {
                Err(TrialControlError::Refused(format!("trial {id} ended already ({})", t.status.as_str())))
            }
            _ => {
                // Waiting for a promotion: it ends now.
                let _ = state.leaderboard.cast(LeaderboardMsg::Ended {
                    id,
                    status: TrialStatus::Pruned,
                    error: Some(STOPPED_BY_REQUEST.into()),
                });
                Ok(())
            }
        }
    }

    /// Starts the next attempt of a live trial, with its record as the leaderboard has it now.
    async fn spawn_attempt(&self, myself: &ActorRef<ExperimentMsg>, state: &mut State, id: TrialId) {
        match state.leaderboard.call(|reply| LeaderboardMsg::Record(id, reply), None).await {
            Ok(ractor::rpc::CallResult::Success(Some(t))) => self.start_attempt(myself, state, t).await,
            other => {
                let error = format!("cannot start: the leaderboard has no record of it ({other:?})");
                if let Err(e) = Box::pin(self.on_loss(myself, state, id, Loss::Crash, error)).await {
                    tracing::error!(trial = %id, "cannot handle a failed start: {e}");
                }
            }
        }
    }

    async fn start_attempt(&self, myself: &ActorRef<ExperimentMsg>, state: &mut State, record: Trial) {
        let id = record.id;
        let Some(t) = state.live.get_mut(&id) else { return };
        let attempt = t.attempts;
        t.attempts = t.attempts.saturating_add(1);
        let (restarts, seed) = (t.restarts, t.seed);
        let store = state.settings.checkpoints.clone();
        let resume = match record.exploit.clone() {
            // A first attempt starts from nothing: no file to look at.
            None if attempt == 0 => Ok(None),
            // Blocking file work (listing, PBT's copy of the donor's checkpoint) off the tokio workers.
            exploit => tokio::task::spawn_blocking(move || match exploit {
                Some(e) => store.copy_from(id, e.donor, e.epoch, seed).map(Some).map_err(|err| {
                    format!("cannot copy the checkpoint of epoch {} of trial {} to exploit it: {err}", e.epoch, e.donor)
                }),
                None => Ok(store.latest(id)),
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string())),
        };
        let resume = match resume {
            Ok(r) => r,
            Err(error) => {
                if let Err(e) = Box::pin(self.on_loss(myself, state, id, Loss::Crash, error)).await {
                    tracing::error!(trial = %id, "cannot handle a failed start: {e}");
                }
                return;
            }
        };
        let slots = state.slots.as_ref().map(SlotPool::queue);
        let args = trial::Args {
            id,
            attempt,
            restarts,
            seed,
            params: record.params,
            resume,
            settings: state.settings.clone(),
            context: state.settings.context.clone(),
            leaderboard: state.leaderboard.clone(),
            supervisor: myself.clone(),
            slots,
        };
        match Actor::spawn_linked(None, TrialActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                state.by_actor.insert(actor.get_id(), id);
                if let Some(t) = state.live.get_mut(&id) {
                    t.actor = Some(actor);
                }
            }
            // A trial that cannot even start counts as a crash.
            Err(e) => {
                let error = format!("cannot start: {e}");
                if let Err(e) = Box::pin(self.on_loss(myself, state, id, Loss::Crash, error)).await {
                    tracing::error!(trial = %id, "cannot handle a failed start: {e}");
                }
            }
        }
    }

    /// Performs the restart policy's decision ([`restart::after_loss`]) on a
    /// lost attempt: a crash, or a preemption (its worker was lost; it
    /// continues at once elsewhere, not counted as a restart).
    async fn on_loss(
        &self,
        myself: &ActorRef<ExperimentMsg>,
        state: &mut State,
        id: TrialId,
        loss: Loss,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(t) = state.live.get_mut(&id) else { return Ok(()) };
        t.actor = None;
        let losses = match loss {
            _ if state.interrupted => 0,
            Loss::Crash => {
                t.restarts += 1;
                t.restarts
            }
            Loss::Preemption => {
                t.preemptions += 1;
                t.preemptions
            }
        };
        let restarts = t.restarts;
        match restart::after_loss(loss, losses, state.interrupted, &state.settings.fault) {
            AfterLoss::Pause => {
                let error = (loss == Loss::Crash).then_some(why);
                self.end_trial(state, id, TrialStatus::Paused, error);
                self.fill(myself, state).await
            }
            AfterLoss::Fail(gave_up) => {
                tracing::warn!(trial = %id, "failed ({gave_up}): {why}");
                self.end_trial(state, id, TrialStatus::Failed, Some(format!("{why} ({gave_up})")));
                self.fill(myself, state).await
            }
            AfterLoss::Restart(delay) if loss == Loss::Crash => {
                tracing::info!(trial = %id, restarts, ?delay, "restarting from the last checkpoint: {why}");
                state.leaderboard.cast(LeaderboardMsg::Restarting { id, restarts, error: why })?;
                myself.send_after(delay, move || ExperimentMsg::Respawn(id));
                Ok(())
            }
            AfterLoss::Restart(_) => {
                state.leaderboard.cast(LeaderboardMsg::Preempted { id, reason: why })?;
                self.spawn_attempt(myself, state, id).await;
                Ok(())
            }
        }
    }

    fn end_trial(&self, state: &mut State, id: TrialId, status: TrialStatus, error: Option<String>) {
        let Some(t) = state.live.remove(&id) else { return };
        if let Some(actor) = t.actor {
            state.by_actor.remove(&actor.get_id());
        }
        // The leaderboard journals the end, then trims the trial's checkpoints.
        let _ = state.leaderboard.cast(LeaderboardMsg::Ended { id, status, error });
    }

    async fn finish(&self, myself: &ActorRef<ExperimentMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        let Some(done) = state.done.take() else { return Ok(()) };
        let standings = match state.leaderboard.call(LeaderboardMsg::Snapshot, None).await {
            Ok(ractor::rpc::CallResult::Success(s)) => s,
            other => {
                let _ = done.send(Err(SweepError::Aborted(format!("no leaderboard snapshot: {other:?}"))));
                myself.stop(None);
                return Ok(());
            }
        };
        let s = state.settings.clone();
        // Off the tokio workers (files); awaited: the stop comes after them.
        let mut written = {
            let (s, standings) = (s.clone(), standings.clone());
            tokio::task::spawn_blocking(move || match &s.run_dir {
                Some(dir) => write_outputs(dir, &s, &standings).map_err(SweepError::RunDir),
                None => Ok(()),
            })
            .await
            .unwrap_or_else(|e| Err(SweepError::Aborted(e.to_string())))
        };
        if let Some(journal) = s.journal.clone().filter(|_| written.is_ok()) {
            // The stop is the last event; wait until everything is on disk.
            // Not when the outputs failed: a resume then writes them again
            // (a run journalled as finished is never resumed).
            let finished = !state.interrupted;
            let synced = tokio::task::spawn_blocking(move || journal.append_durable(Event::SweepStopped { finished }))
                .await
                .map_err(|e| SweepError::Aborted(e.to_string()))
                .and_then(|r| r.map_err(SweepError::Journal));
            written = written.and(synced);
        }
        let _ = done.send(written.map(|()| (standings, state.interrupted, state.spent.clone())));
        state.leaderboard.stop(None);
        myself.stop(None);
        Ok(())
    }

    fn abort(
        &self,
        myself: &ActorRef<ExperimentMsg>,
        state: &mut State,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(done) = state.done.take() {
            let _ = done.send(Err(SweepError::Aborted(why)));
        }
        for t in state.live.values() {
            if let Some(actor) = &t.actor {
                actor.stop(None);
            }
        }
        myself.stop(None);
        Ok(())
    }
}

fn write_outputs(dir: &crate::run_dir::RunDir, s: &Settings, standings: &[Trial]) -> std::io::Result<()> {
    let naming = |path: std::path::PathBuf| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("writing {}: {e}", path.display()))
    };
    dir.write_leaderboard(standings, &s.metric, s.mode).map_err(naming(dir.root().join("leaderboard.csv")))?;
    if let Some(best) = rank(standings, s.mode).first() {
        let checkpoint = s.checkpoints.best(best.id);
        let model = s.trainable.describe(&best.params);
        dir.write_best(best, checkpoint.as_ref(), model.as_ref(), &s.metric).map_err(naming(dir.best_dir()))?;
    }
    Ok(())
}
