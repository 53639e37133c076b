//! Asynchronous Hyperband (Li et al., 2018; asynchronous as in Li et al.,
//! 2020): several ASHA brackets whose first rungs lie at `grace * eta^b`
//! epochs (bracket 0 stops trials earliest; the last one trains every trial
//! to the end), so that a sweep hedges between aggressive and patient
//! stopping.
//!
//! Trials go to brackets by Hyperband's own weights: the bracket with `s`
//! halvings (its rungs below the budget) gets `ceil((S + 1) / (s + 1) *
//! eta^s)` trials in each round of the original algorithm, `S` being the
//! first bracket's halvings (one more than `s_max` when the budget is not
//! `grace * eta^k`: 10 epochs, eta 3 halve at 1, 3 and 9). The assignment is a smooth weighted
//! round-robin over trial ids, so trial `n`'s bracket is a function of `n`
//! alone: no random draw, nothing to store, and a resumed run assigns the
//! same.

use serde::{Deserialize, Serialize};

use super::asha::Asha;
use super::Decision;
use crate::trial::TrialId;

/// `[scheduler] kind = "hyperband"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HyperbandConfig {
    /// The most aggressive bracket's first rung.
    #[serde(default = "one")]
    pub grace_epochs: u32,
    /// Each rung keeps the top 1/reduction_factor.
    #[serde(default = "three")]
    pub reduction_factor: u32,
    /// How many brackets (default: every one from `grace_epochs` up to the budget).
    #[serde(default)]
    pub brackets: Option<u32>,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl Default for HyperbandConfig {
    fn default() -> Self {
        HyperbandConfig { grace_epochs: 1, reduction_factor: 3, brackets: None }
    }
}

/// The brackets and the assignment pattern.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hyperband {
    brackets: Vec<Asha>,
    /// Bracket of trial `n` is `pattern[n % pattern.len()]`.
    pattern: Vec<u8>,
}

impl Hyperband {
    /// The brackets a config asks for, for `max_epochs`-epoch trials.
    pub fn new(config: &HyperbandConfig, max_epochs: u32) -> Self {
        let eta = config.reduction_factor.max(2);
        let grace = config.grace_epochs.max(1);
        // Bracket b < s_max starts at grace * eta^b, where s_max =
        // floor(log_eta(max_epochs / grace)); the last bracket has no rung
        // and trains every trial to the end, whether or not the budget is
        // grace times a power of eta (Li et al.: s_max + 1 brackets).
        let milestones = Asha::milestones(grace, eta, max_epochs);
        let s_max = milestones.len().saturating_sub(1);
        let firsts: Vec<u32> = milestones[..s_max].iter().copied().chain([max_epochs]).collect();
        let count = config.brackets.map_or(firsts.len(), |b| (b as usize).clamp(1, firsts.len()));
        let brackets: Vec<Asha> = firsts[..count].iter().map(|&first| Asha::new(first, eta, max_epochs)).collect();
        // Halvings of bracket b: how many rungs it has below the budget.
        let s_max = brackets.first().map_or(0, |a| a.rung_epochs().len()) as u32;
        let weights: Vec<u64> = brackets
            .iter()
            .map(|a| {
                let s = a.rung_epochs().len() as u32;
                let n = f64::from(s_max + 1) / f64::from(s + 1) * f64::from(eta).powi(s as i32);
                n.ceil() as u64
            })
            .collect();
        Hyperband { brackets, pattern: smooth_round_robin(&weights) }
    }

    /// The bracket a trial belongs to.
    pub fn bracket_of(&self, trial: TrialId) -> usize {
        usize::from(self.pattern[trial.0 as usize % self.pattern.len()])
    }

    /// Each bracket's rung epochs.
    pub fn rungs(&self) -> Vec<Vec<u32>> {
        self.brackets.iter().map(Asha::rung_epochs).collect()
    }

    /// Decides on a report, in the trial's bracket.
    pub fn on_report(&mut self, trial: TrialId, epoch: u32, score: f64) -> Decision {
        let b = self.bracket_of(trial);
        self.brackets[b].on_report(trial, epoch, score)
    }
}

