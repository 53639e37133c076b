//! Population Based Training (Jaderberg et al., 2017), asynchronous as Ray
//! Tune runs it. Every `interval` epochs of a trial, the running trials are
//! ranked by their last score; a trial in the bottom `quantile` copies the
//! checkpoint of a trial drawn from the top `quantile` (exploit) and goes on
//! from the donor's epoch with the donor's parameters perturbed (explore):
//! each mutable numeric one multiplied by one of `perturb` (clamped to its
//! range) or, with `resample_probability`, drawn afresh; a choice moves to a
//! neighbour or is drawn afresh.
//!
//! The draws are a function of (experiment seed, trial, epoch) alone, and
//! the decision (donor, epoch, parameters) is journalled with the report, so
//! replay never decides again.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Decision, Exploit, View};
use crate::space::{Domain, ParamValue, Params};
use crate::trial::{splitmix64, TrialId};

/// `[scheduler] kind = "pbt"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PbtConfig {
    /// Epochs between a trial's exploit-and-explore steps.
    #[serde(default = "default_interval")]
    pub interval: u32,
    /// The bottom (and top) fraction of the population.
    #[serde(default = "quarter")]
    pub quantile: f64,
    /// How often a mutable parameter is drawn afresh rather than perturbed.
    #[serde(default = "quarter")]
    pub resample_probability: f64,
    /// The factors a numeric parameter is multiplied by, one drawn at random.
    #[serde(default = "default_perturb")]
    pub perturb: [f64; 2],
    /// The parameters PBT may change (default: the searched ones of
    /// `[train]` but `optimizer` for the built-in models, every searched one
    /// for TorchScript and command trials).
    #[serde(default)]
    pub mutate: Option<Vec<String>>,
}

fn default_interval() -> u32 {
    4
}
fn quarter() -> f64 {
    0.25
}
fn default_perturb() -> [f64; 2] {
    [0.8, 1.2]
}

impl Default for PbtConfig {
    fn default() -> Self {
        PbtConfig {
            interval: default_interval(),
            quantile: quarter(),
            resample_probability: quarter(),
            perturb: default_perturb(),
            mutate: None,
        }
    }
}

impl PbtConfig {
    /// Checks the keys: the key at fault and what is expected.
    pub fn check(&self, max_epochs: u32) -> Result<(), (&'static str, String)> {
        if self.interval == 0 || self.interval >= max_epochs {
            return Err((
                "scheduler.interval",
                format!("expected 1 to fewer than train.max_epochs ({max_epochs}), got {}", self.interval),
            ));
        }
        if !(self.quantile > 0.0 && self.quantile <= 0.5) {
            return Err(("scheduler.quantile", format!("expected more than 0 and at most 0.5, got {}", self.quantile)));
        }
        if !(0.0..=1.0).contains(&self.resample_probability) {
            return Err((
                "scheduler.resample_probability",
                format!("expected 0 to 1, got {}", self.resample_probability),
            ));
        }
        if self.perturb.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(("scheduler.perturb", format!("expected two positive factors, got {:?}", self.perturb)));
        }
        Ok(())
    }
}

/// PBT's settings and, per trial, the epoch of its last step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pbt {
    interval: u32,
    quantile: f64,
    resample_probability: f64,
    perturb: [f64; 2],
    mutate: Vec<String>,
    max_epochs: u32,
    seed: u64,
    last_step: BTreeMap<TrialId, u32>,
}

impl Pbt {
    /// PBT as configured; `mutate` resolved (see [`PbtConfig::mutate`]).
    pub fn new(config: &PbtConfig, mutate: Vec<String>, max_epochs: u32, seed: u64) -> Self {
        Pbt {
            interval: config.interval.max(1),
            quantile: config.quantile,
            resample_probability: config.resample_probability,
            perturb: config.perturb,
            mutate,
            max_epochs,
            seed,
            last_step: BTreeMap::new(),
        }
    }

