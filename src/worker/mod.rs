//! The worker process: `gauntlet worker --join HOST:PORT --slots N`.
//!
//! ```text
//! WorkerActor          joins the coordinator's cluster, loads each experiment
//! │                    (data, model description) once for all its trials,
//! │                    takes attempts from the pool, relays decisions
//! └── slot threads ×N  the worker's, shared by every experiment it serves:
//!                      train, one attempt each; reports go to the pool
//! ```
//! A worker serves one coordinator, and as many of its experiments as it
//! hosts; it drops an experiment's data when the experiment ends. It exits when the sweep ends, when the
//! coordinator is gone (connection lost, or silent for [`wire::LEASE`]),
//! or, after its running trials checkpointed, when it is told to leave
//! (SIGTERM, SIGINT).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::cluster::node::{self, NodeError, NodeEvent};
use crate::cluster::transfer::{PartReader, PartWriter, WINDOW_PARTS};
use crate::cluster::wire::{self, Experiment, ExperimentKey, FromWorker, Job, ToWorker};
use crate::config::Config;
use crate::schedule::Decision;
use crate::supervision::pool::PoolMsg;
use crate::supervision::slots::SlotPool;
use crate::trainable::{ContextSettings, ReportSink, Trainable, TrialContext};
use crate::trial::{AttemptEnd, Report, TrialId};

/// How to run a worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `HOST:PORT` of the coordinator.
    pub join: String,
    /// Slots offered.
    pub slots: u32,
    /// libtorch threads per slot (default: the experiment's `threads_per_trial`).
    pub threads_per_slot: Option<u32>,
    /// The shared secret.
    pub secret: String,
    /// Whether the coordinator spawned this worker.
    pub local: bool,
    /// How long to keep trying to reach the coordinator.
    pub connect_timeout: Duration,
}

/// Why a worker exited.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerExit {
    /// The sweep ended (or the coordinator let this worker go).
    Shutdown(String),
    /// It left on a signal, after its trials checkpointed.
    Left,
    /// The coordinator refused it.
    Refused(String),
    /// The coordinator went away.
    CoordinatorLost(String),
    /// SIGHUP: the coordinator that spawned it died, or (a worker joined by
    /// hand) its terminal closed. It ends at once, without rejoining.
    HungUp(String),
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The node could not start or the address is bad.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The coordinator could not be reached.
    #[error("cannot reach the coordinator at {address}: {message}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        message: String,
    },
    /// The coordinator refused the handshake.
    #[error("{0}")]
    Refused(String),
    /// An actor or thread could not start.
    #[error("cannot start the worker: {0}")]
    Start(String),
}

/// What the worker actor hears.
pub(crate) enum WorkerMsg {
    /// From the coordinator, over the wire.
    Wire(ToWorker),
    /// A frame that did not decode.
    Garbled(String),
    /// An experiment's trainable is built (or not).
    Loaded(ExperimentKey, Result<Box<Loaded>, String>),
    /// A slot thread finished an attempt.
    SlotDone {
        /// The placement.
        lease: u64,
        /// How it ended.
        end: AttemptEnd,
    },
    /// Leave after the running trials checkpointed.
    Leave,
    /// The coordinator never confirmed the leave: go anyway.
    LeaveTimeout,
}

wire::wire_message!(WorkerMsg, ToWorker, Wire, Garbled);

/// An experiment, ready to train on this worker.
pub(crate) struct Loaded {
    trainable: Arc<dyn Trainable>,
    context: Arc<ContextSettings>,
    store: CheckpointStore,
}

struct Running {
    id: TrialId,
    cancel: Arc<AtomicBool>,
    decisions: Sender<Option<Decision>>,
    /// The coordinator's acknowledgements of checkpoint parts: (epoch, parts).
    acks: Sender<(u32, u64)>,
}

struct WorkerActor;

struct Args {
    name: String,
    pool: ActorRef<PoolMsg>,
    options: WorkerOptions,
    heard: Arc<AtomicU64>,
    done: oneshot::Sender<WorkerExit>,
}

struct State {
    name: String,
    pool: ActorRef<PoolMsg>,
    options: WorkerOptions,
    heard: Arc<AtomicU64>,
    started: Instant,
    slots: SlotPool,
    /// The experiments loaded here; `None` while one loads.
    loaded: HashMap<ExperimentKey, Option<Box<Loaded>>>,
    running: HashMap<u64, Running>,
    /// The checkpoints leases will resume from, arriving on disk.
    incoming: HashMap<u64, PartWriter>,
    leaving: bool,
    scratch: tempfile::TempDir,
    done: Option<oneshot::Sender<WorkerExit>>,
}

