//! Leaderboard: the live owner of the experiment's [`ExperimentState`].
//! Every state change arrives here as a message, becomes an event, is
//! folded by the same `apply` that journal replay uses, journalled, and its
//! effects performed. Proposals come from here (the searcher is part of the
//! state), and so do decisions.
//!
//! A decision goes back as soon as its report's event is queued for the
//! journal, not once it is durable: the trial acts on it while the group
//! commit's fdatasync runs (on a VM's disk, one can stall every trial for
//! 100 to 500 ms). What must not get ahead of the journal is what a resume
//! reads from disk: a checkpoint is put in place only once the reports
//! before it are durable ([`crate::trainable::ReportSink::durable`], and the
//! trial actor for checkpoints shipped by workers), checkpoints are trimmed
//! only once a trial's end is durable, and the two decisions that lead to
//! files (a PBT exploit copies a donor's checkpoint; a pause checkpoints)
//! still wait for their report to be durable. If the coordinator dies, a
//! trial continues from its last checkpoint, and the journal holds every
//! report up to it: the epochs after it are trained and reported again.

use std::sync::Arc;

use crossbeam_channel::{bounded, Sender};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::handover::{self, Handover};
use super::Settings;
use crate::checkpoint::Checkpoint;
use crate::journal::{Event, Journal};
use crate::run_dir::ResultsLog;
use crate::schedule::Decision;
use crate::state::{Effect, ExperimentState};
use crate::trainable::ReportSink;
use crate::trial::{Report, Trial, TrialId, TrialStatus};

/// What happened in a sweep, as the leaderboard saw it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SweepEvent {
    /// A trial was proposed.
    Proposed {
        /// The trial.
        id: TrialId,
    },
    /// A trial attempt started on a slot.
    Started {
        /// The trial.
        id: TrialId,
        /// 0 for the first attempt.
        attempt: u32,
    },
    /// A trial reported an epoch.
    Reported {
        /// The trial.
        id: TrialId,
        /// The epoch.
        epoch: u32,
        /// The experiment metric, if reported.
        value: Option<f64>,
        /// The scheduler's answer.
        decision: Decision,
        /// When it arrived.
        at: crate::trial::Stamp,
    },
    /// A trial crashed and will be restarted.
    Restarting {
        /// The trial.
        id: TrialId,
        /// Restarts so far, this one included.
        restarts: u32,
        /// The crash text.
        error: String,
    },
    /// A trial's worker was lost; it continues elsewhere (not a restart).
    Preempted {
        /// The trial.
        id: TrialId,
        /// What happened to the worker.
        reason: String,
    },
    /// A trial ended for good (or paused, when the sweep was interrupted).
    Ended {
        /// The trial.
        id: TrialId,
        /// Its final status.
        status: TrialStatus,
        /// Its best metric.
        best: Option<f64>,
    },
}

pub(super) enum LeaderboardMsg {
    Report(Report, DecisionReply),
    /// What a free slot runs next, journalled; `None` when nothing is to run now.
    Next(RpcReplyPort<Option<NextTrial>>),
    /// Nothing more will run: trials still waiting for a promotion end.
    EndWaiting(RpcReplyPort<()>),
    /// A trial's record, to start its next attempt from.
    Record(TrialId, RpcReplyPort<Option<Trial>>),
    Checkpoint {
        id: TrialId,
        epoch: u32,
    },
    Started {
        id: TrialId,
        attempt: u32,
        from_epoch: Option<u32>,
        worker: Option<String>,
    },
    Restarting {
        id: TrialId,
        restarts: u32,
        error: String,
    },
    Preempted {
        id: TrialId,
        reason: String,
    },
    Ended {
        id: TrialId,
        status: TrialStatus,
        error: Option<String>,
    },
    Snapshot(RpcReplyPort<Vec<Trial>>),
    /// The time budget is spent: every report from now on completes its trial.
    Stop(String),
}

impl ractor::Message for LeaderboardMsg {}

