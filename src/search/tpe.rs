//! The Tree-structured Parzen Estimator (Bergstra et al., 2011) with the
//! defaults Optuna's users know (`TPESampler`): `startup_trials` (10) random
//! proposals first; then the finished trials are split into a good set of
//! size `min(ceil(0.1 n), 25)` and the rest, a Parzen density is fitted to
//! each (one kernel per trial plus a prior kernel of weight 1, older trials
//! down-weighted past 25), `candidates` (24) points are drawn from the good
//! density and the one with the largest `log l(x) - log g(x)` is proposed.
//!
//! - Multivariate (the default): every kernel is a product over the
//!   dimensions, and a candidate is drawn from one kernel in all of them;
//!   bandwidths `0.2 n^(-1/(d+4))` of each range (Scott's rule as Optuna
//!   has it). Univariate: each dimension on its own, bandwidths from the
//!   distances to the neighbouring observations. Both clipped below at
//!   `range / min(100, 1 + n)` (the "magic clip") and above at the range.
//! - Log ranges are modelled in log space; integers on a grid of step 1
//!   (a kernel's mass over each integer's cell); choices as one-hot weights
//!   smoothed by the prior.
//! - Ranking: completed trials by their best value; pruned trials after
//!   them, by how far they got, then their value (so they are evidence).
//!   With `constant_liar` (on by default), running trials count as the
//!   worst: parallel proposals spread out instead of piling up.
//!
//! Proposal `n` draws from its own ChaCha stream and sees the trials as
//! they stand, so the state is a counter: a resumed run at concurrency 1
//! proposes the same sequence.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::space::{Domain, Mode, ParamValue, Params, SearchSpace};
use crate::trial::{Trial, TrialStatus};

/// `[search] algorithm = "tpe"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpeConfig {
    /// Random proposals before the model is used (finished trials).
    #[serde(default = "ten")]
    pub startup_trials: u32,
    /// Points drawn from the good density per proposal.
    #[serde(default = "twenty_four")]
    pub candidates: u32,
    /// One joint density over all dimensions (else one per dimension).
    #[serde(default = "yes")]
    pub multivariate: bool,
    /// Running trials count as the worst.
    #[serde(default = "yes")]
    pub constant_liar: bool,
}

fn ten() -> u32 {
    10
}
fn twenty_four() -> u32 {
    24
}
fn yes() -> bool {
    true
}

impl Default for TpeConfig {
    fn default() -> Self {
        TpeConfig { startup_trials: 10, candidates: 24, multivariate: true, constant_liar: true }
    }
}

/// TPE's state: its settings, seed and how many it proposed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpeSearch {
    config: TpeConfig,
    seed: u64,
    drawn: u64,
    /// Each trial's parameters in the model's space, by id: encoded once,
    /// forgotten when PBT changes them.
    #[serde(skip)]
    encoded: Vec<Option<Vec<f64>>>,
}

/// One searched dimension, as the estimator models it.
#[derive(Debug, Clone)]
enum Dim {
    /// A continuous range (in log space for log domains): bounds, and whether
    /// values are integers on a step-1 grid (linear integer ranges).
    Numeric { low: f64, high: f64, log: bool, int: bool },
    /// Choices, by index.
    Choice(Vec<ParamValue>),
}

impl Dim {
    fn of(domain: &Domain) -> Option<Dim> {
        Some(match domain {
            _ if !domain.is_searched() => return None,
            Domain::Uniform { low, high } => Dim::Numeric { low: *low, high: *high, log: false, int: false },
            Domain::LogUniform { low, high } => Dim::Numeric { low: low.ln(), high: high.ln(), log: true, int: false },
            Domain::Int { low, high, log: false } => {
                Dim::Numeric { low: *low as f64 - 0.5, high: *high as f64 + 0.5, log: false, int: true }
            }
            Domain::Int { low, high, log: true } => {
                Dim::Numeric { low: (*low as f64 - 0.5).ln(), high: (*high as f64 + 0.5).ln(), log: true, int: true }
            }
            Domain::Choice(values) => Dim::Choice(values.clone()),
            Domain::Fixed(_) => return None,
        })
    }