impl State {
    fn send(&self, msg: FromWorker) {
        let _ = self.pool.cast(PoolMsg::Wire(msg));
    }

    /// Drops what arrived of the checkpoint a lease would have resumed from.
    fn discard_incoming(&mut self, lease: u64) {
        if let Some(writer) = self.incoming.remove(&lease) {
            tokio::task::spawn_blocking(move || writer.discard());
        }
    }

    fn finish(&mut self, myself: &ActorRef<WorkerMsg>, exit: WorkerExit) {
        for r in self.running.values() {
            r.cancel.store(true, Ordering::Relaxed);
        }
        self.running.clear(); // blocked reports return: the sweep is gone
        if let Some(done) = self.done.take() {
            let _ = done.send(exit);
        }
        myself.stop(None);
    }
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, myself: ActorRef<WorkerMsg>, a: Args) -> Result<State, ActorProcessingErr> {
        ractor::pg::join(wire::WORKER_GROUP.into(), vec![myself.get_cell()]);
        let slots = SlotPool::start(a.options.slots, Default::default())?;
        Ok(State {
            name: a.name,
            pool: a.pool,
            options: a.options,
            heard: a.heard,
            started: Instant::now(),
            slots,
            loaded: HashMap::new(),
            running: HashMap::new(),
            incoming: HashMap::new(),
            leaving: false,
            scratch: tempfile::Builder::new()
                .prefix(&crate::files::scratch_prefix(crate::files::WORKER_SCRATCH))
                .tempdir()?,
            done: Some(a.done),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Wire(w) => {
                state.heard.store(state.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                match w {
                    ToWorker::CheckpointPart { lease, part } => self.receive_part(lease, part, state).await?,
                    w => self.on_wire(&myself, w, state),
                }
            }
            WorkerMsg::Garbled(e) => tracing::error!("the coordinator sent a message this worker cannot read: {e}"),
            WorkerMsg::Loaded(experiment, loaded) => {
                let Some(slot) = state.loaded.get_mut(&experiment) else {
                    return Ok(()); // unloaded while it loaded
                };
                let name = state.name.clone();
                match loaded {
                    Ok(loaded) => {
                        tracing::info!(%experiment, slots = state.options.slots, "experiment loaded; ready for its trials");
                        *slot = Some(loaded);
                        state.send(FromWorker::Loaded { name, experiment });
                    }
                    Err(error) => {
                        tracing::error!(%experiment, "cannot serve the experiment: {error}");
                        state.loaded.remove(&experiment);
                        state.send(FromWorker::Unfit { name, experiment, error });
                    }
                }
            }
            WorkerMsg::SlotDone { lease, end } => {
                let Some(run) = state.running.remove(&lease) else { return Ok(()) };
                let end = match end {
                    AttemptEnd::Cancelled if state.leaving => {
                        AttemptEnd::Preempted(format!("worker {} left", state.name))
                    }
                    end => end,
                };
                tracing::info!(trial = %run.id, ?end, "attempt ended");
                state.send(FromWorker::Finished { lease, end });
            }
            WorkerMsg::Leave => {
                if !state.leaving {
                    tracing::info!(running = state.running.len(), "leaving: running trials stop at their next report");
                    state.leaving = true;
                    state.send(FromWorker::Leaving { name: state.name.clone() });
                    for r in state.running.values() {
                        r.cancel.store(true, Ordering::Relaxed);
                    }
                    // The pool lets this worker go once every attempt's end
                    // reached it (its Shutdown comes after them on the wire).
                    myself.send_after(Duration::from_secs(60), || WorkerMsg::LeaveTimeout);
                }
            }
            WorkerMsg::LeaveTimeout => state.finish(&myself, WorkerExit::Left),
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<WorkerMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        if let Some(done) = state.done.take() {
            let _ = done.send(WorkerExit::CoordinatorLost("the worker actor stopped".into()));
        }
        Ok(())
    }
}

impl WorkerActor {
    fn on_wire(&self, myself: &ActorRef<WorkerMsg>, msg: ToWorker, state: &mut State) {
        match msg {
            ToWorker::Heartbeat => {}
            ToWorker::Welcome => {
                tracing::info!("welcomed");
                state.send(FromWorker::Ready { name: state.name.clone() });
            }
            ToWorker::Load { experiment, spec } => {
                if state.loaded.contains_key(&experiment) {
                    return;
                }
                tracing::info!(%experiment, name = %spec.name, "loading an experiment");
                state.loaded.insert(experiment, None);
                let me = myself.clone();
                let threads = state.options.threads_per_slot;
                let store = CheckpointStore::new(state.scratch.path().join(experiment.to_string()), 1);
                tokio::task::spawn_blocking(move || {
                    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(*spec, threads, store)))
                        .unwrap_or_else(|p| {
                            Err(format!("loading the experiment: {}", crate::trial::panic_text(p.as_ref())))
                        });
                    let _ = me.cast(WorkerMsg::Loaded(experiment, loaded.map(Box::new)));
                });
            }
            ToWorker::Unload { experiment } => {
                // Its running attempts hold what they need until they return.
                if let Some(Some(loaded)) = state.loaded.remove(&experiment) {
                    tracing::info!(%experiment, "experiment ended; dropping its data");
                    let dir = loaded.store.root().to_owned();
                    drop(loaded);
                    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir));
                }
            }
            ToWorker::Refused(why) => state.finish(myself, WorkerExit::Refused(why)),
            ToWorker::Shutdown(_) if state.leaving => state.finish(myself, WorkerExit::Left),
            ToWorker::Shutdown(why) => state.finish(myself, WorkerExit::Shutdown(why)),
            ToWorker::Dropped(_) if state.leaving => state.finish(myself, WorkerExit::Left),
            ToWorker::Dropped(why) => state.finish(myself, WorkerExit::CoordinatorLost(why)),
            ToWorker::CheckpointPart { .. } => unreachable!("written in `handle`"),
            ToWorker::CheckpointAck { lease, epoch, parts } => {
                if let Some(r) = state.running.get(&lease) {
                    let _ = r.acks.send((epoch, parts));
                }
            }
            ToWorker::Start(job) if state.leaving => {
                state.discard_incoming(job.lease);
                let end = AttemptEnd::Preempted(format!("worker {} is leaving", state.name));
                state.send(FromWorker::Finished { lease: job.lease, end });
            }
            ToWorker::Start(job) => {
                let lease = job.lease;
                if let Err(e) = self.start(myself, job, state) {
                    state.discard_incoming(lease);
                    state.send(FromWorker::Finished { lease, end: AttemptEnd::Crashed(e) });
                }
            }
            ToWorker::Decision { lease, decision } => {
                if let Some(r) = state.running.get(&lease) {
                    let _ = r.decisions.send(decision);
                }
            }
            ToWorker::Cancel { lease } => {
                if let Some(r) = state.running.get(&lease) {
                    r.cancel.store(true, Ordering::Relaxed);
                }
                state.discard_incoming(lease); // cancelled before it started
            }
        }
    }

    /// Writes a part of the checkpoint a lease will resume from (off the
    /// tokio workers, awaited: in order, and at the disk's pace), then
    /// acknowledges it so the coordinator sends more.
    async fn receive_part(&self, lease: u64, part: wire::Part, state: &mut State) -> Result<(), ActorProcessingErr> {
        let mut writer = state.incoming.remove(&lease).unwrap_or_else(|| {
            // Bounded by the coordinator, which checked the checkpoint when it stored it.
            PartWriter::new(state.scratch.path().join("incoming").join(lease.to_string()), u64::MAX)
        });
        let writer = tokio::task::spawn_blocking(move || {
            writer.write(&part);
            writer
        })
        .await?;
        state.send(FromWorker::CheckpointAck { lease, parts: writer.parts() });
        state.incoming.insert(lease, writer);
        Ok(())
    }

    fn start(&self, myself: &ActorRef<WorkerMsg>, job: Job, state: &mut State) -> Result<(), String> {
        let loaded = state
            .loaded
            .get(&job.experiment)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("this worker has not loaded experiment {}", job.experiment))?;
        let incoming = state.incoming.remove(&job.lease);
        let cancel = Arc::new(AtomicBool::new(false));
        let (decisions, replies) = crossbeam_channel::unbounded();
        let (acks, acked) = crossbeam_channel::unbounded();
        let sink = RemoteSink {
            pool: state.pool.clone(),
            lease: job.lease,
            decisions: replies,
            acks: acked,
            cancel: cancel.clone(),
        };
        let (trainable, context, store) = (loaded.trainable.clone(), loaded.context.clone(), loaded.store.clone());
        let (me, lease, id, flag) = (myself.clone(), job.lease, job.id, cancel.clone());
        let scratch = store.trial_dir(id);
        // On the slot thread: storing the checkpoint it resumes from (maybe
        // large) must not hold up the actor that relays every decision.
        state.slots.queue().submit(Box::new(move || {
            crate::supervision::slots::init_thread(trainable.as_ref(), context.threads);
            let end = match prepare(job, incoming, &store) {
                Err(e) => AttemptEnd::Crashed(e),
                Ok((job, resume)) => {
                    tracing::info!(trial = %id, attempt = job.attempt, from = ?resume.as_ref().map(|c| c.epoch), "attempt starts");
                    let mut ctx = TrialContext::new(
                        job.id,
                        job.attempt,
                        job.restarts,
                        job.seed,
                        job.params,
                        resume,
                        context,
                        Box::new(sink),
                        store,
                        flag,
                    );
                    crate::trainable::attempt_end(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        trainable.train(&mut ctx)
                    })))
                }
            };
            // Its checkpoints are at the coordinator; the next attempt brings its own.
            let _ = std::fs::remove_dir_all(&scratch);
            let _ = me.cast(WorkerMsg::SlotDone { lease, end });
        }))?;
        state.running.insert(lease, Running { id, cancel, decisions, acks });
        Ok(())
    }
}

