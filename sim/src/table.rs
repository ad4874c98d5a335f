//! [`Table`]: a persistent ordered map whose entries carry their own hash.
//!
//! Each value is stored with a slot for `blake3(postcard(value))`. The slot
//! is filled when the value is inserted, emptied when [`Table::update`]
//! changes the value, and filled again the first time the hash is read
//! ([`Table::hashes`]) or by [`Table::rehash`], which fills many slots in
//! parallel. A hash is only ever read through the slot, which computes it
//! when empty, so a stale hash cannot be read: the state hash sees exactly
//! what eager rehashing would give. The per-tick state hash covers
//! `(key, entry hash)` pairs instead of re-encoding every value: a tick pays
//! for what it changed, plus one pass over 44-byte pairs.

use std::fmt;
use std::ops::Index;
use std::sync::{Arc, OnceLock};

use imbl::OrdMap;
use rayon::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value and the slot for the hash of its canonical encoding.
#[derive(Clone)]
struct Hashed<V> {
    value: V,
    /// `value.entry_hash()`, or empty until someone asks for it. Only
    /// emptied together with a change of `value` (under `&mut`).
    hash: OnceLock<[u8; 32]>,
}

impl<V: EntryHash> Hashed<V> {
    /// The hash of `value`, computed now if the slot is empty.
    #[inline]
    fn hash(&self) -> &[u8; 32] {
        self.hash.get_or_init(|| self.value.entry_hash())
    }
}

/// A value with its hash slot. Cloning is a pointer copy.
struct Entry<V> {
    inner: Arc<Hashed<V>>,
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
        let hash = OnceLock::from(value.entry_hash());
        Entry {
            inner: Arc::new(Hashed { value, hash }),
        }
    }
}

/// One difference between two tables ([`Table::changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a, K, V> {
    /// The key is new, or its value changed.
    Set(&'a K, &'a V),
    /// The key is gone.
    Removed(&'a K),
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
                    // Equal values have equal hashes: the slots need not
                    // be compared (or filled).
                    k1 == k2
                        && (Arc::ptr_eq(&v1.inner, &v2.inner) || v1.inner.value == v2.inner.value)
                })
    }
}

impl<K: Ord + Clone + Eq, V: Eq> Eq for Table<K, V> {}

