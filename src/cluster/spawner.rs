//! The spawner: a process forked once, at the very start of a coordinator
//! (before it starts any thread, libtorch's included), that forks each
//! local worker from then on.
//!
//! A `gauntlet` process spends about 0.4 s of CPU in libtorch's static
//! initialisers before `main`, and as long again tearing them down at exit;
//! 16 workers started with `exec` keep 2 cores busy for seconds before the
//! first trial runs. A worker forked from the spawner starts with all of
//! that done (the pages are shared, copy-on-write) and is ready in
//! milliseconds. The spawner itself stays single-threaded: it only reads
//! requests, forks, and reaps its children, so forking it is always sound.
//!
//! Lifetimes: the spawner gets SIGKILL when the coordinator's main thread
//! dies (`PR_SET_PDEATHSIG`), and exits when the coordinator closes its end
//! of the socket; each worker gets SIGHUP when the spawner dies, so a dead
//! coordinator takes its workers with it however it died.
//!
//! Protocol (a Unix socket pair, frames of a u32 length and MessagePack):
//! the coordinator sends [`Request`]s, the spawner answers each with
//! `Spawned` or `Failed` in order, and sends `Exited` for every child it
//! reaps, whenever that happens.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What a forked worker runs: the binary's own entry point, given the
/// arguments a `gauntlet worker` command line would carry; returns the
/// exit code.
pub type Entry = fn(Vec<String>) -> u8;

/// One worker to fork.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// The command line, program name first (`gauntlet worker --join …`).
    pub args: Vec<String>,
    /// Variables to set in the worker's environment.
    pub env: Vec<(String, String)>,
    /// The file that takes its stdout and stderr (appended to).
    pub log: PathBuf,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Reply {
    Spawned { pid: u32 },
    Failed { error: String },
    Exited { pid: u32, status: i32 },
}

/// The coordinator's end: spawns through the spawner and learns how its
/// children ended.
struct Client {
    stream: UnixStream,
    exits: HashMap<u32, i32>,
    pending: Vec<u8>,
}

static SPAWNER: OnceLock<Mutex<Client>> = OnceLock::new();

/// Set once the spawner is found gone (killed): workers are exec'd from then on.
static GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Forks the spawner when this process has no other thread yet; does
/// nothing otherwise (workers are then started with `exec`). Call it first
/// thing in `main`.
pub fn start(entry: Entry) {
    if SPAWNER.get().is_some() || threads() != Some(1) {
        return;
    }
    let Ok((ours, theirs)) = UnixStream::pair() else { return };
    let coordinator = std::process::id() as libc::pid_t;
    // SAFETY: this process has one thread (checked above), so the child
    // inherits no lock held by another thread; it runs `serve`, which only
    // forks, reads, writes and waits, and never returns.
    match unsafe { libc::fork() } {
        0 => {
            drop(ours);
            serve(theirs, coordinator, entry)
        }
        pid if pid > 0 => {
            drop(theirs);
            let _ = SPAWNER.set(Mutex::new(Client { stream: ours, exits: HashMap::new(), pending: Vec::new() }));
        }
        _ => {} // no fork: exec it is
    }
}

/// Whether workers are forked by the spawner (it was started and is alive).
pub fn available() -> bool {
    SPAWNER.get().is_some() && !GONE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Forks one worker; its pid. An error that means the spawner is gone
/// (killed) makes [`available`] false from then on.
pub fn spawn(request: &Request) -> std::io::Result<u32> {
    with_client(|client| {
        client.stream.set_nonblocking(false)?;
        write_frame(&mut client.stream, request)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.next(deadline)? {
                Reply::Spawned { pid } => return Ok(pid),
                Reply::Failed { error } => return Err(std::io::Error::other(format!("the spawner: {error}"))),
                Reply::Exited { pid, status } => {
                    client.exits.insert(pid, status);
                }
            }
        }
    })
}

/// How a forked worker ended (its raw wait status), once the spawner has
/// reaped it; `None` while it runs. Once the spawner is gone (its workers
/// got SIGHUP with it), a worker no longer in /proc, or a zombie there,
/// ended by SIGHUP.
pub fn exited(pid: u32) -> std::io::Result<Option<i32>> {
    match with_client(|client| {
        client.drain()?;
        Ok(client.exits.remove(&pid))
    }) {
        Ok(status) => Ok(status),
        Err(_) if GONE.load(std::sync::atomic::Ordering::Relaxed) => Ok((!alive(pid)).then_some(libc::SIGHUP)),
        Err(e) => Err(e),
    }
}

fn with_client<T>(f: impl FnOnce(&mut Client) -> std::io::Result<T>) -> std::io::Result<T> {
    if GONE.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(std::io::Error::other(GONE_TEXT));
    }
    let client = SPAWNER.get().ok_or_else(|| std::io::Error::other("no spawner"))?;
    let mut client = client.lock().map_err(|_| std::io::Error::other("the spawner's lock is poisoned"))?;
    let result = f(&mut client);
    if let Err(e) = &result {
        if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset)
            || e.to_string() == GONE_TEXT
        {
            tracing::warn!("the worker spawner is gone ({e}); local workers are started with exec from now on");
            GONE.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    result
}

const GONE_TEXT: &str = "the spawner is gone";

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