    /// A sample moved onto the grid its parameter takes: integers are
    /// scored by the mass of their own cell.
    fn snap(&self, x: f64) -> f64 {
        match self {
            Dim::Numeric { low, high, log: false, int: true } => x.round().clamp(low + 0.5, high - 0.5),
            Dim::Numeric { low, high, log: true, int: true } => {
                let v = x.exp().round().clamp((low.exp() + 0.5).round(), (high.exp() - 0.5).round());
                v.ln()
            }
            _ => x,
        }
    }

    /// A parameter in the model's space (None when it does not fit).
    fn encode(&self, v: &ParamValue) -> Option<f64> {
        match self {
            Dim::Numeric { log, .. } => {
                let x = v.as_f64()?;
                Some(if *log { x.max(f64::MIN_POSITIVE).ln() } else { x })
            }
            Dim::Choice(values) => values.iter().position(|c| c == v).map(|i| i as f64),
        }
    }

    fn decode(&self, x: f64) -> ParamValue {
        match self {
            Dim::Numeric { low, high, log, int } => {
                let x = x.clamp(*low, *high);
                let v = if *log { x.exp() } else { x };
                if *int {
                    let (lo, hi) = if *log { (low.exp(), high.exp()) } else { (*low, *high) };
                    ParamValue::Int((v.round()).clamp((lo + 0.5).round(), (hi - 0.5).round()) as i64)
                } else {
                    ParamValue::Float(v)
                }
            }
            Dim::Choice(values) => values[(x as usize).min(values.len() - 1)].clone(),
        }
    }
}

/// A Parzen density over the searched dimensions: kernels (one per
/// observation, then the prior) with weights.
/// The most kernels a density holds (see [`Parzen::fit`]).
const MAX_KERNELS: usize = 512;

/// A Parzen mixture: kernel `k`'s parameters for dimension `d` at `k * D + d`
/// (one flat allocation each, read in order by the density).
struct Parzen<'a> {
    dims: &'a [Dim],
    weights: Vec<f64>,
    log_weights: Vec<f64>,
    centres: Vec<f64>,
    sigmas: Vec<f64>,
    inv_sigmas: Vec<f64>,
    /// For integer dimensions: the log of the kernel's mass over the range.
    log_masses: Vec<f64>,
    /// For continuous dimensions: the log normaliser of the truncated normal.
    log_norms: Vec<f64>,
    /// Per choice dimension and kernel, the log weights of the values.
    choice_logs: Vec<Vec<f64>>,
    choice_weights: Vec<Vec<f64>>,
    /// Per kernel: its log weight plus the log normalisers of its
    /// continuous dimensions (constant over the points it is evaluated at).
    log_consts: Vec<f64>,
}

