//! `metatopia group init --regions N`: a row of adjacent regions, each
//! hosted by its own replica group, written by one command. Started with
//! `metatopia up`, neighbours find each other from the written
//! `[[group.neighbours]]` (or, with `--overlay-port`, from the groups'
//! signed region records in the overlay) and trade certified border sets
//! every tick (ADR 0013).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{Node, eventually, group_init_with, run};

fn config(dir: &std::path::Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(dir.join("node.toml")).unwrap()).unwrap()
}

#[test]
fn group_init_writes_two_adjacent_groups_that_trade_border_sets() {
    let base = group_init_with(&["--regions", "2", "--members", "1", "--region", "7"]);
    let dirs = [base.path().join("r0/m0"), base.path().join("r1/m0")];
    let (west, east) = (config(&dirs[0]), config(&dirs[1]));
    assert_eq!(west["world"]["region_id"].as_integer(), Some(7));
    assert_eq!(east["world"]["region_id"].as_integer(), Some(8));
    assert_eq!(west["overlay"]["origin"].as_str(), Some("0,0"));
    assert_eq!(east["overlay"]["origin"].as_str(), Some("256,0"));
    let epoch = west["group"]["epoch_ms"].as_integer().unwrap();
    assert!(epoch > 0);
    assert_eq!(east["group"]["epoch_ms"].as_integer(), Some(epoch));
    // Each lists the other as its only neighbour, with the other's members.
    let n = west["group"]["neighbours"].as_array().unwrap();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0]["region"].as_integer(), Some(8));
    assert_eq!(n[0]["origin"].as_str(), Some("256,0"));
    assert_eq!(n[0]["members"], east["group"]["members"]);
    let n = east["group"]["neighbours"].as_array().unwrap();
    assert_eq!(n[0]["region"].as_integer(), Some(7));
    assert_eq!(n[0]["members"], west["group"]["members"]);

    // Both up: each certifies and sends the other its border sets, and
    // shows a live link to the other group's member.
    let nodes: Vec<Node> = dirs.iter().map(|d| Node::start(d)).collect();
    border_sets_flow(&nodes, &dirs, "config");
}

/// The one member of each of two neighbouring groups (`dirs`, started as
/// `nodes`) knows the other's group (from `source`), certifies and sends
/// it border sets, hears the other's, and counts messages where an
/// operator looks.
fn border_sets_flow(nodes: &[Node], dirs: &[std::path::PathBuf], source: &str) {
    let other = |i: usize| {
        let c = config(&dirs[1 - i]);
        let m = c["group"]["members"][0].as_str().unwrap().to_string();
        m.split('@').next().unwrap().to_string()
    };
    for (i, node) in nodes.iter().enumerate() {
        let peer = other(i);
        eventually("the neighbour's group known", || {
            let s = node.get("/api/status").json().ok()?;
            let n = &s["group"]["neighbours"][0];
            (n["source"] == source && n["members"][0] == peer.as_str()).then_some(())
        });
        eventually("border sets flowing both ways", || {
            let s = node.get("/api/status").json().ok()?;
            let g = &s["group"];
            let link = &g["links"][peer.as_str()];
            (g["border"]["frames_sent"].as_u64() > Some(0)
                && link["frames_in"].as_u64() > Some(0)
                && link["connected"] == true)
                .then_some(())
        });
        // Chat and script messages with the neighbour are counted where
        // an operator looks.
        let metrics = node.get("/metrics").text();
        for name in [
            "metatopia_border_messages_queued_total",
            "metatopia_border_messages_refused_total",
            "metatopia_border_messages_unacked",
        ] {
            assert!(metrics.contains(name), "{name} missing:\n{metrics}");
        }
    }
}

#[test]
fn neighbours_find_each_others_groups_in_the_overlay() {
    // `group_init_with` puts the two members' group ports on the first
    // two of the same four free ports; the overlay takes the other two.
    let overlay = (common::free_ports() + 2).to_string();
    let base = group_init_with(&[
        "--regions",
        "2",
        "--members",
        "1",
        "--overlay-port",
        &overlay,
    ]);
    let dirs = [base.path().join("r0/m0"), base.path().join("r1/m0")];
    let (west, east) = (config(&dirs[0]), config(&dirs[1]));
    // No members listed: each looks its neighbour's group up in the
    // overlay, which all join through the first member.
    for (c, neighbour) in [(&west, 2), (&east, 1)] {
        let n = &c["group"]["neighbours"][0];
        assert_eq!(n["region"].as_integer(), Some(neighbour));
        assert!(n.get("members").is_none(), "{n}");
        assert_eq!(c["overlay"]["enabled"].as_bool(), Some(true));
    }
    let first = west["overlay"]["listen"][0].as_str().unwrap();
    assert!(west["overlay"]["bootstrap"].as_array().unwrap().is_empty());
    let boot = east["overlay"]["bootstrap"][0].as_str().unwrap();
    assert!(boot.starts_with(first) && boot.contains("/p2p/"), "{boot}");

    // The first member starts the overlay; the other joins through it
    // once it is in (as the README says: start r0/m0 first).
    let first = Node::start(&dirs[0]);
    common::overlay_addr(&first);
    let nodes = vec![first, Node::start(&dirs[1])];
    border_sets_flow(&nodes, &dirs, "overlay");
    let out = run(&["status", "--data", dirs[0].to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("neighbour:   region 2: group of 1 (from overlay)"),
        "{text}"
    );
}

/// `metatopia group init --dir BASE ARGS…`, asserted to fail; its stderr.
fn group_init_refused(base: &Path, args: &[&str]) -> String {
    let mut all = vec!["group", "init", "--dir", base.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(!out.status.success(), "group init {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn group_init_refuses_a_row_of_no_regions() {
    let base = tempfile::tempdir().unwrap();
    let err = group_init_refused(base.path(), &["--regions", "0"]);
    assert!(err.contains("--regions must be 1 to 16, got 0"), "{err}");
    // Overlay ports on the group's: refused before anything is written.
    let err = group_init_refused(
        base.path(),
        &["--regions", "2", "--port", "7500", "--overlay-port", "7507"],
    );
    assert!(
        err.contains("--overlay-port 7507..7514 overlaps --port 7500..7507"),
        "{err}"
    );
    assert!(!base.path().join("r0").exists() && !base.path().join("m0").exists());
}
