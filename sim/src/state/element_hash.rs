//! An element's entry hash, encoded by hand.

use super::{Assets, Element, ElementKind, ScriptSlot};
use crate::hashing::{BUF, HashSink};

/// [`value_hash`](crate::hashing::value_hash) of an element, encoded by hand: the tick rehashes an
/// element for every script whose state changed, and serde's generic path
/// cost as much as blake3 itself. The bytes are postcard's (a test compares
/// them on random elements); a new field fails to compile here until it is
/// encoded.
pub fn element_hash(e: &Element) -> [u8; 32] {
    let Element {
        id,
        parent,
        kind,
        owner_region,
        owner,
        name,
        pos,
        children,
        script,
        assets,
    } = e;
    let mut sink = HashSink::<BUF>::new();
    sink.id(*id);
    match parent {
        None => sink.byte(0),
        Some(p) => {
            sink.byte(1);
            sink.id(*p);
        }
    }
    // Unit variants are their index as a varint.
    sink.varint(match kind {
        ElementKind::Region => 0,
        ElementKind::Object => 1,
        ElementKind::Part => 2,
        ElementKind::Avatar => 3,
    });
    sink.varint(u64::from(owner_region.0));
    match owner {
        None => sink.byte(0),
        Some(p) => {
            sink.byte(1);
            sink.bytes(&p.0);
        }
    }
    sink.varint(name.len() as u64);
    sink.bytes(name.as_bytes());
    sink.fx(pos.x);
    sink.fx(pos.y);
    sink.fx(pos.z);
    sink.varint(children.len() as u64);
    for c in children {
        sink.id(*c);
    }
    match script {
        None => sink.byte(0),
        Some(slot) => {
            let ScriptSlot {
                source,
                state,
                faults,
                suspended,
            } = slot;
            sink.byte(1);
            sink.bytes(source);
            sink.varint(state.len() as u64);
            sink.bytes(state);
            sink.varint(u64::from(*faults));
            sink.byte(u8::from(*suspended));
        }
    }
    let Assets { mesh, texture } = assets;
    for h in [mesh, texture] {
        match h {
            None => sink.byte(0),
            Some(h) => {
                sink.byte(1);
                sink.bytes(h);
            }
        }
    }
    sink.finish()
}
