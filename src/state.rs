//! One experiment's state as pure code: the trial table, the searcher, the
//! scheduler, the stop rules and what was spent, folded from the
//! experiment's events by [`ExperimentState::apply`].
//!
//! The live leaderboard and journal replay call the same `apply`; a resumed
//! run *is* a replay, so it never proposes or decides anything again: the
//! proposals and decisions are in the events. The two things only the live
//! side does are asking the searcher for a proposal ([`ExperimentState::propose`],
//! whose event the caller journals and applies) and asking the scheduler for
//! a decision ([`ExperimentState::report`], which folds the report like
//! `apply` does and returns the event to journal). What an event asks the
//! actors to do comes back as [`Effect`]s.
//!
//! No clocks, no I/O, no actors: time arrives inside events.

use crate::event::Event;
use crate::schedule::{Decision, Scheduler, View};
use crate::search::Searcher;
use crate::space::{Mode, SearchSpace};
use crate::trial::{divergence, Lineage, Report, Stamp, Trial, TrialId, TrialStatus};

/// When a sweep stops before its trials are all run, decided on reports
/// (the time budget, which no report decides, arrives as
/// [`Event::BudgetSpent`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StopRules {
    /// Stop once a trial's metric reaches this value (in the experiment's direction).
    pub stop_at: Option<f64>,
    /// Stop once this many epochs were trained across all trials.
    pub epoch_budget: Option<u64>,
}

/// What an event asks of the actors that carry the experiment.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A stop rule fired: propose nothing more; running trials complete at
    /// their next report.
    Stop(String),
    /// The trial ended pruned, failed or diverged: once its end is durable,
    /// its checkpoints but the best may go.
    Trim(TrialId),
    /// A trial will copy this checkpoint of `donor`: keep it until then.
    Pin {
        /// The donor.
        donor: TrialId,
        /// The checkpoint's epoch.
        epoch: u32,
    },
    /// The copy of this checkpoint was made (or will never be): it may go.
    Unpin {
        /// The donor.
        donor: TrialId,
        /// The checkpoint's epoch.
        epoch: u32,
    },
}

/// The experiment's state.
#[derive(Debug, Clone)]
pub struct ExperimentState {
    metric: String,
    mode: Mode,
    max_epochs: u32,
    max_trials: u32,
    space: SearchSpace,
    searcher: Searcher,
    scheduler: Scheduler,
    rules: StopRules,
    trials: Vec<Trial>,
    /// Epochs trained across all trials (an epoch re-run after a restart counts once).
    epochs_trained: u64,
    /// Why the sweep stops early, once a rule says so.
    stopped: Option<String>,
    /// The sweep stopped with its budget spent.
    finished: bool,
}

/// What an experiment is made of, before any event.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The metric to optimise.
    pub metric: String,
    /// Its direction.
    pub mode: Mode,
    /// The epoch budget of one trial.
    pub max_epochs: u32,
    /// The number of trials.
    pub max_trials: u32,
    /// The search space.
    pub space: SearchSpace,
    /// The searcher, at its start.
    pub searcher: Searcher,
    /// The scheduler, at its start.
    pub scheduler: Scheduler,
    /// The stop rules.
    pub rules: StopRules,
}

impl ExperimentState {
    /// The state before the first trial.
    pub fn new(setup: Setup) -> Self {
        ExperimentState {
            metric: setup.metric,
            mode: setup.mode,
            max_epochs: setup.max_epochs,
            max_trials: setup.max_trials,
            space: setup.space,
            searcher: setup.searcher,
            scheduler: setup.scheduler,
            rules: setup.rules,
            trials: Vec::new(),
            epochs_trained: 0,
            stopped: None,
            finished: false,
        }
    }

    /// Every trial, by id.
    pub fn trials(&self) -> &[Trial] {
        &self.trials
    }

    /// One trial.
    pub fn trial(&self, id: TrialId) -> Option<&Trial> {
        self.trials.get(id.0 as usize)
    }

    /// Trials that must still run: proposed or started, with no final status.
    pub fn unfinished(&self) -> impl Iterator<Item = &Trial> {
        self.trials.iter().filter(|t| !t.status.is_final())
    }

