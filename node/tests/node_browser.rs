//! The viewer in a real browser (headless Chromium): it loads the page from
//! a running node, fetches the region, and renders the players and the
//! committed chat. Needs `chromium` on PATH: `.ci/run` installs it and runs
//! this test explicitly (`cargo test -p metatopia-node --test node_browser
//! -- --ignored`); plain `cargo test` skips it.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::Node;
use serde_json::json;

#[test]
#[ignore = "needs chromium; run by .ci/run"]
fn viewer_renders_the_world_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    assert_eq!(
        node.act(&json!({"do": "join", "name": "Browser Tester"}))
            .status,
        200
    );
    assert_eq!(
        node.act(&json!({"do": "say", "text": "seen in chromium"}))
            .status,
        200
    );
    assert_eq!(
        node.act(&json!({"do": "create", "name": "Lantern", "pos": "30,40,0"}))
            .status,
        200
    );
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("{}/#token={}", node.base, node.token()))
        .output()
        .expect("chromium is installed (see .ci/run)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("seen in chromium"), "chat rendered: {dom}");
    assert!(
        dom.contains("online: Browser Tester (admin)"),
        "players rendered: {dom}"
    );
    let state = node.get("/api/regions/1/state").json().unwrap();
    assert!(
        state["elements"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "Lantern")
    );
    node.kill9();
}
