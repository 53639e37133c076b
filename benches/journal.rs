//! Journal throughput and replay time.
//!
//!     cargo bench --bench journal       (or scripts/bench-journal)
//!
//! 1. Appends: the events of 100,000 trials with 10 reports each (1.3 million
//!    events) from one producer that does not wait, then one final sync:
//!    events per second with group commit (one fdatasync per batch).
//! 2. Acknowledged reports: 16 threads each appending a report and waiting
//!    for its durable acknowledgement before the next (as trials do): events/s.
//! 3. Replay: reading, checking and replaying that journal into a run state.
//! 4. A TPE experiment of 10,000 trials (5 reports each, ASHA) run through
//!    the pure ExperimentState as the leaderboard runs it (every proposal a
//!    real TPE proposal, every decision ASHA's), journalled, then replayed:
//!    replay folds the events and proposes nothing again.
//!
//! Optional: GAUNTLET_BENCH_TRIALS (default 100000); GAUNTLET_BENCH_PHASES=1
//! also times reading, checksumming and decoding the file separately.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::time::Instant;

use gauntlet::config::{ParamValue, Params};
use gauntlet::journal::{self, Event, Journal};
use gauntlet::schedule::Decision;
use gauntlet::{Report, TrialId, TrialStatus};

const CONFIG: &str = r#"
[experiment]
name = "bench"
max_trials = 1000000
[data]
source = "synthetic"
[model]
kind = "mlp"
hidden_units = { int = [16, 512], log = true }
[train]
lr = { loguniform = [1e-4, 1e-1] }
max_epochs = 10
[scheduler]
kind = "asha"
"#;

fn trial_events(id: u32) -> Vec<Event> {
    let id = TrialId(id);
    let mut params = Params::new();
    params.insert("lr".into(), ParamValue::Float(1e-3 * f64::from(id.0 % 100 + 1)));
    params.insert("hidden_units".into(), ParamValue::Int(i64::from(id.0 % 500 + 16)));
    let mut events = vec![
        Event::TrialProposed { id, params },
        Event::TrialStarted { id, attempt: 0, from_epoch: None, worker: None },
    ];
    for epoch in 1..=10 {
        let acc = 0.5 + f64::from((id.0 * 7 + epoch) % 100) / 250.0;
        events.push(Event::Report {
            id,
            attempt: 0,
            epoch,
            metrics: vec![
                ("val_accuracy".into(), acc),
                ("val_loss".into(), 1.0 - acc),
                ("train_loss".into(), 0.9 - acc),
            ],
            decision: Decision::Continue,
            at: None,
        });
    }
    events.push(Event::TrialEnded { id, status: TrialStatus::Completed, error: None });
    events
}