    /// Decides on a report of `score` after `epoch`, the report already in `view`.
    pub fn on_report(&mut self, view: &View, trial: TrialId, epoch: u32, _score: f64) -> Decision {
        if epoch >= self.max_epochs {
            return Decision::Complete;
        }
        let last = self.last_step.get(&trial).copied().unwrap_or(0);
        if epoch < last.saturating_add(self.interval) {
            return Decision::Continue;
        }
        self.last_step.insert(trial, epoch);
        // The population: running trials with a score, worst first.
        let mut ranked: Vec<(f64, TrialId)> = view
            .trials
            .iter()
            .filter(|t| !t.status.is_final() && t.exploit.is_none())
            .filter_map(|t| t.last_score(view.metric, view.mode).map(|s| (s, t.id)))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let k = quantile_size(ranked.len(), self.quantile);
        if k == 0 || !ranked[..k].iter().any(|(_, id)| *id == trial) {
            return Decision::Continue;
        }
        // Donors: the top quantile, those with a checkpoint to copy that
        // leaves an epoch to train. A donor that reported its last epoch
        // stays running until its end arrives; a copy of that checkpoint
        // would end the exploiting trial without training it again.
        let donors: Vec<(TrialId, u32)> = ranked[ranked.len() - k..]
            .iter()
            .filter_map(|(_, id)| view.trials.get(id.0 as usize))
            .filter_map(|t| t.last_checkpoint.filter(|e| *e < self.max_epochs).map(|e| (t.id, e)))
            .collect();
        if donors.is_empty() {
            return Decision::Continue;
        }
        let mut rng =
            ChaCha8Rng::seed_from_u64(splitmix64(self.seed ^ 0x9B70 ^ (u64::from(trial.0) << 24)) ^ u64::from(epoch));
        let (donor, donor_epoch) = donors[rng.random_range(0..donors.len())];
        let Some(donor_params) = view.trials.get(donor.0 as usize).map(|t| &t.params) else {
            return Decision::Continue;
        };
        let params = self.explore(view, donor_params, &mut rng);
        // Its next step counts from the epoch it continues at.
        self.last_step.insert(trial, donor_epoch);
        Decision::Exploit(Exploit { donor, epoch: donor_epoch, params })
    }

    /// The donor's parameters with the mutable ones perturbed or resampled.
    pub fn explore(&self, view: &View, params: &Params, rng: &mut impl Rng) -> Params {
        let mut out = params.clone();
        for name in &self.mutate {
            let (Some(domain), Some(value)) = (view.space.domain(name), params.get(name)) else { continue };
            let resample = rng.random::<f64>() < self.resample_probability;
            let factor = self.perturb[usize::from(rng.random::<bool>())];
            let up = rng.random::<bool>();
            let new = if resample { domain.sample(rng) } else { perturb(domain, value, factor, up) };
            out.insert(name.clone(), new);
        }
        out
    }
}

/// How many trials each end of a ranked population of `n` holds: Ray Tune's
/// rule, `ceil(n * quantile)` but at most half, none below two trials.
pub(super) fn quantile_size(n: usize, quantile: f64) -> usize {
    if n < 2 {
        return 0;
    }
    ((n as f64 * quantile).ceil() as usize).min(n / 2)
}

