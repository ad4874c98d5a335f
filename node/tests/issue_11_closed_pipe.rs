//! Issue 11: `metatopia status | head` panicked ("failed printing to
//! stdout: Broken pipe", exit 101) when the reader closed the pipe, because
//! `println!` panics on a write error. Every verb now stops quietly on a
//! closed stdout and exits successfully, as a filter would; `up` keeps
//! serving.
//!
//! The pipe's read end is closed before the child starts, so every write
//! the child makes to stdout fails: the test does not depend on timing.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output, Stdio};

use common::{BIN, Node, examples};

/// Runs `metatopia args` with a stdout whose reader is already gone.
fn run_closed(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(BIN)
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn quiet_success(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what} panicked: {stderr}");
    assert!(out.status.success(), "{what}: {:?} {stderr}", out.status);
    assert!(!stderr.contains("Broken pipe"), "{what}: {stderr}");
}

#[test]
fn verbs_stop_quietly_on_a_closed_stdout() {
    let hello = examples().join("hello.toml");
    quiet_success("run", &run_closed(&["run", hello.to_str().unwrap()]));

    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let data = dir.path().to_str().unwrap();
    quiet_success("status", &run_closed(&["status", "--data", data]));
    quiet_success(
        "status --json",
        &run_closed(&["status", "--json", "--data", data]),
    );
    quiet_success("say", &run_closed(&["say", "hello", "--data", data]));
    // The line was said although nobody read the receipt.
    let state = node.get("/api/regions/1/state").json().unwrap();
    assert!(
        state["chat"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["text"] == "hello")
    );
    assert!(node.terminate());
}

#[test]
fn up_keeps_serving_with_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = Command::new(BIN)
        .args(["up", "--http", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .stdout(writer)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // It cannot print its address; `node.json` in the data directory has it
    // once the node serves (bounded wait).
    let info = dir.path().join("node.json");
    let mut base = None;
    for _ in 0..6000 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("metatopia up exited: {status:?}");
        }
        if let Ok(text) = std::fs::read_to_string(&info)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            base = v["http"].as_str().map(str::to_string);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let base = base.expect("the node wrote node.json");
    let r = metatopia_node::client::request(&base, "GET", "/api/status", &[], None).unwrap();
    assert_eq!(r.status, 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
