//! Hand-overs between the actor thread and slot threads: wait by spinning
//! for a moment, then park.
//!
//! An in-process trial crosses threads four times: the job goes to a slot
//! thread, each report goes to the leaderboard and its decision comes back,
//! and the attempt's end goes back to its actor. A thread that parks to wait
//! for the other side costs a wake-up when the answer comes, and waking a
//! parked thread on an idle CPU of a virtual machine (an inter-processor
//! interrupt and a VM exit) costs more than the engine's own work for a
//! trial. Measured on 2 vCPUs, 10,000 no-op trials on one slot made 20,758
//! context switches and ran at 22,000 to 29,000 trials/s (3,500 on another
//! VM); spinning first, 60 context switches and 31,000 to 65,000 trials/s.
//!
//! So both sides spin briefly before they park: a slot thread for its next
//! job and for a report's decision ([`recv`]), the actor thread for the next
//! message from a busy slot ([`Handover::wait`], called by the runtime just
//! before it parks). The spin is bounded ([`SPIN`]) and yields the CPU after
//! its first microseconds, so a slot that trains for seconds costs at most
//! [`SPIN`] of CPU per hand-over, and a runnable thread is never kept off a
//! core by one that only waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError, TryRecvError};

/// How long a waiting thread spins before it parks.
pub(crate) const SPIN: Duration = Duration::from_micros(100);

/// Spins (busy, then yielding) until `ready` or [`SPIN`] has passed;
/// whether `ready` came true.
fn spin(mut ready: impl FnMut() -> bool) -> bool {
    // Busy for the first rounds: an answer already on its way lands in
    // well under a microsecond; then give the core to whoever can use it.
    for _ in 0..64 {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    let deadline = Instant::now() + SPIN;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::yield_now();
    }
    ready()
}

/// Receives from `rx`, spinning for up to [`SPIN`] before blocking.
pub(crate) fn recv<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    let mut got = None;
    spin(|| {
        got = match rx.try_recv() {
            Ok(value) => Some(Ok(value)),
            Err(TryRecvError::Disconnected) => Some(Err(RecvError)),
            Err(TryRecvError::Empty) => None,
        };
        got.is_some()
    });
    got.unwrap_or_else(|| rx.recv())
}

/// What the actor thread needs to know to wait for slot threads: how many
/// slots are busy, and a count of the messages they sent it.
#[derive(Clone, Default)]
pub(crate) struct Handover(Arc<Counts>);

#[derive(Default)]
struct Counts {
    busy: AtomicUsize,
    sent: AtomicU64,
}

impl Handover {
    /// A slot thread sent the actor thread a message (call it after the send).
    pub(crate) fn sent(&self) {
        self.0.sent.fetch_add(1, Ordering::Release);
    }

    /// A job was handed to the slots.
    pub(crate) fn job_started(&self) {
        self.0.busy.fetch_add(1, Ordering::AcqRel);
    }

    /// A job returned (or was never handed over).
    pub(crate) fn job_ended(&self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }

    /// The actor thread is about to park: while a slot is busy, wait up to
    /// [`SPIN`] for its next message, which then finds the thread awake.
    /// Returns at once when no slot is busy (nothing will come soon).
    pub(crate) fn wait(&self) {
        let seen = self.0.sent.load(Ordering::Acquire);
        if self.0.busy.load(Ordering::Acquire) == 0 {
            return;
        }
        spin(|| self.0.sent.load(Ordering::Acquire) != seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_gets_a_value_sent_while_it_spins_and_one_sent_after_it_parks() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let late = std::thread::spawn(move || {
            tx.send(1).unwrap();
            std::thread::sleep(SPIN * 20);
            tx.send(2).unwrap();
        });
        assert_eq!(recv(&rx), Ok(1));
        assert_eq!(recv(&rx), Ok(2));
        late.join().unwrap();
        assert_eq!(recv(&rx), Err(RecvError), "a closed channel ends the wait");
    }

    #[test]
    fn a_busy_slot_that_sends_nothing_is_waited_for_the_whole_spin() {
        let h = Handover::default();
        h.job_started();
        let started = Instant::now();
        h.wait();
        assert!(started.elapsed() >= SPIN);
        h.job_ended();
        assert_eq!(h.0.busy.load(Ordering::Relaxed), 0);
    }
}
