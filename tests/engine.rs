//! The library engine with trainables given as closures: supervision,
//! restarts, pruning, divergence, concurrency and interruption, without
//! libtorch in the loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gauntlet::config::{FaultConfig, SchedulerConfig};
use gauntlet::schedule::AshaConfig;
use gauntlet::{Domain, Mode, SearchSpace, Sweep, SweepEvent, TrainError, TrialContext, TrialStatus};

fn space() -> SearchSpace {
    SearchSpace::new().with("x", Domain::Uniform { low: 0.0, high: 1.0 })
}

fn fault(max_restarts: u32) -> FaultConfig {
    FaultConfig { max_restarts, checkpoint_every: 1, restart_backoff_ms: 5, ..FaultConfig::default() }
}

/// Reports `x` every epoch; `score` is the metric.
fn steady(ctx: &mut TrialContext) -> Result<(), TrainError> {
    let x = ctx.float("x")?;
    for epoch in ctx.first_epoch()..=ctx.max_epochs() {
        ctx.report(epoch, &[("score", x)])?;
    }
    Ok(())
}

#[test]
fn concurrency_is_a_hard_limit_and_is_used() {
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (c, p) = (current.clone(), peak.clone());
    let summary = Sweep::new("limit", space(), move |ctx: &mut TrialContext| {
        let now = c.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        c.fetch_sub(1, Ordering::SeqCst);
        ctx.report(1, &[("score", 0.5)])
    })
    .metric("score", Mode::Max)
    .max_trials(12)
    .max_epochs(1)
    .concurrency(3)
    .run_blocking()
    .unwrap();
    assert_eq!(summary.count(TrialStatus::Completed), 12);
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[test]
fn a_crashed_trial_restarts_from_its_checkpoint() {
    let resumed_at = Arc::new(Mutex::new(Vec::new()));
    let seen = resumed_at.clone();
    let summary = Sweep::new("resume", space(), move |ctx: &mut TrialContext| {
        if let Some(c) = ctx.resume() {
            let saved: u32 = std::fs::read_to_string(c.dir.join("epoch")).unwrap().parse().unwrap();
            seen.lock().unwrap().push((ctx.attempt(), c.epoch, saved));
        }
        for epoch in ctx.first_epoch()..=ctx.max_epochs() {
            if ctx.attempt() == 0 && epoch == 4 {
                panic!("boom at epoch 4");
            }
            ctx.report(epoch, &[("score", f64::from(epoch))])?;
            ctx.save_checkpoint(epoch, |dir| std::fs::write(dir.join("epoch"), epoch.to_string()))?;
        }
        Ok(())
    })
    .metric("score", Mode::Max)
    .max_trials(1)
    .max_epochs(6)
    .fault(fault(3))
    .run_blocking()
    .unwrap();
    let t = &summary.trials[0];
    assert_eq!(t.status, TrialStatus::Completed);
    assert_eq!((t.restarts, t.epochs), (1, 6));
    assert!(t.error.as_deref().unwrap().contains("boom at epoch 4"), "{:?}", t.error);
    assert_eq!(*resumed_at.lock().unwrap(), [(1, 3, 3)]);
}

#[test]
fn errors_are_restarted_then_failed_and_the_sweep_goes_on() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let summary = Sweep::new("fail", space(), move |ctx: &mut TrialContext| {
        if ctx.float("x")? < 0.5 {
            a.fetch_add(1, Ordering::SeqCst);
            return Err(TrainError::Failed("disk on fire".into()));
        }
        steady(ctx)
    })
    .metric("score", Mode::Max)
    .max_trials(10)
    .max_epochs(2)
    .fault(fault(2))
    .run_blocking()
    .unwrap();
    let failed: Vec<_> = summary.trials.iter().filter(|s| s.status == TrialStatus::Failed).collect();
    assert!(!failed.is_empty() && failed.len() < 10);
    assert_eq!(attempts.load(Ordering::SeqCst), failed.len() * 3, "1 attempt + 2 restarts each");
    for f in failed {
        assert_eq!(f.restarts, 2);
        assert!(f.error.as_deref().unwrap().starts_with("disk on fire"));
    }
    assert_eq!(summary.count(TrialStatus::Completed) + summary.count(TrialStatus::Failed), 10);
}

