//! Data sets: loaded once per process and shared by every trial through
//! `Arc`s (the "broadcast" of Spark-based tuning, without Spark).

mod idx;
mod npy;
pub mod source;
mod synthetic;
mod tabular;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::Config;

pub use idx::{read_idx, FashionMnist};
pub use npy::read_samples as read_npy;
pub use npy::NpzFile;
pub use source::{FilePair, Known, Source};
pub use synthetic::Synthetic;
pub(crate) use tabular::csv_reader;
pub use tabular::CsvFile;

/// The most values (samples x features) a data set may have: each is held
/// as a 4-byte float, so 4 GiB, in the coordinator and in every worker.
/// Every size a data file declares is checked against this, and against
/// what the file can hold, before anything is allocated.
pub const MAX_VALUES: usize = 1 << 30;

/// The most classes a data set may have (the largest label plus one).
pub const MAX_CLASSES: usize = 65_536;

/// The default Fashion-MNIST directory (Debian's `dataset-fashion-mnist`).
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The Fashion-MNIST training files Gauntlet reads.
pub const FASHION_FILES: [&str; 2] = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"];

/// Fashion-MNIST's class names, by label.
pub const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// A data file that cannot be used: which file, where, and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{}{}{}{message}", file.display(), offset.map(|o| format!(" at byte {o}")).unwrap_or_default(), if file.as_os_str().is_empty() { "" } else { ": " })]
pub struct DataError {
    /// The file.
    pub file: PathBuf,
    /// The byte offset of the problem, when known.
    pub offset: Option<u64>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Features and labels of one split, row-major.
#[derive(Debug, Clone)]
pub struct Split {
    /// `rows * features` values.
    pub x: Arc<[f32]>,
    /// `rows` labels in `0..classes`.
    pub y: Arc<[i64]>,
}

impl Split {
    /// The number of samples.
    pub fn rows(&self) -> usize {
        self.y.len()
    }
}

/// A classification data set, split into training and validation samples.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Features per sample.
    pub features: usize,
    /// Number of classes.
    pub classes: usize,
    /// Class names, when the source has them.
    pub class_names: Option<Vec<String>>,
    /// Training samples.
    pub train: Split,
    /// Validation samples.
    pub validation: Split,
    /// The standardisation applied to every feature, if any.
    pub standardization: Option<Standardization>,
    /// Each sample's shape as channels x height x width, when the source
    /// has images (a convolutional model needs it).
    pub shape: Option<Vec<usize>>,
    /// The features' names, when the source has them (CSV columns).
    pub feature_names: Option<Vec<String>>,
}

/// Per-feature standardisation, computed on the training split only:
/// `x' = (x - mean) / std`. Prediction applies the same to its inputs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standardization {
    /// Each feature's mean.
    pub mean: Vec<f32>,
    /// Each feature's standard deviation (1 where it was 0).
    pub std: Vec<f32>,
}

impl Standardization {
    /// The mean and deviation of each feature of `split`.
    pub fn of(split: &Split, features: usize) -> Self {
        let rows = split.rows().max(1) as f64;
        let mut mean = vec![0f64; features];
        let mut sq = vec![0f64; features];
        for row in split.x.chunks_exact(features) {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += f64::from(v);
                sq[j] += f64::from(v) * f64::from(v);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|s| s / rows).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let sd = (s / rows - m * m).max(0.0).sqrt();
                if sd > 1e-12 {
                    sd as f32
                } else {
                    1.0
                }
            })
            .collect();
        Standardization { mean: mean.iter().map(|&m| m as f32).collect(), std }
    }

    /// Standardises rows of features where they are.
    pub fn apply_in_place(&self, x: &mut [f32]) {
        let features = self.mean.len().max(1);
        for row in x.chunks_exact_mut(features) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*v - self.mean[j]) / self.std[j];
            }
        }
    }

    /// Standardises rows of features.
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let features = self.mean.len();
        x.chunks_exact(features)
            .flat_map(|row| row.iter().enumerate().map(|(j, &v)| (v - self.mean[j]) / self.std[j]))
            .collect()
    }
}

impl Dataset {
    /// The bytes its samples and labels take.
    pub fn bytes(&self) -> u64 {
        let split = |s: &Split| (s.x.len() * 4 + s.y.len() * 8) as u64;
        split(&self.train) + split(&self.validation)
    }

    /// Loads what `[data]` describes.
    pub fn load(config: &Config) -> Result<Dataset, DataError> {
        let d = &config.data;
        let source::SourceData { x, y, dims, classes, class_names: names, feature_names } = d.source.read(d.seed)?;
        if y.len() < 2 {
            return Err(too_few_samples(y.len(), &d.source.labels_file()));
        }
        let features = dims.iter().product::<usize>();
        if features == 0 {
            return Err(DataError {
                file: d.source.samples_file(),
                offset: None,
                message: format!("samples of shape {dims:?} hold no values: expected at least one feature"),
            });
        }
        let mut data = Self::split(x, y, features, classes, names, d.validation_fraction, d.max_samples, d.seed);
        data.feature_names = feature_names;
        data.shape = match dims[..] {
            [h, w] => Some(vec![1, h, w]),
            [c, h, w] => Some(vec![c, h, w]),
            _ => None,
        };
        if d.standardize {
            let s = Standardization::of(&data.train, features);
            for split in [&mut data.train, &mut data.validation] {
                match Arc::get_mut(&mut split.x) {
                    Some(x) => s.apply_in_place(x),
                    None => split.x = s.apply(&split.x).into(),
                }
            }
            data.standardization = Some(s);
        }
        Ok(data)
    }

