//! WorkerPool: knows the worker processes and their free slots, hosts the
//! experiments that share them, places trial attempts on them by the
//! [`crate::placement`] policy (each experiment's `concurrency` a cap, then
//! priority, then in turn), routes what workers send to the TrialActors,
//! and notices dead workers.
//!
//! Every worker loads each hosted experiment once (its data and model
//! description) and takes only the trials of experiments it loaded; an
//! experiment that ends is unloaded everywhere.
//!
//! A worker is dead when its connection drops (its actor leaves the
//! workers' process group) or its heartbeats stop for [`wire::LEASE`]. Its
//! trials go back to their TrialActors as lost: preempted (restarted
//! elsewhere, not counted) unless the worker was a local process that
//! crashed (abort, segfault), which counts against the trial it ran.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::trial::TrialMsg;
use crate::cluster::local::Exit;
use crate::cluster::node::NodeEvent;
use crate::cluster::wire::{self, Experiment, ExperimentKey, FromWorker, ToWorker};
use crate::placement::{self, Demand, Offer};
use crate::trial::AttemptEnd;
use crate::worker::WorkerMsg;

/// A fresh placement id.
pub(crate) fn next_lease() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What the pool hears.
pub(crate) enum PoolMsg {
    /// From a worker, over the wire.
    Wire(FromWorker),
    /// A frame from a worker that did not decode.
    Garbled(String),
    /// An experiment starts: workers load it, its trials may be placed.
    Host {
        /// Its key.
        key: ExperimentKey,
        /// What workers load.
        spec: Box<Experiment>,
        /// Its concurrency.
        cap: u32,
        /// Its priority.
        priority: i32,
    },
    /// An experiment's concurrency changed (applies at the next placement).
    SetCap {
        /// The experiment.
        key: ExperimentKey,
        /// The new cap.
        cap: u32,
    },
    /// An experiment ended: workers drop it.
    Unhost {
        /// The experiment.
        key: ExperimentKey,
    },
    /// A TrialActor wants a slot for an attempt.
    Place {
        /// The placement id.
        lease: u64,
        /// The trial's experiment.
        experiment: ExperimentKey,
        /// Who gets the slot.
        trial: ActorRef<TrialMsg>,
    },
    /// A TrialActor no longer wants its slot (it stopped).
    Release {
        /// The placement id.
        lease: u64,
        /// Whether it sent the worker the attempt (else the slot is free now).
        started: bool,
    },
    /// A local worker process ended.
    Exited(Exit),
    /// A worker's actor left the workers' group (its connection dropped);
    /// handled as a message so that its frames already queued come first.
    Gone {
        /// The worker.
        name: String,
    },
    /// A connection event of this node.
    Node(NodeEvent),
    /// Heartbeats out, leases checked.
    Tick,
    /// Find the actor of a worker that said hello.
    Resolve {
        /// The hello.
        hello: Box<FromWorker>,
        /// Attempts so far.
        tries: u32,
    },
    /// A local worker's connection dropped and its exit status has not come.
    Reap {
        /// The worker.
        name: String,
    },
    /// How many workers and slots are ready.
    Capacity(RpcReplyPort<(usize, u32)>),
    /// Slots in use and free, and the trials each experiment runs.
    Usage(RpcReplyPort<Usage>),
    /// The engine stops: tell the workers to exit; answered once they are
    /// gone (so the message is not lost with this process), or after 2 s.
    Shutdown(RpcReplyPort<()>),
    /// The workers took too long to go.
    ShutdownTimeout,
}

wire::wire_message!(PoolMsg, FromWorker, Wire, Garbled);

struct Worker {
    host: String,
    pid: u32,
    local: bool,
    slots: u32,
    actor: ActorRef<WorkerMsg>,
    ready: bool,
    leaving: bool,
    last_seen: Instant,
    leases: BTreeSet<u64>,
    /// When its connection dropped (a local worker waiting for its exit status).
    disconnected: Option<Instant>,
    /// The hosted experiments it was asked to load, and how that went.
    loads: BTreeMap<ExperimentKey, Load>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    Loading,
    Ready,
    Unfit,
}

impl Worker {
    fn free(&self) -> u32 {
        if self.ready && !self.leaving && self.disconnected.is_none() {
            self.slots.saturating_sub(self.leases.len() as u32)
        } else {
            0
        }
    }

