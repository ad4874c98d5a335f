//! Profiling driver for the 10k-script tick (the bench `tick_10k_scripts`
//! as a plain program, for perf and cachegrind): 10,000 timer scripts,
//! N ticks on THREADS threads (default 1), the median and fastest tick
//! printed, leaving out the first tick (which loads the sandboxes).
//!
//! `cargo run --release -p metatopia-scripts --example tick10k -- 20 [THREADS]`
#![allow(clippy::unwrap_used, missing_docs)]
use std::sync::Arc;

use metatopia_scripts::{Host, MemorySources};
use metatopia_sim::Sim;

/// The node's allocator.
#[global_allocator]
static ALLOC: metatopia_scripts::alloc::Allocator = metatopia_scripts::alloc::Allocator;

fn main() {
    metatopia_scripts::alloc::init();
    let ticks: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let threads: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let src = "-- SPDX-License-Identifier: AGPL-3.0-or-later\nfunction on_timer(id) state.n = (state.n or 0) + 1; set_timer(1, 1) end";
    let sources = Arc::new(MemorySources::new());
    let state = metatopia_sim::testing::timer_region(10_000, sources.insert(src));
    let host = Host::new(sources).unwrap();
    let mut sim = Sim::new(state);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut times = Vec::new();
    for _ in 0..ticks {
        let start = std::time::Instant::now();
        let r = pool.install(|| metatopia_sim::testing::step_idle(&mut sim, &host));
        times.push(start.elapsed());
        assert_eq!(r.script_calls, 10_000);
    }
    // The first tick loads the sandboxes.
    if times.len() > 1 {
        times.remove(0);
    }
    times.sort();
    if times.is_empty() {
        return;
    }
    eprintln!(
        "median tick {:?} (fastest {:?})",
        times[times.len() / 2],
        times[0]
    );
}
