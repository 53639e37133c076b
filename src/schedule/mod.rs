//! Early-stopping policies: given a trial's report, continue or stop it.
//!
//! Schedulers are pure and seeded-free: they see scores (bigger is better,
//! already mapped from the experiment's `mode`) and keep serde state, so the
//! leaderboard actor can ask them and a resumed run can restore them.

mod asha;
mod hyperband;
mod median;
mod pbt;
mod ranks;

use serde::{Deserialize, Serialize};

use crate::space::{Mode, Params, SearchSpace};
use crate::trial::{Trial, TrialId, TrialStatus};

pub use asha::Asha;
pub use hyperband::{Hyperband, HyperbandConfig};
pub use median::{Median, MedianConfig};
pub use pbt::{perturb, Pbt, PbtConfig};
pub use ranks::Ranks;

/// A scheduler's answer to one report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Train another epoch.
    Continue,
    /// Stop now: the trial is not promising.
    Prune,
    /// Stop now: the trial has used its whole budget.
    Complete,
    /// Stop this attempt and wait (checkpointed) until the scheduler
    /// promotes the trial (promotion-based ASHA).
    Pause,
    /// Stop this attempt; the trial continues from another trial's
    /// checkpoint with other parameters (PBT's exploit and explore).
    Exploit(Exploit),
}

impl Decision {
    /// The lowercase name used in files.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Continue => "continue",
            Decision::Prune => "prune",
            Decision::Complete => "complete",
            Decision::Pause => "pause",
            Decision::Exploit(_) => "exploit",
        }
    }
}

/// A trial continues from a better trial's checkpoint: the donor's weights
/// and optimizer state at `epoch`, with `params` (the donor's, perturbed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exploit {
    /// The trial copied from.
    pub donor: TrialId,
    /// The donor's checkpoint epoch: the trial's epoch counter continues from it.
    pub epoch: u32,
    /// The trial's parameters from now on.
    pub params: Params,
}

/// `[scheduler]`: one table per kind, tagged by `kind`, each with its own
/// keys (another kind's key is an error naming it) and its own checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SchedulerConfig {
    /// Every trial trains to the end.
    Fifo(FifoConfig),
    /// Asynchronous successive halving.
    Asha(AshaConfig),
    /// Median stopping.
    Median(MedianConfig),
    /// Asynchronous Hyperband: several ASHA brackets.
    Hyperband(HyperbandConfig),
    /// Population Based Training.
    Pbt(PbtConfig),
}

/// What a scheduler sees of the experiment: every trial as it stands (the
/// report being decided on already recorded), read-only.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Every trial, by id.
    pub trials: &'a [Trial],
    /// The experiment metric.
    pub metric: &'a str,
    /// Its direction.
    pub mode: Mode,
    /// The search space (PBT resamples from it).
    pub space: &'a SearchSpace,
}

/// A section's keys read with the path of the one at fault kept.
pub type KeyedResult<T> = Result<T, serde_path_to_error::Error<serde_json::Error>>;

/// Reads `keys` as a `T`, keeping the path of a key at fault.
pub fn keyed<T: serde::de::DeserializeOwned>(keys: serde_json::Value) -> KeyedResult<T> {
    serde_path_to_error::deserialize(keys)
}

impl SchedulerConfig {
    /// The kinds, as `kind` names them.
    pub const KINDS: &'static [&'static str] = &["fifo", "asha", "median", "hyperband", "pbt"];

    /// The kind `kind` with `keys` (the table but `kind`), read key by key
    /// so that an error names its key; `None` for an unknown kind.
    pub fn from_keys(kind: &str, keys: serde_json::Value) -> Option<KeyedResult<Self>> {
        Some(match kind {
            "fifo" => keyed(keys).map(SchedulerConfig::Fifo),
            "asha" => keyed(keys).map(SchedulerConfig::Asha),
            "median" => keyed(keys).map(SchedulerConfig::Median),
            "hyperband" => keyed(keys).map(SchedulerConfig::Hyperband),
            "pbt" => keyed(keys).map(SchedulerConfig::Pbt),
            _ => return None,
        })
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig::Fifo(FifoConfig {})
    }
}

/// `[scheduler] kind = "fifo"`: no keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FifoConfig {}

/// `[scheduler] kind = "asha"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AshaConfig {
    /// Epochs before the first rung.
    #[serde(default = "one")]
    pub grace_epochs: u32,
    /// Keep the top 1/reduction_factor at each rung.
    #[serde(default = "three")]
    pub reduction_factor: u32,
    /// Pause trials at rungs and promote the best, rather than stop the
    /// others (Li et al.'s promotion-based ASHA).
    #[serde(default)]
    pub promotion: bool,
}

