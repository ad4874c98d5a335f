//! Replay and recovery refuse corrupt logs and snapshots, naming the tick,
//! and never accept them silently.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::run;
use metatopia_node::replica::wire::player_of;
use metatopia_node::replica::{Manifest, Proposal, SignedInput};
use metatopia_node::store::{LOG_MAGIC, LogRecord, Store};
use metatopia_sim::input::InputKind;
use metatopia_sim::state::Settings;
use metatopia_sim::{NoScripts, RegionId, Vec3, snapshot};

/// A world of 30 ticks with snapshots at ticks 10, 20, 30.
fn build(dir: &Path) -> String {
    let store = Store::open(&dir.join("world.redb")).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let manifest = Manifest::solo(RegionId(1), Settings::default(), player_of(&key));
    let mut region = store.init(&manifest).unwrap();
    let mut parent = manifest.genesis_digest();
    let fx = metatopia_sim::Fx::from_int;
    for t in 0..30u64 {
        let body = region.sim().state().bodies.keys().next().copied();
        let kind = match (t, body) {
            (0, _) => InputKind::Join { name: "p".into() },
            // A ball that physics moves, pushed at tick 3: replay and
            // recovery re-run the physics.
            (1, _) => InputKind::SpawnBody {
                parent: None,
                name: "ball".into(),
                pos: Vec3::new(fx(10), fx(10), fx(20)),
                body: metatopia_physics::scene::ball(500),
                vel: Vec3::new(fx(1), fx(0), fx(0)),
            },
            (3, Some(element)) => InputKind::Push {
                element,
                impulse: Vec3::new(fx(0), fx(2), fx(0)),
            },
            _ => InputKind::Say {
                text: format!("tick {t}"),
                radius: None,
            },
        };
        let proposal = Proposal {
            region: RegionId(1),
            tick: t,
            parent,
            time_ms: 1000 + t * 50,
            inputs: vec![SignedInput::sign(&key, RegionId(1), t + 1, kind)],
            sources: Vec::new(),
            border: Vec::new(),
        };
        parent = proposal.digest();
        let report = region.tick(&proposal.batch(), &NoScripts, &[]).unwrap();
        let snap = region
            .tick_number()
            .is_multiple_of(10)
            .then(|| region.snapshot());
        store
            .append(
                &LogRecord {
                    proposal,
                    hash: report.hash,
                    proof: Vec::new(),
                },
                snap.as_deref(),
            )
            .unwrap();
    }
    metatopia_sim::hex(&region.hash())
}

fn replay(dir: &Path) -> (bool, String) {
    let out = run(&["replay", "--data", dir.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_clean_log_replays_to_the_same_hash() {
    let dir = tempfile::tempdir().unwrap();
    let hash = build(dir.path());
    let (ok, text) = replay(dir.path());
    assert!(ok, "{text}");
    assert!(text.contains("replayed 30 ticks"), "{text}");
    assert!(
        text.trim_end().ends_with(&format!("state_hash={hash}")),
        "{text}"
    );
}

#[test]
fn a_flipped_byte_in_the_log_is_reported_with_its_tick() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    {
        let store = Store::open(&dir.path().join("world.redb")).unwrap();
        let mut raw = store.read_raw("log", 17).unwrap().unwrap();
        // The first payload byte: the proposal's region.
        raw[6] ^= 0x55;
        store.write_raw("log", 17, &raw).unwrap();
    }
    let (ok, text) = replay(dir.path());
    assert!(!ok);
    assert!(text.contains("tick 17"), "{text}");
    // Recovery starts from snapshot 30 (intact) but reports the bad record.
    let store = Store::open(&dir.path().join("world.redb")).unwrap();
    let (_, recovery) = store.recover(&NoScripts).unwrap();
    assert_eq!(recovery.corrupt_records.len(), 1, "{recovery:?}");
    assert_eq!(recovery.corrupt_records[0].0, 17);
    // With the later snapshots gone, recovery must replay through tick 17
    // and refuses.
    drop(store);
    let store = Store::open(&dir.path().join("world.redb")).unwrap();
    for t in [20, 30] {
        let mut raw = store.read_raw("snapshots", t).unwrap().unwrap();
        raw[0] ^= 0xff;
        store.write_raw("snapshots", t, &raw).unwrap();
    }
    let err = store.recover(&NoScripts).unwrap_err().to_string();
    assert!(err.contains("tick 17"), "{err}");
}

#[test]
fn a_valid_but_altered_batch_is_a_hash_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    {
        let store = Store::open(&dir.path().join("world.redb")).unwrap();
        let mut record = store.record(12).unwrap().unwrap();
        record.proposal.inputs[0].input.kind = InputKind::Say {
            text: "forged".into(),
            radius: None,
        };
        store
            .write_raw("log", 12, &snapshot::encode(LOG_MAGIC, &record))
            .unwrap();
    }
    let (ok, text) = replay(dir.path());
    assert!(!ok);
    assert!(text.contains("state hash mismatch at tick 12"), "{text}");
}

#[test]
fn the_log_hash_covers_physics() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    {
        let store = Store::open(&dir.path().join("world.redb")).unwrap();
        let mut record = store.record(3).unwrap().unwrap();
        // Still a valid push of the same body, only harder: the main sim
        // state after tick 3 is the same, the physics world is not.
        let InputKind::Push { impulse, .. } = &mut record.proposal.inputs[0].input.kind else {
            panic!("tick 3 holds the push");
        };
        impulse.y = metatopia_sim::Fx::from_int(3);
        store
            .write_raw("log", 3, &snapshot::encode(LOG_MAGIC, &record))
            .unwrap();
    }
    let (ok, text) = replay(dir.path());
    assert!(!ok);
    assert!(text.contains("state hash mismatch at tick 3"), "{text}");
}

#[test]
fn a_corrupt_snapshot_is_reported_by_replay_and_skipped_by_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let hash = build(dir.path());
    {
        let store = Store::open(&dir.path().join("world.redb")).unwrap();
        let mut raw = store.read_raw("snapshots", 30).unwrap().unwrap();
        let mid = raw.len() / 2;
        raw[mid] ^= 0x01;
        store.write_raw("snapshots", 30, &raw).unwrap();
    }
    let (ok, text) = replay(dir.path());
    assert!(!ok);
    assert!(text.contains("tick 30"), "{text}");
    let store = Store::open(&dir.path().join("world.redb")).unwrap();
    let (region, recovery) = store.recover(&NoScripts).unwrap();
    assert_eq!(recovery.snapshot_tick, 20);
    assert_eq!(recovery.skipped_snapshots.len(), 1);
    assert_eq!(recovery.skipped_snapshots[0].0, 30);
    assert_eq!(metatopia_sim::hex(&region.hash()), hash);
}

#[test]
fn replay_of_a_missing_world_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = replay(dir.path());
    assert!(!ok);
    assert!(text.contains("no world"), "{text}");
}
