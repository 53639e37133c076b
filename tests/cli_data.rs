//! Data files through the CLI: IDX, CSV and NumPy files the test writes itself (IDX gzipped, in
//! Fashion-MNIST's layout) train for real; malformed ones are refused with
//! the file, the byte offset and what was expected.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// 600 8x8 "images" of 10 classes: class c lights up row c % 8 (plus noise).
fn write_fashion_like(dir: &Path, images: Vec<u8>) {
    let n = 600usize;
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz(&images)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gz(&idx(&[n as u32], &labels))).unwrap();
}

fn good_images() -> Vec<u8> {
    let n = 600usize;
    let mut pixels = Vec::with_capacity(n * 64);
    for i in 0..n {
        let class = i % 10;
        for p in 0..64 {
            let lit = p / 8 == class % 8 || (class >= 8 && p % 8 == class - 8);
            pixels.push(if lit { 200 } else { ((i * 31 + p * 17) % 60) as u8 });
        }
    }
    idx(&[n as u32, 8, 8], &pixels)
}

fn config(path: &Path) -> String {
    format!(
        r#"
[experiment]
name = "idx"
max_trials = 2
concurrency = 2
[data]
source = "fashion-mnist"
path = "{}"
[model]
kind = "mlp"
hidden_units = 32
[train]
lr = 0.01
max_epochs = 3
"#,
        path.display()
    )
}

#[test]
fn gzipped_idx_files_train() {
    let tmp = tempfile::tempdir().unwrap();
    write_fashion_like(&tmp.path().join("fm"), good_images());
    let dir = run_ok(tmp.path(), &config(&tmp.path().join("fm")));
    let status = status_json(&dir);
    let best =
        status["trials"].as_array().unwrap().iter().filter_map(|t| t["best_metric"].as_f64()).fold(0.0, f64::max);
    assert!(best > 0.5, "10 classes, chance 0.1, got {best}");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("best/model.json")).unwrap()).unwrap();
    assert_eq!(model["spec"]["inputs"], 64);
    assert_eq!(model["class_names"][9], "Ankle boot");
}

#[test]
fn malformed_idx_files_name_the_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let mut truncated = good_images();
    truncated.truncate(16 + 1000);
    let mut wrong_type = good_images();
    wrong_type[2] = 0x0D; // float elements
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("truncated", truncated, "at byte 1016: expected 38400 data bytes for dimensions [600, 8, 8], found 1000"),
        ("wrong-type", wrong_type, "at byte 2: element type 0x0d: expected 0x08 (unsigned byte)"),
        ("one-dim", idx(&[600 * 64], &vec![0; 600 * 64]), "expected at least 2 dimensions"),
    ];
    for (name, images, expected) in cases {
        let fm = tmp.path().join(name);
        write_fashion_like(&fm, images);
        let cfg = write(tmp.path(), &format!("{name}.toml"), &config(&fm));
        let out = tmp.path().join(format!("run-{name}"));
        let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("train-images-idx3-ubyte.gz"), "{name} must name the file: {err}");
        assert!(err.contains(expected), "{name} must say `{expected}`: {err}");
        assert!(!out.exists(), "{name}: no run directory for bad data");
    }
    // Not gzip data behind a .gz name that starts like gzip.
    let fm = tmp.path().join("badgz");
    write_fashion_like(&fm, good_images());
    std::fs::write(fm.join("train-images-idx3-ubyte.gz"), [0x1f, 0x8b, 0, 1, 2]).unwrap();
    let cfg = write(tmp.path(), "badgz.toml", &config(&fm));
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", tmp.path().join("r").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a valid gzip file"), "{}", stderr(&o));
}

/// 300 samples of 3 classes in 4 features, the class shifting two of them.
fn table_rows() -> Vec<(String, [f32; 4])> {
    let names = ["setosa", "versicolor", "virginica"];
    (0..300)
        .map(|i| {
            let c = i % 3;
            let noise = |k: usize| ((i * 37 + k * 11) % 17) as f32 / 17.0;
            let row = [100.0 + 40.0 * c as f32 + 10.0 * noise(0), noise(1), 5.0 * c as f32 + noise(2), noise(3)];
            (names[c].to_owned(), row)
        })
        .collect()
}

