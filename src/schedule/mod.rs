//! Early-stopping policies: given a trial's report, continue or stop it.
//!
//! Schedulers are pure and seeded-free: they see scores (bigger is better,
//! already mapped from the experiment's `mode`) and keep serde state, so the
//! leaderboard actor can ask them and a resumed run can restore them.

mod asha;
mod ranks;

use serde::{Deserialize, Serialize};

use crate::config::{SchedulerConfig, SchedulerKind};
use crate::trial::TrialId;

pub use asha::Asha;
pub use ranks::Ranks;

/// A scheduler's answer to one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Train another epoch.
    Continue,
    /// Stop now: the trial is not promising.
    Prune,
    /// Stop now: the trial has used its whole budget.
    Complete,
}

/// An early-stopping policy with its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Scheduler {
    /// Never stops a trial early.
    Fifo {
        /// The epoch budget.
        max_epochs: u32,
    },
    /// Asynchronous successive halving.
    Asha(Asha),
}

impl Scheduler {
    /// Builds the scheduler a config asks for.
    pub fn new(config: &SchedulerConfig, max_epochs: u32) -> Self {
        match config.kind {
            SchedulerKind::Fifo => Scheduler::Fifo { max_epochs },
            SchedulerKind::Asha => Scheduler::Asha(Asha::new(config.grace_epochs, config.reduction_factor, max_epochs)),
        }
    }

    /// Decides on a trial's report of `score` after `epoch`.
    pub fn on_report(&mut self, trial: TrialId, epoch: u32, score: f64) -> Decision {
        match self {
            Scheduler::Fifo { max_epochs } => {
                if epoch >= *max_epochs {
                    Decision::Complete
                } else {
                    Decision::Continue
                }
            }
            Scheduler::Asha(a) => a.on_report(trial, epoch, score),
        }
    }
}
