//! Search algorithms: pure, seeded policies that propose hyperparameters.
//!
//! A searcher's state is serde data (a position, observed results); it does
//! no I/O and reads no clock, so the same seed gives the same proposals and a
//! resumed run continues the same sequence.

mod grid;
mod random;
mod sobol;

use serde::{Deserialize, Serialize};

use crate::config::{Params, SearchSpace};

pub use grid::GridSearch;
pub use random::RandomSearch;
pub use sobol::{SobolSearch, MAX_SOBOL_DIMS};

/// The most values a grid dimension may have (`search.grid_points`).
pub const MAX_GRID_POINTS: u32 = 1000;

/// `[search]`: one table per algorithm, tagged by `algorithm`, each with
/// its own keys (another algorithm's key is an error naming it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum SearchConfig {
    /// Every combination, in order.
    Grid(GridConfig),
    /// Independent seeded draws.
    Random(NoKeys),
    /// Scrambled Sobol points.
    Sobol(NoKeys),
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig::Random(NoKeys {})
    }
}

/// An algorithm without settings of its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoKeys {}

/// `[search] algorithm = "grid"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridConfig {
    /// Values per continuous dimension.
    #[serde(default = "three")]
    pub grid_points: u32,
}

fn three() -> u32 {
    3
}

impl SearchConfig {
    /// The algorithm's name, as written in configs.
    pub fn name(&self) -> &'static str {
        match self {
            SearchConfig::Grid(_) => "grid",
            SearchConfig::Random(_) => "random",
            SearchConfig::Sobol(_) => "sobol",
        }
    }

    /// Checks the algorithm's keys against the space: the key at fault and what is expected.
    pub fn check(&self, space: &SearchSpace) -> Result<(), (&'static str, String)> {
        match self {
            SearchConfig::Grid(g) if !(1..=MAX_GRID_POINTS).contains(&g.grid_points) => {
                Err(("search.grid_points", format!("expected 1 to {MAX_GRID_POINTS}, got {}", g.grid_points)))
            }
            SearchConfig::Sobol(_) if space.searched().count() > MAX_SOBOL_DIMS => Err((
                "search.algorithm",
                format!(
                    "sobol has direction numbers for {MAX_SOBOL_DIMS} dimensions; this space searches {}",
                    space.searched().count()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// A search algorithm with its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum Searcher {
    /// Every combination in order.
    Grid(GridSearch),
    /// Independent seeded draws.
    Random(RandomSearch),
    /// Scrambled Sobol points.
    Sobol(SobolSearch),
}

impl Searcher {
    /// Builds the searcher a config asks for.
    pub fn new(config: &SearchConfig, space: &SearchSpace, seed: u64) -> Self {
        match config {
            SearchConfig::Grid(g) => Searcher::Grid(GridSearch::new(space, g.grid_points.max(1) as usize)),
            SearchConfig::Random(_) => Searcher::Random(RandomSearch::new(seed)),
            SearchConfig::Sobol(_) => Searcher::Sobol(SobolSearch::new(seed)),
        }
    }

    /// Proposes the parameters of the next trial, or `None` when the space is exhausted.
    pub fn propose(&mut self, space: &SearchSpace) -> Option<Params> {
        match self {
            Searcher::Grid(g) => g.propose(space),
            Searcher::Random(r) => Some(r.propose(space)),
            Searcher::Sobol(s) => Some(s.propose(space)),
        }
    }
}
