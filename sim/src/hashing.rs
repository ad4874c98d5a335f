//! Postcard encodings streamed into blake3 through a buffer on the stack,
//! for table entry hashes and the per-tick state digest.
//!
//! The bytes hashed are exactly `postcard::to_stdvec(value)`: this is only
//! a cheaper sink (no `Vec` per value, no `io::Write` layer); the
//! hand-written encoder of an element, the value a tick rehashes most, is
//! `state::element_hash`.
//! Every hash stays what it was; tests compare against postcard. The
//! `Sink` trait writes the same bytes onto a `Vec` instead, for the part
//! of the digest encoded on another thread.

use postcard::ser_flavors::Flavor;
use serde::Serialize;

use crate::fx::Fx;
use crate::id::ElementId;

/// Bytes buffered before they go to the hasher, for one value. An
/// element's encoding is usually well under this, so it is hashed in one
/// call.
pub(crate) const BUF: usize = 256;

/// A buffer of `N` bytes in front of a blake3 hasher. The hasher (about
/// 2 KB) is made, on the heap, only for input longer than the buffer:
/// shorter input is hashed in one call, and the sink stays small to move.
pub(crate) struct HashSink<const N: usize> {
    hasher: Option<Box<blake3::Hasher>>,
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> HashSink<N> {
    #[inline]
    pub(crate) fn new() -> HashSink<N> {
        HashSink {
            hasher: None,
            buf: [0; N],
            len: 0,
        }
    }

    /// The hasher, made on first use.
    fn hasher(slot: &mut Option<Box<blake3::Hasher>>) -> &mut blake3::Hasher {
        slot.get_or_insert_with(|| Box::new(blake3::Hasher::new()))
    }

    fn flush(&mut self) {
        let len = std::mem::take(&mut self.len);
        Self::hasher(&mut self.hasher).update(&self.buf[..len]);
    }

    #[inline]
    pub(crate) fn byte(&mut self, b: u8) {
        if self.len == N {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
    }

    #[inline(always)]
    pub(crate) fn varint(&mut self, mut v: u64) {
        if self.len + 10 > N {
            self.flush();
        }
        while v >= 0x80 {
            self.buf[self.len] = (v as u8) | 0x80;
            self.len += 1;
            v >>= 7;
        }
        self.buf[self.len] = v as u8;
        self.len += 1;
    }

    #[inline(always)]
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        if self.len + data.len() > N {
            self.flush();
            if data.len() >= N {
                Self::hasher(&mut self.hasher).update(data);
                return;
            }
        }
        copy_small(&mut self.buf[self.len..], data);
        self.len += data.len();
    }

    /// An element id as postcard writes it: region, then counter.
    #[inline(always)]
    pub(crate) fn id(&mut self, id: ElementId) {
        self.varint(u64::from(id.region.0));
        self.varint(id.counter);
    }

    /// postcard's `i64`: zigzag, then a varint.
    pub(crate) fn fx(&mut self, v: Fx) {
        let n = v.to_bits();
        self.varint(((n << 1) ^ (n >> 63)) as u64);
    }

    /// Appends the postcard encoding of `value`.
    pub(crate) fn put<T: Serialize + ?Sized>(&mut self, value: &T) {
        postcard::serialize_with_flavor(value, HashFlavor(self))
            .expect("postcard encoding of sim types is infallible");
    }

    /// blake3 of everything written.
    pub(crate) fn finish(&mut self) -> [u8; 32] {
        let len = self.len;
        match self.hasher.as_mut() {
            None => *blake3::hash(&self.buf[..len]).as_bytes(),
            Some(hasher) => {
                hasher.update(&self.buf[..len]);
                *hasher.finalize().as_bytes()
            }
        }
    }
}

/// Where encoded bytes go: into a hash ([`HashSink`]) or into a buffer
/// (`Vec<u8>`), with the same bytes either way. The state digest writes
/// part of itself into a buffer on another thread.
pub(crate) trait Sink {
    /// Appends bytes.
    fn bytes(&mut self, data: &[u8]);
    /// Appends postcard's unsigned varint of `v`.
    fn varint(&mut self, v: u64);
    /// Appends the postcard encoding of `value`.
    fn put<T: Serialize + ?Sized>(&mut self, value: &T);
    /// Appends an element id as postcard writes it: region, then counter.
    #[inline(always)]
    fn id(&mut self, id: ElementId) {
        self.varint(u64::from(id.region.0));
        self.varint(id.counter);
    }
}

impl<const N: usize> Sink for HashSink<N> {
    #[inline(always)]
    fn bytes(&mut self, data: &[u8]) {
        HashSink::bytes(self, data);
    }
    #[inline(always)]
    fn varint(&mut self, v: u64) {
        HashSink::varint(self, v);
    }
    fn put<T: Serialize + ?Sized>(&mut self, value: &T) {
        HashSink::put(self, value);
    }
}

impl Sink for Vec<u8> {
    #[inline(always)]
    fn bytes(&mut self, data: &[u8]) {
        self.extend_from_slice(data);
    }
    #[inline(always)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.push(v as u8);
    }
    fn put<T: Serialize + ?Sized>(&mut self, value: &T) {
        postcard::serialize_with_flavor(value, VecFlavor(self))
            .expect("postcard encoding of sim types is infallible");
    }
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

/// Copies `data` into the front of `dst` when it is exactly `N` bytes long
/// (a fixed-size move instead of a call to `memcpy`).
#[inline(always)]
fn copy_n<const N: usize>(dst: &mut [u8], data: &[u8]) {
    if let (Some(d), Ok(s)) = (dst.first_chunk_mut::<N>(), <&[u8; N]>::try_from(data)) {
        *d = *s;
    }
}

/// Copies `data` into the front of `dst`. Varints (1 to 10 bytes), ids,
/// short states and 32-byte keys are most of what is copied; a call to
/// `memcpy` for each cost more than the copy.
#[inline(always)]
fn copy_small(dst: &mut [u8], data: &[u8]) {
    match data.len() {
        0 => {}
        1 => copy_n::<1>(dst, data),
        2 => copy_n::<2>(dst, data),
        3 => copy_n::<3>(dst, data),
        4 => copy_n::<4>(dst, data),
        5 => copy_n::<5>(dst, data),
        6 => copy_n::<6>(dst, data),
        7 => copy_n::<7>(dst, data),
        8 => copy_n::<8>(dst, data),
        9 => copy_n::<9>(dst, data),
        10 => copy_n::<10>(dst, data),
        32 => copy_n::<32>(dst, data),
        n => dst[..n].copy_from_slice(data),
    }
}

/// A postcard flavor that feeds a [`HashSink`].
struct HashFlavor<'a, const N: usize>(&'a mut HashSink<N>);

