//! Rollback on one member (ADR 0010): a view this member executed is
//! nullified and the next proposal builds on an earlier link, so the core
//! restores its base snapshot and re-executes the finalized ticks since
//! the base plus the links it keeps. The region has 1,000 avatars, every
//! one moved every tick (1,000 signed inputs a tick).
//!
//! `cargo bench -p metatopia-node --bench rollback`
//!
//! - `rollback_nearest`: the base was taken at the finalized tick, one
//!   link kept: one tick re-executed (the best case).
//! - `rollback_farthest`: the base is `rollback_every - 1` finalized ticks
//!   old and one link kept: `rollback_every` ticks re-executed (the worst
//!   case with one speculative link).
//! - `execute_one_tick`: executing one such tick on the head, for scale.
//! - `snapshot_head`: the snapshot the core takes every `rollback_every`
//!   ticks (its steady cost).

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;

use metatopia_node::replica::core::Output;
use metatopia_node::replica::wire::{Digest, player_of};
use metatopia_node::replica::{
    Answer, Config, Manifest, MemSources, Message, Order, Proposal, Replica, SignedInput,
};
use metatopia_sim::input::InputKind;
use metatopia_sim::state::Settings;
use metatopia_sim::{Fx, NoScripts, RegionId, Vec3};

const PLAYERS: usize = 1000;
const TICK_MS: u64 = 50;
const START_MS: u64 = 1_000_000;

/// The group, the players' keys and the core's configuration.
struct World {
    manifest: Manifest,
    members: Vec<SigningKey>,
    players: Vec<SigningKey>,
    cfg: Config,
}

fn world() -> World {
    let members: Vec<SigningKey> = (0..4u8)
        .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
        .collect();
    let players = (0..PLAYERS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 100).to_le_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let manifest = Manifest {
        region: RegionId(1),
        settings: Settings {
            players_online_max: 2000,
            ..Settings::default()
        },
        founders: vec![player_of(&members[0])],
        members: members.iter().map(player_of).collect(),
    };
    let cfg = Config {
        inputs_per_tick_max: PLAYERS,
        ..Config::default()
    };
    World {
        manifest,
        members,
        players,
        cfg,
    }
}

impl World {
    fn replica(&self) -> Replica {
        Replica::new(
            self.cfg.clone(),
            self.manifest.clone(),
            self.members[1].clone(),
            Arc::new(NoScripts),
            Arc::new(MemSources::default()),
            self.manifest.genesis(),
            self.manifest.genesis_digest(),
        )
    }

    fn proposal(&self, tick: u64, parent: Digest, inputs: Vec<SignedInput>) -> Proposal {
        Proposal {
            region: self.manifest.region,
            tick,
            parent,
            time_ms: START_MS + tick * TICK_MS,
            inputs,
            sources: Vec::new(),
            border: Vec::new(),
        }
    }

    /// Tick 0 joins every player; ticks 1..`ticks` move every avatar.
    fn chain(&self, ticks: u64) -> Vec<Proposal> {
        let joins = self
            .players
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let name = format!("p{i}");
                SignedInput::sign(k, self.manifest.region, 1, InputKind::Join { name })
            })
            .collect();
        let first = self.proposal(0, self.manifest.genesis_digest(), joins);
        // The avatars' ids: execute the joins once.
        let mut r = self.replica();
        verify(&mut r, &first, self.manifest.genesis_digest());
        let state = r.head().sim().state();
        let avatars: Vec<_> = self
            .players
            .iter()
            .map(|k| {
                state.players[&player_of(k)]
                    .avatar
                    .expect("a joined player has an avatar")
            })
            .collect();
        let mut out = vec![first];
        for tick in 1..ticks {
            let inputs = self
                .players
                .iter()
                .zip(&avatars)
                .enumerate()
                .map(|(i, (k, a))| {
                    let step = i32::try_from((tick + i as u64) % 100).unwrap_or(0);
                    let to = Vec3 {
                        x: Fx::from_int(10 + step),
                        y: Fx::from_int(10 + (i % 200) as i32),
                        z: Fx::from_int(1),
                    };
                    SignedInput::sign(
                        k,
                        self.manifest.region,
                        tick + 1,
                        InputKind::Move { element: *a, to },
                    )
                })
                .collect();
            let parent = out.last().map(Proposal::digest).unwrap_or_default();
            out.push(self.proposal(tick, parent, inputs));
        }
        out
    }
}

