//! The run directory: what a sweep leaves on disk.
//!
//! ```text
//! DIR/config.toml         the config as given
//! DIR/results.jsonl       every report, one JSON object per line
//! DIR/journal.msgpack     every state change: the truth
//! DIR/leaderboard.csv     trials ranked by the experiment metric
//! DIR/trials/<id>/        checkpoints
//! DIR/best/               params.json, model.json, the best weights
//! DIR/gauntlet.log        the log
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::config::{Mode, ParamValue};
use crate::journal::JOURNAL_FILE;
use crate::schedule::{Decision, Exploit};
use crate::supervision::rank;
use crate::trial::{Report, Trial};

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// `gauntlet status --json`: the state of every trial of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The experiment name.
    pub experiment: String,
    /// The metric.
    pub metric: String,
    /// Its direction.
    pub mode: Mode,
    /// Whether the sweep spent its whole budget.
    pub finished: bool,
    /// Every trial.
    pub trials: Vec<Trial>,
}

/// A run directory that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct RunDirError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

impl RunDir {
    /// Creates (or reuses) a run directory.
    pub fn create(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("trials"))?;
        Ok(RunDir { root })
    }

    /// Opens an existing run directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RunDirError> {
        let root = root.into();
        if !root.join(JOURNAL_FILE).is_file() {
            return Err(RunDirError {
                path: root.clone(),
                message: format!("not a run directory: expected {JOURNAL_FILE} in it (made by `gauntlet run`)"),
            });
        }
        Ok(RunDir { root })
    }

    /// The journal.
    pub fn journal_file(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where checkpoints go.
    pub fn trials_dir(&self) -> PathBuf {
        self.root.join("trials")
    }

    /// Where the best model goes.
    pub fn best_dir(&self) -> PathBuf {
        self.root.join("best")
    }

    /// The log file.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("gauntlet.log")
    }

    /// Keeps a copy of the config's `text`, as given in the file `source`
    /// (whose extension names the copy's).
    pub fn save_config(&self, source: &Path, text: &str) -> io::Result<()> {
        let name = match source.extension().and_then(|e| e.to_str()) {
            Some(ext @ ("yaml" | "yml" | "json")) => format!("config.{ext}"),
            _ => "config.toml".into(),
        };
        fs::write(self.root.join(name), text)
    }

    /// Opens `results.jsonl` for appending.
    pub fn results_log(&self) -> io::Result<ResultsLog> {
        self.results_log_at(&self.root.join("results.jsonl"))
    }

    /// A results log in `file`, appended to (a fresh export before it replaces `results.jsonl`).
    pub(crate) fn results_log_at(&self, file: &Path) -> io::Result<ResultsLog> {
        let file = OpenOptions::new().create(true).append(true).open(file)?;
        Ok(ResultsLog { out: BufWriter::new(file) })
    }

    /// Writes `leaderboard.csv`: ranked trials, then those without a metric.
    pub fn write_leaderboard(&self, standings: &[Trial], metric: &str, mode: Mode) -> io::Result<()> {
        let ranked = rank(standings, mode);
        let rest = standings.iter().filter(|s| !ranked.iter().any(|r| r.id == s.id));
        let param_names: Vec<&String> = standings.first().map(|s| s.params.keys().collect()).unwrap_or_default();
        let tmp = self.root.join(".leaderboard.csv.tmp");
        {
            let mut w = csv::Writer::from_path(&tmp).map_err(io::Error::other)?;
            let mut header =
                vec!["rank".to_owned(), "trial".into(), "status".into(), metric.into(), "best_epoch".into()];
            header.extend(["epochs".into(), "restarts".into(), "lineage".into()]);
            header.extend(param_names.iter().map(|n| n.to_string()));
            w.write_record(&header).map_err(io::Error::other)?;
            for (i, s) in
                ranked.iter().copied().enumerate().map(|(i, s)| (Some(i + 1), s)).chain(rest.map(|s| (None, s)))
            {
                let mut row = vec![
                    i.map(|r| r.to_string()).unwrap_or_default(),
                    s.id.to_string(),
                    s.status.to_string(),
                    s.best_metric.map(|m| m.to_string()).unwrap_or_default(),
                    s.best_epoch.map(|e| e.to_string()).unwrap_or_default(),
                    s.epochs.to_string(),
                    s.restarts.to_string(),
                    lineage(s),
                ];
                row.extend(param_names.iter().map(|n| s.params.get(*n).map(ParamValue::exact).unwrap_or_default()));
                w.write_record(&row).map_err(io::Error::other)?;
            }
            w.flush()?;
        }
        fs::rename(tmp, self.root.join("leaderboard.csv"))
    }

    /// Writes `best/`: the trial's params, the model description and the
    /// files of its best checkpoint (the weights).
    pub fn write_best(
        &self,
        best: &Trial,
        checkpoint: Option<&Checkpoint>,
        model: Option<&serde_json::Value>,
        metric: &str,
    ) -> io::Result<()> {
        let dir = self.best_dir();
        let tmp = self.root.join(".best.tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        fs::write(tmp.join("params.json"), serde_json::to_vec_pretty(&best.params).map_err(io::Error::other)?)?;
        let about = serde_json::json!({
            "trial": best.id,
            "metric": metric,
            "best_metric": best.best_metric,
            "best_epoch": best.best_epoch,
            "checkpoint_epoch": checkpoint.map(|c| c.epoch),
        });
        fs::write(tmp.join("trial.json"), serde_json::to_vec_pretty(&about).map_err(io::Error::other)?)?;
        if let Some(model) = model {
            fs::write(tmp.join("model.json"), serde_json::to_vec_pretty(model).map_err(io::Error::other)?)?;
        }
        if let Some(c) = checkpoint {
            for entry in fs::read_dir(&c.dir)? {
                let entry = entry?;
                let name = entry.file_name();
                // The optimizer state is for resuming, not for predicting.
                if name.to_string_lossy().starts_with("optimizer") || name == "checkpoint.json" {
                    continue;
                }
                if entry.file_type()?.is_dir() {
                    fs::create_dir(tmp.join(&name))?;
                    crate::checkpoint::copy_tree(&entry.path(), &tmp.join(name))?;
                } else {
                    fs::copy(entry.path(), tmp.join(name))?;
                }
            }
        }
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::rename(tmp, dir)
    }
}