/// Puts the checkpoint an attempt resumes from in place.
fn prepare(
    mut job: Job,
    incoming: Option<PartWriter>,
    store: &CheckpointStore,
) -> Result<(Job, Option<Checkpoint>), String> {
    let Some(meta) = job.resume.take() else {
        if let Some(writer) = incoming {
            writer.discard();
        }
        return Ok((job, None));
    };
    let saved = store
        .save(job.id, &meta, |dir| incoming.map_or(Ok(()), |w| w.finish_into(dir)))
        .map_err(|e| format!("cannot store the checkpoint of epoch {} it resumes from: {e}", meta.epoch))?;
    Ok((job, Some(saved)))
}

/// Builds an experiment's trainable (loading its data).
fn load(e: Experiment, threads: Option<u32>, store: CheckpointStore) -> Result<Loaded, String> {
    let config = Config::parse(&e.config_text, e.format, &e.config_path)
        .map_err(|err| err.to_string())?
        .with_paths_from(&e.config_path);
    config.check_files(&e.config_path).map_err(|err| err.to_string())?;
    let trainable = config.model.build(&config).map_err(|err| err.to_string())?;
    let mut context = e.context;
    if let Some(t) = threads {
        context.threads = t.max(1);
    }
    Ok(Loaded { trainable, context: Arc::new(context), store })
}

