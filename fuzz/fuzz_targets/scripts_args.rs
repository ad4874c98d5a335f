//! Arbitrary handler arguments and stored state bytes never panic the host;
//! stored state decodes only from its canonical encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    metatopia_scripts::fuzz::args(data);
});