    /// Shuffles (seeded), caps at `max_samples`, and holds out a validation share.
    #[allow(clippy::too_many_arguments)]
    fn split(
        x: Values,
        y: Vec<i64>,
        features: usize,
        classes: usize,
        class_names: Option<Vec<String>>,
        validation_fraction: f64,
        max_samples: Option<usize>,
        seed: u64,
    ) -> Dataset {
        let mut order: Vec<usize> = (0..y.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_DA7A));
        order.truncate(max_samples.unwrap_or(usize::MAX));
        let n_val = ((order.len() as f64 * validation_fraction).round() as usize).clamp(1, order.len() - 1);
        let rows = |idx: &[usize]| match &x {
            Values::Floats(v) => gather(v, features, idx, |f| f),
            Values::Pixels(v) => gather(v, features, idx, |p| f32::from(p) / 255.0),
        };
        let take = |idx: &[usize]| Split { x: rows(idx), y: idx.iter().map(|&i| y[i]).collect() };
        Dataset {
            features,
            classes,
            class_names,
            validation: take(&order[..n_val]),
            train: take(&order[n_val..]),
            standardization: None,
            shape: None,
            feature_names: None,
        }
    }
}

/// The rows `idx` of `x`, in that order, in one allocation of exactly their
/// size (collecting an iterator would grow a `Vec` by doubling and then
/// copy it into the `Arc`: three times the split's size at its peak).
fn gather<T: Copy>(x: &[T], features: usize, idx: &[usize], value: impl Fn(T) -> f32) -> Arc<[f32]> {
    if features == 0 {
        return Arc::from([]);
    }
    let mut out = Arc::<[f32]>::new_uninit_slice(idx.len() * features);
    let slots = Arc::get_mut(&mut out).expect("a new Arc has no other owner");
    for (row, &i) in slots.chunks_exact_mut(features).zip(idx) {
        for (slot, &v) in row.iter_mut().zip(&x[i * features..(i + 1) * features]) {
            slot.write(value(v));
        }
    }
    // SAFETY: every element was written: idx.len() rows of `features` values.
    unsafe { out.assume_init() }
}

/// Reads until `buf` is full or the stream ends; the bytes read (a short
/// count is a file that ends early, which the caller reports with its offset).
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match reader.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Sample values as a file holds them, made floats only as they are split
/// (so that a data set of bytes is never held as floats twice).
enum Values {
    Floats(Vec<f32>),
    /// Bytes, scaled to [0, 1].
    Pixels(Vec<u8>),
}

/// Samples (row-major), their labels, and one sample's dimensions.
type Samples = (Values, Vec<i64>, Vec<usize>);

/// `key`'s file exists, or what is wrong.
fn check_file(key: &str, path: &Path) -> Result<(), source::KeyError> {
    if path.is_file() {
        Ok(())
    } else {
        Err((key.to_owned(), format!("{} does not exist or is not a file", path.display())))
    }
}

/// The number of classes integer labels imply (the largest plus one).
/// Labels are class indexes: one beyond [`MAX_CLASSES`], or beyond the
/// number of samples (so that some classes could have no sample at all),
/// is refused, naming the sample, rather than becoming a huge output layer.
fn too_few_samples(n: usize, file: &Path) -> DataError {
    DataError {
        file: file.to_owned(),
        offset: None,
        message: format!("{n} samples: expected at least 2 (one to train on, one to validate)"),
    }
}

fn classes_of(y: &[i64], file: &Path) -> Result<usize, DataError> {
    if y.len() < 2 {
        return Err(too_few_samples(y.len(), file));
    }
    let bound = MAX_CLASSES.min(y.len()) as i64;
    if let Some(i) = y.iter().position(|&l| l < 0 || l >= bound) {
        let why = if y[i] < 0 {
            "expected a class index, 0 or more".to_owned()
        } else if bound == MAX_CLASSES as i64 {
            format!("expected a class index below {MAX_CLASSES}, the most classes a data set may have")
        } else {
            format!(
                "expected a class index below the number of samples ({}): labels number the classes 0, 1, 2, ...",
                y.len()
            )
        };
        return Err(DataError {
            file: file.to_owned(),
            offset: None,
            message: format!("label {} of sample {i}: {why}", y[i]),
        });
    }
    let classes = y.iter().copied().max().unwrap_or(0) as usize + 1;
    if classes < 2 {
        return Err(DataError {
            file: file.to_owned(),
            offset: None,
            message: "every label is 0: expected at least two classes".into(),
        });
    }
    Ok(classes)
}

/// Samples (any number of dimensions after the first) and their labels from
/// two IDX files; bytes are scaled to [0, 1]. `classes` caps the labels.
fn load_idx_pair(images_file: &Path, labels_file: &Path, classes: Option<u8>) -> Result<Samples, DataError> {
    let images = read_idx(images_file)?;
    let labels = read_idx(labels_file)?;
    let file = labels_file.to_owned();
    if images.dims.len() < 2 {
        return Err(DataError {
            file: images_file.to_owned(),
            offset: Some(3),
            message: format!(
                "expected at least 2 dimensions (samples x features, or images x rows x cols), found {}",
                images.dims.len()
            ),
        });
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        return Err(DataError {
            file,
            offset: Some(4),
            message: format!("expected {} labels (one per image), found dimensions {:?}", images.dims[0], labels.dims),
        });
    }
    if let Some(max) = classes {
        if let Some(pos) = labels.data.iter().position(|&l| l >= max) {
            return Err(DataError {
                file,
                offset: Some((labels.header_len + pos) as u64),
                message: format!("label {} out of range: expected 0 to {}", labels.data[pos], max - 1),
            });
        }
    }
    let features = images.dims[1..].to_vec();
    let x = Values::Pixels(images.data);
    let y = labels.data.iter().map(|&l| i64::from(l)).collect();
    Ok((x, y, features))
}
