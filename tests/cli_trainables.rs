//! Trainables beyond the built-in networks, through the CLI: a TorchScript
//! module exported by the venv's PyTorch, and programs of `kind = "command"`
//! that crash, resume from their checkpoint directory, and get pruned.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The venv's Python, which has PyTorch (`scripts/setup` installs it).
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("GAUNTLET_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/gauntlet/venv"));
    venv.join("bin/python")
}

fn export(out: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/export_torchscript.py");
    let o = Command::new(venv_python())
        .arg(script)
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("the venv's python runs (scripts/setup installs it)");
    assert!(o.status.success(), "export failed: {}", stderr(&o));
}

fn torchscript_config(module: &Path) -> String {
    synthetic_config(
        "ts",
        &format!(
            r#"
max_trials = 4
concurrency = 2
{SYNTHETIC_DATA}
[model]
kind = "torchscript"
module = "{}"
[train]
optimizer = {{ choice = ["adam", "sgd"] }}
lr = {{ loguniform = [0.003, 0.03] }}
batch_size = 32
max_epochs = 5
[fault]
max_restarts = 10
[chaos]
panic_probability = 0.15
"#,
            module.display()
        ),
    )
}

#[test]
fn torchscript_module_trains_resumes_and_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let module = tmp.path().join("mlp.pt");
    export(&module, &["--arch", "mlp", "--features", "12", "--hidden", "32", "--classes", "3"]);
    let dir = run_ok(tmp.path(), &torchscript_config(&module));

    let status = status_json(&dir);
    let trials = status["trials"].as_array().unwrap();
    assert!(trials.iter().all(|t| t["status"] == "completed" && t["epochs"] == 5), "{status}");
    let restarts: u64 = trials.iter().map(|t| t["restarts"].as_u64().unwrap()).sum();
    assert!(restarts > 0, "chaos must have crashed some attempt (restored from module.pt): {status}");
    let best = status["trials"][0]["best_metric"].as_f64().unwrap_or_default();
    assert!(best > 0.6, "3 learnable classes: {status}");
    // Restarted attempts continue from the checkpoint epoch: each epoch is reported once per attempt history.
    for t in trials {
        let id = t["id"].as_u64().unwrap();
        let mut epochs: Vec<u64> =
            results(&dir).iter().filter(|r| r["trial"] == id).map(|r| r["epoch"].as_u64().unwrap()).collect();
        epochs.dedup();
        assert_eq!(*epochs.last().unwrap(), 5, "trial {id}: {epochs:?}");
    }

    // best/ holds the module: gauntlet predict and torch.jit.load agree on it.
    let best_dir = dir.join("best");
    assert!(best_dir.join("module.pt").is_file());
    let rows: Vec<f32> = (0..5 * 12).map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0).collect();
    let input = tmp.path().join("rows.npy");
    std::fs::write(&input, npy("<f4", "(5, 12)", &f32_bytes(&rows))).unwrap();
    let o = run_in(tmp.path(), &["predict", "--model", best_dir.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours: Vec<String> = stdout(&o).lines().skip(1).map(|l| l.split(',').nth(1).unwrap().to_owned()).collect();
    let py = format!(
        "import torch, json\nm = torch.jit.load('{}')\nm.eval()\nx = torch.tensor(json.loads('{}')).view(5, 12)\n\
         print(' '.join(str(int(c)) for c in m(x).argmax(1)))",
        best_dir.join("module.pt").display(),
        serde_json::to_string(&rows).unwrap()
    );
    let o = Command::new(venv_python()).args(["-c", &py]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let theirs: Vec<String> = stdout(&o).split_whitespace().map(str::to_owned).collect();
    assert_eq!(ours, theirs, "gauntlet predict and PyTorch disagree on the best module");
}

#[test]
fn torchscript_module_of_the_wrong_shape_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let module = tmp.path().join("five.pt");
    export(&module, &["--arch", "mlp", "--features", "12", "--classes", "5"]);
    let cfg = write(tmp.path(), "ts.toml", &torchscript_config(&module));
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", "out"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("five.pt") && err.contains("[2, 3]"), "names the file and the expected shape: {err}");

    let missing = torchscript_config(&tmp.path().join("nope.pt"));
    let cfg = write(tmp.path(), "missing.toml", &missing);
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", "out"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("model.module"), "{}", stderr(&o));
}

/// A program that checks its parameters arrived both ways, resumes from its
/// checkpoint directory, crashes once (attempt 0, in epoch 3, so epoch 2's
/// checkpoint is the last) and reports `score`.
const CRASH_ONCE: &str = r#"
import json, os, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
params = json.load(open(os.environ["GAUNTLET_PARAMS"]))
if float(args["--lr"]) != params["lr"] or int(args["--width"]) != params["width"]:
    sys.exit(f"parameters differ: {args} {params}")
ckpt = os.path.join(os.environ["GAUNTLET_CHECKPOINT_DIR"], "state.json")
first = 1
if os.path.exists(ckpt):
    first = json.load(open(ckpt))["epoch"] + 1
    print(f"resuming after epoch {first - 1}")
elif os.environ["GAUNTLET_ATTEMPT"] != "0":
    sys.exit("restarted without a checkpoint")
print("starting at epoch", first, file=sys.stderr)
for epoch in range(first, int(os.environ["GAUNTLET_MAX_EPOCHS"]) + 1):
    time.sleep(0.05)
    if epoch == 3 and os.environ["GAUNTLET_ATTEMPT"] == "0":
        print("crashing on purpose in epoch 3", file=sys.stderr)
        sys.exit(3)
    with open(ckpt + ".tmp", "w") as f:
        json.dump({"epoch": epoch}, f)
    os.replace(ckpt + ".tmp", ckpt)
    print(json.dumps({"epoch": epoch, "score": params["lr"] * epoch}), flush=True)
"#;

#[test]
fn command_trial_crashes_once_and_resumes_from_its_checkpoint_dir() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "crash_once.py", CRASH_ONCE);
    let dir = run_ok(
        tmp.path(),
        r#"
[experiment]
name = "cmd"
metric = "score"
max_trials = 2
concurrency = 2
[model]
kind = "command"
command = "python3 crash_once.py"
width = { choice = [16, 32] }
[train]
lr = { uniform = [0.1, 1.0] }
max_epochs = 5
"#,
    );
    let status = status_json(&dir);
    let trials = status["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    for t in trials {
        assert_eq!(t["status"], "completed", "{t}");
        assert_eq!(t["restarts"], 1, "{t}");
        assert_eq!(t["epochs"], 5, "{t}");
        let id = t["id"].as_u64().unwrap();
        let epochs: Vec<(u64, u64)> = results(&dir)
            .iter()
            .filter(|r| r["trial"] == id)
            .map(|r| (r["attempt"].as_u64().unwrap(), r["epoch"].as_u64().unwrap()))
            .collect();
        assert_eq!(epochs, [(0, 1), (0, 2), (1, 3), (1, 4), (1, 5)], "trial {id} resumed after epoch 2");
        let log = std::fs::read_to_string(dir.join(format!("trials/{id}/output.log"))).unwrap();
        assert!(log.contains("crashing on purpose in epoch 3"), "stderr goes to the trial log: {log}");
        assert!(log.contains("resuming after epoch 2"), "other stdout goes to the trial log: {log}");
    }
    let best: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("best/program/state.json")).unwrap()).unwrap();
    assert_eq!(best["epoch"], 5, "best/ holds the program's last checkpoint, under program/");
    let journal = std::fs::read_to_string(dir.join("gauntlet.log")).unwrap_or_default();
    assert!(journal.contains("exited with code 3"), "the crash is explained in the log");
}

