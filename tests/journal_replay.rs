//! Replay as a property: any sequence of trial lifecycles, interleaved at
//! random, written to a journal and replayed, gives the standings that the
//! same events give when applied live; and a journal cut at any byte replays
//! (a prefix of the run) or fails with an error, never a panic.

use std::path::Path;

use gauntlet::config::{Config, ParamValue, Params};
use gauntlet::journal::{decode, encode_frame, header, replay, Event, Record};
use gauntlet::schedule::Decision;
use gauntlet::ExperimentState;
use gauntlet::{Report, TrialId, TrialStatus};
use proptest::prelude::*;

const CONFIG: &str = r#"
[experiment]
name = "prop"
max_trials = 100
[data]
source = "synthetic"
[model]
kind = "mlp"
[train]
max_epochs = 9
[scheduler]
kind = "asha"
"#;

/// One trial's life: how many epochs it reports, and how it ends.
#[derive(Debug, Clone)]
struct Life {
    epochs: u32,
    restart_at: Option<u32>,
    end: Option<TrialStatus>,
    scores: Vec<f64>,
}

fn life() -> impl Strategy<Value = Life> {
    (0u32..9, proptest::option::of(1u32..9), 0u8..5, proptest::collection::vec(0.0f64..1.0, 9)).prop_map(
        |(epochs, restart_at, end, scores)| Life {
            epochs,
            restart_at,
            end: [
                None,
                Some(TrialStatus::Completed),
                Some(TrialStatus::Pruned),
                Some(TrialStatus::Failed),
                Some(TrialStatus::Paused),
            ][end as usize],
            scores,
        },
    )
}

/// Each trial's events in order; then interleaved by `order` (trial picks).
fn events(lives: &[Life], order: &[usize]) -> Vec<Event> {
    let mut queues: Vec<Vec<Event>> = lives
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let id = TrialId(i as u32);
            let mut params = Params::new();
            params.insert("lr".into(), ParamValue::Float(l.scores[0]));
            let mut q = vec![Event::TrialStarted { id, attempt: 0, from_epoch: None, worker: None }];
            for epoch in 1..=l.epochs {
                q.push(Event::Report {
                    id,
                    attempt: u32::from(l.restart_at.is_some_and(|r| r < epoch)),
                    epoch,
                    metrics: vec![("val_accuracy".into(), l.scores[epoch as usize - 1])],
                    decision: Decision::Continue,
                    at: None,
                });
                q.push(Event::CheckpointWritten { id, epoch });
                if l.restart_at == Some(epoch) {
                    q.push(Event::TrialRestarted { id, restarts: 1, error: "boom".into() });
                    q.push(Event::TrialStarted { id, attempt: 1, from_epoch: Some(epoch), worker: None });
                }
            }
            if let Some(status) = l.end {
                q.push(Event::TrialEnded { id, status, error: None });
            }
            q.reverse();
            q
        })
        .collect();
    // Proposals come in id order, each before its trial's other events.
    let mut out = Vec::new();
    let mut proposed = 0;
    let mut propose_up_to = |i: usize, out: &mut Vec<Event>| {
        while proposed <= i {
            let mut params = Params::new();
            params.insert("lr".into(), ParamValue::Float(lives[proposed].scores[0]));
            out.push(Event::TrialProposed { id: TrialId(proposed as u32), params });
            proposed += 1;
        }
    };
    for &pick in order {
        let i = pick % lives.len();
        propose_up_to(i, &mut out);
        out.extend(queues[i].pop());
    }
    for (i, queue) in queues.iter_mut().enumerate() {
        propose_up_to(i, &mut out);
        while let Some(e) = queue.pop() {
            out.push(e);
        }
    }
    out
}

/// The same events applied live, as the leaderboard does: reports decided
/// afresh (`report`), every other event folded (`apply`).
fn live(events: &[Event]) -> ExperimentState {
    let config = Config::parse(CONFIG, gauntlet::config::ConfigFormat::Toml, Path::new("prop.toml")).unwrap();
    let mut state = config.initial_state();
    for e in events {
        match e.clone() {
            Event::Report { id, attempt, epoch, metrics, .. } => {
                state.report(Report { trial: id, attempt, epoch, metrics });
            }
            other => drop(state.apply(&other).unwrap()),
        }
    }
    state
}

fn journal(events: &[Event]) -> Vec<u8> {
    let mut bytes = header();
    let created = Event::ExperimentCreated { config_path: "prop.toml".into(), yaml: false, config_text: CONFIG.into() };
    for (i, e) in std::iter::once(created).chain(events.iter().cloned()).enumerate() {
        encode_frame(&Record { at_ms: i as u64, event: e }, &mut bytes);
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn replay_gives_the_live_standings(
        lives in proptest::collection::vec(life(), 1..8),
        order in proptest::collection::vec(0usize..8, 0..80),
    ) {
        let events = events(&lives, &order);
        let bytes = journal(&events);
        let contents = decode(&bytes, Path::new("j")).unwrap();
        let state = replay(contents.records, Path::new("j")).unwrap();
        let live = live(&events);
        prop_assert_eq!(state.trials().len(), lives.len());
        for (replayed, live) in state.trials().iter().zip(live.trials()) {
            prop_assert_eq!(replayed.params.clone(), live.params.clone());
            prop_assert_eq!(replayed.epochs, live.epochs);
            prop_assert_eq!(replayed.best_metric, live.best_metric);
            prop_assert_eq!(replayed.restarts, live.restarts);
            // Replay may only finish what the live decisions finished.
            if replayed.status != live.status {
                prop_assert!(replayed.status.is_final() && !live.status.is_final());
            }
        }
        // Unfinished trials are exactly those without a final status.
        let unfinished = state.unfinished().len();
        prop_assert_eq!(unfinished, state.trials().iter().filter(|s| !s.status.is_final()).count());
    }

    #[test]
    fn a_journal_cut_anywhere_replays_or_fails_cleanly(
        lives in proptest::collection::vec(life(), 1..5),
        order in proptest::collection::vec(0usize..5, 0..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = journal(&events(&lives, &order));
        let cut = cut.index(bytes.len() + 1);
        if let Ok(contents) = decode(&bytes[..cut], Path::new("j")) {
            let _ = replay(contents.records, Path::new("j")); // Ok, or NoConfig for a cut header
        }
    }
}
