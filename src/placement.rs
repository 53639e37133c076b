//! Placement: which waiting trial gets which free slot, when several
//! experiments share one pool of workers. A pure policy: the pool actor
//! asks it, then performs the answer.
//!
//! The rule, applied one slot at a time:
//! 1. An experiment may place a trial only while it has one waiting, runs
//!    fewer than its `cap` (its `concurrency`), and some worker with a free
//!    slot has loaded it.
//! 2. Of those, the highest `priority` goes first.
//! 3. Among equal priorities, the one served longest ago goes first (in
//!    turn: round robin); never served counts as longest ago, ties by key.
//! 4. The trial goes to the worker, of those that loaded the experiment,
//!    with the most free slots (ties by the worker's name): trials spread
//!    over workers.
//!
//! So the slots in use never exceed the slots there are, an experiment
//! never runs more than its cap, and a change of cap applies at the next
//! placement (trials running over a lowered cap finish; none are stopped).

/// An experiment's side of a placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    /// Trials waiting for a slot.
    pub waiting: usize,
    /// Trials on slots now.
    pub running: u32,
    /// The most it may run at once.
    pub cap: u32,
    /// Higher goes first.
    pub priority: i32,
    /// When it was last given a slot (a placement counter; 0: never).
    pub last_served: u64,
}

/// A worker's side: its free slots and which experiments it can train.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer<K> {
    /// Slots free now.
    pub free: u32,
    /// The experiments it loaded (ready to train).
    pub serves: Vec<K>,
}

/// The next placement: `(experiment, worker)` as indexes into `demands`
/// and `offers`, or `None` when no waiting trial can go anywhere.
/// `demands[i].0` is the experiment's key.
pub fn next<K: PartialEq + Ord>(demands: &[(K, Demand)], offers: &[Offer<K>]) -> Option<(usize, usize)> {
    let best_worker = |key: &K| {
        offers
            .iter()
            .enumerate()
            .filter(|(_, o)| o.free > 0 && o.serves.contains(key))
            .max_by(|(i, a), (j, b)| a.free.cmp(&b.free).then(j.cmp(i)))
            .map(|(i, _)| i)
    };
    demands
        .iter()
        .enumerate()
        .filter(|(_, (_, d))| d.waiting > 0 && d.running < d.cap)
        .filter_map(|(i, (k, d))| best_worker(k).map(|w| (i, k, d, w)))
        .min_by(|a, b| b.2.priority.cmp(&a.2.priority).then(a.2.last_served.cmp(&b.2.last_served)).then(a.1.cmp(b.1)))
        .map(|(i, _, _, w)| (i, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(waiting: usize, cap: u32, priority: i32) -> Demand {
        Demand { waiting, running: 0, cap, priority, last_served: 0 }
    }

    /// Places until nothing more goes; returns (experiment, worker) in order.
    fn drain(demands: &mut [(u32, Demand)], offers: &mut [Offer<u32>]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        let mut clock = 0;
        while let Some((d, w)) = next(demands, offers) {
            clock += 1;
            let e = &mut demands[d].1;
            e.waiting -= 1;
            e.running += 1;
            e.last_served = clock;
            offers[w].free -= 1;
            out.push((demands[d].0, w));
            assert!(out.len() < 1000);
        }
        out
    }

    #[test]
    fn equal_priorities_take_turns_and_caps_hold() {
        let mut demands = vec![(1, demand(10, 3, 0)), (2, demand(10, 10, 0))];
        let mut offers = vec![Offer { free: 4, serves: vec![1, 2] }, Offer { free: 4, serves: vec![1, 2] }];
        let placed = drain(&mut demands, &mut offers);
        let order: Vec<u32> = placed.iter().map(|p| p.0).collect();
        assert_eq!(order, [1, 2, 1, 2, 1, 2, 2, 2], "in turn until 1 reaches its cap of 3");
        assert_eq!(placed.len(), 8, "never more than the 8 slots");
        assert_eq!(demands[0].1.running, 3);
        let per_worker = |w| placed.iter().filter(|p| p.1 == w).count();
        assert_eq!((per_worker(0), per_worker(1)), (4, 4), "spread over the workers");
    }

    #[test]
    fn higher_priority_first_then_the_rest() {
        let mut demands = vec![(1, demand(2, 8, 0)), (2, demand(3, 8, 5))];
        let mut offers = vec![Offer { free: 4, serves: vec![1, 2] }];
        let order: Vec<u32> = drain(&mut demands, &mut offers).iter().map(|p| p.0).collect();
        assert_eq!(order, [2, 2, 2, 1]);
    }

    #[test]
    fn only_workers_that_loaded_the_experiment_get_its_trials() {
        let mut demands = vec![(1, demand(5, 8, 0)), (2, demand(5, 8, 0))];
        let mut offers = vec![Offer { free: 2, serves: vec![2] }, Offer { free: 1, serves: vec![1, 2] }];
        let placed = drain(&mut demands, &mut offers);
        assert!(placed.iter().all(|(e, w)| *e == 2 || *w == 1), "{placed:?}");
        assert_eq!(placed.len(), 3);
        assert_eq!(next(&[(1, demand(5, 8, 0))], &[Offer { free: 3, serves: vec![2] }]), None);
    }

    #[test]
    fn a_lowered_cap_applies_at_the_next_placement() {
        let mut d = demand(5, 4, 0);
        d.running = 3;
        let offers = [Offer { free: 5, serves: vec![7] }];
        assert_eq!(next(&[(7, d.clone())], &offers), Some((0, 0)));
        d.cap = 2;
        assert_eq!(next(&[(7, d)], &offers), None, "running over the new cap: nothing more goes");
    }

    #[test]
    fn random_pools_never_exceed_slots_or_caps() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let n = rng.random_range(1..5u32);
            let mut demands: Vec<(u32, Demand)> = (0..n)
                .map(|k| (k, demand(rng.random_range(0..20), rng.random_range(1..6), rng.random_range(-1..2))))
                .collect();
            let mut offers: Vec<Offer<u32>> = (0..rng.random_range(1..4))
                .map(|_| Offer {
                    free: rng.random_range(0..6),
                    serves: (0..n).filter(|_| rng.random_bool(0.7)).collect(),
                })
                .collect();
            let slots: u32 = offers.iter().map(|o| o.free).sum();
            let placed = drain(&mut demands, &mut offers);
            assert!(placed.len() as u32 <= slots);
            for (_, d) in &demands {
                assert!(d.running <= d.cap);
            }
            // Nothing more could go: every experiment is served out, capped, or has no worker.
            assert_eq!(next(&demands, &offers), None);
        }
    }
}
