//! The HTTP API's answers people read (issue 11): every error is the
//! documented JSON error (a body over the limit names the limit and what
//! was sent), and the temp-admin rule is explained in `/api/status` and the
//! region state.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, run};
use metatopia_node::client::request;
use serde_json::json;

#[test]
fn errors_are_json_and_name_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let auth = format!("Bearer {}", node.token());
    let big = vec![b' '; 100_000];
    for path in ["/api/regions/1/inputs", "/api/scripts"] {
        let method = if path == "/api/scripts" {
            "PUT"
        } else {
            "POST"
        };
        let r = request(
            &node.base,
            method,
            path,
            &[("Authorization", auth.as_str())],
            Some(&big),
        )
        .unwrap();
        assert_eq!(r.status, 413, "{path}: {}", r.text());
        let v = r
            .json()
            .unwrap_or_else(|_| panic!("{path}: not JSON: {}", r.text()));
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains("100000 bytes sent"), "{msg}");
        assert!(msg.contains("65536 bytes (64 KiB)"), "{msg}");
    }
    // A wrong method and an unknown route: JSON too.
    let r = request(&node.base, "DELETE", "/api/status", &[], None).unwrap();
    assert_eq!(r.status, 405);
    assert!(r.json().unwrap()["error"].is_string(), "{}", r.text());
    let r = request(&node.base, "GET", "/api/nothing", &[], None).unwrap();
    assert_eq!(r.status, 404);
    assert!(r.json().unwrap()["error"].is_string(), "{}", r.text());
    // A bad query of the script upload.
    let r = request(
        &node.base,
        "PUT",
        "/api/scripts?object=1.1&object=x",
        &[("Authorization", auth.as_str())],
        Some(b"x"),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json().unwrap()["error"].is_string(), "{}", r.text());
    // The node still serves.
    assert_eq!(node.act(&json!({"do": "join", "name": "A"})).status, 200);
    assert!(node.terminate());
}

#[test]
fn the_temp_admin_rule_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let status = node.get("/api/status").json().unwrap();
    let me = status["node"]["player"].clone();
    let rule = &status["regions"][0]["temp_admin_rule"];
    // The founder has not logged in yet: nothing counts.
    assert!(rule["last_admin_login"].is_null(), "{rule}");
    assert!(rule["temp_admin"].is_null(), "{rule}");
    assert_eq!(rule["absence_days"], 30);
    assert_eq!(rule["recent_days"], 7);

    // The founding admin logs in: that login counts, for 30 days.
    assert_eq!(node.act(&json!({"do": "join", "name": "A"})).status, 200);
    let state = node.get("/api/regions/1/state").json().unwrap();
    let rule = &state["temp_admin_rule"];
    assert_eq!(rule["last_admin_login"]["player"]["id"], me, "{rule}");
    assert_eq!(rule["last_admin_login"]["player"]["name"], "A");
    assert_eq!(rule["last_admin_login"]["days_ago"], 0);
    assert!(rule["temp_admin"].is_null());
    // When the admin's window ends nobody will have logged in within 7
    // days (the admin's own login is older by then): nothing changes
    // without a login.
    assert!(rule["next_change"].is_null(), "{rule}");
    let summary = rule["summary"].as_str().unwrap();
    assert_eq!(
        summary,
        "no temp admin: a permanent admin logged in within 30 days (the last admin login was A's, 0 days ago); this changes only when someone logs in"
    );

    // `metatopia status` prints the sentence.
    let out = run(&["status", "--data", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("temp admin:  no temp admin"), "{stdout}");
    // And the node's health on one line.
    let health = stdout
        .lines()
        .find(|l| l.starts_with("health:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        health.contains(" ms (mean ") && health.contains("inputs refused"),
        "{health}"
    );
    assert!(node.terminate());
}
