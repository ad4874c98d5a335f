//! Messages between replicas (inputs, proposals, fetches, checkpoints,
//! snapshots, border sets of neighbour groups): never panics; what decodes re-encodes to the same bytes, and
//! the checks a replica runs on a decoded message (signatures, a proposal's
//! digest and batch, a snapshot's restore) never panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metatopia_node::replica::wire::{MESSAGE_MAGIC, Message};
use metatopia_sim::RegionId;

fuzz_target!(|data: &[u8]| {
    let mut framed = MESSAGE_MAGIC.to_vec();
    framed.extend_from_slice(&metatopia_sim::snapshot::FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(data);
    for bytes in [data, &framed[..]] {
        let Ok(msg) = Message::decode(bytes) else {
            continue;
        };
        assert_eq!(msg.encode(), bytes);
        match &msg {
            Message::Inputs(inputs) => {
                for i in inputs {
                    let _ = i.verify(RegionId(1));
                }
            }
            Message::Proposal(p) | Message::Finalized { proposal: p, .. } => {
                let _ = p.digest();
                let _ = p.batch();
                for i in &p.inputs {
                    let _ = i.verify(p.region);
                }
                for c in &p.border {
                    let _ = c.verify(p.region, &[]);
                }
            }
            Message::Border { set, sig } => {
                let _ = sig.verify(set);
                for e in &set.envelopes {
                    let _ = e.validate();
                }
            }
            Message::Checkpoint(c) => {
                let _ = c.verify();
            }
            Message::Snapshot { bytes, .. } => {
                let _ = metatopia_physics::Region::restore(bytes);
            }
            Message::Fetch(_) | Message::SnapshotRequest | Message::Follow { .. } => {}
        }
    }
});