fn table_config(data: &str) -> String {
    format!(
        r#"
[experiment]
name = "tables"
max_trials = 2
concurrency = 2
[data]
{data}
[model]
kind = "mlp"
hidden_units = 16
[train]
lr = 0.02
batch_size = 16
max_epochs = 4
"#
    )
}

#[test]
fn csv_files_train_with_named_classes_and_standardised_features() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = String::from("sepal, petal ,species,width,depth\n");
    for (name, r) in table_rows() {
        text += &format!("{},{},{name},{},{}\n", r[0], r[1], r[2], r[3]);
    }
    write(tmp.path(), "iris.csv", &text);
    let dir = run_ok(
        tmp.path(),
        &table_config("source = \"csv\"\npath = \"iris.csv\"\nlabel = \"species\"\nstandardize = true"),
    );
    let best = status_json(&dir)["trials"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["best_metric"].as_f64())
        .fold(0.0, f64::max);
    assert!(best > 0.8, "3 separable classes, got {best}");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("best/model.json")).unwrap()).unwrap();
    assert_eq!(model["spec"]["inputs"], 4);
    assert_eq!(model["class_names"], serde_json::json!(["setosa", "versicolor", "virginica"]));
    // Standardised on the training split: the first feature's mean is near 140.
    let mean = model["standardization"]["mean"][0].as_f64().unwrap();
    assert!((mean - 145.0).abs() < 10.0, "mean of the first feature: {mean}");
}

#[test]
fn idx_pairs_train_gzipped_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = table_rows();
    let labels: Vec<u8> = (0..rows.len()).map(|i| (i % 3) as u8).collect();
    let pixels: Vec<u8> = rows.iter().flat_map(|(_, r)| [(r[0] - 90.0) as u8, (r[2] * 20.0) as u8, 7]).collect();
    std::fs::write(tmp.path().join("x.idx"), idx(&[rows.len() as u32, 3], &pixels)).unwrap();
    // Labels gzipped in two members, as bgzip and pigz write them: one stream.
    let labels_idx = idx(&[rows.len() as u32], &labels);
    let (front, back) = labels_idx.split_at(100);
    std::fs::write(tmp.path().join("y.idx.gz"), [gz(front), gz(back)].concat()).unwrap();
    let cfg = "source = \"idx\"\nx = \"x.idx\"\ny = \"y.idx.gz\"";
    let dir = run_ok(tmp.path(), &table_config(cfg));
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("best/model.json")).unwrap()).unwrap();
    assert_eq!(model["spec"]["inputs"], 3);
    assert_eq!(model["spec"]["classes"], 3);
    assert!(model["standardization"].is_null());
}

#[test]
fn malformed_tables_name_the_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("a,b,y\n1,2,cat\n3,oops,dog\n", "line 3: column `b`: `oops` is not a number"),
        ("a,b,y\n1,2,cat\n3,4\n", "line 3"),
        ("a,b,kind\n1,2,cat\n", "no column `y` for the labels; the header has a, b, kind"),
        ("a,b,y\n1,2,0\n3,4,0\n", "expected at least two classes"),
        ("a,a,y\n1,2,0\n3,4,1\n", "line 1: two columns are named `a`"),
        ("a,b,y\n", "0 samples: expected at least 2"),
        ("", "line 1: no header"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        write(tmp.path(), &format!("bad{i}.csv"), text);
        let cfg = write(
            tmp.path(),
            &format!("bad{i}.toml"),
            &table_config(&format!("source = \"csv\"\npath = \"bad{i}.csv\"\nlabel = \"y\"")),
        );
        let out = tmp.path().join(format!("run-{i}"));
        let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(&format!("bad{i}.csv")) && err.contains(expected),
            "case {i} must say `{expected}`: {err}"
        );
        assert!(!out.exists(), "case {i}: no run directory for bad data");
    }
    let cfg = write(tmp.path(), "nolabel.toml", &table_config("source = \"csv\"\npath = \"bad0.csv\""));
    let o = run_in(tmp.path(), &["validate", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("data.label"), "{}", stderr(&o));
}

