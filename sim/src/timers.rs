//! [`Timers`]: a region's pending script timers, `(due tick, script, timer
//! id)`, as an ordered set grouped by due tick.
//!
//! A tick takes every timer due at it (the front of the set) and adds the
//! timers its scripts set, most of them due at the same later tick and
//! arriving in script order. An `OrdSet` paid a B-tree insert for each
//! (about a microsecond). Here the timers due at one tick are one sorted
//! `Vec`, shared between clones of the state until one of them changes it,
//! in a persistent map by due tick: taking the due timers removes whole
//! runs, and a batch of new timers is merged into each run once (appended
//! when it sorts after the run, which is the usual case).
//!
//! The set's order, contents, serialisation (a length, then the triples in
//! order) and digest are those of the `OrdSet` it replaces.

use std::fmt;
use std::sync::Arc;

use imbl::OrdMap;
use serde::de::Error as _;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::ElementId;

/// A pending timer: (due tick, script, timer id).
pub type Timer = (u64, ElementId, u32);

/// An ordered set of [`Timer`]s. Cloning is a pointer copy.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Timers {
    /// The timers due at each tick, strictly increasing, never empty; the
    /// first field of each is its key.
    runs: OrdMap<u64, Arc<Vec<Timer>>>,
    len: usize,
}

impl Timers {
    /// An empty set.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// The number of timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The timers in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Timer> + '_ {
        self.runs.values().flat_map(|run| run.iter())
    }

    /// Whether `timer` is pending.
    pub fn contains(&self, timer: &Timer) -> bool {
        self.runs
            .get(&timer.0)
            .is_some_and(|run| run.binary_search(timer).is_ok())
    }

    /// Adds a timer; returns whether it was not pending already. Shifts
    /// the later timers of its due tick's run: for a few timers; many go
    /// through [`Timers::extend`].
    pub fn insert(&mut self, timer: Timer) -> bool {
        let Some(run) = self.runs.get_mut(&timer.0) else {
            self.runs.insert(timer.0, Arc::new(vec![timer]));
            self.len += 1;
            return true;
        };
        let Err(at) = run.binary_search(&timer) else {
            return false;
        };
        Arc::make_mut(run).insert(at, timer);
        self.len += 1;
        true
    }

    /// Adds many timers at once (repeats, and timers already pending, are
    /// added once). Each due tick's run is merged with the new timers for
    /// it in one pass, or extended when they all sort after it.
    pub fn extend(&mut self, mut batch: Vec<Timer>) {
        batch.sort_unstable();
        batch.dedup();
        let mut rest = batch.as_slice();
        while let Some(first) = rest.first() {
            let due = first.0;
            let n = rest.partition_point(|t| t.0 == due);
            let (group, tail) = rest.split_at(n);
            rest = tail;
            let Some(run) = self.runs.get_mut(&due) else {
                self.runs.insert(due, Arc::new(group.to_vec()));
                self.len += group.len();
                continue;
            };
            let before = run.len();
            if run.last().is_some_and(|last| last < &group[0]) {
                Arc::make_mut(run).extend_from_slice(group);
            } else {
                *run = Arc::new(merge(run, group));
            }
            self.len += run.len() - before;
        }
    }

    /// Removes a timer; returns whether it was pending.
    pub fn remove(&mut self, timer: &Timer) -> bool {
        let Some(run) = self.runs.get_mut(&timer.0) else {
            return false;
        };
        let Ok(at) = run.binary_search(timer) else {
            return false;
        };
        if run.len() == 1 {
            self.runs.remove(&timer.0);
        } else {
            Arc::make_mut(run).remove(at);
        }
        self.len -= 1;
        true
    }

    /// Removes and returns, in order, every timer due at or before `tick`.
    pub fn take_due(&mut self, tick: u64) -> Vec<Timer> {
        let mut due: Vec<Timer> = Vec::new();
        while let Some(at) = self.runs.get_min().map(|(at, _)| *at) {
            if at > tick {
                break;
            }
            let Some(run) = self.runs.remove(&at) else {
                break;
            };
            if due.is_empty() {
                due = Arc::unwrap_or_clone(run);
            } else {
                due.extend_from_slice(&run);
            }
        }
        self.len -= due.len();
        due
    }

    /// Keeps only the timers for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&Timer) -> bool) {
        let dues: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, run)| !run.iter().all(&mut keep))
            .map(|(due, _)| *due)
            .collect();
        for due in dues {
            let Some(run) = self.runs.get_mut(&due) else {
                continue;
            };
            let before = run.len();
            Arc::make_mut(run).retain(&mut keep);
            let after = run.len();
            if after == 0 {
                self.runs.remove(&due);
            }
            self.len -= before - after;
        }
    }
}

/// The sorted union of two sorted, repeat-free lists.
fn merge(a: &[Timer], b: &[Timer]) -> Vec<Timer> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

