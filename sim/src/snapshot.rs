//! Canonical encoding, state hashes and snapshots.
//!
//! A snapshot is `MAGIC || format version (u16 LE) || postcard(State)`.
//! The state hash is blake3 over exactly those bytes, so a stored snapshot
//! can be checked against a checkpoint hash without decoding it. Decoding
//! re-encodes and compares, so overlong varints or trailing bytes (which
//! postcard would accept) are refused: one state has one encoding.

use serde::{Serialize, de::DeserializeOwned};

use crate::hashing::{HashSink, Sink};
use crate::state::State;

/// First bytes of every snapshot.
pub const MAGIC: [u8; 4] = *b"MTSS";
/// The snapshot format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 3;
/// Largest snapshot or message this build decodes, in bytes.
pub const DECODE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Why bytes are not a valid encoded object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Too short to hold the header.
    #[error("truncated: {0} bytes, header needs 6")]
    Truncated(usize),
    /// Does not start with the magic bytes.
    #[error("bad magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// What was found.
        found: [u8; 4],
        /// What was expected.
        expected: [u8; 4],
    },
    /// A format version this build does not read.
    #[error(
        "unsupported format version {0} (this build reads {FORMAT_VERSION}; data written by another metatopia version: run that version, or start from a new data directory)"
    )]
    Version(u16),
    /// Larger than the decoder accepts.
    #[error("too large: {0} bytes (limit {DECODE_BYTES_MAX})")]
    TooLarge(usize),
    /// The payload is not valid postcard for the type.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The payload decodes but is not in canonical form.
    #[error("non-canonical encoding (re-encoding differs)")]
    NonCanonical,
}

/// Encodes `value` as `magic || version || postcard`.
pub fn encode<T: Serialize>(magic: [u8; 4], value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    // Writing into a Vec cannot fail; serialising our own types cannot fail
    // either (no maps with non-string keys issues in postcard, no floats).
    postcard::to_io(value, &mut out).expect("postcard encoding of sim types is infallible");
    out
}

/// Decodes bytes made by [`encode`], refusing anything non-canonical.
pub fn decode<T: Serialize + DeserializeOwned>(
    magic: [u8; 4],
    bytes: &[u8],
) -> Result<T, DecodeError> {
    if bytes.len() > DECODE_BYTES_MAX {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if bytes.len() < 6 {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let found = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if found != magic {
        return Err(DecodeError::BadMagic {
            found,
            expected: magic,
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let value: T =
        postcard::from_bytes(&bytes[6..]).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if encode(magic, &value) != bytes {
        return Err(DecodeError::NonCanonical);
    }
    Ok(value)
}

/// The snapshot bytes of a state.
pub fn encode_state(state: &State) -> Vec<u8> {
    encode(MAGIC, state)
}

/// A state from snapshot bytes.
pub fn decode_state(bytes: &[u8]) -> Result<State, DecodeError> {
    decode(MAGIC, bytes)
}

/// First bytes of the per-tick state digest.
pub const DIGEST_MAGIC: [u8; 4] = *b"MTSD";

/// The state hash, taken every tick.
///
/// It is blake3 over a digest that encodes every field of the state the way
/// the snapshot does, except that elements and players appear as
/// `(id, blake3(postcard(value)))` pairs: [`Table`](crate::table::Table)
/// keeps those per-entry hashes current, so a tick re-hashes only what it
/// changed. It is exact: two states have the same hash only if every field
/// and every element and player are equal (up to blake3 collisions).
///
/// Long on purpose: it destructures `State` without `..` so that a new field fails to compile here, and encodes every field in order.
pub fn state_hash(state: &State) -> [u8; 32] {
    // Destructured without `..`: adding a field to State fails to compile
    // here until the digest covers it.
    let State {
        region,
        tick,
        time_ms,
        settings,
        next_counter,
        elements,
        scripted,
        players,
        banned,
        temp_admin,
        chat,
        mailbox,
        timers,
        bodies,
        walking,
    } = state;
    // The element pairs are streamed into blake3 through a 16 KiB buffer
    // (whole chunks at a time: blake3 hashes those in parallel lanes) while
    // the rest of the digest, mostly the scripted ids and the timers, is
    // encoded into a buffer on another rayon thread; it is hashed after
    // them. The bytes are those of one stream.
    let (mut d, rest) = rayon::join(
        || {
            let mut d = HashSink::<16384>::new();
            d.bytes(&DIGEST_MAGIC);
            d.bytes(&FORMAT_VERSION.to_le_bytes());
            d.put(&(region, tick, time_ms, settings, next_counter));
            d.put(&(elements.len() as u64));
            for (id, hash) in elements.hashes() {
                d.id(*id);
                d.bytes(hash);
            }
            d
        },
        || {
            // Ids and timers take 3 to 8 bytes each.
            let mut r = Vec::with_capacity(8 * (scripted.len() + timers.len()) + 4096);
            r.put(&(scripted.len() as u64));
            for id in scripted {
                r.id(*id);
            }
            r.put(&(players.len() as u64));
            for (id, hash) in players.hashes() {
                r.put(id);
                r.bytes(hash);
            }
            r.put(&(banned.len() as u64));
            for id in banned {
                r.put(id);
            }
            r.put(temp_admin);
            r.put(&(chat.len() as u64));
            for line in chat {
                r.put(line);
            }
            r.put(&(mailbox.len() as u64));
            for p in mailbox {
                r.put(p);
            }
            r.put(&(timers.len() as u64));
            for (due, script, timer) in timers.iter() {
                r.varint(*due);
                r.id(*script);
                r.varint(u64::from(*timer));
            }
            r.put(&(bodies.len() as u64));
            for (id, hash) in bodies.hashes() {
                r.id(*id);
                r.bytes(hash);
            }
            r.put(&(walking.len() as u64));
            for (id, vel) in walking {
                r.id(*id);
                r.put(vel);
            }
            r
        },
    );
    d.bytes(&rest);
    d.finish()
}