/// One value moved: a number multiplied by `factor` and clamped to its range
/// (an integer rounded, and moved by at least one); a choice to the next
/// value up or down.
pub fn perturb(domain: &Domain, value: &ParamValue, factor: f64, up: bool) -> ParamValue {
    let clamp = |x: f64, lo: f64, hi: f64| x.clamp(lo.min(hi), hi.max(lo));
    match domain {
        Domain::Uniform { low, high } | Domain::LogUniform { low, high } => {
            ParamValue::Float(clamp(value.as_f64().unwrap_or(*low) * factor, *low, *high))
        }
        Domain::Int { low, high, .. } => {
            let v = value.as_i64().unwrap_or(*low);
            let mut moved = (v as f64 * factor).round() as i64;
            if moved == v {
                moved = if factor > 1.0 { v + 1 } else { v - 1 };
            }
            ParamValue::Int(moved.clamp(*low, *high))
        }
        Domain::Choice(values) => {
            let i = values.iter().position(|v| v == value).unwrap_or(0);
            let j = if up { (i + 1).min(values.len().saturating_sub(1)) } else { i.saturating_sub(1) };
            values.get(j).cloned().unwrap_or_else(|| value.clone())
        }
        Domain::Fixed(v) => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{Mode, SearchSpace};
    use crate::trial::{Trial, TrialStatus};

    fn space() -> SearchSpace {
        SearchSpace::new()
            .with("lr", Domain::LogUniform { low: 1e-4, high: 1e-1 })
            .with("units", Domain::Int { low: 8, high: 64, log: false })
            .with("opt", Domain::Choice(["a", "b", "c"].map(|v| ParamValue::Str(v.into())).to_vec()))
    }

    fn trial(id: u32, score: f64, checkpoint: Option<u32>) -> Trial {
        let mut t = Trial::pending(TrialId(id), Params::new());
        t.status = TrialStatus::Running;
        t.params.insert("lr".into(), ParamValue::Float(0.01 * f64::from(id + 1)));
        t.params.insert("units".into(), ParamValue::Int(16));
        t.params.insert("opt".into(), ParamValue::Str("b".into()));
        t.last_metrics.insert("acc".into(), score);
        t.epochs = 4;
        t.last_checkpoint = checkpoint;
        t
    }

    #[test]
    fn perturbation_multiplies_clamps_and_steps() {
        let lr = Domain::LogUniform { low: 1e-4, high: 1e-1 };
        assert_eq!(perturb(&lr, &ParamValue::Float(0.01), 1.2, true), ParamValue::Float(0.012));
        assert_eq!(perturb(&lr, &ParamValue::Float(0.09), 1.2, true), ParamValue::Float(0.1), "clamped");
        let units = Domain::Int { low: 8, high: 64, log: false };
        assert_eq!(perturb(&units, &ParamValue::Int(20), 0.8, false), ParamValue::Int(16));
        assert_eq!(perturb(&units, &ParamValue::Int(2), 1.2, true), ParamValue::Int(8), "moved by one, clamped");
        assert_eq!(perturb(&units, &ParamValue::Int(3), 1.2, true), ParamValue::Int(8));
        let opt = Domain::Choice(["a", "b", "c"].map(|v| ParamValue::Str(v.into())).to_vec());
        assert_eq!(perturb(&opt, &ParamValue::Str("b".into()), 1.2, true), ParamValue::Str("c".into()));
        assert_eq!(perturb(&opt, &ParamValue::Str("a".into()), 0.8, false), ParamValue::Str("a".into()));
    }

    #[test]
    fn the_bottom_quarter_exploits_the_top_quarter_every_interval() {
        let config = PbtConfig { resample_probability: 0.0, ..PbtConfig::default() };
        let mut pbt = Pbt::new(&config, vec!["lr".into()], 20, 1);
        // Eight trials scoring 0.1 .. 0.8: trials 0 and 1 are the bottom quarter, 6 and 7 the top.
        let trials: Vec<Trial> = (0..8).map(|i| trial(i, 0.1 * f64::from(i + 1), Some(4))).collect();
        let space = space();
        let view = View { trials: &trials, metric: "acc", mode: Mode::Max, space: &space };
        assert_eq!(pbt.on_report(&view, TrialId(0), 3, 0.1), Decision::Continue, "before the first interval");
        assert_eq!(pbt.on_report(&view, TrialId(3), 4, 0.4), Decision::Continue, "the middle stays");
        let Decision::Exploit(e) = pbt.on_report(&view, TrialId(0), 4, 0.1) else { panic!("the worst exploits") };
        assert!(e.donor == TrialId(6) || e.donor == TrialId(7));
        assert_eq!(e.epoch, 4);
        let donor_lr = trials[e.donor.0 as usize].params["lr"].as_f64().unwrap();
        let lr = e.params["lr"].as_f64().unwrap();
        assert!((lr - donor_lr * 0.8).abs() < 1e-12 || (lr - donor_lr * 1.2).abs() < 1e-12, "{lr} from {donor_lr}");
        assert_eq!(e.params["units"], ParamValue::Int(16), "only `mutate` parameters change");
        // The next step of trial 0 is an interval after the donor's epoch.
        assert_eq!(pbt.on_report(&view, TrialId(0), 7, 0.1), Decision::Continue);
        assert!(matches!(pbt.on_report(&view, TrialId(0), 8, 0.1), Decision::Exploit(_)));
        assert_eq!(pbt.on_report(&view, TrialId(0), 20, 0.1), Decision::Complete);
    }

    #[test]
    fn no_donor_without_a_checkpoint_and_draws_are_seeded() {
        let mut pbt = Pbt::new(&PbtConfig::default(), vec!["lr".into(), "opt".into()], 20, 1);
        let mut trials: Vec<Trial> = (0..4).map(|i| trial(i, f64::from(i), None)).collect();
        let space = space();
        let view = View { trials: &trials, metric: "acc", mode: Mode::Max, space: &space };
        assert_eq!(pbt.on_report(&view, TrialId(0), 4, 0.0), Decision::Continue, "the top trial has no checkpoint");
        trials[3].last_checkpoint = Some(3);
        let view = View { trials: &trials, metric: "acc", mode: Mode::Max, space: &space };
        let a = Pbt::new(&PbtConfig::default(), vec!["lr".into(), "opt".into()], 20, 1).on_report(
            &view,
            TrialId(0),
            4,
            0.0,
        );
        let b = Pbt::new(&PbtConfig::default(), vec!["lr".into(), "opt".into()], 20, 1).on_report(
            &view,
            TrialId(0),
            4,
            0.0,
        );
        assert_eq!(a, b);
        assert!(matches!(a, Decision::Exploit(Exploit { donor: TrialId(3), epoch: 3, .. })));
    }

    #[test]
    fn a_donor_checkpointed_at_the_last_epoch_is_not_copied() {
        let mut pbt = Pbt::new(&PbtConfig::default(), vec!["lr".into()], 20, 1);
        let mut trials: Vec<Trial> = (0..4).map(|i| trial(i, f64::from(i), None)).collect();
        // The top trial reported its last epoch and checkpointed it; its end has not arrived yet.
        trials[3].last_checkpoint = Some(20);
        let space = space();
        let view = View { trials: &trials, metric: "acc", mode: Mode::Max, space: &space };
        assert_eq!(pbt.on_report(&view, TrialId(0), 4, 0.0), Decision::Continue, "nothing left to train after it");
        trials[3].last_checkpoint = Some(19);
        let view = View { trials: &trials, metric: "acc", mode: Mode::Max, space: &space };
        let mut pbt = Pbt::new(&PbtConfig::default(), vec!["lr".into()], 20, 1);
        assert!(matches!(pbt.on_report(&view, TrialId(0), 4, 0.0), Decision::Exploit(Exploit { epoch: 19, .. })));
    }

    #[test]
    fn quantiles_count_as_ray_tune_counts_them() {
        let sizes: Vec<usize> = (0..=9).map(|n| quantile_size(n, 0.25)).collect();
        assert_eq!(sizes, [0, 0, 1, 1, 1, 2, 2, 2, 2, 3]);
        assert_eq!(quantile_size(3, 0.5), 1, "at most half");
        assert_eq!(quantile_size(10, 0.5), 5);
    }
}
