//! Arbitrary `Range` headers against arbitrary body lengths: the decoder
//! never panics, a part lies inside the body, and asking again for the part
//! it chose gives the same part (`node/src/content/range.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    metatopia_node::content::range::fuzz(data);
});
