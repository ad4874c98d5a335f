//! `/metatopia/content/1`: one blob by hash between peers, as a pure
//! codec and the receiver's state machine (the streams are driven in
//! [`super::peer`]).
//!
//! The asker opens a stream and writes the hash (32 bytes). The answer is
//! frames `kind (u8) ‖ length (u32 le) ‖ payload`:
//!
//! | kind | payload | meaning |
//! |---|---|---|
//! | `SIZE` (1) | the blob's length, u64 le | first, when the peer has it |
//! | `CHUNK` (2) | 1 to [`CHUNK_BYTES_MAX`] bytes | the next bytes, in order |
//! | `END` (3) | none | after the last chunk; the chunks add up to the size |
//! | `NOT_HERE` (4) | none | the peer lacks the blob (the only frame) |
//! | `BUSY` (5) | none | the peer serves too many already (the only frame) |
//!
//! The decoder checks the 5-byte header before it looks at a payload
//! (check, then parse): an unknown kind or a length the kind does not
//! allow is refused without reading further. [`Transfer`] checks the
//! order and that the size stays within `content_blob_bytes_max`. The
//! bytes are checked against the hash by the caller.

/// Bytes in a request: the hash.
pub const REQUEST_BYTES: usize = 32;

/// Bytes in a frame's header.
pub const HEADER_BYTES: usize = 5;

/// Largest chunk payload.
pub const CHUNK_BYTES_MAX: usize = 64 << 10;

const SIZE: u8 = 1;
const CHUNK: u8 = 2;
const END: u8 = 3;
const NOT_HERE: u8 = 4;
const BUSY: u8 = 5;

/// One frame of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The blob's length; the peer has it.
    Size(u64),
    /// The next bytes.
    Chunk(&'a [u8]),
    /// No more bytes.
    End,
    /// The peer lacks the blob.
    NotHere,
    /// The peer is serving too many blobs now.
    Busy,
}

/// Why bytes are not a valid answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// More bytes are needed (not an error of the peer yet).
    #[error("incomplete frame")]
    Incomplete,
    /// The kind byte is none of the five.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The length does not fit the kind.
    #[error("frame kind {kind} cannot be {len} bytes long")]
    BadLength {
        /// The kind.
        kind: u8,
        /// The length given.
        len: u32,
    },
    /// The blob is larger than this node accepts.
    #[error("the blob is {size} bytes, over limits.content_blob_bytes_max = {max} bytes")]
    TooLarge {
        /// The size the peer announced.
        size: u64,
        /// The cap.
        max: u64,
    },
    /// A frame came where it may not (e.g. a chunk before the size).
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    /// The chunks add up to more than the size, or the end came early.
    #[error("the chunks add up to {got} bytes, the size said {size}")]
    WrongLength {
        /// Bytes received (so far).
        got: u64,
        /// The size announced.
        size: u64,
    },
}

/// The kind and payload length a header announces, checked.
pub fn decode_header(head: &[u8; HEADER_BYTES]) -> Result<(u8, usize), WireError> {
    let kind = head[0];
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let ok = match kind {
        SIZE => len == 8,
        CHUNK => len >= 1 && len as usize <= CHUNK_BYTES_MAX,
        END | NOT_HERE | BUSY => len == 0,
        other => return Err(WireError::UnknownKind(other)),
    };
    if !ok {
        return Err(WireError::BadLength { kind, len });
    }
    Ok((kind, len as usize))
}

/// The frame of a checked header and its payload (`payload.len()` is the
/// header's length).
pub fn frame(kind: u8, payload: &[u8]) -> Result<Frame<'_>, WireError> {
    Ok(match kind {
        SIZE => {
            let b: [u8; 8] = payload.try_into().map_err(|_| WireError::BadLength {
                kind,
                len: payload.len() as u32,
            })?;
            Frame::Size(u64::from_le_bytes(b))
        }
        CHUNK => Frame::Chunk(payload),
        END => Frame::End,
        NOT_HERE => Frame::NotHere,
        BUSY => Frame::Busy,
        other => return Err(WireError::UnknownKind(other)),
    })
}

