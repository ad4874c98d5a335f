//! The body of the decoder fuzz target (`fuzz/fuzz_targets/overlay_decode.rs`
//! calls it; the tests drive it with random and mutated bytes).

use crate::wire;

/// Decode arbitrary bytes; if they decode, the message must re-encode and
/// decode to the same value (postcard accepts overlong varints, so the bytes
/// may differ, the value may not).
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(msg) = wire::decode(data) {
        let again = wire::encode(&msg).map(|b| wire::decode(&b));
        assert!(
            matches!(again, Ok(Ok(ref m)) if *m == msg),
            "decoded message does not round-trip"
        );
    }
}
