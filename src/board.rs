//! The leaderboard's bookkeeping as pure code: every trial's standing, and
//! the scheduler fed with reports in arrival order. The Leaderboard actor
//! drives a [`Board`] live; journal replay drives one from the journal's
//! events, which is how a resumed run gets its scheduler state back exactly.

use crate::schedule::{Decision, Scheduler};
use crate::space::{Mode, Params};
use crate::trial::{Report, Standing, TrialId, TrialStatus};

/// Standings and the scheduler of one experiment.
#[derive(Debug, Clone)]
pub struct Board {
    metric: String,
    mode: Mode,
    max_epochs: u32,
    scheduler: Scheduler,
    standings: Vec<Standing>,
    rules: StopRules,
    /// Epochs trained across all trials (an epoch re-run after a restart counts once).
    reports: u64,
    /// Why the sweep stops early, once a rule says so.
    stopped: Option<String>,
}

/// When a sweep stops before its trials are all run, decided on reports
/// (the time budget, which no report decides, arrives through [`Board::stop`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StopRules {
    /// Stop once a trial's metric reaches this value (in the experiment's direction).
    pub stop_at: Option<f64>,
    /// Stop once this many epochs were trained across all trials.
    pub epoch_budget: Option<u64>,
}

impl Board {
    /// An empty board.
    pub fn new(metric: impl Into<String>, mode: Mode, max_epochs: u32, scheduler: Scheduler) -> Self {
        Board {
            metric: metric.into(),
            mode,
            max_epochs,
            scheduler,
            standings: Vec::new(),
            rules: StopRules::default(),
            reports: 0,
            stopped: None,
        }
    }

    /// The board with stop rules.
    pub fn with_rules(mut self, rules: StopRules) -> Self {
        self.rules = rules;
        self
    }

    /// Why the sweep stops early, if a rule (or [`Board::stop`]) said so:
    /// no trial is proposed any more, and every report completes its trial.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Stops the sweep early (its time budget is spent).
    pub fn stop(&mut self, reason: impl Into<String>) {
        self.stopped.get_or_insert_with(|| reason.into());
    }

    /// Epochs trained across all trials, each once.
    pub fn reports(&self) -> u64 {
        self.reports
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

    /// Records a report and decides on it; once the sweep is stopped,
    /// every report completes its trial.
    pub fn report(&mut self, report: Report) -> Decision {
        let Some(before) = self.standings.get(report.trial.0 as usize).map(|s| s.epochs) else {
            return Decision::Prune; // never proposed: stop it
        };
        // An epoch trained again after a restart is not a new one.
        self.reports += u64::from(report.epoch > before);
        let value = report.metric(&self.metric).filter(|v| v.is_finite());
        let decision = self.decide(report);
        if self.stopped.is_none() {
            let target = self.rules.stop_at.zip(value).filter(|(t, v)| self.mode.score(*v) >= self.mode.score(*t));
            if let Some((target, v)) = target {
                self.stopped = Some(format!("{} reached {v} (stop_at = {target})", self.metric));
            } else if let Some(budget) = self.rules.epoch_budget.filter(|b| self.reports >= *b) {
                self.stopped = Some(format!("the epoch budget ({budget} epochs) is spent"));
            }
        }
        match decision {
            Decision::Continue if self.stopped.is_some() => Decision::Complete,
            d => d,
        }
    }

    fn decide(&mut self, report: Report) -> Decision {
        let value = report.metric(&self.metric);
        let mode = self.mode;
        let Some(s) = self.standings.get_mut(report.trial.0 as usize) else {
            return Decision::Prune;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report(trial: u32, epoch: u32, value: f64) -> Report {
        Report { trial: TrialId(trial), attempt: 0, epoch, metrics: vec![("acc".into(), value)] }
    }

    fn board(rules: StopRules) -> Board {
        let mut b = Board::new("acc", Mode::Max, 10, Scheduler::Fifo { max_epochs: 10 }).with_rules(rules);
        for i in 0..3 {
            b.propose(TrialId(i), Params::new()).unwrap();
        }
        b
    }

    #[test]
    fn a_target_reached_completes_every_trial_from_then_on() {
        let mut b = board(StopRules { stop_at: Some(0.8), epoch_budget: None });
        assert_eq!(b.report(report(0, 1, 0.5)), Decision::Continue);
        assert_eq!(b.report(report(1, 1, 0.85)), Decision::Complete, "the report that reaches it");
        assert_eq!(b.stopped(), Some("acc reached 0.85 (stop_at = 0.8)"));
        assert_eq!(b.report(report(0, 2, 0.1)), Decision::Complete, "others complete at their next report");
    }

    #[test]
    fn the_epoch_budget_counts_each_epoch_once() {
        let mut b = board(StopRules { stop_at: None, epoch_budget: Some(3) });
        assert_eq!(b.report(report(0, 1, 0.5)), Decision::Continue);
        assert_eq!(b.report(report(0, 2, 0.5)), Decision::Continue);
        assert_eq!(b.report(report(0, 2, 0.5)), Decision::Continue, "a re-run epoch is not a new one");
        assert_eq!(b.reports(), 2);
        assert_eq!(b.report(report(1, 1, 0.5)), Decision::Complete);
        assert!(b.stopped().is_some_and(|s| s.contains("3 epochs")));
        let mut timed = board(StopRules::default());
        timed.stop("the time budget is spent");
        assert_eq!(timed.report(report(2, 1, 0.5)), Decision::Complete);
    }
}