    /// Unfinished trials that continue as soon as a run (re)starts: all but
    /// those waiting for the scheduler to promote them.
    pub fn to_continue(&self) -> impl Iterator<Item = &Trial> {
        self.unfinished().filter(|t| !t.waiting)
    }

    /// The experiment metric.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// Its direction.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the sweep stops early, if a rule said so: nothing is proposed
    /// any more, and every report completes its trial.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Whether the sweep stopped with its budget spent.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Epochs trained across all trials, each once.
    pub fn epochs_trained(&self) -> u64 {
        self.epochs_trained
    }

    /// Whether no trial will be proposed any more (the trial budget, the
    /// space or a stop rule).
    pub fn proposals_over(&self) -> bool {
        self.searcher.is_exhausted() || self.stopped.is_some() || self.trials.len() >= self.max_trials as usize
    }

    /// What a free slot runs next: a paused trial the scheduler promotes
    /// ([`Event::TrialResumed`]), else a new proposal ([`Event::TrialProposed`]);
    /// the event for the caller to journal and [`apply`](Self::apply), or
    /// `None` when there is nothing to run now.
    pub fn next_trial(&mut self) -> Option<Event> {
        match self.promotable() {
            Some(id) => Some(Event::TrialResumed { id }),
            None => self.propose(),
        }
    }

    /// The paused trial the scheduler promotes now, if any (none once a
    /// stop rule has spoken).
    fn promotable(&self) -> Option<TrialId> {
        if self.stopped.is_some() {
            return None;
        }
        // The rungs are final once no trial will be proposed and every unfinished one
        // waits at a rung: none is on its way to a rung where it could outrank another.
        let final_rungs = self.proposals_over() && self.unfinished().all(|t| t.waiting);
        let view = View { trials: &self.trials, metric: &self.metric, mode: self.mode, space: &self.space };
        self.scheduler.promotable(&view, final_rungs)
    }

    /// Trials still waiting for a promotion when nothing more will run: they
    /// end as pruned (the scheduler did not keep them). The ends, for the
    /// caller to journal and apply.
    pub fn end_waiting(&self) -> Vec<Event> {
        self.trials
            .iter()
            .filter(|t| t.waiting && !t.status.is_final())
            .map(|t| Event::TrialEnded { id: t.id, status: TrialStatus::Pruned, error: None })
            .collect()
    }

    /// Asks the searcher for the next trial: the proposal as an event for
    /// the caller to journal and [`apply`](Self::apply), or `None` when no
    /// trial is to be proposed any more.
    pub fn propose(&mut self) -> Option<Event> {
        if self.proposals_over() {
            return None;
        }
        // A grid runs dry exactly when it says so, which `proposals_over` asks first.
        let params = self.searcher.propose(&self.space, &self.trials, self.mode)?;
        Some(Event::TrialProposed { id: TrialId(self.trials.len() as u32), params })
    }

    /// Folds a live report and decides on it: the event to journal (with the
    /// decision) and the effects. Replaying that event through
    /// [`apply`](Self::apply) gives the same state.
    pub fn report(&mut self, report: Report) -> (Event, Vec<Effect>) {
        self.report_at(report, None)
    }

    /// [`report`](Self::report), received at `at`.
    pub fn report_at(&mut self, report: Report, at: Option<Stamp>) -> (Event, Vec<Effect>) {
        let (decision, effects) = self.fold_report(&report, None, at);
        let Report { trial, attempt, epoch, metrics } = report;
        (Event::Report { id: trial, attempt, epoch, metrics, decision, at }, effects)
    }