/// A trial's PBT exploits as `leaderboard.csv` shows them: `4 from 6@3`
/// is "at epoch 4, continued from trial 6's checkpoint of epoch 3".
pub fn lineage(trial: &Trial) -> String {
    let steps: Vec<String> =
        trial.lineage.iter().map(|l| format!("{} from {}@{}", l.at_epoch, l.donor, l.donor_epoch)).collect();
    steps.join("; ")
}

/// The names `results.jsonl` and `leaderboard.csv` give their own fields
/// and columns: no metric or parameter may take one.
pub const RESERVED_NAMES: &[&str] = &[
    "trial",
    "attempt",
    "epoch",
    "decision",
    "exploit",
    "at",
    "elapsed_s",
    "rank",
    "status",
    "best_epoch",
    "epochs",
    "restarts",
    "lineage",
];

/// `results.jsonl`: an export of every report, a line each.
pub struct ResultsLog {
    out: BufWriter<File>,
}

#[derive(Serialize)]
struct ResultLine<'a> {
    trial: u32,
    attempt: u32,
    epoch: u32,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exploit: Option<&'a Exploit>,
    /// When the report arrived (RFC 3339, UTC).
    at: String,
    /// Seconds the experiment had run (all sessions).
    elapsed_s: f64,
    #[serde(flatten)]
    metrics: std::collections::BTreeMap<&'a str, f64>,
}

impl ResultsLog {
    /// Appends one report.
    pub fn append(&mut self, report: &Report, decision: &Decision, at: &crate::trial::Stamp) -> io::Result<()> {
        let line = ResultLine {
            at: at.rfc3339(),
            elapsed_s: at.elapsed_ms as f64 / 1000.0,
            trial: report.trial.0,
            attempt: report.attempt,
            epoch: report.epoch,
            decision: decision.name(),
            exploit: match decision {
                Decision::Exploit(e) => Some(e),
                _ => None,
            },
            metrics: report.metrics.iter().map(|(n, v)| (n.as_str(), *v)).collect(),
        };
        serde_json::to_writer(&mut self.out, &line).map_err(io::Error::other)?;
        self.out.write_all(b"\n")?;
        // One line, one write: readers (and a crash) see whole lines.
        self.out.flush()
    }

    /// Pushes buffered lines to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Pushes buffered lines to the disk itself (before the file replaces another).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()
    }
}
