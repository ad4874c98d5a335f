//! Answers from peers on `/metatopia/content/1`: the frame decoder and the
//! transfer checks never panic, a decoded blob stays within the cap, and
//! what decodes re-encodes to the same bytes (`node/src/content/wire.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use metatopia_node::content::wire;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small cap, so that TooLarge is reached.
    let Some((&cap, rest)) = data.split_first() else {
        return;
    };
    let max = u64::from(cap) * 1024;
    if let Ok(Some(blob)) = wire::decode_answer(rest, max) {
        assert!(blob.len() as u64 <= max);
        // One encoding per blob only when chunks are full; check the
        // encoder's own output instead.
        let again = wire::encode_answer(&blob);
        assert_eq!(wire::decode_answer(&again, max), Ok(Some(blob)));
    }
    let mut at = 0;
    while let Ok((frame, used)) = wire::decode_frame(&rest[at..]) {
        let mut out = Vec::new();
        wire::encode_frame(&frame, &mut out);
        assert_eq!(out, rest[at..at + used], "frame round trip");
        at += used;
    }
});