/// A slot thread's line to the coordinator: reports go to the pool and the
/// thread waits for the decision; checkpoints follow in parts, at most
/// [`WINDOW_PARTS`] ahead of what the coordinator has on disk.
struct RemoteSink {
    pool: ActorRef<PoolMsg>,
    lease: u64,
    decisions: Receiver<Option<Decision>>,
    acks: Receiver<(u32, u64)>,
    cancel: Arc<AtomicBool>,
}

/// How long a cancelled attempt's checkpoint upload waits for the
/// coordinator to take a part before it gives up.
const UPLOAD_STALL: Duration = Duration::from_secs(10);

impl RemoteSink {
    /// Streams a checkpoint's files to the coordinator, then says it is whole.
    fn upload(&mut self, checkpoint: &Checkpoint) -> Result<(), String> {
        let epoch = checkpoint.epoch;
        let lost = || "the coordinator is gone".to_owned();
        while self.acks.try_recv().is_ok() {} // of an upload that was cut short
        let mut reader = PartReader::open(&checkpoint.dir).map_err(|e| e.to_string())?;
        let (mut sent, mut acked, mut progress) = (0u64, 0u64, Instant::now());
        while let Some(part) = reader.next_part().map_err(|e| e.to_string())? {
            while sent >= acked + WINDOW_PARTS {
                match self.acks.recv_timeout(Duration::from_millis(100)) {
                    Ok((e, parts)) if e == epoch && parts > acked => (acked, progress) = (parts, Instant::now()),
                    Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(lost()),
                }
                // A cancelled attempt still checkpoints (a pause); it stops
                // waiting only when the coordinator's side of it is gone
                // (its trial actor let go of the lease, so no part is taken).
                if self.cancel.load(Ordering::Relaxed) && progress.elapsed() > UPLOAD_STALL {
                    return Err(format!("cancelled, and no part was taken for {UPLOAD_STALL:?}"));
                }
            }
            let part = FromWorker::CheckpointPart { lease: self.lease, epoch, part };
            self.pool.cast(PoolMsg::Wire(part)).map_err(|_| lost())?;
            sent += 1;
        }
        let done = FromWorker::CheckpointDone { lease: self.lease, parts: sent, meta: checkpoint.clone() };
        self.pool.cast(PoolMsg::Wire(done)).map_err(|_| lost())
    }
}

