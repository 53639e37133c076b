//! What a data source knows about itself, declared in its module: the keys
//! of `[data]` it takes and how they are checked, the files it names, what
//! is known of its data before it is read, and how it is read. The config
//! and the trainables ask the source; none keeps a table of sources.
//!
//! Adding a source is a [`SourceKind`] in [`SOURCES`] and a [`Source`]
//! implementation, in the module that reads its format.

use std::path::{Path, PathBuf};

use super::{DataError, Values};

/// A `[data]` key's problem: the key (`data.x`) and what is expected.
pub type KeyError = (String, String);

/// The keys of `[data]` that belong to one source or another, as written.
/// A source takes those it uses; one left over is an error that names it.
#[derive(Debug, Default)]
pub struct SourceKeys {
    /// `path`.
    pub path: Option<PathBuf>,
    /// `x`.
    pub x: Option<PathBuf>,
    /// `y`.
    pub y: Option<PathBuf>,
    /// `label`.
    pub label: Option<String>,
    /// `samples`.
    pub samples: Option<usize>,
    /// `features`.
    pub features: Option<usize>,
    /// `classes`.
    pub classes: Option<usize>,
}

impl SourceKeys {
    /// The first key no source took.
    fn left(&self) -> Option<&'static str> {
        [
            ("path", self.path.is_some()),
            ("x", self.x.is_some()),
            ("y", self.y.is_some()),
            ("label", self.label.is_some()),
            ("samples", self.samples.is_some()),
            ("features", self.features.is_some()),
            ("classes", self.classes.is_some()),
        ]
        .into_iter()
        .find_map(|(key, given)| given.then_some(key))
    }

    /// Takes a required path, or says which key is missing and why.
    pub fn require(slot: &mut Option<PathBuf>, key: &str, why: &str) -> Result<PathBuf, KeyError> {
        slot.take().ok_or_else(|| (format!("data.{key}"), format!("missing; {why}")))
    }
}

/// What a source tells of its data before it is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// Samples in all.
    pub samples: usize,
    /// Features per sample.
    pub features: usize,
    /// Each sample as channels x height x width, when it is an image.
    pub image: Option<[usize; 3]>,
    /// Classes.
    pub classes: usize,
}

/// A source's samples as read, before the split.
pub struct SourceData {
    /// The samples, row-major.
    pub(super) x: Values,
    /// One label per sample, a class index.
    pub(super) y: Vec<i64>,
    /// One sample's dimensions.
    pub(super) dims: Vec<usize>,
    /// Classes.
    pub(super) classes: usize,
    /// The classes' names, when the source has them.
    pub(super) class_names: Option<Vec<String>>,
    /// The features' names, when the source has them.
    pub(super) feature_names: Option<Vec<String>>,
}

/// A validated `[data]` source.
pub trait Source: std::fmt::Debug + Send + Sync {
    /// The name `[data] source` gives.
    fn name(&self) -> &'static str;

    /// Makes its relative paths relative to `base`, the config file's directory.
    fn resolve_paths(&mut self, _base: &Path) {}

    /// Checks that the files it names exist, before anything runs: the key and what is wrong.
    fn check_files(&self) -> Result<(), KeyError> {
        Ok(())
    }

    /// What is known of its data without reading it: all for generated or
    /// well-known data, nothing for a file.
    fn known(&self) -> Option<Known> {
        None
    }

    /// The file that holds its samples, for messages (empty when generated).
    fn samples_file(&self) -> PathBuf {
        PathBuf::new()
    }

    /// The file that holds its labels, for messages (empty when generated).
    fn labels_file(&self) -> PathBuf {
        self.samples_file()
    }

    /// Reads (or makes, from `seed`) the samples and labels.
    fn read(&self, seed: u64) -> Result<SourceData, DataError>;

    /// A copy, boxed.
    fn boxed(&self) -> Box<dyn Source>;
}

impl Clone for Box<dyn Source> {
    fn clone(&self) -> Self {
        self.boxed()
    }
}

/// A source of two files, samples (`x`) and labels (`y`), of one format.
#[derive(Debug, Clone)]
pub struct FilePair {
    /// The source's name (`idx`, `npy`).
    pub name: &'static str,
    /// The samples file.
    pub x: PathBuf,
    /// The labels file.
    pub y: PathBuf,
    /// Reads the pair.
    pub read: fn(&Path, &Path) -> Result<SourceData, DataError>,
}

