//! Leaderboard: every report lands here. It keeps each trial's standing,
//! asks the scheduler policy for a decision, answers the trial's slot thread,
//! appends the report to `results.jsonl`, and keeps `status.json` fresh.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::Settings;
use crate::config::Params;
use crate::run_dir::ResultsLog;
use crate::schedule::{Decision, Scheduler};
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
    Report(Report, Sender<Decision>),
    Proposed { id: TrialId, params: Params },
    Started { id: TrialId, attempt: u32 },
    Restarting { id: TrialId, restarts: u32, error: String },
    Ended { id: TrialId, status: TrialStatus, error: Option<String> },
    Flush,
    Snapshot(RpcReplyPort<Vec<Standing>>),
}

/// A slot thread's line to the leaderboard: a report goes out, the decision
/// comes back on a channel the thread blocks on (no tokio on slot threads).
pub(super) struct LeaderboardSink {
    leaderboard: ActorRef<LeaderboardMsg>,
}

impl LeaderboardSink {
    pub(super) fn new(leaderboard: ActorRef<LeaderboardMsg>) -> Self {
        LeaderboardSink { leaderboard }
    }
}

impl ReportSink for LeaderboardSink {
    fn report(&mut self, report: Report) -> Option<Decision> {
        // One channel per report, its only sender inside the message: if the
        // leaderboard dies with the message unanswered, `recv` errors instead
        // of blocking this thread for ever. crossbeam's receive spins briefly
        // before parking, and replies come back within microseconds.
        let (reply, decision) = bounded(1);
        self.leaderboard.cast(LeaderboardMsg::Report(report, reply)).ok()?;
        decision.recv().ok()
    }
}

pub(super) struct Leaderboard;

pub(super) struct Args {
    pub(super) settings: Arc<Settings>,
    pub(super) scheduler: Scheduler,
}

pub(super) struct State {
    settings: Arc<Settings>,
    scheduler: Scheduler,
    standings: Vec<Standing>,
    results: Option<ResultsLog>,
    dirty: bool,
}

impl State {
    fn standing(&mut self, id: TrialId) -> Option<&mut Standing> {
        self.standings.get_mut(id.0 as usize)
    }

    fn emit(&self, event: SweepEvent) {
        if let Some(observer) = &self.settings.observer {
            observer(&event);
        }
    }

    fn on_report(&mut self, report: Report) -> Decision {
        let value = report.metric(&self.settings.metric);
        let mode = self.settings.mode;
        let Some(s) = self.standings.get_mut(report.trial.0 as usize) else {
            return Decision::Prune; // never proposed: cannot happen, stop it
        };
        s.epochs = report.epoch;
        s.last_metrics = report.metrics.iter().cloned().collect();
        let decision = match value {
            Some(v) if v.is_finite() => {
                if s.best_metric.is_none_or(|b| mode.score(v) > mode.score(b)) {
                    s.best_metric = Some(v);
                    s.best_epoch = Some(report.epoch);
                }
                self.scheduler.on_report(report.trial, report.epoch, mode.score(v))
            }
            // Not finite: the trial's context ends it as diverged.
            Some(_) => Decision::Continue,
            None => {
                tracing::warn!(trial = %report.trial, metric = %self.settings.metric, "report lacks the experiment metric");
                if report.epoch >= self.settings.max_epochs {
                    Decision::Complete
                } else {
                    Decision::Continue
                }
            }
        };
        if let Some(log) = &mut self.results {
            if let Err(e) = log.append(&report, decision) {
                tracing::error!("cannot append to results.jsonl: {e}");
            }
        }
        self.emit(SweepEvent::Reported { id: report.trial, epoch: report.epoch, value, decision });
        decision
    }

    fn flush(&mut self) {
        if let Some(log) = &mut self.results {
            if let Err(e) = log.flush() {
                tracing::error!("cannot flush results.jsonl: {e}");
            }
        }
        if self.dirty {
            if let Some(dir) = &self.settings.run_dir {
                if let Err(e) = dir.write_status(
                    &self.settings.name,
                    &self.settings.metric,
                    self.settings.mode,
                    false,
                    &self.standings,
                ) {
                    tracing::error!("cannot write status.json: {e}");
                }
            }
            self.dirty = false;
        }
    }
}

impl Actor for Leaderboard {
    type Msg = LeaderboardMsg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, myself: ActorRef<LeaderboardMsg>, args: Args) -> Result<State, ActorProcessingErr> {
        let results = match &args.settings.run_dir {
            Some(dir) => Some(dir.results_log()?),
            None => None,
        };
        if results.is_some() {
            myself.send_interval(Duration::from_millis(500), || LeaderboardMsg::Flush);
        }
        Ok(State { settings: args.settings, scheduler: args.scheduler, standings: Vec::new(), results, dirty: true })
    }

    async fn handle(
        &self,
        _myself: ActorRef<LeaderboardMsg>,
        msg: LeaderboardMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaderboardMsg::Report(report, reply) => {
                let decision = state.on_report(report);
                let _ = reply.try_send(decision); // the thread may be gone; nothing to do then
            }
            LeaderboardMsg::Proposed { id, params } => {
                debug_assert_eq!(id.0 as usize, state.standings.len(), "ids are dense");
                state.standings.push(Standing::pending(id, params));
                state.dirty = true;
                state.emit(SweepEvent::Proposed { id });
            }
            LeaderboardMsg::Started { id, attempt } => {
                if let Some(s) = state.standing(id) {
                    s.status = TrialStatus::Running;
                }
                state.dirty = true;
                state.emit(SweepEvent::Started { id, attempt });
            }
            LeaderboardMsg::Restarting { id, restarts, error } => {
                if let Some(s) = state.standing(id) {
                    s.restarts = restarts;
                    s.error = Some(error.clone());
                }
                state.dirty = true;
                state.emit(SweepEvent::Restarting { id, restarts, error });
            }
            LeaderboardMsg::Ended { id, status, error } => {
                let mut best = None;
                if let Some(s) = state.standing(id) {
                    s.status = status;
                    if error.is_some() {
                        s.error = error;
                    }
                    best = s.best_metric;
                }
                state.dirty = true;
                state.emit(SweepEvent::Ended { id, status, best });
            }
            LeaderboardMsg::Flush => state.flush(),
            LeaderboardMsg::Snapshot(reply) => {
                state.flush();
                let _ = reply.send(state.standings.clone());
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<LeaderboardMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        state.flush();
        Ok(())
    }
}