/// The first frame in `buf` and the bytes it takes; `Incomplete` (no
/// allocation) until the whole frame is there.
pub fn decode_frame(buf: &[u8]) -> Result<(Frame<'_>, usize), WireError> {
    let head: &[u8; HEADER_BYTES] = buf
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Incomplete)?;
    let (kind, len) = decode_header(head)?;
    let payload = buf
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or(WireError::Incomplete)?;
    Ok((frame(kind, payload)?, HEADER_BYTES + len))
}

/// Appends `f` to `out`. A chunk longer than [`CHUNK_BYTES_MAX`] is the
/// caller's bug: callers split at that size.
pub fn encode_frame(f: &Frame<'_>, out: &mut Vec<u8>) {
    let (kind, payload): (u8, &[u8]) = match f {
        Frame::Size(n) => {
            out.push(SIZE);
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            return;
        }
        Frame::Chunk(b) => (CHUNK, b),
        Frame::End => (END, &[]),
        Frame::NotHere => (NOT_HERE, &[]),
        Frame::Busy => (BUSY, &[]),
    };
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Where a transfer stands after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The peer has the blob; this many bytes follow.
    Started(u64),
    /// A chunk within the size: keep its bytes.
    Bytes,
    /// All bytes arrived (check the hash now).
    Done,
    /// The peer lacks it.
    NotHere,
    /// The peer is busy.
    Busy,
}

/// The receiver's side of one answer: the frames in their order, the size
/// within the cap, the chunks adding up to the size.
#[derive(Debug, Clone)]
pub struct Transfer {
    max: u64,
    size: Option<u64>,
    received: u64,
    finished: bool,
}

impl Transfer {
    /// A transfer of a blob of at most `blob_bytes_max` bytes.
    pub fn new(blob_bytes_max: u64) -> Transfer {
        Transfer {
            max: blob_bytes_max,
            size: None,
            received: 0,
            finished: false,
        }
    }

    /// Bytes received so far and the size (once known).
    pub fn progress(&self) -> (u64, Option<u64>) {
        (self.received, self.size)
    }

    /// The next frame.
    pub fn accept(&mut self, f: &Frame<'_>) -> Result<Step, WireError> {
        if self.finished {
            return Err(WireError::Unexpected("a frame after the answer ended"));
        }
        match (*f, self.size) {
            (Frame::NotHere, None) => {
                self.finished = true;
                Ok(Step::NotHere)
            }
            (Frame::Busy, None) => {
                self.finished = true;
                Ok(Step::Busy)
            }
            (Frame::Size(size), None) => {
                if size > self.max {
                    return Err(WireError::TooLarge {
                        size,
                        max: self.max,
                    });
                }
                self.size = Some(size);
                Ok(Step::Started(size))
            }
            (Frame::Chunk(b), Some(size)) => {
                let got = self.received.saturating_add(b.len() as u64);
                if got > size {
                    return Err(WireError::WrongLength { got, size });
                }
                self.received = got;
                Ok(Step::Bytes)
            }
            (Frame::End, Some(size)) => {
                if self.received != size {
                    return Err(WireError::WrongLength {
                        got: self.received,
                        size,
                    });
                }
                self.finished = true;
                Ok(Step::Done)
            }
            (Frame::Chunk(_) | Frame::End, None) => {
                Err(WireError::Unexpected("bytes before the size"))
            }
            (Frame::Size(_) | Frame::NotHere | Frame::Busy, Some(_)) => {
                Err(WireError::Unexpected("a second answer in one transfer"))
            }
        }
    }
}

/// Runs the whole of `bytes` through [`decode_frame`] and a [`Transfer`]
/// (the fuzz target's and the tests' entry): the blob's bytes when the
/// answer is complete and valid, `Ok(None)` for "not here" or "busy".
pub fn decode_answer(bytes: &[u8], blob_bytes_max: u64) -> Result<Option<Vec<u8>>, WireError> {
    let mut t = Transfer::new(blob_bytes_max);
    let mut blob = Vec::new();
    let mut at = 0;
    loop {
        let (f, used) = decode_frame(&bytes[at..])?;
        at += used;
        match t.accept(&f)? {
            Step::Started(_) => {}
            Step::Bytes => {
                if let Frame::Chunk(b) = f {
                    blob.extend_from_slice(b);
                }
            }
            Step::Done => break,
            Step::NotHere | Step::Busy => return Ok(None),
        }
    }
    if at != bytes.len() {
        return Err(WireError::Unexpected("bytes after the end"));
    }
    Ok(Some(blob))
}