/// One round of smooth weighted round-robin (nginx's): each weight's index
/// appears as often as its weight, spread out as evenly as it can be.
fn smooth_round_robin(weights: &[u64]) -> Vec<u8> {
    // Bound the round: scale weights down so that it stays short.
    let total: u64 = weights.iter().sum::<u64>().max(1);
    let scale = (total / 4096).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| (w / scale).max(1) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            let (best, _) =
                current.iter().enumerate().max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i))).unwrap_or((0, &0));
            current[best] -= total;
            best as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_and_weights_of_the_classic_setting() {
        // 9 epochs, eta 3: brackets with first rungs 1, 3 and 9 (the last trains
        // every trial to the end); weights ceil(3/3 * 9) = 9, ceil(3/2 * 3) = 5, ceil(3/1 * 1) = 3.
        let h = Hyperband::new(&HyperbandConfig::default(), 9);
        assert_eq!(h.rungs(), vec![vec![1, 3], vec![3], vec![]]);
        assert_eq!(h.pattern.len(), 17);
        let count = |b: u8| h.pattern.iter().filter(|&&x| x == b).count();
        assert_eq!((count(0), count(1), count(2)), (9, 5, 3));
        // Spread out: no bracket twice in a row except the heaviest.
        assert!(h.pattern.windows(2).all(|w| w[0] != w[1] || w[0] == 0), "{:?}", h.pattern);
        // A trial's bracket depends on its id alone.
        assert_eq!(h.bracket_of(TrialId(3)), h.bracket_of(TrialId(20)));
    }

    #[test]
    fn the_last_bracket_trains_to_the_end_whatever_the_budget() {
        // 10 epochs: s_max = floor(log3 10) = 2, so three brackets, the last
        // with no rung (a bracket starting at 9 of 10 would still prune).
        let h = Hyperband::new(&HyperbandConfig::default(), 10);
        assert_eq!(h.rungs(), vec![vec![1, 3, 9], vec![3, 9], vec![]]);
        for (max, want) in [
            (1, vec![vec![]]),
            (2, vec![vec![]]), // floor(log3 2) = 0: no halving fits
            (3, vec![vec![1], vec![]]),
            (26, vec![vec![1, 3, 9], vec![3, 9], vec![]]),
            (27, vec![vec![1, 3, 9], vec![3, 9], vec![9], vec![]]),
        ] {
            assert_eq!(Hyperband::new(&HyperbandConfig::default(), max).rungs(), want, "max_epochs {max}");
        }
        // A grace past the budget: one bracket, no rung.
        let late = HyperbandConfig { grace_epochs: 20, ..HyperbandConfig::default() };
        assert_eq!(Hyperband::new(&late, 10).rungs(), vec![Vec::<u32>::new()]);
        // Asking for more brackets than there are gives them all.
        let many = HyperbandConfig { brackets: Some(9), ..HyperbandConfig::default() };
        assert_eq!(Hyperband::new(&many, 10).rungs().len(), 3);
    }

    #[test]
    fn each_bracket_prunes_by_its_own_rungs() {
        let mut h = Hyperband::new(&HyperbandConfig::default(), 9);
        let in_bracket =
            |h: &Hyperband, b: usize| (0..100).map(TrialId).filter(|t| h.bracket_of(*t) == b).collect::<Vec<_>>();
        let (b0, b2) = (in_bracket(&h, 0), in_bracket(&h, 2));
        // Bracket 0 judges at epoch 1: a worse second arrival is stopped there.
        assert_eq!(h.on_report(b0[0], 1, 0.9), Decision::Continue);
        assert_eq!(h.on_report(b0[1], 1, 0.1), Decision::Prune);
        // The patient bracket never stops a trial early.
        assert_eq!(h.on_report(b2[0], 1, 0.9), Decision::Continue);
        for epoch in 1..9 {
            assert_eq!(h.on_report(b2[1], epoch, 0.0), Decision::Continue);
        }
        assert_eq!(h.on_report(b2[1], 9, 0.0), Decision::Complete);
    }

    #[test]
    fn fewer_brackets_and_a_round_trip() {
        let config = HyperbandConfig { brackets: Some(2), ..Default::default() };
        let mut h = Hyperband::new(&config, 27);
        assert_eq!(h.rungs(), vec![vec![1, 3, 9], vec![3, 9]]);
        h.on_report(TrialId(0), 1, 0.5);
        let back: Hyperband = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back.pattern, h.pattern);
        assert_eq!(back.rungs(), h.rungs());
    }
}