/// Reports a score equal to its `lr` each epoch, slowly; ignores SIGTERM
/// (but notes it), so a stop has to end in SIGKILL.
const STUBBORN: &str = r#"
import json, os, signal, sys, time
lr = json.load(open(os.environ["GAUNTLET_PARAMS"]))["lr"]
trial = os.environ["GAUNTLET_TRIAL"]
open(f"pids/{trial}", "w").write(str(os.getpid()))
def noted(signum, frame):
    open(f"pids/{trial}.term", "w").write("SIGTERM")
signal.signal(signal.SIGTERM, noted)
for epoch in range(1, int(os.environ["GAUNTLET_MAX_EPOCHS"]) + 1):
    time.sleep(0.3)
    print(json.dumps({"epoch": epoch, "score": lr}), flush=True)
"#;

#[test]
fn pruned_command_gets_sigterm_then_sigkill_and_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "stubborn.py", STUBBORN);
    std::fs::create_dir(tmp.path().join("pids")).unwrap();
    let dir = run_ok(
        tmp.path(),
        r#"
[experiment]
name = "prune"
metric = "score"
max_trials = 6
concurrency = 3
[model]
kind = "command"
command = "python3 stubborn.py"
grace_seconds = 0.5
[train]
lr = { choice = [0.9, 0.1, 0.2, 0.8, 0.05, 0.3] }
max_epochs = 6
[search]
algorithm = "grid"
[scheduler]
kind = "asha"
grace_epochs = 1
reduction_factor = 2
"#,
    );
    let status = status_json(&dir);
    let trials = status["trials"].as_array().unwrap();
    let pruned: Vec<u64> =
        trials.iter().filter(|t| t["status"] == "pruned").map(|t| t["id"].as_u64().unwrap()).collect();
    assert!(!pruned.is_empty(), "ASHA pruned the low scores: {status}");
    for t in trials {
        let id = t["id"].as_u64().unwrap();
        let pid: i32 = std::fs::read_to_string(tmp.path().join(format!("pids/{id}"))).unwrap().parse().unwrap();
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "trial {id}'s program (pid {pid}) is still running");
        let termed = tmp.path().join(format!("pids/{id}.term")).exists();
        if pruned.contains(&id) {
            assert!(termed, "pruned trial {id} got SIGTERM first");
            let epochs = t["epochs"].as_u64().unwrap();
            assert!(epochs < 6, "pruned trial {id} stopped early: {t}");
        }
    }
}

