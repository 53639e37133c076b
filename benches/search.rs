//! What searchers cost and how well they search, as pure code:
//!
//! 1. Proposal cost: microseconds per TPE proposal (median and p99) with
//!    1,000 and 10,000 finished trials in 5 and 40 dimensions.
//! 2. Quality: the best value after N trials of random, Sobol and TPE on
//!    Branin (2-D) and Hartmann-6, over 10 seeds (mean and spread).
//!
//! `cargo bench --bench search` (or `scripts/bench-search`); GAUNTLET_BENCH_QUICK=1 for a short run.

use std::time::Instant;

use gauntlet::config::{Domain, Mode, Params, SearchConfig, SearchSpace};
use gauntlet::search::{NoKeys, Searcher, TpeConfig};
use gauntlet::trial::{Trial, TrialId, TrialStatus};

fn space(dims: usize) -> SearchSpace {
    (0..dims).fold(SearchSpace::new(), |s, d| s.with(format!("x{d}"), Domain::Uniform { low: 0.0, high: 1.0 }))
}

fn finished(id: u32, params: Params, value: f64) -> Trial {
    let mut s = Trial::pending(TrialId(id), params);
    s.status = TrialStatus::Completed;
    s.best_metric = Some(value);
    s.epochs = 1;
    s
}

fn proposal_cost(trials: u32, dims: usize, samples: usize) {
    let space = space(dims);
    let mut random = Searcher::new(&SearchConfig::default(), &space, 1);
    let history: Vec<Trial> = (0..trials)
        .map(|i| {
            let p = random.propose(&space, &[], Mode::Min).expect("random proposes");
            let v: f64 = p.values().filter_map(|v| v.as_f64()).map(|x| (x - 0.3) * (x - 0.3)).sum();
            finished(i, p, v)
        })
        .collect();
    let mut tpe = Searcher::new(&SearchConfig::Tpe(TpeConfig::default()), &space, 2);
    tpe.skip_to(u64::from(trials));
    let mut micros: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(tpe.propose(&space, &history, Mode::Min));
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_by(f64::total_cmp);
    let p = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
    println!("{:>7} {:>5} {:>12.0} {:>12.0}", trials, dims, p(0.5), p(0.99));
}

fn branin(p: &Params) -> f64 {
    let (x, y) = (p["x0"].as_f64().unwrap() * 15.0 - 5.0, p["x1"].as_f64().unwrap() * 15.0);
    let b = 5.1 / (4.0 * std::f64::consts::PI.powi(2));
    let c = 5.0 / std::f64::consts::PI;
    let t = 1.0 / (8.0 * std::f64::consts::PI);
    (y - b * x * x + c * x - 6.0).powi(2) + 10.0 * (1.0 - t) * x.cos() + 10.0
}

fn hartmann6(p: &Params) -> f64 {
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [0.1312, 0.1696, 0.5569, 0.0124, 0.8283, 0.5886],
        [0.2329, 0.4135, 0.8307, 0.3736, 0.1004, 0.9991],
        [0.2348, 0.1451, 0.3522, 0.2883, 0.3047, 0.6650],
        [0.4047, 0.8828, 0.8732, 0.5743, 0.1091, 0.0381],
    ];
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    let x: Vec<f64> = (0..6).map(|d| p[&format!("x{d}")].as_f64().unwrap()).collect();
    -(0..4).map(|i| ALPHA[i] * (-(0..6).map(|j| A[i][j] * (x[j] - P[i][j]).powi(2)).sum::<f64>()).exp()).sum::<f64>()
}

fn quality(name: &str, dims: usize, f: fn(&Params) -> f64, optimum: f64, trials: u32) {
    let space = space(dims);
    for (label, config) in [
        ("random", SearchConfig::default()),
        ("sobol", SearchConfig::Sobol(NoKeys {})),
        ("tpe", SearchConfig::Tpe(TpeConfig::default())),
    ] {
        let bests: Vec<f64> = (0..10)
            .map(|seed| {
                let mut searcher = Searcher::new(&config, &space, seed);
                let mut history: Vec<Trial> = Vec::new();
                for i in 0..trials {
                    let p = searcher.propose(&space, &history, Mode::Min).expect("a proposal");
                    let v = f(&p);
                    history.push(finished(i, p, v));
                }
                history.iter().filter_map(|s| s.best_metric).fold(f64::INFINITY, f64::min) - optimum
            })
            .collect();
        let mean = bests.iter().sum::<f64>() / bests.len() as f64;
        let (lo, hi) = bests.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        println!("{name:<10} {trials:>6} {label:<7} {mean:>10.4} {lo:>10.4} {hi:>10.4}");
    }
}

fn main() {
    let quick = std::env::var_os("GAUNTLET_BENCH_QUICK").is_some();
    println!("TPE proposal cost (microseconds), Optuna's defaults, finished trials as history");
    println!("{:>7} {:>5} {:>12} {:>12}", "trials", "dims", "median", "p99");
    for (trials, dims) in [(1_000, 5), (1_000, 40), (10_000, 5), (10_000, 40)] {
        proposal_cost(trials, dims, if quick || trials > 1_000 { 20 } else { 100 });
    }
    println!("\nbest value found minus the optimum, 10 seeds (mean, best, worst seed)");
    println!("{:<10} {:>6} {:<7} {:>10} {:>10} {:>10}", "function", "trials", "search", "mean", "min", "max");
    let trials = if quick { 40 } else { 100 };
    quality("branin", 2, branin, 0.397887, trials);
    quality("hartmann6", 6, hartmann6, -3.32237, trials);
}
