//! Experiment configuration: reading TOML or YAML, and validating every field
//! before anything runs.
//!
//! Errors name the file, the key path (`train.lr`) and what was expected; the
//! binary turns every [`ConfigError`] into exit code 2.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::space::{Domain, Mode, ParamValue, Params, SearchSpace};

pub use crate::schedule::SchedulerConfig;
pub use crate::search::SearchConfig;
pub use crate::trainable::kind::Model;

pub mod fields;

use crate::data::source::{Source, SourceKeys};
use crate::trainable::kind::{self, DataUse};

/// A configuration problem: which file, which key, and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The config file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML/YAML, or a key has the wrong shape.
    #[error("{}: {key}: {message}", file.display())]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// Dotted key path, e.g. `train.lr` (`(document)` for syntax errors).
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl ConfigError {
    fn invalid(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { file: file.to_owned(), key: key.into(), message: message.into() }
    }
}

/// The largest config file read (a config is a few hundred bytes; this
/// keeps a wrong path, say a data file, from being read whole).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The longest experiment name: it names the run directory
/// (`runs/<name>-<timestamp>`), and file systems hold 255 bytes a name.
pub const MAX_NAME_LEN: usize = 200;

/// The most trials one experiment may ask for.
pub const MAX_TRIALS: u32 = 1_000_000;

/// The most slots one experiment may use at once (each is a thread or a
/// worker's slot).
pub const MAX_CONCURRENCY: u32 = 1024;

/// The most libtorch threads one trial may ask for.
pub const MAX_THREADS_PER_TRIAL: u32 = 256;

/// How a config file is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigFormat {
    /// TOML (any other extension).
    #[default]
    Toml,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`), as the daemon's API takes it.
    Json,
}

impl ConfigFormat {
    /// The format a file's extension says.
    pub fn of(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => ConfigFormat::Yaml,
            Some("json") => ConfigFormat::Json,
            _ => ConfigFormat::Toml,
        }
    }
}

/// A validated experiment: every section resolved, defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[experiment]`.
    pub experiment: ExperimentConfig,
    /// `[data]`.
    pub data: DataConfig,
    /// `[model]`: the kind and its fixed settings; its fields, fixed or
    /// searched, are part of [`Config::space`].
    pub model: Box<dyn Model>,
    /// `[train]` `max_epochs`: the training budget of one trial.
    pub max_epochs: u32,
    /// The fields of `[model]` and `[train]`, fixed or searched.
    pub space: SearchSpace,
    /// `[search]`.
    pub search: SearchConfig,
    /// `[scheduler]`.
    pub scheduler: SchedulerConfig,
    /// `[fault]`.
    pub fault: FaultConfig,
    /// `[chaos]`.
    pub chaos: ChaosConfig,
}

/// `[experiment]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Names the run directory.
    pub name: String,
    /// The metric to optimise, as reported by the trainable.
    #[serde(default = "default_metric")]
    pub metric: String,
    /// `max` or `min`.
    #[serde(default)]
    pub mode: Mode,
    /// Seeds the searcher, trial seeds and chaos.
    #[serde(default)]
    pub seed: u64,
    /// How many trials to run in all.
    #[serde(default = "default_max_trials")]
    pub max_trials: u32,
    /// Slots used at once; defaults to the cores divided by `threads_per_trial`.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// libtorch threads per trial.
    #[serde(default = "one")]
    pub threads_per_trial: u32,
    /// GPUs each trial's worker owns when `gauntlet run --gpus` lists some.
    #[serde(default = "one")]
    pub gpus_per_trial: u32,
    /// Stop the sweep once a trial's metric reaches this value.
    #[serde(default)]
    pub stop_at: Option<f64>,
    /// Stop the sweep after this much wall time in all, e.g. "30m", "2h", "1h30m", "90s".
    #[serde(default)]
    pub time_budget: Option<String>,
    /// Stop the sweep once this many epochs were trained across all trials.
    #[serde(default)]
    pub epoch_budget: Option<u64>,
    /// Where it stands when experiments share workers (the daemon): free
    /// slots go to the highest priority first, equal ones in turn.
    #[serde(default)]
    pub priority: i32,
}

impl ExperimentConfig {
    /// The rules that stop the sweep early on reports.
    pub fn stop_rules(&self) -> crate::state::StopRules {
        crate::state::StopRules { stop_at: self.stop_at, epoch_budget: self.epoch_budget }
    }

    /// The time budget, parsed (validated when the config was read).
    pub fn time_budget(&self) -> Option<std::time::Duration> {
        self.time_budget.as_deref().and_then(|t| parse_duration(t).ok())
    }
}

/// Reads `90s`, `30m`, `2h`, `1d` or sums of them (`1h30m`); at most a year.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let expected = "expected a duration such as \"90s\", \"30m\", \"2h\" or \"1h30m\"";
    let mut total = 0f64;
    let mut number = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86400.0,
            _ => return Err(format!("`{text}`: {expected}")),
        };
        let n: f64 = number.parse().map_err(|_| format!("`{text}`: {expected}"))?;
        total += n * unit;
        number.clear();
        any = true;
    }
    let whole = number.is_empty() && any;
    if !(whole && total > 0.0 && total <= 366.0 * 86400.0) {
        return Err(format!("`{text}`: {expected}, more than 0 and at most a year"));
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

impl ExperimentConfig {
    /// The number of trials that run at once.
    pub fn slots(&self) -> u32 {
        self.concurrency.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            (cores / self.threads_per_trial.max(1)).max(1)
        })
    }
}

