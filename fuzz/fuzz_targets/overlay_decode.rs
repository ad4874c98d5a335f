//! Fuzz the overlay message decoder: any bytes either fail to decode or
//! decode to a message that re-encodes and decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    metatopia_overlay::fuzz::fuzz_decode(data);
});
