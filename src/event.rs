//! The events of an experiment: every state change, as the journal stores
//! them and as [`crate::state::ExperimentState::apply`] folds them. Pure
//! data; the journal (`crate::journal`) frames and writes them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::schedule::Decision;
use crate::space::Params;
use crate::trial::{Stamp, TrialId, TrialStatus};

/// One journal entry: when, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The state change.
    pub event: Event,
}

/// Every state change of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The run was created from this config (the text as given, re-validated on resume).
    ExperimentCreated {
        /// The config file, absolute.
        config_path: PathBuf,
        /// YAML rather than TOML.
        yaml: bool,
        /// The config text.
        config_text: String,
    },
    /// The searcher proposed a trial.
    TrialProposed {
        /// The trial.
        id: TrialId,
        /// Its parameters.
        params: Params,
    },
    /// An attempt of a trial started on a slot.
    TrialStarted {
        /// The trial.
        id: TrialId,
        /// 0 for the first attempt.
        attempt: u32,
        /// The checkpoint epoch it resumes from, if any.
        from_epoch: Option<u32>,
        /// The worker process it runs on (absent for in-process slots).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
    /// The scheduler promoted a paused trial: its next attempt continues
    /// from its checkpoint.
    TrialResumed {
        /// The trial.
        id: TrialId,
    },
    /// A trial's worker was lost or left; the trial goes back to pending and
    /// continues from its last checkpoint elsewhere, not counted as a restart.
    TrialPreempted {
        /// The trial.
        id: TrialId,
        /// What happened to its worker.
        reason: String,
    },
    /// A trial crashed and will be restarted after a backoff.
    TrialRestarted {
        /// The trial.
        id: TrialId,
        /// Restarts so far, this one included.
        restarts: u32,
        /// The crash text.
        error: String,
    },
    /// A trial reported an epoch; the decision was taken on it.
    Report {
        /// The trial.
        id: TrialId,
        /// The attempt that reported.
        attempt: u32,
        /// The epoch.
        epoch: u32,
        /// Metric name → value.
        metrics: Vec<(String, f64)>,
        /// The scheduler's decision.
        decision: Decision,
        /// When the coordinator received it (absent in older journals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<Stamp>,
    },
    /// A checkpoint was written (renamed into place).
    CheckpointWritten {
        /// The trial.
        id: TrialId,
        /// Its epoch.
        epoch: u32,
    },
    /// A trial ended: final, or paused when the sweep stopped.
    TrialEnded {
        /// The trial.
        id: TrialId,
        /// Its status.
        status: TrialStatus,
        /// The error text, if any.
        error: Option<String>,
    },
    /// The sweep stopped: its budget spent (`finished`) or interrupted.
    SweepStopped {
        /// Whether the budget was spent.
        finished: bool,
    },
    /// A resumed run started: a new session (the time budget counts each
    /// session from its first event to its last).
    SweepResumed,
    /// The experiment's time budget is spent: from here on every report
    /// completes its trial and nothing new is proposed.
    BudgetSpent {
        /// Why, in words.
        reason: String,
    },
}
