//! Hostile input keeps within bounds and says why: data files that declare
//! sizes they cannot hold, archive entries that inflate past their size,
//! malformed `.npy` headers, labels far out of range, networks too large to
//! train, trial programs that print without end, run directories that
//! cannot be, JSON configs, and sweeps whose every trial fails.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;

/// `gauntlet run CONFIG --out DIR` in `dir`.
fn run(dir: &Path, config: &Path, extra: &[&str]) -> std::process::Output {
    let out = dir.join("run");
    let mut args = vec!["run", config.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_in(dir, &args)
}

fn assert_usage_error(o: &std::process::Output, phrases: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2: {err}");
    for p in phrases {
        assert!(err.contains(p), "expected `{p}` in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn data_config(name: &str, data: &str) -> String {
    format!(
        "[experiment]\nname = \"{name}\"\nmax_trials = 1\n[data]\n{data}\n[model]\nkind = \"mlp\"\n[train]\nmax_epochs = 1\n"
    )
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_files_that_declare_more_than_they_hold_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "y.idx", "");
    std::fs::write(tmp.path().join("y.idx"), idx(&[4], &[0, 1, 0, 1])).unwrap();
    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        ("dims.idx", idx(&[60000, 60000, 60000], &[0; 8]), &["dims.idx at byte 4", "more than 1073741824 values"]),
        ("short.idx", idx(&[40000, 20000], &[0; 8]), &["short.idx at byte 12", "the file has 8 data bytes"]),
        ("bomb.idx.gz", gz(&idx(&[4, 2], &vec![7; 8 << 20])), &["bomb.idx.gz at byte 20", "found more"]),
    ];
    for (name, bytes, phrases) in cases {
        std::fs::write(tmp.path().join(name), bytes).unwrap();
        let cfg = write(
            tmp.path(),
            "exp.toml",
            &data_config("idx", &format!("source = \"idx\"\nx = \"{name}\"\ny = \"y.idx\"")),
        );
        assert_usage_error(&run(tmp.path(), &cfg, &[]), phrases);
        assert!(!tmp.path().join("run").exists(), "no run directory for bad data");
    }
}

#[test]
fn malformed_npy_headers_and_inflating_npz_entries_name_the_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("y.npy"), npy("<i8", "(2,)", &[0u8; 16])).unwrap();
    let header = |h: &str| {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&[0; 8]);
        b
    };
    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        (
            "open.npy",
            header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1)"),
            &["open.npy at byte 66", "not closed"],
        ),
        (
            "nodescr.npy",
            header("{'fortran_order': False, 'shape': (2, 1), }"),
            &["nodescr.npy at byte 10", "no 'descr'"],
        ),
        (
            "noorder.npy",
            header("{'descr': '<f4', 'shape': (2, 1), }"),
            &["noorder.npy at byte 10", "no 'fortran_order'"],
        ),
    ];
    for (name, bytes, phrases) in cases {
        std::fs::write(tmp.path().join(name), bytes).unwrap();
        let cfg = write(
            tmp.path(),
            "exp.toml",
            &data_config("npy", &format!("source = \"npy\"\nx = \"{name}\"\ny = \"y.npy\"")),
        );
        assert_usage_error(&run(tmp.path(), &cfg, &[]), phrases);
    }
    // An archive whose samples entry declares 2 x 1 floats and inflates to 16 MiB.
    let npz = tmp.path().join("bomb.npz");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&npz).unwrap());
    let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("x.npy", opts).unwrap();
    zip.write_all(&npy("<f4", "(2, 1)", &vec![0u8; 16 << 20])).unwrap();
    zip.start_file("y.npy", opts).unwrap();
    zip.write_all(&npy("<i8", "(2,)", &[0u8; 16])).unwrap();
    zip.finish().unwrap();
    assert!(std::fs::metadata(&npz).unwrap().len() < 1 << 20, "the archive is small");
    let cfg = write(tmp.path(), "exp.toml", &data_config("npz", "source = \"npz\"\npath = \"bomb.npz\""));
    assert_usage_error(&run(tmp.path(), &cfg, &[]), &["bomb.npz", "array `x`", "expected 8 data bytes"]);
}

