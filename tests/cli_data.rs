//! Data files through the CLI: IDX files the test writes itself (gzipped, in
//! Fashion-MNIST's layout) train for real; malformed ones are refused with
//! the file, the byte offset and what was expected.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

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
        ("two-dims", idx(&[600, 64], &vec![0; 600 * 64]), "expected 3 dimensions"),
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