/// `[data]`: where the samples come from, and how they are split.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// The source, with its own keys (files, sizes): see [`crate::data::source`].
    pub source: Box<dyn Source>,
    /// Share of the training samples held out for validation.
    pub validation_fraction: f64,
    /// Standardise each feature with the mean and deviation of the training split.
    pub standardize: bool,
    /// Use at most this many training samples (before the validation split).
    pub max_samples: Option<usize>,
    /// Seeds the validation split, and generation of synthetic data.
    pub seed: u64,
}

/// `[data]` as written: the keys every source has, and those that belong
/// to one source or another, which the source takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    source: String,
    #[serde(default = "default_validation_fraction")]
    validation_fraction: f64,
    #[serde(default)]
    standardize: bool,
    #[serde(default)]
    max_samples: Option<usize>,
    #[serde(default)]
    seed: u64,
    /// fashion-mnist: the directory of its files; csv, npz: the file.
    #[serde(default)]
    path: Option<PathBuf>,
    /// idx, npy: the samples file; npz: the samples array's name (default `x`).
    #[serde(default)]
    x: Option<PathBuf>,
    /// idx, npy: the labels file; npz: the labels array's name (default `y`).
    #[serde(default)]
    y: Option<PathBuf>,
    /// csv: the label column's name.
    #[serde(default)]
    label: Option<String>,
    /// synthetic: samples in all.
    #[serde(default)]
    samples: Option<usize>,
    /// synthetic: features per sample.
    #[serde(default)]
    features: Option<usize>,
    /// synthetic: classes.
    #[serde(default)]
    classes: Option<usize>,
}

/// `[fault]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Restarts allowed per trial before it is `failed`.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Checkpoint every this many epochs.
    #[serde(default = "one")]
    pub checkpoint_every: u32,
    /// First restart delay; doubles with each restart (at most 30 s).
    #[serde(default = "default_backoff_ms")]
    pub restart_backoff_ms: u64,
    /// Checkpoints kept per trial (the newest ones), besides its best.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: u32,
    /// The largest checkpoint a trial may write, in MiB: a larger one fails
    /// the trial (it would fail again if restarted).
    #[serde(default = "default_max_checkpoint_mb")]
    pub max_checkpoint_mb: u32,
}

impl FaultConfig {
    /// [`max_checkpoint_mb`](Self::max_checkpoint_mb) in bytes.
    pub fn max_checkpoint_bytes(&self) -> u64 {
        u64::from(self.max_checkpoint_mb) << 20
    }
}

/// `[chaos]`: failures injected on purpose, to test resilience.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosConfig {
    /// Probability that a trial panics after reporting an epoch.
    #[serde(default)]
    pub panic_probability: f64,
    /// Probability that a trial's process aborts (as a segfault would) in an epoch.
    #[serde(default)]
    pub abort_probability: f64,
    /// Each journal commit (write and fdatasync) takes at least this many
    /// milliseconds more, as on a slow or stalling disk.
    #[serde(default)]
    pub journal_sync_ms: u32,
}

fn default_metric() -> String {
    "val_accuracy".into()
}
fn default_max_trials() -> u32 {
    16
}
fn one() -> u32 {
    1
}
fn default_validation_fraction() -> f64 {
    0.1
}
fn default_max_restarts() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    200
}
fn default_keep_checkpoints() -> u32 {
    2
}
/// The default of `fault.max_checkpoint_mb`: 4 GiB.
pub const DEFAULT_MAX_CHECKPOINT_MB: u32 = 4096;
/// The most `fault.max_checkpoint_mb` may be: 1 TiB.
pub const MAX_CHECKPOINT_MB: u32 = 1 << 20;
fn default_max_checkpoint_mb() -> u32 {
    DEFAULT_MAX_CHECKPOINT_MB
}

impl DataConfig {
    /// The section of a model that reads no data.
    fn none() -> Self {
        DataConfig {
            source: Box::new(crate::data::Synthetic::NONE),
            validation_fraction: default_validation_fraction(),
            standardize: false,
            max_samples: None,
            seed: 0,
        }
    }

