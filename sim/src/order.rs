//! Canonical order: tick seeds and per-script inbox order.
//!
//! `tick_seed = blake3(previous state hash || t)`; each inbox is sorted by
//! `blake3(tick_seed || script id || event id)`. Two scripts that receive
//! the same events may see them in different orders, so no script can rely
//! on another's order, and no sender can buy priority by timing.

use crate::id::ElementId;
use crate::script::ScriptEvent;

/// The seed of tick `t`, from the hash of the state before it.
pub fn tick_seed(prev_state_hash: &[u8; 32], tick: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev_state_hash);
    h.update(&tick.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The seed of one script at one tick: `blake3(tick_seed || script id)`.
pub fn script_seed(tick_seed: &[u8; 32], script: ElementId) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(tick_seed);
    h.update(&script.to_bytes());
    *h.finalize().as_bytes()
}

/// The sort key of one event in one script's inbox.
pub fn event_key(tick_seed: &[u8; 32], script: ElementId, event_id: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(tick_seed);
    h.update(&script.to_bytes());
    h.update(&event_id.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Puts an inbox in canonical order. Ties (never seen: they need a blake3
/// collision) fall back to the event id, so the order is total.
pub fn canonical_order(tick_seed: &[u8; 32], script: ElementId, inbox: &mut [ScriptEvent]) {
    inbox.sort_by_cached_key(|e| (event_key(tick_seed, script, e.id), e.id));
}