/// Hands `p` to the core and asks it to verify it on `parent`; panics
/// unless it is valid.
fn verify(r: &mut Replica, p: &Proposal, parent: Digest) {
    let primary = player_of(&SigningKey::from_bytes(&[1; 32]));
    let now = p.time_ms;
    r.handle(now, primary, Message::Proposal(p.clone()));
    r.order(
        now,
        Order::Verify {
            req: p.tick,
            parent,
            digest: p.digest(),
        },
    );
    let mut valid = None;
    while let Some(out) = r.poll_output() {
        if let Output::Answer(Answer::Verified { valid: v, .. }) = out {
            valid = Some(v);
        }
    }
    assert_eq!(valid, Some(true), "tick {} did not verify", p.tick);
}

/// A core that executed `chain`, with everything up to and including
/// tick `finalized` finalized.
fn executed(w: &World, chain: &[Proposal], finalized: u64) -> Replica {
    let mut r = w.replica();
    let mut parent = w.manifest.genesis_digest();
    for p in chain {
        verify(&mut r, p, parent);
        parent = p.digest();
    }
    let f = &chain[usize::try_from(finalized).unwrap_or(0)];
    r.order(
        f.time_ms,
        Order::Finalized {
            digest: f.digest(),
            proof: Vec::new(),
        },
    );
    while r.poll_output().is_some() {}
    r
}

/// Benchmarks a rollback to the link after `finalized`: the chain runs two
/// ticks past it, and a proposal (no inputs) replaces the second.
fn rollback(c: &mut Criterion, name: &str, w: &World, chain: &[Proposal], finalized: u64) {
    let head = usize::try_from(finalized + 3).unwrap_or(0);
    let chain = &chain[..head];
    let kept = &chain[head - 2];
    let replacement = w.proposal(kept.tick + 1, kept.digest(), Vec::new());
    c.bench_function(name, |b| {
        b.iter_batched(
            || executed(w, chain, finalized),
            |mut r| {
                verify(&mut r, &replacement, kept.digest());
                assert!(r.stats().rollbacks > 0, "no rollback happened");
                r
            },
            BatchSize::PerIteration,
        )
    });
    let mut r = executed(w, chain, finalized);
    let before = r.stats().reexecuted;
    verify(&mut r, &replacement, kept.digest());
    println!(
        "{name}: {} tick(s) re-executed, {} players",
        r.stats().reexecuted - before,
        PLAYERS
    );
}

fn bench(c: &mut Criterion) {
    let w = world();
    let every = w.cfg.rollback_every;
    // Finalized ticks 2 * every - 1 and 2 * every - 2: the base moves to the
    // snapshot after tick 2 * every - 1 (or stays at every - 1).
    let chain = w.chain(2 * every + 2);
    rollback(c, "rollback_nearest", &w, &chain, 2 * every - 1);
    rollback(c, "rollback_farthest", &w, &chain, 2 * every - 2);
    let head = usize::try_from(every + 1).unwrap_or(0);
    c.bench_function("execute_one_tick", |b| {
        b.iter_batched(
            || executed(&w, &chain[..head], 0),
            |mut r| {
                let p = &chain[head];
                verify(&mut r, p, chain[head - 1].digest());
                r
            },
            BatchSize::PerIteration,
        )
    });
    let r = executed(&w, &chain[..head], 0);
    c.bench_function("snapshot_head", |b| b.iter(|| r.head().snapshot().len()));
    println!("snapshot_head: {} bytes", r.head().snapshot().len());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