#[test]
fn labels_far_beyond_the_samples_name_the_file_and_the_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let x: Vec<u8> = f32_bytes(&[0.0; 8]);
    std::fs::write(tmp.path().join("x.npy"), npy("<f4", "(4, 2)", &x)).unwrap();
    let y: Vec<u8> = [0i64, 1, 1_099_511_627_776, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(tmp.path().join("y.npy"), npy("<i8", "(4,)", &y)).unwrap();
    let cfg = write(tmp.path(), "exp.toml", &data_config("labels", "source = \"npy\"\nx = \"x.npy\"\ny = \"y.npy\""));
    assert_usage_error(&run(tmp.path(), &cfg, &[]), &["y.npy", "label 1099511627776 of sample 2", "class index"]);
    write(tmp.path(), "d.csv", "a,label\n1,0\n2,1\n3,70000\n4,1\n");
    let cfg = write(
        tmp.path(),
        "exp.toml",
        &data_config("csvlabels", "source = \"csv\"\npath = \"d.csv\"\nlabel = \"label\""),
    );
    assert_usage_error(&run(tmp.path(), &cfg, &[]), &["d.csv", "label 70000 of sample 2"]);
}

#[test]
fn networks_too_large_to_train_are_refused_or_fail_as_invalid_trials() {
    let tmp = tempfile::tempdir().unwrap();
    let model = |units: &str| {
        format!(
            "[experiment]\nname = \"big\"\nmax_trials = 3\nconcurrency = 1\n[data]\nsource = \"synthetic\"\n\
             samples = 200\nfeatures = 4\n[model]\nkind = \"mlp\"\nhidden_layers = 8\nhidden_units = {units}\n\
             [train]\nmax_epochs = 2\n[search]\nalgorithm = \"grid\"\n"
        )
    };
    // Always too large: `validate` refuses it, saying how large.
    let cfg = write(tmp.path(), "always.toml", &model("1048576"));
    let o = run_in(tmp.path(), &["validate", cfg.to_str().unwrap()]);
    assert_usage_error(&o, &["always.toml: model:", "hidden_units = 1048576", "TiB", "at most 8.0 GiB"]);
    assert_usage_error(&run(tmp.path(), &cfg, &[]), &["smallest network"]);
    // Too large for one of three values: that trial fails, the others train.
    let cfg = write(tmp.path(), "some.toml", &model("{ choice = [8, 16, 1048576] }"));
    let o = run(tmp.path(), &cfg, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let status = status_json(&tmp.path().join("run"));
    let trials = status["trials"].as_array().unwrap();
    let big: Vec<_> = trials.iter().filter(|t| t["params"]["hidden_units"] == 1048576).collect();
    assert_eq!(big.len(), 1);
    assert_eq!(big[0]["status"], "failed");
    let error = big[0]["error"].as_str().unwrap();
    assert!(error.contains("this network would have") && error.contains("parameters and need about"), "{error}");
    assert_eq!(big[0]["restarts"], 0, "an invalid trial is not restarted");
    assert_eq!(trials.iter().filter(|t| t["status"] == "completed").count(), 2, "{status}");
    assert!(stdout(&o).contains("why trials failed"), "{}", stdout(&o));
}

/// Prints a 24 MiB line without a newline, a 3 MiB one, 80 MiB of ordinary
/// lines at full speed, and its reports in between.
const FLOOD: &str = r#"
import sys
out = sys.stdout
out.write("x" * (24 << 20))
out.write("\n")
out.write('{"epoch": 1, "score": 0.5}\n')
out.write("y" * (3 << 20) + '{"epoch": 2, "score": 0.6}\n')
line = "z" * 999 + "\n"
for _ in range(80 * 1024):
    out.write(line)
out.write('{"epoch": 2, "score": 0.7}\n')
out.flush()
"#;

#[test]
fn a_program_that_prints_without_end_keeps_memory_and_its_log_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "flood.py", FLOOD);
    let cfg = write(
        tmp.path(),
        "exp.toml",
        "[experiment]\nname = \"flood\"\nmetric = \"score\"\nmax_trials = 1\n[model]\nkind = \"command\"\n\
         command = \"python3 flood.py\"\n[train]\nmax_epochs = 2\n",
    );
    let o = run(tmp.path(), &cfg, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = tmp.path().join("run");
    let status = status_json(&dir);
    let t = &status["trials"][0];
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["best_metric"], 0.7, "the line after a long one is read; the long one is no report");
    let log = dir.join("trials/0/output.log");
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= (64 << 20) + (1 << 20), "output.log holds at most 64 MiB an attempt: {size}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("a line longer than 1 MiB: truncated here").count(), 2, "both long lines are cut");
    assert!(text.contains("output reached 64 MiB") && text.contains("lines of output were not logged"));
}

