//! libtorch's CUDA half is not linked but opened at run time (src/cuda.rs):
//! a process maps it only where a GPU can use it, or when `GAUNTLET_CUDA=1`
//! asks, never with `GAUNTLET_CUDA=0`; and a sweep trains the same with it
//! loaded, in its coordinator and in the workers forked from it.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn gpu_present() -> bool {
    ["/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"].iter().any(|p| Path::new(p).exists())
}

/// The maps of a `gauntlet worker` that waits for a coordinator that is not
/// there, once its `main` is past loading (it has started a second thread).
fn worker_maps(setting: Option<&str>) -> String {
    let mut cmd = gauntlet();
    cmd.args(["worker", "--join", "127.0.0.1:9", "--connect-timeout", "20", "--reconnect-for", "0"])
        .env("GAUNTLET_SECRET", "cuda-loading-test")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match setting {
        Some(v) => cmd.env("GAUNTLET_CUDA", v),
        None => cmd.env_remove("GAUNTLET_CUDA"),
    };
    let child = Running(cmd.spawn().expect("the gauntlet binary starts"));
    let proc = format!("/proc/{}", child.0.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = std::fs::read_to_string(format!("{proc}/status")).unwrap_or_default();
        let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")).map(|n| n.trim().parse::<u32>().unwrap());
        if threads.is_some_and(|n| n > 1) {
            return std::fs::read_to_string(format!("{proc}/maps")).expect("the worker's maps are readable");
        }
        assert!(Instant::now() < deadline, "the worker never started a thread: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `libtorch_cuda.so` beside the `libtorch_cpu.so` a process mapped, if this libtorch has one.
fn cuda_beside_cpu(maps: &str) -> bool {
    let cpu = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .expect("the binary maps libtorch_cpu.so");
    Path::new(cpu).with_file_name("libtorch_cuda.so").exists()
}

#[test]
fn libtorch_cuda_is_mapped_only_where_a_gpu_can_use_it_or_when_asked() {
    let default = worker_maps(None);
    let has_cuda_build = cuda_beside_cpu(&default);
    assert_eq!(
        default.contains("/libtorch_cuda.so"),
        gpu_present() && has_cuda_build,
        "without GAUNTLET_CUDA, libtorch_cuda is loaded exactly where an NVIDIA device is (present: {})",
        gpu_present()
    );
    assert!(!worker_maps(Some("0")).contains("/libtorch_cuda.so"), "GAUNTLET_CUDA=0 never loads it");
    let forced = worker_maps(Some("1"));
    assert_eq!(forced.contains("/libtorch_cuda.so"), has_cuda_build, "GAUNTLET_CUDA=1 loads it where it exists");
    if has_cuda_build {
        // Loaded, it brings the CUDA runtime with it: what every process paid for before.
        assert!(forced.contains("libcudart"), "libtorch_cuda's own dependencies come with it");
    }
}

#[test]
fn a_sweep_trains_the_same_with_libtorch_cuda_loaded_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let config = synthetic_config(
        "cuda-loaded",
        &format!("max_trials = 3\nconcurrency = 2\n{SYNTHETIC_DATA}{MLP_MODEL}\n[train]\nmax_epochs = 2\nlr = 0.01\n"),
    );
    let mut summaries = Vec::new();
    for (i, setting) in ["1", "0"].into_iter().enumerate() {
        let cfg = write(tmp.path(), &format!("exp-{i}.toml"), &config);
        let out = tmp.path().join(format!("run-{setting}"));
        let o = gauntlet()
            .args(["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--json"])
            .env("GAUNTLET_CUDA", setting)
            .output()
            .unwrap();
        assert!(o.status.success(), "GAUNTLET_CUDA={setting}: run failed ({:?}):\n{}", o.status, stderr(&o));
        let rows = results(&out);
        assert_eq!(rows.len(), 6, "3 trials of 2 epochs each report twice: {rows:?}");
        assert!(rows.iter().all(|r| r["val_accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a))));
        let mut by_trial: Vec<(u64, u64, String)> = rows
            .iter()
            .map(|r| (r["trial"].as_u64().unwrap(), r["epoch"].as_u64().unwrap(), format!("{:.6}", r["val_accuracy"])))
            .collect();
        by_trial.sort();
        summaries.push(by_trial);
    }
    if !gpu_present() {
        // Both trained on the CPU with the same seeds: loading the CUDA half changes nothing there.
        assert_eq!(summaries[0], summaries[1], "the same sweep with and without libtorch_cuda loaded");
    }
}
