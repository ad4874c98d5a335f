//! Snapshot bytes from anywhere (disk, peers): decoding never panics, and
//! whatever decodes re-encodes to the same bytes and hashes consistently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metatopia_sim::snapshot;

fuzz_target!(|data: &[u8]| {
    // Raw bytes, and bytes behind a valid header (to get past the magic).
    let mut framed = snapshot::MAGIC.to_vec();
    framed.extend_from_slice(&snapshot::FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(data);
    for bytes in [data, framed.as_slice()] {
        if let Ok(state) = snapshot::decode_state(bytes) {
            assert_eq!(snapshot::encode_state(&state), bytes, "round trip");
            let _ = snapshot::state_hash(&state);
        }
    }
});
