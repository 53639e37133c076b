//! The best model of a run, put to use: [`Model::load`] reads `best/`
//! (weights, `model.json`: the network's shape, class names, input
//! standardisation) and predicts class probabilities, with no config.
//!
//! ```no_run
//! let model = gauntlet::predict::Model::load(std::path::Path::new("runs/x/best"))?;
//! let probabilities = model.predict_rows(&vec![0.0; model.inputs()])?;
//! println!("{:?}", model.class_name(0));
//! # Ok::<(), gauntlet::predict::PredictError>(())
//! ```

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::data::Standardization;
use crate::trainable::fit::Network;
use crate::trainable::kind::{self, Loaded};

/// Why a model or an input cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The model directory is incomplete or unreadable.
    #[error("model {}: {message}", dir.display())]
    Model {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An input file does not fit the model.
    #[error("{}: {message}", file.display())]
    Input {
        /// The file.
        file: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The input data could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

/// The largest `model.json` a model directory may hold.
const MAX_MODEL_JSON_BYTES: u64 = 16 << 20;

/// The longest line [`Model::stream`] reads as one record.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Samples per forward pass: the memory a prediction takes does not grow
/// with the input.
const PREDICT_BATCH: usize = 256;

/// A value as a message shows it: large ones in exponent form.
fn shown(v: f32) -> String {
    if v.is_finite() && v.abs() >= 1e15 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// Consumes the rest of a line without keeping it.
fn skip_line(input: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(());
        }
        match chunk.iter().position(|&b| b == b'\n') {
            Some(end) => {
                input.consume(end + 1);
                return Ok(());
            }
            None => {
                let n = chunk.len();
                input.consume(n);
            }
        }
    }
}

/// A trained classifier loaded from a `best/` directory.
pub struct Model {
    net: Box<dyn Network + Send>,
    inputs: usize,
    classes: Vec<String>,
    standardization: Option<Standardization>,
    feature_names: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct About {
    kind: String,
    spec: serde_json::Value,
    #[serde(default)]
    class_names: Option<Vec<String>>,
    #[serde(default)]
    standardization: Option<Standardization>,
    #[serde(default)]
    feature_names: Option<Vec<String>>,
}

impl Model {
    /// Loads `dir` (a run's `best/`).
    pub fn load(dir: &Path) -> Result<Model, PredictError> {
        let bad = |message: String| PredictError::Model { dir: dir.to_owned(), message };
        let mut text = Vec::new();
        crate::files::open(&dir.join("model.json"))
            .and_then(|f| f.take(MAX_MODEL_JSON_BYTES + 1).read_to_end(&mut text))
            .map_err(|e| bad(format!("cannot read model.json: {e} (is this a run's best/ directory?)")))?;
        if text.len() as u64 > MAX_MODEL_JSON_BYTES {
            return Err(bad(format!("model.json is over {MAX_MODEL_JSON_BYTES} bytes: not one gauntlet wrote")));
        }
        let about: About = serde_json::from_slice(&text).map_err(|e| bad(format!("model.json: {e}")))?;
        let kinds = kind::KINDS.iter().filter(|k| k.predictor.is_some());
        let Some(predictor) = kind::named(&about.kind).and_then(|k| k.predictor.as_ref()) else {
            let expected = kind::names(kinds);
            return Err(bad(format!("model kind `{}` cannot predict; expected {expected}", about.kind)));
        };
        let weights = predictor.weights;
        if !dir.join(weights).is_file() {
            return Err(bad(format!("no {weights}: the best trial saved no checkpoint")));
        }
        let held = std::fs::metadata(dir.join(weights)).map_or(0, |m| m.len());
        let Loaded { mut net, inputs, classes } = (predictor.load)(dir, about.spec, held).map_err(bad)?;
        net.set_train(false);
        // What the spec says is checked against the rest of model.json.
        let count = |what: &str, n: usize, expected: usize, of: &str| {
            if n == expected {
                Ok(())
            } else {
                Err(bad(format!("model.json: {n} {what}, but the network has {expected} {of}")))
            }
        };
        if let Some(names) = &about.class_names {
            count("class names", names.len(), classes, "classes")?;
        }
        if let Some(names) = &about.feature_names {
            count("feature names", names.len(), inputs, "inputs")?;
        }
        if let Some(s) = &about.standardization {
            count("standardisation means", s.mean.len(), inputs, "inputs")?;
            count("standardisation deviations", s.std.len(), inputs, "inputs")?;
            if let Some(i) = (0..inputs).find(|&i| !(s.mean[i].is_finite() && s.std[i].is_finite() && s.std[i] > 0.0)) {
                return Err(bad(format!(
                    "model.json: feature {i} is standardised by mean {} and deviation {}: expected a finite mean \
                     and a positive deviation",
                    s.mean[i], s.std[i]
                )));
            }
        }
        let classes = about.class_names.unwrap_or_else(|| (0..classes).map(|c| c.to_string()).collect());
        Ok(Model { net, inputs, classes, standardization: about.standardization, feature_names: about.feature_names })
    }

    /// Features per sample.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The name of class `c` (its number when the data had no names).
    pub fn class_name(&self, c: usize) -> Option<&str> {
        self.classes.get(c).map(String::as_str)
    }

    /// The classes' names, by class.
    pub fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// The feature columns the model was trained on, when known (CSV).
    pub fn feature_names(&self) -> Option<&[String]> {
        self.feature_names.as_deref()
    }

    /// Class probabilities for rows of raw features, `inputs()` values each,
    /// a few hundred rows per forward pass; a value that is not finite, as
    /// given or once standardised, is refused, naming its sample (from 1)
    /// and feature.
    pub fn predict_rows(&self, rows: &[f32]) -> Result<Vec<Vec<f32>>, PredictError> {
        let bad = |message: String| PredictError::Input { file: PathBuf::from("(rows)"), message };
        if rows.is_empty() {
            return Err(bad("no samples: expected at least one to predict".into()));
        }
        if !rows.len().is_multiple_of(self.inputs) {
            return Err(bad(format!("{} values: expected a multiple of {} features", rows.len(), self.inputs)));
        }
        let mut out = Vec::with_capacity(rows.len() / self.inputs);
        let mut batch = Vec::with_capacity(PREDICT_BATCH * self.inputs);
        for (b, chunk) in rows.chunks(PREDICT_BATCH * self.inputs).enumerate() {
            batch.clear();
            for (k, &v) in chunk.iter().enumerate() {
                let f = k % self.inputs;
                let sample = b * PREDICT_BATCH + k / self.inputs + 1;
                if !v.is_finite() {
                    return Err(bad(format!(
                        "sample {sample}, feature {}: {} is not a finite number (an f32 holds magnitudes up to \
                         about 3.4e38)",
                        self.feature(f),
                        shown(v)
                    )));
                }
                let x = match &self.standardization {
                    Some(s) => (v - s.mean[f]) / s.std[f],
                    None => v,
                };
                if !x.is_finite() {
                    return Err(bad(format!(
                        "sample {sample}, feature {}: {} is too large once standardised as in training",
                        self.feature(f),
                        shown(v)
                    )));
                }
                batch.push(x);
            }
            let n = (chunk.len() / self.inputs) as i64;
            let xs = Tensor::from_slice(&batch).view([n, self.inputs as i64]);
            let probs = tch::no_grad(|| self.net.forward(&xs, false).softmax(-1, Kind::Float));
            let flat: Vec<f32> = Vec::try_from(probs.flatten(0, -1)).unwrap_or_default();
            if flat.len() != chunk.len() / self.inputs * self.classes.len() || flat.iter().any(|p| !p.is_finite()) {
                return Err(bad(format!(
                    "samples {} to {}: the network gave no probabilities for them (values too large for it?)",
                    b * PREDICT_BATCH + 1,
                    b * PREDICT_BATCH + n as usize
                )));
            }
            out.extend(flat.chunks(self.classes.len()).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// Feature `f` (from 0) for messages: its column name when the model
    /// knows it, else its number from 1.
    fn feature(&self, f: usize) -> String {
        match self.feature_names.as_ref().and_then(|n| n.get(f)) {
            Some(name) => format!("`{name}`"),
            None => (f + 1).to_string(),
        }
    }

    /// Predicts for a batch input file ([`read_input`](Self::read_input)):
    /// class probabilities per sample, errors naming the file.
    pub fn predict_file(&self, file: &Path) -> Result<Vec<Vec<f32>>, PredictError> {
        let rows = self.read_input(file)?;
        self.predict_rows(&rows).map_err(|e| match e {
            PredictError::Input { message, .. } => PredictError::Input { file: file.to_owned(), message },
            e => e,
        })
    }

    /// Reads a batch input file: `.csv` (a header; the model's feature
    /// columns by name when it knows them, else every column), `.npy`, or
    /// IDX (gzipped or not; bytes scaled to [0, 1] as in training).
    pub fn read_input(&self, file: &Path) -> Result<Vec<f32>, PredictError> {
        let bad = |message: String| PredictError::Input { file: file.to_owned(), message };
        let name = file.to_string_lossy().to_lowercase();
        let (x, per_row) = if name.ends_with(".csv") {
            self.read_csv(file)?
        } else if name.ends_with(".npy") {
            let (x, dims) = crate::data::read_npy(file)?;
            (x, dims.iter().product())
        } else {
            let idx = crate::data::read_idx(file).map_err(|mut e| {
                if e.offset.is_some_and(|o| o < 4) {
                    e.message += " (an input is a .csv or .npy file by its name, else an IDX file, gzipped or not)";
                }
                e
            })?;
            let per_row = idx.dims.get(1..).map_or(0, |d| d.iter().product());
            (idx.data.iter().map(|&b| f32::from(b) / 255.0).collect(), per_row)
        };
        if per_row != self.inputs {
            return Err(bad(format!("{per_row} features per sample: the model expects {}", self.inputs)));
        }
        Ok(x)
    }

    fn read_csv(&self, file: &Path) -> Result<(Vec<f32>, usize), PredictError> {
        let bad = |message: String| PredictError::Input { file: file.to_owned(), message };
        let mut reader = crate::data::csv_reader(file).map_err(|e| bad(format!("cannot read: {e}")))?;
        let header: Vec<String> =
            reader.headers().map_err(|e| bad(format!("line 1: {e}")))?.iter().map(str::to_owned).collect();
        let columns: Vec<usize> = match &self.feature_names {
            Some(names) => names
                .iter()
                .map(|n| {
                    header.iter().position(|h| h == n).ok_or_else(|| {
                        bad(format!("no column `{n}`; the model was trained on columns {}", names.join(", ")))
                    })
                })
                .collect::<Result<_, _>>()?,
            None => (0..header.len()).collect(),
        };
        let mut x = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| bad(format!("line {}: {e}", e.position().map_or(0, |p| p.line()))))?;
            let line = record.position().map_or(0, |p| p.line());
            if x.len() + columns.len() > crate::data::MAX_VALUES {
                return Err(bad(format!(
                    "line {line}: more than {} values: expected a smaller file",
                    crate::data::MAX_VALUES
                )));
            }
            for &c in &columns {
                let field = record.get(c).unwrap_or("");
                let v: f32 = field
                    .parse()
                    .map_err(|_| bad(format!("line {line}: column `{}`: `{field}` is not a number", header[c])))?;
                x.push(v);
            }
        }
        Ok((x, columns.len()))
    }

    /// Streams predictions: one JSON record per input line (an array of
    /// numbers, `{"features": [...]}`, or an object of named features),
    /// one JSON answer per line, flushed at once. A bad line is answered
    /// with `{"line": n, "error": "..."}` and the stream goes on.
    /// A line is at most [`MAX_RECORD_BYTES`] long, of UTF-8 text; a longer
    /// one is skipped unread and answered with an error, as is one that is
    /// not text.
    pub fn stream(&self, mut input: impl BufRead, mut output: impl Write) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for i in 0usize.. {
            buf.clear();
            if (&mut input).take(MAX_RECORD_BYTES as u64 + 1).read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            let record = if buf.len() > MAX_RECORD_BYTES && !buf.ends_with(b"\n") {
                skip_line(&mut input)?;
                Err(format!("longer than {MAX_RECORD_BYTES} bytes: expected one record of features per line"))
            } else {
                std::str::from_utf8(&buf)
                    .map_err(|e| format!("not UTF-8 text (byte {}): expected a JSON record", e.valid_up_to()))
            };
            if record.as_ref().is_ok_and(|line| line.trim().is_empty()) {
                continue;
            }
            let answer = match record.and_then(|line| self.parse_record(line)).and_then(|row| {
                self.predict_rows(&row).map_err(|e| match e {
                    // One record a line: the line is the sample.
                    PredictError::Input { message, .. } => {
                        message.strip_prefix("sample 1, ").map(str::to_owned).unwrap_or(message)
                    }
                    e => e.to_string(),
                })
            }) {
                Ok(probs) => {
                    let p = &probs[0];
                    let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(c, _)| c);
                    serde_json::json!({ "line": i + 1, "class": best, "predicted": self.classes[best], "probabilities": p })
                }
                Err(message) => serde_json::json!({ "line": i + 1, "error": message }),
            };
            writeln!(output, "{answer}")?;
            output.flush()?;
        }
        Ok(())
    }

    fn parse_record(&self, line: &str) -> Result<Vec<f32>, String> {
        let line = line.trim_end_matches(['\n', '\r']);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let numbers = |a: &[serde_json::Value]| -> Result<Vec<f32>, String> {
            a.iter().map(|x| x.as_f64().map(|f| f as f32).ok_or_else(|| format!("`{x}` is not a number"))).collect()
        };
        let row = match &v {
            serde_json::Value::Array(a) => numbers(a)?,
            serde_json::Value::Object(o) if o.contains_key("features") => match &o["features"] {
                serde_json::Value::Array(a) => numbers(a)?,
                _ => return Err("`features` must be an array of numbers".into()),
            },
            serde_json::Value::Object(o) => {
                let names = self
                    .feature_names
                    .as_ref()
                    .ok_or("this model's features have no names: send an array of numbers or {\"features\": [...]}")?;
                names
                    .iter()
                    .map(|n| {
                        o.get(n)
                            .and_then(|x| x.as_f64())
                            .map(|f| f as f32)
                            .ok_or_else(|| format!("feature `{n}` missing or not a number"))
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => return Err("expected an array of numbers or an object".into()),
        };
        if row.len() != self.inputs {
            return Err(format!("{} features: the model expects {}", row.len(), self.inputs));
        }
        Ok(row)
    }
}
