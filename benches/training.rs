//! Training throughput of Gauntlet's libtorch trainables on Fashion-MNIST:
//! one trial of the built-in MLP and CNN, trained through a real sweep (slot
//! thread, reports, checkpoints), timed between epoch reports.
//! `scripts/bench-vs-pytorch` runs it next to the same models in PyTorch
//! eager (`scripts/bench_pytorch.py`) and prints the ratio.
//!
//!     cargo bench --bench training
//!
//! Environment: GAUNTLET_BENCH_THREADS (1), GAUNTLET_BENCH_BATCH (128),
//! GAUNTLET_BENCH_SAMPLES (20000 images, 10% held out), GAUNTLET_BENCH_EPOCHS
//! (3: the first is warm-up, the rest are timed). Prints one line per model:
//! `model samples_per_second`.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gauntlet::supervision::SweepEvent;
use gauntlet::{Config, Sweep};

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The models, as `[model]` sections; `scripts/bench_pytorch.py` builds the same.
const MODELS: &[(&str, &str)] = &[
    ("mlp", "kind = \"mlp\"\nhidden_layers = 2\nhidden_units = 256\ndropout = 0.0"),
    (
        "cnn",
        "kind = \"cnn\"\nconv_blocks = 2\nchannels = 16\nkernel_size = 3\npooling = \"max\"\nbatch_norm = true\n\
         dropout = 0.0\nhidden_layers = 1\nhidden_units = 128",
    ),
];

fn main() {
    let (threads, batch, samples, epochs) = (
        env("GAUNTLET_BENCH_THREADS", 1),
        env("GAUNTLET_BENCH_BATCH", 128),
        env("GAUNTLET_BENCH_SAMPLES", 20_000),
        env("GAUNTLET_BENCH_EPOCHS", 3).max(2),
    );
    for (name, model) in MODELS {
        let text = format!(
            "[experiment]\nname = \"bench\"\nmax_trials = 1\nconcurrency = 1\nthreads_per_trial = {threads}\n\
             [data]\nsource = \"fashion-mnist\"\nmax_samples = {samples}\nvalidation_fraction = 0.1\n\
             [model]\n{model}\n[train]\noptimizer = \"adam\"\nlr = 0.001\nbatch_size = {batch}\nmax_epochs = {epochs}\n"
        );
        let config = Config::parse(&text, gauntlet::config::ConfigFormat::Toml, Path::new("bench.toml"))
            .expect("the bench config is valid");
        config.check_files(Path::new("bench.toml")).expect("Fashion-MNIST is installed (scripts/setup)");
        let rows = gauntlet::data::Dataset::load(&config).expect("Fashion-MNIST loads").train.rows();
        let trainable = config.model.build(&config).expect("the trainable builds");
        let stamps = Arc::new(Mutex::new(Vec::new()));
        let seen = stamps.clone();
        let summary = Sweep::from_config_shared(&config, trainable)
            .observer(move |e| {
                if let SweepEvent::Reported { epoch, .. } = e {
                    seen.lock().unwrap().push((*epoch, Instant::now()));
                }
            })
            .run_blocking()
            .expect("the sweep runs");
        let stamps = stamps.lock().unwrap();
        let (first, last) = (stamps[0].1, stamps[stamps.len() - 1].1);
        let timed = (stamps.len() - 1) as f64;
        let rate = rows as f64 * timed / (last - first).as_secs_f64();
        let accuracy = summary.best().and_then(|b| b.best_metric).unwrap_or(f64::NAN);
        println!(
            "{name} {rate:.0} (threads {threads}, batch {batch}, {rows} training images, val_accuracy {accuracy:.3})"
        );
    }
}
