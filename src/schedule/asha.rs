//! ASHA, asynchronous successive halving (Li et al., 2020), in its stopping
//! form: rungs sit at `grace * eta^k` epochs (k = 0, 1, ...) below
//! `max_epochs`; a trial reaching a rung continues only if its score is in
//! the top `1/eta` of the scores recorded at that rung so far (at least the
//! best one, so the first arrivals are not starved).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::ranks::Ranks;
use super::Decision;
use crate::trial::TrialId;

/// ASHA's rungs and the scores recorded at each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Asha {
    eta: u32,
    max_epochs: u32,
    rungs: Vec<Rung>,
    /// Pause and promote rather than stop.
    #[serde(default)]
    promotion: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rung {
    epoch: u32,
    /// Trials judged here (once each: the first arrival wins).
    judged: BTreeSet<TrialId>,
    /// Their scores, for rank queries.
    scores: Ranks,
    /// Promotion: each judged trial's score, and those promoted from here.
    #[serde(default)]
    entries: Vec<(TrialId, f64)>,
    #[serde(default)]
    promoted: BTreeSet<TrialId>,
}

impl Asha {
    /// Rungs at `grace * eta^k` epochs below `max_epochs`.
    pub fn new(grace: u32, eta: u32, max_epochs: u32) -> Self {
        let eta = eta.max(2);
        let rungs = Self::milestones(grace, eta, max_epochs)
            .into_iter()
            .filter(|&e| e < max_epochs)
            .map(|epoch| Rung {
                epoch,
                judged: BTreeSet::new(),
                scores: Ranks::default(),
                entries: Vec::new(),
                promoted: BTreeSet::new(),
            })
            .collect();
        Asha { eta, max_epochs, rungs, promotion: false }
    }

    /// The promotion-based form: trials pause at rungs and are promoted.
    pub fn promoting(mut self) -> Self {
        self.promotion = true;
        self
    }

    /// The rung epochs `grace * eta^k` up to and including `max_epochs`.
    pub fn milestones(grace: u32, eta: u32, max_epochs: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut e = u64::from(grace.max(1));
        while e <= u64::from(max_epochs) {
            out.push(e as u32);
            e *= u64::from(eta.max(2));
        }
        out
    }

    /// The epochs at which trials are compared.
    pub fn rung_epochs(&self) -> Vec<u32> {
        self.rungs.iter().map(|r| r.epoch).collect()
    }

    /// How many trials are recorded at each rung.
    pub fn rung_sizes(&self) -> Vec<usize> {
        self.rungs.iter().map(|r| r.scores.len()).collect()
    }

    /// Decides on a report.
    pub fn on_report(&mut self, trial: TrialId, epoch: u32, score: f64) -> Decision {
        if epoch >= self.max_epochs {
            return Decision::Complete;
        }
        // The highest rung this epoch has reached; a trial that resumed past a
        // rung it never reported at is judged there now.
        let Some(rung) = self.rungs.iter_mut().rev().find(|r| r.epoch <= epoch) else {
            return Decision::Continue;
        };
        if self.promotion {
            // Paused here until promoted; once promoted, on to the next rung.
            if rung.judged.insert(trial) {
                rung.scores.insert(score);
                rung.entries.push((trial, score));
            }
            return if rung.promoted.contains(&trial) { Decision::Continue } else { Decision::Pause };
        }
        if !rung.judged.insert(trial) {
            return Decision::Continue; // already judged here (a re-run epoch after a restart)
        }
        rung.scores.insert(score);
        let better = rung.scores.greater_than(score);
        let keep = (rung.scores.len() / self.eta as usize).max(1);
        if better < keep {
            Decision::Continue
        } else {
            Decision::Prune
        }
    }
}

