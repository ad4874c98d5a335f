//! Scenario files: parsing never panics, and a parsed scenario runs a few
//! ticks without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metatopia_node::scenario;
use metatopia_sim::NoScripts;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(prepared) = scenario::parse(text) {
        let _ = prepared.run(Some(prepared.ticks.min(8)), &NoScripts);
    }
});
