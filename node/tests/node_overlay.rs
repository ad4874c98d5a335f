//! Two real nodes meet in the Voronoi overlay on loopback: each announces
//! its region, and `metatopia join --at X,Y` finds who hosts the region at
//! a point, routing through the overlay.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Node, overlay_addr, run};

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
    // The overlay's bytes on the wire are counted apart.
    let metrics = a.get("/metrics").text();
    for name in ["bytes_received_total", "bytes_sent_total"] {
        let line = format!("metatopia_{name}{{service=\"overlay\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in {metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(n > 0, "{line}{n}");
    }
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

/// Turns on the overlay in a data directory's existing node.toml (as
/// `group init` wrote it).
fn enable_overlay(dir: &std::path::Path, origin: &str, bootstrap: &str) {
    let mut config = metatopia_node::config::Config::load_or_create(dir).unwrap();
    config.overlay.enabled = true;
    config.overlay.origin = origin.into();
    config.overlay.bootstrap = vec![bootstrap.into()];
    std::fs::write(
        dir.join("node.toml"),
        toml::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
}

/// The lines `join --at` prints, once it finds a region there (bounded).
fn located(data: &str, at: &str, want: impl Fn(&str) -> bool) -> String {
    common::eventually(&format!("a region at {at}"), || {
        let out = run(&["join", "--at", at, "--data", data]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && want(&text)).then_some(text)
    })
}

/// A region hosted by a group of four processes is announced in the
/// overlay with the group's members, signed by them; another peer finds
/// the group with `join --at` and follows the region as an observer with
/// the command it printed; a private world claiming the same region id is
/// refused by the peers that hold the group's record.
#[test]
fn a_group_is_found_through_the_overlay_and_cannot_be_taken_over() {
    let seed_dir = tempfile::tempdir().unwrap();
    write_config(seed_dir.path(), 7, "1000,0", None);
    let seed = Node::start(seed_dir.path());
    let seed_addr = overlay_addr(&seed);
    let seed_data = seed_dir.path().to_str().unwrap();

    let (_base, dirs) = common::group_init();
    for d in &dirs {
        enable_overlay(d, "0,0", &seed_addr);
    }
    let members: Vec<Node> = dirs.iter().map(|d| Node::start(d)).collect();
    let keys: Vec<String> = members
        .iter()
        .map(|m| {
            m.get("/api/status").json().unwrap()["group"]["me"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    // From the seed: region 1 at (10 m, 10 m), hosted by the four, with a
    // command to follow it.
    let text = located(seed_data, "10,10", |t| t.contains("follow it:"));
    assert!(text.contains("region 1 "), "{text}");
    assert!(text.contains("signed_by=1/4"), "{text}");
    let follow = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("follow it: metatopia "))
        .unwrap()
        .to_string();
    for k in &keys {
        assert!(
            follow.contains(&format!("{k}@/ip4/127.0.0.1/tcp/")),
            "{follow}"
        );
    }

    // Follow it with exactly that command.
    let observer_dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = follow.split_whitespace().collect();
    args.extend(["--http", "127.0.0.1:0"]);
    let observer = Node::start_with(&args, observer_dir.path());
    common::eventually("the observer agrees with the group", || {
        common::observer_agrees(&observer, 2)
    });
    // Or in one step: a peer that only knows the overlay finds the group at
    // a point and follows it.
    let finder_dir = tempfile::tempdir().unwrap();
    write_config(finder_dir.path(), 9, "5000,5000", Some(&seed_addr));
    let finder = Node::start_with(
        &[
            "join",
            "--at",
            "100,200",
            "--follow",
            "--http",
            "127.0.0.1:0",
        ],
        finder_dir.path(),
    );
    assert!(
        finder
            .header
            .iter()
            .any(|l| l.contains("region 1 at 100,200 is hosted by a group of 4")),
        "{:?}",
        finder.header
    );
    common::eventually("the finder agrees with the group", || {
        common::observer_agrees(&finder, 2)
    });
    // Without a way into the overlay it says so.
    let lost_dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "join",
        "--at",
        "100,200",
        "--follow",
        "--data",
        lost_dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[overlay] bootstrap"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A private world that claims region 1 at the same place: its record
    // is refused, and the group's record stays.
    let rogue_dir = tempfile::tempdir().unwrap();
    write_config(rogue_dir.path(), 1, "0,0", Some(&seed_addr));
    let rogue = Node::start(rogue_dir.path());
    let _ = overlay_addr(&rogue);
    common::eventually("the rogue record refused somewhere", || {
        let refused: u64 = members
            .iter()
            .chain([&seed, &rogue])
            .map(|n| {
                n.get("/api/overlay").json().unwrap()["regions_refused"]
                    .as_u64()
                    .unwrap()
            })
            .sum();
        (refused > 0).then_some(())
    });
    let text = located(seed_data, "10,10", |_| true);
    assert!(
        text.contains(&keys[0]) && text.contains("signed_by=1/4"),
        "{text}"
    );
    let rogue_key = rogue.get("/api/status").json().unwrap()["node"]["player"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.contains(&rogue_key), "{text}");
}
