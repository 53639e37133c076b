//! `gauntlet predict` with a model the test trains: batch CSV and IDX files
//! to CSV, and JSON lines streamed through stdin one at a time.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;

/// Three classes told apart by `sepal` and `width`; `petal` is noise.
fn train_csv_model(tmp: &Path) -> PathBuf {
    let names = ["setosa", "versicolor", "virginica"];
    let mut text = String::from("sepal,petal,species,width\n");
    for i in 0..300 {
        let c = i % 3;
        let noise = ((i * 37) % 17) as f32 / 17.0;
        text +=
            &format!("{},{noise},{},{}\n", 100.0 + 40.0 * c as f32 + 10.0 * noise, names[c], 5.0 * c as f32 + noise);
    }
    write(tmp, "iris.csv", &text);
    run_ok(
        tmp,
        r#"
[experiment]
name = "iris"
max_trials = 2
concurrency = 2
[data]
source = "csv"
path = "iris.csv"
label = "species"
standardize = true
[model]
kind = "mlp"
hidden_units = 16
[train]
lr = 0.02
batch_size = 16
max_epochs = 6
"#,
    )
    .join("best")
}

#[test]
fn batch_prediction_reads_columns_by_name_and_writes_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let model = train_csv_model(tmp.path());
    // Columns in another order, the label column absent.
    write(tmp.path(), "new.csv", "width,sepal,petal\n0.5,105,0.5\n5.5,145,0.5\n10.5,185,0.5\n");
    let out = tmp.path().join("pred.csv");
    let o = run_in(
        tmp.path(),
        &["predict", "--model", model.to_str().unwrap(), "--input", "new.csv", "--output", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "row,predicted,p_setosa,p_versicolor,p_virginica");
    let predicted: Vec<&str> = lines[1..].iter().map(|l| l.split(',').nth(1).unwrap()).collect();
    assert_eq!(predicted, ["setosa", "versicolor", "virginica"]);
    for l in &lines[1..] {
        let sum: f64 = l.split(',').skip(2).map(|p| p.parse::<f64>().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to 1: {l}");
    }
    // A file without the model's columns says which are needed, and costs no earlier output.
    write(tmp.path(), "bad.csv", "width,sepal\n1,2\n");
    let o = run_in(
        tmp.path(),
        &["predict", "--model", model.to_str().unwrap(), "--input", "bad.csv", "--output", out.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.csv") && stderr(&o).contains("no column `petal`"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text, "the earlier predictions are still there");
    // The output may be the input: read in full before it is replaced.
    let same = write(tmp.path(), "same.csv", "width,sepal,petal\n0.5,105,0.5\n");
    let o = run_in(
        tmp.path(),
        &["predict", "--model", model.to_str().unwrap(), "--input", "same.csv", "--output", "same.csv"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&same).unwrap().contains("0,setosa,"));
    // Not a model directory.
    let o = run_in(tmp.path(), &["predict", "--model", tmp.path().to_str().unwrap(), "--input", "new.csv"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("model.json"), "{}", stderr(&o));
    // A model.json that describes more than its weights hold (damaged, or hostile) allocates nothing.
    let forged = tmp.path().join("forged");
    std::fs::create_dir_all(&forged).unwrap();
    std::fs::copy(model.join("weights.safetensors"), forged.join("weights.safetensors")).unwrap();
    let mut about: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    about["spec"]["inputs"] = serde_json::json!(1u64 << 40);
    std::fs::write(forged.join("model.json"), about.to_string()).unwrap();
    let o = run_in(tmp.path(), &["predict", "--model", forged.to_str().unwrap(), "--input", "new.csv"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot hold"), "{}", stderr(&o));
}

#[test]
fn json_lines_stream_through_stdin_one_answer_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let model = train_csv_model(tmp.path());
    let mut child = gauntlet()
        .args(["predict", "--model", model.to_str().unwrap(), "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut answers = BufReader::new(child.stdout.take().unwrap());
    // Each answer arrives before the next record is sent: streaming, not batch.
    let mut ask = |record: &[u8]| -> serde_json::Value {
        stdin.write_all(record).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        answers.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(ask(b"[105, 0.5, 0.5]")["predicted"], "setosa");
    assert_eq!(ask(br#"{"sepal": 185, "petal": 0.2, "width": 10.4}"#)["predicted"], "virginica");
    assert_eq!(ask(br#"{"features": [145, 0.5, 5.5]}"#)["predicted"], "versicolor");
    let bad = ask(b"[1, 2]");
    assert_eq!(bad["line"], 4);
    assert!(bad["error"].as_str().unwrap().contains("expects 3"), "{bad}");
    assert!(ask(b"{ not json")["error"].as_str().unwrap().contains("not JSON"));
    // 1e39 overflows an f32: refused, naming the feature, not answered with nulls.
    let huge = ask(b"[145, 1e39, 5.0]");
    assert!(huge["error"].as_str().unwrap().contains("feature `petal`: inf is not a finite number"), "{huge}");
    // 3e38 is an f32, but not once standardised: refused, not answered with NaN and the last class.
    let huge = ask(b"[145, 3e38, 5.0]");
    assert!(huge["error"].as_str().unwrap().contains("feature `petal`: 3e38 is too large once standardised"), "{huge}");
    assert_eq!(ask(b"[145, 0.1, 5.0]")["class"], 1, "the stream goes on after bad lines");
    // A line that is not text, and one longer than a record may be: answered, skipped, the stream goes on.
    let answer = ask(b"[1, \xff]");
    assert!(answer["error"].as_str().unwrap().contains("not UTF-8"), "{answer}");
    let long = format!("[{}1]", "1, ".repeat(400_000));
    let answer = ask(long.as_bytes());
    assert!(answer["error"].as_str().unwrap().contains("longer than 1048576 bytes"), "{answer}");
    assert_eq!(ask(b"[145, 0.1, 5.0]")["class"], 1);
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn idx_and_npy_inputs_predict_a_row_each() {
    let tmp = tempfile::tempdir().unwrap();
    // Two classes of 2x2 "images": class 1 is bright.
    let n = 600u32; // more than one forward pass of 256
    let pixels: Vec<u8> = (0..n).flat_map(|i| [if i % 2 == 1 { 220 } else { 30 } + (i % 7) as u8; 4]).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
    std::fs::write(tmp.path().join("x.idx"), idx(&[n, 2, 2], &pixels)).unwrap();
    std::fs::write(tmp.path().join("y.idx"), idx(&[n], &labels)).unwrap();
    let best = run_ok(
        tmp.path(),
        "[experiment]\nname = \"bright\"\nmax_trials = 1\nconcurrency = 1\n[data]\nsource = \"idx\"\nx = \"x.idx\"\n\
         y = \"y.idx\"\n[model]\nkind = \"mlp\"\nhidden_units = 8\n[train]\nlr = 0.05\nbatch_size = 16\nmax_epochs = 4\n",
    )
    .join("best");
    let o = run_in(tmp.path(), &["predict", "--model", best.to_str().unwrap(), "--input", "x.idx"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<String> = stdout(&o).lines().skip(1).map(str::to_owned).collect();
    assert_eq!(rows.len(), n as usize, "one prediction per sample");
    let right = rows.iter().enumerate().filter(|(i, r)| r.split(',').nth(1) == Some(&(i % 2).to_string())).count();
    assert!(right as f64 > 0.9 * f64::from(n), "{right} of {n} right");
    // The same samples as float32 .npy, scaled as the IDX bytes were.
    let values: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
    std::fs::write(tmp.path().join("x.npy"), npy("<f4", &format!("({n}, 4)"), &f32_bytes(&values))).unwrap();
    let o = run_in(tmp.path(), &["predict", "--model", best.to_str().unwrap(), "--input", "x.npy"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().skip(1).collect::<Vec<_>>(), rows.iter().map(String::as_str).collect::<Vec<_>>());
    // Samples of another size name the file and the size expected.
    std::fs::write(tmp.path().join("wide.npy"), npy("<f4", "(1, 5)", &[0; 20])).unwrap();
    let o = run_in(tmp.path(), &["predict", "--model", best.to_str().unwrap(), "--input", "wide.npy"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("wide.npy") && stderr(&o).contains("expects 4"), "{}", stderr(&o));
}

/// `model` with `edit` applied to a copy of its model.json, in `dir`.
fn forged(model: &Path, dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(model.join("weights.safetensors"), dir.join("weights.safetensors")).unwrap();
    let mut about: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    edit(&mut about);
    std::fs::write(dir.join("model.json"), about.to_string()).unwrap();
    dir.to_owned()
}

#[test]
fn damaged_models_bad_samples_and_odd_outputs_are_refused_or_served_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let model = train_csv_model(tmp.path());
    write(tmp.path(), "new.csv", "width,sepal,petal\n0.5,105,0.5\n");
    // model.json edited so that it no longer fits its network: exit 2 naming what, in batch and stream.
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit, &str); 6] = [
        ("names0", |a| a["class_names"] = serde_json::json!([]), "0 class names, but the network has 3 classes"),
        ("names5", |a| a["class_names"] = serde_json::json!(["a", "b", "c", "d", "e"]), "5 class names"),
        ("dropout", |a| a["spec"]["dropout"] = serde_json::json!(5.0), "dropout 5"),
        ("inputs0", |a| a["spec"]["inputs"] = serde_json::json!(0), "0 inputs"),
        ("std0", |a| a["standardization"]["std"] = serde_json::json!([0.0, 0.0, 0.0]), "positive deviation"),
        ("mean1", |a| a["standardization"]["mean"] = serde_json::json!([1.0]), "1 standardisation means"),
    ];
    for (name, edit, phrase) in edits {
        let dir = forged(&model, &tmp.path().join(name), edit);
        for input in ["new.csv", "-"] {
            let o = run_in(tmp.path(), &["predict", "--model", dir.to_str().unwrap(), "--input", input]);
            assert_eq!(o.status.code(), Some(2), "{name} {input}: {}", stderr(&o));
            assert!(stderr(&o).contains(phrase) && !stderr(&o).contains("panicked"), "{name}: {}", stderr(&o));
        }
    }
    // Samples that cannot be predicted name the file and the sample.
    let m = model.to_str().unwrap();
    for (file, text, phrase) in [
        ("huge.csv", "width,sepal,petal\n0.5,105,0.5\n1,2,3e38\n", "sample 2, feature `petal`: 3e38 is too large once"),
        ("nan.csv", "width,sepal,petal\n0.5,NaN,0.5\n", "sample 1, feature `sepal`: NaN is not a finite number"),
        ("empty.csv", "width,sepal,petal\n", "no samples"),
    ] {
        write(tmp.path(), file, text);
        let o = run_in(tmp.path(), &["predict", "--model", m, "--input", file]);
        assert_eq!(o.status.code(), Some(2), "{file}: {}", stderr(&o));
        assert!(stderr(&o).contains(file) && stderr(&o).contains(phrase), "{file}: {}", stderr(&o));
    }
    // A CSV line past the data files' limit is refused as it is read.
    let long = format!("width,sepal,petal\n0.5,105,{}\n", "1".repeat(17 << 20));
    write(tmp.path(), "long.csv", &long);
    let o = run_in(tmp.path(), &["predict", "--model", m, "--input", "long.csv"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("long.csv") && stderr(&o).contains("longer than 16777216 bytes"), "{}", stderr(&o));
    // An output in a directory that does not exist is a usage error naming the flag.
    let o = run_in(tmp.path(), &["predict", "--model", m, "--input", "new.csv", "--output", "nodir/p.csv"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--output nodir/p.csv") && stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // A link is followed: the file it names gets the predictions, the link stays.
    write(tmp.path(), "real.csv", "old");
    std::os::unix::fs::symlink("real.csv", tmp.path().join("link.csv")).unwrap();
    let o = run_in(tmp.path(), &["predict", "--model", m, "--input", "new.csv", "--output", "link.csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(tmp.path().join("link.csv")).unwrap().file_type().is_symlink());
    assert!(std::fs::read_to_string(tmp.path().join("real.csv")).unwrap().starts_with("row,predicted"));
    // A named pipe is written into, not replaced by a file.
    let fifo = tmp.path().join("out.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    let o = run_in(tmp.path(), &["predict", "--model", m, "--input", "new.csv", "--output", "out.fifo"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(reader.join().unwrap().starts_with("row,predicted"));
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "still a pipe");
    // /dev/stdout is the standard output as the shell opened it: appended to with >>, read from a pipe.
    write(tmp.path(), "all.csv", "earlier\n");
    let script = format!(
        "{} predict --model {m} --input new.csv --output /dev/stdout >> all.csv",
        env!("CARGO_BIN_EXE_gauntlet")
    );
    let o = std::process::Command::new("bash").current_dir(tmp.path()).args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let all = std::fs::read_to_string(tmp.path().join("all.csv")).unwrap();
    assert!(all.starts_with("earlier\nrow,predicted"), "{all}");
    let script =
        format!("{} predict --model {m} --input new.csv --output /dev/stdout | cat", env!("CARGO_BIN_EXE_gauntlet"));
    let o = std::process::Command::new("bash").current_dir(tmp.path()).args(["-c", &script]).output().unwrap();
    assert!(o.status.success() && stdout(&o).starts_with("row,predicted"), "{}", stderr(&o));
    // A link to nothing is refused, not followed into a new file nor replaced.
    std::os::unix::fs::symlink("nowhere.csv", tmp.path().join("dangling.csv")).unwrap();
    let o = run_in(tmp.path(), &["predict", "--model", m, "--input", "new.csv", "--output", "dangling.csv"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a link to a file that does not exist"), "{}", stderr(&o));
}
