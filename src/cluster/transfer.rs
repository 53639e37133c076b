//! Checkpoints between a coordinator and a worker, streamed.
//!
//! A checkpoint directory travels as [`Part`]s of at most
//! [`wire::CHUNK_BYTES`], read one at a time ([`PartReader`]) and written
//! to disk as they arrive ([`PartWriter`]). The sender keeps at most
//! [`WINDOW_PARTS`] parts unacknowledged, and the receiver acknowledges a
//! part once it is on disk: neither side holds more than the window in
//! memory, whatever the checkpoint's size, and a slow disk slows the sender
//! instead of filling a queue.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::wire::{Part, CHUNK_BYTES};

/// Parts a sender may have sent beyond the last acknowledged one.
pub const WINDOW_PARTS: u64 = 8;

/// Reads the files of a checkpoint directory part by part (the engine's own
/// metadata file excepted: the receiver writes its own).
pub struct PartReader {
    root: PathBuf,
    files: std::vec::IntoIter<String>,
    /// The file being read, where the next part starts, and whether a part
    /// of it was sent (an empty file still travels, as one empty part).
    current: Option<(String, File, u64, bool)>,
    total: u64,
}

impl PartReader {
    /// Lists the directory's regular files (symbolic links are not followed).
    pub fn open(dir: &Path) -> io::Result<Self> {
        let mut files = Vec::new();
        list_files(dir, String::new(), &mut files).map_err(at(dir))?;
        files.retain(|(name, _)| name != crate::checkpoint::META_FILE);
        files.sort();
        let total = files.iter().map(|(_, len)| len).sum();
        let files: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
        Ok(PartReader { root: dir.to_owned(), files: files.into_iter(), current: None, total })
    }

    /// The bytes of all files, as listed.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The next part, `None` after the last.
    pub fn next_part(&mut self) -> io::Result<Option<Part>> {
        loop {
            let (name, file, offset, sent) = match &mut self.current {
                Some(c) => c,
                None => {
                    let Some(name) = self.files.next() else { return Ok(None) };
                    let path = self.root.join(&name);
                    let file = File::open(&path).map_err(at(&path))?;
                    self.current.insert((name, file, 0, false))
                }
            };
            let mut bytes = Vec::with_capacity(CHUNK_BYTES.min(64 << 10));
            (&mut *file).take(CHUNK_BYTES as u64).read_to_end(&mut bytes).map_err(at(&self.root.join(&*name)))?;
            if bytes.is_empty() && *sent {
                self.current = None;
                continue;
            }
            let part = Part { file: name.clone(), offset: *offset, bytes };
            *offset += part.bytes.len() as u64;
            *sent = true;
            if part.bytes.is_empty() {
                self.current = None;
            }
            return Ok(Some(part));
        }
    }

    /// Up to `n` parts, and whether the last was among them.
    pub fn next_parts(&mut self, n: u64) -> io::Result<(Vec<Part>, bool)> {
        let mut parts = Vec::new();
        while (parts.len() as u64) < n {
            match self.next_part()? {
                Some(part) => parts.push(part),
                None => return Ok((parts, true)),
            }
        }
        Ok((parts, false))
    }
}

/// An I/O error that names the path it was about.
fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The regular files under `dir` with their sizes, as `/`-separated
/// relative paths.
fn list_files(dir: &Path, prefix: String, out: &mut Vec<(String, u64)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            list_files(&entry.path(), path, out)?;
        } else if kind.is_file() {
            out.push((path, entry.metadata()?.len()));
        }
    }
    Ok(())
}

/// The bytes of the regular files under `dir`.
pub fn tree_bytes(dir: &Path) -> io::Result<u64> {
    let mut files = Vec::new();
    list_files(dir, String::new(), &mut files)?;
    Ok(files.iter().map(|(_, len)| len).sum())
}

