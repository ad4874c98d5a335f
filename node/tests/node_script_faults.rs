//! Script faults through the real binary reach the people who must see
//! them (issue 11): the state API lists each fault with the sandbox's
//! message and shows the element's fault count, its suspended flag and how
//! to resume it; `/metrics` counts them.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, run};
use serde_json::{Value, json};

/// Joins, creates an object and returns its id.
fn object(node: &Node, name: &str) -> String {
    assert_eq!(node.act(&json!({"do": "join", "name": "A"})).status, 200);
    assert_eq!(
        node.act(&json!({"do": "create", "name": name, "pos": "3,4,0"}))
            .status,
        200
    );
    element(node, name)["id"].as_str().unwrap().to_string()
}

fn state(node: &Node) -> Value {
    node.get("/api/regions/1/state").json().unwrap()
}

fn element(node: &Node, name: &str) -> Value {
    state(node)["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap()
        .clone()
}

/// Publishes `source` and attaches it to `object`.
fn push(node: &Node, file: &str, source: &str, object: &str) {
    let path = node.data.join(file);
    std::fs::write(&path, source).unwrap();
    let out = run(&[
        "script",
        "push",
        path.to_str().unwrap(),
        "--object",
        object,
        "--data",
        node.data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn touch(node: &Node, object: &str) {
    assert_eq!(
        node.act(&json!({"do": "touch", "element": object})).status,
        200
    );
}

/// The recent faults of the state view. They are recorded by a task that
/// follows the committed ticks, just after the touch is answered, so this
/// asks until `n` are there (bounded).
fn faults(node: &Node, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        let list = state(node)["script_faults"].as_array().unwrap().clone();
        if list.len() >= n {
            return list;
        }
        std::thread::yield_now();
    }
    panic!("fewer than {n} faults in the state view: {}", state(node));
}

fn metric(node: &Node, name: &str) -> u64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_runtime_error_is_shown_with_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let lamp = object(&node, "lamp");
    push(
        &node,
        "broken.lua",
        "-- SPDX-License-Identifier: MPL-2.0\nfunction on_touch() error('the bulb is gone') end\n",
        &lamp,
    );
    touch(&node, &lamp);
    let list = faults(&node, 1);
    let f = &list[0];
    assert_eq!(f["script"], lamp.as_str());
    assert!(
        f["error"].as_str().unwrap().contains("the bulb is gone"),
        "{f}"
    );
    assert_eq!(f["suspended"], false);
    let me = node.get("/api/status").json().unwrap()["node"]["player"].clone();
    assert_eq!(f["owner"], me, "the owner is told");
    let status = &element(&node, "lamp")["script_status"];
    assert_eq!(status["faults"], 1, "{status}");
    assert_eq!(status["suspended"], false);
    assert!(status["resume"].is_null());
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("the bulb is gone"),
        "{status}"
    );
    assert_eq!(metric(&node, "metatopia_script_faults_total"), 1);
    assert_eq!(metric(&node, "metatopia_script_suspensions_total"), 0);
    assert!(node.terminate());
}

#[test]
fn a_suspended_script_says_so_and_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let lamp = object(&node, "lamp");
    push(
        &node,
        "spin.lua",
        "-- SPDX-License-Identifier: MPL-2.0\nfunction on_touch() while true do end end\n",
        &lamp,
    );
    let max = state(&node)["settings"]["script_faults_max"]
        .as_u64()
        .unwrap() as usize;
    for _ in 0..max {
        touch(&node, &lamp);
    }
    let list = faults(&node, max);
    for f in &list {
        assert_eq!(
            f["error"], "instruction budget exhausted (1000000 instructions)",
            "{f}"
        );
    }
    assert_eq!(list.last().unwrap()["suspended"], true);
    let status = element(&node, "lamp")["script_status"].clone();
    assert_eq!(status["faults"], max as u64, "{status}");
    assert_eq!(status["suspended"], true);
    let resume = status["resume"].as_str().unwrap();
    assert!(
        resume.contains(&format!("metatopia script push FILE --object {lamp}")),
        "{resume}"
    );
    assert_eq!(metric(&node, "metatopia_script_suspensions_total"), 1);

    // Suspended: a touch reaches it no more, so no new fault.
    touch(&node, &lamp);
    assert_eq!(
        element(&node, "lamp")["script_status"]["faults"],
        max as u64
    );

    // A new upload resumes it.
    push(
        &node,
        "fixed.lua",
        "-- SPDX-License-Identifier: MPL-2.0\nfunction on_touch() say('light again') end\n",
        &lamp,
    );
    let status = element(&node, "lamp")["script_status"].clone();
    assert_eq!(status["suspended"], false, "{status}");
    assert_eq!(status["faults"], 0);
    touch(&node, &lamp);
    let chat = state(&node)["chat"].as_array().unwrap().clone();
    assert!(chat.iter().any(|l| l["text"] == "light again"), "{chat:?}");
    assert!(node.terminate());
}
