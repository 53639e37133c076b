//! Trials and their reports: the nouns every part of the engine shares.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::space::Params;

/// A trial's id: assigned in proposal order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrialId(pub u32);

impl fmt::Display for TrialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a trial is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// Proposed, not started.
    Pending,
    /// Training (or waiting to be restarted after a crash).
    Running,
    /// Stopped for now, may continue (PBT, preemption).
    Paused,
    /// Trained to the end.
    Completed,
    /// Stopped early by the scheduler.
    Pruned,
    /// Crashed more often than `max_restarts` allows.
    Failed,
    /// Its loss became NaN or infinite.
    Diverged,
}

impl TrialStatus {
    /// Whether the trial has ended for good.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Pruned | Self::Failed | Self::Diverged)
    }

    /// The lowercase name used in files and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Pruned => "pruned",
            Self::Failed => "failed",
            Self::Diverged => "diverged",
        }
    }
}

impl fmt::Display for TrialStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One epoch's metrics from one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The trial.
    pub trial: TrialId,
    /// Which attempt (0 = first run, 1 = after the first restart, ...).
    pub attempt: u32,
    /// The epoch just finished, from 1.
    pub epoch: u32,
    /// Metric name → value, in the order reported.
    pub metrics: Vec<(String, f64)>,
}

impl Report {
    /// The value of a named metric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// What the leaderboard knows about one trial: its row in `gauntlet status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standing {
    /// The trial.
    pub id: TrialId,
    /// Its status.
    pub status: TrialStatus,
    /// Its hyperparameters.
    pub params: Params,
    /// The last epoch it reported.
    pub epochs: u32,
    /// The best value of the experiment's metric so far.
    pub best_metric: Option<f64>,
    /// The epoch of that best value.
    pub best_epoch: Option<u32>,
    /// The last reported metrics.
    pub last_metrics: BTreeMap<String, f64>,
    /// How often it was restarted after a crash.
    pub restarts: u32,
    /// The last crash or failure text.
    pub error: Option<String>,
}

impl Standing {
    /// A new pending trial.
    pub fn pending(id: TrialId, params: Params) -> Self {
        Standing {
            id,
            status: TrialStatus::Pending,
            params,
            epochs: 0,
            best_metric: None,
            best_epoch: None,
            last_metrics: BTreeMap::new(),
            restarts: 0,
            error: None,
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AttemptEnd {
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
    /// Its worker was lost or left: restarted elsewhere from the last
    /// checkpoint without counting as a restart (preemption is not failure).
    Preempted(String),
}

/// The text of a panic payload.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Why a report means divergence: the experiment metric or any `*loss`
/// metric is NaN or infinite. Shared by live trials and journal replay.
pub fn divergence(metrics: &[(String, f64)], metric: &str, epoch: u32) -> Option<String> {
    metrics
        .iter()
        .find(|(n, v)| !v.is_finite() && (n == metric || n.ends_with("loss")))
        .map(|(n, v)| format!("{n} is {v} at epoch {epoch}"))
}

/// Derives a trial's seed from the experiment seed and the trial id.
pub fn trial_seed(experiment_seed: u64, id: TrialId) -> u64 {
    splitmix64(experiment_seed ^ splitmix64(u64::from(id.0) + 1))
}

/// SplitMix64: a small, well-mixed hash for deriving seeds.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