#[test]
fn a_program_reporting_an_epoch_past_its_budget_fails_as_invalid_and_the_sweep_goes_on() {
    // Epoch 4,000,000,000 (a step counter, say) made the median rule size a
    // table by it: the coordinator aborted, and so did its resume.
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "steps.py",
        "import json\nprint(json.dumps({\"epoch\": 1, \"val_loss\": 0.5}), flush=True)\n\
         print(json.dumps({\"epoch\": 4000000000, \"val_loss\": 0.4}), flush=True)\n",
    );
    let cfg = write(
        tmp.path(),
        "steps.toml",
        "[experiment]\nname = \"steps\"\nmetric = \"val_loss\"\nmode = \"min\"\nmax_trials = 2\nconcurrency = 1\n\
         [model]\nkind = \"command\"\ncommand = \"python3 steps.py\"\nx = { uniform = [0.0, 1.0] }\n\
         [train]\nmax_epochs = 5\n[scheduler]\nkind = \"median\"\n",
    );
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", "out", "--json"]);
    assert_eq!(o.status.code(), Some(4), "every trial failed, nothing aborted: {}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let error = summary["failures"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("reported epoch 4000000000") && error.contains("max_epochs = 5"), "{summary}");
    for t in status_json(&tmp.path().join("out"))["trials"].as_array().unwrap() {
        assert_eq!(
            (t["status"].as_str(), t["restarts"].as_u64(), t["epochs"].as_u64()),
            (Some("failed"), Some(0), Some(1)),
            "{t}"
        );
    }
}