impl<const N: usize> Flavor for HashFlavor<'_, N> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.byte(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.bytes(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// blake3 of the postcard encoding of `value`, without building the encoding.
pub fn value_hash<V: Serialize + ?Sized>(value: &V) -> [u8; 32] {
    let mut sink = HashSink::<BUF>::new();
    sink.put(value);
    sink.finish()
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
            let mut small = HashSink::<16>::new();
            small.put(v);
            assert_eq!(small.finish(), *blake3::hash(&bytes).as_bytes());
        }
        let many: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
        let tuples: Vec<(u8, u32)> = many.iter().map(|b| (*b, u32::from(*b) * 999)).collect();
        let bytes = postcard::to_stdvec(&tuples).unwrap();
        assert_eq!(value_hash(&tuples), *blake3::hash(&bytes).as_bytes());
    }

    /// A `Vec` sink holds exactly the bytes a `HashSink` hashes.
    #[test]
    fn vec_sink_holds_the_hashed_bytes() {
        fn write<S: Sink>(s: &mut S) {
            for bits in 0..64 {
                s.varint((1u64 << bits) - 1);
                s.varint(1 << bits);
                s.id(ElementId::new(bits, u64::MAX >> bits));
            }
            s.bytes(&[7]);
            s.bytes(&[1; 300]);
            s.put(&(String::from("ü"), vec![1u32, 300, 70_000], Some(-5i64)));
        }
        let mut vec = Vec::new();
        write(&mut vec);
        let mut sink = HashSink::<32>::new();
        write(&mut sink);
        assert_eq!(sink.finish(), *blake3::hash(&vec).as_bytes());
        let mut postcard_bytes = Vec::new();
        for bits in 0..64u32 {
            postcard_bytes.extend(postcard::to_stdvec(&((1u64 << bits) - 1)).unwrap());
            postcard_bytes.extend(postcard::to_stdvec(&(1u64 << bits)).unwrap());
            let id = ElementId::new(bits, u64::MAX >> bits);
            postcard_bytes.extend(postcard::to_stdvec(&id).unwrap());
        }
        assert_eq!(vec[..postcard_bytes.len()], postcard_bytes[..]);
    }

    /// The hand-written varints and ids are postcard's bytes, also across
    /// buffer boundaries.
    #[test]
    fn varints_and_ids_as_postcard() {
        let mut edges = vec![0u64, u64::MAX, u64::from(u32::MAX)];
        for bits in 1..64 {
            edges.extend([(1u64 << bits) - 1, 1 << bits, (1 << bits) + 1]);
        }
        let mut expected = Vec::new();
        let mut sink = HashSink::<32>::new();
        for v in edges {
            expected.extend(postcard::to_stdvec(&v).unwrap());
            sink.varint(v);
            let region = (v >> 32) as u32 ^ v as u32;
            let id = ElementId::new(region, v.rotate_left(17));
            expected.extend(postcard::to_stdvec(&id).unwrap());
            sink.id(id);
            if let Ok(small) = u32::try_from(v) {
                expected.extend(postcard::to_stdvec(&small).unwrap());
                sink.varint(u64::from(small));
            }
            let mut one = HashSink::<BUF>::new();
            one.varint(v);
            let bytes = postcard::to_stdvec(&v).unwrap();
            assert_eq!(one.finish(), *blake3::hash(&bytes).as_bytes(), "{v}");
        }
        assert_eq!(sink.finish(), *blake3::hash(&expected).as_bytes());
    }
}