/// Whether a part's path stays inside the checkpoint directory.
fn safe_relative(file: &str) -> bool {
    !file.is_empty() && !file.contains('\\') && file.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Writes the parts of one checkpoint into a staging directory as they
/// arrive, then moves them into the checkpoint's own directory.
///
/// A part must start where its file so far ends (the sender sends them in
/// order over one connection), name a path inside the directory, and keep
/// the checkpoint within its size limit. The first part that does not
/// fails the whole checkpoint; later parts are counted and dropped, so that
/// the sender, which waits for acknowledgements, is not left waiting.
pub struct PartWriter {
    dir: PathBuf,
    limit: u64,
    written: u64,
    parts: u64,
    open: Option<(String, File, u64)>,
    created: bool,
    error: Option<String>,
}

impl PartWriter {
    /// Stages parts in `dir` (emptied on the first part), at most `limit` bytes.
    pub fn new(dir: PathBuf, limit: u64) -> Self {
        PartWriter { dir, limit, written: 0, parts: 0, open: None, created: false, error: None }
    }

    /// Parts received so far, written or not.
    pub fn parts(&self) -> u64 {
        self.parts
    }

    /// Writes one part (blocking file I/O).
    pub fn write(&mut self, part: &Part) {
        self.parts += 1;
        if self.error.is_none() {
            if let Err(e) = self.try_write(part) {
                self.open = None;
                self.error = Some(e.to_string());
            }
        }
    }

    fn try_write(&mut self, part: &Part) -> io::Result<()> {
        if !safe_relative(&part.file) {
            return Err(io::Error::other(format!("checkpoint part names a bad file `{}`", part.file)));
        }
        self.written = self.written.saturating_add(part.bytes.len() as u64);
        if self.written > self.limit {
            return Err(io::Error::other(format!(
                "the checkpoint is larger than its limit of {} bytes (fault.max_checkpoint_mb)",
                self.limit
            )));
        }
        if !self.created {
            match fs::remove_dir_all(&self.dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            fs::create_dir_all(&self.dir)?;
            self.created = true;
        }
        let same = self.open.as_ref().is_some_and(|(name, _, _)| *name == part.file);
        if !same {
            let target = self.dir.join(&part.file);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            if target.exists() {
                return Err(io::Error::other(format!("checkpoint file `{}` came twice", part.file)));
            }
            self.open = Some((part.file.clone(), File::create(target)?, 0));
        }
        let (name, file, len) = self.open.as_mut().expect("opened above");
        if part.offset != *len {
            return Err(io::Error::other(format!(
                "checkpoint file `{name}`: a part at offset {} follows {len} bytes",
                part.offset
            )));
        }
        file.write_all(&part.bytes)?;
        *len += part.bytes.len() as u64;
        Ok(())
    }

    /// Moves the staged files into `target` (an empty directory on the same
    /// file system) and removes the staging directory; the first error of
    /// any part, if there was one.
    pub fn finish_into(mut self, target: &Path) -> io::Result<()> {
        self.open = None;
        if let Some(e) = self.error.take() {
            self.discard();
            return Err(io::Error::other(e));
        }
        if !self.created {
            return Ok(());
        }
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            fs::rename(entry.path(), target.join(entry.file_name()))?;
        }
        fs::remove_dir(&self.dir)
    }

    /// Removes what was staged (blocking file I/O).
    pub fn discard(self) {
        if self.created {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{FromWorker, MAX_FRAME_BYTES};
    use super::*;

    fn all_parts(dir: &Path) -> Vec<Part> {
        let mut reader = PartReader::open(dir).unwrap();
        std::iter::from_fn(|| reader.next_part().unwrap()).collect()
    }

    fn receive(parts: &[Part], limit: u64) -> (tempfile::TempDir, io::Result<()>) {
        let dst = tempfile::tempdir().unwrap();
        let mut w = PartWriter::new(dst.path().join("staging"), limit);
        for p in parts {
            w.write(p);
        }
        assert_eq!(w.parts(), parts.len() as u64, "every part is counted");
        let target = dst.path().join("ckpt");
        fs::create_dir(&target).unwrap();
        let done = w.finish_into(&target);
        assert!(!dst.path().join("staging").exists(), "the staging directory goes");
        (dst, done)
    }

    #[test]
    fn parts_round_trip_and_stay_under_the_frame_limit() {
        let src = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(CHUNK_BYTES * 2 + 12345)).map(|i| (i * 31 % 251) as u8).collect();
        fs::write(src.path().join("weights.safetensors"), &big).unwrap();
        fs::write(src.path().join("empty"), b"").unwrap();
        fs::write(src.path().join(crate::checkpoint::META_FILE), b"{}").unwrap();
        fs::create_dir_all(src.path().join("program/.state")).unwrap();
        fs::write(src.path().join("program/.state/checkpoint.json"), b"theirs").unwrap();
        assert_eq!(PartReader::open(src.path()).unwrap().total_bytes(), big.len() as u64 + 6);
        let parts = all_parts(src.path());
        assert_eq!(parts.len(), 1 + 3 + 1);
        for p in &parts {
            let frame =
                rmp_serde::to_vec_named(&FromWorker::CheckpointPart { lease: 1, epoch: 3, part: p.clone() }).unwrap();
            assert!(frame.len() < CHUNK_BYTES + 1024, "a part's frame is {} bytes", frame.len());
            assert!(frame.len() < MAX_FRAME_BYTES);
        }
        let mut reader = PartReader::open(src.path()).unwrap();
        let (first, last) = reader.next_parts(2).unwrap();
        assert_eq!((first.len(), last), (2, false));
        let (rest, last) = reader.next_parts(10).unwrap();
        assert_eq!((rest.len(), last), (3, true));

        let (dst, done) = receive(&parts, u64::MAX);
        done.unwrap();
        let ckpt = dst.path().join("ckpt");
        assert_eq!(fs::read(ckpt.join("weights.safetensors")).unwrap(), big);
        assert_eq!(fs::read(ckpt.join("empty")).unwrap(), b"");
        assert!(!ckpt.join(crate::checkpoint::META_FILE).exists());
        let nested = ckpt.join("program/.state/checkpoint.json");
        assert_eq!(fs::read(nested).unwrap(), b"theirs", "subdirectories and dotfiles travel too");

        // One byte over the limit fails the checkpoint, and nothing stays.
        let (dst, done) = receive(&parts, big.len() as u64 + 5);
        let err = done.unwrap_err().to_string();
        assert!(err.contains("fault.max_checkpoint_mb"), "{err}");
        assert_eq!(fs::read_dir(dst.path().join("ckpt")).unwrap().count(), 0);
        receive(&parts, big.len() as u64 + 6).1.unwrap();
    }

    #[test]
    fn parts_out_of_order_twice_or_with_bad_names_are_refused() {
        let part = |file: &str, offset| Part { file: file.into(), offset, bytes: vec![1, 2] };
        assert!(receive(&[part("w", 0), part("w", 5)], u64::MAX).1.is_err());
        assert!(receive(&[part("w", 0), part("v", 0), part("w", 2)], u64::MAX).1.is_err(), "a file comes once");
        for bad in ["../escape", "a/../../escape", "/abs", "a//b", "./w", ""] {
            assert!(receive(&[part(bad, 0)], u64::MAX).1.is_err(), "`{bad}` must be refused");
        }
        assert!(receive(&[part("w", 0), part("w", 2)], u64::MAX).1.is_ok());
        assert!(receive(&[], u64::MAX).1.is_ok(), "a checkpoint of no files");
    }
}