    fn send(&self, msg: ToWorker) {
        // A failed send means the connection is going; its loss is handled then.
        let _ = self.actor.cast(WorkerMsg::Wire(msg));
    }
}

struct Lease {
    worker: String,
    experiment: ExperimentKey,
    /// `None` once the TrialActor let go (it stopped); the worker is told to
    /// cancel and the slot is free when the attempt's end arrives.
    trial: Option<ActorRef<TrialMsg>>,
}

/// The pool actor.
pub(crate) struct WorkerPool;

/// An experiment the pool hosts.
struct Hosting {
    spec: Box<Experiment>,
    cap: u32,
    priority: i32,
    /// Attempts waiting for a slot, in the order they asked.
    queue: VecDeque<(u64, ActorRef<TrialMsg>)>,
    running: u32,
    last_served: u64,
    /// Why the last worker that could not load it could not.
    unfit: Option<String>,
}

/// Slots in use and free, and the trials on slots per experiment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Ready workers.
    pub workers: usize,
    /// Their slots.
    pub slots: u32,
    /// Slots with a trial on them.
    pub busy: u32,
    /// Per hosted experiment: (key, trials on slots, waiting, cap).
    pub experiments: Vec<(ExperimentKey, u32, usize, u32)>,
}

/// The pool's state.
pub(crate) struct State {
    experiments: BTreeMap<ExperimentKey, Hosting>,
    /// Placements so far (the in-turn order's clock).
    placements: u64,
    workers: BTreeMap<String, Worker>,
    leases: HashMap<u64, Lease>,
    /// Local worker exits not yet matched to a lost connection.
    exits: Vec<(Instant, Exit)>,
    /// Waiting for the workers to go after a shutdown.
    closing: Option<RpcReplyPort<()>>,
}

