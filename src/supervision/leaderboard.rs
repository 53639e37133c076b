//! Leaderboard: every report lands here. It keeps each trial's standing and
//! asks the scheduler for a decision (both through the pure [`Board`]),
//! appends the report to `results.jsonl` and the journal, and answers the
//! trial's slot thread once the report is durable.

use std::sync::Arc;

use crossbeam_channel::{bounded, Sender};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Settings;
use crate::board::Board;
use crate::checkpoint::Checkpoint;
use crate::config::Params;
use crate::journal::{Event, Journal};
use crate::run_dir::ResultsLog;
use crate::schedule::Decision;
use crate::trainable::ReportSink;
use crate::trial::{Report, Standing, TrialId, TrialStatus};

/// What happened in a sweep, as the leaderboard saw it.
#[derive(Debug, Clone, PartialEq)]
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
    Proposed {
        id: TrialId,
        params: Params,
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
    Snapshot(RpcReplyPort<Vec<Standing>>),
    /// The time budget is spent: every report from now on completes its trial.
    Stop(String),
}

impl ractor::Message for LeaderboardMsg {}

/// Where a decision goes once its report is durable.
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
}

impl LeaderboardSink {
    pub(super) fn new(leaderboard: ActorRef<LeaderboardMsg>, journal: Option<Journal>) -> Self {
        LeaderboardSink { leaderboard, journal }
    }
}

impl ReportSink for LeaderboardSink {
    fn output(&mut self, id: TrialId, text: &str) {
        for line in text.lines() {
            tracing::info!(trial = %id, "output: {line}");
        }
    }

    fn checkpoint_written(&mut self, id: TrialId, checkpoint: &Checkpoint) {
        let epoch = checkpoint.epoch;
        if let Some(journal) = &self.journal {
            if let Err(e) = journal.append(Event::CheckpointWritten { id, epoch }) {
                tracing::error!(trial = %id, "cannot journal checkpoint of epoch {epoch}: {e}");
            }
        }
    }

    fn report(&mut self, report: Report) -> Option<Decision> {
        // One channel per report, its only sender inside the message: if the
        // leaderboard dies with the message unanswered, `recv` errors instead
        // of blocking this thread for ever. crossbeam's receive spins briefly
        // before parking, and replies come back within microseconds.
        let (reply, decision) = bounded(1);
        self.leaderboard.cast(LeaderboardMsg::Report(report, DecisionReply::Thread(reply))).ok()?;
        decision.recv().ok()
    }
}

pub(super) struct Leaderboard;

pub(super) struct Args {
    pub(super) settings: Arc<Settings>,
    pub(super) board: Board,
    /// Told when a report makes a stop rule fire.
    pub(super) supervisor: ActorRef<super::experiment::ExperimentMsg>,
}

pub(super) struct State {
    settings: Arc<Settings>,
    board: Board,
    results: Option<ResultsLog>,
    supervisor: ActorRef<super::experiment::ExperimentMsg>,
}

impl State {
    fn emit(&self, event: SweepEvent) {
        if let Some(observer) = &self.settings.observer {
            observer(&event);
        }
    }

    fn journal(&self, event: Event) -> Result<(), ActorProcessingErr> {
        if let Some(journal) = &self.settings.journal {
            journal.append(event)?;
        }
        Ok(())
    }

    /// Decides on a report; the decision reaches the trial only once the
    /// report is durable in the journal.
    fn on_report(&mut self, report: Report, reply: DecisionReply) -> Result<(), ActorProcessingErr> {
        let value = report.metric(self.board.metric());
        let was_stopped = self.board.stopped().is_some();
        let decision = self.board.report(report.clone());
        if let Some(reason) = self.board.stopped().filter(|_| !was_stopped) {
            let _ = self.supervisor.cast(super::experiment::ExperimentMsg::Spent(reason.to_owned()));
        }
        if value.is_none() {
            tracing::warn!(trial = %report.trial, metric = %self.board.metric(), "report lacks the experiment metric");
        }
        if let Some(log) = &mut self.results {
            if let Err(e) = log.append(&report, decision) {
                tracing::error!("cannot append to results.jsonl: {e}");
            }
        }
        self.emit(SweepEvent::Reported { id: report.trial, epoch: report.epoch, value, decision });
        match &self.settings.journal {
            Some(journal) => {
                let Report { trial, attempt, epoch, metrics } = report;
                let event = Event::Report { id: trial, attempt, epoch, metrics, decision };
                match reply {
                    DecisionReply::Thread(tx) => journal.append_then_reply(event, tx, decision)?,
                    remote => journal.append_then(event, move || remote.send(decision))?,
                }
            }
            None => reply.send(decision),
        }
        Ok(())
    }
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
        Ok(State { settings: args.settings, board: args.board, results, supervisor: args.supervisor })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LeaderboardMsg>,
        msg: LeaderboardMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaderboardMsg::Report(report, reply) => state.on_report(report, reply)?,
            LeaderboardMsg::Proposed { id, params } => {
                state.journal(Event::TrialProposed { id, params: params.clone() })?;
                state.board.propose(id, params)?;
                state.emit(SweepEvent::Proposed { id });
            }
            LeaderboardMsg::Started { id, attempt, from_epoch, worker } => {
                let on = worker.as_deref().map(|w| format!(" on {w}")).unwrap_or_default();
                match from_epoch {
                    Some(epoch) => tracing::info!(trial = %id, attempt, "resuming after epoch {epoch}{on}"),
                    None => tracing::info!(trial = %id, attempt, "started{on}"),
                }
                state.journal(Event::TrialStarted { id, attempt, from_epoch, worker })?;
                state.board.start(id);
                state.emit(SweepEvent::Started { id, attempt });
            }
            LeaderboardMsg::Preempted { id, reason } => {
                tracing::warn!(trial = %id, "preempted, continues elsewhere from its last checkpoint: {reason}");
                state.journal(Event::TrialPreempted { id, reason: reason.clone() })?;
                state.emit(SweepEvent::Preempted { id, reason });
            }
            LeaderboardMsg::Restarting { id, restarts, error } => {
                state.journal(Event::TrialRestarted { id, restarts, error: error.clone() })?;
                state.board.restart(id, restarts, error.clone());
                state.emit(SweepEvent::Restarting { id, restarts, error });
            }
            LeaderboardMsg::Ended { id, status, error } => {
                // Pruned, failed and diverged trials keep only their best
                // checkpoint, once their end is durable (a resume must not
                // find a trimmed trial it thinks is still running).
                let store = state.settings.checkpoints.clone();
                let trim = move || {
                    if matches!(status, TrialStatus::Pruned | TrialStatus::Failed | TrialStatus::Diverged) {
                        if let Err(e) = store.keep_only_best(id) {
                            tracing::warn!(trial = %id, "cannot trim checkpoints: {e}");
                        }
                    }
                };
                let event = Event::TrialEnded { id, status, error: error.clone() };
                match &state.settings.journal {
                    Some(journal) => journal.append_then(event, trim)?,
                    None => trim(),
                }
                let best = state.board.end(id, status, error);
                let epochs = state.board.standing(id).map_or(0, |s| s.epochs);
                tracing::info!(trial = %id, epochs, best = ?best, "{status}");
                state.emit(SweepEvent::Ended { id, status, best });
            }
            LeaderboardMsg::Snapshot(reply) => {
                let _ = reply.send(state.board.standings().to_vec());
            }
            LeaderboardMsg::Stop(reason) => {
                state.journal(Event::BudgetSpent { reason: reason.clone() })?;
                state.board.stop(reason);
            }
        }
        Ok(())
    }
}