    /// Checks `[data]` as written: the key at fault and what is expected.
    fn from_raw(raw: RawData) -> Result<Self, (String, String)> {
        if !(raw.validation_fraction > 0.0 && raw.validation_fraction < 1.0) {
            return Err((
                "data.validation_fraction".into(),
                format!("expected a number strictly between 0 and 1, got {}", raw.validation_fraction),
            ));
        }
        if raw.max_samples.is_some_and(|n| n < 2) {
            return Err(("data.max_samples".into(), "expected at least 2 (one to train on, one to validate)".into()));
        }
        let keys = SourceKeys {
            path: raw.path,
            x: raw.x,
            y: raw.y,
            label: raw.label,
            samples: raw.samples,
            features: raw.features,
            classes: raw.classes,
        };
        Ok(DataConfig {
            source: crate::data::source::parse(&raw.source, keys)?,
            validation_fraction: raw.validation_fraction,
            standardize: raw.standardize,
            max_samples: raw.max_samples,
            seed: raw.seed,
        })
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            max_restarts: default_max_restarts(),
            checkpoint_every: 1,
            restart_backoff_ms: default_backoff_ms(),
            keep_checkpoints: default_keep_checkpoints(),
            max_checkpoint_mb: default_max_checkpoint_mb(),
        }
    }
}

/// The file as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    experiment: ExperimentConfig,
    /// Optional for models that read no data (`kind = "sleep"`).
    #[serde(default)]
    data: Option<RawData>,
    model: BTreeMap<String, Domain>,
    #[serde(default)]
    train: BTreeMap<String, Domain>,
    /// Read kind by kind in [`tagged`]: serde's tagged enums lose the key at fault.
    #[serde(default)]
    search: Option<serde_json::Value>,
    #[serde(default)]
    scheduler: Option<serde_json::Value>,
    #[serde(default)]
    fault: FaultConfig,
    #[serde(default)]
    chaos: ChaosConfig,
}

/// The parameters PBT may change: those asked for, or by default every
/// searched one that a copied checkpoint still fits (`fixed` are those it
/// does not: the network's shape, the optimizer whose state is copied).
fn pbt_mutable(asked: Option<Vec<String>>, fixed: &[&str], space: &SearchSpace) -> Result<Vec<String>, String> {
    let Some(asked) = asked else {
        let all: Vec<String> = space.searched().filter(|n| !fixed.contains(n)).map(str::to_owned).collect();
        if all.is_empty() {
            return Err("no searched parameter that PBT may change (it cannot change the network's shape or the \
                        optimizer); search lr, momentum, weight_decay, batch_size or dropout"
                .into());
        }
        return Ok(all);
    };
    let searched = space.searched().count();
    if asked.is_empty() || asked.len() > searched {
        return Err(format!("expected 1 to {} searched parameter names", searched.max(1)));
    }
    for name in &asked {
        if fixed.contains(&name.as_str()) {
            return Err(format!("`{name}` cannot change under PBT: a copied checkpoint would not fit it"));
        }
        if !space.searched().any(|n| n == name) {
            let searched: Vec<&str> = space.searched().collect();
            return Err(format!("`{name}` is not a searched parameter; expected one of {searched:?}"));
        }
    }
    Ok(asked)
}

