//! Helpers shared by the overlay integration tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use metatopia_overlay::simnet::{SimConfig, SimNet};
use metatopia_overlay::{Config, NodeId, Oracle, Point, Rect};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const WORLD: i64 = 1_000_000; // 1 km square, millimetres

pub fn config() -> Config {
    Config {
        aoi_radius_mm: 60_000,
        aoi_buffer_mm: 10_000,
        close_radius_mm: 10_000,
        world: Rect {
            min: Point::new(0, 0),
            max: Point::new(WORLD, WORLD),
        },
        long_link_min_mm: 1_000,
        ..Config::default()
    }
}

pub fn random_points(seed: u64, n: usize) -> Vec<Point> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| Point::new(rng.random_range(0..=WORLD), rng.random_range(0..=WORLD)))
        .collect()
}

/// Join every point in order (each through a random earlier peer), letting
/// the network settle a little between joins.
pub fn build(seed: u64, points: &[Point]) -> SimNet {
    let mut net = SimNet::new(SimConfig::default(), seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    for (i, &p) in points.iter().enumerate() {
        let id = net.add(config(), p, seed.wrapping_add(i as u64));
        if i == 0 {
            net.start_alone(id);
        } else {
            let via = NodeId(rng.random_range(0..i as u64));
            net.join(id, via);
            net.step(50);
        }
    }
    settle(&mut net, 5_000);
    net
}

pub fn settle(net: &mut SimNet, ms: u64) {
    let end = net.now + ms;
    while net.now < end {
        net.step(100);
    }
}

/// Peers whose Voronoi neighbour set differs from the oracle's.
pub fn mismatches(net: &SimNet) -> Vec<(NodeId, BTreeSet<NodeId>, BTreeSet<NodeId>)> {
    let oracle = Oracle::new(&net.sites());
    let truth: BTreeMap<NodeId, BTreeSet<NodeId>> = oracle.neighbours();
    let mut out = Vec::new();
    for (id, want) in truth {
        let got = net
            .peer(id)
            .map(|p| p.voronoi_neighbours().clone())
            .unwrap_or_default();
        if got != want {
            out.push((id, got, want));
        }
    }
    out
}
