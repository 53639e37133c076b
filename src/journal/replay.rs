//! Replay: the state of a run rebuilt from its journal. Trials, statuses,
//! the leaderboard and the scheduler's rungs come from feeding the events
//! through the same pure [`Board`] the live leaderboard uses; the searcher's
//! position is the number of proposals.

use std::path::{Path, PathBuf};

use super::{Event, Record};
use crate::board::Board;
use crate::config::{Config, ConfigError, ConfigFormat, Params};
use crate::schedule::{Decision, Scheduler};
use crate::trial::{divergence, Report, TrialId, TrialStatus};

/// What replay knows about one trial beyond its standing.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialRecord {
    /// The trial.
    pub id: TrialId,
    /// Its parameters.
    pub params: Params,
    /// Attempts started so far.
    pub attempts: u32,
    /// Restarts after crashes so far.
    pub restarts: u32,
    /// The decision on its last report.
    pub last_decision: Option<Decision>,
    /// Its last checkpoint epoch the journal knows of.
    pub last_checkpoint: Option<u32>,
    /// Why its last report means divergence, if it does.
    pub diverged: Option<String>,
}

/// A run as its journal tells it.
#[derive(Debug, Clone)]
pub struct RunState {
    /// The config file the run was created from.
    pub config_path: PathBuf,
    /// How that file is written.
    pub format: ConfigFormat,
    /// Its text.
    pub config_text: String,
    /// The config, validated again.
    pub config: Config,
    /// Standings and scheduler.
    pub board: Board,
    /// Per-trial bookkeeping, by id.
    pub trials: Vec<TrialRecord>,
    /// Whether the sweep spent its budget and stopped.
    pub finished: bool,
    /// Events replayed.
    pub events: usize,
    /// Wall time the run has spent so far: each session (its creation, each
    /// resume) from its first event to its last.
    pub spent: std::time::Duration,
    /// Trials that replay ended although the journal holds no end for them
    /// (the run died between the decision and the end): (trial, status, error).
    pub ended_by_replay: Vec<(TrialId, TrialStatus, Option<String>)>,
}

impl RunState {
    /// Trials that must still run: proposed or started, with no final status.
    pub fn unfinished(&self) -> Vec<&TrialRecord> {
        self.trials.iter().filter(|t| self.board.standing(t.id).is_some_and(|s| !s.status.is_final())).collect()
    }
}

