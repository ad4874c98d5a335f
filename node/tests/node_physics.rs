//! Physics scenes through the real binary: `metatopia run` on scene files
//! with several regions as boxes, bodies crossing borders, and the named
//! border-storm scene. Two runs are two processes: same hashes.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metatopia"))
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scene(name: &str) -> String {
    format!(
        "{}/../physics/scenes/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn head_on_scene_reports_one_collision_per_owner_in_two_processes() {
    let (ok, a, err) = run(&[&scene("head-on")]);
    assert!(ok, "{err}");
    assert!(
        a.contains("physics: 0 body handoffs, 2 collision reports"),
        "{a}"
    );
    let (_, b, _) = run(&[&scene("head-on")]);
    assert_eq!(a, b);
    assert!(a.lines().last().unwrap().starts_with("state_hash="));
}

#[test]
fn corner_scene_hands_bodies_over_between_four_regions() {
    let (ok, out, err) = run(&[&scene("corner")]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("region ")).count(), 4);
    assert!(out.contains("physics: 2 body handoffs"), "{out}");
}

#[test]
fn border_storm_scene_runs_and_repeats() {
    let (ok, a, err) = run(&[&scene("border-storm"), "--ticks", "40"]);
    assert!(ok, "{err}");
    let (_, b, _) = run(&[&scene("border-storm"), "--ticks", "40"]);
    assert_eq!(a, b);
    assert!(!a.contains("physics: 0 body handoffs"), "{a}");
}

#[test]
fn bad_scene_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[physics]\nticks = 5\n[[physics.region]]\nid = 1\nmin = \"0,0,0\"\nmax = \"0,1,1\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(&[path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("physics.region[0]: min must be below max"),
        "{err}"
    );
}
