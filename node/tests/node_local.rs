//! The local world through the real binary: `up`, the HTTP API, the CLI,
//! bad input, and `kill -9` with restart.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, run};
use serde_json::json;

/// Long on purpose: one scenario told step by step; its assertions read the state the steps before them built.
#[test]
fn up_serves_the_api_and_refuses_a_second_node() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let node = Node::start(dir.path());

    let second = run(&["up", "--http", "127.0.0.1:0", "--data", data]);
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success());
    assert!(
        text.contains("already running") && text.contains(&node.base),
        "{text}"
    );

    let say = run(&["say", "hello from the cli", "--data", data]);
    assert!(
        say.status.success(),
        "{}",
        String::from_utf8_lossy(&say.stderr)
    );
    let status = run(&["status", "--json", "--data", data]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["regions"][0]["players_online"], 1);
    assert_eq!(v["state_hash"].as_str().unwrap().len(), 64);

    // The committed chat line is in the region view; the ETag is the state hash.
    let r = node.get("/api/regions/1/state");
    assert_eq!(r.status, 200);
    let state = r.json().unwrap();
    let etag = r.header("etag").unwrap().to_string();
    assert_eq!(
        etag,
        format!("\"{}\"", state["state_hash"].as_str().unwrap())
    );
    assert!(
        state["chat"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["text"] == "hello from the cli")
    );

    // 304 only while nothing changed: the world ticks, so ask until a tick
    // boundary is caught (bounded).
    let mut saw_304 = false;
    for _ in 0..200 {
        let r = node.get("/api/regions/1/state");
        let tag = r.header("etag").unwrap().to_string();
        let again = metatopia_node::client::request(
            &node.base,
            "GET",
            "/api/regions/1/state",
            &[("If-None-Match", tag.as_str())],
            None,
        )
        .unwrap();
        if again.status == 304 {
            assert!(again.body.is_empty());
            saw_304 = true;
            break;
        }
        assert_eq!(again.status, 200);
        assert_ne!(again.header("etag").unwrap(), tag);
    }
    assert!(saw_304, "If-None-Match with the current ETag gives 304");

    // Bad input: a clear 4xx, and the node keeps serving.
    let no_token = metatopia_node::client::request(
        &node.base,
        "POST",
        "/api/regions/1/inputs",
        &[],
        Some(br#"{"do":"leave"}"#),
    )
    .unwrap();
    assert_eq!(no_token.status, 401);
    let r = node.act(&json!({"do": "dance"}));
    assert_eq!(r.status, 400);
    assert!(
        r.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("dance")
    );
    let r = node.act(&json!({"do": "move", "element": "me", "to": "1,2"}));
    assert_eq!(r.status, 400);
    assert!(r.json().unwrap()["error"].as_str().unwrap().contains("to:"));
    let r = node.act(&json!({"do": "move", "element": "me", "to": "9999,0,0"}));
    assert_eq!(r.status, 422);
    assert!(
        r.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("outside the region")
    );
    let r = node.act(&json!({"do": "say", "text": "x".repeat(100_000)}));
    assert_eq!(r.status, 413);
    let auth = format!("Bearer {}", node.token());
    let r = metatopia_node::client::request(
        &node.base,
        "POST",
        "/api/regions/1/inputs",
        &[("Authorization", auth.as_str())],
        Some(b"{not json"),
    )
    .unwrap();
    assert_eq!(r.status, 400);
    let r = metatopia_node::client::request(
        &node.base,
        "POST",
        "/api/regions/7/inputs",
        &[("Authorization", auth.as_str())],
        Some(br#"{"do":"leave"}"#),
    )
    .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(node.get("/api/status").status, 200);
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("metatopia_inputs_rejected_total 1"),
        "{metrics}"
    );
    // A region without neighbours hands nothing over, and says so.
    for line in [
        "metatopia_handoffs_out_total 0",
        "metatopia_handoffs_in_total 0",
        "metatopia_handoffs_pending 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The viewer page is served.
    let page = node.get("/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Metatopia viewer"));

    assert!(node.terminate(), "SIGTERM shuts down cleanly");
    assert!(!dir.path().join("node.json").exists());
}

