//! Arbitrary script sources: the licence check, compiling and calling every
//! handler never panic the host, and a call is a pure function.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    metatopia_scripts::fuzz::source(data);
});
