//! Scrambled Sobol points (Sobol', 1967), as SciPy's `qmc.Sobol(scramble=True)`
//! makes them: Joe and Kuo's direction numbers (new-joe-kuo-6.21201, from
//! the `sobol` crate), a linear matrix scramble (a random lower-triangular
//! binary matrix per dimension) and a random digital shift, both drawn from
//! the experiment's seed; 52-bit points, so every f64 coordinate is exact.
//!
//! Point `n` is computed from `n` alone (the XOR of the direction numbers
//! that the bits of its Gray code select), so the state is a counter and a
//! resumed run continues the sequence exactly. Coordinates of the unit cube
//! become parameters through each domain's inverse distribution function
//! ([`crate::space::Domain::at_unit`]): log ranges in log space, integers
//! and choices by equal slices.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::space::{Params, SearchSpace};

/// Bits of each coordinate.
const BITS: usize = 52;

/// The most dimensions Joe and Kuo's numbers cover.
pub const MAX_SOBOL_DIMS: usize = 21_201;

/// Seeded scrambled Sobol points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SobolSearch {
    seed: u64,
    drawn: u64,
    /// Scrambled direction numbers and shifts, built from the seed when first needed.
    #[serde(skip)]
    table: Option<Table>,
}

#[derive(Debug, Clone)]
struct Table {
    /// `directions[d][k]`: dimension d's k-th scrambled direction number.
    directions: Vec<[u64; BITS]>,
    shifts: Vec<u64>,
}

impl SobolSearch {
    /// A sequence whose `n`-th point depends only on `seed` and `n`.
    pub fn new(seed: u64) -> Self {
        SobolSearch { seed, drawn: 0, table: None }
    }

    /// Continues after `n` points.
    pub fn skip_to(&mut self, n: u64) {
        self.drawn = n;
    }

    /// The next point of the unit cube in `dims` dimensions.
    pub fn next_point(&mut self, dims: usize) -> Vec<f64> {
        if self.table.as_ref().is_none_or(|t| t.shifts.len() != dims) {
            self.table = Some(Table::new(dims, self.seed));
        }
        let n = self.drawn;
        self.drawn += 1;
        let table = self.table.as_ref().expect("built above");
        table.point(n)
    }

    /// Proposes the next point's parameters.
    pub fn propose(&mut self, space: &SearchSpace) -> Params {
        let point = self.next_point(space.searched().count());
        space.at_unit(&point)
    }
}

impl Table {
    fn new(dims: usize, seed: u64) -> Self {
        let params =
            (dims > 1000).then(sobol::params::JoeKuoD6::extended).unwrap_or_else(sobol::params::JoeKuoD6::standard);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5_0B01_5EED);
        let mut directions = Vec::with_capacity(dims);
        let mut shifts = Vec::with_capacity(dims);
        for d in 0..dims.min(MAX_SOBOL_DIMS) {
            let raw = if d == 0 {
                std::array::from_fn(|k| 1u64 << (BITS - 1 - k))
            } else {
                let p = &params.dim_params[d - 1];
                unscrambled(p.a, &p.m)
            };
            directions.push(scramble(&raw, &mut rng));
            shifts.push(rng.random::<u64>() >> (64 - BITS));
        }
        Table { directions, shifts }
    }

    fn point(&self, n: u64) -> Vec<f64> {
        let gray = n ^ (n >> 1);
        let scale = 1.0 / (1u64 << BITS) as f64;
        self.directions
            .iter()
            .zip(&self.shifts)
            .map(|(v, &shift)| {
                let mut x = shift;
                for (k, vk) in v.iter().enumerate().take(64 - gray.leading_zeros() as usize) {
                    if gray >> k & 1 == 1 {
                        x ^= vk;
                    }
                }
                x as f64 * scale
            })
            .collect()
    }
}

/// Direction numbers from a primitive polynomial (its inner coefficients
/// `a`, degree `m.len()`) and initial numbers `m`: Joe and Kuo's recurrence
/// `v_k = a_1 v_{k-1} ^ ... ^ a_{s-1} v_{k-s+1} ^ v_{k-s} ^ (v_{k-s} >> s)`.
fn unscrambled(a: u32, m: &[u32]) -> [u64; BITS] {
    let s = m.len();
    let mut v = [0u64; BITS];
    for k in 0..BITS {
        v[k] = if k < s {
            u64::from(m[k]) << (BITS - 1 - k)
        } else {
            let mut x = v[k - s] ^ (v[k - s] >> s);
            for i in 1..s {
                if (a >> (s - 1 - i)) & 1 == 1 {
                    x ^= v[k - i];
                }
            }
            x
        };
    }
    v
}