impl ReportSink for RemoteSink {
    fn report(&mut self, report: Report) -> Option<Decision> {
        self.pool.cast(PoolMsg::Wire(FromWorker::Report { lease: self.lease, report })).ok()?;
        crate::supervision::handover::recv(&self.decisions).ok().flatten()
    }

    fn output(&mut self, _trial: TrialId, text: &str) {
        let _ = self.pool.cast(PoolMsg::Wire(FromWorker::Output { lease: self.lease, text: text.to_owned() }));
    }

    fn checkpoint_written(&mut self, trial: TrialId, checkpoint: &Checkpoint) {
        if let Err(e) = self.upload(checkpoint) {
            tracing::error!(%trial, "checkpoint {} not sent: {e}", checkpoint.dir.display());
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs a worker until it exits; builds its own tokio runtime.
///
/// SIGHUP, from the kernel when the coordinator that spawned this worker
/// dies (or a closed terminal), ends it at once, whatever it is doing
/// (connecting, loading data, training). Whenever it loses its
/// coordinator, the programs of its `command` trials are killed with it.
pub fn run(options: WorkerOptions) -> Result<WorkerExit, WorkerError> {
    // What workers killed before (SIGKILL, `_exit`) left in the temporary directory.
    crate::files::remove_stale_scratch(crate::files::WORKER_SCRATCH, 1);
    crate::files::remove_stale_scratch(crate::files::TRIAL_SCRATCH, 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| WorkerError::Start(e.to_string()))?;
    let local = options.local;
    let exit = runtime.block_on(async {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        tokio::select! {
            exit = serve(options) => exit,
            _ = hangup.recv() => Ok(WorkerExit::HungUp(if local {
                "its coordinator died (SIGHUP)".into()
            } else {
                "SIGHUP: its terminal closed, or it was sent one".into()
            })),
        }
    });
    if let Ok(WorkerExit::CoordinatorLost(_) | WorkerExit::HungUp(_)) = &exit {
        crate::trainable::command::kill_programs();
    }
    // Nothing left to wait for: what the coordinator needed was awaited in
    // `serve`. Data still loading on a blocking thread is not waited for
    // (`shutdown_timeout` waited its whole 100 ms for a parked blocking
    // thread at every exit: 16 workers ending took 0.1 s).
    runtime.shutdown_background();
    exit
}

async fn serve(options: WorkerOptions) -> Result<WorkerExit, WorkerError> {
    let address = node::resolve(&options.join)?;
    let host = host_name();
    let pid = std::process::id();
    let name = format!("worker-{host}-{pid}-{:04x}", rand::random::<u16>());
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let listen = std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0);
    let node = node::start(&name, listen, &options.secret, events_tx).await?;

    // The worker actor first, so that the coordinator learns of it with the
    // connection's first process-group exchange.
    let heard = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done) = oneshot::channel();
    // A closed handshake is retried twice, a second apart: a coordinator busy with
    // 64 handshakes closes one more at once, and that is no reason to give up.
    let mut tries = 0;
    let pool = loop {
        match connect(&node, &options, address, &mut events).await {
            Err(WorkerError::Refused(_)) if tries < 2 => {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => break other?,
        }
    };
    let args =
        Args { name: name.clone(), pool: pool.clone(), options: options.clone(), heard: heard.clone(), done: done_tx };
    let (worker, _) =
        Actor::spawn(Some(name.clone()), WorkerActor, args).await.map_err(|e| WorkerError::Start(e.to_string()))?;
    let _ = pool.cast(PoolMsg::Wire(FromWorker::Hello {
        name: name.clone(),
        slots: options.slots.max(1),
        host,
        pid,
        local: options.local,
        protocol: wire::PROTOCOL,
        version: env!("CARGO_PKG_VERSION").into(),
    }));
    tracing::info!(coordinator = %address, slots = options.slots, "joined as {name}");

    let started = Instant::now();
    let mut beat = tokio::time::interval(wire::HEARTBEAT);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| WorkerError::Start(e.to_string()))?;
    let exit = loop {
        tokio::select! {
            exit = &mut done => break exit.unwrap_or(WorkerExit::CoordinatorLost("the worker stopped".into())),
            _ = beat.tick() => {
                let _ = pool.cast(PoolMsg::Wire(FromWorker::Heartbeat { name: name.clone() }));
                let silent = started.elapsed().saturating_sub(Duration::from_millis(heard.load(Ordering::Relaxed)));
                if silent > wire::LEASE + Duration::from_secs(2) {
                    break WorkerExit::CoordinatorLost(format!("no word from it for {silent:.0?}"));
                }
            }
            event = events.recv() => match event {
                Some(NodeEvent::Disconnected { .. }) => {
                    // A sweep's end closes the connection right after its
                    // shutdown message, which may still be on its way here.
                    match tokio::time::timeout(Duration::from_millis(500), &mut done).await {
                        Ok(exit) => break exit.unwrap_or(WorkerExit::CoordinatorLost("the worker stopped".into())),
                        Err(_) => break WorkerExit::CoordinatorLost("the connection dropped".into()),
                    }
                }
                None => break WorkerExit::CoordinatorLost("the cluster node stopped".into()),
                Some(_) => {}
            },
            _ = term.recv() => { let _ = worker.cast(WorkerMsg::Leave); }
            _ = tokio::signal::ctrl_c() => { let _ = worker.cast(WorkerMsg::Leave); }
        }
    };
    worker.stop(None);
    node.server.stop(None);
    Ok(exit)
}

/// Connects to the coordinator (retrying while it is not up yet) and waits
/// for its pool to appear; a closed handshake is a refusal (a wrong secret, or no coordinator there).
async fn connect(
    node: &node::Node,
    options: &WorkerOptions,
    address: std::net::SocketAddr,
    events: &mut mpsc::UnboundedReceiver<NodeEvent>,
) -> Result<ActorRef<PoolMsg>, WorkerError> {
    let deadline = Instant::now() + options.connect_timeout;
    let connect_err = |message: String| WorkerError::Connect { address: address.to_string(), message };
    // A coordinator this process served before (it reconnects after a loss)
    // may linger in the process group until its session's clean-up ran:
    // only a pool that appears on this connection counts.
    // The new connection's session numbers start again from 0, so the new
    // pool may get the very id the stale one had: wait (a little) for the
    // stale ones to stop, after which a member with their id is the new one.
    let group = wire::POOL_GROUP.to_owned();
    let stale = ractor::pg::get_members(&group);
    if !stale.is_empty() {
        let until = Instant::now() + Duration::from_secs(5);
        while stale.iter().any(|c| c.get_status() != ractor::ActorStatus::Stopped) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ractor::pg::leave(group.clone(), stale.clone());
    }
    let is_stale = |c: &ractor::ActorCell| {
        stale.iter().any(|s| s.get_id() == c.get_id() && s.get_status() != ractor::ActorStatus::Stopped)
    };
    loop {
        match ractor_cluster::client_connect(&node.server, address).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("coordinator not reachable yet: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                // ractor_cluster's Display is its Debug (`Socket(Os { code: 111, .. })`): say it in words.
                let why = match &e {
                    ractor_cluster::ClientConnectErr::Socket(io) | ractor_cluster::ClientConnectErr::Encryption(io) => {
                        io.to_string()
                    }
                    other => other.to_string(),
                };
                return Err(connect_err(format!("{why} (gave up after {:.0?})", options.connect_timeout)));
            }
        }
    }
    let wait_until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(cell) = ractor::pg::get_members(&group).into_iter().find(|c| !is_stale(c)) {
            return Ok(cell.into());
        }
        while let Ok(event) = events.try_recv() {
            if let NodeEvent::Disconnected { authenticated, .. } = event {
                // A closed handshake does not say why: a wrong secret, or a peer that is no coordinator.
                let why = if authenticated {
                    "the coordinator closed the connection".to_owned()
                } else {
                    format!(
                        "the connection closed during the shared-secret handshake: either the secret \
                         (GAUNTLET_SECRET or --secret-file) differs from the coordinator's, or {address} is not a \
                         gauntlet coordinator's worker address (`gauntlet run --listen` or `gauntlet daemon \
                         --workers-listen`, not an HTTP port)"
                    )
                };
                return Err(WorkerError::Refused(why));
            }
        }
        if Instant::now() > wait_until {
            return Err(connect_err("connected, but no gauntlet coordinator answered within 10 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
