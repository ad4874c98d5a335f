//! Postcard encodings written straight where they are needed: into a
//! blake3 hasher (through a small stack buffer) or onto the end of a `Vec`.
//!
//! The bytes are exactly `postcard::to_stdvec(value)`: these are only
//! cheaper sinks (no intermediate `Vec` per value, no `io::Write` layer),
//! so every hash stays what it was.

use postcard::ser_flavors::Flavor;
use serde::Serialize;

/// Bytes buffered before they go to the hasher. An element's encoding is
/// usually well under this, so it reaches blake3 in one `update`.
const BUF: usize = 256;

/// A postcard flavor that feeds blake3.
struct HashFlavor {
    hasher: blake3::Hasher,
    buf: [u8; BUF],
    len: usize,
}

impl HashFlavor {
    fn flush(&mut self) {
        self.hasher.update(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Flavor for HashFlavor {
    type Output = [u8; 32];

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.len == BUF {
            self.flush();
        }
        self.buf[self.len] = byte;
        self.len += 1;
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.len + data.len() > BUF {
            self.flush();
            if data.len() >= BUF {
                self.hasher.update(data);
                return Ok(());
            }
        }
        self.buf[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<[u8; 32]> {
        self.flush();
        Ok(*self.hasher.finalize().as_bytes())
    }
}

/// blake3 of the postcard encoding of `value`, without building the encoding.
pub fn value_hash<V: Serialize + ?Sized>(value: &V) -> [u8; 32] {
    let flavor = HashFlavor {
        hasher: blake3::Hasher::new(),
        buf: [0; BUF],
        len: 0,
    };
    postcard::serialize_with_flavor(value, flavor)
        .expect("postcard encoding of sim types is infallible")
}

/// A postcard flavor that appends to a `Vec`.
struct VecFlavor<'a>(&'a mut Vec<u8>);

impl Flavor for VecFlavor<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `buf`.
pub fn put<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    postcard::serialize_with_flavor(value, VecFlavor(buf))
        .expect("postcard encoding of sim types is infallible");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed hash is blake3 of exactly the postcard bytes, for
    /// encodings shorter than, equal to and longer than the buffer, made of
    /// single bytes and of slices that straddle it.
    #[test]
    fn same_bytes_as_postcard() {
        let values: Vec<(u64, Vec<u8>, String)> = vec![
            (0, vec![], String::new()),
            (u64::MAX, vec![1; 3], "x".repeat(BUF - 12)),
            (300, vec![2; BUF - 1], "y".repeat(BUF)),
            (7, vec![3; BUF], "z".repeat(3 * BUF + 5)),
            (1 << 40, (0..=255).cycle().take(5000).collect(), "ü".into()),
        ];
        for v in &values {
            let bytes = postcard::to_stdvec(v).unwrap();
            assert_eq!(value_hash(v), *blake3::hash(&bytes).as_bytes());
            let mut out = vec![9];
            put(&mut out, v);
            assert_eq!(out[0], 9);
            assert_eq!(&out[1..], &bytes[..]);
        }
        let many: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let tuples: Vec<(u8, u32)> = many.iter().map(|b| (*b, u32::from(*b) * 999)).collect();
        let bytes = postcard::to_stdvec(&tuples).unwrap();
        assert_eq!(value_hash(&tuples), *blake3::hash(&bytes).as_bytes());
    }
}
