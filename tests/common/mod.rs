//! Helpers shared by the CLI tests: the real binary, real files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A child process that is killed (SIGKILL) when dropped, so that a failing
/// test leaves no sweep running behind it.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `gauntlet run CONFIG --out OUT` in the background (stdout and
/// stderr piped), killed when the guard drops.
pub fn spawn_run(config: &Path, out: &Path) -> Running {
    let child = gauntlet()
        .args(["run", config.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the gauntlet binary starts");
    Running(child)
}

/// Lines in `OUT/results.jsonl` so far.
pub fn reported(out: &Path) -> usize {
    std::fs::read_to_string(out.join("results.jsonl")).map_or(0, |s| s.lines().count())
}

pub fn gauntlet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gauntlet"))
}

/// Runs the binary in `cwd` with `args`.
pub fn run_in(cwd: &Path, args: &[&str]) -> Output {
    gauntlet().current_dir(cwd).args(args).output().expect("the gauntlet binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A synthetic-data experiment; `extra` is appended (later keys override
/// earlier sections only when they are in new sections, so pass whole sections).
pub fn synthetic_config(name: &str, body: &str) -> String {
    format!(
        r#"
[experiment]
name = "{name}"
seed = 3
{body}
"#
    )
}

pub const SYNTHETIC_DATA: &str = r#"
[data]
source = "synthetic"
samples = 1200
features = 12
classes = 3
validation_fraction = 0.25
"#;

pub const MLP_MODEL: &str = r#"
[model]
kind = "mlp"
hidden_layers = { int = [1, 2] }
hidden_units = { int = [8, 64], log = true }
dropout = { uniform = [0.0, 0.2] }
"#;

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `gauntlet status DIR --json`, parsed.
pub fn status_json(dir: &Path) -> serde_json::Value {
    let o = gauntlet().args(["status", dir.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(o.status.success(), "status failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("status --json prints JSON")
}

/// Every line of `results.jsonl`.
pub fn results(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each results line is JSON"))
        .collect()
}

/// Runs a config through `gauntlet run`, asserting success; returns the run
/// dir (a new one each call: `run-1`, `run-2`, ...).
pub fn run_ok(tmp: &Path, config: &str) -> PathBuf {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let cfg = write(tmp, &format!("exp-{n}.toml"), config);
    let out = tmp.join(format!("run-{n}"));
    let o = run_in(tmp, &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "run failed ({:?}):\n{}\n{}", o.status, stdout(&o), stderr(&o));
    out
}

/// An IDX file of unsigned bytes.
pub fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

/// An `.npy` file: version 1 header, C order.
pub fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

/// Little-endian bytes of float32 values (an `.npy` payload).
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