impl Asha {
    /// Promotion: the paused trial to continue now, if any: the best of the
    /// top `1/eta` of a rung (the highest rung first) not yet promoted from
    /// it, among those `waiting` says are paused.
    ///
    /// The top is ⌊n/η⌋ of the n recorded at a rung while trials may still
    /// arrive there, and ⌈n/η⌉ once `final_rungs` (no trial will be
    /// proposed and every unfinished one waits at a rung: the sweep would
    /// otherwise end here). Rounding down would leave a rung of fewer than
    /// η trials (every rung of a sweep of a few trials, every top rung near
    /// a sweep's end) promoting nobody, so no trial would ever train to
    /// `max_epochs`.
    pub fn promotable(&self, final_rungs: bool, waiting: impl Fn(TrialId) -> bool) -> Option<TrialId> {
        if !self.promotion {
            return None;
        }
        let eta = self.eta as usize;
        self.rungs.iter().rev().find_map(|rung| {
            let mut ranked: Vec<&(TrialId, f64)> = rung.entries.iter().collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let n = rung.entries.len();
            let top = if final_rungs { n.div_ceil(eta) } else { n / eta };
            ranked[..top].iter().map(|e| e.0).find(|id| !rung.promoted.contains(id) && waiting(*id))
        })
    }