impl Client {
    /// Reads what the spawner sent without blocking.
    fn drain(&mut self) -> std::io::Result<()> {
        self.stream.set_nonblocking(true)?;
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(std::io::Error::other(GONE_TEXT)),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        while let Some(reply) = self.take_frame()? {
            if let Reply::Exited { pid, status } = reply {
                self.exits.insert(pid, status);
            }
        }
        Ok(())
    }

    /// The next reply, waiting for it until `deadline`.
    fn next(&mut self, deadline: Instant) -> std::io::Result<Reply> {
        loop {
            if let Some(reply) = self.take_frame()? {
                return Ok(reply);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the spawner did not answer"));
            }
            self.stream.set_nonblocking(false)?;
            self.stream.set_read_timeout(Some(left))?;
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(std::io::Error::other(GONE_TEXT)),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn take_frame(&mut self) -> std::io::Result<Option<Reply>> {
        let Some(len) = self.pending.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
            return Ok(None);
        };
        if self.pending.len() < 4 + len {
            return Ok(None);
        }
        let reply = rmp_serde::from_slice(&self.pending[4..4 + len]).map_err(std::io::Error::other)?;
        self.pending.drain(..4 + len);
        Ok(Some(reply))
    }
}

/// The largest frame either side accepts (a request is a command line).
const MAX_FRAME: usize = 1 << 20;

fn write_frame(stream: &mut UnixStream, value: &impl serde::Serialize) -> std::io::Result<()> {
    let body = rmp_serde::to_vec_named(value).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

fn read_frame<T: serde::de::DeserializeOwned>(stream: &mut UnixStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    rmp_serde::from_slice(&body).map_err(std::io::Error::other)
}

/// The threads of this process, when /proc tells.
fn threads() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// The spawner's loop; never returns.
fn serve(mut stream: UnixStream, coordinator: libc::pid_t, entry: Entry) -> ! {
    // SAFETY: plain syscalls on this process. Its own process group, so a
    // Ctrl-C at the terminal reaches the coordinator only (which stops the
    // workers in order); dies with the coordinator's main thread.
    unsafe {
        libc::setpgid(0, 0);
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != coordinator {
            libc::_exit(0);
        }
        set_name(c"gauntlet-spawn");
        quiet_stdio();
    }
    let me = std::process::id() as libc::pid_t;
    loop {
        let mut poll = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 50) };
        if ready > 0 {
            let request: Request = match read_frame(&mut stream) {
                Ok(r) => r,
                // The coordinator closed its end (or sent garbage): done.
                Err(_) => exit_spawner(),
            };
            let reply = match fork_worker(&request, &stream, me, entry) {
                Ok(pid) => Reply::Spawned { pid },
                Err(e) => Reply::Failed { error: e.to_string() },
            };
            if write_frame(&mut stream, &reply).is_err() {
                exit_spawner();
            }
        }
        loop {
            let mut status = 0;
            // SAFETY: reaps any child of this process without blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if write_frame(&mut stream, &Reply::Exited { pid: pid as u32, status }).is_err() {
                exit_spawner();
            }
        }
    }
}

fn exit_spawner() -> ! {
    // SAFETY: ends this process at once; its children get SIGHUP.
    unsafe { libc::_exit(0) }
}

/// Forks one worker: in the child, sets it up and runs `entry`, never returning.
fn fork_worker(request: &Request, stream: &UnixStream, spawner: libc::pid_t, entry: Entry) -> std::io::Result<u32> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&request.log)?;
    // SAFETY: the spawner is single-threaded (see `serve`).
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: plain syscalls on this new process, which has one thread.
            unsafe {
                libc::close(stream.as_raw_fd());
                libc::setpgid(0, 0);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP) != 0 || libc::getppid() != spawner {
                    libc::_exit(3);
                }
                set_name(c"gauntlet-worker");
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                libc::dup2(null, 0);
                libc::dup2(log.as_raw_fd(), 1);
                libc::dup2(log.as_raw_fd(), 2);
                libc::close(null);
            }
            drop(log);
            for (k, v) in &request.env {
                std::env::set_var(k, v);
            }
            // A panic must not unwind back into the spawner's loop in this process.
            let args = request.args.clone();
            let code = std::panic::catch_unwind(move || entry(args)).unwrap_or(101);
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // SAFETY: skips libtorch's static destructors, as `fast_exit` does.
            unsafe { libc::_exit(i32::from(code)) }
        }
        pid if pid > 0 => Ok(pid as u32),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Sets this process's name (`comm`, as `ps` and /proc show it).
fn set_name(name: &std::ffi::CStr) {
    // SAFETY: a plain syscall on this process with a valid C string.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// Points stdin, stdout and stderr at /dev/null (the spawner prints
/// nothing, and must not hold the coordinator's pipes open).
fn quiet_stdio() {
    // SAFETY: plain syscalls on this process's own descriptors.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// Ends this process with `code` after flushing stdout and stderr, without
/// running C++ static destructors (libtorch's take ~0.15 s of CPU per
/// process and do nothing a finished process needs). Rust values must be
/// dropped already: call it last.
pub fn fast_exit(code: u8) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: ends the process; every file this program writes is closed or
    // flushed by then (the caller's drops ran).
    unsafe { libc::_exit(i32::from(code)) }
}