impl FilePair {
    /// Takes the required `x` and `y` for the source `name`, read by `read`.
    pub fn take(
        name: &'static str,
        keys: &mut SourceKeys,
        read: fn(&Path, &Path) -> Result<SourceData, DataError>,
    ) -> Result<Box<dyn Source>, KeyError> {
        let why = "this source needs `x` (the samples file) and `y` (the labels file)";
        let x = SourceKeys::require(&mut keys.x, "x", why)?;
        let y = SourceKeys::require(&mut keys.y, "y", why)?;
        Ok(Box::new(FilePair { name, x, y, read }))
    }
}

impl Source for FilePair {
    fn name(&self) -> &'static str {
        self.name
    }

    fn resolve_paths(&mut self, base: &Path) {
        // An absolute path stays as it is: `join` replaces the base with it.
        self.x = base.join(&self.x);
        self.y = base.join(&self.y);
    }

    fn check_files(&self) -> Result<(), KeyError> {
        super::check_file("data.x", &self.x)?;
        super::check_file("data.y", &self.y)
    }

    fn samples_file(&self) -> PathBuf {
        self.x.clone()
    }

    fn labels_file(&self) -> PathBuf {
        self.y.clone()
    }

    fn read(&self, _seed: u64) -> Result<SourceData, DataError> {
        (self.read)(&self.x, &self.y)
    }

    fn boxed(&self) -> Box<dyn Source> {
        Box::new(self.clone())
    }
}

/// A data source, as `[data] source` names it.
pub struct SourceKind {
    /// The name.
    pub name: &'static str,
    /// The keys it takes besides those every source has.
    pub keys: &'static [&'static str],
    /// Takes and checks its keys.
    pub take: fn(&mut SourceKeys) -> Result<Box<dyn Source>, KeyError>,
}

/// Every data source.
pub static SOURCES: &[SourceKind] = &[
    super::synthetic::SOURCE,
    super::idx::FASHION_MNIST,
    super::idx::SOURCE,
    super::tabular::SOURCE,
    super::npy::NPY,
    super::npy::NPZ,
];

/// The source `[data]` describes: `name` with `keys`, every key it does
/// not use refused by name.
pub fn parse(name: &str, mut keys: SourceKeys) -> Result<Box<dyn Source>, KeyError> {
    let Some(kind) = SOURCES.iter().find(|s| s.name == name) else {
        let names: Vec<String> = SOURCES.iter().map(|s| format!("\"{}\"", s.name)).collect();
        return Err((
            "data.source".into(),
            format!("unknown data source `{name}`; expected one of {}", names.join(", ")),
        ));
    };
    let source = (kind.take)(&mut keys)?;
    if let Some(key) = keys.left() {
        let takes = if kind.keys.is_empty() { "none".to_owned() } else { kind.keys.join(", ") };
        return Err((
            format!("data.{key}"),
            format!(
                "not used by source \"{name}\" (its own keys: {takes}); remove it, or choose the source it belongs to"
            ),
        ));
    }
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 7] = ["path", "x", "y", "label", "samples", "features", "classes"];

    fn clear(keys: &mut SourceKeys, key: &str) {
        match key {
            "path" => keys.path = None,
            "x" => keys.x = None,
            "y" => keys.y = None,
            "label" => keys.label = None,
            "samples" => keys.samples = None,
            "features" => keys.features = None,
            _ => keys.classes = None,
        }
    }

    #[test]
    fn every_source_takes_the_keys_it_lists_and_leaves_the_others() {
        for kind in SOURCES {
            assert_eq!(SOURCES.iter().filter(|s| s.name == kind.name).count(), 1);
            let mut keys = SourceKeys {
                path: Some("p".into()),
                x: Some("x".into()),
                y: Some("y".into()),
                label: Some("l".into()),
                samples: Some(100),
                features: Some(3),
                classes: Some(2),
            };
            let source = (kind.take)(&mut keys).unwrap();
            assert_eq!(source.name(), kind.name);
            let mut left = Vec::new();
            while let Some(key) = keys.left() {
                left.push(key);
                clear(&mut keys, key);
            }
            let expected: Vec<&str> = ALL.into_iter().filter(|k| !kind.keys.contains(k)).collect();
            assert_eq!(left, expected, "{}", kind.name);
        }
    }

    #[test]
    fn a_key_of_another_source_or_an_unknown_source_is_refused_by_name() {
        let keys = SourceKeys {
            path: Some("d.csv".into()),
            label: Some("l".into()),
            x: Some("x".into()),
            ..Default::default()
        };
        let (key, message) = parse("csv", keys).unwrap_err();
        assert_eq!(key, "data.x");
        assert!(message.contains("not used by source \"csv\" (its own keys: path, label)"), "{message}");
        let (key, message) = parse("imagenet", SourceKeys::default()).unwrap_err();
        assert_eq!(key, "data.source");
        assert!(
            message.contains("unknown data source `imagenet`") && message.contains("\"fashion-mnist\""),
            "{message}"
        );
    }
}