#[test]
fn a_sweep_whose_every_trial_fails_says_why_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "broken.py",
        "import sys\nsys.stderr.write('ModuleNotFoundError: no module named torchy\\n')\nsys.exit(1)\n",
    );
    let cfg = write(
        tmp.path(),
        "exp.toml",
        "[experiment]\nname = \"broken\"\nmetric = \"score\"\nmax_trials = 4\nconcurrency = 2\n[model]\n\
         kind = \"command\"\ncommand = \"python3 broken.py\"\n[train]\nlr = { uniform = [0.1, 1.0] }\n\
         max_epochs = 2\n[fault]\nmax_restarts = 1\nrestart_backoff_ms = 10\n",
    );
    let o = run(tmp.path(), &cfg, &["--json"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["failed"], true);
    let failures = summary["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "one reason: {failures:?}");
    assert_eq!(failures[0]["count"], 4);
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("exited with code 1") && error.contains("no module named torchy"), "{error}");
    assert!(stderr(&o).contains("the sweep failed: 4 of 4 trials failed"), "{}", stderr(&o));

    // Text mode lists the reasons too.
    std::fs::remove_dir_all(tmp.path().join("run")).unwrap();
    let o = run(tmp.path(), &cfg, &[]);
    assert_eq!(o.status.code(), Some(4));
    assert!(
        stdout(&o).contains("why trials failed:") && stdout(&o).contains("4 x program exited with code 1"),
        "{}",
        stdout(&o)
    );

    // A program that is not there is found before any trial starts.
    let missing = write(
        tmp.path(),
        "missing.toml",
        "[experiment]\nname = \"missing\"\n[model]\nkind = \"command\"\ncommand = \"no-such-program-xyz --fast\"\n",
    );
    for cmd in ["validate", "run"] {
        let o = run_in(tmp.path(), &[cmd, missing.to_str().unwrap()]);
        assert_usage_error(&o, &["missing.toml: model.command", "`no-such-program-xyz` is not found on PATH"]);
    }
    let relative = write(
        tmp.path(),
        "relative.toml",
        "[experiment]\nname = \"rel\"\n[model]\nkind = \"command\"\ncommand = \"./nowhere/train.sh\"\n",
    );
    assert_usage_error(
        &run_in(tmp.path(), &["validate", relative.to_str().unwrap()]),
        &["model.command", "does not exist"],
    );
}

/// A program whose checkpoint is `MB` MiB of blocks that depend on the
/// epoch: it checks every byte when it resumes, crashes once in epoch 2
/// (attempt 0) and checkpoints each epoch.
const BIG_CHECKPOINT: &str = r#"
import json, os, sys
MB = int(sys.argv[1])
d = os.environ["GAUNTLET_CHECKPOINT_DIR"]
blob, state = os.path.join(d, "blob"), os.path.join(d, "state.json")
def block(epoch, i):
    return bytes([epoch % 251, i % 251]) * (1 << 19)
first = 1
if os.path.exists(state):
    e = json.load(open(state))["epoch"]
    with open(blob, "rb") as f:
        for i in range(MB):
            if f.read(1 << 20) != block(e, i):
                sys.exit(f"block {i} of the checkpoint differs")
        if f.read(1):
            sys.exit("the checkpoint is longer than written")
    first = e + 1
    print(f"resumed after epoch {e}: {MB} MiB intact", flush=True)
