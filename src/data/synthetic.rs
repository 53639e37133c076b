//! A learnable classification set made in memory: Gaussian clusters around
//! random class centres, close enough to overlap, so that hyperparameters
//! matter and accuracy separates good trials from poor ones.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// `samples` rows of `features` values and labels in `0..classes`.
pub(super) fn generate(samples: usize, features: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
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
