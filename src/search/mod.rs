//! Search algorithms: pure, seeded policies that propose hyperparameters.
//!
//! A searcher's state is serde data (a position, observed results); it does
//! no I/O and reads no clock, so the same seed gives the same proposals and a
//! resumed run continues the same sequence.

mod grid;
mod random;
mod sobol;
mod tpe;

use serde::{Deserialize, Serialize};

use crate::space::{Mode, Params, SearchSpace};
use crate::trial::Trial;

pub use grid::GridSearch;
pub use random::RandomSearch;
pub use sobol::{SobolSearch, MAX_SOBOL_DIMS};
pub use tpe::{TpeConfig, TpeSearch};

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
    /// The Tree-structured Parzen Estimator.
    Tpe(TpeConfig),
}

impl SearchConfig {
    /// The algorithms, as `algorithm` names them.
    pub const KINDS: &'static [&'static str] = &["random", "grid", "sobol", "tpe"];

    /// The algorithm `kind` with `keys` (the table but `algorithm`), read
    /// key by key so that an error names its key; `None` for an unknown one.
    pub fn from_keys(kind: &str, keys: serde_json::Value) -> Option<crate::schedule::KeyedResult<Self>> {
        Some(match kind {
            "random" => crate::schedule::keyed(keys).map(SearchConfig::Random),
            "grid" => crate::schedule::keyed(keys).map(SearchConfig::Grid),
            "sobol" => crate::schedule::keyed(keys).map(SearchConfig::Sobol),
            "tpe" => crate::schedule::keyed(keys).map(SearchConfig::Tpe),
            _ => return None,
        })
    }
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
            SearchConfig::Tpe(_) => "tpe",
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
            SearchConfig::Tpe(t) if t.candidates == 0 || t.candidates > 10_000 => {
                Err(("search.candidates", format!("expected 1 to 10000, got {}", t.candidates)))
            }
            SearchConfig::Tpe(t) if t.startup_trials > 1_000_000 => {
                Err(("search.startup_trials", format!("expected at most 1000000, got {}", t.startup_trials)))
            }
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
    /// The Tree-structured Parzen Estimator.
    Tpe(TpeSearch),
}

impl Searcher {
    /// Builds the searcher a config asks for.
    pub fn new(config: &SearchConfig, space: &SearchSpace, seed: u64) -> Self {
        match config {
            SearchConfig::Grid(g) => Searcher::Grid(GridSearch::new(space, g.grid_points.max(1) as usize)),
            SearchConfig::Random(_) => Searcher::Random(RandomSearch::new(seed)),
            SearchConfig::Sobol(_) => Searcher::Sobol(SobolSearch::new(seed)),
            SearchConfig::Tpe(t) => Searcher::Tpe(TpeSearch::new(t, seed)),
        }
    }

    /// Continues after `n` proposals: a resumed run proposes nothing again,
    /// its past proposals are in the journal.
    pub fn skip_to(&mut self, n: u64) {
        match self {
            Searcher::Grid(g) => g.skip_to(n),
            Searcher::Random(r) => r.skip_to(n),
            Searcher::Sobol(s) => s.skip_to(n),
            Searcher::Tpe(t) => t.skip_to(n),
        }
    }

    /// Observes that a trial's parameters changed after its proposal (PBT's
    /// exploit): what a searcher learnt from the old ones goes.
    pub fn params_changed(&mut self, trial: crate::trial::TrialId) {
        if let Searcher::Tpe(t) = self {
            t.forget(trial);
        }
    }

    /// Whether it has nothing more to propose (a grid done; the other
    /// searchers never run dry), as its position says: known after a
    /// replay too, without proposing.
    pub fn is_exhausted(&self) -> bool {
        matches!(self, Searcher::Grid(g) if g.is_exhausted())
    }

    /// Proposes the parameters of the next trial, or `None` when the space
    /// is exhausted. `trials`: every trial so far, as they stand (the
    /// experiment state's own table, lent: TPE learns from it); `mode`:
    /// which way is better.
    pub fn propose(&mut self, space: &SearchSpace, trials: &[Trial], mode: Mode) -> Option<Params> {
        match self {
            Searcher::Grid(g) => g.propose(space),
            Searcher::Random(r) => Some(r.propose(space)),
            Searcher::Sobol(s) => Some(s.propose(space)),
            Searcher::Tpe(t) => Some(t.propose(space, trials, mode)),
        }
    }
}
