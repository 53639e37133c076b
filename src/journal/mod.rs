//! The journal: `DIR/journal.msgpack`, an append-only log of every state
//! change of a run, and the single source of truth for `status` and `resume`.
//!
//! The file starts with an 8-byte magic and a 4-byte little-endian format
//! version. Then frames follow, each
//! `[payload length: u32 LE][CRC32 of the payload: u32 LE][payload]`, the
//! payload being one [`Record`] as MessagePack with named fields (rmp-serde).
//! A frame cut short at the end of the file (a crash mid-write) is a *torn
//! tail*: readers stop before it and say so. A whole frame whose checksum or
//! payload is wrong, or a frame running past the end with whole frames after
//! it (a damaged length), is *corruption*: an error naming its byte offset.

mod replay;
mod writer;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use crate::event::{Event, Record};
pub use replay::{replay, ReplayError, RunState};
pub use writer::{Journal, JournalStats, LockedJournal};

/// The journal's file name inside a run directory.
pub const JOURNAL_FILE: &str = "journal.msgpack";
/// The first bytes of every journal.
pub const MAGIC: &[u8; 8] = b"GAUNTLET";
/// The format written by this version.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the first frame.
pub const HEADER_LEN: u64 = 12;
const FRAME_HEADER: usize = 8;
/// Frames larger than this are treated as corruption (a wild length field).
const MAX_FRAME: u32 = 64 << 20;

/// A journal that cannot be read as it is.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The journal.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the journal: the run is live.
    #[error("{}: another gauntlet process is writing this run; wait for it or stop it first", path.display())]
    Busy {
        /// The journal.
        path: PathBuf,
    },
    /// The file is not a journal of a version this build reads.
    #[error("{}: {message}", path.display())]
    Header {
        /// The journal.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A whole frame in the middle of the file is damaged.
    #[error(
        "{}: corrupt frame at byte {offset}: {message}; {after} bytes from there on cannot be read \
         (`gauntlet resume --repair` truncates the journal there)",
        path.display()
    )]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// The offset of the damaged frame.
        offset: u64,
        /// What is wrong.
        message: String,
        /// Bytes from the offset to the end of the file.
        after: u64,
    },
}

/// The records of a journal, and where reading stopped.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// The records of the whole frames, in order.
    pub records: Vec<Record>,
    /// The end of the last whole frame (where appending continues).
    pub valid_len: u64,
    /// Bytes of a torn frame after `valid_len`, if any.
    pub torn_bytes: u64,
}

/// Encodes one record as a frame.
pub fn encode_frame(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    rmp_serde::encode::write_named(out, record).expect("records always serialise");
    let len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The file header.
pub fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Reads a journal file.
pub fn read(path: &Path) -> Result<Contents, JournalError> {
    let io_err = |source| JournalError::Io { path: path.to_owned(), source };
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err)?;
    decode(&bytes, path)
}

/// Decodes journal bytes (`path` names them in errors).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Contents, JournalError> {
    let header_err = |message: String| JournalError::Header { path: path.to_owned(), message };
    if bytes.len() < HEADER_LEN as usize {
        if MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
            // A header cut short: the run died while creating the file.
            return Ok(Contents { records: Vec::new(), valid_len: 0, torn_bytes: bytes.len() as u64 });
        }
        return Err(header_err("not a Gauntlet journal (no header)".into()));
    }
    if &bytes[..8] != MAGIC {
        return Err(header_err("not a Gauntlet journal: the file does not start with GAUNTLET".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(header_err(format!(
            "journal format version {version}; this gauntlet reads version {FORMAT_VERSION}: \
             open the run with the gauntlet that wrote it (the file is left as it is)"
        )));
    }
    let corrupt = |offset: usize, message: String| JournalError::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        message,
        after: (bytes.len() - offset) as u64,
    };
    // Walk the length fields to find the frames and how the file ends...
    let mut frames = Vec::new();
    let mut at = HEADER_LEN as usize;
    let mut ending = Ok(0u64); // torn bytes, or the error that stopped the walk
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER {
            ending = Ok(rest.len() as u64);
            break;
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if len == 0 {
            // Never written: a zero-filled tail (power loss on some file
            // systems) is torn; anything else here is damage.
            ending = if rest.iter().all(|&b| b == 0) {
                Ok(rest.len() as u64)
            } else {
                Err(corrupt(at, "zero-length frame".into()))
            };
            break;
        }
        if len > MAX_FRAME {
            ending = Err(corrupt(at, format!("frame length {len} exceeds {MAX_FRAME}")));
            break;
        }
        let end = FRAME_HEADER + len as usize;
        if rest.len() < end {
            // A frame running past the end is a torn tail, unless whole
            // frames follow it: then its length field is damaged.
            ending = match find_frame(&rest[1..]) {
                Some(next) => Err(corrupt(
                    at,
                    format!(
                        "frame length {len} runs past the end, yet a whole frame follows at byte {}",
                        at + 1 + next
                    ),
                )),
                None => Ok(rest.len() as u64),
            };
            break;
        }
        frames.push(at..at + end);
        at += end;
    }
    // ...then check and decode them on every core. A damaged frame before
    // the walk's stop is the first damage in the file.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(frames.len() / 4096 + 1);
    let chunk = frames.len().div_ceil(threads.max(1)).max(1);
    let decode_frames = |frames: &[std::ops::Range<usize>]| -> Result<Vec<Record>, JournalError> {
        let mut records = Vec::with_capacity(frames.len());
        for frame in frames {
            let crc = u32::from_le_bytes(bytes[frame.start + 4..frame.start + 8].try_into().expect("4 bytes"));
            let payload = &bytes[frame.start + FRAME_HEADER..frame.end];
            if crc32fast::hash(payload) != crc {
                return Err(corrupt(frame.start, "checksum mismatch".into()));
            }
            let record =
                rmp_serde::from_slice(payload).map_err(|e| corrupt(frame.start, format!("undecodable record: {e}")))?;
            records.push(record);
        }
        Ok(records)
    };
    let parts: Vec<Result<Vec<Record>, JournalError>> = if threads <= 1 {
        vec![decode_frames(&frames)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = frames.chunks(chunk).map(|c| s.spawn(move || decode_frames(c))).collect();
            handles.into_iter().map(|h| h.join().expect("decoding does not panic")).collect()
        })
    };
    let mut records = Vec::with_capacity(frames.len());
    for part in parts {
        records.extend(part?);
    }
    let torn_bytes = ending?;
    Ok(Contents { records, valid_len: at as u64, torn_bytes })
}

