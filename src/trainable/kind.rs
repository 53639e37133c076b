//! What a model kind knows about itself, declared in one place: its
//! module. A kind names the keys of `[model]` and `[train]` it takes (with
//! their types, ranges and defaults), its fixed settings, the metrics it
//! reports, whether it reads `[data]`, what PBT may not change, how a
//! search space is checked before anything runs, how its trainable is
//! built, and how `predict` loads what it left in `best/`. The config, the
//! engine and `predict` ask the kind; none keeps a table of kinds.
//!
//! Adding a kind is a module with a [`ModelKind`] entry in [`KINDS`] and a
//! [`Model`] implementation.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::fit::Network;
use super::{Shape, Trainable};
use crate::config::fields::Keys;
use crate::config::{Config, SearchSpace};
use crate::data::DataError;
use crate::space::Domain;

/// A `[model]` key's problem: the key (`model.module`) and what is expected.
pub type KeyError = (String, String);

/// A `[model]` section, its `kind` taken out.
pub type Section = BTreeMap<String, Domain>;

/// What a kind does with `[data]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataUse {
    /// It trains on the data: `[data]` is required.
    Required,
    /// It reads none; a `[data]` section is accepted and unused.
    Unused,
    /// It reads none, and a `[data]` section is an error saying this.
    Refused(&'static str),
}

/// A validated `[model]`: the kind and its fixed settings. Its searched
/// fields are part of the config's search space.
pub trait Model: std::fmt::Debug + Send + Sync {
    /// The name `[model] kind` gives.
    fn kind(&self) -> &'static str;

    /// The fields of `[model]` besides `kind` and [`Model::settings`].
    fn model_keys(&self) -> Keys;

    /// Fixed settings of `[model]` that are not hyperparameters (`module`).
    fn settings(&self) -> &'static [&'static str] {
        &[]
    }

    /// Said after the list of expected keys when `[model]` has an unknown one.
    fn keys_note(&self) -> &'static str {
        ""
    }

    /// The fields of `[train]` besides `max_epochs`.
    fn train_keys(&self) -> Keys {
        Keys::Fields(super::fit::TRAIN_FIELDS)
    }

    /// The metrics it reports each epoch; `None` when the program decides.
    fn metrics(&self) -> Option<&'static [&'static str]> {
        Some(super::fit::METRICS)
    }

    /// What it does with `[data]`.
    fn data(&self) -> DataUse {
        DataUse::Required
    }

    /// Parameters PBT cannot change: a copied checkpoint would not fit them.
    fn fixed_under_pbt(&self) -> &'static [&'static str] {
        &[]
    }

    /// Makes its relative paths relative to `base`, the config file's directory.
    fn resolve_paths(&mut self, _base: &Path) {}

    /// Checks that the files it names exist, before anything runs: the key and what is wrong.
    fn check_files(&self) -> Result<(), KeyError> {
        Ok(())
    }

    /// Refuses a space whose every network is too large (or cannot be
    /// built) for data of `shape`, what the config alone tells of its data
    /// ([`Shape::least`]).
    fn check_space(&self, _space: &SearchSpace, _shape: &Shape) -> Result<(), String> {
        Ok(())
    }

    /// The trainable, with its data loaded: what a worker process builds
    /// once and shares among all the trials it runs.
    fn build(&self, config: &Config) -> Result<Arc<dyn Trainable>, DataError>;

    /// A copy, boxed.
    fn boxed(&self) -> Box<dyn Model>;
}

impl Clone for Box<dyn Model> {
    fn clone(&self) -> Self {
        self.boxed()
    }
}

/// A network `predict` loaded from `best/`, with its input size and classes.
pub struct Loaded {
    /// The network, its weights restored.
    pub net: Box<dyn Network + Send>,
    /// Features per sample.
    pub inputs: usize,
    /// Output classes.
    pub classes: usize,
}

/// How `predict` loads a kind's `best/`.
pub struct Predictor {
    /// The file in `best/` that holds the weights.
    pub weights: &'static str,
    /// Builds the network from `model.json`'s `spec` and loads its weights
    /// from `dir`; `held` is the weights file's size, which bounds what
    /// the spec may claim. Errors are whole sentences.
    pub load: fn(dir: &Path, spec: serde_json::Value, held: u64) -> Result<Loaded, String>,
}

/// A model kind, as `[model] kind` names it.
pub struct ModelKind {
    /// The name.
    pub name: &'static str,
    /// Takes its fixed settings out of `[model]` (the searched fields stay).
    pub parse: fn(&mut Section) -> Result<Box<dyn Model>, KeyError>,
    /// How `predict` loads its best model; `None` when it cannot predict.
    pub predictor: Option<Predictor>,
}

/// Every model kind.
pub static KINDS: &[ModelKind] =
    &[super::mlp::KIND, super::cnn::KIND, super::torchscript::KIND, super::command::KIND, super::sleep::KIND];

/// The kind named `name`.
pub fn named(name: &str) -> Option<&'static ModelKind> {
    KINDS.iter().find(|k| k.name == name)
}

/// The kinds' names as a message lists them: `"mlp", "cnn" or "sleep"`.
pub fn names(kinds: impl Iterator<Item = &'static ModelKind>) -> String {
    let names: Vec<String> = kinds.map(|k| format!("\"{}\"", k.name)).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Whether `bytes` of weights can hold a network of `parameters`: a
/// damaged or hostile `model.json` must not allocate what no file backs
/// (at least 2 bytes a parameter, with room for a header).
pub fn backed(parameters: f64, held: u64, weights: &str) -> Result<(), String> {
    if parameters.is_finite() && 2.0 * parameters <= held as f64 + 65_536.0 {
        Ok(())
    } else {
        Err(format!(
            "model.json describes a network of {parameters:.3e} parameters, which its {weights} of {held} bytes \
             cannot hold: the directory is damaged or not a run's best/"
        ))
    }
}

/// The first line of a libtorch error (the rest is its C++ backtrace).
pub fn first_line(e: impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

/// A `[model]` key that must be a fixed, non-empty string, taken out of the section.
pub fn take_text(model: &mut Section, key: &str) -> Result<Option<String>, KeyError> {
    use crate::space::ParamValue;
    match model.remove(key) {
        None => Ok(None),
        Some(Domain::Fixed(ParamValue::Str(s))) if !s.trim().is_empty() => Ok(Some(s)),
        Some(_) => Err((format!("model.{key}"), "expected a fixed, non-empty string".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_name_and_is_found_by_it() {
        for kind in KINDS {
            assert!(std::ptr::eq(named(kind.name).unwrap(), kind));
            assert_eq!(KINDS.iter().filter(|k| k.name == kind.name).count(), 1);
        }
        assert!(named("rnn").is_none());
        assert_eq!(names(KINDS.iter().take(2)), "\"mlp\" or \"cnn\"");
    }

    #[test]
    fn a_parsed_model_is_of_the_kind_that_parsed_it() {
        for kind in KINDS {
            let mut model = BTreeMap::new();
            for (key, value) in [("module", "m.pt"), ("command", "true")] {
                model.insert(key.to_owned(), Domain::Fixed(crate::space::ParamValue::Str(value.into())));
            }
            let parsed = (kind.parse)(&mut model).unwrap();
            assert_eq!(parsed.kind(), kind.name);
            assert_eq!(parsed.boxed().kind(), kind.name);
        }
    }
}