impl<'a> Parzen<'a> {
    fn fit(dims: &'a [Dim], all: &[&[f64]], multivariate: bool) -> Self {
        let n = all.len();
        let nd = dims.len();
        // Optuna's default weights: np.linspace(1/n, 1, n - 25) for the older
        // trials, 1 for the newest 25; the prior weighs 1.
        let mut weights: Vec<f64> = if n < 25 {
            vec![1.0; n]
        } else {
            let ramp = n - 25;
            (0..ramp)
                .map(|i| (1.0 / n as f64) + (1.0 - 1.0 / n as f64) * i as f64 / (ramp - 1).max(1) as f64)
                .chain(std::iter::repeat_n(1.0, 25))
                .collect()
        };
        // Past MAX_KERNELS observations the older ones are summarised: each
        // run of consecutive ones becomes its middle member, weighing what
        // the run weighed, so the cost of a proposal stops growing with the
        // history. Bandwidths still follow the whole count.
        let mut observations: Vec<&[f64]> = all.to_vec();
        if n > MAX_KERNELS {
            let old = n - 25;
            let groups = MAX_KERNELS - 25;
            let (mut kept, mut kept_weights) = (Vec::with_capacity(MAX_KERNELS), Vec::with_capacity(MAX_KERNELS));
            for g in 0..groups {
                let (from, to) = (g * old / groups, (g + 1) * old / groups);
                kept.push(all[(from + to) / 2]);
                kept_weights.push(weights[from..to].iter().sum());
            }
            kept.extend_from_slice(&all[old..]);
            kept_weights.extend_from_slice(&weights[old..]);
            (observations, weights) = (kept, kept_weights);
        }
        weights.push(1.0);
        let total: f64 = weights.iter().sum();
        weights.iter_mut().for_each(|w| *w /= total);
        let kernels = observations.len() + 1;
        let full = n + 1;
        let kept = observations.len();
        let mut centres = vec![0.0; kernels * nd];
        let mut sigmas = vec![1.0; kernels * nd];
        let mut log_masses = vec![0.0; kernels * nd];
        let mut log_norms = vec![0.0; kernels * nd];
        let log_weights: Vec<f64> = weights.iter().map(|w| w.ln()).collect();
        let mut log_consts = log_weights.clone();
        let mut choice_weights = vec![Vec::new(); kernels * nd];
        for (d, dim) in dims.iter().enumerate() {
            match dim {
                Dim::Numeric { low, high, int, .. } => {
                    let range = high - low;
                    let min_sigma = range / (1.0 + n as f64).min(100.0);
                    let bandwidths: Vec<f64> = if multivariate {
                        let s = 0.2 * (full as f64).powf(-1.0 / (nd as f64 + 4.0)) * range;
                        vec![s; kept]
                    } else {
                        let mus: Vec<f64> = observations.iter().map(|o| o[d]).collect();
                        neighbour_bandwidths(&mus, *low, *high)
                    };
                    let mut last_sigma = (f64::NAN, 0.0);
                    for k in 0..kernels {
                        let (mu, sigma) = if k < kept {
                            (observations[k][d], bandwidths[k].clamp(min_sigma, range))
                        } else {
                            ((low + high) / 2.0, range)
                        };
                        centres[k * nd + d] = mu;
                        sigmas[k * nd + d] = sigma;
                        let mass = (phi((high - mu) / sigma) - phi((low - mu) / sigma)).max(1e-300);
                        if *int {
                            log_masses[k * nd + d] = mass.ln();
                        } else {
                            // Kernels share their bandwidth (multivariate): one log for all of them.
                            if sigma != last_sigma.0 {
                                last_sigma = (sigma, -(sigma * (2.0 * std::f64::consts::PI).sqrt()).ln());
                            }
                            let norm = last_sigma.1 - if mass == 1.0 { 0.0 } else { mass.ln() };
                            log_norms[k * nd + d] = norm;
                            log_consts[k] += norm;
                        }
                    }
                }
                Dim::Choice(values) => {
                    let c = values.len();
                    for k in 0..kernels {
                        let mut w = vec![1.0 / full as f64; c];
                        if k < kept {
                            w[observations[k][d] as usize % c] += 1.0;
                        } else {
                            w.iter_mut().for_each(|x| *x = 1.0);
                        }
                        let sum: f64 = w.iter().sum();
                        choice_weights[k * nd + d] = w.into_iter().map(|x| x / sum).collect();
                    }
                }
            }
        }
        let inv_sigmas = sigmas.iter().map(|s| 1.0 / s).collect();
        let choice_logs = choice_weights.iter().map(|w| w.iter().map(|p| p.max(1e-300).ln()).collect()).collect();
        Parzen {
            dims,
            weights,
            log_weights,
            centres,
            sigmas,
            inv_sigmas,
            log_masses,
            log_norms,
            choice_logs,
            choice_weights,
            log_consts,
        }
    }