/// The offset of the first whole, checksummed frame in `bytes`, looking at
/// the first MiB of positions (a torn tail is shorter than one group commit).
fn find_frame(bytes: &[u8]) -> Option<usize> {
    let last = bytes.len().saturating_sub(FRAME_HEADER).min(1 << 20);
    (0..last).find(|&p| {
        let len = u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[p + 4..p + 8].try_into().expect("4 bytes"));
        len > 0 && p + FRAME_HEADER + len <= bytes.len() && crc32fast::hash(&bytes[p + 8..p + 8 + len]) == crc
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Params;
    use crate::schedule::Decision;
    use crate::trial::TrialId;

    fn sample() -> Vec<Record> {
        let mut params = Params::new();
        params.insert("lr".into(), crate::config::ParamValue::Float(0.01));
        vec![
            Record { at_ms: 1, event: Event::TrialProposed { id: TrialId(0), params } },
            Record {
                at_ms: 2,
                event: Event::TrialStarted { id: TrialId(0), attempt: 0, from_epoch: None, worker: None },
            },
            Record {
                at_ms: 3,
                event: Event::Report {
                    id: TrialId(0),
                    attempt: 0,
                    epoch: 1,
                    metrics: vec![("val_accuracy".into(), 0.5)],
                    decision: Decision::Continue,
                    at: None,
                },
            },
        ]
    }

    fn bytes(records: &[Record]) -> Vec<u8> {
        let mut b = header();
        for r in records {
            encode_frame(r, &mut b);
        }
        b
    }

    #[test]
    fn round_trips() {
        let b = bytes(&sample());
        let c = decode(&b, Path::new("j")).unwrap();
        assert_eq!(c.records, sample());
        assert_eq!((c.valid_len, c.torn_bytes), (b.len() as u64, 0));
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_frame() {
        let whole = bytes(&sample()[..2]).len();
        let b = bytes(&sample());
        for cut in whole + 1..b.len() {
            let c = decode(&b[..cut], Path::new("j")).unwrap();
            assert_eq!(c.records.len(), 2);
            assert_eq!((c.valid_len, c.torn_bytes), (whole as u64, (cut - whole) as u64));
        }
    }

    #[test]
    fn corruption_in_the_middle_names_the_offset() {
        let first = bytes(&sample()[..1]).len();
        let mut b = bytes(&sample());
        b[first + 10] ^= 0xff; // inside the second frame's payload
        match decode(&b, Path::new("j")) {
            Err(JournalError::Corrupt { offset, .. }) => assert_eq!(offset, first as u64),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(matches!(decode(b"NOTAJOURNAL!", Path::new("j")), Err(JournalError::Header { .. })));
    }

    #[test]
    fn a_report_journalled_before_reports_had_their_time_still_reads() {
        // The frame an earlier binary wrote: a report without `at`.
        let old = serde_json::json!({ "at_ms": 7, "event": { "report": {
            "id": 0, "attempt": 0, "epoch": 1,
            "metrics": [["val_accuracy", 0.5]], "decision": "continue"
        }}});
        let payload = rmp_serde::to_vec_named(&old).unwrap();
        let mut bytes = header();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let contents = decode(&bytes, Path::new("old.msgpack")).unwrap();
        assert_eq!(contents.torn_bytes, 0);
        let expected = Event::Report {
            id: TrialId(0),
            attempt: 0,
            epoch: 1,
            metrics: vec![("val_accuracy".into(), 0.5)],
            decision: Decision::Continue,
            at: None,
        };
        assert_eq!(contents.records, vec![Record { at_ms: 7, event: expected }]);
    }
}
