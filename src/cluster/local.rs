//! Local workers: the worker processes a coordinator spawns itself, one per
//! slot: forked by the [`spawner`](super::spawner) when the binary started
//! one, else with `std::process::Command` (never a bare fork of the
//! coordinator: libtorch may be running). A thread starts and watches them,
//! tells the pool how each one ended (a crash signal counts against the
//! trial it ran, a kill does not), and starts a new one in its place until
//! the sweep ends.
//!
//! How many a machine holds is [`Capacity`]'s rule. Each worker gets
//! SIGHUP from the kernel when that thread (so, the coordinator) dies,
//! however it dies (`PR_SET_PDEATHSIG`): it then kills its trials' programs
//! and exits at once, without waiting for a missed heartbeat.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use super::spawner;
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
    /// Its exit code, when it exited rather than was killed.
    pub code: Option<i32>,
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
            let text = format!("worker process {pid} was killed by signal {signal} ({name})");
            return Exit { pid, text, crashed, code: None };
        }
    }
    // 101 is a Rust panic outside a trial; the other codes are the
    // worker's own (2 refused, 3 coordinator lost): not the trial's doing.
    let code = status.code().unwrap_or(-1);
    Exit { pid, text: format!("worker process {pid} exited with code {code}"), crashed: code == 101, code: Some(code) }
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

/// What one local worker costs in memory besides its data set: libtorch
/// loaded and a small model training. An idle worker measures about 400 MiB
/// resident, half of it library pages shared with every other worker, and
/// 200 MiB of its own (see README, "Resource bounds").
pub const WORKER_BASE_BYTES: u64 = 256 << 20;

/// Local workers per core at most: more only queue for the CPU (trials
/// that wait on I/O or sleep can use a few per core; training cannot).
pub const WORKERS_PER_CORE: usize = 8;

/// How many local worker processes this machine holds: at most
/// [`WORKERS_PER_CORE`] per core, and no more than the memory available
/// now (`MemAvailable`, or what the cgroup still allows) divided by what
/// one worker holds ([`WORKER_BASE_BYTES`] plus twice its data set: it
/// holds the data twice for a moment while it splits it). Never fewer
/// than one.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// Cores this process may use.
    pub cores: usize,
    /// Memory available, in bytes, when it could be read.
    pub available: Option<u64>,
    /// What one worker holds, in bytes.
    pub per_worker: u64,
    /// Local workers at most.
    pub limit: usize,
}

impl Capacity {
    /// The capacity of this machine for workers that each hold `data_bytes` of data.
    pub fn of_machine(data_bytes: u64) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::rule(cores, available_memory(), data_bytes)
    }

    /// The rule itself.
    pub fn rule(cores: usize, available: Option<u64>, data_bytes: u64) -> Self {
        let per_worker = WORKER_BASE_BYTES.saturating_add(data_bytes.saturating_mul(2));
        let by_cores = cores.max(1) * WORKERS_PER_CORE;
        let by_memory = available.map_or(usize::MAX, |a| usize::try_from(a / per_worker).unwrap_or(usize::MAX));
        Capacity { cores, available, per_worker, limit: by_cores.min(by_memory).max(1) }
    }

    /// The rule in words, with this machine's numbers.
    pub fn explain(&self) -> String {
        let mib = |b: u64| b >> 20;
        let memory = match self.available {
            Some(a) => format!("{} MiB available / {} MiB a worker", mib(a), mib(self.per_worker)),
            None => "memory unknown".into(),
        };
        format!("{WORKERS_PER_CORE} a core x {} cores, and {memory}", self.cores)
    }
}

/// Memory this process could still use: `MemAvailable`, or less when a
/// cgroup (v2) limits it.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let mut available = kib * 1024;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok();
    if let Some(path) = cgroup.as_deref().and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::"))) {
        let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok()?.trim().parse::<u64>().ok();
        if let (Some(max), Some(current)) = (read("memory.max"), read("memory.current")) {
            available = available.min(max.saturating_sub(current));
        }
    }
    Some(available)
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

