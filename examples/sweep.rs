//! A sweep written entirely in Rust: a search space, a trainable closure
//! that trains a tch model and reports every epoch, ASHA pruning, and the
//! leaderboard at the end.
//!
//! ```text
//! . scripts/env.sh && cargo run --release --example sweep
//! ```
//! The closure runs on Gauntlet's slot threads, one trial each. It resumes
//! from its last checkpoint when Gauntlet restarts it after a crash, so it
//! saves one (`ctx.save_checkpoint`) after each reported epoch.

use std::sync::Arc;

use gauntlet::config::SchedulerConfig;
use gauntlet::schedule::AshaConfig;
use gauntlet::{Domain, Mode, ParamValue, SearchSpace, Sweep, TrainError, TrialContext};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Two interleaved spirals, 2 classes: learnable, but not by a straight line.
fn spirals(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let t = Tensor::rand([n], (Kind::Float, Device::Cpu)) * 3.0 * std::f64::consts::PI;
    let label = Tensor::randint(2, [n], (Kind::Int64, Device::Cpu));
    let sign = label.to_kind(Kind::Float) * 2.0 - 1.0;
    let noise = Tensor::randn([n, 2], (Kind::Float, Device::Cpu)) * 0.15;
    let x = Tensor::stack(&[&t.cos() * &t * &sign, &t.sin() * &t * &sign], 1) / 5.0 + noise;
    (x, label)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The data is built once and shared by every trial (tensors are cheap to share).
    let (train_x, train_y) = spirals(2000, 1);
    let (val_x, val_y) = spirals(500, 2);
    let data = Arc::new(std::sync::Mutex::new((train_x, train_y, val_x, val_y)));

    let space = SearchSpace::new()
        .with("lr", Domain::LogUniform { low: 1e-3, high: 1e-1 })
        .with("hidden", Domain::Choice(vec![ParamValue::Int(16), ParamValue::Int(64), ParamValue::Int(128)]))
        .with("layers", Domain::Int { low: 1, high: 3, log: false });

    let trainable = move |ctx: &mut TrialContext| -> Result<(), TrainError> {
        let (lr, hidden, layers) = (ctx.float("lr")?, ctx.int("hidden")?, ctx.int("layers")?);
        let (train_x, train_y, val_x, val_y) = {
            let d = data.lock().map_err(|_| TrainError::Failed("data lock poisoned".into()))?;
            (d.0.shallow_clone(), d.1.shallow_clone(), d.2.shallow_clone(), d.3.shallow_clone())
        };
        // The trial's own initial weights. libtorch's generator is process-wide,
        // so with concurrency > 1 the draws of concurrent trials interleave: seed
        // your own RNG (as the built-in models do) where exact replay matters.
        tch::manual_seed(ctx.seed() as i64);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut net = nn::seq();
        let mut width = 2;
        for l in 0..layers {
            net = net.add(nn::linear(vs.root() / l, width, hidden, Default::default())).add_fn(|x| x.relu());
            width = hidden;
        }
        let net = net.add(nn::linear(vs.root() / "out", width, 2, Default::default()));
        let mut opt = nn::Adam::default().build(&vs, lr).map_err(|e| TrainError::Failed(e.to_string()))?;
        if let Some(ckpt) = ctx.resume() {
            vs.load(ckpt.dir.join("model.safetensors")).map_err(|e| TrainError::Failed(e.to_string()))?;
        }
        for epoch in ctx.first_epoch()..=ctx.max_epochs() {
            for (xs, ys) in tch::data::Iter2::new(&train_x, &train_y, 64).shuffle() {
                opt.backward_step(&net.forward(&xs).cross_entropy_for_logits(&ys));
            }
            let accuracy = tch::no_grad(|| net.forward(&val_x).accuracy_for_logits(&val_y).double_value(&[]));
            // `?` stops the trial when ASHA prunes it or its budget is spent.
            let verdict = ctx.report(epoch, &[("val_accuracy", accuracy)]);
            if verdict.is_ok() || verdict == Err(TrainError::Stopped(gauntlet::Stop::Completed)) {
                ctx.save_checkpoint(epoch, |dir| {
                    vs.save(dir.join("model.safetensors")).map_err(std::io::Error::other)
                })?;
            }
            verdict?;
        }
        Ok(())
    };

    let summary = Sweep::new("spirals", space, trainable)
        .metric("val_accuracy", Mode::Max)
        .seed(7)
        .max_trials(16)
        .concurrency(2)
        .max_epochs(12)
        .scheduler(SchedulerConfig::Asha(AshaConfig { grace_epochs: 2, reduction_factor: 3, promotion: false }))
        .run_blocking()?;

    println!("{:<5} {:<10} {:>12} {:>7}  params", "rank", "status", "val_accuracy", "epochs");
    for (rank, t) in summary.ranked().iter().enumerate() {
        let params: Vec<String> = t.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let metric = t.best_metric.map_or("-".into(), |m| format!("{m:.4}"));
        println!(
            "{:<5} {:<10} {:>12} {:>7}  {}",
            rank + 1,
            format!("{:?}", t.status),
            metric,
            t.epochs,
            params.join(" ")
        );
    }
    if let Some(best) = summary.best() {
        println!("best: trial {} with val_accuracy {:.4}", best.id, best.best_metric.unwrap_or(f64::NAN));
    }
    Ok(())
}
