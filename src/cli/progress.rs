//! The live view of a sweep: an indicatif bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use gauntlet::{Mode, SweepEvent, Trial, TrialId, TrialStatus};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Progress(Arc<Mutex<Inner>>);

struct Inner {
    bar: Option<ProgressBar>,
    metric: String,
    mode: Mode,
    running: usize,
    ended: [usize; 4],
    best: Option<(TrialId, f64)>,
}

const COMPLETED: usize = 0;
const PRUNED: usize = 1;
const FAILED: usize = 2;
const DIVERGED: usize = 3;

impl Progress {
    pub fn new(trials: u32, metric: &str, mode: Mode) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(u64::from(trials));
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Progress(Arc::new(Mutex::new(Inner {
            bar,
            metric: metric.to_owned(),
            mode,
            running: 0,
            ended: [0; 4],
            best: None,
        })))
    }

    pub fn on_event(&self, event: &SweepEvent) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let line = match *event {
            SweepEvent::Started { id, attempt: 0 } => {
                p.running += 1;
                format!("trial {id} started")
            }
            SweepEvent::Started { id, attempt } => format!("trial {id} resumed (attempt {attempt})"),
            SweepEvent::Reported { id, value: Some(v), .. } => {
                if p.best.is_none_or(|(_, b)| p.mode.score(v) > p.mode.score(b)) {
                    p.best = Some((id, v));
                }
                String::new()
            }
            SweepEvent::Preempted { id, ref reason } => format!("trial {id} preempted, continues elsewhere: {reason}"),
            SweepEvent::Restarting { id, restarts, ref error } => {
                format!("trial {id} crashed, restart {restarts}: {error}")
            }
            SweepEvent::Ended { id, status, best } => {
                p.running = p.running.saturating_sub(1);
                let slot = match status {
                    TrialStatus::Completed => Some(COMPLETED),
                    TrialStatus::Pruned => Some(PRUNED),
                    TrialStatus::Failed => Some(FAILED),
                    TrialStatus::Diverged => Some(DIVERGED),
                    _ => None,
                };
                if let Some(i) = slot {
                    p.ended[i] += 1;
                    if let Some(bar) = &p.bar {
                        bar.inc(1);
                    }
                }
                let best = best.map(|b| format!(" ({} {b:.4})", p.metric)).unwrap_or_default();
                format!("trial {id} {status}{best}")
            }
            _ => String::new(),
        };
        let summary = p.summary();
        match &p.bar {
            Some(bar) => bar.set_message(summary),
            None if !line.is_empty() => eprintln!("{line}  [{summary}]"),
            None => {}
        }
    }

    /// Counts trials that ended before this process started (a resumed run).
    /// Counts what a resumed run did before (its ended trials and best), so
    /// that the counters go on from there rather than from 0.
    pub fn prior(&self, trials: &[Trial]) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut done = 0;
        for t in trials {
            let slot = match t.status {
                TrialStatus::Completed => COMPLETED,
                TrialStatus::Pruned => PRUNED,
                TrialStatus::Failed => FAILED,
                TrialStatus::Diverged => DIVERGED,
                _ => continue,
            };
            p.ended[slot] += 1;
            done += 1;
            if let Some(v) = t.best_metric.filter(|v| v.is_finite()) {
                if p.best.is_none_or(|(_, b)| p.mode.score(v) > p.mode.score(b)) {
                    p.best = Some((t.id, v));
                }
            }
        }
        if let Some(bar) = &p.bar {
            bar.inc(done);
        }
    }

    pub fn finish(&self) {
        let p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = &p.bar {
            bar.finish_and_clear();
        }
    }
}

impl Inner {
    fn summary(&self) -> String {
        let best = self.best.map(|(id, v)| format!(" · best {} {v:.4} (trial {id})", self.metric)).unwrap_or_default();
        format!(
            "running {} · done {} · pruned {} · failed {} · diverged {}{best}",
            self.running, self.ended[COMPLETED], self.ended[PRUNED], self.ended[FAILED], self.ended[DIVERGED]
        )
    }
}
