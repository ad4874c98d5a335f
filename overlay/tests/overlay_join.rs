//! Joins, leaves and failures converge to the exact Delaunay neighbours.

mod common;

use common::{build, mismatches, random_points, settle};
use metatopia_overlay::NodeId;

#[test]
fn joins_converge_to_oracle() {
    let seed = 7;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let net = build(seed, &random_points(seed, 150));
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
    let mut net = build(seed, &random_points(seed, 120));
    for i in 0..10 {
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
