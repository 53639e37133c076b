//! Search algorithms: pure, seeded policies that propose hyperparameters.
//!
//! A searcher's state is serde data (a position, observed results); it does
//! no I/O and reads no clock, so the same seed gives the same proposals and a
//! resumed run continues the same sequence.

mod grid;
mod random;

use serde::{Deserialize, Serialize};

use crate::config::{Params, SearchAlgorithm, SearchSpace};

pub use grid::GridSearch;
pub use random::RandomSearch;

/// A search algorithm with its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Searcher {
    /// Every combination in order.
    Grid(GridSearch),
    /// Independent seeded draws.
    Random(RandomSearch),
}

impl Searcher {
    /// Builds the searcher a config asks for.
    pub fn new(algorithm: SearchAlgorithm, space: &SearchSpace, seed: u64, grid_points: u32) -> Self {
        match algorithm {
            SearchAlgorithm::Grid => Searcher::Grid(GridSearch::new(space, grid_points as usize)),
            SearchAlgorithm::Random => Searcher::Random(RandomSearch::new(seed)),
        }
    }

    /// Proposes the parameters of the next trial, or `None` when the space is exhausted.
    pub fn propose(&mut self, space: &SearchSpace) -> Option<Params> {
        match self {
            Searcher::Grid(g) => g.propose(space),
            Searcher::Random(r) => Some(r.propose(space)),
        }
    }
}