elif os.environ["GAUNTLET_ATTEMPT"] != "0":
    sys.exit("restarted without a checkpoint")
for epoch in range(first, int(os.environ["GAUNTLET_MAX_EPOCHS"]) + 1):
    if epoch == 2 and os.environ["GAUNTLET_ATTEMPT"] == "0":
        sys.exit(3)
    with open(blob + ".tmp", "wb") as f:
        for i in range(MB):
            f.write(block(epoch, i))
    os.replace(blob + ".tmp", blob)
    json.dump({"epoch": epoch}, open(state, "w"))
    print(json.dumps({"epoch": epoch, "score": epoch}), flush=True)
"#;

/// The peak resident memory (`VmHWM`, KiB) of each gauntlet process whose
/// parent chain leads to `root` (the coordinator and its workers), polled
/// until `root` exits.
fn peak_memory_until_exit(child: &mut std::process::Child) -> (std::process::ExitStatus, Vec<(u32, String, u64)>) {
    use std::collections::HashMap;
    let root = child.id();
    let mut peaks: HashMap<u32, (String, u64)> = HashMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out: Vec<_> = peaks.into_iter().map(|(pid, (name, kib))| (pid, name, kib)).collect();
            out.sort();
            return (status, out);
        }
        assert!(std::time::Instant::now() < deadline, "the run took over 300 s");
        for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
            let field = |key: &str| {
                status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned()).unwrap_or_default()
            };
            let name = field("Name:");
            if !name.starts_with("gauntlet") {
                continue;
            }
            // Ours: the coordinator, or a descendant of it.
            let (mut at, mut ours) = (pid, false);
            for _ in 0..8 {
                if at == root {
                    ours = true;
                    break;
                }
                let Ok(s) = std::fs::read_to_string(format!("/proc/{at}/status")) else { break };
                let Some(ppid) = s.lines().find_map(|l| l.strip_prefix("PPid:")) else { break };
                at = ppid.trim().parse().unwrap_or(0);
            }
            let kib: u64 = field("VmHWM:").trim_end_matches("kB").trim().parse().unwrap_or(0);
            if ours && kib > 0 {
                let e = peaks.entry(pid).or_insert((name, 0));
                e.1 = e.1.max(kib);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn checkpoints_stream_between_worker_and_coordinator_in_bounded_memory_and_are_bounded_in_size() {
    const MB: u64 = 192;
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "big.py", BIG_CHECKPOINT);
    let config = |name: &str, mb: u64, fault: &str| {
        format!(
            "[experiment]\nname = \"{name}\"\nmetric = \"score\"\nmax_trials = 1\n[model]\nkind = \"command\"\n\
             command = \"python3 big.py {mb}\"\n[train]\nmax_epochs = 2\n[fault]\nrestart_backoff_ms = 10\n{fault}"
        )
    };
    let cfg = write(tmp.path(), "big.toml", &config("big", MB, ""));
    let out = tmp.path().join("run");
    let mut child = Running(
        gauntlet()
            .current_dir(tmp.path())
            .args(["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (status, peaks) = peak_memory_until_exit(&mut child.0);
    assert!(status.success(), "{status:?}: {}", std::fs::read_to_string(out.join("gauntlet.log")).unwrap_or_default());
    let t = &status_json(&out)["trials"][0];
    assert_eq!((t["status"].as_str(), t["restarts"].as_u64()), (Some("completed"), Some(1)), "{t}");
    // Both ways: the worker sent epoch 1's and 2's checkpoints to the
    // coordinator, which sent epoch 1's back for the restart, intact.
    let log = std::fs::read_to_string(out.join("trials/0/output.log")).unwrap();
    assert!(log.contains(&format!("resumed after epoch 1: {MB} MiB intact")), "{log}");
    let blob = out.join("trials/0/ckpt-000002/program/blob");
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), MB << 20);
    let workers = peaks.iter().filter(|(_, name, _)| name == "gauntlet-worker").count();
    assert!(workers >= 1 && peaks.len() >= 2, "the coordinator and its worker were measured: {peaks:?}");
    for (pid, name, kib) in &peaks {
        // A gauntlet process holds about 120 MiB (libtorch); a checkpoint
        // held whole would add 192 MiB or more.
        assert!(*kib < 280 << 10, "{name} ({pid}) peaked at {} MiB for a {MB} MiB checkpoint", kib >> 10);
    }
    eprintln!("peak resident memory, MiB: {:?}", peaks.iter().map(|(_, n, k)| (n, k >> 10)).collect::<Vec<_>>());

    // A checkpoint over fault.max_checkpoint_mb fails its trial, unrestarted.
    let cfg = write(tmp.path(), "over.toml", &config("over", 3, "max_checkpoint_mb = 2\n"));
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", "over", "--json"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let error = summary["failures"][0]["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("checkpoint of epoch 1 is 3145") && error.contains("over fault.max_checkpoint_mb = 2 MiB"),
        "{summary}"
    );
    let t = &status_json(&tmp.path().join("over"))["trials"][0];
    assert_eq!((t["status"].as_str(), t["restarts"].as_u64()), (Some("failed"), Some(0)), "{t}");
    assert!(!tmp.path().join("over/trials/0/ckpt-000001").exists(), "the checkpoint over the limit is not kept");

    let cfg = write(tmp.path(), "zero.toml", &config("zero", 1, "max_checkpoint_mb = 0\n"));
    assert_usage_error(&run_in(tmp.path(), &["validate", cfg.to_str().unwrap()]), &["fault.max_checkpoint_mb"]);
}

