//! Two real nodes meet in the Voronoi overlay on loopback: each announces
//! its region, and `metatopia join --at X,Y` finds who hosts the region at
//! a point, routing through the overlay.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Node, run};

fn overlay_addr(node: &Node) -> String {
    loop {
        let line = node
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("overlay address line");
        if let Some(a) = line.strip_prefix("metatopia: overlay ") {
            return a.trim().to_string();
        }
    }
}

fn write_config(dir: &std::path::Path, region: u32, origin: &str, bootstrap: Option<&str>) {
    let boot = bootstrap
        .map(|b| format!("bootstrap = [\"{b}\"]\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("node.toml"),
        format!("[world]\nregion_id = {region}\n\n[overlay]\nenabled = true\norigin = \"{origin}\"\n{boot}"),
    )
    .unwrap();
}

#[test]
fn two_nodes_find_each_others_regions() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    write_config(a_dir.path(), 1, "0,0", None);
    let a = Node::start(a_dir.path());
    let a_addr = overlay_addr(&a);
    assert!(a_addr.contains("/p2p/"), "{a_addr}");
    write_config(b_dir.path(), 2, "256,0", Some(&a_addr));
    let b = Node::start(b_dir.path());
    let b_addr = overlay_addr(&b);
    let b_peer = b_addr.rsplit("/p2p/").next().unwrap().to_string();
    let a_peer = a_addr.rsplit("/p2p/").next().unwrap().to_string();

    // B's world is region 2, and the CLI talks to it as such.
    let status = b.get("/api/status").json().unwrap();
    assert_eq!(status["regions"][0]["id"], 2);
    let say = run(&[
        "say",
        "hi from region 2",
        "--data",
        b_dir.path().to_str().unwrap(),
    ]);
    assert!(
        say.status.success(),
        "{}",
        String::from_utf8_lossy(&say.stderr)
    );

    // Asked from A: the point (300 m, 10 m) is in B's region 2. The record
    // may take a moment to reach the owner of that point: retry, bounded.
    let a_data = a_dir.path().to_str().unwrap();
    let mut found = String::new();
    for _ in 0..50 {
        let out = run(&["join", "--at", "300,10", "--data", a_data]);
        found = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        found.contains("region 2") && found.contains(&b_peer),
        "{found}"
    );
    // Asked from B: A's own region 1 at (10 m, 10 m).
    let out = run(&[
        "join",
        "--at",
        "10,10",
        "--data",
        b_dir.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("region 1") && text.contains(&a_peer),
        "{text}"
    );
    // Nobody hosts (5000 m, 5000 m): a clear error.
    let out = run(&["join", "--at", "5000,5000", "--data", a_data]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no region"));
    // Malformed points are refused before anything is sent.
    let out = run(&["join", "--at", "north", "--data", a_data]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("X,Y"));
    assert_eq!(a.get("/api/overlay").json().unwrap()["joined"], true);
    a.kill9();
    b.kill9();
}

#[test]
fn overlay_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let r = node.get("/api/overlay/locate?x_mm=1&y_mm=2");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("enabled = false"));
    node.kill9();
}
