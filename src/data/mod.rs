//! Data sets: loaded once per process and shared by every trial through
//! `Arc`s (the "broadcast" of Spark-based tuning, without Spark).

mod idx;
mod synthetic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{Config, DataSource};

pub use idx::read_idx;

/// The Fashion-MNIST training files Gauntlet reads.
pub const FASHION_FILES: [&str; 2] = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"];

/// Fashion-MNIST's class names, by label.
pub const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// A data file that cannot be used: which file, where, and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), offset.map(|o| format!(" at byte {o}")).unwrap_or_default())]
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
}

impl Dataset {
    /// Loads what `[data]` describes.
    pub fn load(config: &Config) -> Result<Dataset, DataError> {
        let d = &config.data;
        let (x, y, features, classes, names) = match d.source {
            DataSource::Synthetic => {
                let (x, y) = synthetic::generate(d.samples, d.features, d.classes, d.seed);
                (x, y, d.features, d.classes, None)
            }
            DataSource::FashionMnist => {
                let dir = config.data_dir();
                let (x, y, features) = load_fashion(&dir)?;
                if y.len() < 2 {
                    return Err(DataError {
                        file: dir.join(FASHION_FILES[1]),
                        offset: None,
                        message: format!("{} samples: expected at least 2 (one to train on, one to validate)", y.len()),
                    });
                }
                (x, y, features, 10, Some(FASHION_CLASSES.iter().map(|s| s.to_string()).collect()))
            }
        };
        Ok(Self::split(x, y, features, classes, names, d.validation_fraction, d.max_samples, d.seed))
    }

    /// Shuffles (seeded), caps at `max_samples`, and holds out a validation share.
    #[allow(clippy::too_many_arguments)]
    pub fn split(
        x: Vec<f32>,
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
        let take = |idx: &[usize]| Split {
            x: idx.iter().flat_map(|&i| x[i * features..(i + 1) * features].iter().copied()).collect(),
            y: idx.iter().map(|&i| y[i]).collect(),
        };
        Dataset { features, classes, class_names, validation: take(&order[..n_val]), train: take(&order[n_val..]) }
    }
}

fn load_fashion(dir: &Path) -> Result<(Vec<f32>, Vec<i64>, usize), DataError> {
    let images = read_idx(&dir.join(FASHION_FILES[0]))?;
    let labels = read_idx(&dir.join(FASHION_FILES[1]))?;
    let file = dir.join(FASHION_FILES[1]);
    if images.dims.len() != 3 {
        return Err(DataError {
            file: dir.join(FASHION_FILES[0]),
            offset: Some(3),
            message: format!("expected 3 dimensions (images x rows x cols), found {}", images.dims.len()),
        });
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        return Err(DataError {
            file,
            offset: Some(4),
            message: format!("expected {} labels (one per image), found dimensions {:?}", images.dims[0], labels.dims),
        });
    }
    if let Some(pos) = labels.data.iter().position(|&l| l > 9) {
        return Err(DataError {
            file,
            offset: Some((labels.header_len + pos) as u64),
            message: format!("label {} out of range: expected 0 to 9", labels.data[pos]),
        });
    }
    let features = images.dims[1] * images.dims[2];
    let x = images.data.iter().map(|&p| f32::from(p) / 255.0).collect();
    let y = labels.data.iter().map(|&l| i64::from(l)).collect();
    Ok((x, y, features))
}