/// One worker process: a child of this process, or of the spawner.
enum Process {
    Exec(Child),
    Forked(u32),
}

impl Process {
    fn id(&self) -> u32 {
        match self {
            Process::Exec(c) => c.id(),
            Process::Forked(pid) => *pid,
        }
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Process::Exec(c) => c.try_wait(),
            Process::Forked(pid) => Ok(spawner::exited(*pid)?.map(ExitStatus::from_raw)),
        }
    }

    /// SIGKILL, then waits (a moment, for a forked one) to reap it.
    fn kill(&mut self) {
        match self {
            Process::Exec(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Process::Forked(pid) => {
                // SAFETY: kill(2) on a worker the spawner has not reported reaped.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
                let deadline = Instant::now() + Duration::from_secs(2);
                while !matches!(self.try_wait(), Ok(Some(_)) | Err(_)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

struct Slot {
    index: usize,
    /// It exited cleanly (told to): not replaced.
    done: bool,
    child: Option<Process>,
    started: Instant,
    quick_deaths: u32,
    next_start: Instant,
}

impl LocalWorkers {
    /// Starts `count` workers and the thread that watches them; `on_exit`
    /// hears of every worker that ends. Returns once the first has started
    /// (an error if it cannot); the others follow on the watcher thread, so
    /// that trials start on the first workers while the rest come up.
    ///
    /// The watcher thread spawns them all: a worker's parent-death signal
    /// follows the thread that spawned it, and this one lives as long as
    /// the workers are wanted.
    pub fn start(spec: Spec, count: usize, on_exit: impl Fn(Exit) + Send + 'static) -> std::io::Result<Self> {
        std::fs::create_dir_all(&spec.log_dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let grace_ms = Arc::new(AtomicU64::new(2000));
        let live = Arc::new(Mutex::new(Vec::new()));
        let respawn = Arc::new(AtomicBool::new(true));
        let control =
            Control { stop: stop.clone(), respawn: respawn.clone(), grace: grace_ms.clone(), live: live.clone() };
        let (started_tx, started) = std::sync::mpsc::channel();
        let watcher = std::thread::Builder::new().name("gauntlet-local-workers".into()).spawn(move || {
            let mut slots = Vec::with_capacity(count);
            let mut started_tx = Some(started_tx);
            for index in 0..count {
                // A sweep that ended while they were starting wants no more.
                if index > 0 && (control.stop.load(Ordering::SeqCst) || !control.respawn.load(Ordering::SeqCst)) {
                    break;
                }
                let now = Instant::now();
                let mut slot = Slot { index, done: false, child: None, started: now, quick_deaths: 0, next_start: now };
                match spawn(&spec, index) {
                    Ok(child) => slot.child = Some(child),
                    // Not even the first starts: the binary or the machine is broken; say so.
                    Err(e) if slots.is_empty() => {
                        if let Some(tx) = started_tx.take() {
                            let _ = tx.send(Err(e));
                        }
                        return;
                    }
                    // The watcher tries again, as for a worker that died.
                    Err(e) => {
                        tracing::error!(worker = index, "cannot start a local worker: {e}");
                        slot.next_start = now + Duration::from_secs(5);
                    }
                }
                slots.push(slot);
                publish(&control.live, &slots);
                // The first is up: trials are placed on workers as they join,
                // while the rest start.
                if let Some(tx) = started_tx.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            watch(spec, slots, control, on_exit)
        })?;
        match started.recv() {
            Ok(Ok(())) => Ok(LocalWorkers { stop, respawn, grace_ms, live, watcher: Some(watcher) }),
            Ok(Err(e)) => {
                let _ = watcher.join();
                Err(e)
            }
            Err(_) => {
                let _ = watcher.join();
                Err(std::io::Error::other("the thread starting local workers died"))
            }
        }
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

fn spawn(spec: &Spec, index: usize) -> std::io::Result<Process> {
    use std::os::unix::process::CommandExt;
    let log_file = spec.log_dir.join(format!("worker-{index}.log"));
    let mut args: Vec<String> = ["worker", "--join", &spec.join, "--slots", "1"].map(str::to_owned).to_vec();
    if spec.threads > 0 {
        args.extend(["--threads-per-slot".to_owned(), spec.threads.to_string()]);
    }
    if spec.local {
        args.push("--local".into());
    }
    let mut env = vec![(super::node::SECRET_ENV.to_owned(), spec.secret.clone())];
    if let Some(gpus) = spec.gpus.get(index).cloned().flatten() {
        env.push(("CUDA_VISIBLE_DEVICES".into(), gpus));
    }
    if spawner::available() {
        let mut argv = vec![spec.exe.to_string_lossy().into_owned()];
        argv.extend(args.iter().cloned());
        match spawner::spawn(&spawner::Request { args: argv, env: env.clone(), log: log_file.clone() }) {
            Ok(pid) => {
                tracing::info!(worker = index, pid, "local worker forked");
                return Ok(Process::Forked(pid));
            }
            // Killed, say: exec instead, from now on.
            Err(_) if !spawner::available() => {}
            Err(e) => return Err(e),
        }
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_file)?;
    let mut cmd = Command::new(&spec.exe);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C at the terminal reaches the
        // coordinator, which stops the workers in order.
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe, and the closure
    // allocates nothing. The worker gets SIGHUP when this thread dies; a
    // parent that died before prctl took effect is seen by getppid.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP) != 0 || libc::getppid() != parent {
                return Err(std::io::Error::other("the coordinator is gone"));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    tracing::info!(worker = index, pid = child.id(), "local worker started");
    Ok(Process::Exec(child))
}

/// What the watcher thread shares with its owner.
struct Control {
    stop: Arc<AtomicBool>,
    respawn: Arc<AtomicBool>,
    grace: Arc<AtomicU64>,
    live: Arc<Mutex<Vec<u32>>>,
}

/// Makes the workers' pids known to [`LocalWorkers::terminate`] and [`LocalWorkers::all_exited`].
fn publish(live: &Mutex<Vec<u32>>, slots: &[Slot]) {
    if let Ok(mut l) = live.lock() {
        *l = slots.iter().filter_map(|s| s.child.as_ref().map(Process::id)).collect();
    }
}

fn watch(spec: Spec, mut slots: Vec<Slot>, control: Control, on_exit: impl Fn(Exit)) {
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
        publish(&control.live, &slots);
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
        // Finer than while they run: the command's exit waits on this.
        std::thread::sleep(Duration::from_millis(5));
    }
    for slot in &mut slots {
        if let Some(mut child) = slot.child.take() {
            tracing::warn!(worker = slot.index, pid = child.id(), "local worker did not exit; killing it");
            child.kill();
        }
    }
    publish(&control.live, &slots);
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
    // A remote slot refused (2) or whose coordinator is gone for good (3)
    // would only be refused, or lost, again.
    if !replace_clean_exits && matches!(exit.code, Some(2 | 3)) {
        tracing::warn!(worker = slot.index, "{}", exit.text);
        slot.done = true;
        return on_exit(exit);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_smaller_of_cores_and_memory() {
        let gib = 1u64 << 30;
        // 2 cores, 24 GiB: the cores bound.
        assert_eq!(Capacity::rule(2, Some(24 * gib), 0).limit, 2 * WORKERS_PER_CORE);
        // 2 cores, 2 GiB, 200 MiB of data a worker: the memory bound.
        let c = Capacity::rule(2, Some(2 * gib), 100 << 20);
        assert_eq!(c.limit, (2 * gib / (WORKER_BASE_BYTES + (200 << 20))) as usize);
        assert!(c.explain().contains("2048 MiB available / 456 MiB a worker"), "{}", c.explain());
        // Never none, and no memory figure means the cores decide.
        assert_eq!(Capacity::rule(4, Some(1 << 20), 0).limit, 1);
        assert_eq!(Capacity::rule(1, None, 0).limit, WORKERS_PER_CORE);
        assert!(available_memory().is_some_and(|a| a > 0), "this machine's memory is readable");
    }
}