#[test]
fn kill_nine_mid_stream_loses_no_committed_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let node = Node::start(dir.path());
    assert_eq!(
        node.act(&json!({"do": "join", "name": "Tester"})).status,
        200
    );
    // A writer posts chat lines as fast as they commit; we kill -9 the node
    // while it is writing. Every line it got a 200 for must survive.
    let base = node.base.clone();
    let auth = format!("Bearer {}", node.token());
    let (acked_tx, acked_rx) = std::sync::mpsc::sync_channel::<(String, u64)>(1000);
    let writer = std::thread::spawn(move || {
        for i in 0..150 {
            let body =
                serde_json::to_vec(&json!({"do": "say", "text": format!("line {i}")})).unwrap();
            let Ok(r) = metatopia_node::client::request(
                &base,
                "POST",
                "/api/regions/1/inputs",
                &[("Authorization", auth.as_str())],
                Some(&body),
            ) else {
                return;
            };
            if r.status != 200 {
                return;
            }
            let tick = r.json().unwrap()["tick"].as_u64().unwrap();
            if acked_tx.send((format!("line {i}"), tick)).is_err() {
                return;
            }
        }
    });
    let mut acked = Vec::new();
    while acked.len() < 12 {
        acked.push(acked_rx.recv().unwrap());
    }
    node.kill9();
    writer.join().unwrap();
    acked.extend(acked_rx.try_iter());

    let replay = run(&["replay", "--data", data]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );

    let node = Node::start(dir.path());
    let state = node.get("/api/regions/1/state").json().unwrap();
    let chat: Vec<&str> = state["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    for (line, tick) in &acked {
        assert!(
            chat.contains(&line.as_str()),
            "{line} (committed at tick {tick}) was lost"
        );
        assert!(state["tick"].as_u64().unwrap() > *tick);
    }
    node.kill9();
}

#[test]
fn restart_reports_the_hash_replay_computes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let node = Node::start(dir.path());
    assert_eq!(node.act(&json!({"do": "join", "name": "A"})).status, 200);
    assert_eq!(
        node.act(&json!({"do": "create", "name": "box", "pos": "3,4,5"}))
            .status,
        200
    );
    node.kill9();
    let replay = run(&["replay", "--data", data]);
    let out = String::from_utf8_lossy(&replay.stdout).to_string();
    let hash = out
        .lines()
        .last()
        .unwrap()
        .strip_prefix("state_hash=")
        .unwrap()
        .to_string();
    let mut child = std::process::Command::new(common::BIN)
        .args(["up", "--http", "127.0.0.1:0", "--data", data])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        first.contains(&format!("state_hash={hash}")),
        "{first} vs {hash}"
    );
}

#[test]
fn node_toml_chooses_services_and_bad_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("node.toml"), "[world]\nsnapshot_evry = 5\n").unwrap();
    let out = run(&["up", "--http", "127.0.0.1:0", "--data", data]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapshot_evry") && err.contains("node.toml"),
        "{err}"
    );

    std::fs::write(dir.path().join("node.toml"), "[metrics]\nenabled = false\n").unwrap();
    let node = Node::start(dir.path());
    assert_eq!(node.get("/metrics").status, 404);
    assert_eq!(node.get("/api/status").status, 200);
    node.kill9();

    // A fresh data directory gets a commented default file.
    let fresh = tempfile::tempdir().unwrap();
    let node = Node::start(fresh.path());
    let text = std::fs::read_to_string(fresh.path().join("node.toml")).unwrap();
    assert!(
        text.contains("[http]") && text.contains("snapshot_every = 200"),
        "{text}"
    );
    assert_eq!(node.get("/metrics").status, 200);
    node.kill9();

    // `config example` is that file; `config check` names a bad key.
    let example = run(&["config", "example"]);
    assert!(example.status.success());
    assert_eq!(
        String::from_utf8_lossy(&example.stdout).trim_end(),
        text.trim_end()
    );
    let fresh = fresh.path().to_str().unwrap();
    assert!(run(&["config", "check", "--data", fresh]).status.success());
    let check = run(&["config", "check", "--data", data]);
    assert!(check.status.success(), "[metrics] enabled = false is fine");
    std::fs::write(
        dir.path().join("node.toml"),
        "[limits]\nstream_subscribers_max = 0\n",
    )
    .unwrap();
    let check = run(&["config", "check", "--data", data]);
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        !check.status.success() && err.contains("limits.stream_subscribers_max"),
        "{err}"
    );
}
