//! Property tests of the overlay invariants on random networks:
//! neighbour sets are symmetric, incremental joins/leaves equal a full
//! rebuild (the oracle), every point is owned by exactly one peer, and
//! greedy routing terminates at that owner.

mod common;

use common::{WORLD, build, mismatches, settle};
use metatopia_overlay::{Event, NodeId, Oracle, Point};
use proptest::prelude::*;

fn points() -> impl Strategy<Value = Vec<Point>> {
    // Small grids make ties and co-circular sites common; wide ranges do not.
    prop_oneof![
        prop::collection::vec((0..=WORLD, 0..=WORLD), 4..40),
        prop::collection::vec((0..8i64, 0..8i64), 4..30).prop_map(|v| v
            .into_iter()
            .map(|(x, y)| (x * 100_000, y * 100_000))
            .collect()),
    ]
    .prop_map(|v| {
        v.into_iter()
            .map(|(x, y)| Point::new(x, y))
            .collect::<Vec<_>>()
    })
    .prop_map(|mut v| {
        v.sort();
        v.dedup();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn neighbours_symmetric_and_equal_rebuild(pts in points(), seed in 0u64..1000, leave in 0usize..4) {
        let mut net = build(seed, &pts);
        for i in 0..leave.min(pts.len().saturating_sub(3)) {
            net.leave(NodeId((i * 3) as u64));
        }
        settle(&mut net, 6_000);
        // Incremental result equals the full rebuild.
        let bad = mismatches(&net);
        prop_assert!(bad.is_empty(), "{} mismatches, first {:?}", bad.len(), bad.first());
        // Symmetry.
        for id in net.alive() {
            let p = net.peer(id).expect("alive");
            for n in p.voronoi_neighbours() {
                let q = net.peer(*n).expect("neighbour alive");
                prop_assert!(q.voronoi_neighbours().contains(&id), "{id} -> {n} not symmetric");
            }
        }
    }

    #[test]
    fn every_point_has_one_owner_and_routing_reaches_it(pts in points(), seed in 0u64..1000, targets in prop::collection::vec((0..=WORLD, 0..=WORLD), 8)) {
        let mut net = build(seed, &pts);
        let oracle = Oracle::new(&net.sites());
        let alive = net.alive();
        for (k, (x, y)) in targets.into_iter().enumerate() {
            let t = Point::new(x, y);
            let owners: Vec<NodeId> = alive
                .iter()
                .copied()
                .filter(|id| net.peer(*id).is_some_and(|p| p.owns(t)))
                .collect();
            prop_assert_eq!(owners.len(), 1, "point {:?} owners {:?}", t, owners);
            prop_assert_eq!(Some(owners[0]), oracle.owner(t));
            let from = alive[k % alive.len()];
            let q = net.with_peer(from, |p, now| p.locate(now, t)).expect("alive").expect("joined");
            net.drain(60_000);
            let evs = net.take_events();
            let hit = evs.iter().find_map(|(who, e)| match e {
                Event::Located { query, owner, .. } if *who == from && *query == q => Some(owner.id),
                _ => None,
            });
            prop_assert_eq!(hit, Some(owners[0]), "routing from {} to {:?} ended elsewhere", from, t);
        }
    }
}
