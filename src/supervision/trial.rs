//! TrialActor: one attempt of one trial. It hands the training to a slot
//! thread (in process), or asks the worker pool for a slot on a worker and
//! relays between that worker and the leaderboard; it forwards the
//! attempt's end to its supervisor, and fails (so that the supervisor
//! restarts the trial) when the training crashed.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::experiment::ExperimentMsg;
use super::leaderboard::{DecisionReply, LeaderboardMsg, LeaderboardSink};
use super::pool::{next_lease, PoolMsg};
use super::slots::SlotQueue;
use super::Settings;
use crate::checkpoint::Checkpoint;
use crate::cluster::transfer::{PartReader, PartWriter, WINDOW_PARTS};
use crate::cluster::wire::{FromWorker, Job, Part, ToWorker};
use crate::config::Params;
use crate::trainable::{ContextSettings, TrialContext, OUTPUT_LOG};
use crate::trial::{AttemptEnd, TrialId};
use crate::worker::WorkerMsg;

/// The error a TrialActor fails with when its training crashed; the
/// supervisor reads the text from it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct TrialCrash(pub String);

pub(super) struct TrialActor;

/// Where the parts of a checkpoint from a worker are staged, in the trial's
/// directory (one per lease, so that a discard of an earlier attempt's never
/// meets a later one's): moved into the checkpoint when its last part is in.
/// A resume removes any left over.
pub(crate) fn incoming_dir(trial_dir: &std::path::Path, lease: u64) -> std::path::PathBuf {
    trial_dir.join(format!("{INCOMING_PREFIX}{lease}.tmp"))
}

/// The name every staging directory starts with.
pub(crate) const INCOMING_PREFIX: &str = ".incoming-";

pub(super) struct Args {
    pub(super) id: TrialId,
    pub(super) attempt: u32,
    pub(super) restarts: u32,
    pub(super) seed: u64,
    pub(super) params: Params,
    pub(super) resume: Option<Checkpoint>,
    pub(super) settings: Arc<Settings>,
    pub(super) context: Arc<ContextSettings>,
    pub(super) leaderboard: ActorRef<LeaderboardMsg>,
    pub(super) supervisor: ActorRef<ExperimentMsg>,
    /// In-process slot threads, or `None` when a worker pool trains.
    pub(super) slots: Option<SlotQueue>,
}

pub(crate) enum TrialMsg {
    /// The slot thread returned.
    Finished(AttemptEnd),
    /// Stop at the next report (the sweep is shutting down).
    Cancel,
    /// The sweep proposes nothing more (a budget is spent): an attempt
    /// still waiting for a slot ends, one that trains stops at its next report.
    Withdraw,
    /// The pool placed the attempt on a worker's slot.
    Placed { lease: u64, worker: ActorRef<WorkerMsg>, name: String },
    /// From the worker that trains the attempt, routed by the pool.
    Wire(FromWorker),
    /// The worker was lost; `crash` when its process crashed (counted as a
    /// restart), else the attempt was preempted.
    Lost { reason: String, crash: Option<String> },
}
impl ractor::Message for TrialMsg {}

/// Where a remote attempt is.
struct Remote {
    lease: u64,
    pool: ActorRef<PoolMsg>,
    job: Option<Job>,
    /// The worker, once the job was sent to it.
    worker: Option<ActorRef<WorkerMsg>>,
    /// The checkpoint the attempt resumes from, on its way to the worker.
    outgoing: Option<Outgoing>,
    /// The checkpoint of an epoch coming from the worker, staged on disk.
    incoming: Option<(u32, PartWriter)>,
    ended: bool,
}

/// A checkpoint being sent, at most [`WINDOW_PARTS`] parts ahead of the
/// worker's acknowledgements; the job follows its last part.
struct Outgoing {
    worker: ActorRef<WorkerMsg>,
    /// `None` while a blocking task reads from it.
    reader: Option<PartReader>,
    epoch: u32,
    sent: u64,
    acked: u64,
}

pub(super) struct State {
    id: TrialId,
    cancel: Arc<AtomicBool>,
    supervisor: ActorRef<ExperimentMsg>,
    settings: Arc<Settings>,
    leaderboard: ActorRef<LeaderboardMsg>,
    remote: Option<Remote>,
    /// `fault.max_checkpoint_mb`, for checkpoints that come from a worker.
    max_checkpoint_bytes: u64,
}

