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

#[cfg(test)]
mod tests {
    use super::*;

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
