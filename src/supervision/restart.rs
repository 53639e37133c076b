//! The restart policy: what happens to a trial whose attempt was lost,
//! as one pure function of the cause and the counts, shared by every path
//! that loses an attempt (a crash of the training, of its process, a lost
//! or leaving worker, a failed start).

use std::time::Duration;

use crate::config::FaultConfig;

/// How an attempt was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The training panicked or returned an error, its process crashed, or
    /// it could not start: counted against `fault.max_restarts`.
    Crash,
    /// Its worker was lost or left: not the trial's fault, not counted as
    /// a restart, but bounded all the same (a trial that keeps taking its
    /// workers down with it).
    Preemption,
}

/// What the trial does next.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterLoss {
    /// The sweep is stopping: the trial pauses, to continue on resume.
    Pause,
    /// It failed for good; the text says why it gave up.
    Fail(String),
    /// Its next attempt starts from its last checkpoint after this delay.
    Restart(Duration),
}

/// The decision after a loss. `losses` counts the losses of this cause so
/// far, this one included (restarts for a crash, preemptions for a preemption).
pub fn after_loss(loss: Loss, losses: u32, interrupted: bool, fault: &FaultConfig) -> AfterLoss {
    if interrupted {
        return AfterLoss::Pause;
    }
    match loss {
        Loss::Crash if losses > fault.max_restarts => {
            AfterLoss::Fail(format!("gave up after {} restarts", fault.max_restarts))
        }
        Loss::Crash => AfterLoss::Restart(backoff(fault.restart_backoff_ms, losses)),
        Loss::Preemption => {
            let limit = preemption_limit(fault);
            if losses > limit {
                AfterLoss::Fail(format!("its worker was lost {limit} times; giving up"))
            } else {
                AfterLoss::Restart(Duration::ZERO)
            }
        }
    }
}

/// How many times a trial's worker may be lost before the trial fails.
pub fn preemption_limit(fault: &FaultConfig) -> u32 {
    3 * (fault.max_restarts + 1)
}

/// The restart delay after the `restarts`-th crash: doubling from the base, at most 30 s.
pub fn backoff(base_ms: u64, restarts: u32) -> Duration {
    let ms = base_ms.saturating_mul(1u64 << restarts.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(max_restarts: u32, base_ms: u64) -> FaultConfig {
        FaultConfig { max_restarts, restart_backoff_ms: base_ms, ..FaultConfig::default() }
    }

    #[test]
    fn crashes_back_off_doubling_until_max_restarts_then_fail() {
        let f = fault(3, 200);
        let delays: Vec<AfterLoss> = (1..=4).map(|n| after_loss(Loss::Crash, n, false, &f)).collect();
        assert_eq!(
            delays,
            [
                AfterLoss::Restart(Duration::from_millis(200)),
                AfterLoss::Restart(Duration::from_millis(400)),
                AfterLoss::Restart(Duration::from_millis(800)),
                AfterLoss::Fail("gave up after 3 restarts".into()),
            ]
        );
        assert_eq!(
            after_loss(Loss::Crash, 1, false, &fault(0, 200)),
            AfterLoss::Fail("gave up after 0 restarts".into())
        );
        // The delay is capped at 30 s and never overflows.
        assert_eq!(backoff(200, 12), Duration::from_secs(30));
        assert_eq!(backoff(u64::MAX, u32::MAX), Duration::from_secs(30));
        assert_eq!(backoff(0, 5), Duration::ZERO);
    }

    #[test]
    fn preemptions_restart_at_once_and_are_bounded_apart_from_crashes() {
        let f = fault(1, 200);
        assert_eq!(preemption_limit(&f), 6);
        for n in 1..=6 {
            assert_eq!(after_loss(Loss::Preemption, n, false, &f), AfterLoss::Restart(Duration::ZERO), "{n}");
        }
        assert_eq!(
            after_loss(Loss::Preemption, 7, false, &f),
            AfterLoss::Fail("its worker was lost 6 times; giving up".into())
        );
    }

    #[test]
    fn a_stopping_sweep_pauses_whatever_the_loss() {
        let f = fault(0, 200);
        for loss in [Loss::Crash, Loss::Preemption] {
            for n in [1, 100] {
                assert_eq!(after_loss(loss, n, true, &f), AfterLoss::Pause);
            }
        }
    }
}
