//! Border envelopes from neighbouring regions (ghosts, handoff offers and
//! final data): decoding never panics, whatever decodes re-encodes to the
//! same bytes, and applying it to a region never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw bytes, and bytes behind a valid header (to get past the magic).
    let mut framed = b"MTPB".to_vec();
    framed.extend_from_slice(&metatopia_sim::snapshot::FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(data);
    metatopia_physics::fuzz::border_envelope(data);
    metatopia_physics::fuzz::border_envelope(&framed);
});
