//! Engine overhead: how many no-op trials per second the supervision tree
//! runs, in process, without libtorch. A trial reports `--reports` epochs
//! (fewer when successive halving prunes it; 0 means one report, its final
//! value, as an Optuna objective returns one); every report makes the round
//! trip slot thread → leaderboard → scheduler → slot thread.
//!
//! The space is `scripts/compare`'s: uniform, log-uniform, int, choice.
//!
//!     cargo bench --bench engine_overhead                 (the table; or scripts/bench-engine)
//!     cargo bench --bench engine_overhead -- --trials 10000 --reports 10 --slots 2 --scheduler asha --csv
//!
//! `--csv` prints one line: trials,reports,slots,scheduler,seconds,trials_per_s,pruned.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use gauntlet::config::SchedulerConfig;
use gauntlet::schedule::{AshaConfig, FifoConfig};
use gauntlet::{Domain, Mode, ParamValue, SearchSpace, Sweep, TrainError, TrialContext, TrialStatus};

fn space() -> SearchSpace {
    SearchSpace::new()
        .with("lr", Domain::LogUniform { low: 1e-4, high: 1e-1 })
        .with("dropout", Domain::Uniform { low: 0.0, high: 0.5 })
        .with("units", Domain::Int { low: 16, high: 512, log: true })
        .with("optimizer", Domain::Choice(vec![ParamValue::Str("adam".into()), ParamValue::Str("sgd".into())]))
}

fn noop(ctx: &mut TrialContext) -> Result<(), TrainError> {
    let lr = ctx.float("lr")?;
    for epoch in ctx.first_epoch()..=ctx.max_epochs() {
        ctx.report(epoch, &[("score", lr * f64::from(epoch))])?;
    }
    Ok(())
}

struct Case {
    trials: u32,
    reports: u32,
    slots: u32,
    scheduler: SchedulerConfig,
}

struct Measured {
    seconds: f64,
    reports: u64,
    pruned: usize,
}

fn measure(case: &Case) -> Measured {
    let started = Instant::now();
    let summary = Sweep::new("bench", space(), noop)
        .metric("score", Mode::Max)
        .max_trials(case.trials)
        .max_epochs(case.reports.max(1))
        .concurrency(case.slots)
        .scheduler(case.scheduler.clone())
        .run_blocking()
        .expect("the sweep runs");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(summary.trials.len(), case.trials as usize);
    let reports = summary.trials.iter().map(|s| u64::from(s.epochs)).sum();
    Measured { seconds, reports, pruned: summary.count(TrialStatus::Pruned) }
}

fn scheduler(kind: &str) -> SchedulerConfig {
    match kind {
        "fifo" => SchedulerConfig::Fifo(FifoConfig {}),
        // Successive halving as Optuna's pruner does it: grace 1, factor 3.
        "asha" => SchedulerConfig::Asha(AshaConfig { grace_epochs: 1, reduction_factor: 3, promotion: false }),
        other => panic!("--scheduler takes fifo or asha, not {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let number = |flag: &str, default: u32| value(flag).map_or(default, |v| v.parse().expect("a number"));
    let trials = number("--trials", 10_000);
    if args.iter().any(|a| a == "--csv") {
        let kind = value("--scheduler").unwrap_or_else(|| "fifo".into());
        let case =
            Case { trials, reports: number("--reports", 0), slots: number("--slots", 1), scheduler: scheduler(&kind) };
        let m = measure(&case);
        println!(
            "{},{},{},{kind},{:.4},{:.1},{}",
            case.trials,
            case.reports,
            case.slots,
            m.seconds,
            f64::from(case.trials) / m.seconds,
            m.pruned
        );
        return;
    }
    println!("{trials} no-op trials, random search; 'reports' 0 is one final report");
    println!(
        "{:<10} {:>7} {:>5} {:>10} {:>12} {:>12} {:>8}",
        "scheduler", "reports", "slots", "seconds", "trials/s", "reports/s", "pruned"
    );
    for (kind, reports) in [("fifo", 0), ("fifo", 10), ("asha", 10)] {
        for slots in [1, 2, 4] {
            let case = Case { trials, reports, slots, scheduler: scheduler(kind) };
            let m = measure(&case);
            println!(
                "{:<10} {:>7} {:>5} {:>10.3} {:>12.0} {:>12.0} {:>8}",
                kind,
                reports,
                slots,
                m.seconds,
                f64::from(trials) / m.seconds,
                m.reports as f64 / m.seconds,
                m.pruned
            );
        }
    }
}