impl Config {
    /// Reads and validates a config file: YAML for `.yaml`/`.yml`, JSON
    /// for `.json`, TOML otherwise.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_text(path).map(|(config, _)| config)
    }

    /// [`Config::load`], with the text it read: a run records the text it
    /// validated (a pipe or a file being edited reads differently twice).
    pub fn load_with_text(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = read_text(path)?;
        let mut config = Self::parse(&text, ConfigFormat::of(path), path)?;
        config.resolve_paths(path);
        config.check_files(path)?;
        Ok((config, text))
    }

    /// Parses and validates config text; `file` is only used in messages.
    pub fn parse(text: &str, format: ConfigFormat, file: &Path) -> Result<Config, ConfigError> {
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::invalid(
                file,
                "(document)",
                format!("{} bytes: a config is at most {MAX_CONFIG_BYTES} bytes", text.len()),
            ));
        }
        let raw: RawConfig = match format {
            ConfigFormat::Yaml => {
                // The YAML parser's time grows with the square of the nesting: bounded first.
                if let Some(line) = yaml_too_many_brackets(text) {
                    return Err(ConfigError::invalid(
                        file,
                        "(document)",
                        format!(
                            "line {line}: more than {MAX_YAML_BRACKETS} brackets (`[`, `{{`); expected a config \
                             (tables of keys and values)"
                        ),
                    ));
                }
                let de = serde_norway::Deserializer::from_str(text);
                serde_path_to_error::deserialize(de).map_err(|e| path_error(file, e))?
            }
            ConfigFormat::Json => {
                let mut de = serde_json::Deserializer::from_str(text);
                let raw = serde_path_to_error::deserialize(&mut de).map_err(|e| path_error(file, e))?;
                de.end().map_err(|e| ConfigError::invalid(file, "(document)", e.to_string()))?;
                raw
            }
            ConfigFormat::Toml => {
                let de = toml::Deserializer::parse(text)
                    .map_err(|e| ConfigError::invalid(file, "(document)", e.to_string().trim_end()))?;
                serde_path_to_error::deserialize(de).map_err(|e| path_error(file, e))?
            }
        };
        Self::validate(raw, file)
    }

    fn validate(mut raw: RawConfig, file: &Path) -> Result<Config, ConfigError> {
        let bad = |key: &str, msg: String| ConfigError::invalid(file, key, msg);
        let e = &raw.experiment;
        if e.name.trim().is_empty() {
            return Err(bad("experiment.name", "expected a non-empty name".into()));
        }
        if let Some(c) = e.name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
            return Err(bad(
                "experiment.name",
                format!("`{c}` is not allowed: the name names a directory; use letters, digits, '-', '_' and '.'"),
            ));
        }
        if e.name.len() > MAX_NAME_LEN {
            return Err(bad(
                "experiment.name",
                format!(
                    "{} bytes long: the name names the run directory, and file systems hold 255 bytes a name; \
                     use at most {MAX_NAME_LEN}",
                    e.name.len()
                ),
            ));
        }
        if e.max_trials == 0 {
            return Err(bad("experiment.max_trials", "expected at least 1".into()));
        }
        if e.max_trials > MAX_TRIALS {
            return Err(bad("experiment.max_trials", format!("expected at most {MAX_TRIALS}, got {}", e.max_trials)));
        }
        if let Some(c) = e.concurrency.filter(|c| !(1..=MAX_CONCURRENCY).contains(c)) {
            return Err(bad(
                "experiment.concurrency",
                format!(
                    "expected 1 to {MAX_CONCURRENCY}, got {c} (local worker processes are capped further by the \
                     machine; see README, \"Resource bounds\")"
                ),
            ));
        }
        if !(1..=MAX_THREADS_PER_TRIAL).contains(&e.threads_per_trial) {
            return Err(bad(
                "experiment.threads_per_trial",
                format!("expected 1 to {MAX_THREADS_PER_TRIAL}, got {}", e.threads_per_trial),
            ));
        }
        if let Some(t) = &e.time_budget {
            parse_duration(t).map_err(|m| bad("experiment.time_budget", m))?;
        }
        if !(-1000..=1000).contains(&e.priority) {
            return Err(bad("experiment.priority", format!("expected -1000 to 1000, got {}", e.priority)));
        }
        if e.epoch_budget == Some(0) {
            return Err(bad("experiment.epoch_budget", "expected at least 1 (epochs across all trials)".into()));
        }
        if e.stop_at.is_some_and(|v| !v.is_finite()) {
            return Err(bad("experiment.stop_at", "expected a finite metric value".into()));
        }
        if e.gpus_per_trial == 0 || e.gpus_per_trial > 64 {
            return Err(bad("experiment.gpus_per_trial", format!("expected 1 to 64, got {}", e.gpus_per_trial)));
        }
        let mut model = raw.model;
        let kinds = kind::names(kind::KINDS.iter());
        let parse = match model.remove("kind") {
            None => return Err(bad("model.kind", format!("missing; expected {kinds}"))),
            Some(Domain::Fixed(ParamValue::Str(s))) => match kind::named(&s) {
                Some(k) => k.parse,
                None => return Err(bad("model.kind", format!("unknown model kind `{s}`; expected {kinds}"))),
            },
            Some(_) => return Err(bad("model.kind", format!("expected a string: {kinds}"))),
        };
        let model_kind = parse(&mut model).map_err(|(key, message)| bad(&key, message))?;
        if model_kind.metrics().is_none()
            && (e.metric.trim().is_empty() || crate::run_dir::RESERVED_NAMES.contains(&e.metric.as_str()))
        {
            return Err(bad(
                "experiment.metric",
                format!(
                    "`{}`: expected the name of a metric the program reports, other than the names results.jsonl \
                     and leaderboard.csv give their own columns ({})",
                    e.metric,
                    crate::run_dir::RESERVED_NAMES.join(", ")
                ),
            ));
        }
        if let Some(metrics) = model_kind.metrics().filter(|m| !m.contains(&e.metric.as_str())) {
            return Err(bad(
                "experiment.metric",
                format!("`{}` is not reported by the model; expected one of {}", e.metric, metrics.join(", ")),
            ));
        }
        let data = match (raw.data.take(), model_kind.data()) {
            (Some(_), DataUse::Refused(why)) => return Err(bad("data", why.into())),
            (Some(d), _) => DataConfig::from_raw(d).map_err(|(key, message)| bad(&key, message))?,
            (None, DataUse::Required) => {
                return Err(bad("data", "missing; expected a [data] section with `source`".into()))
            }
            (None, _) => DataConfig::none(),
        };

        let mut space = SearchSpace::new();
        let also: Vec<&str> = std::iter::once("kind").chain(model_kind.settings().iter().copied()).collect();
        let keys = model_kind.model_keys();
        fields::fill(&mut space, "model", model, keys, &also, model_kind.keys_note(), file)?;

        let mut train = raw.train;
        let max_epochs = match train.remove("max_epochs") {
            None => 10,
            Some(Domain::Fixed(v)) => match v.as_i64() {
                Some(n) if (1..=100_000).contains(&n) => n as u32,
                _ => return Err(bad("train.max_epochs", format!("expected an integer from 1 to 100000, got {v}"))),
            },
            Some(_) => {
                return Err(bad(
                    "train.max_epochs",
                    "expected a fixed integer: it is the budget the scheduler works with, not a searched value".into(),
                ))
            }
        };
        fields::fill(&mut space, "train", train, model_kind.train_keys(), &["max_epochs"], "", file)?;
        if space.domain(&e.metric).is_some() {
            return Err(bad(
                "experiment.metric",
                format!(
                    "`{}` is also a parameter's name: leaderboard.csv would have two `{0}` columns; rename one",
                    e.metric
                ),
            ));
        }

        let search =
            tagged(file, "search", "algorithm", raw.search.take(), SearchConfig::KINDS, SearchConfig::from_keys)?;
        let mut scheduler = tagged(
            file,
            "scheduler",
            "kind",
            raw.scheduler.take(),
            SchedulerConfig::KINDS,
            SchedulerConfig::from_keys,
        )?;
        search.check(&space).map_err(|(key, message)| bad(key, message))?;
        scheduler.check(max_epochs).map_err(|(key, message)| bad(key, message))?;
        if let SchedulerConfig::Pbt(pbt) = &mut scheduler {
            pbt.mutate = Some(
                pbt_mutable(pbt.mutate.take(), model_kind.fixed_under_pbt(), &space)
                    .map_err(|m| bad("scheduler.mutate", m))?,
            );
        }
        if !(1..=1000).contains(&raw.fault.keep_checkpoints) {
            return Err(bad(
                "fault.keep_checkpoints",
                format!("expected 1 to 1000, got {}", raw.fault.keep_checkpoints),
            ));
        }
        if raw.fault.max_restarts > 1000 {
            return Err(bad("fault.max_restarts", format!("expected 0 to 1000, got {}", raw.fault.max_restarts)));
        }
        if !(1..=MAX_CHECKPOINT_MB).contains(&raw.fault.max_checkpoint_mb) {
            return Err(bad(
                "fault.max_checkpoint_mb",
                format!("expected 1 to {MAX_CHECKPOINT_MB} (MiB), got {}", raw.fault.max_checkpoint_mb),
            ));
        }
        if raw.fault.checkpoint_every == 0 {
            return Err(bad("fault.checkpoint_every", "expected at least 1 (epochs)".into()));
        }
        for (key, p) in [
            ("chaos.panic_probability", raw.chaos.panic_probability),
            ("chaos.abort_probability", raw.chaos.abort_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(key, format!("expected a probability from 0 to 1, got {p}")));
            }
        }
        if raw.chaos.journal_sync_ms > 1000 {
            return Err(bad(
                "chaos.journal_sync_ms",
                format!("expected 0 to 1000 (milliseconds), got {}", raw.chaos.journal_sync_ms),
            ));
        }
        Ok(Config {
            experiment: raw.experiment,
            data,
            model: model_kind,
            max_epochs,
            space,
            search,
            scheduler,
            fault: raw.fault,
            chaos: raw.chaos,
        })
    }

    /// The experiment's state before its first event.
    pub fn initial_state(&self) -> crate::state::ExperimentState {
        let e = &self.experiment;
        crate::state::ExperimentState::new(crate::state::Setup {
            metric: e.metric.clone(),
            mode: e.mode,
            max_epochs: self.max_epochs,
            max_trials: e.max_trials,
            searcher: crate::search::Searcher::new(&self.search, &self.space, e.seed),
            scheduler: crate::schedule::Scheduler::new(&self.scheduler, self.max_epochs, e.seed, &self.space),
            space: self.space.clone(),
            rules: e.stop_rules(),
        })
    }

    /// The config with a relative `data.path` made relative to `file`'s directory.
    pub fn with_paths_from(mut self, file: &Path) -> Self {
        self.resolve_paths(file);
        self
    }

    /// Makes a relative `data.path` (and `model.module`) relative to the config file's directory.
    fn resolve_paths(&mut self, file: &Path) {
        // `c.toml` has the parent "": the directory it is in is ".".
        let base = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        self.model.resolve_paths(base);
        self.data.source.resolve_paths(base);
    }

    /// What a valid config may still get wrong, in words (`validate` and
    /// `run` print them): a grid larger than the trials allowed, a median
    /// rule with no epoch left to judge.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let SchedulerConfig::Median(m) = &self.scheduler {
            if m.warmup_epochs + 1 >= self.max_epochs {
                out.push(format!(
                    "scheduler.kind = \"median\" judges the epochs after warmup_epochs ({}) and before the last \
                     (train.max_epochs = {}): there are none, so it never stops a trial; lower warmup_epochs",
                    m.warmup_epochs, self.max_epochs
                ));
            }
        }
        if let crate::search::SearchConfig::Grid(g) = &self.search {
            let size = crate::search::GridSearch::new(&self.space, g.grid_points.max(1) as usize).size();
            let max = self.experiment.max_trials;
            if size > u64::from(max) {
                out.push(format!(
                    "search.algorithm = \"grid\": the grid has {size} combinations but experiment.max_trials = {max}: \
                     only the first {max} run, in which the first parameters barely vary (the last changes fastest); \
                     raise max_trials or lower search.grid_points"
                ));
            }
        }
        out
    }

    /// Checks that the files the config names exist, before anything runs.
    pub fn check_files(&self, file: &Path) -> Result<(), ConfigError> {
        self.model.check_files().map_err(|(key, message)| ConfigError::invalid(file, key, message))?;
        self.data.source.check_files().map_err(|(key, message)| ConfigError::invalid(file, key, message))
    }
}