impl Actor for TrialActor {
    type Msg = TrialMsg;
    type State = State;
    type Arguments = Args;

    async fn pre_start(&self, myself: ActorRef<TrialMsg>, a: Args) -> Result<State, ActorProcessingErr> {
        let cancel = Arc::new(AtomicBool::new(false));
        let from_epoch = a.resume.as_ref().map(|c| c.epoch);
        let mut state = State {
            id: a.id,
            cancel: cancel.clone(),
            supervisor: a.supervisor,
            settings: a.settings.clone(),
            leaderboard: a.leaderboard.clone(),
            remote: None,
            max_checkpoint_bytes: a.context.max_checkpoint_bytes,
        };
        let Some(slots) = a.slots else {
            // A worker trains it: ask the pool for a slot.
            let hosted = a.settings.pool.clone().ok_or("neither slot threads nor a worker pool")?;
            let (pool, experiment) = (hosted.pool, hosted.key);
            let lease = next_lease();
            let job = Job {
                lease,
                experiment,
                id: a.id,
                attempt: a.attempt,
                restarts: a.restarts,
                seed: a.seed,
                params: a.params,
                resume: a.resume,
            };
            pool.cast(PoolMsg::Place { lease, experiment, trial: myself })?;
            state.remote = Some(Remote {
                lease,
                pool,
                job: Some(job),
                worker: None,
                outgoing: None,
                incoming: None,
                ended: false,
            });
            return Ok(state);
        };
        let _ = a.leaderboard.cast(LeaderboardMsg::Started { id: a.id, attempt: a.attempt, from_epoch, worker: None });
        let mut ctx = TrialContext::new(
            a.id,
            a.attempt,
            a.restarts,
            a.seed,
            a.params,
            a.resume,
            a.context,
            Box::new(LeaderboardSink::new(a.leaderboard, a.settings.journal.clone(), slots.handover().clone())),
            a.settings.checkpoints.clone(),
            cancel,
        );
        let trainable = a.settings.trainable.clone();
        let threads = a.settings.threads_per_trial;
        let reply = myself.clone();
        slots.submit(Box::new(move || {
            super::slots::init_thread(trainable.as_ref(), threads);
            let result = catch_unwind(AssertUnwindSafe(|| trainable.train(&mut ctx)));
            // The actor may be gone (sweep interrupted); nothing else to tell then.
            let _ = reply.cast(TrialMsg::Finished(crate::trainable::attempt_end(result)));
        }))?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<TrialMsg>,
        msg: TrialMsg,
        state: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TrialMsg::Cancel => {
                state.cancel.store(true, Ordering::Relaxed);
                if let Some(r) = &mut state.remote {
                    match &r.worker {
                        Some(w) => {
                            let _ = w.cast(WorkerMsg::Wire(ToWorker::Cancel { lease: r.lease }));
                        }
                        // Still waiting for a slot, or for its checkpoint to
                        // reach the worker: nothing ran, nothing to save.
                        None => return self.end(&myself, state, AttemptEnd::Cancelled),
                    }
                }
            }
            TrialMsg::Withdraw => {
                // Nothing ran (no slot yet, or its checkpoint still on the way): nothing to save.
                if state.remote.as_ref().is_some_and(|r| r.worker.is_none()) {
                    return self.end(&myself, state, AttemptEnd::Cancelled);
                }
            }
            TrialMsg::Finished(end) => return self.end(&myself, state, end),
            TrialMsg::Placed { lease, worker, name } => self.placed(state, lease, worker, name).await?,
            TrialMsg::Wire(w) => return self.on_wire(&myself, state, w).await,
            TrialMsg::Lost { reason, crash } => {
                if let Some(r) = &mut state.remote {
                    r.ended = true; // the pool forgot the lease already
                }
                return match crash {
                    Some(text) => Err(Box::new(TrialCrash(text))),
                    None => self.end(&myself, state, AttemptEnd::Preempted(reason)),
                };
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<TrialMsg>, state: &mut State) -> Result<(), ActorProcessingErr> {
        // Whatever stopped us, the slot must not train on unobserved.
        state.cancel.store(true, Ordering::Relaxed);
        if let Some(r) = &mut state.remote {
            if let Some((_, staged)) = r.incoming.take() {
                // A checkpoint cut short: its parts go.
                tokio::task::spawn_blocking(move || staged.discard());
            }
            if let Some(o) = &r.outgoing {
                // The worker drops what it received of the checkpoint.
                let _ = o.worker.cast(WorkerMsg::Wire(ToWorker::Cancel { lease: r.lease }));
            }
            if !r.ended {
                let _ = r.pool.cast(PoolMsg::Release { lease: r.lease, started: r.worker.is_some() });
            }
        }
        Ok(())
    }
}

impl TrialActor {
    fn end(&self, myself: &ActorRef<TrialMsg>, state: &mut State, end: AttemptEnd) -> Result<(), ActorProcessingErr> {
        if let Some(r) = &mut state.remote {
            if !matches!(end, AttemptEnd::Cancelled) || r.worker.is_some() {
                r.ended = true;
            }
        }
        if let AttemptEnd::Crashed(text) = end {
            return Err(Box::new(TrialCrash(text)));
        }
        state.supervisor.cast(ExperimentMsg::Ended { id: state.id, end })?;
        myself.stop(None);
        Ok(())
    }