/// Linear matrix scrambling: each direction number, as a column of bits
/// (most significant first), times a random lower-triangular matrix with a
/// unit diagonal over GF(2).
fn scramble(v: &[u64; BITS], rng: &mut ChaCha8Rng) -> [u64; BITS] {
    // Row r: random bits left of (more significant than) the diagonal, and the diagonal.
    let rows: Vec<u64> = (0..BITS)
        .map(|r| {
            let diagonal = 1u64 << (BITS - 1 - r);
            let above = !((diagonal << 1).wrapping_sub(1)) & ((1u64 << BITS) - 1);
            (rng.random::<u64>() & above) | diagonal
        })
        .collect();
    std::array::from_fn(|k| {
        rows.iter()
            .enumerate()
            .fold(0u64, |out, (r, row)| out | (u64::from((row & v[k]).count_ones() & 1) << (BITS - 1 - r)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{Domain, ParamValue};

    #[test]
    fn unscrambled_points_are_the_classic_sequence() {
        // The first points of the 2-D Sobol sequence (Gray-code order, as SciPy's):
        // 0, 1/2, 3/4, 1/4, 3/8, 7/8, ... in the first dimension.
        let first = std::array::from_fn(|k| 1u64 << (BITS - 1 - k));
        let p = sobol::params::JoeKuoD6::standard();
        let second = unscrambled(p.dim_params[0].a, &p.dim_params[0].m);
        let table = Table { directions: vec![first, second], shifts: vec![0, 0] };
        let points: Vec<Vec<f64>> = (0..6).map(|n| table.point(n)).collect();
        assert_eq!(points[0], [0.0, 0.0]);
        assert_eq!(points[1], [0.5, 0.5]);
        assert_eq!(points[2], [0.75, 0.25]);
        assert_eq!(points[3], [0.25, 0.75]);
        assert_eq!(points[4], [0.375, 0.375]);
        assert_eq!(points[5], [0.875, 0.875]);
    }

    #[test]
    fn scrambled_points_keep_the_net_property_and_resume() {
        // Any 2^k consecutive-from-0 points of a (scrambled) Sobol sequence put
        // exactly one point in each of 2^k equal slices of every axis.
        let mut s = SobolSearch::new(42);
        let points: Vec<Vec<f64>> = (0..64).map(|_| s.next_point(5)).collect();
        for d in 0..5 {
            let mut slices = [0; 64];
            for p in &points {
                assert!((0.0..1.0).contains(&p[d]));
                slices[(p[d] * 64.0) as usize] += 1;
            }
            assert!(slices.iter().all(|&c| c == 1), "dimension {d}: {slices:?}");
        }
        // Another seed scrambles differently; the same seed is the same sequence.
        assert_ne!(SobolSearch::new(43).next_point(5), points[0]);
        assert_eq!(SobolSearch::new(42).next_point(5), points[0]);
        // The state is a counter: a round trip continues exactly.
        let mut a = SobolSearch::new(7);
        let space = SearchSpace::new()
            .with("lr", Domain::LogUniform { low: 1e-4, high: 1e-1 })
            .with("units", Domain::Int { low: 8, high: 512, log: true })
            .with("opt", Domain::Choice(["adam", "sgd"].map(|c| ParamValue::Str(c.into())).to_vec()));
        for _ in 0..10 {
            a.propose(&space);
        }
        let mut b: SobolSearch = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(a.propose(&space), b.propose(&space));
    }

    #[test]
    fn points_cover_every_choice_and_range_evenly() {
        let space = SearchSpace::new()
            .with("opt", Domain::Choice(["adam", "sgd", "rms", "ada"].map(|c| ParamValue::Str(c.into())).to_vec()))
            .with("x", Domain::Uniform { low: -1.0, high: 1.0 });
        let mut s = SobolSearch::new(1);
        let drawn: Vec<Params> = (0..32).map(|_| s.propose(&space)).collect();
        for name in ["adam", "sgd", "rms", "ada"] {
            assert_eq!(drawn.iter().filter(|p| p["opt"].as_str() == Some(name)).count(), 8, "{name}");
        }
        let below = drawn.iter().filter(|p| p["x"].as_f64().unwrap() < 0.0).count();
        assert_eq!(below, 16);
    }
}