impl<K: Ord + Clone + fmt::Debug, V: fmt::Debug> fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.map.iter().map(|(k, e)| (k, &e.inner.value)))
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
        self.map.get(key).map(|e| &e.inner.value)
    }

    /// The values at `keys`, as [`Table::get`] gives them. When the keys
    /// are in order (repeats allowed) and many (a quarter of the table or
    /// more), the table is walked once instead of searched for each key.
    pub fn get_sorted(&self, keys: &[K]) -> Vec<Option<&V>> {
        self.entries_sorted(keys)
            .into_iter()
            .map(|e| e.map(|e| &e.inner.value))
            .collect()
    }

    /// The entries at `keys`, found as [`Table::get_sorted`] describes.
    fn entries_sorted(&self, keys: &[K]) -> Vec<Option<&Entry<V>>> {
        self.find(keys, self.walkable(keys))
    }

    /// Whether `keys` are in order (repeats allowed) and many enough (a
    /// quarter of the table or more) to be found by walking the table.
    fn walkable(&self, keys: &[K]) -> bool {
        keys.len().saturating_mul(4) >= self.len() && keys.is_sorted()
    }

    /// The entries at `keys`: found in one walk from the first key when
    /// `walk` (the keys must then be in order), else searched one by one.
    fn find(&self, keys: &[K], walk: bool) -> Vec<Option<&Entry<V>>> {
        let Some(first) = keys.first() else {
            return Vec::new();
        };
        if !walk {
            return keys.iter().map(|k| self.map.get(k)).collect();
        }
        let mut entries = self.map.range::<_, K>(first..).peekable();
        keys.iter()
            .map(|key| {
                while entries.next_if(|(k, _)| *k < key).is_some() {}
                entries.peek().filter(|(k, _)| *k == key).map(|(_, e)| *e)
            })
            .collect()
    }

    /// `f(i, &keys[i], value at keys[i])` for every `i`, run on the rayon
    /// pool in tasks of `per_task` consecutive keys; the results in the
    /// order of `keys`. Each task finds its keys as [`Table::get_sorted`]
    /// finds them (when the keys are in order and many, it walks its part
    /// of the table), so finding them is parallel too.
    pub fn par_map_sorted<R, F>(
        &self,
        keys: &[K],
        per_task: usize,
        f: F,
    ) -> std::iter::Flatten<std::vec::IntoIter<Vec<R>>>
    where
        K: Send + Sync,
        V: Send + Sync,
        R: Send,
        F: Fn(usize, &K, Option<&V>) -> R + Sync,
    {
        self.par_map_entries(keys, per_task, |i, k, e| f(i, k, e.map(|e| &e.inner.value)))
            .into_iter()
            .flatten()
    }

    /// [`Table::par_map_sorted`] on the entries, each task's results in
    /// their own `Vec` (collected in place, not copied into one).
    fn par_map_entries<R, F>(&self, keys: &[K], per_task: usize, f: F) -> Vec<Vec<R>>
    where
        K: Send + Sync,
        V: Send + Sync,
        R: Send,
        F: Fn(usize, &K, Option<&Entry<V>>) -> R + Sync,
    {
        let walk = self.walkable(keys);
        let per_task = per_task.max(1);
        let f = &f;
        keys.par_chunks(per_task)
            .enumerate()
            .map(|(task, chunk)| {
                let found = self.find(chunk, walk);
                chunk
                    .iter()
                    .zip(found)
                    .enumerate()
                    .map(|(i, (k, e))| f(task * per_task + i, k, e))
                    .collect()
            })
            .collect()
    }

    /// Computes now, on the rayon pool, the hashes of the values at `keys`
    /// that changed since their hash was last computed (absent keys and
    /// current hashes are skipped). Only a matter of speed: a hash not
    /// computed here is computed when read. The keys are found as
    /// [`Table::par_map_sorted`] finds them.
    pub fn rehash(&self, keys: &[K])
    where
        K: Send + Sync,
        V: Send + Sync,
    {
        /// Keys per rayon task: an element hash is well under a
        /// microsecond, about what handing a task to another thread costs.
        const PER_TASK: usize = 64;
        self.par_map_entries(keys, PER_TASK, |_, _, e| {
            if let Some(e) = e {
                e.inner.hash();
            }
        });
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
        self.map.remove(key).map(|e| e.inner.value.clone())
    }

    /// Changes the value at `key` through `f` and empties its hash slot
    /// (the hash is computed when next read, or by [`Table::rehash`]).
    /// Returns whether the key was present. The value is changed in place
    /// when no other table shares it, and copied first otherwise.
    pub fn update(&mut self, key: &K, f: impl FnOnce(&mut V)) -> bool {
        let Some(entry) = self.map.get_mut(key) else {
            return false;
        };
        let inner = Arc::make_mut(&mut entry.inner);
        f(&mut inner.value);
        inner.hash = OnceLock::new();
        true
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, e)| (k, &e.inner.value))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|e| &e.inner.value)
    }

    /// What changed from `older` to `self`, in key order: entries that are
    /// new or whose value differs ([`Change::Set`]) and keys `self` no
    /// longer has ([`Change::Removed`]). An entry `self` shares with `older`
    /// (the same allocation, as after a clone and no update) is skipped
    /// without comparing values, so a tick that changed little costs a
    /// walk over the keys. For views (the region stream), never the state
    /// hash.
    pub fn changes<'a>(&'a self, older: &'a Table<K, V>) -> Vec<Change<'a, K, V>>
    where
        V: PartialEq,
    {
        let mut out = Vec::new();
        let mut old = older.map.iter().peekable();
        for (k, e) in self.map.iter() {
            while let Some((ok, _)) = old.next_if(|(ok, _)| *ok < k) {
                out.push(Change::Removed(ok));
            }
            match old.next_if(|(ok, _)| *ok == k) {
                Some((_, oe))
                    if Arc::ptr_eq(&oe.inner, &e.inner) || oe.inner.value == e.inner.value => {}
                _ => out.push(Change::Set(k, &e.inner.value)),
            }
        }
        out.extend(old.map(|(ok, _)| Change::Removed(ok)));
        out
    }

    /// `(key, value hash)` pairs in key order, for the state digest.
    /// Hashes not computed since their value changed are computed here.
    pub fn hashes(&self) -> impl Iterator<Item = (&K, &[u8; 32])> {
        self.map.iter().map(|(k, e)| (k, e.inner.hash()))
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
    use proptest::prelude::*;

    use super::*;

    impl EntryHash for u64 {}

    /// What a table's hashes must be: each value's own hash, in key order.
    fn eager(table: &Table<u64, u64>) -> Vec<(u64, [u8; 32])> {
        table.iter().map(|(k, v)| (*k, value_hash(v))).collect()
    }

    fn read(table: &Table<u64, u64>) -> Vec<(u64, [u8; 32])> {
        table.hashes().map(|(k, h)| (*k, *h)).collect()
    }

    #[test]
    fn changes_lists_set_and_removed_keys_in_order() {
        let mut a = Table::new();
        for k in 0..6u64 {
            a.insert(k, k * 10);
        }
        let mut b = a.clone();
        b.update(&1, |v| *v = 11);
        b.update(&2, |v| *v = 20); // updated to the same value: not a change
        b.remove(&0);
        b.remove(&5);
        b.insert(3, 31);
        b.insert(7, 70);
        assert_eq!(
            b.changes(&a),
            vec![
                Change::Removed(&0),
                Change::Set(&1, &11),
                Change::Set(&3, &31),
                Change::Removed(&5),
                Change::Set(&7, &70),
            ]
        );
        assert_eq!(a.changes(&a.clone()), vec![]);
        assert_eq!(Table::new().changes(&a).len(), 6);
    }

    /// One change to a table in the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Update(u64, u64),
        Remove(u64),
        /// Rehash these keys (in order when `sorted`) on a pool of
        /// `threads` threads.
        Rehash(Vec<u64>, bool, usize),
        /// Read every hash.
        Read,
        /// Keep a clone of the table as it is now.
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0..40u64;
        prop_oneof![
            (key.clone(), any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (key.clone(), any::<u64>()).prop_map(|(k, v)| Op::Update(k, v)),
            key.clone().prop_map(Op::Remove),
            (prop::collection::vec(key, 0..60), any::<bool>(), 1..4usize)
                .prop_map(|(keys, sorted, threads)| Op::Rehash(keys, sorted, threads)),
            Just(Op::Read),
            Just(Op::Snapshot),
        ]
    }

    proptest! {
        /// Deferred rehashing reads the same hashes as eager rehashing
        /// (the hash of each value as it is now), whatever mix of changes,
        /// partial parallel rehashes and reads came before; and a clone
        /// kept along the way still reads its own values' hashes.
        #[test]
        fn deferred_hashes_are_eager_hashes(ops in prop::collection::vec(op(), 0..80)) {
            let mut table: Table<u64, u64> = Table::new();
            // Clones kept along the way, with their values when kept.
            type Kept = (Table<u64, u64>, Vec<(u64, u64)>);
            let mut kept: Vec<Kept> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => table.insert(k, v),
                    Op::Update(k, v) => {
                        let present = table.contains_key(&k);
                        prop_assert_eq!(table.update(&k, |x| *x = x.wrapping_add(v)), present);
                    }
                    Op::Remove(k) => {
                        table.remove(&k);
                    }
                    Op::Rehash(mut keys, sorted, threads) => {
                        if sorted {
                            keys.sort();
                        }
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        pool.install(|| table.rehash(&keys));
                    }
                    Op::Read => prop_assert_eq!(read(&table), eager(&table)),
                    Op::Snapshot => {
                        let values = table.iter().map(|(k, v)| (*k, *v)).collect();
                        kept.push((table.clone(), values));
                    }
                }
            }
            prop_assert_eq!(read(&table), eager(&table));
            for (old, values) in kept {
                let now: Vec<(u64, u64)> = old.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(&now, &values);
                prop_assert_eq!(read(&old), eager(&old));
            }
        }
    }

    /// `rehash` fills exactly the slots of changed values it is given,
    /// and a slot filled in parallel holds the value's hash.
    #[test]
    fn rehash_fills_changed_slots() {
        let mut table: Table<u64, u64> = Table::new();
        for k in 0..1000u64 {
            table.insert(k, k);
        }
        let slot =
            |t: &Table<u64, u64>, k: u64| t.map.get(&k).and_then(|e| e.inner.hash.get().copied());
        assert_eq!(slot(&table, 5), Some(value_hash(&5u64)));
        for k in (0..1000u64).step_by(3) {
            table.update(&k, |v| *v += 1);
        }
        assert_eq!(slot(&table, 3), None);
        assert_eq!(slot(&table, 6), None);
        let keys: Vec<u64> = (0..1000u64).step_by(6).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| table.rehash(&keys));
        assert_eq!(slot(&table, 6), Some(value_hash(&7u64)));
        assert_eq!(slot(&table, 3), None);
        assert_eq!(read(&table), eager(&table));
        assert_eq!(slot(&table, 3), Some(value_hash(&4u64)));
    }

    /// `get_sorted` and `par_map_sorted` give what `get` gives, for dense
    /// and sparse key lists, present and absent keys, and keys out of
    /// order.
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
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for keys in lists {
            let want: Vec<Option<&u64>> = keys.iter().map(|k| table.get(k)).collect();
            assert_eq!(table.get_sorted(&keys), want, "{keys:?}");
            // `par_map_sorted` hands each key, its index and its value to
            // the function, and returns the results in order, whatever the
            // task size.
            let want: Vec<(usize, u64, Option<u64>)> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (i, *k, table.get(k).copied()))
                .collect();
            for per_task in [0, 1, 3, 64, 5000] {
                let got: Vec<(usize, u64, Option<u64>)> = pool.install(|| {
                    table
                        .par_map_sorted(&keys, per_task, |i, k, v| (i, *k, v.copied()))
                        .collect()
                });
                assert_eq!(got, want, "{per_task} {keys:?}");
            }
        }
    }
}