    /// The attempt has a slot: send the checkpoint it resumes from, then the job.
    async fn placed(
        &self,
        state: &mut State,
        lease: u64,
        worker: ActorRef<WorkerMsg>,
        name: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(r) = state.remote.as_mut().filter(|r| r.lease == lease) else { return Ok(()) };
        let Some(job) = r.job.take() else { return Ok(()) };
        let from_epoch = job.resume.as_ref().map(|c| c.epoch);
        let _ = state.leaderboard.cast(LeaderboardMsg::Started {
            id: job.id,
            attempt: job.attempt,
            from_epoch,
            worker: Some(name),
        });
        let Some(ckpt) = &job.resume else {
            // A failed send means the worker is going: the pool reports it lost.
            let _ = worker.cast(WorkerMsg::Wire(ToWorker::Start(job)));
            r.worker = Some(worker);
            return Ok(());
        };
        let (dir, epoch) = (ckpt.dir.clone(), ckpt.epoch);
        let reader = tokio::task::spawn_blocking(move || PartReader::open(&dir))
            .await?
            .map_err(|e| TrialCrash(format!("cannot read the checkpoint of epoch {epoch} to send: {e}")))?;
        r.job = Some(job);
        r.outgoing = Some(Outgoing { worker, reader: Some(reader), epoch, sent: 0, acked: 0 });
        self.send_parts(state).await
    }

    /// Sends what the window allows of the checkpoint the attempt resumes
    /// from; after its last part, the job.
    async fn send_parts(&self, state: &mut State) -> Result<(), ActorProcessingErr> {
        let Some(r) = state.remote.as_mut() else { return Ok(()) };
        let Some(o) = r.outgoing.as_mut() else { return Ok(()) };
        let room = (o.acked + WINDOW_PARTS).saturating_sub(o.sent);
        if room == 0 {
            return Ok(());
        }
        let Some(mut reader) = o.reader.take() else { return Ok(()) };
        let epoch = o.epoch;
        let (reader, read) = tokio::task::spawn_blocking(move || {
            let read = reader.next_parts(room);
            (reader, read)
        })
        .await?;
        let (parts, last) =
            read.map_err(|e| TrialCrash(format!("cannot read the checkpoint of epoch {epoch} to send: {e}")))?;
        o.reader = Some(reader);
        // A failed send means the worker is going: the pool reports it lost.
        for part in parts {
            let _ = o.worker.cast(WorkerMsg::Wire(ToWorker::CheckpointPart { lease: r.lease, part }));
            o.sent += 1;
        }
        if last {
            let o = r.outgoing.take().expect("sending");
            if let Some(job) = r.job.take() {
                let _ = o.worker.cast(WorkerMsg::Wire(ToWorker::Start(job)));
            }
            r.worker = Some(o.worker);
        }
        Ok(())
    }

