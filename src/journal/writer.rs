//! The journal writer: one dedicated thread owns the file and commits in
//! groups. It takes every event waiting in its queue, writes them with one
//! `write`, makes them durable with one `fdatasync`, and only then fires
//! their acknowledgements: a waiting caller of [`Journal::sync`], a follow-up
//! that must not run ahead of the file, or a report's decision sent straight
//! to the trial's slot thread (the leaderboard asks for that only for the
//! decisions that lead to files a resume reads: exploit and pause; the others
//! go to the trial as soon as the report is queued). The thread ends when
//! every handle is dropped. An fsync is shared by every event that arrived
//! while the previous one ran. fsync blocks for milliseconds (and on some
//! disks stalls for hundreds), which is why this is a thread and not a task
//! on a tokio worker.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use super::{encode_frame, header, now_ms, Event, JournalError, Record};
use crate::schedule::Decision;

/// What to do once an event is durable.
enum Ack {
    /// Send a report's decision to the waiting trial.
    Decision(Sender<Decision>, Decision),
    /// Wake a caller of [`Journal::sync`].
    Synced(Sender<()>),
    /// Run a follow-up that must not happen before the event is durable.
    Then(Box<dyn FnOnce() + Send>),
}

enum Command {
    Append(Event, Option<Ack>),
    Sync(Sender<()>),
}

/// Counters of a journal writer.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Events written.
    pub events: AtomicU64,
    /// fsyncs (commit groups).
    pub syncs: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
}

/// A handle on a journal being written; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    queue: Sender<Command>,
    path: PathBuf,
    stats: Arc<JournalStats>,
    error: Arc<Mutex<Option<String>>>,
    /// Milliseconds added to every commit (`chaos.journal_sync_ms`).
    slow_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Creates a new journal; fails if the file exists.
    pub fn create(path: &Path) -> Result<Journal, JournalError> {
        let io_err = |source| JournalError::Io { path: path.to_owned(), source };
        let mut file = OpenOptions::new().write(true).create_new(true).open(path).map_err(io_err)?;
        lock(&file, path)?;
        file.write_all(&header()).and_then(|()| file.sync_all()).map_err(io_err)?;
        Ok(Self::start(file, path))
    }

    /// Opens an existing journal for appending after its first `valid_len`
    /// bytes, cutting off anything after them (a torn tail).
    pub fn append_to(path: &Path, valid_len: u64) -> Result<Journal, JournalError> {
        Self::append_locked(Self::lock_existing(path)?, path, valid_len)
    }

    /// Takes an existing journal's lock (refused, as [`JournalError::Busy`],
    /// while a live run holds it). Take it before reading the journal to
    /// continue it: a run that ends in between would otherwise lose what it
    /// wrote after the read to the cut of [`append_locked`](Self::append_locked).
    pub fn lock_existing(path: &Path) -> Result<LockedJournal, JournalError> {
        let io_err = |source| JournalError::Io { path: path.to_owned(), source };
        let file = OpenOptions::new().write(true).open(path).map_err(io_err)?;
        lock(&file, path)?;
        Ok(LockedJournal(file))
    }

    /// Appends to a journal whose lock is held, after its first `valid_len`
    /// bytes, cutting off anything after them (a torn tail).
    pub fn append_locked(locked: LockedJournal, path: &Path, valid_len: u64) -> Result<Journal, JournalError> {
        let io_err = |source| JournalError::Io { path: path.to_owned(), source };
        let mut file = locked.0;
        if valid_len < super::HEADER_LEN {
            file.set_len(0).map_err(io_err)?;
            file.write_all(&header()).map_err(io_err)?;
        } else {
            file.set_len(valid_len).map_err(io_err)?;
        }
        file.sync_all().map_err(io_err)?;
        file.seek(SeekFrom::End(0)).map_err(io_err)?;
        Ok(Self::start(file, path))
    }

    fn start(file: File, path: &Path) -> Journal {
        let (queue, commands) = crossbeam_channel::unbounded();
        let stats = Arc::new(JournalStats::default());
        let error = Arc::new(Mutex::new(None));
        let slow_ms = Arc::new(AtomicU64::new(0));
        let (s, e, slow) = (stats.clone(), error.clone(), slow_ms.clone());
        std::thread::Builder::new()
            .name("gauntlet-journal".into())
            .spawn(move || {
                let mut acks = Vec::new();
                if let Err(err) = write_loop(file, &commands, &mut acks, &s, &slow) {
                    tracing::error!("journal write failed: {err}");
                    *e.lock().unwrap_or_else(|p| p.into_inner()) = Some(err.to_string());
                }
                // Only now do waiters and senders see the writer gone: each
                // finds the error that stopped it.
                drop(acks);
                drop(commands);
            })
            .expect("the journal thread starts");
        Journal { queue, path: path.to_owned(), stats, error, slow_ms }
    }

    /// Makes every commit take `ms` milliseconds more (`chaos.journal_sync_ms`:
    /// a slow disk, for testing what must wait for durability and what must not).
    pub fn slow_commits(&self, ms: u32) {
        self.slow_ms.store(u64::from(ms), Ordering::Relaxed);
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an event; durable at the next group commit.
    pub fn append(&self, event: Event) -> Result<(), JournalError> {
        self.send(Command::Append(event, None))
    }

    /// Appends a report's event; `decision` is sent on `reply` once it is durable.
    pub fn append_then_reply(
        &self,
        event: Event,
        reply: Sender<Decision>,
        decision: Decision,
    ) -> Result<(), JournalError> {
        self.send(Command::Append(event, Some(Ack::Decision(reply, decision))))
    }

    /// Appends an event; `then` runs on the journal thread once it is durable.
    pub fn append_then(&self, event: Event, then: impl FnOnce() + Send + 'static) -> Result<(), JournalError> {
        self.send(Command::Append(event, Some(Ack::Then(Box::new(then)))))
    }

    /// Appends an event and waits until it is durable.
    pub fn append_durable(&self, event: Event) -> Result<(), JournalError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Append(event, Some(Ack::Synced(tx))))?;
        rx.recv().map_err(|_| self.failure())
    }

    /// Waits until everything appended so far is durable.
    pub fn sync(&self) -> Result<(), JournalError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Command::Sync(tx))?;
        rx.recv().map_err(|_| self.failure())
    }

    /// Counters.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    fn send(&self, command: Command) -> Result<(), JournalError> {
        self.queue.send(command).map_err(|_| self.failure())
    }

    /// Why the journal stopped taking events (the writer's I/O error, with
    /// the file), if it did.
    pub fn error(&self) -> Option<String> {
        let message = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some(format!("{}: {message}", self.path.display()))
    }

    fn failure(&self) -> JournalError {
        let message = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        JournalError::Io {
            path: self.path.clone(),
            source: io::Error::other(message.unwrap_or_else(|| "the journal writer has stopped".into())),
        }
    }
}