/// What a free slot runs next, with the trial's record to start it from
/// (one round trip to the leaderboard, not two).
#[derive(Debug)]
pub(super) enum NextTrial {
    /// A new trial, just proposed.
    New(Trial),
    /// A paused trial the scheduler promoted (its record has its attempt and restart counts).
    Resume(Trial),
}

/// Where a decision goes (at once, or once its report is durable: [`waits_for_durability`]).
pub(super) enum DecisionReply {
    /// A slot thread in this process, blocked on the channel.
    Thread(Sender<Decision>),
    /// Anything else (a worker across the network), called on the journal thread.
    Remote(Box<dyn FnOnce(Decision) + Send>),
}

impl DecisionReply {
    fn send(self, decision: Decision) {
        match self {
            // The thread may be gone; nothing to do then.
            DecisionReply::Thread(tx) => drop(tx.try_send(decision)),
            DecisionReply::Remote(f) => f(decision),
        }
    }
}

/// A slot thread's line to the leaderboard: a report goes out, the decision
/// comes back on a channel the thread blocks on (no tokio on slot threads).
pub(super) struct LeaderboardSink {
    leaderboard: ActorRef<LeaderboardMsg>,
    journal: Option<Journal>,
    handover: Handover,
}

impl LeaderboardSink {
    pub(super) fn new(leaderboard: ActorRef<LeaderboardMsg>, journal: Option<Journal>, handover: Handover) -> Self {
        LeaderboardSink { leaderboard, journal, handover }
    }
}

impl ReportSink for LeaderboardSink {
    fn output(&mut self, id: TrialId, text: &str) {
        for line in text.lines() {
            tracing::info!(trial = %id, "output: {line}");
        }
    }

    fn durable(&mut self) -> Result<(), String> {
        // The decision for this trial's last report came back after its
        // event was queued; a sync now covers it.
        self.journal.as_ref().map_or(Ok(()), |j| j.sync().map_err(|e| e.to_string()))
    }

    fn checkpoint_written(&mut self, id: TrialId, checkpoint: &Checkpoint) {
        let _ = self.leaderboard.cast(LeaderboardMsg::Checkpoint { id, epoch: checkpoint.epoch });
        self.handover.sent();
    }

    fn report(&mut self, report: Report) -> Option<Decision> {
        // One channel per report, its only sender inside the message: if the
        // leaderboard dies with the message unanswered, `recv` errors instead
        // of blocking this thread for ever. Replies come back within
        // microseconds, so the wait spins before it parks.
        let (reply, decision) = bounded(1);
        self.leaderboard.cast(LeaderboardMsg::Report(report, DecisionReply::Thread(reply))).ok()?;
        self.handover.sent();
        handover::recv(&decision).ok()
    }
}

pub(super) struct Leaderboard;

pub(super) struct Args {
    pub(super) settings: Arc<Settings>,
    pub(super) state: ExperimentState,
    /// Told when a stop rule fires.
    pub(super) supervisor: ActorRef<super::experiment::ExperimentMsg>,
}

pub(super) struct State {
    settings: Arc<Settings>,
    state: ExperimentState,
    results: Option<ResultsLog>,
    supervisor: ActorRef<super::experiment::ExperimentMsg>,
}

impl State {
    fn emit(&self, event: SweepEvent) {
        if let Some(observer) = &self.settings.observer {
            observer(&event);
        }
    }

    /// Folds an event, journals it and performs its effects (trimming
    /// checkpoints only once the event is durable).
    fn commit(&mut self, event: Event) -> Result<(), ActorProcessingErr> {
        let effects = match self.state.apply(&event) {
            Ok(effects) => effects,
            // Not journalled either, so that replay never meets it: the sweep goes on.
            Err(e) => {
                tracing::error!("dropping an event the experiment's state refuses ({e}): {event:?}");
                return Ok(());
            }
        };
        if let Event::CheckpointWritten { id, .. } | Event::Report { id, .. } = &event {
            self.note_known(*id);
        }
        let trim = self.perform(&effects);
        match &self.settings.journal {
            Some(journal) => journal.append_then(event, trim)?,
            None => trim(),
        }
        Ok(())
    }