    /// Records a promotion from the highest rung the trial waits at.
    pub fn promoted(&mut self, trial: TrialId) {
        if let Some(rung) =
            self.rungs.iter_mut().rev().find(|r| r.judged.contains(&trial) && !r.promoted.contains(&trial))
        {
            rung.promoted.insert(trial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    #[test]
    fn rungs_of_the_classic_bracket() {
        assert_eq!(Asha::milestones(1, 3, 9), [1, 3, 9]);
        assert_eq!(Asha::new(1, 3, 9).rung_epochs(), [1, 3]);
        assert_eq!(Asha::new(2, 2, 20).rung_epochs(), [2, 4, 8, 16]);
        assert_eq!(Asha::new(5, 3, 5).rung_epochs(), Vec::<u32>::new());
    }

    /// Runs trials one epoch at a time in waves, as a synchronous sweep with
    /// every trial in flight would: all live trials report epoch e (in the
    /// given order) before any reports e+1. Returns how many reached each epoch.
    fn waves(asha: &mut Asha, scores: &[f64], max_epochs: u32) -> Vec<usize> {
        let mut live: Vec<usize> = (0..scores.len()).collect();
        let mut reached = Vec::new();
        for epoch in 1..=max_epochs {
            reached.push(live.len());
            live.retain(|&t| asha.on_report(TrialId(t as u32), epoch, scores[t]) == Decision::Continue);
        }
        reached
    }

    #[test]
    fn worst_first_arrivals_all_survive_and_best_first_only_one() {
        // 27 trials, eta 3, 9 epochs. Arrivals in increasing score: each new
        // arrival is the best so far, so nobody is pruned.
        let rising: Vec<f64> = (0..27).map(f64::from).collect();
        assert_eq!(waves(&mut Asha::new(1, 3, 9), &rising, 9), [27, 27, 27, 27, 27, 27, 27, 27, 27]);
        // Decreasing scores: the first arrival is best; each later one is
        // outranked by at least max(1, n/3) earlier ones.
        let falling: Vec<f64> = (0..27).map(|i| f64::from(27 - i)).collect();
        assert_eq!(waves(&mut Asha::new(1, 3, 9), &falling, 9), [27, 1, 1, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn random_arrivals_halve_by_eta_per_rung() {
        // 27 trials in random order: about 27/3 = 9 pass rung 1 and 9/3 = 3
        // pass rung 3. Averaged over many seeds the counts sit near those.
        let (mut r1, mut r3) = (0usize, 0usize);
        let runs = 200;
        for seed in 0..runs {
            let mut order: Vec<f64> = (0..27).map(f64::from).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let reached = waves(&mut Asha::new(1, 3, 9), &order, 9);
            assert!(reached[1] >= 1 && reached[1] <= 27);
            assert!(reached[3] <= reached[1], "monotone: {reached:?}");
            r1 += reached[1];
            r3 += reached[3];
        }
        let (m1, m3) = (r1 as f64 / runs as f64, r3 as f64 / runs as f64);
        assert!((7.0..=12.0).contains(&m1), "mean reaching epoch 2: {m1}");
        assert!((2.0..=5.0).contains(&m3), "mean reaching epoch 4: {m3}");
    }

    #[test]
    fn final_epoch_completes_and_reruns_are_not_judged_twice() {
        let mut a = Asha::new(1, 3, 9);
        assert_eq!(a.on_report(TrialId(0), 1, 0.9), Decision::Continue);
        assert_eq!(a.on_report(TrialId(1), 1, 0.1), Decision::Prune);
        // Trial 0 re-reports epoch 1 after a restart: not recorded twice.
        assert_eq!(a.on_report(TrialId(0), 1, 0.2), Decision::Continue);
        assert_eq!(a.rung_sizes(), [2, 0]);
        assert_eq!(a.on_report(TrialId(0), 9, 0.9), Decision::Complete);
    }

    #[test]
    fn state_round_trips() {
        let mut a = Asha::new(1, 3, 9);
        a.on_report(TrialId(4), 1, 0.5);
        let b: Asha = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(b.rung_sizes(), [1, 0]);
    }

    #[test]
    fn promotion_pauses_at_rungs_and_promotes_the_top_third() {
        let mut a = Asha::new(1, 3, 9).promoting();
        let waiting = |_: TrialId| true;
        assert_eq!(a.on_report(TrialId(0), 1, 0.5), Decision::Pause);
        assert_eq!(a.on_report(TrialId(1), 1, 0.9), Decision::Pause);
        assert_eq!(a.promotable(false, waiting), None, "2 at the rung: the top third is empty");
        assert_eq!(a.on_report(TrialId(2), 1, 0.1), Decision::Pause);
        assert_eq!(a.promotable(false, waiting), Some(TrialId(1)), "the best of three");
        a.promoted(TrialId(1));
        assert_eq!(a.promotable(false, waiting), None, "promoted once");
        assert_eq!(a.on_report(TrialId(1), 1, 0.9), Decision::Continue, "a re-run epoch after the promotion");
        assert_eq!(a.on_report(TrialId(1), 2, 0.9), Decision::Continue);
        assert_eq!(a.on_report(TrialId(1), 3, 0.95), Decision::Pause, "the next rung");
        for (t, s) in [(3, 0.95), (4, 0.2), (5, 0.3)] {
            assert_eq!(a.on_report(TrialId(t), 1, s), Decision::Pause);
        }
        // Rung 1 holds 6: its top 2 are trials 3 (0.95) and 1 (promoted); rung 3 holds 1.
        assert_eq!(a.promotable(false, waiting), Some(TrialId(3)));
        assert_eq!(a.promotable(false, |t| t != TrialId(3)), None, "only trials that wait");
        a.promoted(TrialId(3));
        assert_eq!(a.on_report(TrialId(3), 3, 0.5), Decision::Pause);
        assert_eq!(a.on_report(TrialId(0), 9, 0.5), Decision::Complete);
        // Rung 3 holds trials 1 and 3 (2 < 3): nothing promotable there yet.
        assert_eq!(a.promotable(false, waiting), None);
        // Once no new trial joins, a rung promotes its top ⌈n/η⌉: trial 1 (0.95 at rung 3).
        assert_eq!(a.promotable(true, waiting), Some(TrialId(1)));
    }

    #[test]
    fn a_sweep_of_fewer_trials_than_eta_still_trains_its_best_to_the_end() {
        let mut a = Asha::new(1, 3, 9).promoting();
        let waiting = |_: TrialId| true;
        assert_eq!(a.on_report(TrialId(0), 1, 0.4), Decision::Pause);
        assert_eq!(a.on_report(TrialId(1), 1, 0.8), Decision::Pause);
        assert_eq!(a.promotable(false, waiting), None, "more trials may still come");
        // No more trials: the best of two (⌈2/3⌉ = 1) goes on, rung by rung.
        assert_eq!(a.promotable(true, waiting), Some(TrialId(1)));
        a.promoted(TrialId(1));
        assert_eq!(a.promotable(true, |t| t != TrialId(1)), None, "one of two");
        assert_eq!(a.on_report(TrialId(1), 3, 0.85), Decision::Pause);
        assert_eq!(a.promotable(true, waiting), Some(TrialId(1)), "alone at rung 3");
        a.promoted(TrialId(1));
        assert_eq!(a.on_report(TrialId(1), 9, 0.9), Decision::Complete);
        assert_eq!(a.promotable(true, waiting), None, "trial 0 is not in the top of its rung");
    }
}