/// The most `[` and `{` a YAML config may hold, quoted or not.
const MAX_YAML_BRACKETS: usize = 4096;

/// The line of a YAML text's bracket past [`MAX_YAML_BRACKETS`], if there
/// is one. The parser's time grows with the square of how deep flow
/// collections nest (a 200 KB text of nested brackets took 22 s); counting
/// every bracket bounds the depth without modelling where quoted scalars
/// are, which an attacker could make a scanner misjudge. A config holds a
/// few dozen.
fn yaml_too_many_brackets(text: &str) -> Option<usize> {
    let (i, _) = text.match_indices(['[', '{']).nth(MAX_YAML_BRACKETS)?;
    Some(1 + text[..i].matches('\n').count())
}

/// Reads a config file, refusing one larger than [`MAX_CONFIG_BYTES`]
/// before reading it.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_err = |source| ConfigError::Read { file: path.to_owned(), source };
    let file = crate::files::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if meta.is_dir() {
        return Err(ConfigError::invalid(path, "(document)", "is a directory: expected a config file"));
    }
    let mut text = String::new();
    let read = file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text);
    match read {
        Ok(n) if n as u64 > MAX_CONFIG_BYTES => Err(ConfigError::invalid(
            path,
            "(document)",
            format!("larger than {MAX_CONFIG_BYTES} bytes: expected a config file (TOML, YAML or JSON)"),
        )),
        Ok(_) if text.trim().is_empty() => {
            Err(ConfigError::invalid(path, "(document)", "is empty: expected a config file (TOML, YAML or JSON)"))
        }
        Ok(_) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(ConfigError::invalid(path, "(document)", "not UTF-8 text: expected a config file (TOML, YAML or JSON)"))
        }
        Err(e) => Err(read_err(e)),
    }
}

