//! A learnable classification set made in memory: Gaussian clusters around
//! random class centres, close enough to overlap, so that hyperparameters
//! matter and accuracy separates good trials from poor ones.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::source::{KeyError, Known, Source, SourceData, SourceKind};
use super::{DataError, Values};

/// `[data] source = "synthetic"`.
pub(super) const SOURCE: SourceKind = SourceKind {
    name: "synthetic",
    keys: &["samples", "features", "classes"],
    take: |keys| {
        let s = Synthetic {
            samples: keys.samples.take().unwrap_or(2000),
            features: keys.features.take().unwrap_or(20),
            classes: keys.classes.take().unwrap_or(4),
        };
        s.check()?;
        Ok(Box::new(s))
    },
};

/// A learnable set of `samples` rows, `features` wide, in `classes` classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synthetic {
    /// Samples in all.
    pub samples: usize,
    /// Features per sample.
    pub features: usize,
    /// Classes.
    pub classes: usize,
}

impl Synthetic {
    /// What a model that reads no data is given: the least there can be.
    pub const NONE: Synthetic = Synthetic { samples: 10, features: 1, classes: 2 };

    fn check(&self) -> Result<(), KeyError> {
        if !(1..=100_000).contains(&self.features) {
            return Err(("data.features".into(), format!("expected 1 to 100000, got {}", self.features)));
        }
        if !(2..=10_000).contains(&self.classes) {
            return Err(("data.classes".into(), format!("expected 2 to 10000, got {}", self.classes)));
        }
        if self.samples < 10 || self.samples.saturating_mul(self.features) > 500_000_000 {
            return Err((
                "data.samples".into(),
                format!("expected at least 10 and samples x features at most 5e8, got {}", self.samples),
            ));
        }
        Ok(())
    }
}

impl Source for Synthetic {
    fn name(&self) -> &'static str {
        SOURCE.name
    }

    fn known(&self) -> Option<Known> {
        Some(Known { samples: self.samples, features: self.features, image: None, classes: self.classes })
    }

    fn read(&self, seed: u64) -> Result<SourceData, DataError> {
        let (x, y) = generate(self.samples, self.features, self.classes, seed);
        let (dims, classes) = (vec![self.features], self.classes);
        Ok(SourceData { x: Values::Floats(x), y, dims, classes, class_names: None, feature_names: None })
    }

    fn boxed(&self) -> Box<dyn Source> {
        Box::new(*self)
    }
}

/// `samples` rows of `features` values and labels in `0..classes`.
fn generate(samples: usize, features: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = || -> f32 { StandardNormal.sample(&mut rng) };
    // Centres about 2.8 noise units apart whatever the dimension, so that
    // clusters overlap: the best models reach roughly 85% accuracy, poor
    // ones much less.
    let spread = 2.0 / (features as f32).sqrt();
    let centres: Vec<f32> = (0..classes * features).map(|_| normal() * spread).collect();
    let mut x = Vec::with_capacity(samples * features);
    let mut y = Vec::with_capacity(samples);
    for i in 0..samples {
        let class = i % classes;
        for f in 0..features {
            let c = centres[class * features + f];
            // A mild non-linearity: the first feature is folded.
            let v = c + normal();
            x.push(if f == 0 { v.abs() } else { v });
        }
        y.push(class as i64);
    }
    (x, y)
}
