//! Fuzz the overlay message decoder: any bytes either fail to decode or
//! decode to a message that re-encodes and decodes to the same value.
//!
//! Needs in fuzz/Cargo.toml (owned by the fuzz workspace):
//! `metatopia-overlay = { path = "../overlay" }` and a `[[bin]]` named
//! `overlay_decode` with path `fuzz_targets/overlay_decode.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    metatopia_overlay::fuzz::fuzz_decode(data);
});
