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
//! with useful work instead of stalling it.
//!
//! Prefetches are hints: they never fault, whatever the address, and change
//! nothing a program can observe but time. A stale address (an object Lua
//! freed or moved since it was recorded) costs one wasted fetch. Nothing
//! here can change what a script computes.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

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
}
