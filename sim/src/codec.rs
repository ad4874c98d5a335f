//! Serde for the persistent collections in [`State`](crate::state::State).
//!
//! imbl's own `Deserialize` preallocates whatever length the input claims,
//! so 20 hostile bytes could ask for terabytes and abort the process. These
//! adapters decode through `Vec` (serde caps its preallocation) and insist
//! on strictly increasing keys, which is also the canonical form. The
//! postcard bytes are the same as imbl's: a length, then the items.

use std::fmt;
use std::marker::PhantomData;

use imbl::{OrdMap, OrdSet, Vector};
use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

/// A bounded, ordered-sequence visitor producing a `Vec<T>`.
struct SeqVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // Never trust the claimed length for more than a small reservation.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element()? {
            out.push(item);
        }
        Ok(out)
    }
}

/// Reads a sequence into a `Vec`, without trusting its claimed length.
pub(crate) fn read_seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(SeqVisitor(PhantomData))
}

/// `OrdMap<K, V>` as a sequence of `(key, value)` with increasing keys.
pub mod ord_map {
    use super::*;

    /// Writes the pairs in key order.
    pub fn serialize<S: Serializer, K: Serialize + Ord + Clone, V: Serialize + Clone>(
        map: &OrdMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    /// Reads pairs, refusing keys that are not strictly increasing.
    pub fn deserialize<'de, D, K, V>(d: D) -> Result<OrdMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
    {
        let pairs: Vec<(K, V)> = read_seq(d)?;
        if pairs.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(D::Error::custom("map keys are not strictly increasing"));
        }
        Ok(pairs.into_iter().collect())
    }
}

/// `OrdSet<T>` as a sequence of strictly increasing items.
pub mod ord_set {
    use super::*;

    /// Writes the items in order.
    pub fn serialize<S: Serializer, T: Serialize + Ord + Clone>(
        set: &OrdSet<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(set.iter())
    }

    /// Reads items, refusing any that are not strictly increasing.
    pub fn deserialize<'de, D, T>(d: D) -> Result<OrdSet<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Ord + Clone,
    {
        let items: Vec<T> = read_seq(d)?;
        if items.windows(2).any(|w| w[0] >= w[1]) {
            return Err(D::Error::custom("set items are not strictly increasing"));
        }
        Ok(items.into_iter().collect())
    }
}

/// `Vector<T>` as a sequence.
pub mod vector {
    use super::*;

    /// Writes the items in order.
    pub fn serialize<S: Serializer, T: Serialize + Clone>(
        v: &Vector<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter())
    }

    /// Reads the items.
    pub fn deserialize<'de, D, T>(d: D) -> Result<Vector<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Clone,
    {
        let items: Vec<T> = read_seq(d)?;
        Ok(items.into_iter().collect())
    }
}