const SLEEP: &str =
    "[experiment]\nname = \"s\"\nmax_trials = 2\n[model]\nkind = \"sleep\"\nepoch_ms = 1\n[train]\nmax_epochs = 2\n";

#[test]
fn run_directories_that_cannot_be_are_usage_errors_naming_the_flag_or_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "exp.toml", SLEEP);
    let file = write(tmp.path(), "a-file", "x");
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", file.to_str().unwrap()]);
    assert_usage_error(&o, &["--out", "is a file, not a directory"]);
    let inside = file.join("run");
    let o = run_in(tmp.path(), &["validate", cfg.to_str().unwrap(), "--out", inside.to_str().unwrap()]);
    assert_usage_error(&o, &["--out", "a-file is a file"]);
    let long = tmp.path().join("n".repeat(300));
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", long.to_str().unwrap()]);
    assert_usage_error(&o, &["--out", "300 bytes long", "255 bytes"]);
    let named =
        write(tmp.path(), "long.toml", &SLEEP.replace("name = \"s\"", &format!("name = \"{}\"", "n".repeat(250))));
    assert_usage_error(
        &run_in(tmp.path(), &["validate", named.to_str().unwrap()]),
        &["long.toml: experiment.name", "255 bytes"],
    );
    // A config too large to be one is not read whole.
    let huge = write(tmp.path(), "huge.toml", &format!("{SLEEP}\n#{}\n", "x".repeat(2 << 20)));
    assert_usage_error(
        &run_in(tmp.path(), &["validate", huge.to_str().unwrap()]),
        &["huge.toml", "larger than 1048576 bytes"],
    );
    let o = run_in(tmp.path(), &["worker", "--join", "127.0.0.1:1", "--slots", "100000"]);
    assert_usage_error(&o, &["--slots: expected 1 to 1024"]);
    // Waits that would overflow the clock are usage errors, not panics.
    for flag in ["--connect-timeout", "--reconnect-for"] {
        let o = run_in(tmp.path(), &["worker", "--join", "127.0.0.1:1", flag, "18446744073709551615"]);
        assert_usage_error(&o, &[flag, "604800"]);
    }
    // A directory holding someone's files is not written into.
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("config.toml"), "mine").unwrap();
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", theirs.to_str().unwrap()]);
    assert_usage_error(&o, &["holds files but no run", "choose another --out"]);
    assert_eq!(std::fs::read_to_string(theirs.join("config.toml")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 1, "nothing was added");
    // What a run that died before its first record leaves is taken by the next:
    // an empty trials/ (it died before its journal), or a journal with no
    // record and part of a config.
    let young = tmp.path().join("young");
    std::fs::create_dir_all(young.join("trials")).unwrap();
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", young.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let younger = tmp.path().join("younger");
    std::fs::create_dir_all(younger.join("trials")).unwrap();
    std::fs::copy(young.join("journal.msgpack"), younger.join("journal.msgpack")).unwrap();
    let header = std::fs::read(younger.join("journal.msgpack")).unwrap();
    std::fs::write(younger.join("journal.msgpack"), &header[..12]).unwrap();
    std::fs::write(younger.join("config.toml"), "[experi").unwrap();
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", younger.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(younger.join("config.toml")).unwrap(), SLEEP);
}

