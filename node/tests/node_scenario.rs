//! `metatopia run`: the same scenario gives the same hash in separate
//! processes and with any thread count; errors name the field.

#![allow(clippy::unwrap_used)]

mod common;

use common::{examples, final_hash, run, run_env};

#[test]
fn same_hash_in_two_processes_and_any_thread_count() {
    let file = examples().join("hello.toml");
    let file = file.to_str().unwrap();
    let a = run(&["run", file]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = run(&["run", file]);
    let one = run_env(&["run", file], &[("RAYON_NUM_THREADS", "1")]);
    let two = run_env(&["run", file], &[("RAYON_NUM_THREADS", "2")]);
    let h = final_hash(&a);
    assert_eq!(h.len(), 64);
    assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(final_hash(&b), h);
    assert_eq!(final_hash(&one), h);
    assert_eq!(final_hash(&two), h);
    let stdout = String::from_utf8_lossy(&a.stdout);
    assert!(stdout.contains("9 accepted, 1 rejected"), "{stdout}");
    // More ticks is a different state (time moved on).
    let longer = run(&["run", file, "--ticks", "41"]);
    assert_ne!(final_hash(&longer), h);
}

#[test]
fn seed_temp_admin_example_ends_with_charlie() {
    let file = examples().join("temp-admin.toml");
    let out = run(&["run", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("temp_admin=Charlie"), "{stdout}");
    // Bob's settings change (as temp admin) applied; his kick (after Charlie
    // took over) was refused.
    assert!(stdout.contains("1 rejected"), "{stdout}");
}

#[test]
fn scenario_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[[region]]\nid = 1\ncolour = 3\n", "colour"),
        ("ticks = 3\n", "region"),
        (
            "[[region]]\nid = 1\n[[object]]\nname = \"x\"\npos = \"1,2\"\n",
            "object[0].pos",
        ),
        (
            "[[region]]\nid = 1\n[[player]]\nname = \"a\"\n[[input]]\ntick = 0\nby = \"a\"\ndo = \"touch\"\nelement = \"@nope\"\n",
            "input[0].element",
        ),
        (
            "[[region]]\nid = 1\n[[input]]\ntick = 0\nby = \"ghost\"\ndo = \"leave\"\n",
            "input[0].by",
        ),
        (
            "[[region]]\nid = 1\n[[player]]\nname = \"a\"\n[[input]]\ntick = 0\nby = \"a\"\ndo = \"say\"\ntext = \"x\"\nradius = \"wide\"\n",
            "input[0].radius",
        ),
        (
            "[[region]]\nid = 1\n[[player]]\nname = \"a\"\n[[input]]\ntick = 0\nby = \"a\"\ndo = \"teleport\"\n",
            "teleport",
        ),
        (
            "[[region]]\nid = 1\n[region.settings]\nsize = \"x\"\n",
            "region[0].settings.size",
        ),
        ("[[region]]\nid = 1\n[[region]]\nid = 1\n", "region[1].id"),
        ("not toml at all [", "TOML"),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = run(&["run", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} should fail");
        assert!(
            stderr.contains(expect),
            "case {i}: {stderr:?} should mention {expect:?}"
        );
        assert!(!stderr.contains("panicked"), "case {i} panicked: {stderr}");
    }
    let out = run(&["run", dir.path().join("missing.toml").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