impl FromIterator<Timer> for Timers {
    fn from_iter<I: IntoIterator<Item = Timer>>(iter: I) -> Timers {
        let mut timers = Timers::new();
        timers.extend(iter.into_iter().collect());
        timers
    }
}

impl fmt::Debug for Timers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for Timers {
    /// A length, then the timers in order: the bytes of the `OrdSet`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len))?;
        for timer in self.iter() {
            seq.serialize_element(timer)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Timers {
    /// Reads timers, refusing any that are not strictly increasing.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timers, D::Error> {
        let items: Vec<Timer> = crate::codec::read_seq(d)?;
        if items.windows(2).any(|w| w[0] >= w[1]) {
            return Err(D::Error::custom("set items are not strictly increasing"));
        }
        Ok(items.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use imbl::OrdSet;
    use proptest::prelude::*;

    use super::*;

    /// One change in the property test below; the model is a `BTreeSet`.
    #[derive(Debug, Clone)]
    enum Op {
        Insert(Timer),
        Extend(Vec<Timer>),
        Remove(Timer),
        TakeDue(u64),
        /// Drops the timers of scripts whose counter is divisible by this.
        Retain(u64),
        /// Keeps a clone as it is now.
        Keep,
    }

    fn timer() -> impl Strategy<Value = Timer> {
        (0..12u64, 0..6u64, 0..3u32).prop_map(|(due, s, t)| (due, ElementId::new(1, s), t))
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            timer().prop_map(Op::Insert),
            prop::collection::vec(timer(), 0..40).prop_map(Op::Extend),
            timer().prop_map(Op::Remove),
            (0..14u64).prop_map(Op::TakeDue),
            (1..4u64).prop_map(Op::Retain),
            Just(Op::Keep),
        ]
    }

    /// The postcard bytes of the `OrdSet` that `Timers` replaced.
    fn ord_set_bytes(model: &BTreeSet<Timer>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Old<'a>(#[serde(with = "crate::codec::ord_set")] &'a OrdSet<Timer>);
        let set: OrdSet<Timer> = model.iter().copied().collect();
        postcard::to_stdvec(&Old(&set)).unwrap()
    }

    fn check(timers: &Timers, model: &BTreeSet<Timer>) -> Result<(), TestCaseError> {
        let got: Vec<Timer> = timers.iter().copied().collect();
        let want: Vec<Timer> = model.iter().copied().collect();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(timers.len(), model.len());
        prop_assert_eq!(timers.is_empty(), model.is_empty());
        prop_assert!(timers.runs.values().all(|run| !run.is_empty()));
        let bytes = postcard::to_stdvec(timers).unwrap();
        prop_assert_eq!(&bytes, &ord_set_bytes(model));
        let back: Timers = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&back, timers);
        Ok(())
    }

    proptest! {
        /// `Timers` behaves as an ordered set (the model), with the
        /// `OrdSet`'s bytes; clones kept along the way do not change.
        #[test]
        fn timers_are_an_ordered_set(ops in prop::collection::vec(op(), 0..60)) {
            let mut timers = Timers::new();
            let mut model = BTreeSet::new();
            let mut kept = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(t) => prop_assert_eq!(timers.insert(t), model.insert(t)),
                    Op::Extend(batch) => {
                        model.extend(batch.iter().copied());
                        timers.extend(batch);
                    }
                    Op::Remove(t) => prop_assert_eq!(timers.remove(&t), model.remove(&t)),
                    Op::TakeDue(tick) => {
                        let want: Vec<Timer> =
                            model.iter().copied().filter(|t| t.0 <= tick).collect();
                        model.retain(|t| t.0 > tick);
                        prop_assert_eq!(timers.take_due(tick), want);
                    }
                    Op::Retain(k) => {
                        let keep = |t: &Timer| !t.1.counter.is_multiple_of(k);
                        model.retain(keep);
                        timers.retain(keep);
                    }
                    Op::Keep => kept.push((timers.clone(), model.clone())),
                }
                for t in [(3, ElementId::new(1, 2), 1), (0, ElementId::new(1, 0), 0)] {
                    prop_assert_eq!(timers.contains(&t), model.contains(&t));
                }
                check(&timers, &model)?;
            }
            for (timers, model) in kept {
                check(&timers, &model)?;
            }
        }
    }

    /// Bytes whose timers are not strictly increasing are refused.
    #[test]
    fn unordered_bytes_are_refused() {
        let a = (1, ElementId::new(1, 1), 0);
        let b = (1, ElementId::new(1, 2), 0);
        for items in [vec![b, a], vec![a, a]] {
            let bytes = postcard::to_stdvec(&items).unwrap();
            assert!(postcard::from_bytes::<Timers>(&bytes).is_err());
        }
        let bytes = postcard::to_stdvec(&vec![a, b]).unwrap();
        let timers: Timers = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(timers.iter().copied().collect::<Vec<_>>(), vec![a, b]);
    }
}
