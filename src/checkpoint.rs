//! Checkpoint storage: `trials/<id>/ckpt-<epoch>/` directories on disk.
//!
//! A checkpoint is written into a hidden temporary directory and renamed
//! into place, so a crash never leaves a half-written checkpoint that looks
//! whole; the directory on disk is the truth a restarted trial resumes from.
//! Retention is composed of strategies ([`Keep`]), as burn-train composes
//! its checkpointing strategies: a checkpoint goes only when none of the
//! strategies a moment asks for keeps it. After each save: the last `keep`,
//! the best, those pinned for a PBT copy and the one the journal knows of.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::trial::TrialId;

/// One saved checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The epoch it was taken after.
    pub epoch: u32,
    /// The experiment's score at that epoch (bigger is better), if reported.
    pub score: Option<f64>,
    /// The trial's seed, for trainables that derive RNG streams from it.
    pub seed: u64,
    /// Where its files are.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The metadata file inside every checkpoint directory.
pub const META_FILE: &str = "checkpoint.json";

/// The checkpoints of all trials of one experiment.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: PathBuf,
    keep: usize,
    /// Checkpoints another trial will copy (PBT donors), with how many
    /// copies are pending: retention leaves them alone. Shared by clones.
    pins: Arc<Mutex<BTreeMap<(TrialId, u32), u32>>>,
    /// Each trial's newest checkpoint the journal knows of: what PBT may
    /// pick as a donor's, so retention keeps it until a newer one is known
    /// (the file is written before the journal hears of it). Shared by clones.
    known: Arc<Mutex<BTreeMap<TrialId, u32>>>,
}