/// A `[search]` or `[scheduler]` table: `tag` names its kind, the other
/// keys are that kind's, read by `from_keys` so that an error names its
/// key. A table left out, or empty, is the default kind.
fn tagged<T: Default>(
    file: &Path,
    section: &str,
    tag: &str,
    table: Option<serde_json::Value>,
    kinds: &[&str],
    from_keys: fn(&str, serde_json::Value) -> Option<crate::schedule::KeyedResult<T>>,
) -> Result<T, ConfigError> {
    let bad = |key: String, message: String| ConfigError::invalid(file, key, message);
    let expected = || format!("expected one of {}", kinds.join(", "));
    let Some(table) = table else { return Ok(T::default()) };
    let serde_json::Value::Object(mut keys) = table else {
        return Err(bad(section.into(), "expected a table of keys and values".into()));
    };
    let kind = match keys.remove(tag) {
        None if keys.is_empty() => return Ok(T::default()),
        None => return Err(bad(format!("{section}.{tag}"), format!("missing; {}", expected()))),
        Some(serde_json::Value::String(kind)) => kind,
        Some(other) => return Err(bad(format!("{section}.{tag}"), format!("{other}: {}", expected()))),
    };
    match from_keys(&kind, serde_json::Value::Object(keys)) {
        None => Err(bad(format!("{section}.{tag}"), format!("unknown {tag} `{kind}`; {}", expected()))),
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => {
            let path = e.path().to_string();
            let key = if path == "." { section.to_owned() } else { format!("{section}.{path}") };
            Err(bad(key, humane(&e.inner().to_string())))
        }
    }
}

/// A serde message in words: `expected u32` is a whole number's range.
fn humane(message: &str) -> String {
    message
        .replace("expected u32", "expected a whole number from 0 to 4294967295")
        .replace("expected u64", "expected a whole number, 0 or more")
        .replace("expected usize", "expected a whole number, 0 or more")
        .replace("expected i64", "expected a whole number")
        .replace("expected i32", "expected a whole number")
        .replace("expected f64", "expected a number")
}

