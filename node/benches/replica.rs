//! Replication's CPU on one member: checking and executing a proposal of
//! 1,000 signed inputs (signatures on the rayon pool), and admitting 1,000
//! forwarded inputs. `cargo bench -p metatopia-node --bench replica`.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;

use metatopia_node::replica::core::Output;
use metatopia_node::replica::wire::player_of;
use metatopia_node::replica::{
    Answer, Config, Manifest, MemSources, Message, Order, Proposal, Replica, SignedInput,
};
use metatopia_sim::input::InputKind;
use metatopia_sim::state::Settings;
use metatopia_sim::{NoScripts, RegionId};

const INPUTS: usize = 1000;

fn setup() -> (Manifest, Vec<SigningKey>, Vec<SignedInput>) {
    let members: Vec<SigningKey> = (0..4u8)
        .map(|i| SigningKey::from_bytes(&[i + 1; 32]))
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
    let inputs = (0..INPUTS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64 + 100).to_le_bytes());
            let key = SigningKey::from_bytes(&seed);
            SignedInput::sign(
                &key,
                manifest.region,
                1,
                InputKind::Join {
                    name: format!("p{i}"),
                },
            )
        })
        .collect();
    (manifest, members, inputs)
}

fn replica(manifest: &Manifest, key: &SigningKey) -> Replica {
    let cfg = Config {
        inputs_per_tick_max: INPUTS,
        ..Config::default()
    };
    Replica::new(
        cfg,
        manifest.clone(),
        key.clone(),
        Arc::new(NoScripts),
        Arc::new(MemSources::default()),
        manifest.genesis(),
        manifest.genesis_digest(),
    )
}

fn bench(c: &mut Criterion) {
    let (manifest, members, inputs) = setup();
    let now = 1_000_000;
    let proposal = Proposal {
        region: manifest.region,
        tick: 0,
        parent: manifest.genesis_digest(),
        time_ms: now,
        inputs: inputs.clone(),
        sources: Vec::new(),
        border: Vec::new(),
    };
    let digest = proposal.digest();
    let primary = player_of(&members[0]);
    c.bench_function("verify_and_execute_1000_signed_joins", |b| {
        b.iter_batched(
            || {
                let mut r = replica(&manifest, &members[1]);
                r.handle(now, primary, Message::Proposal(proposal.clone()));
                r
            },
            |mut r| {
                r.order(
                    now,
                    Order::Verify {
                        req: 1,
                        parent: manifest.genesis_digest(),
                        digest,
                    },
                );
                let mut valid = false;
                while let Some(out) = r.poll_output() {
                    if let Output::Answer(Answer::Verified { valid: v, .. }) = out {
                        valid = v;
                    }
                }
                assert!(valid);
                r
            },
            BatchSize::LargeInput,
        )
    });
    c.bench_function("admit_1000_forwarded_inputs", |b| {
        b.iter_batched(
            || replica(&manifest, &members[1]),
            |mut r| {
                r.handle(now, primary, Message::Inputs(inputs.clone()));
                assert_eq!(r.stats().refused_messages, 0);
                r
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
