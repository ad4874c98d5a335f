//! Four replica-group members in one process agree on ticks over real
//! libp2p streams on loopback (TCP, noise, yamux), with the real engine
//! (commonware Simplex on its tokio runtime): every member logs the same
//! proposals with the same region hashes, and the inputs players send to
//! any member are acknowledged once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commonware_runtime::{Clock, Runner as _, Spawner, Supervisor};
use ed25519_dalek::SigningKey;

use metatopia_node::replica::core::Output;
use metatopia_node::replica::member::{self, Faults};
use metatopia_node::replica::simplex::{self, Timing};
use metatopia_node::replica::wire::player_of;
use metatopia_node::replica::{Config, Digest, Manifest, MemSources, Replica, SignedInput, net};
use metatopia_sim::input::InputKind;
use metatopia_sim::state::Settings;
use metatopia_sim::{NoScripts, PlayerId, RegionId};

#[derive(Debug, Default)]
struct Seen {
    logs: Vec<BTreeMap<u64, (Digest, Digest)>>,
    acks: BTreeMap<(PlayerId, u64), u64>,
    rejected: Vec<String>,
}

const LABELS: [&str; 4] = ["m0", "m1", "m2", "m3"];

/// Long on purpose: one scenario told step by step; its assertions read the state the steps before them built.
#[test]
fn four_members_agree_over_libp2p_on_loopback() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let storage = tempfile::tempdir().expect("tempdir");
    let cfg = commonware_runtime::tokio::Config::new()
        .with_storage_directory(storage.path())
        .with_worker_threads(2);
    let seen = Arc::new(Mutex::new(Seen {
        logs: vec![BTreeMap::new(); 4],
        ..Seen::default()
    }));
    let result = seen.clone();
    commonware_runtime::tokio::Runner::new(cfg).start(|context| async move {
        let keys: Vec<SigningKey> = (1..=4u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        // Four players, each on its own member (a player's node talks to
        // one member, so its inputs arrive in order).
        let players: Vec<SigningKey> = (40..44u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let manifest = Manifest {
            region: RegionId(3),
            settings: Settings::default(),
            founders: vec![player_of(&players[0])],
            members: keys.iter().map(player_of).collect(),
        };
        let mut meshes = Vec::new();
        for k in &keys {
            let mesh = net::listen(
                k,
                "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"),
                net::Caps::default(),
            )
            .await
            .expect("listen on loopback");
            meshes.push(mesh);
        }
        let addrs: Vec<_> = manifest
            .members
            .iter()
            .copied()
            .zip(meshes.iter().map(|m| m.addr.clone()))
            .collect();
        let mut inputs = Vec::new();
        for (i, mesh) in meshes.iter_mut().enumerate() {
            let key = keys[i].clone();
            let me = player_of(&key);
            let mut channels = mesh
                .connect(me, &addrs, &simplex::CHANNELS)
                .await
                .expect("connect");
            let members_ch = channels.pop().expect("4 channels");
            let resolver = channels.pop().expect("4 channels");
            let certs = channels.pop().expect("4 channels");
            let votes = channels.pop().expect("4 channels");
            let core = Replica::new(
                Config::default(),
                manifest.clone(),
                key.clone(),
                Arc::new(NoScripts),
                Arc::new(MemSources::default()),
                manifest.genesis(),
                manifest.genesis_digest(),
            );
            let (app, engine) = simplex::bridge();
            simplex::start(
                context.child(LABELS[i]),
                &key,
                &manifest.members,
                manifest.genesis_digest(),
                format!("member-{i}"),
                &Timing::default(),
                net::Blocker::default(),
                app,
                votes,
                certs,
                resolver,
            )
            .expect("engine starts");
            let (tx, rx) = commonware_utils::channel::mpsc::channel(1024);
            inputs.push(tx);
            let seen = seen.clone();
            context.child(LABELS[i]).spawn(move |ctx| async move {
                member::run(
                    ctx,
                    core,
                    engine,
                    members_ch,
                    rx,
                    None,
                    Faults::default(),
                    move |out| {
                        let Ok(mut s) = seen.lock() else { return };
                        match out {
                            Output::Commit(c) => {
                                s.logs[i].insert(c.proposal.tick, (c.proposal.digest(), c.hash));
                            }
                            Output::Committed {
                                player,
                                seq,
                                tick,
                                sig: _,
                                rejection,
                            } => {
                                s.acks.insert((player, seq), tick);
                                if let Some(r) = rejection {
                                    s.rejected.push(format!("({player}, {seq}): {r}"));
                                }
                            }
                            _ => {}
                        }
                    },
                )
                .await;
            });
        }
        // Once every member has committed a tick (the group is up: on a
        // loaded machine the first inputs were lost while members were
        // still connecting), each player sends 10 inputs to its member,
        // one every 50 ms.
        for _ in 0..300 {
            let up = seen
                .lock()
                .map(|s| s.logs.iter().all(|l| !l.is_empty()))
                .unwrap_or(false);
            if up {
                break;
            }
            context.sleep(Duration::from_millis(100)).await;
        }
        for seq in 1..=10u64 {
            for (k, player) in players.iter().enumerate() {
                let kind = if seq == 1 {
                    InputKind::Join {
                        name: format!("p{k}"),
                    }
                } else {
                    InputKind::Say {
                        text: format!("line {seq}"),
                        radius: None,
                    }
                };
                let input = SignedInput::sign(player, manifest.region, seq, kind);
                let _ = inputs[k].try_send(input);
            }
            context.sleep(Duration::from_millis(50)).await;
        }
        // Then until every input is acknowledged and every member has
        // logged the tick of the last one (at most 30 s more).
        let done = |s: &Seen| {
            let last = s.acks.values().max().copied().unwrap_or(0);
            s.acks.len() >= 40 && s.logs.iter().all(|l| l.len() as u64 > last)
        };
        for _ in 0..300 {
            context.sleep(Duration::from_millis(100)).await;
            if seen.lock().map(|s| done(&s)).unwrap_or(false) {
                break;
            }
        }
    });
    let s = result.lock().expect("not poisoned");
    let lengths: Vec<usize> = s.logs.iter().map(|l| l.len()).collect();
    // How many ticks fit in the run depends on the machine; that every
    // member logged the ticks holding the 40 inputs is checked below.
    assert!(
        lengths.iter().all(|l| *l >= 1),
        "ticks logged per member: {lengths:?}"
    );
    for tick in 0..*lengths.iter().min().expect("4 members") as u64 {
        let first = s.logs[0].get(&tick);
        for (i, log) in s.logs.iter().enumerate() {
            assert_eq!(log.get(&tick), first, "member {i} differs at tick {tick}");
        }
    }
    assert_eq!(s.acks.len(), 40, "inputs acknowledged: {:?}", s.acks);
    let last = s.acks.values().max().copied().unwrap_or(0);
    assert!(
        lengths.iter().all(|l| *l as u64 > last),
        "every member logged the tick of the last input ({last}): {lengths:?}"
    );
    // Every input was applied (no rejection): each player joined first.
    assert!(s.rejected.is_empty(), "rejected: {:?}", s.rejected);
}

/// The swarm's connection caps hold: a member capped at 2 connections
/// keeps 2 of 4 peers that dial it; uncapped, it takes all 4.
#[test]
fn the_swarm_denies_connections_over_its_cap() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let addr = || "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr");
        for (total, expected) in [(2, 2), (1024, 4)] {
            let caps = net::Caps {
                total,
                ..net::Caps::default()
            };
            let hub_key = SigningKey::from_bytes(&[40; 32]);
            let hub = net::listen(&hub_key, addr(), caps).await.expect("listen");
            let mut dialers = Vec::new();
            for i in 0..4u8 {
                let key = SigningKey::from_bytes(&[41 + i; 32]);
                let mesh = net::listen(&key, addr(), net::Caps::default())
                    .await
                    .expect("listen");
                mesh.dial(player_of(&hub_key), hub.addr.clone())
                    .expect("a peer id");
                dialers.push(mesh);
            }
            // Let the dialers try (and retry, every 500 ms) for 3 s.
            let mut most = 0;
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                most = most.max(hub.connected());
            }
            assert_eq!(most, expected, "cap {total}");
            assert_eq!(hub.connected(), expected, "cap {total}");
        }
    });
}