fn path_error<E: std::fmt::Display>(file: &Path, e: serde_path_to_error::Error<E>) -> ConfigError {
    let key = e.path().to_string();
    let key = if key == "." { "(document)".to_owned() } else { key };
    let message = e.inner().to_string();
    // toml prefixes its own position report; keep the first useful line.
    let message = humane(message.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim());
    let message = message.as_str();
    // The YAML parser starts its message with the key, which the error names already.
    let message = message.strip_prefix(&format!("{key}: ")).unwrap_or(message);
    let message = if message.contains("$__toml_private_datetime") {
        "a date or time is no value here; expected a number, a string, true or false, or a distribution table"
    } else {
        message
    };
    ConfigError::invalid(file, key, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[experiment]
name = "t"
[data]
source = "synthetic"
[model]
kind = "mlp"
hidden_units = { int = [8, 64], log = true }
[train]
lr = { loguniform = [1e-4, 1e-1] }
optimizer = { choice = ["adam", "sgd"] }
max_epochs = 3
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, ConfigFormat::Toml, Path::new("t.toml"))
    }

    #[test]
    fn deeply_nested_yaml_is_refused_before_parsing_wherever_its_brackets_are() {
        let yaml = |body: &str| Config::parse(body, ConfigFormat::Yaml, Path::new("t.yaml"));
        // 100,000 levels took the parser minutes; counting takes microseconds.
        let deep = format!("experiment:\n  name: t\nx: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        let e = yaml(&deep).unwrap_err().to_string();
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(e.contains("t.yaml") && e.contains("line 3") && e.contains("more than 4096 brackets"), "{e}");
        // No quote hides them: not one the parser reads as text, nor one it does not.
        for prefix in ["z: a \"", "z: a: '", "z: \""] {
            let hidden = format!("experiment:\n  name: t\n{prefix}\nx: {}\n", "[{".repeat(3000));
            assert!(yaml(&hidden).unwrap_err().to_string().contains("line 4: more than 4096"), "{prefix}");
        }
        // A config's few brackets pass.
        let fine = "experiment:\n  name: t\nmodel:\n  kind: sleep\n  quality: {uniform: [0.1, 0.9]}\n";
        assert!(yaml(fine).is_ok(), "{:?}", yaml(fine).err());
    }

    #[test]
    fn good_config_resolves_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.max_epochs, 3);
        assert_eq!(c.experiment.metric, "val_accuracy");
        let searched: Vec<&str> = c.space.searched().collect();
        assert_eq!(searched, ["hidden_units", "optimizer", "lr"]);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("lr = {", "lrr = {"), "train.lrr"),
            (GOOD.replace("[1e-4, 1e-1]", "[1e-1, 1e-4]"), "train.lr"),
            (GOOD.replace("\"sgd\"", "\"adamw\""), "train.optimizer"),
            (GOOD.replace("max_epochs = 3", "max_epochs = { int = [1, 3] }"), "train.max_epochs"),
            (GOOD.replace("source = \"synthetic\"", "source = \"mnist\""), "data.source"),
            (GOOD.replace("name = \"t\"", "name = \"t\"\nseed = \"x\""), "experiment.seed"),
        ];
        for (text, key) in cases {
            match parse(&text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("expected an error at {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn each_kind_declares_its_keys_metrics_data_and_what_pbt_keeps() {
        let err = |text: &str| match parse(text) {
            Err(ConfigError::Invalid { key, message, .. }) => format!("{key}: {message}"),
            other => panic!("expected an error, got {other:?}"),
        };
        // The kinds' names come from their modules, in one list.
        let e = err(&GOOD.replace("kind = \"mlp\"", "kind = \"rnn\""));
        assert!(e.contains("\"mlp\", \"cnn\", \"torchscript\", \"command\" or \"sleep\""), "{e}");
        // A kind's fields: a CNN key in an MLP is unknown, and the message lists the MLP's own.
        let e = err(&GOOD.replace("[train]", "conv_blocks = 2\n[train]"));
        assert!(e.starts_with("model.conv_blocks: unknown key; expected one of kind, hidden_layers"), "{e}");
        // A TorchScript module's settings are its keys, with its note.
        let script = GOOD.replace(
            "kind = \"mlp\"\nhidden_units = { int = [8, 64], log = true }",
            "kind = \"torchscript\"\nmodule = \"m.pt\"\nwidth = 3",
        );
        let e = err(&script);
        assert!(e.contains("expected one of kind, module, input (a TorchScript module's architecture"), "{e}");
        // PBT may not change the optimizer whose state a TorchScript checkpoint holds.
        let script =
            script.replace("width = 3\n", "") + "[scheduler]\nkind = \"pbt\"\ninterval = 1\nmutate = [\"optimizer\"]\n";
        let e = err(&script);
        assert!(e.starts_with("scheduler.mutate: `optimizer` cannot change under PBT"), "{e}");
        // The metrics are the training loop's; a program reports its own.
        let e = err(&GOOD.replace("name = \"t\"", "name = \"t\"\nmetric = \"f1\""));
        assert!(e.contains("expected one of val_accuracy, val_loss, train_loss"), "{e}");
        let command = "[experiment]\nname = \"t\"\nmetric = \"f1\"\n[model]\nkind = \"command\"\ncommand = \"true\"\n";
        let c = parse(command).unwrap();
        assert_eq!(c.model.kind(), "command");
        for metric in ["epoch", "trial", ""] {
            let e = err(&command.replace("metric = \"f1\"", &format!("metric = \"{metric}\"")));
            assert!(e.starts_with("experiment.metric: `"), "{metric}: {e}");
        }
        assert!(c.space.domain("grace_seconds").is_none(), "a setting is not a parameter");
        let e = err(&format!("{command}[data]\nsource = \"synthetic\"\n"));
        assert!(e.starts_with("data: not used by model.kind = \"command\""), "{e}");
        // A sleep model reads no data, and a [data] section is not an error.
        let sleep = "[experiment]\nname = \"t\"\n[model]\nkind = \"sleep\"\n";
        assert_eq!(parse(sleep).unwrap().model.data(), DataUse::Unused);
        assert!(parse(&format!("{sleep}[data]\nsource = \"synthetic\"\n")).is_ok());
    }

    #[test]
    fn search_and_scheduler_tables_name_their_keys_and_default_when_empty() {
        let err = |text: &str| match parse(text) {
            Err(ConfigError::Invalid { key, message, .. }) => format!("{key}: {message}"),
            other => panic!("expected an error, got {other:?}"),
        };
        let e = err(&format!("{GOOD}[scheduler]\nkind = \"median\"\nwarmup_epochs = -1\n"));
        assert!(e.starts_with("scheduler.warmup_epochs: invalid value") && e.contains("whole number"), "{e}");
        let e = err(&format!("{GOOD}[search]\nalgorithm = \"grid\"\ngrid_points = \"3\"\n"));
        assert!(e.starts_with("search.grid_points: invalid type"), "{e}");
        // An empty table is the default kind.
        let c = parse(&format!("{GOOD}[search]\n[scheduler]\n")).unwrap();
        assert_eq!((c.search, c.scheduler), (SearchConfig::default(), SchedulerConfig::default()));
        // PBT's list of names counts searched parameters (3 here), not every field.
        let e = err(&format!("{GOOD}[scheduler]\nkind = \"pbt\"\ninterval = 1\nmutate = []\n"));
        assert!(e.ends_with("expected 1 to 3 searched parameter names"), "{e}");
        // A median rule left no epoch to judge is warned of.
        let c = parse(&format!("{GOOD}[scheduler]\nkind = \"median\"\nwarmup_epochs = 2\n")).unwrap();
        assert!(c.warnings().iter().any(|w| w.contains("never stops a trial")), "{:?}", c.warnings());
    }

    #[test]
    fn durations_and_stop_rules() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("0.5m").unwrap().as_secs(), 30);
        for bad in ["", "30", "5x", "0s", "400d", "m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        match parse(&GOOD.replace("name = \"t\"", "name = \"t\"\ntime_budget = \"soon\"")) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "experiment.time_budget"),
            other => panic!("expected an error at experiment.time_budget, got {other:?}"),
        }
    }

    #[test]
    fn yaml_reads_the_same_keys() {
        let yaml = "experiment: {name: t}\ndata: {source: synthetic}\nmodel: {kind: mlp, dropout: {uniform: [0.0, 0.5]}}\ntrain: {max_epochs: 2}\n";
        let c = Config::parse(yaml, ConfigFormat::Yaml, Path::new("t.yaml")).unwrap();
        assert_eq!(c.space.searched().collect::<Vec<_>>(), ["dropout"]);
    }

    #[test]
    fn json_reads_the_same_keys_and_names_them_in_errors() {
        let json = r#"{"experiment": {"name": "t", "max_trials": 4}, "data": {"source": "synthetic"},
            "model": {"kind": "mlp", "hidden_units": {"int": [8, 64], "log": true}},
            "train": {"lr": {"loguniform": [1e-4, 1e-1]}, "max_epochs": 2}}"#;
        let c = Config::parse(json, ConfigFormat::Json, Path::new("t.json")).unwrap();
        assert_eq!(c.space.searched().collect::<Vec<_>>(), ["hidden_units", "lr"]);
        assert_eq!(c.experiment.max_trials, 4);
        let bad = json.replace(r#""max_trials": 4"#, r#""max_trials": "four""#);
        match Config::parse(&bad, ConfigFormat::Json, Path::new("t.json")) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "experiment.max_trials"),
            other => panic!("expected an error at experiment.max_trials, got {other:?}"),
        }
        let trailing = format!("{json} x");
        assert!(Config::parse(&trailing, ConfigFormat::Json, Path::new("t.json")).is_err());
        assert_eq!(ConfigFormat::of(Path::new("a/b.json")), ConfigFormat::Json);
        assert_eq!(ConfigFormat::of(Path::new("b.yml")), ConfigFormat::Yaml);
        assert_eq!(ConfigFormat::of(Path::new("b.conf")), ConfigFormat::Toml);
    }

    #[test]
    fn counts_that_become_processes_threads_or_loops_are_bounded() {
        let cases = [
            ("name = \"t\"", "name = \"t\"\nconcurrency = 100000", "experiment.concurrency"),
            ("name = \"t\"", "name = \"t\"\nthreads_per_trial = 100000", "experiment.threads_per_trial"),
            ("name = \"t\"", "name = \"t\"\nmax_trials = 4000000000", "experiment.max_trials"),
            (
                "max_epochs = 3",
                "max_epochs = 3\n[search]\nalgorithm = \"grid\"\ngrid_points = 4000000000",
                "search.grid_points",
            ),
        ];
        for (from, to, key) in cases {
            match parse(&GOOD.replace(from, to)) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("expected an error at {key}, got {other:?}"),
            }
        }
        let long = format!("name = \"{}\"", "n".repeat(MAX_NAME_LEN + 1));
        match parse(&GOOD.replace("name = \"t\"", &long)) {
            Err(ConfigError::Invalid { key, message, .. }) => {
                assert_eq!(key, "experiment.name");
                assert!(message.contains("255 bytes"), "{message}");
            }
            other => panic!("expected an error at experiment.name, got {other:?}"),
        }
    }
}