impl CheckpointStore {
    /// Stores checkpoints under `root`, keeping the last `keep` per trial plus the best.
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        CheckpointStore { root: root.into(), keep: keep.max(1), pins: Arc::default(), known: Arc::default() }
    }

    /// Where the checkpoints are.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Keeps a trial's checkpoint of `epoch` until as many [`unpin`](Self::unpin)s.
    pub fn pin(&self, trial: TrialId, epoch: u32) {
        *self.pins().entry((trial, epoch)).or_default() += 1;
    }

    /// Releases one [`pin`](Self::pin).
    pub fn unpin(&self, trial: TrialId, epoch: u32) {
        let mut pins = self.pins();
        if let Some(n) = pins.get_mut(&(trial, epoch)) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&(trial, epoch));
            }
        }
    }

    /// Notes that the journal knows of `trial`'s checkpoint of `epoch`:
    /// retention keeps it until a newer one is known.
    pub fn known(&self, trial: TrialId, epoch: u32) {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(trial, epoch);
    }

    fn is_known(&self, trial: TrialId, epoch: u32) -> bool {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).get(&trial) == Some(&epoch)
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, BTreeMap<(TrialId, u32), u32>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pinned(&self, trial: TrialId, epoch: u32) -> bool {
        self.pins().contains_key(&(trial, epoch))
    }

    /// PBT's exploit: `trial` continues from a copy of `donor`'s checkpoint
    /// of `epoch` (weights and optimizer state). The trial's own checkpoints
    /// belong to the history it leaves and go, but for those pinned for
    /// other trials. The copy is written and renamed like any checkpoint.
    pub fn copy_from(&self, trial: TrialId, donor: TrialId, epoch: u32, seed: u64) -> io::Result<Checkpoint> {
        let source = self.list(donor).into_iter().find(|c| c.epoch == epoch).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("trial {donor} has no checkpoint of epoch {epoch} to copy"))
        })?;
        self.remove_all_but(trial, &[Keep::Pinned])?;
        let meta = Checkpoint { epoch, score: source.score, seed, dir: PathBuf::new() };
        let copied = self.save(trial, &meta, |dir| {
            copy_tree(&source.dir, dir)?;
            // The copy's own metadata is written by `save`.
            match fs::remove_file(dir.join(META_FILE)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        })?;
        Ok(copied)
    }

    /// The directory of one trial.
    pub fn trial_dir(&self, trial: TrialId) -> PathBuf {
        self.root.join(trial.to_string())
    }

    /// Writes a checkpoint: `write` fills a fresh directory, which then
    /// appears under its final name atomically.
    pub fn save(
        &self,
        trial: TrialId,
        meta: &Checkpoint,
        write: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<Checkpoint> {
        let dir = self.trial_dir(trial);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".ckpt-{:06}.tmp", meta.epoch));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp)?;
        if let Err(e) = write(&tmp) {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
        fs::write(tmp.join(META_FILE), json)?;
        let last = dir.join(format!("ckpt-{:06}", meta.epoch));
        if last.exists() {
            fs::remove_dir_all(&last)?; // an epoch re-run after a restart
        }
        fs::rename(&tmp, &last)?;
        self.retain(trial)?;
        Ok(Checkpoint { dir: last, ..meta.clone() })
    }

    /// Every whole checkpoint of a trial, oldest first.
    pub fn list(&self, trial: TrialId) -> Vec<Checkpoint> {
        let Ok(entries) = fs::read_dir(self.trial_dir(trial)) else {
            return Vec::new();
        };
        let mut out: Vec<Checkpoint> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("ckpt-"))
            .filter_map(|e| {
                let bytes = fs::read(e.path().join(META_FILE)).ok()?;
                let meta: Checkpoint = serde_json::from_slice(&bytes).ok()?;
                Some(Checkpoint { dir: e.path(), ..meta })
            })
            .collect();
        out.sort_by_key(|c| c.epoch);
        out
    }

    /// The newest checkpoint of a trial: where a restart resumes.
    pub fn latest(&self, trial: TrialId) -> Option<Checkpoint> {
        self.list(trial).pop()
    }

    /// The checkpoint with the best score (latest on ties).
    pub fn best(&self, trial: TrialId) -> Option<Checkpoint> {
        best_of(&self.list(trial)).cloned()
    }

    /// Keeps only the best checkpoint of a trial (for pruned and failed
    /// trials), and those pinned for a copy.
    pub fn keep_only_best(&self, trial: TrialId) -> io::Result<()> {
        self.remove_all_but(trial, &[Keep::Best, Keep::Pinned]).map(drop)
    }

    /// Removes checkpoints of epochs after `epoch` (the trial's last recorded
    /// report): they belong to a history the journal does not hold. Pinned
    /// ones stay: a donor that exploited since it was picked has reports
    /// only up to its new epoch, but the copy waits for its old checkpoint.
    pub fn discard_after(&self, trial: TrialId, epoch: u32) -> io::Result<usize> {
        self.remove_all_but(trial, &[Keep::UpTo(epoch), Keep::Pinned])
    }

    /// Removes the checkpoint directories of trials `first` and later (ids
    /// the journal never proposed, after a repair cut them off).
    pub fn discard_trials_from(&self, first: u32) -> io::Result<usize> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Ok(0) };
        let mut removed = 0;
        for entry in entries.filter_map(Result::ok) {
            let id = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
            if id.is_some_and(|id| id >= first) {
                fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Retention after a save.
    fn retain(&self, trial: TrialId) -> io::Result<()> {
        self.remove_all_but(trial, &[Keep::Last(self.keep), Keep::Best, Keep::Pinned, Keep::Known]).map(drop)
    }

    /// Removes each checkpoint of `trial` that none of `strategies` keeps;
    /// how many went.
    fn remove_all_but(&self, trial: TrialId, strategies: &[Keep]) -> io::Result<usize> {
        let all = self.list(trial);
        let kept: BTreeSet<u32> = strategies.iter().flat_map(|s| self.kept_by(*s, trial, &all)).collect();
        let mut removed = 0;
        for c in all.iter().filter(|c| !kept.contains(&c.epoch)) {
            fs::remove_dir_all(&c.dir)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The epochs of `all` (a trial's checkpoints, oldest first) that one strategy keeps.
    fn kept_by(&self, strategy: Keep, trial: TrialId, all: &[Checkpoint]) -> Vec<u32> {
        match strategy {
            Keep::Last(k) => all.iter().rev().take(k).map(|c| c.epoch).collect(),
            Keep::Best => best_of(all).map(|c| c.epoch).into_iter().collect(),
            Keep::Pinned => all.iter().filter(|c| self.pinned(trial, c.epoch)).map(|c| c.epoch).collect(),
            Keep::Known => all.iter().filter(|c| self.is_known(trial, c.epoch)).map(|c| c.epoch).collect(),
            Keep::UpTo(epoch) => all.iter().filter(|c| c.epoch <= epoch).map(|c| c.epoch).collect(),
        }
    }
}

/// One reason to keep a checkpoint of a trial.
#[derive(Debug, Clone, Copy)]
enum Keep {
    /// The newest `k`.
    Last(usize),
    /// The one with the best score (the newest on ties).
    Best,
    /// Those another trial will copy (PBT donors).
    Pinned,
    /// The newest one the journal knows of: what PBT may pick as a donor's.
    Known,
    /// Those of epochs up to this one (the history the journal holds).
    UpTo(u32),
}

/// Copies a directory tree: its directories and regular files, and, as
/// copies of the file they name, symbolic links to regular files inside the
/// tree (`latest.pt -> model-3.pt`). A link out of the tree, to a
/// directory or to nothing is left out (a link to `/dev/zero` or to `/`
/// must not be copied), and logged.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let root = fs::canonicalize(from)?;
    copy_within(&root, from, to)
}

fn copy_within(root: &Path, from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            fs::create_dir_all(&target)?;
            copy_within(root, &entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), target)?;
        } else if kind.is_symlink() {
            match fs::canonicalize(entry.path()) {
                Ok(named) if named.starts_with(root) && named.is_file() => {
                    fs::copy(named, target)?;
                }
                _ => tracing::warn!(
                    link = %entry.path().display(),
                    "a checkpoint keeps no link out of its directory, to a directory or to nothing: left out"
                ),
            }
        }
    }
    Ok(())
}

