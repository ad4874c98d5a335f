//! Joins, leaves and failures converge to the exact Delaunay neighbours.

mod common;

use common::{build, mismatches, random_points, settle};
use metatopia_overlay::NodeId;

#[test]
fn joins_converge_to_oracle() {
    let seed = 7;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let net = build(seed, &random_points(seed, 100));
    let bad = mismatches(&net);
    assert!(
        bad.is_empty(),
        "{} peers disagree with the oracle: {:?}",
        bad.len(),
        bad.first()
    );
}

#[test]
fn crashes_and_leaves_are_repaired() {
    let seed = 11;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let mut net = build(seed, &random_points(seed, 80));
    for i in 0..8 {
        net.kill(NodeId(i * 7 + 3));
        net.leave(NodeId(i * 7 + 5));
    }
    settle(&mut net, 15_000);
    let bad = mismatches(&net);
    assert!(
        bad.is_empty(),
        "{} peers disagree with the oracle: {:?}",
        bad.len(),
        bad.first()
    );
}

#[test]
fn moving_peers_keep_exact_neighbours_and_aoi() {
    use metatopia_overlay::Point;
    use rand::{Rng, SeedableRng};
    let seed = 13;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let mut net = build(seed, &random_points(seed, 40));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let cfg = common::config();
    // 20 steps of 100 ms, every peer moves up to 5 m per step.
    for _ in 0..20 {
        for id in net.alive() {
            let p = net.peer(id).expect("alive").me().pos;
            let to = Point::new(
                (p.x + rng.random_range(-5_000..=5_000)).clamp(0, common::WORLD),
                (p.y + rng.random_range(-5_000..=5_000)).clamp(0, common::WORLD),
            );
            net.move_to(id, to);
        }
        net.step(100);
    }
    settle(&mut net, 4_000);
    let bad = mismatches(&net);
    assert!(
        bad.is_empty(),
        "{} peers disagree with the oracle: {:?}",
        bad.len(),
        bad.first()
    );
    // Topology consistency once quiet: everyone knows every peer in its AOI.
    let sites = net.sites();
    let r = u128::from(cfg.aoi_radius_mm);
    for &(id, p) in &sites {
        let peer = net.peer(id).expect("alive");
        for &(q, qp) in &sites {
            if q != id && qp.dist2(p) <= r * r {
                let known = peer.contact(q).map(|c| c.pos);
                assert_eq!(known, Some(qp), "{id} does not know {q} in its AOI");
            }
        }
    }
}
