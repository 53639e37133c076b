//! Replay: the state of a run rebuilt from its journal, by folding its
//! events through the same [`ExperimentState::apply`] the live leaderboard
//! calls. Nothing is proposed or decided again.

use std::path::{Path, PathBuf};

use super::{Event, Record};
use crate::config::{Config, ConfigError, ConfigFormat};
use crate::state::ExperimentState;
use crate::trial::Trial;

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
    /// The experiment's state after the last event.
    pub state: ExperimentState,
    /// Events replayed.
    pub events: usize,
    /// Wall time the run has spent so far: each session (its creation, each
    /// resume) from its first event to its last.
    pub spent: std::time::Duration,
    /// Ends that replay added although the journal holds none (the run died
    /// between a trial's last decision and its end): to be journalled.
    pub ended_by_replay: Vec<Event>,
}

impl RunState {
    /// Every trial, by id.
    pub fn trials(&self) -> &[Trial] {
        self.state.trials()
    }

    /// Trials that must still run: proposed or started, with no final status.
    pub fn unfinished(&self) -> Vec<&Trial> {
        self.state.unfinished().collect()
    }

    /// Whether the sweep stopped with its budget spent.
    pub fn finished(&self) -> bool {
        self.state.finished()
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
    let mut state = config.initial_state();
    for (index, event) in records.enumerate().map(|(i, e)| (i + 1, e)) {
        state.apply(&event).map_err(|message| ReplayError::Inconsistent { path: path.to_owned(), index, message })?;
    }
    let ended_by_replay = state.end_decided();
    Ok(RunState { config_path, format, config_text, config, state, events, spent, ended_by_replay })
}