fn best_of(all: &[Checkpoint]) -> Option<&Checkpoint> {
    all.iter()
        .filter(|c| c.score.is_some_and(f64::is_finite))
        .max_by(|a, b| a.score.unwrap().total_cmp(&b.score.unwrap()).then(a.epoch.cmp(&b.epoch)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(store: &CheckpointStore, epoch: u32, score: f64) {
        let meta = Checkpoint { epoch, score: Some(score), seed: 1, dir: PathBuf::new() };
        store.save(TrialId(3), &meta, |d| fs::write(d.join("w"), epoch.to_string())).unwrap();
    }

    #[test]
    fn copy_tree_copies_links_to_files_inside_it_and_leaves_out_the_others() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        fs::write(from.path().join("model-1.pt"), "weights").unwrap();
        fs::create_dir(from.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("model-1.pt", from.path().join("latest.pt")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", from.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("sub", from.path().join("dir-link")).unwrap();
        std::os::unix::fs::symlink("gone", from.path().join("dangling")).unwrap();
        copy_tree(from.path(), to.path()).unwrap();
        assert_eq!(fs::read_to_string(to.path().join("latest.pt")).unwrap(), "weights");
        assert!(!fs::symlink_metadata(to.path().join("latest.pt")).unwrap().file_type().is_symlink());
        for left_out in ["outside", "dir-link", "dangling"] {
            assert!(fs::symlink_metadata(to.path().join(left_out)).is_err(), "{left_out}");
        }
        assert!(to.path().join("sub").is_dir());
    }

    #[test]
    fn keeps_last_k_and_best() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path(), 2);
        for (epoch, score) in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.65)] {
            save(&store, epoch, score);
        }
        let epochs: Vec<u32> = store.list(TrialId(3)).iter().map(|c| c.epoch).collect();
        assert_eq!(epochs, [2, 4, 5]);
        assert_eq!(store.latest(TrialId(3)).unwrap().epoch, 5);
        assert_eq!(store.best(TrialId(3)).unwrap().epoch, 2);
        store.keep_only_best(TrialId(3)).unwrap();
        assert_eq!(store.list(TrialId(3)).len(), 1);
    }

    #[test]
    fn the_checkpoint_the_journal_knows_of_stays_until_a_newer_one_is_known() {
        // A donor's newer checkpoint is on disk before the journal hears of
        // it: PBT may still pick the one the journal knows, so it stays.
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path(), 1);
        let epochs = |s: &CheckpointStore| s.list(TrialId(3)).iter().map(|c| c.epoch).collect::<Vec<_>>();
        save(&store, 1, 0.3);
        store.clone().known(TrialId(3), 1); // a clone shares what is known
        save(&store, 2, 0.2);
        save(&store, 3, 0.1);
        assert_eq!(epochs(&store), [1, 3], "epoch 1 is known; 2 was neither known nor the newest nor the best");
        store.known(TrialId(3), 3);
        save(&store, 4, 0.0);
        assert_eq!(epochs(&store), [1, 3, 4], "1 stays as the best; 3 stays as known");
        store.known(TrialId(3), 4);
        save(&store, 5, 0.0);
        assert_eq!(epochs(&store), [1, 4, 5]);
    }

    #[test]
    fn half_written_checkpoints_are_invisible() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path(), 2);
        save(&store, 1, 0.5);
        let meta = Checkpoint { epoch: 2, score: None, seed: 1, dir: PathBuf::new() };
        let err = store.save(TrialId(3), &meta, |_| Err(io::Error::other("disk full")));
        assert!(err.is_err());
        assert_eq!(store.latest(TrialId(3)).unwrap().epoch, 1);
    }

    #[test]
    fn pinned_checkpoints_survive_retention_and_copies_replace_the_history() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(tmp.path(), 1);
        save(&store, 1, 0.1);
        store.clone().pin(TrialId(3), 1); // a clone shares the pins
        save(&store, 2, 0.2);
        save(&store, 3, 0.3);
        let epochs: Vec<u32> = store.list(TrialId(3)).iter().map(|c| c.epoch).collect();
        assert_eq!(epochs, [1, 3], "the pinned epoch stays");
        let other = Checkpoint { epoch: 7, score: Some(0.0), seed: 9, dir: PathBuf::new() };
        store.save(TrialId(4), &other, |d| fs::write(d.join("w"), "old")).unwrap();
        let copy = store.copy_from(TrialId(4), TrialId(3), 1, 9).unwrap();
        assert_eq!((copy.epoch, copy.seed, copy.score), (1, 9, Some(0.1)));
        assert_eq!(fs::read_to_string(copy.dir.join("w")).unwrap(), "1");
        assert_eq!(store.list(TrialId(4)).len(), 1, "its own history is gone");
        store.unpin(TrialId(3), 1);
        store.keep_only_best(TrialId(3)).unwrap();
        assert_eq!(store.list(TrialId(3)).iter().map(|c| c.epoch).collect::<Vec<_>>(), [3]);
        assert!(store.copy_from(TrialId(4), TrialId(3), 1, 9).is_err(), "gone once unpinned");
        // A resume's tidying leaves a pinned checkpoint past the trial's reports.
        save(&store, 7, 0.7);
        store.pin(TrialId(3), 7);
        assert_eq!(store.discard_after(TrialId(3), 4).unwrap(), 0);
        store.unpin(TrialId(3), 7);
        assert_eq!(store.discard_after(TrialId(3), 4).unwrap(), 1);
    }
}
