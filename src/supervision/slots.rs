//! Slots: dedicated OS threads that run trials, one trial per slot at a
//! time. Training never runs on a tokio worker; the actors only hand jobs
//! to this pool and receive messages back. A slot between jobs spins
//! briefly before it parks, and the pool counts its jobs in flight for the
//! actor thread's own wait (see [`super::handover`]).

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::handover::{self, Handover};
use crate::trainable::Trainable;

/// A unit of work for a slot thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Slot threads: a worker's, shared by all the experiments it serves (or an
/// in-process sweep's).
pub(crate) struct SlotPool {
    queue: SlotQueue,
    threads: Vec<JoinHandle<()>>,
}

/// Where jobs are submitted; cheap to clone.
#[derive(Clone)]
pub(crate) struct SlotQueue {
    jobs: Sender<Job>,
    handover: Handover,
}

impl SlotQueue {
    /// Hands a job to the next free slot. Fails only when the pool is gone.
    pub(crate) fn submit(&self, job: Job) -> Result<(), String> {
        // Busy from now: the actor thread waits for a job's messages even
        // before a slot has picked it up.
        self.handover.job_started();
        self.jobs.send(job).map_err(|_| {
            self.handover.job_ended();
            "the slot pool has shut down".to_owned()
        })
    }

    /// The counts the actor thread waits on: a job's messages to it call
    /// [`Handover::sent`].
    pub(crate) fn handover(&self) -> &Handover {
        &self.handover
    }
}

/// Sets up the calling slot thread for `trainable` (libtorch's thread
/// count); a panicking set-up leaves the defaults.
pub(crate) fn init_thread(trainable: &dyn Trainable, threads: u32) {
    let init = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| trainable.init_thread(threads)));
    if init.is_err() {
        tracing::error!("slot thread initialisation panicked; the trial runs with the defaults");
    }
}

impl SlotPool {
    /// Starts `slots` threads. A job initialises its thread for its own
    /// trainable ([`Trainable::init_thread`]): slots outlive experiments.
    /// `handover` counts their jobs in flight for whoever waits on them.
    pub(crate) fn start(slots: u32, handover: Handover) -> std::io::Result<Self> {
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let threads = (0..slots.max(1))
            .map(|i| {
                let jobs: Receiver<Job> = jobs.clone();
                let handover = handover.clone();
                std::thread::Builder::new().name(format!("gauntlet-slot-{i}")).spawn(move || {
                    while let Ok(job) = handover::recv(&jobs) {
                        // A job's last act is a message to the actor thread (its end).
                        job();
                        handover.sent();
                        handover.job_ended();
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(SlotPool { queue: SlotQueue { jobs: queue, handover }, threads })
    }

    /// The submission side.
    pub(crate) fn queue(&self) -> SlotQueue {
        self.queue.clone()
    }

    /// Closes the queue and waits for running jobs to return.
    pub(crate) fn join(self) {
        drop(self.queue.jobs);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
