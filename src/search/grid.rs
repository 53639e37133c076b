//! Grid search: the Cartesian product of every dimension's grid values,
//! walked in mixed-radix order (the last dimension changes fastest).

use serde::{Deserialize, Serialize};

use crate::space::{Params, SearchSpace};

/// Every combination, once, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GridSearch {
    points: usize,
    position: u64,
    size: u64,
}

impl GridSearch {
    /// A grid over `space` with `points` values per continuous dimension.
    pub fn new(space: &SearchSpace, points: usize) -> Self {
        let size = space.dims().iter().map(|(_, d)| d.grid(points).len() as u64).fold(1u64, |a, b| a.saturating_mul(b));
        GridSearch { points, position: 0, size }
    }

    /// The number of combinations.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Continues after `n` combinations.
    pub fn skip_to(&mut self, n: u64) {
        self.position = n;
    }

    /// Whether every combination was proposed.
    pub fn is_exhausted(&self) -> bool {
        self.position >= self.size
    }

    /// The next combination, or `None` after the last.
    pub fn propose(&mut self, space: &SearchSpace) -> Option<Params> {
        if self.position >= self.size {
            return None;
        }
        let mut rest = self.position;
        let mut params = Params::new();
        for (name, domain) in space.dims().iter().rev() {
            let values = domain.grid(self.points);
            let n = values.len() as u64;
            params.insert(name.clone(), values[(rest % n) as usize].clone());
            rest /= n;
        }
        self.position += 1;
        Some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{Domain, ParamValue};

    #[test]
    fn visits_every_combination_once() {
        let space = SearchSpace::new()
            .with("opt", Domain::Choice(vec![ParamValue::Str("adam".into()), ParamValue::Str("sgd".into())]))
            .with("layers", Domain::Int { low: 1, high: 3, log: false })
            .with("lr", Domain::LogUniform { low: 1e-3, high: 1e-1 })
            .with("fixed", Domain::Fixed(ParamValue::Int(5)));
        let mut grid = GridSearch::new(&space, 3);
        assert_eq!(grid.size(), 2 * 3 * 3);
        let all: Vec<Params> = std::iter::from_fn(|| grid.propose(&space)).collect();
        assert_eq!(all.len(), 18);
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b), "duplicate {a:?}");
            assert_eq!(a["fixed"], ParamValue::Int(5));
        }
        assert_eq!(all[0]["lr"], ParamValue::Float(1e-3));
        assert_eq!(all[2]["lr"], ParamValue::Float(1e-1));
        assert!((all[1]["lr"].as_f64().unwrap() - 1e-2).abs() < 1e-12);
        assert!((all[2]["lr"].as_f64().unwrap() - 1e-1).abs() < 1e-12);
    }
}