    /// Draws a point: a kernel by weight, then each dimension from it
    /// (multivariate), or a kernel per dimension (univariate).
    fn sample(&self, rng: &mut ChaCha8Rng, multivariate: bool) -> Vec<f64> {
        let nd = self.dims.len();
        let pick = |rng: &mut ChaCha8Rng| {
            let mut u: f64 = rng.random();
            for (k, w) in self.weights.iter().enumerate() {
                if u < *w {
                    return k;
                }
                u -= w;
            }
            self.weights.len() - 1
        };
        let joint = pick(rng);
        self.dims
            .iter()
            .enumerate()
            .map(|(d, dim)| {
                let k = if multivariate { joint } else { pick(rng) };
                match dim {
                    Dim::Numeric { low, high, .. } => {
                        let (mu, sigma) = (self.centres[k * nd + d], self.sigmas[k * nd + d]);
                        for _ in 0..100 {
                            let z: f64 = StandardNormal.sample(rng);
                            let x = mu + sigma * z;
                            if (*low..=*high).contains(&x) {
                                return x;
                            }
                        }
                        mu.clamp(*low, *high)
                    }
                    Dim::Choice(_) => {
                        let mut u: f64 = rng.random();
                        let w = &self.choice_weights[k * nd + d];
                        for (i, p) in w.iter().enumerate() {
                            if u < *p {
                                return i as f64;
                            }
                            u -= p;
                        }
                        (w.len() - 1) as f64
                    }
                }
            })
            .collect()
    }

    /// Kernel `k`'s log density in dimension `d` at `x`, without the
    /// constant part of continuous dimensions (in `log_consts`).
    fn term(&self, k: usize, d: usize, x: f64) -> f64 {
        let i = k * self.dims.len() + d;
        match &self.dims[d] {
            Dim::Numeric { int: true, log, .. } => {
                let (mu, inv) = (self.centres[i], self.inv_sigmas[i]);
                // The integer's cell, [v - 0.5, v + 0.5] in value space (in
                // log space for a log range, as Optuna's discrete log kernel).
                let (lo, hi) = if *log {
                    let v = x.exp().round();
                    ((v - 0.5).max(f64::MIN_POSITIVE).ln(), (v + 0.5).ln())
                } else {
                    (x - 0.5, x + 0.5)
                };
                let p = phi((hi - mu) * inv) - phi((lo - mu) * inv);
                p.max(1e-300).ln() - self.log_masses[i]
            }
            Dim::Numeric { .. } => {
                let z = (x - self.centres[i]) * self.inv_sigmas[i];
                -0.5 * z * z
            }
            Dim::Choice(_) => self.choice_logs[i][x as usize],
        }
    }

    /// The log density (log mass for integers and choices) of `x`.
    fn log_density(&self, x: &[f64], multivariate: bool) -> f64 {
        let kernels = self.weights.len();
        let nd = self.dims.len();
        if multivariate {
            let plain = self.dims.iter().all(|d| matches!(d, Dim::Numeric { int: false, .. }));
            let mut acc = LogSumExp::default();
            for k in 0..kernels {
                let mut s = self.log_consts[k];
                if plain {
                    // The common case, kept tight: continuous dimensions only.
                    let (mus, invs) = (&self.centres[k * nd..(k + 1) * nd], &self.inv_sigmas[k * nd..(k + 1) * nd]);
                    for ((x, mu), inv) in x.iter().zip(mus).zip(invs) {
                        let z = (x - mu) * inv;
                        s -= 0.5 * z * z;
                    }
                } else {
                    s += (0..nd).map(|d| self.term(k, d, x[d])).sum::<f64>();
                }
                acc.add(s);
            }
            acc.value()
        } else {
            (0..nd)
                .map(|d| {
                    let mut acc = LogSumExp::default();
                    for k in 0..kernels {
                        // Univariate: each dimension with its own normaliser.
                        acc.add(self.log_weights[k] + self.log_norms[k * nd + d] + self.term(k, d, x[d]));
                    }
                    acc.value()
                })
                .sum()
        }
    }
}

/// log(sum(exp(x))) over a stream, without holding it.
#[derive(Default)]
struct LogSumExp {
    max: f64,
    sum: f64,
    any: bool,
}

impl LogSumExp {
    fn add(&mut self, x: f64) {
        if !self.any {
            (self.max, self.sum, self.any) = (x, 1.0, true);
        } else if x > self.max {
            self.sum = self.sum * (self.max - x).exp() + 1.0;
            self.max = x;
        } else {
            self.sum += (x - self.max).exp();
        }
    }

    fn value(&self) -> f64 {
        if !self.any || !self.max.is_finite() {
            return if self.any { self.max } else { f64::NEG_INFINITY };
        }
        self.max + self.sum.ln()
    }
}