/// Why a journal's events cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The first event is not the experiment's creation.
    #[error(
        "{}: the journal holds no experiment: the run died before recording its config; start it again with `gauntlet run`",
        path.display()
    )]
    NoConfig {
        /// The journal.
        path: PathBuf,
    },
    /// The config stored in the journal no longer validates.
    #[error("the config stored in the journal: {0}")]
    Config(#[from] ConfigError),
    /// Events contradict each other.
    #[error("{}: event {index}: {message}", path.display())]
    Inconsistent {
        /// The journal.
        path: PathBuf,
        /// The event's position.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

/// The wall time of a run's sessions: each from its first event (the
/// creation, or a resume) to the last event before the next session.
fn sessions_time(records: &[Record]) -> std::time::Duration {
    let mut total = 0u64;
    let mut session: Option<(u64, u64)> = None;
    for r in records {
        let starts = matches!(r.event, Event::ExperimentCreated { .. } | Event::SweepResumed);
        match &mut session {
            Some((first, last)) if !starts => *last = r.at_ms.max(*first),
            _ => {
                if let Some((first, last)) = session {
                    total += last - first;
                }
                session = Some((r.at_ms, r.at_ms));
            }
        }
    }
    if let Some((first, last)) = session {
        total += last - first;
    }
    std::time::Duration::from_millis(total)
}

/// Rebuilds a run's state from its journal's records (in file order).
pub fn replay(records: Vec<Record>, path: &Path) -> Result<RunState, ReplayError> {
    let events = records.len();
    let spent = sessions_time(&records);
    let mut records = records.into_iter().map(|r| r.event);
    let Some(Event::ExperimentCreated { config_path, yaml, config_text }) = records.next() else {
        return Err(ReplayError::NoConfig { path: path.to_owned() });
    };
    // The event's `yaml` flag predates JSON configs, which their extension tells.
    let format = if yaml { ConfigFormat::Yaml } else { ConfigFormat::of(&config_path) };
    let config = Config::parse(&config_text, format, &config_path)?.with_paths_from(&config_path);
    let scheduler = Scheduler::new(&config.scheduler, config.max_epochs);
    let e = &config.experiment;
    let mut state = RunState {
        config_path,
        format,
        config_text,
        board: Board::new(e.metric.clone(), e.mode, config.max_epochs, scheduler).with_rules(e.stop_rules()),
        config,
        trials: Vec::new(),
        finished: false,
        events,
        spent,
        ended_by_replay: Vec::new(),
    };
    for (index, event) in records.enumerate().map(|(i, e)| (i + 1, e)) {
        let bad = |message: String| ReplayError::Inconsistent { path: path.to_owned(), index, message };
        let trial = |state: &mut RunState, id: TrialId| -> Result<usize, ReplayError> {
            let i = id.0 as usize;
            if i < state.trials.len() {
                Ok(i)
            } else {
                Err(bad(format!("trial {id} was never proposed")))
            }
        };
        match event {
            Event::ExperimentCreated { .. } => return Err(bad("a second experiment-created event".into())),
            Event::TrialProposed { id, params } => {
                state.board.propose(id, params.clone()).map_err(bad)?;
                state.trials.push(TrialRecord {
                    id,
                    params,
                    attempts: 0,
                    restarts: 0,
                    last_decision: None,
                    last_checkpoint: None,
                    diverged: None,
                });
            }
            Event::TrialStarted { id, attempt, .. } => {
                let i = trial(&mut state, id)?;
                state.trials[i].attempts = state.trials[i].attempts.max(attempt.saturating_add(1));
                state.board.start(id);
            }
            // Back to pending until its next start; nothing to count.
            Event::TrialPreempted { id, .. } => {
                trial(&mut state, id)?;
            }
            Event::TrialRestarted { id, restarts, error } => {
                let i = trial(&mut state, id)?;
                state.trials[i].restarts = restarts;
                state.board.restart(id, restarts, error);
            }
            Event::Report { id, attempt, epoch, metrics, decision } => {
                let i = trial(&mut state, id)?;
                state.trials[i].diverged = divergence(&metrics, &state.config.experiment.metric, epoch);
                state.board.report(Report { trial: id, attempt, epoch, metrics });
                state.trials[i].last_decision = Some(decision);
            }
            Event::CheckpointWritten { id, epoch } => {
                let i = trial(&mut state, id)?;
                state.trials[i].last_checkpoint = Some(epoch);
            }
            Event::TrialEnded { id, status, error } => {
                trial(&mut state, id)?;
                state.board.end(id, status, error);
            }
            Event::SweepStopped { finished } => state.finished = finished,
            Event::SweepResumed => {}
            Event::BudgetSpent { reason } => state.board.stop(reason),
        }
    }
    // A trial whose last report ended it (divergence first, as the trial's
    // own context decides, then the scheduler's stop), killed before its end
    // was written, ended then.
    for t in &state.trials {
        let status = state.board.standing(t.id).map(|s| s.status);
        if status.is_none_or(TrialStatus::is_final) {
            continue;
        }
        let end = match (&t.diverged, t.last_decision) {
            (Some(why), _) => Some((TrialStatus::Diverged, Some(why.clone()))),
            (None, Some(Decision::Prune)) => Some((TrialStatus::Pruned, None)),
            (None, Some(Decision::Complete)) => Some((TrialStatus::Completed, None)),
            _ => None,
        };
        if let Some((status, error)) = end {
            state.board.end(t.id, status, error.clone());
            state.ended_by_replay.push((t.id, status, error));
        }
    }
    Ok(state)
}
