//! `metatopia up` steps physics: a body spawned and pushed over HTTP moves,
//! the state hash covers it, and after a `kill -9` the recovered world (a
//! physics snapshot plus the replayed log) has exactly the hash a replay
//! from genesis computes, and the body goes on moving.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Node, run};
use serde_json::{Value, json};

fn state(node: &Node) -> Value {
    node.get("/api/regions/1/state").json().unwrap()
}

fn ball(state: &Value) -> Option<Value> {
    state["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ball" && !e["body"].is_null())
        .cloned()
}

fn num(v: &Value) -> f64 {
    v.as_str().unwrap().parse().unwrap()
}

/// Polls until `ok` holds for the state (bounded: 30 s).
fn wait_for(node: &Node, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = state(node);
        if ok(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `metatopia replay`: succeeds and returns the final state hash.
fn replay(data: &str) -> String {
    let out = run(&["replay", "--data", data]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("main sim and physics"), "{stdout}");
    common::final_hash(&out)
}

/// The `state_hash=` a starting node printed for the recovered world.
fn startup_hash(node: &Node) -> String {
    node.header
        .iter()
        .find_map(|l| {
            l.split_once("state_hash=")
                .map(|(_, h)| h.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no world line in {:?}", node.header))
}

#[test]
fn up_steps_pushed_bodies_and_recovers_physics_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Snapshots every 10 ticks, so recovery starts from a physics snapshot
    // and replays the log after it.
    std::fs::write(
        dir.path().join("node.toml"),
        "[world]\nsnapshot_every = 10\n",
    )
    .unwrap();
    let node = Node::start(dir.path());
    assert_eq!(node.act(&json!({"do": "join", "name": "A"})).status, 200);
    let r = node.act(&json!({
        "do": "spawn_body", "name": "ball", "pos": "10,10,2000",
        "shape": "ball:0.5", "vel": "1,0,0"
    }));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Bad body specs are refused with a reason and change nothing.
    let bad = node.act(&json!({
        "do": "spawn_body", "name": "bad", "pos": "1,1,1", "shape": "cone:1"
    }));
    assert_eq!(bad.status, 400);
    let s = wait_for(&node, "the ball exists", |s| ball(s).is_some());
    let b = ball(&s).unwrap();
    let id = b["id"].as_str().unwrap().to_string();
    let y0 = num(&b["pos"]["y"]);

    // Gravity and the initial velocity move it; the push moves it north.
    let r = node.act(&json!({"do": "push", "element": id, "impulse": "0,2,0"}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let s = wait_for(&node, "the push moves the ball north", |s| {
        ball(s).is_some_and(|b| num(&b["pos"]["y"]) > y0 + 0.5)
    });
    let b = ball(&s).unwrap();
    assert!(num(&b["body"]["vel"]["y"]) > 0.0, "{b}");
    assert!(num(&b["pos"]["z"]) < 2000.0, "gravity pulls it down: {b}");
    assert!(
        num(&b["pos"]["x"]) > 10.0,
        "its velocity carries it east: {b}"
    );
    // A push of something that is not a body is refused.
    let r = node.act(&json!({"do": "push", "element": "1.0", "impulse": "0,1,0"}));
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    // Wait past a snapshot so recovery has one with the moving ball in it.
    let tick = s["tick"].as_u64().unwrap();
    wait_for(&node, "a few more ticks", |s| {
        s["tick"].as_u64().unwrap() > tick + 25
    });
    node.kill9();

    // Replay from genesis re-runs main sim and physics and checks every
    // checkpoint; recovery (snapshot + log) must reach the same hash.
    let replayed = replay(data);
    let node = Node::start(dir.path());
    assert_eq!(startup_hash(&node), replayed);
    let before = ball(&state(&node)).unwrap();
    let s = wait_for(&node, "the ball goes on moving", |s| {
        ball(s).is_some_and(|b| num(&b["pos"]["x"]) > num(&before["pos"]["x"]) + 0.2)
    });
    assert_eq!(ball(&s).unwrap()["id"], before["id"]);
    assert!(node.terminate());
    // The run after the restart replays from genesis as well: the restored
    // physics world continued exactly as re-execution does.
    let replayed_again = replay(data);
    assert_ne!(replayed_again, replayed);
}