#[test]
fn npy_files_and_npz_archives_train() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = table_rows();
    let n = rows.len();
    let x: Vec<u8> = rows.iter().flat_map(|(_, r)| r.iter().flat_map(|v| v.to_le_bytes())).collect();
    let y: Vec<u8> = (0..n).flat_map(|i| ((i % 3) as i64).to_le_bytes()).collect();
    let (xs, ys) = (npy("<f4", &format!("({n}, 2, 2)"), &x), npy("<i8", &format!("({n},)"), &y));
    std::fs::write(tmp.path().join("x.npy"), &xs).unwrap();
    std::fs::write(tmp.path().join("y.npy"), &ys).unwrap();
    let dir = run_ok(tmp.path(), &table_config("source = \"npy\"\nx = \"x.npy\"\ny = \"y.npy\"\nstandardize = true"));
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("best/model.json")).unwrap()).unwrap();
    assert_eq!(model["spec"]["inputs"], 4, "2x2 samples flatten to 4 features");
    assert_eq!(model["spec"]["classes"], 3);

    let mut zip = zip::ZipWriter::new(std::fs::File::create(tmp.path().join("d.npz")).unwrap());
    for (name, bytes) in [("features.npy", &xs), ("labels.npy", &ys)] {
        zip.start_file(name, zip::write::FileOptions::default()).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    let cfg = "source = \"npz\"\npath = \"d.npz\"\nx = \"features\"\ny = \"labels\"";
    let dir = run_ok(tmp.path(), &table_config(cfg));
    assert_eq!(status_json(&dir)["trials"].as_array().unwrap().len(), 2);
    // An archive without the named array says which.
    let cfg = write(tmp.path(), "missing.toml", &table_config("source = \"npz\"\npath = \"d.npz\""));
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", tmp.path().join("r").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("d.npz") && stderr(&o).contains("no array `x`"), "{}", stderr(&o));
    // Labels of another length name the labels file and the shape expected.
    std::fs::write(tmp.path().join("y2.npy"), npy("<i8", "(5,)", &[0; 40])).unwrap();
    let cfg = write(tmp.path(), "short.toml", &table_config("source = \"npy\"\nx = \"x.npy\"\ny = \"y2.npy\""));
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", tmp.path().join("r2").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("y2.npy") && stderr(&o).contains(&format!("expected ({n},)")), "{}", stderr(&o));
}

#[test]
fn cnn_sweeps_train_on_images_and_restart_from_their_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    write_fashion_like(&tmp.path().join("fm"), good_images());
    let cfg = format!(
        r#"
[experiment]
name = "cnn"
max_trials = 4
concurrency = 2
[data]
source = "fashion-mnist"
path = "{}"
[model]
kind = "cnn"
conv_blocks = {{ int = [1, 2] }}
channels = {{ choice = [4, 8] }}
kernel_size = 3
pooling = {{ choice = ["max", "avg"] }}
batch_norm = {{ choice = [true, false] }}
dropout = 0.1
hidden_units = 32
[train]
lr = 0.01
batch_size = 32
max_epochs = 4
[fault]
max_restarts = 20
restart_backoff_ms = 10
[chaos]
panic_probability = 0.15
"#,
        tmp.path().join("fm").display()
    );
    let dir = run_ok(tmp.path(), &cfg);
    let status = status_json(&dir);
    let trials = status["trials"].as_array().unwrap();
    assert!(trials.iter().all(|t| t["status"] == "completed"), "{trials:?}");
    let restarts: u64 = trials.iter().map(|t| t["restarts"].as_u64().unwrap()).sum();
    assert!(restarts >= 1, "chaos restarted some trial from its checkpoint");
    let best = trials.iter().filter_map(|t| t["best_metric"].as_f64()).fold(0.0, f64::max);
    assert!(best > 0.5, "10 classes, chance 0.1, got {best}");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("best/model.json")).unwrap()).unwrap();
    assert_eq!(model["kind"], "cnn");
    assert_eq!(model["spec"]["input"], serde_json::json!([1, 8, 8]));
    assert!(dir.join("best/weights.safetensors").is_file());
}

