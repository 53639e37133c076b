//! Median stopping (Golovin et al., "Google Vizier", 2017): a trial is
//! stopped at epoch `e` when its best score so far is worse than the median
//! of the other trials' running averages at `e` (the mean of each one's
//! scores over epochs 1 to `e`). Nothing is stopped before `warmup_epochs`
//! have passed, nor before `startup_trials` other trials have reached `e`:
//! Optuna's `MedianPruner` defaults (5 and 0).
//!
//! "Other trials" are those that reported epoch `e` before this report,
//! running or finished: what has arrived, in arrival order, so replaying
//! the journal decides the same. Each trial is judged once per epoch; an
//! epoch trained again after a restart is not judged again.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::ranks::Ranks;
use super::Decision;
use crate::trial::TrialId;

/// `[scheduler] kind = "median"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MedianConfig {
    /// Other trials that must have reached an epoch before any trial is stopped there.
    #[serde(default = "default_startup_trials")]
    pub startup_trials: u32,
    /// Epochs during which no trial is stopped.
    #[serde(default)]
    pub warmup_epochs: u32,
}

fn default_startup_trials() -> u32 {
    5
}

impl Default for MedianConfig {
    fn default() -> Self {
        MedianConfig { startup_trials: default_startup_trials(), warmup_epochs: 0 }
    }
}

/// Each trial's curve so far, and every epoch's running averages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Median {
    startup_trials: u32,
    warmup_epochs: u32,
    max_epochs: u32,
    curves: HashMap<TrialId, Curve>,
    /// `averages[e - 1]`: the running averages of the trials that reached epoch `e`.
    averages: Vec<Ranks>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Curve {
    last_epoch: u32,
    sum: f64,
    count: u32,
    best: f64,
}

impl Median {
    /// The rule with its settings, for `max_epochs`-epoch trials.
    pub fn new(config: &MedianConfig, max_epochs: u32) -> Self {
        Median {
            startup_trials: config.startup_trials,
            warmup_epochs: config.warmup_epochs,
            max_epochs,
            curves: HashMap::new(),
            averages: Vec::new(),
        }
    }

    /// Decides on a report of `score` (bigger is better) after `epoch`.
    pub fn on_report(&mut self, trial: TrialId, epoch: u32, score: f64) -> Decision {
        if epoch == 0 || epoch > self.max_epochs {
            // Past the budget: refused before it is reported, but a journal
            // of an older version may hold one; never an index.
            return if epoch == 0 { Decision::Continue } else { Decision::Complete };
        }
        let curve = self.curves.entry(trial).or_insert(Curve { best: f64::NEG_INFINITY, ..Default::default() });
        if epoch <= curve.last_epoch {
            // Trained again after a restart: judged already.
            return if epoch >= self.max_epochs { Decision::Complete } else { Decision::Continue };
        }
        curve.last_epoch = epoch;
        curve.sum += score;
        curve.count += 1;
        curve.best = curve.best.max(score);
        let (best, average) = (curve.best, curve.sum / f64::from(curve.count));
        let at = epoch as usize - 1;
        if self.averages.len() <= at {
            self.averages.resize_with(at + 1, Ranks::default);
        }
        let others = &mut self.averages[at];
        let judged = epoch > self.warmup_epochs && others.len() >= self.startup_trials.max(1) as usize;
        let stop = judged && others.median().is_some_and(|m| best < m);
        others.insert(average);
        if epoch >= self.max_epochs {
            Decision::Complete
        } else if stop {
            Decision::Prune
        } else {
            Decision::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn median(startup: u32, warmup: u32) -> Median {
        Median::new(&MedianConfig { startup_trials: startup, warmup_epochs: warmup }, 10)
    }

    #[test]
    fn a_trial_below_the_median_of_running_averages_is_stopped() {
        let mut m = median(3, 0);
        // Three trials with constant scores 0.2, 0.5, 0.8 over epochs 1 and 2.
        for epoch in 1..=2 {
            for (t, s) in [(0, 0.2), (1, 0.5), (2, 0.8)] {
                assert_eq!(m.on_report(TrialId(t), epoch, s), Decision::Continue, "fewer than 3 others: no judgement");
            }
        }
        // A fourth: epoch 1 at 0.4 is below the median 0.5 of the others.
        assert_eq!(m.on_report(TrialId(3), 1, 0.4), Decision::Prune);
        // A fifth at 0.6: above the median of {0.2, 0.5, 0.8, 0.4} = 0.45.
        assert_eq!(m.on_report(TrialId(4), 1, 0.6), Decision::Continue);
        // Its epoch 2 at 0.1: its best (0.6) still beats the median of the
        // running averages at 2 ({0.2, 0.5, 0.8} = 0.5).
        assert_eq!(m.on_report(TrialId(4), 2, 0.1), Decision::Continue);
    }

    #[test]
    fn running_averages_not_last_values_are_compared() {
        let mut m = median(1, 0);
        // Trial 0 rises 0.0 -> 0.9: its running average at 2 is 0.45.
        m.on_report(TrialId(0), 1, 0.0);
        m.on_report(TrialId(0), 2, 0.9);
        // Trial 1: best 0.5 at epoch 2 beats 0.45 (it would lose to 0.9).
        assert_eq!(m.on_report(TrialId(1), 1, 0.5), Decision::Continue);
        assert_eq!(m.on_report(TrialId(1), 2, 0.5), Decision::Continue);
        // Trial 2: best 0.4 at epoch 2 does not; the median at 2 is now of {0.45, 0.5}.
        assert_eq!(m.on_report(TrialId(2), 1, 0.4), Decision::Continue, "0.4 beats the median 0.25 of {{0.0, 0.5}}");
        assert_eq!(m.on_report(TrialId(2), 2, 0.3), Decision::Prune, "0.4 < 0.475");
    }

    #[test]
    fn warmup_reruns_and_the_budget() {
        let mut m = median(1, 2);
        m.on_report(TrialId(0), 1, 0.9);
        m.on_report(TrialId(0), 2, 0.9);
        m.on_report(TrialId(0), 3, 0.9);
        assert_eq!(m.on_report(TrialId(1), 1, 0.1), Decision::Continue, "warming up");
        assert_eq!(m.on_report(TrialId(1), 2, 0.1), Decision::Continue, "warming up");
        assert_eq!(m.on_report(TrialId(1), 3, 0.1), Decision::Prune);
        assert_eq!(m.on_report(TrialId(1), 3, 0.1), Decision::Continue, "a re-run epoch is not judged again");
        assert_eq!(m.on_report(TrialId(0), 10, 0.9), Decision::Complete);
        // An epoch far past the budget neither grows the table nor aborts.
        assert_eq!(m.on_report(TrialId(2), 4_000_000_000, 0.9), Decision::Complete);
        assert_eq!(m.on_report(TrialId(2), 0, 0.9), Decision::Continue);
        assert!(m.averages.len() <= 10);
        let back: Median = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(
            back.averages.iter().map(Ranks::len).collect::<Vec<_>>(),
            m.averages.iter().map(Ranks::len).collect::<Vec<_>>()
        );
    }
}