/// The whole answer for `blob` (tests and the fuzz target's round trip;
/// the server streams the same frames from the file).
pub fn encode_answer(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blob.len() + 32);
    encode_frame(&Frame::Size(blob.len() as u64), &mut out);
    for c in blob.chunks(CHUNK_BYTES_MAX) {
        encode_frame(&Frame::Chunk(c), &mut out);
    }
    encode_frame(&Frame::End, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_not_here() {
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let bytes = encode_answer(&blob);
        assert_eq!(decode_answer(&bytes, 1 << 20).unwrap().unwrap(), blob);
        assert_eq!(
            decode_answer(&encode_answer(&[]), 10).unwrap().unwrap(),
            b""
        );
        let mut nh = Vec::new();
        encode_frame(&Frame::NotHere, &mut nh);
        assert_eq!(decode_answer(&nh, 10).unwrap(), None);
        // Every strict prefix is incomplete, never a panic or a blob.
        for n in 0..bytes.len().min(70_000) {
            assert_eq!(
                decode_answer(&bytes[..n], 1 << 20),
                Err(WireError::Incomplete)
            );
        }
    }

    #[test]
    fn headers_are_checked_before_payloads() {
        assert_eq!(
            decode_frame(&[9, 0, 0, 0, 0]),
            Err(WireError::UnknownKind(9))
        );
        // A chunk claiming 4 GiB is refused from its header alone.
        assert_eq!(
            decode_frame(&[CHUNK, 0xff, 0xff, 0xff, 0xff]),
            Err(WireError::BadLength {
                kind: CHUNK,
                len: u32::MAX
            })
        );
        assert!(matches!(
            decode_frame(&[CHUNK, 0, 0, 0, 0]),
            Err(WireError::BadLength { .. })
        ));
        assert!(matches!(
            decode_frame(&[SIZE, 7, 0, 0, 0]),
            Err(WireError::BadLength { .. })
        ));
        assert!(matches!(
            decode_frame(&[END, 1, 0, 0, 0, 0]),
            Err(WireError::BadLength { .. })
        ));
    }

    #[test]
    fn transfers_refuse_bad_orders_and_sizes() {
        let mut out = Vec::new();
        encode_frame(&Frame::Size(11), &mut out);
        assert_eq!(
            decode_answer(&out, 10),
            Err(WireError::TooLarge { size: 11, max: 10 })
        );
        let mut out = Vec::new();
        encode_frame(&Frame::Chunk(b"x"), &mut out);
        assert!(matches!(
            decode_answer(&out, 10),
            Err(WireError::Unexpected(_))
        ));
        // More bytes than announced, and an early end.
        let mut out = Vec::new();
        encode_frame(&Frame::Size(2), &mut out);
        encode_frame(&Frame::Chunk(b"abc"), &mut out);
        assert_eq!(
            decode_answer(&out, 10),
            Err(WireError::WrongLength { got: 3, size: 2 })
        );
        let mut out = Vec::new();
        encode_frame(&Frame::Size(2), &mut out);
        encode_frame(&Frame::Chunk(b"a"), &mut out);
        encode_frame(&Frame::End, &mut out);
        assert_eq!(
            decode_answer(&out, 10),
            Err(WireError::WrongLength { got: 1, size: 2 })
        );
        // Trailing bytes and a second answer.
        let mut out = encode_answer(b"ab");
        out.push(0);
        assert!(decode_answer(&out, 10).is_err());
        let mut out = Vec::new();
        encode_frame(&Frame::Size(0), &mut out);
        encode_frame(&Frame::NotHere, &mut out);
        assert!(matches!(
            decode_answer(&out, 10),
            Err(WireError::Unexpected(_))
        ));
    }
}
