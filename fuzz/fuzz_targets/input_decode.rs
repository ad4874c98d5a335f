//! Inputs from players: postcard batches (the wire and the log) and JSON
//! actions (the HTTP API). Never panics; decoded batches round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metatopia_node::action::{Action, IdsOnly};
use metatopia_node::store::{LOG_MAGIC, LogRecord};
use metatopia_sim::{Batch, snapshot};

fuzz_target!(|data: &[u8]| {
    let mut framed = b"MTBT".to_vec();
    framed.extend_from_slice(&snapshot::FORMAT_VERSION.to_le_bytes());
    framed.extend_from_slice(data);
    if let Ok(batch) = snapshot::decode::<Batch>(*b"MTBT", &framed) {
        assert_eq!(snapshot::encode(*b"MTBT", &batch), framed);
    }
    let mut record = LOG_MAGIC.to_vec();
    record.extend_from_slice(&snapshot::FORMAT_VERSION.to_le_bytes());
    record.extend_from_slice(data);
    if let Ok(r) = snapshot::decode::<LogRecord>(LOG_MAGIC, &record) {
        assert_eq!(snapshot::encode(LOG_MAGIC, &r), record);
    }
    if let Ok(action) = serde_json::from_slice::<Action>(data) {
        let _ = action.to_input(&IdsOnly { avatar: None });
    }
});
