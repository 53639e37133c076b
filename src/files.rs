//! Opening and reading files a user names (configs, data, modules,
//! secrets): the open never waits for a FIFO's writer, and a whole-file
//! read never reads more than its bound.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for reading without waiting for a writer: a FIFO that
/// nobody writes to reads as empty at once instead of blocking the
/// command for ever; a pipe being written to (`<(generate-config)`) reads
/// as it is written. Regular files are unaffected.
pub fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    // Only the open must not wait; reads block again, for a slow writer.
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open (owned by `file`, alive across both calls); F_GETFL and
    // F_SETFL read and set its status flags and touch no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Reads all of `path` if it holds at most `max` bytes; `None` if it holds
/// more (having read no more than `max + 1`: a device like `/dev/zero` ends).
pub fn read_at_most(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let file = open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// The prefix of a worker's scratch directory in the temporary directory:
/// `gauntlet-worker-{pid}-XXXXXX`.
pub const WORKER_SCRATCH: &str = "gauntlet-worker-";

/// The prefix of a `command` trial's scratch directory: `gauntlet-trial-{pid}-{trial}-XXXXXX`.
pub const TRIAL_SCRATCH: &str = "gauntlet-trial-";

/// A scratch directory's name prefix for this process: `{prefix}{pid}-`.
pub fn scratch_prefix(prefix: &str) -> String {
    format!("{prefix}{}-", std::process::id())
}

/// Removes the scratch directories (`{prefix}{pid}-...`, see
/// [`scratch_prefix`]) that processes which no longer run left in the
/// temporary directory: a worker killed with SIGKILL, or one that ended
/// with `_exit`, cannot remove its own. The name must hold `numbers`
/// numbers after the prefix (the pid first: 1 for a worker's, 2 for a
/// trial's `{pid}-{trial}-`), so that names of another form, an earlier
/// version's included, are left as they are, as are those of running processes.
pub fn remove_stale_scratch(prefix: &str, numbers: usize) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten().take(1_000_000) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        let fields: Vec<&str> = rest.splitn(numbers + 1, '-').collect();
        let numeric = |f: &&str| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit());
        if fields.len() != numbers + 1 || !fields[..numbers].iter().all(numeric) {
            continue;
        }
        let Ok(pid) = fields[0].parse::<i32>() else { continue };
        if pid <= 0 || pid == std::process::id() as i32 || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // SAFETY: signal 0 sends nothing; it asks whether the process exists.
        let gone =
            unsafe { libc::kill(pid, 0) } == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_scratch_of_processes_gone_is_removed_and_no_other() {
        let prefix = format!("gauntlet-files-test-{}-", std::process::id());
        let tmp = std::env::temp_dir();
        // A process that ran and is gone: a child, waited for.
        let gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        let mut gone = gone;
        gone.wait().unwrap();
        let dead = tmp.join(format!("{prefix}{gone_pid}-7-abc"));
        let alive = tmp.join(format!("{prefix}{}-7-abc", std::process::id()));
        let other = tmp.join(format!("{prefix}notapid"));
        // An earlier version's `{trial}-{random}`: one number only, so not this form.
        let earlier = tmp.join(format!("{prefix}{gone_pid}-abc"));
        for d in [&dead, &alive, &other, &earlier] {
            std::fs::create_dir_all(d.join("inner")).unwrap();
        }
        remove_stale_scratch(&prefix, 2);
        assert!(!dead.exists(), "a gone process's scratch is removed");
        assert!(alive.exists() && other.exists() && earlier.exists());
        for d in [&alive, &other, &earlier] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn a_fifo_without_a_writer_reads_empty_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read_at_most(&fifo, 10).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(read_at_most(&file, 5).unwrap(), Some(b"12345".to_vec()));
        assert_eq!(read_at_most(&file, 4).unwrap(), None);
        assert_eq!(read_at_most(Path::new("/dev/zero"), 1 << 10).unwrap(), None);
        assert_eq!(read_at_most(dir.path(), 10).unwrap_err().kind(), io::ErrorKind::IsADirectory);
    }
}
