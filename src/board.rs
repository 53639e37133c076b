//! The leaderboard's bookkeeping as pure code: every trial's standing, and
//! the scheduler fed with reports in arrival order. The Leaderboard actor
//! drives a [`Board`] live; journal replay drives one from the journal's
//! events, which is how a resumed run gets its scheduler state back exactly.

use crate::config::{Mode, Params};
use crate::schedule::{Decision, Scheduler};
use crate::trial::{Report, Standing, TrialId, TrialStatus};

/// Standings and the scheduler of one experiment.
#[derive(Debug, Clone)]
pub struct Board {
    metric: String,
    mode: Mode,
    max_epochs: u32,
    scheduler: Scheduler,
    standings: Vec<Standing>,
}

impl Board {
    /// An empty board.
    pub fn new(metric: impl Into<String>, mode: Mode, max_epochs: u32, scheduler: Scheduler) -> Self {
        Board { metric: metric.into(), mode, max_epochs, scheduler, standings: Vec::new() }
    }

    /// Every trial, by id.
    pub fn standings(&self) -> &[Standing] {
        &self.standings
    }

    /// One trial.
    pub fn standing(&self, id: TrialId) -> Option<&Standing> {
        self.standings.get(id.0 as usize)
    }

    /// The experiment metric.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// Its direction.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Records a proposal; ids are dense and in order, so `id` must be the next one.
    pub fn propose(&mut self, id: TrialId, params: Params) -> Result<(), String> {
        if id.0 as usize != self.standings.len() {
            return Err(format!("trial {id} proposed after {} trials: ids must be dense", self.standings.len()));
        }
        self.standings.push(Standing::pending(id, params));
        Ok(())
    }

    /// Marks a trial running.
    pub fn start(&mut self, id: TrialId) {
        if let Some(s) = self.standings.get_mut(id.0 as usize) {
            s.status = TrialStatus::Running;
        }
    }

    /// Records a crash before a restart.
    pub fn restart(&mut self, id: TrialId, restarts: u32, error: String) {
        if let Some(s) = self.standings.get_mut(id.0 as usize) {
            s.restarts = restarts;
            s.error = Some(error);
        }
    }

    /// Records a trial's end; returns its best metric.
    pub fn end(&mut self, id: TrialId, status: TrialStatus, error: Option<String>) -> Option<f64> {
        let s = self.standings.get_mut(id.0 as usize)?;
        s.status = status;
        if error.is_some() {
            s.error = error;
        }
        s.best_metric
    }

    /// Records a report and decides on it.
    pub fn report(&mut self, report: Report) -> Decision {
        let value = report.metric(&self.metric);
        let mode = self.mode;
        let Some(s) = self.standings.get_mut(report.trial.0 as usize) else {
            return Decision::Prune; // never proposed: stop it
        };
        s.epochs = report.epoch;
        s.last_metrics = report.metrics.into_iter().collect();
        match value {
            Some(v) if v.is_finite() => {
                if s.best_metric.is_none_or(|b| mode.score(v) > mode.score(b)) {
                    s.best_metric = Some(v);
                    s.best_epoch = Some(report.epoch);
                }
                self.scheduler.on_report(report.trial, report.epoch, mode.score(v))
            }
            // Not finite: the trial's context ends it as diverged.
            Some(_) => Decision::Continue,
            None if report.epoch >= self.max_epochs => Decision::Complete,
            None => Decision::Continue,
        }
    }
}