impl Actor for WorkerPool {
    type Msg = PoolMsg;
    type State = State;
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<PoolMsg>, _: ()) -> Result<State, ActorProcessingErr> {
        ractor::pg::join(wire::POOL_GROUP.into(), vec![myself.get_cell()]);
        ractor::pg::monitor(wire::WORKER_GROUP.into(), myself.get_cell());
        myself.send_interval(wire::HEARTBEAT, || PoolMsg::Tick);
        Ok(State {
            experiments: BTreeMap::new(),
            placements: 0,
            workers: BTreeMap::new(),
            leases: HashMap::new(),
            exits: Vec::new(),
            closing: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Wire(w) => state.on_wire(&myself, w),
            PoolMsg::Garbled(e) => tracing::error!("a worker sent a message this coordinator cannot read: {e}"),
            PoolMsg::Host { key, spec, cap, priority } => state.host(key, spec, cap, priority),
            PoolMsg::SetCap { key, cap } => {
                if let Some(e) = state.experiments.get_mut(&key) {
                    e.cap = cap.max(1);
                }
                state.dispatch();
            }
            PoolMsg::Unhost { key } => state.unhost(key),
            PoolMsg::Place { lease, experiment, trial } => match state.experiments.get_mut(&experiment) {
                Some(e) => {
                    e.queue.push_back((lease, trial));
                    state.dispatch();
                    state.fail_unservable(experiment);
                }
                None => {
                    let why = format!("experiment {experiment} is not hosted by this pool");
                    let _ = trial.cast(TrialMsg::Lost { reason: why.clone(), crash: Some(why) });
                }
            },
            PoolMsg::Release { lease, started } => state.release(lease, started),
            PoolMsg::Gone { name } => state.on_disconnect(&myself, &name),
            PoolMsg::Exited(exit) => state.on_exit(exit),
            PoolMsg::Node(NodeEvent::Disconnected { peer, authenticated: false }) => tracing::warn!(
                "a connection from {peer} closed before it passed the shared-secret handshake \
                 (a worker started with another GAUNTLET_SECRET or --secret-file, or a peer that is no worker)"
            ),
            PoolMsg::Node(_) => {}
            PoolMsg::Tick => state.tick(),
            PoolMsg::Resolve { hello, tries } => state.resolve(&myself, *hello, tries),
            PoolMsg::Reap { name } => {
                if state.workers.get(&name).is_some_and(|w| w.disconnected.is_some()) {
                    state.lose(&name, "its connection dropped".into(), None);
                }
            }
            PoolMsg::Capacity(reply) => {
                let ready: Vec<&Worker> = state.workers.values().filter(|w| w.ready && !w.leaving).collect();
                let _ = reply.send((ready.len(), ready.iter().map(|w| w.slots).sum()));
            }
            PoolMsg::Usage(reply) => {
                let ready: Vec<&Worker> = state.workers.values().filter(|w| w.ready && !w.leaving).collect();
                let _ = reply.send(Usage {
                    workers: ready.len(),
                    slots: ready.iter().map(|w| w.slots).sum(),
                    busy: state.leases.len() as u32,
                    experiments: state.experiments.iter().map(|(k, e)| (*k, e.running, e.queue.len(), e.cap)).collect(),
                });
            }
            PoolMsg::Shutdown(reply) => {
                for w in state.workers.values() {
                    w.send(ToWorker::Shutdown("the coordinator is done".into()));
                }
                state.closing = Some(reply);
                state.closed_if_empty();
                myself.send_after(Duration::from_secs(2), || PoolMsg::ShutdownTimeout);
            }
            PoolMsg::ShutdownTimeout => {
                if let Some(reply) = state.closing.take() {
                    tracing::warn!(workers = state.workers.len(), "workers still connected after the shutdown");
                    let _ = reply.send(());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PoolMsg>,
        event: SupervisionEvent,
        _state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Leave(_, group, cells)) = event {
            if group == wire::WORKER_GROUP {
                for cell in cells {
                    if let Some(name) = cell.get_name() {
                        let _ = myself.cast(PoolMsg::Gone { name });
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<PoolMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        for w in state.workers.values() {
            w.send(ToWorker::Shutdown("the coordinator stopped".into()));
        }
        Ok(())
    }
}

impl State {
    fn on_wire(&mut self, myself: &ActorRef<PoolMsg>, msg: FromWorker) {
        // Any frame shows the worker alive (heartbeats queue behind big checkpoints).
        let from = match &msg {
            FromWorker::Report { lease, .. }
            | FromWorker::CheckpointPart { lease, .. }
            | FromWorker::CheckpointAck { lease, .. }
            | FromWorker::CheckpointDone { lease, .. }
            | FromWorker::Output { lease, .. }
            | FromWorker::Finished { lease, .. } => self.leases.get(lease).map(|l| l.worker.clone()),
            FromWorker::Ready { name }
            | FromWorker::Loaded { name, .. }
            | FromWorker::Unfit { name, .. }
            | FromWorker::Heartbeat { name }
            | FromWorker::Leaving { name } => Some(name.clone()),
            _ => None,
        };
        if let Some(w) = from.and_then(|n| self.workers.get_mut(&n)) {
            w.last_seen = Instant::now();
        }
        match msg {
            hello @ FromWorker::Hello { .. } => self.resolve(myself, hello, 0),
            FromWorker::Ready { name } => {
                if let Some(w) = self.workers.get_mut(&name) {
                    w.ready = true;
                    w.last_seen = Instant::now();
                    tracing::info!(worker = %name, host = %w.host, pid = w.pid, slots = w.slots, "worker joined");
                    for (key, e) in &self.experiments {
                        w.loads.insert(*key, Load::Loading);
                        w.send(ToWorker::Load { experiment: *key, spec: e.spec.clone() });
                    }
                }
            }
            FromWorker::Loaded { name, experiment } => {
                if let Some(w) = self.workers.get_mut(&name) {
                    if let Some(load) = w.loads.get_mut(&experiment) {
                        *load = Load::Ready;
                        tracing::info!(worker = %name, %experiment, "worker loaded the experiment");
                    }
                }
                self.dispatch();
            }
            FromWorker::Unfit { name, experiment, error } => {
                let what = self.experiments.get(&experiment).map_or("an experiment", |e| e.spec.name.as_str());
                tracing::error!(
                    worker = %name,
                    %experiment,
                    "worker cannot serve {what}: {error}; its trials go to the other workers"
                );
                if let Some(load) = self.workers.get_mut(&name).and_then(|w| w.loads.get_mut(&experiment)) {
                    *load = Load::Unfit;
                }
                if let Some(e) = self.experiments.get_mut(&experiment) {
                    e.unfit = Some(error);
                }
                self.fail_unservable(experiment);
            }
            FromWorker::Heartbeat { name } => {
                if let Some(w) = self.workers.get_mut(&name) {
                    w.last_seen = Instant::now();
                }
            }
            FromWorker::Leaving { name } => {
                if let Some(w) = self.workers.get_mut(&name) {
                    tracing::info!(worker = %name, running = w.leases.len(), "worker is leaving");
                    w.leaving = true;
                }
                self.let_go_if_idle(&name);
                self.dispatch();
            }
            FromWorker::Report { lease, report } => {
                let sent = self.trial_of(lease).map(|t| t.cast(TrialMsg::Wire(FromWorker::Report { lease, report })));
                if !matches!(sent, Some(Ok(()))) {
                    // Nobody waits for it: let the worker's trial stop.
                    self.send_to_lease_worker(lease, ToWorker::Decision { lease, decision: None });
                }
            }
            m @ (FromWorker::CheckpointPart { lease, .. }
            | FromWorker::CheckpointAck { lease, .. }
            | FromWorker::CheckpointDone { lease, .. }
            | FromWorker::Output { lease, .. }) => {
                if let Some(trial) = self.trial_of(lease) {
                    let _ = trial.cast(TrialMsg::Wire(m));
                }
            }
            FromWorker::Finished { lease, end } => {
                if let Some(l) = self.drop_lease(lease) {
                    if let Some(trial) = l.trial {
                        let _ = trial.cast(TrialMsg::Wire(FromWorker::Finished { lease, end }));
                    }
                    self.let_go_if_idle(&l.worker);
                }
                self.dispatch();
            }
        }
    }

    fn closed_if_empty(&mut self) {
        if self.workers.is_empty() {
            if let Some(reply) = self.closing.take() {
                let _ = reply.send(());
            }
        }
    }

    /// A leaving worker whose attempts all ended may go.
    fn let_go_if_idle(&mut self, name: &str) {
        if self.workers.get(name).is_some_and(|w| w.leaving && w.leases.is_empty()) {
            if let Some(w) = self.workers.remove(name) {
                tracing::info!(worker = %name, host = %w.host, pid = w.pid, "worker left");
                w.send(ToWorker::Shutdown("left the sweep".into()));
            }
        }
    }

    fn trial_of(&self, lease: u64) -> Option<&ActorRef<TrialMsg>> {
        self.leases.get(&lease).and_then(|l| l.trial.as_ref())
    }

    fn send_to_lease_worker(&self, lease: u64, msg: ToWorker) {
        if let Some(w) = self.leases.get(&lease).and_then(|l| self.workers.get(&l.worker)) {
            w.send(msg);
        }
    }

    /// A worker said hello: find its actor (its process-group entry may
    /// arrive just after the hello), check it, and welcome it.
    fn resolve(&mut self, myself: &ActorRef<PoolMsg>, hello: FromWorker, tries: u32) {
        let FromWorker::Hello { name, slots, host, pid, local, protocol, version } = &hello else { return };
        let cell = ractor::pg::get_members(&wire::WORKER_GROUP.to_owned())
            .into_iter()
            .find(|c| c.get_name().as_deref() == Some(name.as_str()));
        let Some(cell) = cell else {
            if tries < 100 {
                let hello = Box::new(hello);
                myself.send_after(Duration::from_millis(20), move || PoolMsg::Resolve { hello, tries: tries + 1 });
            } else {
                tracing::error!(worker = %name, %host, pid, "a worker said hello but its actor never appeared; ignoring it");
            }
            return;
        };
        let actor: ActorRef<WorkerMsg> = cell.into();
        if self.workers.contains_key(name) {
            tracing::error!(worker = %name, %host, "refused: a worker of that name is already connected");
            let _ =
                actor.cast(WorkerMsg::Wire(ToWorker::Refused(format!("a worker named {name} is already connected"))));
            return;
        }
        if *protocol != wire::PROTOCOL {
            let why = format!(
                "this coordinator speaks protocol {} (gauntlet {}), the worker {protocol} (gauntlet {version}); \
                 run the same gauntlet version on both",
                wire::PROTOCOL,
                env!("CARGO_PKG_VERSION")
            );
            tracing::error!(worker = %name, %host, "refused: {why}");
            let _ = actor.cast(WorkerMsg::Wire(ToWorker::Refused(why)));
            return;
        }
        if *slots > wire::MAX_SLOTS {
            let why = format!("it offers {slots} slots; a worker has at most {}", wire::MAX_SLOTS);
            tracing::error!(worker = %name, %host, "refused: {why}");
            let _ = actor.cast(WorkerMsg::Wire(ToWorker::Refused(why)));
            return;
        }
        let worker = Worker {
            host: host.clone(),
            pid: *pid,
            local: *local,
            slots: (*slots).max(1),
            actor,
            ready: false,
            leaving: false,
            last_seen: Instant::now(),
            leases: BTreeSet::new(),
            disconnected: None,
            loads: BTreeMap::new(),
        };
        worker.send(ToWorker::Welcome);
        self.workers.insert(name.clone(), worker);
    }

    fn host(&mut self, key: ExperimentKey, spec: Box<Experiment>, cap: u32, priority: i32) {
        for w in self.workers.values_mut().filter(|w| w.ready) {
            w.loads.insert(key, Load::Loading);
            w.send(ToWorker::Load { experiment: key, spec: spec.clone() });
        }
        tracing::info!(experiment = %key, name = %spec.name, cap, priority, "hosting an experiment");
        let hosting = Hosting {
            spec,
            cap: cap.max(1),
            priority,
            queue: VecDeque::new(),
            running: 0,
            last_served: 0,
            unfit: None,
        };
        self.experiments.insert(key, hosting);
    }

    fn unhost(&mut self, key: ExperimentKey) {
        let Some(e) = self.experiments.remove(&key) else { return };
        for (_, trial) in e.queue {
            let why = format!("experiment {key} ended");
            let _ = trial.cast(TrialMsg::Lost { reason: why, crash: None });
        }
        for w in self.workers.values_mut() {
            if w.loads.remove(&key).is_some() {
                w.send(ToWorker::Unload { experiment: key });
            }
        }
    }

    /// Forgets a placement: its slot is free, its experiment runs one fewer.
    fn drop_lease(&mut self, lease: u64) -> Option<Lease> {
        let l = self.leases.remove(&lease)?;
        if let Some(w) = self.workers.get_mut(&l.worker) {
            w.leases.remove(&lease);
        }
        if let Some(e) = self.experiments.get_mut(&l.experiment) {
            e.running = e.running.saturating_sub(1);
        }
        Some(l)
    }

    /// Places waiting attempts on free slots as [`placement::next`] says.
    fn dispatch(&mut self) {
        loop {
            let keys: Vec<ExperimentKey> = self.experiments.keys().copied().collect();
            let demands: Vec<(ExperimentKey, Demand)> = self
                .experiments
                .iter()
                .map(|(k, e)| {
                    let d = Demand {
                        waiting: e.queue.len(),
                        running: e.running,
                        cap: e.cap,
                        priority: e.priority,
                        last_served: e.last_served,
                    };
                    (*k, d)
                })
                .collect();
            let names: Vec<&String> = self.workers.keys().collect();
            let offers: Vec<Offer<ExperimentKey>> = self
                .workers
                .values()
                .map(|w| Offer {
                    free: w.free(),
                    serves: w.loads.iter().filter(|(_, l)| **l == Load::Ready).map(|(k, _)| *k).collect(),
                })
                .collect();
            let Some((d, w)) = placement::next(&demands, &offers) else { return };
            let (key, name) = (keys[d], names[w].clone());
            let e = self.experiments.get_mut(&key).expect("a demand is a hosted experiment");
            let (lease, trial) = e.queue.pop_front().expect("a demand has a waiting trial");
            let worker = self.workers.get_mut(&name).expect("an offer is a worker");
            let placed = TrialMsg::Placed { lease, worker: worker.actor.clone(), name: name.clone() };
            if trial.cast(placed).is_err() {
                continue; // the trial stopped while it waited
            }
            self.placements += 1;
            e.running += 1;
            e.last_served = self.placements;
            worker.leases.insert(lease);
            self.leases.insert(lease, Lease { worker: name, experiment: key, trial: Some(trial) });
        }
    }

    fn release(&mut self, lease: u64, started: bool) {
        for e in self.experiments.values_mut() {
            e.queue.retain(|(l, _)| *l != lease);
        }
        if !started {
            // The worker never heard of it: the slot is free now.
            if let Some(l) = self.drop_lease(lease) {
                self.let_go_if_idle(&l.worker);
                self.dispatch();
            }
            return;
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.trial = None;
            let worker = l.worker.clone();
            if let Some(w) = self.workers.get(&worker) {
                // Stop at the next report; a report waiting now gets no decision.
                w.send(ToWorker::Cancel { lease });
                w.send(ToWorker::Decision { lease, decision: None });
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let mut silent = Vec::new();
        for (name, w) in &self.workers {
            w.send(ToWorker::Heartbeat);
            if w.disconnected.is_none() && now.duration_since(w.last_seen) > wire::LEASE {
                silent.push(name.clone());
            }
        }
        for name in silent {
            let why = format!("no heartbeat for {:.0?}", wire::LEASE);
            self.lose(&name, why, None);
        }
        self.exits.retain(|(at, _)| now.duration_since(*at) < Duration::from_secs(10));
    }

    /// A worker's connection dropped. A local worker's exit status says
    /// whether it crashed; wait a moment for it.
    fn on_disconnect(&mut self, myself: &ActorRef<PoolMsg>, name: &str) {
        if self.closing.is_some() {
            self.workers.remove(name);
            return self.closed_if_empty();
        }
        let Some(w) = self.workers.get_mut(name) else { return };
        if !w.local {
            return self.lose(name, "its connection dropped".into(), None);
        }
        if let Some(i) = self.exits.iter().position(|(_, e)| e.pid == w.pid) {
            let (_, exit) = self.exits.remove(i);
            return self.lose(name, exit.text.clone(), Some(exit));
        }
        w.disconnected = Some(Instant::now());
        let name = name.to_owned();
        myself.send_after(Duration::from_secs(1), move || PoolMsg::Reap { name });
    }

    /// A local worker process ended. While its connection is still up, its
    /// last frames may still be on the way: keep the status for the
    /// disconnect (or a missed heartbeat) to pick up.
    fn on_exit(&mut self, exit: Exit) {
        let name = self
            .workers
            .iter()
            .find(|(_, w)| w.local && w.pid == exit.pid && w.disconnected.is_some())
            .map(|(n, _)| n.clone());
        match name {
            Some(name) => self.lose(&name, exit.text.clone(), Some(exit)),
            None => self.exits.push((Instant::now(), exit)),
        }
    }

    /// Ends an experiment's waiting trials when no worker can ever take
    /// them: every connected worker is local (alike: this machine, these
    /// files) and could not load it. Each fails as invalid, saying why,
    /// instead of waiting for ever. Remote workers may differ, so with any
    /// connected, trials wait for one that can.
    fn fail_unservable(&mut self, key: ExperimentKey) {
        let mut connected = self.workers.values().filter(|w| w.disconnected.is_none() && !w.leaving).peekable();
        if connected.peek().is_none() || !connected.all(|w| w.local && w.loads.get(&key) == Some(&Load::Unfit)) {
            return;
        }
        let Some(e) = self.experiments.get_mut(&key) else { return };
        let why = format!("no worker can load the experiment: {}", e.unfit.as_deref().unwrap_or("(no reason given)"));
        for (_, trial) in e.queue.drain(..) {
            let _ = trial.cast(TrialMsg::Finished(AttemptEnd::Invalid(why.clone())));
        }
    }

    /// Forgets a worker; its trials are lost: crashed when its process
    /// crashed, preempted otherwise.
    fn lose(&mut self, name: &str, why: String, exit: Option<Exit>) {
        let Some(w) = self.workers.remove(name) else { return };
        let (why, exit) = match exit {
            Some(e) => (why, Some(e)),
            // A local worker's exit status may have come before.
            None => match self.exits.iter().position(|(_, e)| w.local && e.pid == w.pid) {
                Some(i) => {
                    let (_, e) = self.exits.remove(i);
                    (e.text.clone(), Some(e))
                }
                None => (why, None),
            },
        };
        let crashed = exit.as_ref().is_some_and(|e| e.crashed);
        if w.leases.is_empty() {
            tracing::info!(worker = %name, host = %w.host, pid = w.pid, "worker gone: {why}");
        } else {
            tracing::warn!(worker = %name, host = %w.host, pid = w.pid, trials = w.leases.len(), "worker lost: {why}");
        }
        for lease in &w.leases {
            let Some(l) = self.leases.remove(lease) else { continue };
            if let Some(e) = self.experiments.get_mut(&l.experiment) {
                e.running = e.running.saturating_sub(1);
            }
            if let Some(trial) = l.trial {
                let reason = format!("worker {name} on {} lost: {why}", w.host);
                let crash = crashed.then(|| format!("{why} while training"));
                let _ = trial.cast(TrialMsg::Lost { reason, crash });
            }
        }
        // In case only its heartbeats were late: it joins again as a new worker.
        w.send(ToWorker::Dropped(format!("the coordinator gave up on this worker: {why}")));
        let waiting = w.leases.len() + self.experiments.values().map(|e| e.queue.len()).sum::<usize>();
        if self.closing.is_none() && !self.workers.values().any(|w| w.disconnected.is_none()) && waiting > 0 {
            tracing::warn!(
                "no worker is connected: trials wait for one (remote workers rejoin by themselves within their \
                 --reconnect-for; or start one with `gauntlet worker --join`)"
            );
        }
        self.closed_if_empty();
        self.dispatch();
    }
}

/// A running worker pool: the handle the coordinator keeps.
#[derive(Clone)]
pub struct Pool(pub(crate) ActorRef<PoolMsg>);

/// An experiment's place in a pool: what its trials need to ask for slots.
#[derive(Clone)]
pub(crate) struct Hosted {
    pub(crate) pool: ActorRef<PoolMsg>,
    pub(crate) key: ExperimentKey,
}

impl Hosted {
    /// The experiment's concurrency changed.
    pub(crate) fn set_cap(&self, cap: u32) {
        let _ = self.pool.cast(PoolMsg::SetCap { key: self.key, cap });
    }

    /// The experiment ended.
    pub(crate) fn unhost(&self) {
        let _ = self.pool.cast(PoolMsg::Unhost { key: self.key });
    }
}

impl Pool {
    /// Starts an empty pool: experiments are hosted as they start, workers
    /// load each of them when they join.
    pub async fn start() -> Result<Pool, super::SweepError> {
        let (pool, _) = Actor::spawn(Some("gauntlet-pool".into()), WorkerPool, ())
            .await
            .map_err(|e| super::SweepError::Spawn { what: "worker pool", message: e.to_string() })?;
        Ok(Pool(pool))
    }

    /// Tells the pool that a local worker process ended.
    pub fn worker_exited(&self, exit: Exit) {
        let _ = self.0.cast(PoolMsg::Exited(exit));
    }

    /// Tells the pool of a connection event.
    pub fn node_event(&self, event: NodeEvent) {
        let _ = self.0.cast(PoolMsg::Node(event));
    }

    /// Hosts an experiment: its trials may be placed once workers loaded it.
    pub(crate) async fn host(&self, spec: Experiment, cap: u32, priority: i32) -> Result<Hosted, super::SweepError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let key = ExperimentKey(NEXT.fetch_add(1, Ordering::Relaxed));
        let msg = PoolMsg::Host { key, spec: Box::new(spec), cap, priority };
        self.0
            .cast(msg)
            .map_err(|e| super::SweepError::Spawn { what: "experiment in the pool", message: e.to_string() })?;
        Ok(Hosted { pool: self.0.clone(), key })
    }

    /// Slots in use and free, per experiment.
    pub async fn usage(&self) -> Usage {
        match self.0.call(PoolMsg::Usage, Some(Duration::from_secs(5))).await {
            Ok(ractor::rpc::CallResult::Success(u)) => u,
            _ => Usage::default(),
        }
    }

    /// Ready workers and their slots.
    pub async fn capacity(&self) -> (usize, u32) {
        match self.0.call(PoolMsg::Capacity, Some(Duration::from_secs(5))).await {
            Ok(ractor::rpc::CallResult::Success(c)) => c,
            _ => (0, 0),
        }
    }

    /// Tells every worker the sweep is over, waits (up to 2 s) until they
    /// are gone, and stops the pool.
    pub async fn shutdown(&self) {
        let _ = self.0.call(PoolMsg::Shutdown, Some(Duration::from_secs(5))).await;
        self.0.stop(None);
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    /// Stands where a worker's actor stands: joins the workers' process
    /// group under its name and hands on what the pool tells it.
    struct Listener;

    impl Actor for Listener {
        type Msg = WorkerMsg;
        type State = mpsc::UnboundedSender<ToWorker>;
        type Arguments = mpsc::UnboundedSender<ToWorker>;

        async fn pre_start(
            &self,
            myself: ActorRef<WorkerMsg>,
            heard: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            ractor::pg::join(wire::WORKER_GROUP.into(), vec![myself.get_cell()]);
            Ok(heard)
        }

        async fn handle(
            &self,
            _myself: ActorRef<WorkerMsg>,
            msg: WorkerMsg,
            heard: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let WorkerMsg::Wire(w) = msg {
                let _ = heard.send(w);
            }
            Ok(())
        }
    }

    fn hello(name: &str, protocol: u32) -> FromWorker {
        FromWorker::Hello {
            name: name.into(),
            slots: 2,
            host: "test-host".into(),
            pid: 1,
            local: false,
            protocol,
            version: "0.0.0-elsewhere".into(),
        }
    }

    async fn listener(name: &str) -> (ActorRef<WorkerMsg>, mpsc::UnboundedReceiver<ToWorker>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (actor, _) = Actor::spawn(Some(name.into()), Listener, tx).await.expect("the listener starts");
        (actor, rx)
    }

    async fn answer(rx: &mut mpsc::UnboundedReceiver<ToWorker>) -> ToWorker {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the pool answers a hello within 10 s")
            .expect("the listener is alive")
    }

    async fn refusal(rx: &mut mpsc::UnboundedReceiver<ToWorker>) -> String {
        match answer(rx).await {
            ToWorker::Refused(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_handshake_welcomes_a_worker_of_this_protocol_and_refuses_another_protocol_or_a_taken_name() {
        let (pool, _) = Actor::spawn(None, WorkerPool, ()).await.expect("the pool starts");
        let capacity = || async {
            match pool.call(PoolMsg::Capacity, Some(Duration::from_secs(5))).await {
                Ok(ractor::rpc::CallResult::Success(c)) => c,
                _ => panic!("the pool did not answer a capacity call"),
            }
        };

        let (a, mut heard_a) = listener("worker-handshake-test-a").await;
        pool.cast(PoolMsg::Wire(hello("worker-handshake-test-a", wire::PROTOCOL))).unwrap();
        assert!(matches!(answer(&mut heard_a).await, ToWorker::Welcome));
        pool.cast(PoolMsg::Wire(FromWorker::Ready { name: "worker-handshake-test-a".into() })).unwrap();
        assert_eq!(capacity().await, (1, 2), "the welcomed worker's slots count once it is ready");

        // Another worker of an older protocol: refused, with both protocols
        // and versions and what to do, and never counted.
        let (b, mut heard_b) = listener("worker-handshake-test-b").await;
        pool.cast(PoolMsg::Wire(hello("worker-handshake-test-b", wire::PROTOCOL - 1))).unwrap();
        let why = refusal(&mut heard_b).await;
        let ours =
            format!("this coordinator speaks protocol {} (gauntlet {})", wire::PROTOCOL, env!("CARGO_PKG_VERSION"));
        assert!(why.contains(&ours), "{why}");
        assert!(why.contains(&format!("the worker {} (gauntlet 0.0.0-elsewhere)", wire::PROTOCOL - 1)), "{why}");
        assert!(why.contains("run the same gauntlet version on both"), "{why}");
        pool.cast(PoolMsg::Wire(FromWorker::Ready { name: "worker-handshake-test-b".into() })).unwrap();
        assert_eq!(capacity().await, (1, 2), "a refused worker's slots are not offered");

        // A second hello under a name already connected: refused; the first stays.
        pool.cast(PoolMsg::Wire(hello("worker-handshake-test-a", wire::PROTOCOL))).unwrap();
        let why = refusal(&mut heard_a).await;
        assert!(why.contains("a worker named worker-handshake-test-a is already connected"), "{why}");
        assert_eq!(capacity().await, (1, 2));

        // A hello that offers more slots than a worker may have: refused, never counted.
        let (c, mut heard_c) = listener("worker-handshake-test-c").await;
        let FromWorker::Hello { host, pid, local, protocol, version, .. } = hello("", wire::PROTOCOL) else {
            unreachable!()
        };
        let name = "worker-handshake-test-c".to_owned();
        let greedy = FromWorker::Hello { name, slots: u32::MAX, host, pid, local, protocol, version };
        pool.cast(PoolMsg::Wire(greedy)).unwrap();
        let why = refusal(&mut heard_c).await;
        assert!(why.contains(&format!("offers {} slots; a worker has at most 1024", u32::MAX)), "{why}");
        assert_eq!(capacity().await, (1, 2));

        for actor in [a.get_cell(), b.get_cell(), c.get_cell(), pool.get_cell()] {
            actor.stop(None);
        }
    }
}
