//! Slots: dedicated OS threads that run trials, one trial per slot at a
//! time. Training never runs on a tokio worker; the actors only hand jobs
//! to this pool and receive messages back.

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::trainable::Trainable;

/// A unit of work for a slot thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Slot threads: a worker's, shared by all the experiments it serves (or an
/// in-process sweep's).
pub(crate) struct SlotPool {
    queue: Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

/// Where jobs are submitted; cheap to clone.
#[derive(Clone)]
pub(crate) struct SlotQueue(Sender<Job>);

impl SlotQueue {
    /// Hands a job to the next free slot. Fails only when the pool is gone.
    pub(crate) fn submit(&self, job: Job) -> Result<(), String> {
        self.0.send(job).map_err(|_| "the slot pool has shut down".to_owned())
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
    pub(crate) fn start(slots: u32) -> std::io::Result<Self> {
        let (queue, jobs) = crossbeam_channel::unbounded::<Job>();
        let threads = (0..slots.max(1))
            .map(|i| {
                let jobs: Receiver<Job> = jobs.clone();
                std::thread::Builder::new().name(format!("gauntlet-slot-{i}")).spawn(move || {
                    for job in jobs {
                        job();
                    }
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(SlotPool { queue, threads })
    }

    /// The submission side.
    pub(crate) fn queue(&self) -> SlotQueue {
        SlotQueue(self.queue.clone())
    }

    /// Closes the queue and waits for running jobs to return.
    pub(crate) fn join(self) {
        drop(self.queue);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
