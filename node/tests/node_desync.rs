//! `metatopia desync`: two snapshots that differ in one known field name
//! that element and field; two traces name the first diverging tick; a
//! file that is neither gets a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::run;
use metatopia_scripts::codec::{self, Data};
use metatopia_sim::ElementId;
use metatopia_sim::snapshot::{decode_state, encode_state};

fn suite(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/determinism")
        .join(name);
    p.to_str().unwrap().to_string()
}

#[test]
fn snapshots_differing_in_a_script_state_field_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.snap");
    let b = dir.path().join("b.snap");
    let file = suite("scripts-hot-reload.toml");
    let out = run(&[
        "run",
        &file,
        "--ticks",
        "60",
        "--snapshot",
        a.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same run written twice is identical.
    let same = run(&[
        "run",
        &file,
        "--ticks",
        "60",
        "--snapshot",
        b.to_str().unwrap(),
    ]);
    assert!(same.status.success());
    let out = run(&["desync", a.to_str().unwrap(), b.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("the states are identical"), "{stdout}");
    // Change one field: the counter's (element 1.1) persistent `n`.
    let mut state = decode_state(&std::fs::read(&a).unwrap()).unwrap();
    let id = ElementId::new(1, 1);
    let mut e = state.elements.get(&id).unwrap().clone();
    let slot = e.script.as_mut().expect("the counter has a script");
    let Data::Table(mut t) = codec::decode(&slot.state).unwrap() else {
        panic!("state is a table")
    };
    let n = t
        .iter_mut()
        .find(|(k, _)| *k == Data::Str(b"n".to_vec()))
        .expect("the counter counted");
    let Data::Int(old) = n.1 else {
        panic!("n is an integer")
    };
    n.1 = Data::Int(old + 1);
    slot.state = codec::encode(&Data::Table(t), 65_536).unwrap();
    state.elements.insert(id, e);
    std::fs::write(&b, encode_state(&state)).unwrap();
    let out = run(&["desync", a.to_str().unwrap(), b.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    let report: Vec<&str> = stdout.lines().skip(2).collect();
    assert_eq!(
        report,
        vec![format!("element 1.1 script.state.n: {old} != {}", old + 1)],
        "{stdout}"
    );
    assert!(
        stderr.contains("the states differ (1 differences)"),
        "{stderr}"
    );
}

#[test]
fn traces_name_the_first_diverging_tick() {
    let dir = tempfile::tempdir().unwrap();
    let file = suite("chat.toml");
    let a = run(&["run", &file, "--quiet", "--trace"]);
    assert!(a.status.success());
    let text = String::from_utf8_lossy(&a.stdout).to_string();
    assert_eq!(text.lines().filter(|l| l.starts_with("tick ")).count(), 60);
    let pa = dir.path().join("a.txt");
    let pb = dir.path().join("b.txt");
    std::fs::write(&pa, &text).unwrap();
    std::fs::write(&pb, &text).unwrap();
    let same = run(&["desync", pa.to_str().unwrap(), pb.to_str().unwrap()]);
    assert!(same.status.success());
    // Corrupt the hash after tick 17 (and everything after it).
    let bad: String = text
        .lines()
        .map(
            |l| match l.strip_prefix("tick ").and_then(|r| r.split_once(' ')) {
                Some((t, _)) if t.parse::<u64>().unwrap() >= 17 => {
                    format!("tick {t} state_hash={}\n", "ab".repeat(32))
                }
                _ => format!("{l}\n"),
            },
        )
        .collect();
    std::fs::write(&pb, bad).unwrap();
    let out = run(&["desync", pa.to_str().unwrap(), pb.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("first diverging tick: 17"), "{stdout}");
}

#[test]
fn a_file_that_is_not_a_snapshot_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.snap");
    std::fs::write(&junk, b"hello, not a snapshot").unwrap();
    let out = run(&["desync", junk.to_str().unwrap(), junk.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("junk.snap: neither a state snapshot"),
        "{stderr}"
    );
    // The magic but a broken body.
    std::fs::write(&junk, b"MTSS\x02\x00\xff\xff").unwrap();
    let out = run(&["desync", junk.to_str().unwrap(), junk.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("junk.snap: not a valid state snapshot"),
        "{stderr}"
    );
}