/// Each observation's bandwidth: the larger distance to its neighbours in
/// sorted order; the smallest and largest take their one inner neighbour
/// (Optuna's `consider_endpoints = False`), a lone one the farther end.
fn neighbour_bandwidths(mus: &[f64], low: f64, high: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..mus.len()).collect();
    order.sort_by(|&a, &b| mus[a].total_cmp(&mus[b]));
    let mut out = vec![0.0; mus.len()];
    if let [only] = order[..] {
        out[only] = (mus[only] - low).max(high - mus[only]);
        return out;
    }
    for (i, &k) in order.iter().enumerate() {
        let left = (i > 0).then(|| mus[k] - mus[order[i - 1]]);
        let right = (i + 1 < order.len()).then(|| mus[order[i + 1]] - mus[k]);
        out[k] = left.unwrap_or(0.0).max(right.unwrap_or(0.0));
    }
    out
}

/// The standard normal distribution function (0 and 1 exactly, in f64,
/// past 8.3 standard deviations: no erf needed there).
fn phi(z: f64) -> f64 {
    if z > 8.3 {
        1.0
    } else if z < -38.5 {
        0.0
    } else {
        0.5 * (1.0 + libm::erf(z / std::f64::consts::SQRT_2))
    }
}

impl TpeSearch {
    /// TPE with `config`, seeded.
    pub fn new(config: &TpeConfig, seed: u64) -> Self {
        TpeSearch { config: config.clone(), seed, drawn: 0, encoded: Vec::new() }
    }

    /// Continues after `n` proposals (a resumed run: nothing is proposed again).
    pub fn skip_to(&mut self, n: u64) {
        self.drawn = n;
    }

    /// A trial's parameters changed (PBT's exploit): its encoding goes.
    pub fn forget(&mut self, trial: crate::trial::TrialId) {
        if let Some(e) = self.encoded.get_mut(trial.0 as usize) {
            *e = None;
        }
    }

    /// Proposes the next trial's parameters given every trial so far, in id
    /// order (as the experiment state holds them).
    pub fn propose(&mut self, space: &SearchSpace, trials: &[Trial], mode: Mode) -> Params {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x7BE0_5EED);
        rng.set_stream(self.drawn);
        self.drawn += 1;
        let finished: Vec<&Trial> = trials.iter().filter(|t| evidence(t)).collect();
        if finished.len() < self.config.startup_trials.max(1) as usize {
            return space.sample(&mut rng);
        }
        let (names, dims): (Vec<&str>, Vec<Dim>) =
            space.dims().iter().filter_map(|(n, d)| Some((n.as_str(), Dim::of(d)?))).unzip();
        // Completed by value, then pruned (or paused at a rung) by progress
        // and value; running last (the liar).
        let mut ranked: Vec<(u8, i64, f64, &Trial)> = finished
            .iter()
            .map(|t| {
                let score = mode.score(t.best_metric.unwrap_or(f64::NAN));
                let (class, progress) =
                    if t.status == TrialStatus::Completed { (0, 0) } else { (1, -i64::from(t.epochs)) };
                (class, progress, score, *t)
            })
            .collect();
        let good = ((0.1 * ranked.len() as f64).ceil() as usize).clamp(1, 25);
        // Only which trials are good matters, not their order: a selection, not a sort.
        let order = |a: &(u8, i64, f64, &Trial), b: &(u8, i64, f64, &Trial)| {
            a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.total_cmp(&a.2)).then(a.3.id.cmp(&b.3.id))
        };
        if good < ranked.len() {
            ranked.select_nth_unstable_by(good - 1, order);
        }
        let mut is_good = vec![false; trials.len()];
        for r in &ranked[..good] {
            if let Some(flag) = is_good.get_mut(r.3.id.0 as usize) {
                *flag = true;
            }
        }
        for t in trials {
            let i = t.id.0 as usize;
            if self.encoded.len() <= i {
                self.encoded.resize(i + 1, None);
            }
            if self.encoded[i].is_none() {
                self.encoded[i] = names.iter().zip(&dims).map(|(n, d)| d.encode(t.params.get(*n)?)).collect();
            }
        }
        // Oldest first (the weights ramp by age): the trials are in id order.
        let liar = self.config.constant_liar;
        let (mut below, mut above): (Vec<&[f64]>, Vec<&[f64]>) = (Vec::new(), Vec::new());
        for t in trials {
            let Some(x) = self.encoded.get(t.id.0 as usize).and_then(|e| e.as_deref()) else { continue };
            let finished = evidence(t);
            if finished && is_good.get(t.id.0 as usize) == Some(&true) {
                below.push(x);
            } else if finished || (liar && matches!(t.status, TrialStatus::Running | TrialStatus::Pending)) {
                above.push(x);
            }
        }
        let multivariate = self.config.multivariate;
        let l = Parzen::fit(&dims, &below, multivariate);
        let g = Parzen::fit(&dims, &above, multivariate);
        let best = (0..self.config.candidates.max(1))
            .map(|_| {
                l.sample(&mut rng, multivariate).into_iter().zip(&dims).map(|(x, d)| d.snap(x)).collect::<Vec<_>>()
            })
            .map(|x| (l.log_density(&x, multivariate) - g.log_density(&x, multivariate), x))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, x)| x)
            .unwrap_or_default();
        let mut params: Params =
            space.dims().iter().filter(|(_, d)| !d.is_searched()).map(|(n, d)| (n.clone(), d.at_unit(0.5))).collect();
        for ((name, dim), x) in names.iter().zip(&dims).zip(best) {
            params.insert((*name).to_owned(), dim.decode(x));
        }
        params
    }
}