impl Default for AshaConfig {
    fn default() -> Self {
        AshaConfig { grace_epochs: 1, reduction_factor: 3, promotion: false }
    }
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl SchedulerConfig {
    /// The kind's name, as written in configs.
    pub fn kind(&self) -> &'static str {
        match self {
            SchedulerConfig::Fifo(_) => "fifo",
            SchedulerConfig::Asha(_) => "asha",
            SchedulerConfig::Median(_) => "median",
            SchedulerConfig::Hyperband(_) => "hyperband",
            SchedulerConfig::Pbt(_) => "pbt",
        }
    }

    /// Checks the kind's keys for trials of `max_epochs` epochs: the key at
    /// fault (`scheduler.grace_epochs`) and what is expected.
    pub fn check(&self, max_epochs: u32) -> Result<(), (&'static str, String)> {
        let grace = |g: u32| {
            if g == 0 || g > max_epochs {
                Err(("scheduler.grace_epochs", format!("expected 1 to train.max_epochs ({max_epochs}), got {g}")))
            } else {
                Ok(())
            }
        };
        let eta = |r: u32| {
            if r < 2 {
                Err(("scheduler.reduction_factor", format!("expected at least 2, got {r}")))
            } else {
                Ok(())
            }
        };
        match self {
            SchedulerConfig::Fifo(_) => Ok(()),
            SchedulerConfig::Asha(a) => grace(a.grace_epochs).and(eta(a.reduction_factor)),
            SchedulerConfig::Hyperband(h) => {
                grace(h.grace_epochs)?;
                eta(h.reduction_factor)?;
                match h.brackets {
                    Some(0) => Err(("scheduler.brackets", "expected at least 1".into())),
                    _ => Ok(()),
                }
            }
            SchedulerConfig::Median(m) if m.warmup_epochs >= max_epochs => Err((
                "scheduler.warmup_epochs",
                format!("expected fewer than train.max_epochs ({max_epochs}), got {}", m.warmup_epochs),
            )),
            SchedulerConfig::Median(_) => Ok(()),
            SchedulerConfig::Pbt(p) => p.check(max_epochs),
        }
    }
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
    /// Median stopping.
    Median(Median),
    /// Asynchronous Hyperband.
    Hyperband(Hyperband),
    /// Population Based Training.
    Pbt(Pbt),
}

impl Scheduler {
    /// A paused trial to continue now rather than start a new one
    /// (promotion-based ASHA), among those `view` shows waiting.
    pub fn promotable(&self, view: &View, final_rungs: bool) -> Option<TrialId> {
        match self {
            Scheduler::Asha(a) => {
                // Waiting, and its attempt over (`paused`): never two attempts of one trial at once.
                a.promotable(final_rungs, |id| {
                    view.trials.get(id.0 as usize).is_some_and(|t| t.waiting && t.status == TrialStatus::Paused)
                })
            }
            _ => None,
        }
    }

    /// Records that a paused trial was promoted.
    pub fn promoted(&mut self, trial: TrialId) {
        if let Scheduler::Asha(a) = self {
            a.promoted(trial);
        }
    }

    /// Builds the scheduler a config asks for; `seed` is the experiment's
    /// (PBT's draws), `space` the search space (PBT's default `mutate`: every
    /// searched dimension).
    pub fn new(config: &SchedulerConfig, max_epochs: u32, seed: u64, space: &SearchSpace) -> Self {
        match config {
            SchedulerConfig::Pbt(p) => {
                let mutate = p.mutate.clone().unwrap_or_else(|| space.searched().map(str::to_owned).collect());
                Scheduler::Pbt(Pbt::new(p, mutate, max_epochs, seed))
            }
            SchedulerConfig::Fifo(_) => Scheduler::Fifo { max_epochs },
            SchedulerConfig::Asha(a) => {
                let asha = Asha::new(a.grace_epochs, a.reduction_factor, max_epochs);
                Scheduler::Asha(if a.promotion { asha.promoting() } else { asha })
            }
            SchedulerConfig::Median(m) => Scheduler::Median(Median::new(m, max_epochs)),
            SchedulerConfig::Hyperband(h) => Scheduler::Hyperband(Hyperband::new(h, max_epochs)),
        }
    }

    /// Decides on a trial's report of `score` after `epoch`, seeing every
    /// trial through `view`.
    pub fn on_report(&mut self, view: &View, trial: TrialId, epoch: u32, score: f64) -> Decision {
        match self {
            Scheduler::Fifo { max_epochs } => {
                if epoch >= *max_epochs {
                    Decision::Complete
                } else {
                    Decision::Continue
                }
            }
            Scheduler::Asha(a) => a.on_report(trial, epoch, score),
            Scheduler::Median(m) => m.on_report(trial, epoch, score),
            Scheduler::Hyperband(h) => h.on_report(trial, epoch, score),
            Scheduler::Pbt(p) => p.on_report(view, trial, epoch, score),
        }
    }
}
