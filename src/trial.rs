//! Trials and their reports: the nouns every part of the engine shares.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::schedule::{Decision, Exploit};
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

/// When a report arrived: wall time, and the experiment's running time (all
/// its sessions so far; the time between sessions not counted).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Milliseconds the experiment had run.
    pub elapsed_ms: u64,
}

impl Stamp {
    /// The time as RFC 3339 (UTC, milliseconds).
    pub fn rfc3339(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.unix_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    }
}

/// One trial, as the experiment's state knows it: the single record that
/// the live leaderboard, journal replay, `gauntlet status`, the final table
/// and the searchers and schedulers all read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The trial.
    pub id: TrialId,
    /// Its status.
    pub status: TrialStatus,
    /// Its hyperparameters (after PBT's last exploit, when there was one).
    pub params: Params,
    /// The last epoch it reported (after an exploit: the donor's epoch
    /// until its next report).
    pub epochs: u32,
    /// The best value of the experiment's metric so far (since PBT's last
    /// exploit, when there was one: what its current weights stem from).
    pub best_metric: Option<f64>,
    /// The epoch of that best value.
    pub best_epoch: Option<u32>,
    /// The last reported metrics.
    pub last_metrics: BTreeMap<String, f64>,
    /// Attempts started so far (the next attempt's number).
    #[serde(default)]
    pub attempts: u32,
    /// How often it was restarted after a crash.
    pub restarts: u32,
    /// The last crash or failure text.
    pub error: Option<String>,
    /// The decision on its last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<Decision>,
    /// Its newest checkpoint epoch that the journal knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<u32>,
    /// Why its last report means divergence, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diverged: Option<String>,
    /// An exploit decided and not yet started from: its next attempt
    /// starts from a copy of the donor's checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exploit: Option<Exploit>,
    /// Paused by the scheduler until it promotes the trial (promotion-based ASHA).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
    /// Every exploit it went through, oldest first (PBT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<Lineage>,
    /// When its last report arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report: Option<Stamp>,
}

/// One PBT exploit of a trial: where it came from and what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// The trial's epoch when it was exploited.
    pub at_epoch: u32,
    /// The trial whose checkpoint it continued from.
    pub donor: TrialId,
    /// That checkpoint's epoch.
    pub donor_epoch: u32,
    /// Its parameters before.
    pub old_params: Params,
    /// Its parameters after.
    pub new_params: Params,
    /// Its best value of the metric before (and the epoch of it): the
    /// history it left, whose checkpoints went. Its `best_metric` starts
    /// again from its next report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_best: Option<(f64, u32)>,
}

impl Trial {
    /// A new pending trial.
    pub fn pending(id: TrialId, params: Params) -> Self {
        Trial {
            id,
            status: TrialStatus::Pending,
            params,
            epochs: 0,
            best_metric: None,
            best_epoch: None,
            last_metrics: BTreeMap::new(),
            attempts: 0,
            restarts: 0,
            error: None,
            last_decision: None,
            last_checkpoint: None,
            diverged: None,
            exploit: None,
            waiting: false,
            lineage: Vec::new(),
            last_report: None,
        }
    }

    /// Its last reported value of `metric`, as a score (bigger is better).
    pub fn last_score(&self, metric: &str, mode: crate::space::Mode) -> Option<f64> {
        self.last_metrics.get(metric).copied().filter(|v| v.is_finite()).map(|v| mode.score(v))
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
    /// PBT exploited it: it continues from a copy of the donor's checkpoint
    /// with new parameters (not counted as a restart).
    Exploited,
    /// The scheduler paused it (checkpointed) until it promotes it.
    Paused,
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
