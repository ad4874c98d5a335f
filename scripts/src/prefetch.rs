//! Software prefetch of the next script's memory.
//!
//! A tick calls each script once, so everything a call touches in its Lua
//! state (about 55 KiB, [`crate::alloc`]) was last touched a tick ago and
//! comes from main memory: some 60 cache misses per call, taken one after
//! another because each pointer leads to the next. A thread runs its share
//! of a tick's calls in the same order every tick (by element id), so after
//! each call the host hands the addresses that call touched first (its
//! cache entry and [`crate::Sandbox::hot_lines`]) to the script the thread
//! ran just before ([`Hot`]). When that script runs next tick, the host asks
//! the CPU to fetch them, and the misses of the script after it overlap
//! with useful work instead of stalling it. [`Prefetcher`] is the whole of
//! it as the call path sees it: start, around the Lua call, hand back.
//!
//! Prefetches are hints: they never fault, whatever the address, and change
//! nothing a program can observe but time. A stale address (an object Lua
//! freed or moved since it was recorded) costs one wasted fetch. Nothing
//! here can change what a script computes.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use metatopia_sim::ElementId;

/// Most addresses kept per sandbox.
pub const HOT_MAX: usize = 80;

/// Asks the CPU to bring the cache line at `p` into all cache levels.
#[inline]
pub fn line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and never faults,
    // whatever the address; `_mm_prefetch` only needs SSE, which every
    // x86_64 CPU has.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches every cache line of the `len` bytes at `p`.
#[inline]
pub fn range(p: *const u8, len: usize) {
    let mut offset = 0;
    while offset < len {
        line(p.wrapping_add(offset));
        offset += 64;
    }
}

/// Addresses to prefetch: what the script after this one touched first, as
/// its last call left them. Atomics, not a lock: the thread that ran that
/// script writes them, and whichever thread runs this one reads them, only
/// to prefetch.
#[derive(Debug)]
pub struct Hot {
    len: AtomicUsize,
    addrs: [AtomicUsize; HOT_MAX],
}

impl Default for Hot {
    fn default() -> Hot {
        Hot {
            len: AtomicUsize::new(0),
            addrs: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }
}

impl Hot {
    /// Keeps `addrs` (at most [`HOT_MAX`]).
    pub fn store(&self, addrs: &[*const c_void]) {
        let n = addrs.len().min(HOT_MAX);
        for (slot, a) in self.addrs.iter().zip(&addrs[..n]) {
            slot.store(*a as usize, Ordering::Relaxed);
        }
        self.len.store(n, Ordering::Relaxed);
    }

    /// Prefetches the kept addresses from `from` (in the order kept)
    /// up to `to`. A CPU keeps only so many fetches in flight, so the
    /// host spreads the list over a call: the first lines a call needs at
    /// its start, the rest after the current script's Lua call.
    pub fn prefetch(&self, from: usize, to: usize) {
        let n = self.len.load(Ordering::Relaxed).min(HOT_MAX).min(to);
        for slot in self.addrs.get(from..n).unwrap_or_default() {
            line(slot.load(Ordering::Relaxed) as *const u8);
        }
    }
}

/// The next script's hot addresses are prefetched in three parts: up to
/// `EARLY` when a call starts (its cache entry, stored state, budget, Lua
/// state), up to `MID` before the Lua call (stack, call frames, registry,
/// handler), the rest after it (globals, string-table buckets).
const EARLY: usize = 24;
/// See [`EARLY`].
const MID: usize = 48;

thread_local! {
    /// The script this thread ran last, to which the next script's hot
    /// addresses are handed back.
    static LAST: Cell<Option<ElementId>> = const { Cell::new(None) };
}

/// The prefetching around one script call. `next` is the call's own
/// [`Hot`]: what the script its thread ran after it touched first, last
/// tick, fetched in three parts spread over the call (a CPU keeps only so
/// many fetches in flight). After the call, [`Prefetcher::hand_back`] gives
/// what this call touched first to the script the thread ran before.
#[derive(Debug)]
pub struct Prefetcher<'a> {
    next: &'a Hot,
}

impl<'a> Prefetcher<'a> {
    /// Starts a call: fetches the first part.
    pub fn start(next: &'a Hot) -> Prefetcher<'a> {
        next.prefetch(0, EARLY);
        Prefetcher { next }
    }

    /// Runs the call's Lua part, `call`, with the second part fetched
    /// before it and the rest after.
    pub fn around<R>(&self, call: impl FnOnce() -> R) -> R {
        self.next.prefetch(EARLY, MID);
        let r = call();
        self.next.prefetch(MID, HOT_MAX);
        r
    }

    /// Ends the call of `script`, which touched `hot` first: stores `hot`
    /// in the [`Hot`] of the script this thread ran before (`find` looks
    /// it up; gone is fine), which prefetches it at its next call. A
    /// thread runs its share of a tick's calls in the same order every
    /// tick (by element id).
    pub fn hand_back<'h>(
        self,
        script: ElementId,
        hot: &[*const c_void],
        find: impl FnOnce(ElementId) -> Option<&'h Hot>,
    ) {
        if let Some(prev) = LAST.replace(Some(script))
            && let Some(prev) = find(prev)
        {
            prev.store(hot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_is_a_valid_hint() {
        line(std::ptr::null());
        line(usize::MAX as *const u8);
        range(std::ptr::null(), 4096);
        let hot = Hot::default();
        hot.prefetch(0, HOT_MAX);
        let addrs = [
            std::ptr::null(),
            8 as *const c_void,
            usize::MAX as *const c_void,
        ];
        hot.store(&addrs);
        assert_eq!(hot.len.load(Ordering::Relaxed), 3);
        hot.prefetch(0, 2);
        hot.prefetch(2, HOT_MAX);
        hot.prefetch(5, 1);
    }

    #[test]
    fn store_keeps_at_most_hot_max() {
        let hot = Hot::default();
        let addrs: Vec<*const c_void> = (1..=HOT_MAX + 10)
            .map(|i| (i * 64) as *const c_void)
            .collect();
        hot.store(&addrs);
        assert_eq!(hot.len.load(Ordering::Relaxed), HOT_MAX);
        assert_eq!(hot.addrs[HOT_MAX - 1].load(Ordering::Relaxed), HOT_MAX * 64);
    }

    #[test]
    fn hand_back_goes_to_the_script_run_before() {
        use metatopia_sim::RegionId;
        let id = |counter| ElementId {
            region: RegionId(1),
            counter,
        };
        let (first, second) = (Hot::default(), Hot::default());
        let hot = [64 as *const c_void, 128 as *const c_void];
        // The first call on this thread has no one to hand back to.
        Prefetcher::start(&first).hand_back(id(1), &hot, |_| panic!("no script ran before"));
        let p = Prefetcher::start(&second);
        assert_eq!(p.around(|| 7), 7);
        p.hand_back(id(2), &hot, |prev| {
            assert_eq!(prev, id(1));
            Some(&first)
        });
        assert_eq!(first.len.load(Ordering::Relaxed), 2);
        assert_eq!(second.len.load(Ordering::Relaxed), 0);
    }
}