fn main() {
    let trials: u32 = std::env::var("GAUNTLET_BENCH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    // Under target/ (ignored by git): on the project's disk, not a tmpfs, and never committed.
    let dir = tempfile::tempdir_in("target").expect("a temporary directory under target/");
    let path = dir.path().join("journal.msgpack");

    // 1. Appends with group commit.
    let journal = Journal::create(&path).unwrap();
    journal
        .append_durable(Event::ExperimentCreated {
            config_path: Path::new("bench.toml").into(),
            yaml: false,
            config_text: CONFIG.into(),
        })
        .unwrap();
    let started = Instant::now();
    let mut events = 0u64;
    for id in 0..trials {
        for e in trial_events(id) {
            journal.append(e).unwrap();
            events += 1;
        }
    }
    journal.sync().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let stats = journal.stats();
    let syncs = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
    let bytes = std::fs::metadata(&path).unwrap().len();
    println!(
        "append:  {events} events ({trials} trials x 13) in {secs:.2} s = {:.0} events/s; {syncs} fsyncs; {:.1} MB",
        events as f64 / secs,
        bytes as f64 / 1e6
    );
    drop(journal);

    // 2. Reports that wait for durability, 16 at a time.
    let acked = dir.path().join("acked.msgpack");
    let journal = Journal::create(&acked).unwrap();
    let per_thread = 2_000u32;
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..16u32 {
            let journal = journal.clone();
            s.spawn(move || {
                let (tx, rx) = crossbeam_channel::bounded(1);
                for epoch in 1..=per_thread {
                    let event = Event::Report {
                        id: TrialId(t),
                        attempt: 0,
                        epoch,
                        metrics: vec![("val_accuracy".into(), 0.5)],
                        decision: Decision::Continue,
                        at: None,
                    };
                    journal.append_then_reply(event, tx.clone(), Decision::Continue).unwrap();
                    rx.recv().unwrap();
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let syncs = journal.stats().syncs.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "acked:   {} reports from 16 waiting threads in {secs:.2} s = {:.0} events/s; {syncs} fsyncs",
        16 * per_thread,
        f64::from(16 * per_thread) / secs
    );
    drop(journal);

    // 3. Replay.
    if std::env::var("GAUNTLET_BENCH_PHASES").is_ok() {
        let t = Instant::now();
        let bytes = std::fs::read(&path).unwrap();
        let read = t.elapsed().as_secs_f64();
        let crc = crc32fast::hash(&bytes);
        let hashed = t.elapsed().as_secs_f64();
        let c = journal::decode(&bytes, &path).unwrap();
        println!(
            "phases: read {read:.2} s, crc {:.2} s, decode {:.2} s ({crc} {})",
            hashed - read,
            t.elapsed().as_secs_f64() - hashed,
            c.records.len()
        );
    }
    let started = Instant::now();
    let contents = journal::read(&path).unwrap();
    let read = started.elapsed().as_secs_f64();
    let state = journal::replay(contents.records, &path).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(state.trials().len(), trials as usize);
    println!(
        "replay:  {} events, {} trials in {secs:.2} s (read and check {read:.2} s, rebuild {:.2} s)",
        state.events,
        state.trials().len(),
        secs - read
    );

    tpe_journal(dir.path());
}

const TPE_CONFIG: &str = r#"
[experiment]
name = "bench-tpe"
max_trials = 10000
[data]
source = "synthetic"
[model]
kind = "mlp"
hidden_units = { int = [16, 512], log = true }
dropout = { uniform = [0.0, 0.5] }
[train]
lr = { loguniform = [1e-4, 1e-1] }
momentum = { uniform = [0.0, 0.99] }
batch_size = { choice = [32, 64, 128, 256] }
max_epochs = 5
[search]
algorithm = "tpe"
[scheduler]
kind = "asha"
"#;

fn tpe_journal(dir: &Path) {
    let trials: u32 = std::env::var("GAUNTLET_BENCH_TPE_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let path = dir.join("tpe.msgpack");
    let journal = Journal::create(&path).unwrap();
    let created = Event::ExperimentCreated {
        config_path: Path::new("tpe.toml").into(),
        yaml: false,
        config_text: TPE_CONFIG.into(),
    };
    journal.append(created.clone()).unwrap();
    let config = match &created {
        Event::ExperimentCreated { config_text, .. } => {
            gauntlet::Config::parse(config_text, gauntlet::config::ConfigFormat::Toml, Path::new("tpe.toml")).unwrap()
        }
        _ => unreachable!(),
    };
    let mut state = config.initial_state();
    let started = Instant::now();
    let record = |state: &mut gauntlet::ExperimentState, event: Event| {
        state.apply(&event).unwrap();
        journal.append(event).unwrap();
    };
    for _ in 0..trials.min(config.experiment.max_trials) {
        let Some(proposed) = state.propose() else { break };
        let Event::TrialProposed { id, ref params } = proposed else { unreachable!() };
        // A smooth function of the parameters, so that TPE has something to learn.
        let lr = params["lr"].as_f64().unwrap();
        let quality = 0.9 - 0.1 * (lr.log10() + 2.5).abs() - 0.2 * params["dropout"].as_f64().unwrap();
        record(&mut state, proposed);
        record(&mut state, Event::TrialStarted { id, attempt: 0, from_epoch: None, worker: None });
        let mut status = TrialStatus::Completed;
        for epoch in 1..=5 {
            let acc = quality * (0.6 + 0.08 * f64::from(epoch));
            let report = Report { trial: id, attempt: 0, epoch, metrics: vec![("val_accuracy".into(), acc)] };
            let (event, _) = state.report(report);
            journal.append(event.clone()).unwrap();
            match event {
                Event::Report { decision: Decision::Prune, .. } => {
                    status = TrialStatus::Pruned;
                    break;
                }
                Event::Report { decision: Decision::Complete, .. } => break,
                _ => {}
            }
        }
        record(&mut state, Event::TrialEnded { id, status, error: None });
    }
    journal.sync().unwrap();
    let live = started.elapsed().as_secs_f64();
    drop(journal);
    let started = Instant::now();
    let contents = journal::read(&path).unwrap();
    let replayed = journal::replay(contents.records, &path).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(replayed.trials(), state.trials(), "replay gives the live state");
    println!(
        "tpe:     {} trials ({} events) proposed and decided live in {live:.2} s ({:.0} us a trial); replayed in {secs:.2} s",
        state.trials().len(),
        replayed.events,
        live * 1e6 / f64::from(trials)
    );
}