/// A journal file whose lock this process holds (released when dropped).
#[derive(Debug)]
pub struct LockedJournal(File);

/// Takes the journal's exclusive lock for as long as the file is open: one
/// writer per run, so a `resume` cannot cut the journal of a live run.
fn lock(file: &File, path: &Path) -> Result<(), JournalError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Busy { path: path.to_owned() }),
        Err(std::fs::TryLockError::Error(source)) => Err(JournalError::Io { path: path.to_owned(), source }),
    }
}

/// Group commit: block for one command, take all others waiting (up to
/// 4 MiB), write, fdatasync, acknowledge.
fn write_loop(
    mut file: File,
    commands: &Receiver<Command>,
    acks: &mut Vec<Ack>,
    stats: &JournalStats,
    slow_ms: &AtomicU64,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 20);
    while let Ok(first) = commands.recv() {
        let mut events = 0u64;
        let mut take = |command: Command, buf: &mut Vec<u8>| match command {
            Command::Append(event, ack) => {
                encode_frame(&Record { at_ms: now_ms(), event }, buf);
                events += 1;
                acks.extend(ack);
            }
            Command::Sync(tx) => acks.push(Ack::Synced(tx)),
        };
        take(first, &mut buf);
        while buf.len() < 4 << 20 {
            match commands.try_recv() {
                Ok(command) => take(command, &mut buf),
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            file.write_all(&buf)?;
            file.sync_data()?;
            let slow = slow_ms.load(Ordering::Relaxed);
            if slow > 0 {
                std::thread::sleep(std::time::Duration::from_millis(slow));
            }
            stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            buf.clear();
        }
        stats.events.fetch_add(events, Ordering::Relaxed);
        for ack in acks.drain(..) {
            match ack {
                Ack::Decision(reply, decision) => {
                    let _ = reply.try_send(decision);
                }
                Ack::Synced(tx) => {
                    let _ = tx.try_send(());
                }
                Ack::Then(f) => f(),
            }
        }
    }
    Ok(())
}
