//! Local workers: the worker processes a coordinator spawns itself, one per
//! slot, with `std::process::Command` (never a bare fork: libtorch may be
//! running). A thread watches them, tells the pool how each one ended (a
//! crash signal counts against the trial it ran, a kill does not), and
//! starts a new one in its place until the sweep ends.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a worker process ended, as its parent saw it.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Its process id.
    pub pid: u32,
    /// The exit status in words.
    pub text: String,
    /// Whether it crashed (abort, segfault, non-zero exit) rather than being
    /// killed from outside (SIGKILL, SIGTERM: the OOM killer, an operator).
    pub crashed: bool,
}

/// Classifies an exit status.
pub fn classify(pid: u32, status: ExitStatus) -> Exit {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = signal_name(signal);
            let crashed =
                !matches!(signal, libc::SIGKILL | libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGPIPE);
            return Exit { pid, text: format!("worker process {pid} was killed by signal {signal} ({name})"), crashed };
        }
    }
    // 101 is a Rust panic outside a trial; the other codes are the
    // worker's own (2 refused, 3 coordinator lost): not the trial's doing.
    let code = status.code().unwrap_or(-1);
    Exit { pid, text: format!("worker process {pid} exited with code {code}"), crashed: code == 101 }
}

pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "another signal",
    }
}

/// How to start one local worker.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The gauntlet binary.
    pub exe: PathBuf,
    /// `HOST:PORT` of the coordinator.
    pub join: String,
    /// libtorch threads per slot.
    pub threads: u32,
    /// The shared secret, passed in the environment (never on the command line).
    pub secret: String,
    /// Where each worker's log goes (`worker-<n>.log`).
    pub log_dir: PathBuf,
    /// The GPUs of each worker, if any (exported as `CUDA_VISIBLE_DEVICES`).
    pub gpus: Vec<Option<String>>,
    /// Whether the workers serve this process (`--local`: their exits are
    /// reported to its pool) rather than a coordinator elsewhere. Local
    /// workers that exit cleanly (dismissed by the pool) are replaced too,
    /// until [`LocalWorkers::stop_respawning`].
    pub local: bool,
}

/// The local worker processes of one coordinator.
pub struct LocalWorkers {
    stop: Arc<AtomicBool>,
    respawn: Arc<AtomicBool>,
    grace_ms: Arc<AtomicU64>,
    live: Arc<Mutex<Vec<u32>>>,
    watcher: Option<JoinHandle<()>>,
}

struct Slot {
    index: usize,
    /// It exited cleanly (told to): not replaced.
    done: bool,
    child: Option<Child>,
    started: Instant,
    quick_deaths: u32,
    next_start: Instant,
}

