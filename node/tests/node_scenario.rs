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
        // Times that would saturate are refused, naming the field (issue 11).
        (
            "tick_ms = 18446744073709551615\n[[region]]\nid = 1\n",
            "tick_ms: 18446744073709551615 ms, limit",
        ),
        (
            "start_ms = 18446744073709551615\n[[region]]\nid = 1\n",
            "start_ms: 18446744073709551615 ms, limit",
        ),
        (
            "[[region]]\nid = 1\n[[clock]]\ntick = 0\ntime_ms = 18446744073709551615\n",
            "clock[0].time_ms",
        ),
        (
            "ticks = 100000\ntick_ms = 31536000000\nstart_ms = 253000000000000\n[[region]]\nid = 1\n",
            "tick_ms: 31536000000 ms per tick from start_ms",
        ),
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

/// A scenario author sees why each input was refused and why each script
/// faulted, with the tick, the player and the input (issue 11); `--quiet`
/// leaves only the summary.
///
/// Long on purpose: one scenario told step by step; its assertions read the state the steps before them built.
#[test]
fn run_prints_each_rejection_and_fault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.toml");
    std::fs::write(
        &path,
        r#"
[[region]]
id = 1

[[player]]
name = "alice"

[[object]]
key = "lamp"
name = "lamp"
pos = "1,1,0"
owner = "alice"

[[script]]
key = "broken"
source = "-- SPDX-License-Identifier: MPL-2.0\nfunction on_touch() error('the bulb is gone') end\n"

[[input]]
tick = 0
by = "alice"
do = "move"
element = "@lamp"
to = "2,2,0"

[[input]]
tick = 1
by = "alice"
do = "join"
name = "alice"

[[input]]
tick = 2
by = "alice"
do = "attach"
element = "@lamp"
script = "@broken"

[[input]]
tick = 3
by = "alice"
do = "touch"
element = "@lamp"
"#,
    )
    .unwrap();
    let file = path.to_str().unwrap();
    let out = run(&["run", file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "tick 0 region 1: input[0] by alice rejected: player has not joined this region; input {\"do\":\"move\",\"element\":\"@lamp\",\"to\":\"2,2,0\"}"
        ),
        "{stdout}"
    );
    let fault = stdout
        .lines()
        .find(|l| {
            l.starts_with("tick 3 region 1: script 1.") && l.contains("(owner alice) faulted")
        })
        .unwrap_or_else(|| panic!("no fault line: {stdout}"));
    assert!(fault.contains("the bulb is gone"), "{fault}");
    assert!(stdout.contains("1 rejected"), "{stdout}");
    assert!(stdout.contains("scripts: 1 faults"), "{stdout}");
    let hash = final_hash(&out);

    let quiet = run(&["run", file, "--quiet"]);
    let quiet_out = String::from_utf8_lossy(&quiet.stdout);
    assert!(!quiet_out.contains("rejected:"), "{quiet_out}");
    assert!(!quiet_out.contains("faulted"), "{quiet_out}");
    assert!(quiet_out.contains("1 rejected"), "{quiet_out}");
    assert_eq!(final_hash(&quiet), hash);
}

/// A 3 MB one-line scenario with a type error: the error quotes a little
/// of the line once, not the whole line and a caret under each byte
/// (issue 11).
#[test]
fn a_huge_line_is_not_quoted_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.toml");
    std::fs::write(
        &path,
        format!(
            "ticks = \"{}\"\n[[region]]\nid = 1\n",
            "9".repeat(3_000_000)
        ),
    )
    .unwrap();
    let out = run(&["run", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.len() < 2000, "{} bytes of error", stderr.len());
    assert!(stderr.contains("line 1, column 9"), "{stderr}");
    assert!(stderr.contains("invalid type"), "{stderr}");
}
