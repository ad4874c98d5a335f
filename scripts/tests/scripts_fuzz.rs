//! The fuzz target bodies (fuzz/fuzz_targets/scripts_*.rs), driven with
//! random input so that `cargo test` covers them too.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

const SNIPPETS: &[&str] = &[
    "function on_touch(a, b) ",
    "function on_message(f, m) ",
    "function on_timer(t) ",
    "state.x = ",
    "say(",
    "send(me, ",
    "set_timer(1, ",
    "set_pos(me, ",
    "fx.mul(",
    "fx(\"1.5\")",
    "math.random(1, 9)",
    "pcall(function() ",
    "coroutine.wrap(function() ",
    "while true do ",
    "for k, v in pairs(state) do ",
    "setmetatable({}, {__index = ",
    "string.rep('x', 99999)",
    " end ",
    ")",
    " .. ",
    "1.5",
    "nil",
    "{}",
    "error('x')",
    "\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sources_never_panic(parts in proptest::collection::vec(0..SNIPPETS.len(), 0..24)) {
        let src: String = parts.iter().map(|i| SNIPPETS[*i]).collect();
        metatopia_scripts::fuzz::source(src.as_bytes());
    }

    #[test]
    fn raw_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        metatopia_scripts::fuzz::source(&data);
        metatopia_scripts::fuzz::args(&data);
    }
}