impl LocalWorkers {
    /// Starts `count` workers and the thread that watches them; `on_exit`
    /// hears of every worker that ends.
    pub fn start(spec: Spec, count: usize, on_exit: impl Fn(Exit) + Send + 'static) -> std::io::Result<Self> {
        std::fs::create_dir_all(&spec.log_dir)?;
        let mut slots = Vec::with_capacity(count);
        for index in 0..count {
            let child = spawn(&spec, index)?;
            slots.push(Slot {
                index,
                done: false,
                child: Some(child),
                started: Instant::now(),
                quick_deaths: 0,
                next_start: Instant::now(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let grace_ms = Arc::new(AtomicU64::new(2000));
        let live = Arc::new(Mutex::new(slots.iter().filter_map(|s| s.child.as_ref().map(Child::id)).collect()));
        let respawn = Arc::new(AtomicBool::new(true));
        let control =
            Control { stop: stop.clone(), respawn: respawn.clone(), grace: grace_ms.clone(), live: live.clone() };
        let watcher = std::thread::Builder::new()
            .name("gauntlet-local-workers".into())
            .spawn(move || watch(spec, slots, control, on_exit))?;
        Ok(LocalWorkers { stop, respawn, grace_ms, live, watcher: Some(watcher) })
    }

    /// Replaces no more workers (the sweep is ending).
    pub fn stop_respawning(&self) {
        self.respawn.store(false, Ordering::SeqCst);
    }

    /// Asks every worker to leave (SIGTERM): their trials checkpoint first.
    pub fn terminate(&self) {
        for pid in self.live.lock().map(|l| l.clone()).unwrap_or_default() {
            // SAFETY: kill(2) with a pid this process spawned and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Resolves once every worker has exited cleanly (none is left to replace).
    pub async fn all_exited(&self) {
        while !self.live.lock().map(|l| l.is_empty()).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops respawning and waits up to `grace` for the workers to exit (the
    /// pool has told them to); kills what is left.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop_and_wait(grace);
    }

    fn stop_and_wait(&mut self, grace: Duration) {
        self.grace_ms.store(grace.as_millis() as u64, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        self.stop_and_wait(Duration::from_secs(2));
    }
}

fn spawn(spec: &Spec, index: usize) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(spec.log_dir.join(format!("worker-{index}.log")))?;
    let mut cmd = Command::new(&spec.exe);
    cmd.args(["worker", "--join", &spec.join, "--slots", "1"]);
    if spec.threads > 0 {
        cmd.arg("--threads-per-slot").arg(spec.threads.to_string());
    }
    if spec.local {
        cmd.arg("--local");
    }
    cmd.env(super::node::SECRET_ENV, &spec.secret)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C at the terminal reaches the
        // coordinator, which stops the workers in order.
        .process_group(0);
    if let Some(gpus) = spec.gpus.get(index).cloned().flatten() {
        cmd.env("CUDA_VISIBLE_DEVICES", gpus);
    }
    let child = cmd.spawn()?;
    tracing::info!(worker = index, pid = child.id(), "local worker started");
    Ok(child)
}

/// What the watcher thread shares with its owner.
struct Control {
    stop: Arc<AtomicBool>,
    respawn: Arc<AtomicBool>,
    grace: Arc<AtomicU64>,
    live: Arc<Mutex<Vec<u32>>>,
}

fn watch(spec: Spec, mut slots: Vec<Slot>, control: Control, on_exit: impl Fn(Exit)) {
    let publish = |slots: &[Slot]| {
        if let Ok(mut l) = control.live.lock() {
            *l = slots.iter().filter_map(|s| s.child.as_ref().map(Child::id)).collect();
        }
    };
    while !control.stop.load(Ordering::SeqCst) {
        for slot in &mut slots {
            reap(slot, spec.local, &on_exit);
            let respawn = control.respawn.load(Ordering::SeqCst);
            if respawn && slot.child.is_none() && !slot.done && Instant::now() >= slot.next_start {
                match spawn(&spec, slot.index) {
                    Ok(child) => {
                        slot.child = Some(child);
                        slot.started = Instant::now();
                    }
                    Err(e) => {
                        tracing::error!(worker = slot.index, "cannot start a local worker: {e}");
                        slot.next_start = Instant::now() + Duration::from_secs(5);
                    }
                }
            }
        }
        publish(&slots);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The sweep is over: the pool told the workers to exit; wait, then kill.
    let deadline = Instant::now() + Duration::from_millis(control.grace.load(Ordering::SeqCst));
    while slots.iter().any(|s| s.child.is_some()) && Instant::now() < deadline {
        for slot in &mut slots {
            if let Some(child) = &mut slot.child {
                if let Ok(Some(_)) = child.try_wait() {
                    slot.child = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for slot in &mut slots {
        if let Some(mut child) = slot.child.take() {
            tracing::warn!(worker = slot.index, pid = child.id(), "local worker did not exit; killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    publish(&slots);
}

/// Notices a dead worker and schedules its replacement, backing off when
/// workers die right after starting (a broken install must not spin).
fn reap(slot: &mut Slot, replace_clean_exits: bool, on_exit: &impl Fn(Exit)) {
    let Some(child) = &mut slot.child else { return };
    let status = match child.try_wait() {
        Ok(Some(status)) => status,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(worker = slot.index, "cannot watch a local worker: {e}");
            return;
        }
    };
    let exit = classify(child.id(), status);
    slot.child = None;
    if status.success() {
        tracing::info!(worker = slot.index, "{}", exit.text);
        slot.done = !replace_clean_exits;
        slot.next_start = Instant::now();
        return on_exit(exit);
    }
    tracing::warn!(worker = slot.index, "{}", exit.text);
    if slot.started.elapsed() < Duration::from_secs(5) {
        slot.quick_deaths += 1;
    } else {
        slot.quick_deaths = 0;
    }
    let delay = Duration::from_millis(100u64 << slot.quick_deaths.min(7));
    slot.next_start = Instant::now() + delay;
    on_exit(exit);
}