#[test]
fn programs_that_close_stdout_leave_a_printer_behind_mention_nan_or_misnumber_an_epoch_end_as_they_should() {
    // Before: a program that closed stdout and then wrote 2 MB to stderr
    // blocked on the full pipe for ever, the trial `running`; one that left
    // a process of its own session printing kept its trial running as long
    // as that printed; "NaN" inside a string hid a diverged report; an epoch
    // of 2.5 made the report a log line. And every program saw the
    // cluster's secret in its environment.
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "edge.py",
        r#"import json, os, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
mode = args["--mode"]
leaked = 1.0 if ("GAUNTLET_SECRET" in os.environ or "GAUNTLET_TOKEN" in os.environ) else 0.0
def report(**kw):
    print(json.dumps(kw), flush=True)
if mode == "closeout":
    report(epoch=1, loss=0.5, leaked=leaked)
    os.close(1)
    for i in range(20000):
        sys.stderr.write("line %d %s\n" % (i, "x" * 100))
    sys.stderr.write("the last stderr line\n")
    sys.stderr.flush()
elif mode == "printer":
    report(epoch=1, loss=0.6, leaked=leaked)
    if os.fork() == 0:
        os.setsid()
        with open("printer.pid", "w") as f:
            f.write(str(os.getpid()))
        for i in range(1200):
            print("still here", flush=True)
            time.sleep(0.05)
        os._exit(0)
elif mode == "nan":
    report(epoch=1, loss=float("nan"), note="loss became NaN")
elif mode == "badepoch":
    report(epoch=1, loss=0.7)
    report(epoch=2.5, loss=0.4)
"#,
    );
    write(
        tmp.path(),
        "edge.toml",
        "[experiment]\nname = \"edge\"\nmetric = \"loss\"\nmode = \"min\"\nmax_trials = 4\nconcurrency = 2\n\
         [model]\nkind = \"command\"\ncommand = \"python3 edge.py\"\ngrace_seconds = 1\n\
         mode = { choice = [\"closeout\", \"printer\", \"nan\", \"badepoch\"] }\n\
         [train]\nmax_epochs = 3\n[search]\nalgorithm = \"grid\"\n",
    );
    let o = std::process::Command::new("timeout")
        // A config named without its directory runs in ".": its parent is "" (refused as gone before).
        .args(["120", env!("CARGO_BIN_EXE_gauntlet"), "run", "edge.toml", "--out", "out", "--json"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    if let Ok(pid) = std::fs::read_to_string(tmp.path().join("printer.pid")) {
        // SAFETY: plain syscall on the test's own grandchild (its own session).
        unsafe { libc::kill(pid.trim().parse().unwrap_or(0), libc::SIGKILL) };
    }
    assert_ne!(o.status.code(), Some(124), "the run never ended: {}", stderr(&o));
    let out = tmp.path().join("out");
    let trials = status_json(&out)["trials"].as_array().unwrap().clone();
    let by_mode = |mode: &str| {
        trials
            .iter()
            .find(|t| t["params"]["mode"] == mode)
            .unwrap_or_else(|| panic!("no {mode} trial: {trials:?}"))
            .clone()
    };
    for mode in ["closeout", "printer"] {
        assert_eq!(by_mode(mode)["status"], "completed", "{mode}: {trials:?}");
    }
    assert_eq!(by_mode("nan")["status"], "diverged", "{trials:?}");
    let bad = by_mode("badepoch");
    assert_eq!(bad["status"], "failed", "{bad}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let failure =
        summary["failures"].as_array().unwrap().iter().find(|f| f["first_trial"] == bad["id"]).unwrap().clone();
    assert!(failure["error"].as_str().unwrap().contains("`epoch` is 2.5: expected a whole number"), "{failure}");
    // Every line of the closed-stdout program's stderr reached its log.
    let id = by_mode("closeout")["id"].as_u64().unwrap();
    let log = std::fs::read_to_string(out.join(format!("trials/{id}/output.log"))).unwrap_or_default();
    assert!(log.contains("line 19999 ") && log.contains("the last stderr line"), "{} bytes", log.len());
    for r in results(&out).iter().filter(|r| r.get("leaked").is_some()) {
        assert_eq!(r["leaked"], 0.0, "a program saw the secret: {r}");
    }
}

#[test]
fn a_sweep_in_which_no_trial_reports_the_metric_fails_saying_so() {
    // Before: exit 0, "2 completed", and an empty table.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "loss.py", "import json\nprint(json.dumps({\"epoch\": 1, \"loss\": 0.5}), flush=True)\n");
    let cfg = write(
        tmp.path(),
        "loss.toml",
        "[experiment]\nname = \"loss\"\nmetric = \"acc\"\nmax_trials = 2\nconcurrency = 1\n\
         [model]\nkind = \"command\"\ncommand = \"python3 loss.py\"\nx = { uniform = [0.0, 1.0] }\n\
         [train]\nmax_epochs = 1\n",
    );
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", "out"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("none reported acc"), "{}", stderr(&o));
}
