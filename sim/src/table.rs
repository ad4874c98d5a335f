//! [`Table`]: a persistent ordered map whose entries carry their own hash.
//!
//! Each value is stored with `blake3(postcard(value))`, computed when the
//! value is inserted or updated. Values can only change through
//! [`Table::insert`] and [`Table::update`], so a stored hash is never stale.
//! The per-tick state hash then covers `(key, entry hash)` pairs instead of
//! re-encoding every value: a tick pays for what it changed, plus one pass
//! over 44-byte pairs.

use std::fmt;
use std::ops::Index;
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value with the hash of its canonical encoding. Cloning is a pointer copy.
#[derive(PartialEq, Eq)]
struct Entry<V> {
    inner: Arc<(V, [u8; 32])>,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Entry<V> {
        Entry {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub use crate::hashing::value_hash;

/// The hash a table keeps for a value: blake3 of its postcard encoding.
/// Types whose values change every tick may compute it by hand (with the
/// same result); the others use [`value_hash`].
pub trait EntryHash: Serialize {
    /// blake3 of the postcard encoding of `self`.
    fn entry_hash(&self) -> [u8; 32] {
        value_hash(self)
    }
}

impl<V: EntryHash> Entry<V> {
    fn new(value: V) -> Entry<V> {
        let hash = value.entry_hash();
        Entry {
            inner: Arc::new((value, hash)),
        }
    }
}

/// An ordered map of hashed values.
pub struct Table<K, V> {
    map: OrdMap<K, Entry<V>>,
}

impl<K: Ord + Clone, V> Clone for Table<K, V> {
    fn clone(&self) -> Table<K, V> {
        Table {
            map: self.map.clone(),
        }
    }
}

impl<K: Ord + Clone, V> Default for Table<K, V> {
    fn default() -> Table<K, V> {
        Table { map: OrdMap::new() }
    }
}

impl<K: Ord + Clone + PartialEq, V: PartialEq> PartialEq for Table<K, V> {
    fn eq(&self, other: &Table<K, V>) -> bool {
        self.map.len() == other.map.len()
            && self
                .map
                .iter()
                .zip(other.map.iter())
                .all(|((k1, v1), (k2, v2))| {
                    k1 == k2 && v1.inner.1 == v2.inner.1 && v1.inner.0 == v2.inner.0
                })
    }
}

impl<K: Ord + Clone + Eq, V: Eq> Eq for Table<K, V> {}

impl<K: Ord + Clone + fmt::Debug, V: fmt::Debug> fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.map.iter().map(|(k, e)| (k, &e.inner.0)))
            .finish()
    }
}

impl<K: Ord + Clone, V: EntryHash + Clone> Table<K, V> {
    /// An empty table.
    pub fn new() -> Table<K, V> {
        Table::default()
    }

    /// The value at `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|e| &e.inner.0)
    }

    /// The values at `keys`, as [`Table::get`] gives them. When the keys
    /// are in order (repeats allowed) and many (a quarter of the table or
    /// more), the table is walked once instead of searched for each key.
    pub fn get_sorted(&self, keys: &[K]) -> Vec<Option<&V>> {
        let ordered = keys.windows(2).all(|w| w[0] <= w[1]);
        let Some(first) = keys.first() else {
            return Vec::new();
        };
        if !ordered || keys.len().saturating_mul(4) < self.len() {
            return keys.iter().map(|k| self.get(k)).collect();
        }
        let mut entries = self.map.range::<_, K>(first..).peekable();
        keys.iter()
            .map(|key| {
                while entries.next_if(|(k, _)| *k < key).is_some() {}
                entries
                    .peek()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, e)| &e.inner.0)
            })
            .collect()
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Inserts or replaces a value (hashing it).
    pub fn insert(&mut self, key: K, value: V) {
        self.map.insert(key, Entry::new(value));
    }

    /// Removes a value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|e| e.inner.0.clone())
    }

    /// Changes the value at `key` through `f` and rehashes it. Returns
    /// whether the key was present. The value is changed in place when no
    /// other table shares it, and copied first otherwise.
    pub fn update(&mut self, key: &K, f: impl FnOnce(&mut V)) -> bool {
        let Some(entry) = self.map.get_mut(key) else {
            return false;
        };
        let inner = Arc::make_mut(&mut entry.inner);
        f(&mut inner.0);
        inner.1 = inner.0.entry_hash();
        true
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, e)| (k, &e.inner.0))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|e| &e.inner.0)
    }

    /// `(key, value hash)` pairs in key order, for the state digest.
    pub fn hashes(&self) -> impl Iterator<Item = (&K, &[u8; 32])> {
        self.map.iter().map(|(k, e)| (k, &e.inner.1))
    }
}

impl<K: Ord + Clone, V: EntryHash + Clone> Index<&K> for Table<K, V> {
    type Output = V;

    /// Panics when the key is absent, like `BTreeMap`'s index (tests and
    /// views only; the tick uses `get`).
    fn index(&self, key: &K) -> &V {
        self.get(key).expect("key present in table")
    }
}

impl<K: Ord + Clone + Serialize, V: EntryHash + Clone> Serialize for Table<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de, K, V> Deserialize<'de> for Table<K, V>
where
    K: Ord + Clone + Deserialize<'de>,
    V: EntryHash + Clone + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Table<K, V>, D::Error> {
        let map: OrdMap<K, V> = crate::codec::ord_map::deserialize(d)?;
        let mut table = Table::new();
        for (k, v) in map {
            table.insert(k, v);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl EntryHash for u64 {}

    /// `get_sorted` gives what `get` gives, for dense and sparse key lists,
    /// present and absent keys, and keys out of order.
    #[test]
    fn get_sorted_is_get() {
        let mut table: Table<u64, u64> = Table::new();
        for k in (0..3000u64).filter(|k| k % 3 != 0) {
            table.insert(k, k * 10);
        }
        let lists: Vec<Vec<u64>> = vec![
            vec![],
            (0..3100).collect(),
            (0..3100).step_by(2).collect(),
            (0..3100).step_by(97).collect(),
            vec![5, 7, 9000],
            (0..3000).rev().collect(),
            vec![4, 4, 5, 5],
            vec![1, 1, 1, 2, 2, 3, 3, 3, 2999, 2999],
            (0..6000).map(|k| k / 2).collect(),
            (1000..2000).collect(),
        ];
        for keys in lists {
            let want: Vec<Option<&u64>> = keys.iter().map(|k| table.get(k)).collect();
            assert_eq!(table.get_sorted(&keys), want, "{keys:?}");
        }
    }
}