    /// Performs effects at once, but for trims, returned to run once the
    /// event behind them is durable (a resume must not find a trimmed
    /// trial it thinks is still running).
    fn perform(&self, effects: &[Effect]) -> impl FnOnce() + Send + 'static {
        let store = &self.settings.checkpoints;
        let mut trims = Vec::new();
        for effect in effects {
            match effect {
                Effect::Stop(reason) => {
                    let _ = self.supervisor.cast(super::experiment::ExperimentMsg::Spent(reason.clone()));
                }
                Effect::Trim(id) => trims.push(*id),
                Effect::Pin { donor, epoch } => store.pin(*donor, *epoch),
                Effect::Unpin { donor, epoch } => store.unpin(*donor, *epoch),
            }
        }
        let store = store.clone();
        move || {
            for id in trims {
                if let Err(e) = store.keep_only_best(id) {
                    tracing::warn!(trial = %id, "cannot trim checkpoints: {e}");
                }
            }
        }
    }

    /// Decides on a report. An exploit or a pause reaches the trial only once
    /// the report is durable in the journal; any other decision at once, with
    /// the report queued for the next commit (see [`waits_for_durability`]).
    /// Tells the store which of a trial's checkpoints PBT may pick now (one
    /// written, or the copy an exploit makes): retention keeps it until a
    /// newer one is known, although newer files are on disk first.
    fn note_known(&self, id: TrialId) {
        if let Some(epoch) = self.state.trial(id).and_then(|t| t.last_checkpoint) {
            self.settings.checkpoints.known(id, epoch);
        }
    }

    fn on_report(&mut self, report: Report, reply: DecisionReply) -> Result<(), ActorProcessingErr> {
        let value = report.metric(self.state.metric());
        if value.is_none() {
            tracing::warn!(trial = %report.trial, metric = %self.state.metric(), "report lacks the experiment metric");
        }
        let stamp = self.settings.stamp();
        let (event, effects) = self.state.report_at(report, Some(stamp));
        let Event::Report { id, attempt, epoch, ref metrics, ref decision, .. } = event else {
            return Err("a report folded into another event".into());
        };
        let decision = decision.clone();
        if let Some(log) = &mut self.results {
            let report = Report { trial: id, attempt, epoch, metrics: metrics.clone() };
            if let Err(e) = log.append(&report, &decision, &stamp) {
                tracing::error!("cannot append to results.jsonl: {e}");
            }
        }
        if let Decision::Exploit(e) = &decision {
            tracing::info!(trial = %id, donor = %e.donor, "exploits the donor's checkpoint of epoch {}", e.epoch);
            self.note_known(id);
        }
        // A report stops the sweep or pins a donor; it ends no trial, so it trims nothing.
        debug_assert!(!effects.iter().any(|e| matches!(e, Effect::Trim(_))));
        let _no_trims = self.perform(&effects);
        self.emit(SweepEvent::Reported { id, epoch, value, decision: decision.clone(), at: stamp });
        match &self.settings.journal {
            Some(journal) if waits_for_durability(&decision) => match reply {
                DecisionReply::Thread(tx) => journal.append_then_reply(event, tx, decision)?,
                remote => journal.append_then(event, move || remote.send(decision))?,
            },
            Some(journal) => {
                journal.append(event)?;
                reply.send(decision);
            }
            None => reply.send(decision),
        }
        Ok(())
    }
}

/// Whether a decision reaches its trial only once its report is durable:
/// those that lead to files a resume would read (a PBT exploit copies the
/// donor's checkpoint into the trial; a paused trial checkpoints). The
/// others (continue, prune, complete) go at once: acting on one ahead of
/// the journal writes nothing a resume reads (see the module's doc).
fn waits_for_durability(decision: &Decision) -> bool {
    matches!(decision, Decision::Exploit(_) | Decision::Pause)
}