#[test]
fn nan_loss_is_diverged_and_not_restarted() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let summary = Sweep::new("nan", space(), move |ctx: &mut TrialContext| {
        r.fetch_add(1, Ordering::SeqCst);
        ctx.report(1, &[("score", 0.3), ("train_loss", 1.0)])?;
        ctx.report(2, &[("score", 0.3), ("train_loss", f64::NAN)])?;
        Ok(())
    })
    .metric("score", Mode::Max)
    .max_trials(1)
    .max_epochs(5)
    .fault(fault(3))
    .run_blocking()
    .unwrap();
    let t = &summary.trials[0];
    assert_eq!(t.status, TrialStatus::Diverged);
    assert!(t.error.as_deref().unwrap().contains("train_loss is NaN at epoch 2"), "{:?}", t.error);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn invalid_parameters_fail_without_restarts() {
    let summary = Sweep::new("invalid", space(), |ctx: &mut TrialContext| {
        ctx.int("layers")?; // not in the space
        Ok(())
    })
    .max_trials(1)
    .fault(fault(3))
    .run_blocking()
    .unwrap();
    let t = &summary.trials[0];
    assert_eq!((t.status, t.restarts), (TrialStatus::Failed, 0));
    assert!(t.error.as_deref().unwrap().contains("layers"));
}

#[test]
fn asha_prunes_poor_trials_within_one_epoch() {
    let epochs_run = Arc::new(Mutex::new(Vec::new()));
    let e = epochs_run.clone();
    let summary = Sweep::new("asha", space(), move |ctx: &mut TrialContext| {
        let x = ctx.float("x")?;
        let mut last = 0;
        let result = (|| {
            for epoch in ctx.first_epoch()..=ctx.max_epochs() {
                last = epoch;
                ctx.report(epoch, &[("loss", 1.0 - x)])?;
            }
            Ok(())
        })();
        e.lock().unwrap().push((ctx.id(), last));
        result
    })
    .metric("loss", Mode::Min)
    .max_trials(27)
    .max_epochs(9)
    .concurrency(1)
    .scheduler(SchedulerConfig::Asha(AshaConfig { grace_epochs: 1, reduction_factor: 3, promotion: false }))
    .run_blocking()
    .unwrap();
    let pruned = summary.count(TrialStatus::Pruned);
    assert!(pruned >= 9, "pruned only {pruned} of 27");
    for s in &summary.trials {
        let (_, ran) = epochs_run.lock().unwrap().iter().copied().find(|(id, _)| *id == s.id).unwrap();
        // The trial stopped right after the report that pruned it.
        assert_eq!(ran, s.epochs, "trial {} trained past its prune", s.id);
        if s.status == TrialStatus::Pruned {
            assert!([1, 3].contains(&s.epochs), "pruned at a rung: {}", s.epochs);
        }
    }
    // Minimising: the best trial has the smallest loss.
    let best = summary.best().unwrap();
    let min = summary.trials.iter().filter_map(|s| s.best_metric).fold(f64::MAX, f64::min);
    assert_eq!(best.best_metric, Some(min));
}

#[test]
fn interrupting_pauses_running_trials() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sweep = Sweep::new("stop", space(), |ctx: &mut TrialContext| {
        for epoch in ctx.first_epoch()..=ctx.max_epochs() {
            std::thread::sleep(Duration::from_millis(10));
            ctx.report(epoch, &[("score", 0.5)])?;
        }
        Ok(())
    })
    .metric("score", Mode::Max)
    .max_trials(50)
    .max_epochs(1000)
    .concurrency(2)
    .observer(move |e| ev.lock().unwrap().push(e.clone()));
    let summary = rt.block_on(async { sweep.run_until(tokio::time::sleep(Duration::from_millis(200))).await }).unwrap();
    assert!(summary.interrupted);
    assert_eq!(summary.trials.len(), 2, "no new trials after the interrupt");
    assert!(summary.trials.iter().all(|s| s.status == TrialStatus::Paused && s.epochs > 0));
    let ended = events.lock().unwrap().iter().filter(|e| matches!(e, SweepEvent::Ended { .. })).count();
    assert_eq!(ended, 2);
}