    /// Writes a part of a checkpoint from the worker (off the tokio
    /// workers, awaited: in order, at the disk's pace), then acknowledges
    /// it so the worker sends more.
    async fn receive_part(&self, state: &mut State, epoch: u32, part: Part) -> Result<(), ActorProcessingErr> {
        let lease = state.remote.as_ref().map_or(0, |r| r.lease);
        let staging = incoming_dir(&state.settings.checkpoints.trial_dir(state.id), lease);
        let limit = state.max_checkpoint_bytes;
        let Some(r) = state.remote.as_mut() else { return Ok(()) };
        let mut writer = match r.incoming.take() {
            Some((e, writer)) if e == epoch => writer,
            // A new checkpoint (one cut short before it is dropped).
            _ => PartWriter::new(staging, limit),
        };
        let writer = tokio::task::spawn_blocking(move || {
            writer.write(&part);
            writer
        })
        .await?;
        if let Some(w) = &r.worker {
            let _ = w.cast(WorkerMsg::Wire(ToWorker::CheckpointAck { lease: r.lease, epoch, parts: writer.parts() }));
        }
        r.incoming = Some((epoch, writer));
        Ok(())
    }

    async fn on_wire(
        &self,
        myself: &ActorRef<TrialMsg>,
        state: &mut State,
        msg: FromWorker,
    ) -> Result<(), ActorProcessingErr> {
        let Some(r) = state.remote.as_mut() else { return Ok(()) };
        match msg {
            FromWorker::Report { lease, mut report } => {
                report.trial = state.id; // the lease says whose it is
                let worker = r.worker.clone();
                let reply = DecisionReply::Remote(Box::new(move |decision| {
                    if let Some(w) = worker {
                        let _ = w.cast(WorkerMsg::Wire(ToWorker::Decision { lease, decision: Some(decision) }));
                    }
                }));
                state.leaderboard.cast(LeaderboardMsg::Report(report, reply))?;
            }
            FromWorker::CheckpointPart { epoch, part, .. } => return self.receive_part(state, epoch, part).await,
            FromWorker::CheckpointAck { parts, .. } => {
                if let Some(o) = r.outgoing.as_mut() {
                    o.acked = o.acked.max(parts);
                }
                return self.send_parts(state).await;
            }
            FromWorker::CheckpointDone { meta, parts, .. } => {
                // Off the tokio workers (renames, retention); awaited, so
                // the attempt's end is handled after its checkpoint.
                // Not ahead of the journal: the reports before it are durable first.
                let staged = r.incoming.take();
                let (store, id, epoch) = (state.settings.checkpoints.clone(), state.id, meta.epoch);
                let journal = state.settings.journal.clone();
                let saved = tokio::task::spawn_blocking(move || {
                    let mut staged = match staged {
                        Some((e, writer)) if e == meta.epoch => Some(writer),
                        Some((_, other)) => {
                            other.discard();
                            None
                        }
                        None => None,
                    };
                    let got = staged.as_ref().map_or(0, PartWriter::parts);
                    let saved = if got != parts {
                        Err(std::io::Error::other(format!("{got} of its {parts} parts arrived")))
                    } else if let Some(e) = journal.and_then(|j| j.sync().err()) {
                        Err(std::io::Error::other(format!("the journal failed: {e}")))
                    } else {
                        store.save(id, &meta, |dir| staged.take().map_or(Ok(()), |w| w.finish_into(dir)))
                    };
                    // Not moved into a checkpoint: its staged parts go.
                    if let Some(w) = staged {
                        w.discard();
                    }
                    saved
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                match saved {
                    Ok(saved) => {
                        let _ = state.leaderboard.cast(LeaderboardMsg::Checkpoint { id: state.id, epoch: saved.epoch });
                    }
                    Err(e) => {
                        let dir = state.settings.checkpoints.trial_dir(state.id);
                        tracing::error!(trial = %state.id, "cannot store the checkpoint of epoch {epoch} in {}: {e}", dir.display())
                    }
                }
            }
            FromWorker::Output { text, .. } => {
                let log = state.settings.checkpoints.trial_dir(state.id).join(OUTPUT_LOG);
                // Awaited, so that pieces are appended in order; off the tokio workers.
                let file = log.clone();
                let appended = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(file.parent().unwrap_or(&file))?;
                    std::fs::OpenOptions::new().create(true).append(true).open(&file)?.write_all(text.as_bytes())
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                if let Err(e) = appended {
                    tracing::warn!(trial = %state.id, "cannot append to {}: {e}", log.display());
                }
            }
            FromWorker::Finished { end, .. } => return self.end(myself, state, end),
            _ => {}
        }
        Ok(())
    }
}