#[test]
fn cnn_shapes_that_cannot_be_built_are_refused_before_any_trial() {
    let tmp = tempfile::tempdir().unwrap();
    write_fashion_like(&tmp.path().join("fm"), good_images());
    let cfg = |name: &str, model: &str| {
        let text = format!(
            "[experiment]\nname = \"{name}\"\nmax_trials = 2\n[data]\nsource = \"fashion-mnist\"\npath = \"{}\"\n\
             [model]\nkind = \"cnn\"\nchannels = 4\nhidden_units = 8\n{model}\n[train]\nmax_epochs = 1\n",
            tmp.path().join("fm").display()
        );
        write(tmp.path(), &format!("{name}.toml"), &text)
    };
    // An even kernel: refused by `validate` already, whatever the data.
    for (name, kernel) in [("even", "kernel_size = 4"), ("range", "kernel_size = { int = [3, 7] }")] {
        let o = run_in(tmp.path(), &["validate", cfg(name, kernel).to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("kernel_size: 4 is among its values"), "{}", stderr(&o));
    }
    // More pooled blocks than an 8x8 image has halvings: `run` refuses it on the data, before a trial.
    let deep = cfg("deep", "conv_blocks = { int = [1, 4] }");
    let out = tmp.path().join("deep-run");
    let o = run_in(tmp.path(), &["run", deep.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("conv_blocks: 4 pooled blocks halve a 8x8 image to nothing; expected at most 3"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    // Without pooling the same blocks are fine.
    let flat = cfg("unpooled", "conv_blocks = 4\npooling = \"none\"");
    let o = run_in(tmp.path(), &["validate", flat.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_cnn_on_flat_rows_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "rows.csv", "a,b,y\n1,2,0\n3,4,1\n5,6,0\n");
    let cfg = write(
        tmp.path(),
        "flat.toml",
        "[experiment]\nname = \"flat\"\n[data]\nsource = \"csv\"\npath = \"rows.csv\"\nlabel = \"y\"\n[model]\nkind = \"cnn\"\n",
    );
    let out = tmp.path().join("run");
    let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("image-shaped") && stderr(&o).contains("rows.csv"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn samples_without_a_single_value_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    // 20 samples of shape (0,): an array that holds nothing (it panicked while splitting).
    std::fs::write(tmp.path().join("x.npy"), npy("<f4", "(20, 0)", &[])).unwrap();
    let labels: Vec<u8> = (0..20i64).flat_map(|i| (i % 2).to_le_bytes()).collect();
    std::fs::write(tmp.path().join("y.npy"), npy("<i8", "(20,)", &labels)).unwrap();
    std::fs::write(tmp.path().join("x.idx"), idx(&[20, 4, 0], &[])).unwrap();
    std::fs::write(tmp.path().join("y.idx"), idx(&[20], &(0..20u8).map(|i| i % 2).collect::<Vec<_>>())).unwrap();
    for (file, data) in [
        ("x.npy", "source = \"npy\"\nx = \"x.npy\"\ny = \"y.npy\""),
        ("x.idx", "source = \"idx\"\nx = \"x.idx\"\ny = \"y.idx\""),
    ] {
        let cfg = write(tmp.path(), "empty.toml", &table_config(data));
        let o = run_in(tmp.path(), &["run", cfg.to_str().unwrap(), "--out", tmp.path().join("r").to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{file}: {}", stderr(&o));
        assert!(stderr(&o).contains(file) && stderr(&o).contains("hold no values"), "{file}: {}", stderr(&o));
    }
}