/// Whether a trial's result so far is evidence for the model: it ended
/// completed or pruned, or waits paused at a rung (promotion ASHA keeps
/// trials there until the sweep ends: left out, the model would see
/// almost nothing), with a finite best value.
fn evidence(t: &Trial) -> bool {
    let waits_at_rung = t.status == TrialStatus::Paused && t.waiting;
    (matches!(t.status, TrialStatus::Completed | TrialStatus::Pruned) || waits_at_rung)
        && t.best_metric.is_some_and(f64::is_finite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trial::TrialId;

    fn finished(id: u32, params: Params, value: f64) -> Trial {
        let mut s = Trial::pending(TrialId(id), params);
        s.status = TrialStatus::Completed;
        s.best_metric = Some(value);
        s.epochs = 1;
        s
    }

    #[test]
    fn the_density_integrates_and_favours_its_observations() {
        let dims = [Dim::Numeric { low: 0.0, high: 1.0, log: false, int: false }];
        let p = Parzen::fit(&dims, &[&[0.2], &[0.25]], true);
        // A truncated mixture integrates to 1 over its range.
        let integral: f64 = (0..1000).map(|i| p.log_density(&[(i as f64 + 0.5) / 1000.0], true).exp() / 1000.0).sum();
        assert!((integral - 1.0).abs() < 1e-3, "{integral}");
        assert!(p.log_density(&[0.22], true) > p.log_density(&[0.9], true));
        // Integers: masses over the cells sum to 1.
        let ints = [Dim::Numeric { low: -0.5, high: 4.5, log: false, int: true }];
        let q = Parzen::fit(&ints, &[&[1.0]], true);
        let mass: f64 = (0..5).map(|i| q.log_density(&[i as f64], true).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-9, "{mass}");
        // Log integers: cells [v - 0.5, v + 0.5] in value space (not unit
        // wide in log space, which made every mass near 1 and summed to far
        // more than 1), so the masses of 1..=5000 sum to 1.
        let logs = Dim::of(&Domain::Int { low: 1, high: 5000, log: true }).unwrap();
        let r = Parzen::fit(std::slice::from_ref(&logs), &[&[1000f64.ln()], &[900f64.ln()]], true);
        let mass: f64 = (1..=5000).map(|v| r.log_density(&[f64::from(v).ln()], true).exp()).sum();
        assert!((mass - 1.0).abs() < 1e-6, "{mass}");
        assert!(r.log_density(&[1000f64.ln()], true) > r.log_density(&[1300f64.ln()], true) + 0.1);
        // Samples are scored on the grid.
        assert_eq!(logs.snap(999.7f64.ln()), 1000f64.ln());
        assert_eq!(logs.snap(1e9f64.ln()), 5000f64.ln());
        let lin = Dim::of(&Domain::Int { low: 0, high: 4, log: false }).unwrap();
        assert_eq!((lin.snap(2.4), lin.snap(-3.0), lin.snap(9.0)), (2.0, 0.0, 4.0));
        // Choices: the observed one gets the most weight, the prior keeps the others possible.
        let choices = [Dim::Choice(vec![ParamValue::Int(0), ParamValue::Int(1), ParamValue::Int(2)])];
        let c = Parzen::fit(&choices, &[&[2.0], &[2.0]], false);
        let w: Vec<f64> = (0..3).map(|i| c.log_density(&[i as f64], false).exp()).collect();
        assert!(w[2] > w[0] && w[0] > 0.0 && (w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn a_long_history_is_summarised_into_a_bounded_mixture() {
        let dims = [Dim::Numeric { low: 0.0, high: 1.0, log: false, int: false }];
        let points: Vec<[f64; 1]> = (0..5000).map(|i| [((i * 7919) % 5000) as f64 / 5000.0]).collect();
        let observations: Vec<&[f64]> = points.iter().map(|p| &p[..]).collect();
        let p = Parzen::fit(&dims, &observations, true);
        assert_eq!(p.weights.len(), MAX_KERNELS + 1);
        assert!((p.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // The newest 25 keep their own kernels and weights.
        assert_eq!(p.centres[MAX_KERNELS - 1], points[4999][0]);
        assert!((p.weights[MAX_KERNELS - 1] - p.weights[MAX_KERNELS - 2]).abs() < 1e-15);
        let integral: f64 = (0..1000).map(|i| p.log_density(&[(i as f64 + 0.5) / 1000.0], true).exp() / 1000.0).sum();
        assert!((integral - 1.0).abs() < 1e-3, "{integral}");
        // Uniform observations: a nearly flat density.
        let (a, b) = (p.log_density(&[0.3], true), p.log_density(&[0.7], true));
        assert!((a - b).abs() < 0.1, "{a} {b}");
    }

    #[test]
    fn bandwidths_follow_neighbours_and_the_magic_clip() {
        let b = neighbour_bandwidths(&[0.5, 0.1, 0.2], 0.0, 1.0);
        assert!(b.iter().zip([0.3, 0.1, 0.3]).all(|(x, y)| (x - y).abs() < 1e-12), "{b:?}");
        assert_eq!(neighbour_bandwidths(&[0.25], 0.0, 1.0), vec![0.75]);
        let dims = [Dim::Numeric { low: 0.0, high: 1.0, log: false, int: false }];
        let p = Parzen::fit(&dims, &[&[0.5], &[0.5000001]], false);
        assert!((p.sigmas[0] - 1.0 / 3.0).abs() < 1e-12, "clipped to range / (1 + n): {}", p.sigmas[0]);
        assert_eq!(p.sigmas[2], 1.0, "the prior spans the range");
    }

    #[test]
    fn after_start_up_proposals_concentrate_where_good_trials_were() {
        let space = SearchSpace::new()
            .with("x", Domain::Uniform { low: -5.0, high: 5.0 })
            .with("opt", Domain::Choice(vec![ParamValue::Str("a".into()), ParamValue::Str("b".into())]));
        let mut history = Vec::new();
        let mut tpe = TpeSearch::new(&TpeConfig::default(), 3);
        for i in 0..60u32 {
            let p = tpe.propose(&space, &history, Mode::Max);
            let x = p["x"].as_f64().unwrap();
            let bonus = if p["opt"].as_str() == Some("b") { 1.0 } else { 0.0 };
            history.push(finished(i, p, -(x - 2.0) * (x - 2.0) + bonus));
        }
        let late: Vec<&Trial> = history[40..].iter().collect();
        let near = late.iter().filter(|t| (t.params["x"].as_f64().unwrap() - 2.0).abs() < 1.0).count();
        let b = late.iter().filter(|t| t.params["opt"].as_str() == Some("b")).count();
        assert!(near >= 12, "{near} of 20 late proposals within 1 of the optimum");
        assert!(b >= 14, "{b} of 20 late proposals take the better choice");
        // Same history, same seed and position: the same proposal.
        let (mut a, mut c) = (TpeSearch::new(&TpeConfig::default(), 9), TpeSearch::new(&TpeConfig::default(), 9));
        a.skip_to(60);
        c.skip_to(60);
        assert_eq!(a.propose(&space, &history, Mode::Max), c.propose(&space, &history, Mode::Max));
    }

    #[test]
    fn trials_paused_at_a_rung_are_evidence() {
        // Promotion ASHA keeps trials paused at a rung until the sweep ends:
        // counted as nothing, the model never left its random start-up.
        let space = SearchSpace::new().with("x", Domain::Uniform { low: -5.0, high: 5.0 });
        let mut tpe = TpeSearch::new(&TpeConfig::default(), 3);
        let mut history: Vec<Trial> = Vec::new();
        for i in 0..30u32 {
            let p = tpe.propose(&space, &history, Mode::Max);
            let x = p["x"].as_f64().unwrap();
            let mut t = finished(i, p, -(x - 2.0) * (x - 2.0));
            t.status = TrialStatus::Paused;
            t.waiting = true; // at a rung, not paused by a stop
            history.push(t);
        }
        let mut random = TpeSearch::new(&TpeConfig { startup_trials: 1_000_000, ..TpeConfig::default() }, 3);
        let drawn: Vec<Params> = (0..30).map(|_| random.propose(&space, &[], Mode::Max)).collect();
        let proposed: Vec<&Params> = history.iter().map(|t| &t.params).collect();
        assert_ne!(proposed[10..], drawn.iter().collect::<Vec<_>>()[10..], "the model ran after 10 paused trials");
        let near = history[20..].iter().filter(|t| (t.params["x"].as_f64().unwrap() - 2.0).abs() < 1.0).count();
        assert!(near >= 5, "{near} of 10 late proposals within 1 of the optimum");
    }
}

#[cfg(test)]
mod quality {
    use super::*;
    use crate::search::RandomSearch;
    use crate::trial::TrialId;

    /// Branin on [-5, 10] x [0, 15]: minimum 0.397887 at three points.
    fn branin(x: f64, y: f64) -> f64 {
        let (a, b, c) = (1.0, 5.1 / (4.0 * std::f64::consts::PI.powi(2)), 5.0 / std::f64::consts::PI);
        let (r, s, t) = (6.0, 10.0, 1.0 / (8.0 * std::f64::consts::PI));
        a * (y - b * x * x + c * x - r).powi(2) + s * (1.0 - t) * x.cos() + s
    }

    fn best_of(mut propose: impl FnMut(&[Trial]) -> Params, trials: u32) -> f64 {
        let mut history: Vec<Trial> = Vec::new();
        for i in 0..trials {
            let p = propose(&history);
            let v = branin(p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap());
            let mut s = Trial::pending(TrialId(i), p);
            s.status = TrialStatus::Completed;
            s.best_metric = Some(v);
            history.push(s);
        }
        history.iter().filter_map(|s| s.best_metric).fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn tpe_beats_random_search_on_branin_over_ten_seeds() {
        let space = SearchSpace::new()
            .with("x", Domain::Uniform { low: -5.0, high: 10.0 })
            .with("y", Domain::Uniform { low: 0.0, high: 15.0 });
        let (mut wins, mut tpe_sum, mut random_sum) = (0, 0.0, 0.0);
        for seed in 0..10 {
            let mut tpe = TpeSearch::new(&TpeConfig::default(), seed);
            let mut random = RandomSearch::new(seed);
            let t = best_of(|h| tpe.propose(&space, h, Mode::Min), 60);
            let r = best_of(|_| random.propose(&space), 60);
            wins += usize::from(t < r);
            tpe_sum += t;
            random_sum += r;
        }
        let (t, r) = (tpe_sum / 10.0, random_sum / 10.0);
        assert!(wins >= 8, "TPE beat random search in {wins} of 10 seeds (means {t:.3} and {r:.3})");
        assert!(t < r && t < 0.397887 + 0.3, "mean best after 60 trials: TPE {t:.3}, random {r:.3}");
    }
}
