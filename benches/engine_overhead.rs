//! Engine overhead: how many no-op trials per second the supervision tree
//! runs, in process, without libtorch. Each trial reports 10 epochs (fewer
//! when ASHA prunes it); every report makes the round trip slot thread →
//! leaderboard → scheduler → slot thread.
//!
//!     cargo bench --bench engine_overhead      (or scripts/bench-engine)
//!
//! Optional: GAUNTLET_BENCH_TRIALS (default 10000).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use gauntlet::config::SchedulerConfig;
use gauntlet::schedule::{AshaConfig, FifoConfig};
use gauntlet::{Domain, Mode, ParamValue, SearchSpace, Sweep, TrainError, TrialContext, TrialStatus};

fn space() -> SearchSpace {
    SearchSpace::new()
        .with("lr", Domain::LogUniform { low: 1e-4, high: 1e-1 })
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

fn main() {
    let trials: u32 = std::env::var("GAUNTLET_BENCH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    println!("{trials} no-op trials, random search, up to 10 reports each");
    println!(
        "{:<10} {:>5} {:>10} {:>12} {:>12} {:>8}",
        "scheduler", "slots", "seconds", "trials/s", "reports/s", "pruned"
    );
    let schedulers = [SchedulerConfig::Fifo(FifoConfig {}), SchedulerConfig::Asha(AshaConfig::default())];
    for scheduler in schedulers {
        for slots in [1, 2, 4] {
            let started = Instant::now();
            let summary = Sweep::new("bench", space(), noop)
                .metric("score", Mode::Max)
                .max_trials(trials)
                .max_epochs(10)
                .concurrency(slots)
                .scheduler(scheduler.clone())
                .run_blocking()
                .expect("the sweep runs");
            let secs = started.elapsed().as_secs_f64();
            let reports: u64 = summary.trials.iter().map(|s| u64::from(s.epochs)).sum();
            assert_eq!(summary.trials.len(), trials as usize);
            println!(
                "{:<10} {:>5} {:>10.3} {:>12.0} {:>12.0} {:>8}",
                scheduler.kind(),
                slots,
                secs,
                f64::from(trials) / secs,
                reports as f64 / secs,
                summary.count(TrialStatus::Pruned)
            );
        }
    }
}