impl Actor for Leaderboard {
    type Msg = LeaderboardMsg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, _myself: ActorRef<LeaderboardMsg>, args: Args) -> Result<State, ActorProcessingErr> {
        let results = match &args.settings.run_dir {
            Some(dir) => Some(dir.results_log()?),
            None => None,
        };
        Ok(State { settings: args.settings, state: args.state, results, supervisor: args.supervisor })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LeaderboardMsg>,
        msg: LeaderboardMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaderboardMsg::Report(report, reply) => state.on_report(report, reply)?,
            LeaderboardMsg::Next(reply) => {
                let next = match state.state.next_trial() {
                    Some(event @ Event::TrialProposed { .. }) => {
                        let Event::TrialProposed { id, .. } = event else { unreachable!() };
                        state.commit(event)?;
                        state.emit(SweepEvent::Proposed { id });
                        state.state.trial(id).cloned().map(NextTrial::New)
                    }
                    Some(event @ Event::TrialResumed { .. }) => {
                        let Event::TrialResumed { id } = event else { unreachable!() };
                        state.commit(event)?;
                        tracing::info!(trial = %id, "promoted: continues from its checkpoint");
                        state.state.trial(id).cloned().map(NextTrial::Resume)
                    }
                    Some(other) => return Err(format!("the next trial came as {other:?}").into()),
                    None => None,
                };
                let _ = reply.send(next);
            }
            LeaderboardMsg::EndWaiting(reply) => {
                for event in state.state.end_waiting() {
                    let Event::TrialEnded { id, status, .. } = event else { continue };
                    state.commit(event)?;
                    let best = state.state.trial(id).and_then(|t| t.best_metric);
                    tracing::info!(trial = %id, "{status}: never promoted");
                    state.emit(SweepEvent::Ended { id, status, best });
                }
                let _ = reply.send(());
            }
            LeaderboardMsg::Record(id, reply) => {
                let _ = reply.send(state.state.trial(id).cloned());
            }
            LeaderboardMsg::Checkpoint { id, epoch } => state.commit(Event::CheckpointWritten { id, epoch })?,
            LeaderboardMsg::Started { id, attempt, from_epoch, worker } => {
                let on = worker.as_deref().map(|w| format!(" on {w}")).unwrap_or_default();
                match from_epoch {
                    Some(epoch) => tracing::info!(trial = %id, attempt, "resuming after epoch {epoch}{on}"),
                    None => tracing::info!(trial = %id, attempt, "started{on}"),
                }
                state.commit(Event::TrialStarted { id, attempt, from_epoch, worker })?;
                state.emit(SweepEvent::Started { id, attempt });
            }
            LeaderboardMsg::Preempted { id, reason } => {
                tracing::warn!(trial = %id, "preempted, continues elsewhere from its last checkpoint: {reason}");
                state.commit(Event::TrialPreempted { id, reason: reason.clone() })?;
                state.emit(SweepEvent::Preempted { id, reason });
            }
            LeaderboardMsg::Restarting { id, restarts, error } => {
                state.commit(Event::TrialRestarted { id, restarts, error: error.clone() })?;
                state.emit(SweepEvent::Restarting { id, restarts, error });
            }
            LeaderboardMsg::Ended { id, status, error } => {
                state.commit(Event::TrialEnded { id, status, error })?;
                let t = state.state.trial(id);
                let (epochs, best) = (t.map_or(0, |t| t.epochs), t.and_then(|t| t.best_metric));
                tracing::info!(trial = %id, epochs, best = ?best, "{status}");
                state.emit(SweepEvent::Ended { id, status, best });
            }
            LeaderboardMsg::Snapshot(reply) => {
                let _ = reply.send(state.state.trials().to_vec());
            }
            LeaderboardMsg::Stop(reason) => state.commit(Event::BudgetSpent { reason })?,
        }
        Ok(())
    }
}