    /// Folds one event.
    pub fn apply(&mut self, event: &Event) -> Result<Vec<Effect>, String> {
        let mut effects = Vec::new();
        match event {
            Event::ExperimentCreated { .. } => return Err("a second experiment-created event".into()),
            Event::TrialProposed { id, params } => {
                if id.0 as usize != self.trials.len() {
                    return Err(format!("trial {id} proposed after {} trials: ids must be dense", self.trials.len()));
                }
                self.trials.push(Trial::pending(*id, params.clone()));
                // The searcher continues after the proposals made.
                self.searcher.skip_to(self.trials.len() as u64);
            }
            Event::TrialStarted { id, attempt, .. } => {
                let t = self.known(*id)?;
                t.attempts = t.attempts.max(attempt.saturating_add(1));
                t.status = TrialStatus::Running;
                // An exploiting trial starts from its copy of the donor's checkpoint.
                if let Some(e) = t.exploit.take() {
                    effects.push(Effect::Unpin { donor: e.donor, epoch: e.epoch });
                }
            }
            // Back to pending until its next start; nothing to count.
            Event::TrialPreempted { id, .. } => drop(self.known(*id)?),
            Event::TrialResumed { id } => {
                let t = self.known(*id)?;
                if !t.waiting {
                    return Err(format!("trial {id} resumed without waiting"));
                }
                t.waiting = false;
                self.scheduler.promoted(*id);
            }
            Event::TrialRestarted { id, restarts, error } => {
                let t = self.known(*id)?;
                t.restarts = *restarts;
                t.error = Some(error.clone());
            }
            Event::Report { id, attempt, epoch, metrics, decision, at } => {
                self.known(*id)?;
                let report = Report { trial: *id, attempt: *attempt, epoch: *epoch, metrics: metrics.clone() };
                effects = self.fold_report(&report, Some(decision), *at).1;
            }
            Event::CheckpointWritten { id, epoch } => self.known(*id)?.last_checkpoint = Some(*epoch),
            Event::TrialEnded { id, status, error } => {
                let t = self.known(*id)?;
                t.status = *status;
                if error.is_some() {
                    t.error = error.clone();
                }
                if status.is_final() {
                    if let Some(e) = t.exploit.take() {
                        effects.push(Effect::Unpin { donor: e.donor, epoch: e.epoch });
                    }
                }
                if matches!(status, TrialStatus::Pruned | TrialStatus::Failed | TrialStatus::Diverged) {
                    effects.push(Effect::Trim(*id));
                }
            }
            Event::SweepStopped { finished } => self.finished = *finished,
            Event::SweepResumed => {}
            Event::BudgetSpent { reason } => {
                if self.stopped.is_none() {
                    self.stopped = Some(reason.clone());
                    effects.push(Effect::Stop(reason.clone()));
                }
            }
        }
        Ok(effects)
    }

    /// Trials whose last report ended them (divergence first, as the trial's
    /// own context decides, then the scheduler's stop) although no end
    /// followed: the run died in between. Ends them as the live run would
    /// have and returns the ends, for the caller to journal.
    pub fn end_decided(&mut self) -> Vec<Event> {
        let mut ends = Vec::new();
        for t in self.trials.iter().filter(|t| !t.status.is_final()) {
            let end = match (&t.diverged, &t.last_decision) {
                (Some(why), _) => Some((TrialStatus::Diverged, Some(why.clone()))),
                (None, Some(Decision::Prune)) => Some((TrialStatus::Pruned, None)),
                (None, Some(Decision::Complete)) => Some((TrialStatus::Completed, None)),
                // Paused by the scheduler: it waits (not "running") for its promotion.
                (None, Some(Decision::Pause)) if t.waiting && t.status != TrialStatus::Paused => {
                    Some((TrialStatus::Paused, None))
                }
                _ => None,
            };
            if let Some((status, error)) = end {
                ends.push(Event::TrialEnded { id: t.id, status, error });
            }
        }
        for e in &ends {
            // Known trials, a final status: cannot fail.
            let _ = self.apply(e);
        }
        ends
    }

    fn known(&mut self, id: TrialId) -> Result<&mut Trial, String> {
        self.trials.get_mut(id.0 as usize).ok_or_else(|| format!("trial {id} was never proposed"))
    }

