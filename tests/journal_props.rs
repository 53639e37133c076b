//! Property tests of the journal format: whatever events are written, reading
//! gives them back; a file cut at any byte reads as a prefix of them, and a
//! damaged file reads as a prefix or fails with an offset — never a panic.

use std::path::Path;

use gauntlet::config::{ParamValue, Params};
use gauntlet::journal::{decode, encode_frame, header, Event, JournalError, Record};
use gauntlet::schedule::Decision;
use gauntlet::{TrialId, TrialStatus};
use proptest::prelude::*;

fn event() -> impl Strategy<Value = Event> {
    let id = (0u32..50).prop_map(TrialId);
    prop_oneof![
        (id.clone(), -1e6f64..1e6, "[a-z]{1,8}").prop_map(|(id, lr, name)| {
            let mut params = Params::new();
            params.insert("lr".into(), ParamValue::Float(lr));
            params.insert("name".into(), ParamValue::Str(name));
            Event::TrialProposed { id, params }
        }),
        (id.clone(), 0u32..5, proptest::option::of(0u32..100))
            .prop_map(|(id, attempt, from_epoch)| Event::TrialStarted { id, attempt, from_epoch, worker: None }),
        (id.clone(), 0u32..5, 1u32..100, proptest::collection::vec(("[a-z_]{1,12}", any::<f64>()), 0..4), 0u8..3)
            .prop_map(|(id, attempt, epoch, metrics, d)| Event::Report {
                id,
                attempt,
                epoch,
                metrics,
                decision: [Decision::Continue, Decision::Prune, Decision::Complete][d as usize].clone(),
                at: None,
            }),
        (id.clone(), 1u32..100).prop_map(|(id, epoch)| Event::CheckpointWritten { id, epoch }),
        (id.clone(), 1u32..9, ".{0,40}").prop_map(|(id, restarts, error)| Event::TrialRestarted {
            id,
            restarts,
            error
        }),
        (id, proptest::option::of(".{0,40}")).prop_map(|(id, error)| Event::TrialEnded {
            id,
            status: TrialStatus::Failed,
            error
        }),
        any::<bool>().prop_map(|finished| Event::SweepStopped { finished }),
        Just(Event::SweepResumed),
    ]
}

fn file(events: &[Event]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = header();
    let mut ends = Vec::new();
    for (i, e) in events.iter().enumerate() {
        encode_frame(&Record { at_ms: i as u64, event: e.clone() }, &mut bytes);
        ends.push(bytes.len());
    }
    (bytes, ends)
}

/// NaN != NaN: compare records through their encoding.
fn same(a: &[Record], b: &[Event]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(r, e)| rmp_serde::to_vec_named(&r.event).unwrap() == rmp_serde::to_vec_named(e).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn written_events_read_back(events in proptest::collection::vec(event(), 0..40)) {
        let (bytes, _) = file(&events);
        let c = decode(&bytes, Path::new("j")).unwrap();
        prop_assert!(same(&c.records, &events));
        prop_assert_eq!(c.valid_len as usize, bytes.len());
        prop_assert_eq!(c.torn_bytes, 0);
    }

    #[test]
    fn a_cut_at_any_byte_reads_as_a_prefix(events in proptest::collection::vec(event(), 1..20), cut in any::<prop::sample::Index>()) {
        let (bytes, ends) = file(&events);
        let cut = cut.index(bytes.len() + 1);
        let c = decode(&bytes[..cut], Path::new("j")).unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        prop_assert!(same(&c.records, &events[..whole]));
        prop_assert_eq!(c.valid_len as usize + c.torn_bytes as usize, cut);
    }

    #[test]
    fn damage_reads_as_a_prefix_or_names_an_offset(
        events in proptest::collection::vec(event(), 1..20),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let (mut bytes, ends) = file(&events);
        let at = 12 + at.index(bytes.len() - 12);
        bytes[at] ^= flip;
        match decode(&bytes, Path::new("j")) {
            Ok(c) => {
                // A damaged length can make the rest look like a torn tail.
                let frame = ends.iter().position(|&e| e > at).unwrap();
                prop_assert!(same(&c.records, &events[..frame]));
            }
            Err(JournalError::Corrupt { offset, .. }) => {
                let start = ends.iter().rev().find(|&&e| e <= at).copied().unwrap_or(12);
                prop_assert_eq!(offset as usize, start);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}
