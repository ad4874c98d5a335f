//! Issue 13 (found by the border storm, `node_border_storm.rs`): a group
//! whose neighbour's border sets were missing stopped ticking for good
//! when `group.border_wait_ms` exceeded the engine's leader timeout
//! (150 ms). The primary waited for the missing set, the other members
//! took it for silent and nullified its view, the next primary was asked
//! and waited again, and so on: views ran by the thousand, no tick was
//! proposed. Two groups that each missed the other's set (the storm on a
//! busy machine) both stopped. Now the engine's timeouts grow by the
//! configured wait (`simplex::Timing::with_border_wait`), so a missing
//! set costs one wait per tick, not the region.
//!
//! Here region 1's group of four runs with `border_wait_ms` 250 beside a
//! neighbour whose group never starts: every set is missing, and the
//! region still ticks (about one tick per wait).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::border::{configure, free_ports_8, group_init, members_of};
use common::{Node, eventually};
use serde_json::Value;

#[test]
fn a_group_whose_neighbour_is_silent_keeps_ticking_with_a_long_border_wait() {
    let base = tempfile::tempdir().unwrap();
    let port = free_ports_8();
    let g1 = group_init(base.path(), 1, 4, port);
    let g2 = group_init(base.path(), 2, 4, port + 4);
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 2000;
    configure(&g1, "0,0", (epoch, 250), (2, "256,0", &members_of(&g2[0])));
    let nodes: Vec<Node> = g1.iter().map(|d| Node::start(d)).collect();
    let tick = |node: &Node| -> Option<u64> {
        let s: Value = node.get("/api/status").json().ok()?;
        s["tick"].as_u64()
    };
    let start = eventually("region 1 to start ticking", || tick(&nodes[0]));
    eventually(
        "region 1 to tick 20 more ticks without its neighbour",
        || tick(&nodes[0]).filter(|t| *t >= start + 20),
    );
    for node in nodes {
        assert!(node.terminate());
    }
}
