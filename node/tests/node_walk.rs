//! Walking through the HTTP API (ADR 0017): a `walk` action sets the
//! local player's avatar walking, the node's ticks move it without further
//! inputs, zero stops it, and a walk over the region's speed limit is a
//! 422 that names the limit and changes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, eventually};
use serde_json::json;

/// The tick and the local player's avatar position (x, y) in the state view.
fn avatar_at(node: &Node) -> (u64, f64, f64) {
    let v = node.get("/api/regions/1/state").json().unwrap();
    let avatar = v["players"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| p["avatar"].as_str().map(str::to_string))
        .expect("the player is online");
    let e = v["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == avatar.as_str())
        .unwrap()
        .clone();
    let num = |k: &str| e["pos"][k].as_str().unwrap().parse::<f64>().unwrap();
    (v["tick"].as_u64().unwrap(), num("x"), num("y"))
}

#[test]
fn a_walk_moves_the_avatar_every_tick_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    assert_eq!(node.act(&json!({"do": "join", "name": "W"})).status, 200);
    let (_, x0, y0) = avatar_at(&node);
    // Too fast: refused with the limit, nothing walks.
    let r = node.act(&json!({"do": "walk", "vel": "3,3,0"}));
    assert_eq!(r.status, 422, "{}", r.text());
    let msg = r.json().unwrap()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("walk_speed_max of 4 m/s"), "{msg}");
    let r = node.act(&json!({"do": "walk", "vel": "east"}));
    assert_eq!(r.status, 400, "{}", r.text());
    let (_, x, y) = avatar_at(&node);
    assert_eq!((x, y), (x0, y0), "a refused walk moves nothing");
    // 4 m/s north: the ticks carry it without another input.
    assert_eq!(node.act(&json!({"do": "walk", "vel": "0,4,0"})).status, 200);
    eventually("the avatar to walk 2 m north", || {
        let (_, x, y) = avatar_at(&node);
        (x == x0 && y > y0 + 2.0).then_some(())
    });
    // Stopped: it stays where it is while ticks go by.
    assert_eq!(node.act(&json!({"do": "walk", "vel": "0,0,0"})).status, 200);
    let (t, _, y1) = avatar_at(&node);
    eventually("five more ticks", || {
        let (t2, _, y2) = avatar_at(&node);
        assert_eq!(y2, y1, "a stopped avatar does not move");
        (t2 >= t + 5).then_some(())
    });
    assert!(node.terminate());
}
