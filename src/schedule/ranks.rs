//! Scores kept in order so that "how many are better than this one" costs
//! O(√n), not O(n): sorted chunks of at most `CHUNK` values. A rung of
//! 100,000 trials answers in microseconds, which keeps the scheduler's work
//! per report flat as a sweep grows.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const CHUNK: usize = 512;

/// A multiset of scores with rank queries.
#[derive(Debug, Clone, Default)]
pub struct Ranks {
    chunks: Vec<Vec<f64>>,
    len: usize,
}

impl Ranks {
    /// How many scores are held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no score is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a score (NaN is not a score: callers filter it).
    pub fn insert(&mut self, x: f64) {
        self.len += 1;
        // The first chunk whose largest value is >= x, else the last.
        let i = self.chunks.partition_point(|c| c.last().is_some_and(|&m| m < x));
        let i = i.min(self.chunks.len().saturating_sub(1));
        let Some(chunk) = self.chunks.get_mut(i) else {
            self.chunks.push(vec![x]);
            return;
        };
        let at = chunk.partition_point(|&v| v < x);
        chunk.insert(at, x);
        if chunk.len() > 2 * CHUNK {
            let upper = chunk.split_off(CHUNK);
            self.chunks.insert(i + 1, upper);
        }
    }

    /// How many held scores are strictly greater than `x`.
    pub fn greater_than(&self, x: f64) -> usize {
        let i = self.chunks.partition_point(|c| c.last().is_some_and(|&m| m <= x));
        let within = self.chunks.get(i).map_or(0, |c| c.len() - c.partition_point(|&v| v <= x));
        within + self.chunks[(i + 1).min(self.chunks.len())..].iter().map(Vec::len).sum::<usize>()
    }

    /// The `k`-th smallest score (from 0), if there are more than `k`.
    pub fn nth(&self, k: usize) -> Option<f64> {
        let mut k = k;
        for c in &self.chunks {
            if k < c.len() {
                return Some(c[k]);
            }
            k -= c.len();
        }
        None
    }

    /// The median: the middle score, or the mean of the two middle ones.
    pub fn median(&self) -> Option<f64> {
        let n = self.len;
        match n {
            0 => None,
            _ if n % 2 == 1 => self.nth(n / 2),
            _ => Some((self.nth(n / 2 - 1)? + self.nth(n / 2)?) / 2.0),
        }
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.chunks.iter().flatten().copied()
    }
}

impl Serialize for Ranks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.values())
    }
}

impl<'de> Deserialize<'de> for Ranks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut ranks = Ranks::default();
        for x in Vec::<f64>::deserialize(d)? {
            ranks.insert(x);
        }
        Ok(ranks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn agrees_with_counting() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut ranks = Ranks::default();
        let mut all = Vec::new();
        for i in 0..5_000 {
            // Many ties: values on a coarse grid.
            let x = f64::from(rng.random_range(0..300)) / 10.0;
            ranks.insert(x);
            all.push(x);
            if i % 97 == 0 {
                for q in [x, x + 0.05, -1.0, 100.0, 15.0] {
                    assert_eq!(ranks.greater_than(q), all.iter().filter(|&&v| v > q).count(), "q={q}");
                }
            }
        }
        assert_eq!(ranks.len(), 5_000);
        all.sort_by(f64::total_cmp);
        for k in [0, 1, 511, 512, 2_500, 4_999] {
            assert_eq!(ranks.nth(k), Some(all[k]), "k={k}");
        }
        assert_eq!(ranks.nth(5_000), None);
        assert_eq!(ranks.median(), Some((all[2_499] + all[2_500]) / 2.0));
        let back: Ranks = serde_json::from_str(&serde_json::to_string(&ranks).unwrap()).unwrap();
        assert_eq!(back.greater_than(15.0), ranks.greater_than(15.0));
    }
}