    /// Records a report; decides on it unless the decision is `recorded`
    /// (replay). Once the sweep is stopped, every report completes its trial.
    fn fold_report(
        &mut self,
        report: &Report,
        recorded: Option<&Decision>,
        at: Option<Stamp>,
    ) -> (Decision, Vec<Effect>) {
        let mut effects = Vec::new();
        let (metric, mode, max_epochs) = (self.metric.clone(), self.mode, self.max_epochs);
        let Some(t) = self.trials.get_mut(report.trial.0 as usize) else {
            return (Decision::Prune, effects); // never proposed: stop it
        };
        // An epoch trained again after a restart is not a new one; a report
        // that skips epochs (a program's own numbering) trained those too.
        self.epochs_trained += u64::from(report.epoch.saturating_sub(t.epochs));
        t.diverged = divergence(&report.metrics, &metric, report.epoch);
        t.epochs = report.epoch;
        t.last_report = at;
        t.last_metrics = report.metrics.iter().cloned().collect();
        let value = report.metric(&metric);
        let finite = value.filter(|v| v.is_finite());
        if let Some(v) = finite {
            if t.best_metric.is_none_or(|b| mode.score(v) > mode.score(b)) {
                t.best_metric = Some(v);
                t.best_epoch = Some(report.epoch);
            }
        }
        let decided = match value {
            Some(v) if v.is_finite() => {
                let view = View { trials: &self.trials, metric: &self.metric, mode, space: &self.space };
                self.scheduler.on_report(&view, report.trial, report.epoch, mode.score(v))
            }
            // Not finite: the trial's context ends it as diverged.
            Some(_) => Decision::Continue,
            None if report.epoch >= max_epochs => Decision::Complete,
            None => Decision::Continue,
        };
        if self.stopped.is_none() {
            let target = self.rules.stop_at.zip(finite).filter(|(t, v)| mode.score(*v) >= mode.score(*t));
            let reason = if let Some((target, v)) = target {
                Some(format!("{metric} reached {v} (stop_at = {target})"))
            } else {
                self.rules
                    .epoch_budget
                    .filter(|b| self.epochs_trained >= *b)
                    .map(|budget| format!("the epoch budget ({budget} epochs) is spent"))
            };
            if let Some(reason) = reason {
                self.stopped = Some(reason.clone());
                effects.push(Effect::Stop(reason));
            }
        }
        let decision = match recorded {
            Some(d) => d.clone(),
            None if self.stopped.is_some()
                && matches!(decided, Decision::Continue | Decision::Exploit(_) | Decision::Pause) =>
            {
                Decision::Complete
            }
            None => decided,
        };
        let t = &mut self.trials[report.trial.0 as usize];
        if let Decision::Exploit(e) = &decision {
            t.lineage.push(Lineage {
                at_epoch: report.epoch,
                donor: e.donor,
                donor_epoch: e.epoch,
                old_params: t.params.clone(),
                new_params: e.params.clone(),
                old_best: t.best_metric.zip(t.best_epoch),
            });
            // Its best so far belongs to the history it leaves (whose checkpoints
            // go): neither `best/` nor TPE may pair it with the new parameters.
            t.best_metric = None;
            t.best_epoch = None;
            t.params = e.params.clone();
            self.searcher.params_changed(t.id);
            // It continues from the donor's epoch, from its copy of the donor's checkpoint.
            t.epochs = e.epoch;
            t.last_checkpoint = Some(e.epoch);
            t.exploit = Some(e.clone());
            effects.push(Effect::Pin { donor: e.donor, epoch: e.epoch });
        }
        t.waiting = decision == Decision::Pause;
        t.last_decision = Some(decision.clone());
        (decision, effects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Exploit, SchedulerConfig};
    use crate::search::SearchConfig;
    use crate::space::{Domain, ParamValue, Params};

    fn report(trial: u32, epoch: u32, value: f64) -> Report {
        Report { trial: TrialId(trial), attempt: 0, epoch, metrics: vec![("acc".into(), value)] }
    }

    fn state(rules: StopRules) -> ExperimentState {
        let space = SearchSpace::new().with("x", Domain::Uniform { low: 0.0, high: 1.0 });
        let mut s = ExperimentState::new(Setup {
            metric: "acc".into(),
            mode: Mode::Max,
            max_epochs: 10,
            max_trials: 3,
            searcher: Searcher::new(&SearchConfig::default(), &space, 1),
            scheduler: Scheduler::new(&SchedulerConfig::default(), 10, 1, &space),
            space,
            rules,
        });
        while let Some(e) = s.propose() {
            s.apply(&e).unwrap();
        }
        s
    }

    #[test]
    fn proposals_stop_at_the_trial_budget_and_replay_continues_the_searcher() {
        let s = state(StopRules::default());
        assert_eq!(s.trials().len(), 3);
        assert!(s.proposals_over());
        // The same events applied to a fresh state give the same trials.
        let mut replayed = state(StopRules::default());
        replayed.trials.clear();
        for t in s.trials() {
            replayed.apply(&Event::TrialProposed { id: t.id, params: t.params.clone() }).unwrap();
        }
        assert_eq!(replayed.trials(), s.trials());
        assert!(replayed
            .apply(&Event::TrialStarted { id: TrialId(9), attempt: 0, from_epoch: None, worker: None })
            .is_err());
    }

    #[test]
    fn a_target_reached_completes_every_trial_from_then_on() {
        let mut s = state(StopRules { stop_at: Some(0.8), epoch_budget: None });
        assert!(matches!(s.report(report(0, 1, 0.5)), (Event::Report { decision: Decision::Continue, .. }, _)));
        let (event, effects) = s.report(report(1, 1, 0.85));
        assert!(matches!(event, Event::Report { decision: Decision::Complete, .. }), "the report that reaches it");
        assert_eq!(effects, vec![Effect::Stop("acc reached 0.85 (stop_at = 0.8)".into())]);
        assert!(matches!(s.report(report(0, 2, 0.1)).0, Event::Report { decision: Decision::Complete, .. }));
    }

    #[test]
    fn the_epoch_budget_counts_each_epoch_once() {
        let mut s = state(StopRules { stop_at: None, epoch_budget: Some(3) });
        s.report(report(0, 1, 0.5));
        s.report(report(0, 2, 0.5));
        s.report(report(0, 2, 0.5)); // a re-run epoch is not a new one
        assert_eq!(s.epochs_trained(), 2);
        let (event, effects) = s.report(report(1, 1, 0.5));
        assert!(matches!(event, Event::Report { decision: Decision::Complete, .. }));
        assert!(matches!(&effects[..], [Effect::Stop(r)] if r.contains("3 epochs")));
        // A report that skips epochs trained them: 1 then 5 is five epochs.
        let mut skips = state(StopRules { stop_at: None, epoch_budget: Some(50) });
        skips.report(report(0, 1, 0.5));
        skips.report(report(0, 5, 0.5));
        assert_eq!(skips.epochs_trained(), 5);
        let mut timed = state(StopRules::default());
        timed.apply(&Event::BudgetSpent { reason: "the time budget is spent".into() }).unwrap();
        assert!(matches!(timed.report(report(2, 1, 0.5)).0, Event::Report { decision: Decision::Complete, .. }));
    }

    #[test]
    fn an_exploit_records_lineage_pins_the_donor_until_the_start() {
        let mut s = state(StopRules::default());
        let params: Params = [("x".to_owned(), ParamValue::Float(0.25))].into_iter().collect();
        let decision = Decision::Exploit(Exploit { donor: TrialId(1), epoch: 3, params: params.clone() });
        let old = s.trial(TrialId(0)).unwrap().params.clone();
        s.report(report(0, 2, 0.9));
        let event = Event::Report {
            id: TrialId(0),
            attempt: 0,
            epoch: 4,
            metrics: vec![("acc".into(), 0.1)],
            decision,
            at: None,
        };
        assert_eq!(s.apply(&event).unwrap(), vec![Effect::Pin { donor: TrialId(1), epoch: 3 }]);
        let t = s.trial(TrialId(0)).unwrap();
        assert_eq!((t.epochs, t.last_checkpoint, &t.params), (3, Some(3), &params), "continues at the donor's epoch");
        assert_eq!(t.lineage[0].old_params, old);
        assert_eq!(t.lineage[0].old_best, Some((0.9, 2)), "the best of the history it left");
        assert_eq!((t.best_metric, t.best_epoch), (None, None), "no best of its own yet on the donor's weights");
        assert_eq!(s.end_decided(), vec![], "an exploited trial goes on");
        let started = Event::TrialStarted { id: TrialId(0), attempt: 1, from_epoch: Some(3), worker: None };
        assert_eq!(s.apply(&started).unwrap(), vec![Effect::Unpin { donor: TrialId(1), epoch: 3 }]);
        assert!(s.trial(TrialId(0)).unwrap().exploit.is_none());
        s.report(report(0, 4, 0.5));
        let t = s.trial(TrialId(0)).unwrap();
        assert_eq!((t.best_metric, t.best_epoch), (Some(0.5), Some(4)), "its best from the new start");
    }
}
