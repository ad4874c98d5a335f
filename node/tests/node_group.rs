//! A region hosted by a replica group of four `metatopia up` processes on
//! loopback (`metatopia group init`): an input sent through any member
//! commits and every member shows it; the members sign agreeing
//! checkpoints; after `kill -9` of one member the other three go on; the
//! killed one restarts from its log, catches up and agrees again.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Node, run};

/// Four consecutive free TCP ports on 127.0.0.1 (probed; a little racy,
/// like any port picked in advance).
fn free_ports() -> u16 {
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    (start..60_000)
        .step_by(5)
        .find(|base| (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("four free ports")
}

/// The newest checkpoint this member has seen that all four signed and
/// agree on, if any.
fn agreed(node: &Node) -> Option<u64> {
    let status = node.get("/api/status").json().ok()?;
    let checkpoints = status["group"]["checkpoints"].as_array()?.clone();
    checkpoints
        .iter()
        .find(|c| c["signed"] == 4 && c["agree"] == true)
        .and_then(|c| c["tick"].as_u64())
}

/// Polls (bounded: 60 s) until `f` holds.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn say(data: &Path, text: &str) -> u64 {
    let out = run(&["say", "--data", data.to_str().unwrap(), text]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "say failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "committed at tick N (seq S)"
    stdout
        .split("committed at tick ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("say printed {stdout:?}"))
}

fn chat(node: &Node) -> Vec<String> {
    let state = node.get("/api/regions/1/state").json().unwrap();
    state["chat"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|l| l["text"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_group_of_four_processes_commits_survives_a_kill_and_catches_up() {
    let base = tempfile::tempdir().unwrap();
    let port = free_ports().to_string();
    let out = run(&[
        "group",
        "init",
        "--dir",
        base.path().to_str().unwrap(),
        "--members",
        "4",
        "--port",
        &port,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dirs: Vec<_> = (0..4).map(|i| base.path().join(format!("m{i}"))).collect();
    let mut nodes: Vec<Option<Node>> = dirs.iter().map(|d| Some(Node::start(d))).collect();

    // An input through member 2 commits, and member 0 shows it.
    say(&dirs[2], "hello group");
    let n0 = nodes[0].as_ref().unwrap();
    eventually("member 0 to show the chat line", || {
        chat(n0).contains(&"hello group".to_string()).then_some(())
    });
    // All four sign the same region hash at a checkpoint.
    eventually("a checkpoint all four agree on", || agreed(n0));

    // kill -9 member 0: the other three go on.
    nodes[0].take().unwrap().kill9();
    let tick = say(&dirs[1], "after the kill");
    let n3 = nodes[3].as_ref().unwrap();
    eventually("member 3 to show the line", || {
        chat(n3)
            .contains(&"after the kill".to_string())
            .then_some(())
    });

    // Member 0 restarts from its log, catches up and agrees again.
    nodes[0] = Some(Node::start(&dirs[0]));
    let n0 = nodes[0].as_ref().unwrap();
    eventually("the restarted member to show the line it missed", || {
        chat(n0)
            .contains(&"after the kill".to_string())
            .then_some(())
    });
    let agreed_tick = eventually("a checkpoint after the kill that all four agree on", || {
        agreed(n0).filter(|t| *t > tick)
    });
    assert!(agreed_tick > tick);
}
