//! Replication's CPU on one member: checking and executing a proposal of
//! 1,000 signed inputs (signatures on the rayon pool), admitting 1,000
//! forwarded inputs, and the stages apart: 1,000 signature checks three
//! ways (ADR 0015), signing 1,000 inputs (a player's cost), encoding and
//! decoding a proposal of 1,000 inputs.
//! `cargo bench -p metatopia-node --bench replica`.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use rayon::prelude::*;

use metatopia_node::replica::core::Output;
use metatopia_node::replica::verify::verify_inputs;
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

fn stages(c: &mut Criterion) {
    let (manifest, _, inputs) = setup();
    let region = manifest.region;
    let refs: Vec<&SignedInput> = inputs.iter().collect();
    c.bench_function("check_1000_signatures_dalek_single", |b| {
        // What replicas did before ADR 0015: ed25519-dalek's
        // (cofactorless) single check, on the rayon pool.
        b.iter(|| {
            inputs.par_iter().all(|s| {
                let key =
                    ed25519_dalek::VerifyingKey::from_bytes(&s.input.player.0).expect("a key");
                ed25519_dalek::Verifier::verify(
                    &key,
                    &SignedInput::signed_bytes(region, &s.input),
                    &ed25519_dalek::Signature::from_bytes(&s.sig.0),
                )
                .is_ok()
            })
        })
    });
    c.bench_function("check_1000_signatures_zip215_single", |b| {
        b.iter(|| inputs.par_iter().all(|s| s.verify(region).is_ok()))
    });
    c.bench_function("check_1000_signatures_zip215_batched", |b| {
        b.iter(|| verify_inputs(region, &refs).iter().all(Result::is_ok))
    });
    let key = SigningKey::from_bytes(&[9; 32]);
    c.bench_function("sign_1000_inputs", |b| {
        b.iter(|| {
            (0..1000u64)
                .map(|seq| {
                    SignedInput::sign(
                        &key,
                        region,
                        seq,
                        InputKind::Say {
                            text: format!("load {seq}"),
                            radius: None,
                        },
                    )
                })
                .count()
        })
    });
    let proposal = Proposal {
        region,
        tick: 0,
        parent: manifest.genesis_digest(),
        time_ms: 1,
        inputs: inputs.clone(),
        sources: Vec::new(),
        border: Vec::new(),
    };
    c.bench_function("encode_and_digest_proposal_1000", |b| {
        b.iter(|| proposal.digest())
    });
    let bytes = Message::Proposal(proposal.clone()).encode();
    c.bench_function("decode_proposal_message_1000", |b| {
        b.iter(|| Message::decode(&bytes).expect("decodes"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench, stages
}
criterion_main!(benches);
