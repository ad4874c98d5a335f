//! `metatopia desync DIR_A DIR_B` over two data directories: a copied
//! world agrees up to the shorter log's end and names the last common
//! tick; two copies run on separately diverge at the first tick after the
//! copy, and the report names that tick and the field (the sim time each
//! took from its own clock). A directory a running node holds is refused
//! at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{Node, eventually, run};
use serde_json::json;

fn tick(node: &Node) -> u64 {
    let s: serde_json::Value = node.get("/api/regions/1/state").json().unwrap();
    s["tick"].as_u64().unwrap()
}

/// Runs the node on `data` until it has executed `more` further ticks,
/// then stops it cleanly.
fn run_for(data: &Path, more: u64) {
    let node = Node::start(data);
    let start = tick(&node);
    eventually("ticks to pass", || {
        (tick(&node) >= start + more).then_some(())
    });
    assert!(node.terminate(), "the node stops cleanly");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A world run for a few ticks with a player in it, and its copy.
fn world_and_copy(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let a = root.join("a");
    let b = root.join("b");
    let node = Node::start(&a);
    let r = node.act(&json!({"do": "join", "name": "Ada"}));
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    let start = tick(&node);
    eventually("ticks to pass", || {
        (tick(&node) >= start + 10).then_some(())
    });
    assert!(node.terminate(), "the node stops cleanly");
    copy_dir(&a, &b);
    (a, b)
}

fn desync(a: &Path, b: &Path) -> (bool, String, String) {
    let out = run(&["desync", a.to_str().unwrap(), b.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The last common tick a report names.
fn last_common(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("the logs agree on every tick up to ")
                .or_else(|| l.strip_prefix("last common tick: "))
        })
        .and_then(|r| r.split([',', ' ']).next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no last common tick in {stdout}"))
}

#[test]
fn agreeing_directories_name_the_last_common_tick() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = world_and_copy(root.path());
    let (ok, stdout, stderr) = desync(&a, &b);
    assert!(ok, "{stdout}{stderr}");
    let common = last_common(&stdout);
    assert!(common >= 10, "{stdout}");
    assert!(
        stdout.contains(&format!("log of ticks 0..={common}")),
        "{stdout}"
    );

    // The copy runs on alone: the two still agree up to the shorter log's
    // end, the same tick.
    let node = Node::start(&b);
    // Meanwhile its directory is refused at once, and nothing is written.
    let (ok, stdout, stderr) = desync(&a, &b);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("open in a running node"), "{stderr}");
    let start = tick(&node);
    eventually("ticks to pass", || (tick(&node) >= start + 5).then_some(()));
    assert!(node.terminate());
    let (ok, stdout, stderr) = desync(&a, &b);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(last_common(&stdout), common, "{stdout}");
    assert!(
        stdout.contains(&format!("log of ticks 0..={common}\n")),
        "{stdout}"
    );
}

#[test]
fn diverging_directories_name_the_tick_and_the_field() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = world_and_copy(root.path());
    let (ok, stdout, _) = desync(&a, &b);
    assert!(ok, "{stdout}");
    let common = last_common(&stdout);
    let before = std::fs::read(a.join("world.redb")).unwrap();

    // Each copy runs on by itself: its next tick takes its own clock's time.
    run_for(&a, 5);
    run_for(&b, 5);
    let after_a = std::fs::read(a.join("world.redb")).unwrap();
    assert_ne!(before, after_a, "the world ran on");
    let (ok, stdout, stderr) = desync(&a, &b);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains(&format!("first diverging tick: {}\n", common + 1)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("last common tick: {common}\n")),
        "{stdout}"
    );
    let field = stdout
        .lines()
        .find(|l| l.starts_with("region time_ms: "))
        .unwrap_or_else(|| panic!("no time_ms line in {stdout}"));
    let (x, y) = field["region time_ms: ".len()..]
        .split_once(" != ")
        .unwrap();
    assert!(
        x.parse::<u64>().unwrap() < y.parse::<u64>().unwrap(),
        "a ran first: {field}"
    );
    assert!(
        stderr.contains(&format!("diverge at tick {}", common + 1)),
        "{stderr}"
    );
    // Reading changed neither directory.
    assert_eq!(std::fs::read(a.join("world.redb")).unwrap(), after_a);
}