#[test]
fn a_config_read_from_a_pipe_is_read_once_and_the_run_records_what_was_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    // As `gauntlet run <(cat exp.toml)`: a pipe gives its text once.
    let mut child = gauntlet()
        .current_dir(tmp.path())
        .args(["run", "/dev/stdin", "--out", out.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(SLEEP.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(out.join("config.toml")).unwrap(), SLEEP, "the run holds the text it ran");
    let o = run_in(tmp.path(), &["status", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn json_configs_run_and_their_errors_name_the_key_path() {
    let tmp = tempfile::tempdir().unwrap();
    let json = r#"{"experiment": {"name": "json", "max_trials": 3, "concurrency": 1},
        "model": {"kind": "sleep", "epoch_ms": 1, "quality": {"uniform": [0.2, 0.8]}},
        "train": {"max_epochs": 2}}"#;
    let cfg = write(tmp.path(), "exp.json", json);
    let dir = tmp.path().join("run");
    let o = run(tmp.path(), &cfg, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("config.json").is_file());
    assert_eq!(status_json(&dir)["trials"].as_array().unwrap().len(), 3);
    // Resume reads the recorded JSON back.
    let o = run_in(tmp.path(), &["resume", dir.to_str().unwrap()]);
    assert!(o.status.success() && stdout(&o).contains("finished already"), "{}", stderr(&o));
    let bad = write(tmp.path(), "bad.json", &json.replace(r#""epoch_ms": 1"#, r#""epoch_ms": "fast""#));
    assert_usage_error(&run_in(tmp.path(), &["validate", bad.to_str().unwrap()]), &["bad.json: model.epoch_ms"]);
    let broken = write(tmp.path(), "broken.json", &json[..40]);
    assert_usage_error(&run_in(tmp.path(), &["validate", broken.to_str().unwrap()]), &["broken.json"]);
}

/// Runs the binary with `args` in `cwd`, killed (and the test failed) if it
/// is not done within 30 s: what is tested here is that it does not block.
fn run_bounded(cwd: &Path, program: &str, args: &[&str]) -> std::process::Output {
    let mut child = std::process::Command::new(program)
        .current_dir(cwd)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("{program} {args:?} blocked for 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_named_pipe_without_a_writer_is_an_empty_file_and_a_pipe_being_written_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_gauntlet");
    for name in ["exp.fifo", "d.csv"] {
        let o = std::process::Command::new("mkfifo").arg(tmp.path().join(name)).output().unwrap();
        assert!(o.status.success(), "mkfifo: {}", stderr(&o));
    }
    // The open used to wait for a writer for ever.
    let o = run_bounded(tmp.path(), bin, &["validate", "exp.fifo"]);
    assert_usage_error(&o, &["exp.fifo", "is empty", "expected a config file"]);
    let cfg = write(
        tmp.path(),
        "exp.toml",
        &data_config("fifodata", "source = \"csv\"\npath = \"d.csv\"\nlabel = \"label\""),
    );
    let o = run_bounded(tmp.path(), bin, &["validate", cfg.to_str().unwrap()]);
    assert_usage_error(&o, &["data.path", "d.csv", "not a file"]);
    // A config generated on the fly (process substitution) is read as it is written.
    let script = format!("{bin} validate <(sleep 0.5; cat {})", write(tmp.path(), "s.toml", SLEEP).display());
    let o = run_bounded(tmp.path(), "bash", &["-c", &script]);
    assert!(o.status.success(), "{}", stderr(&o));
}
