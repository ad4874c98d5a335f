//! Profiling driver for the 10k-script tick (the bench `tick_10k_scripts`
//! as a plain program, for perf and cachegrind): 10,000 timer scripts,
//! N ticks on one thread, the median tick printed. The first tick loads
//! the sandboxes.
//!
//! `cargo run --release -p metatopia-scripts --example tick10k -- 20 [THREADS]`
#![allow(clippy::unwrap_used, missing_docs)]
use std::sync::Arc;

use metatopia_scripts::{Host, MemorySources};
use metatopia_sim::state::{ElementKind, ScriptSlot, Settings, State};
use metatopia_sim::{Batch, RegionId, Sim, Vec3};

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
    let hash = sources.insert(src);
    let mut state = State::new(RegionId(1), Settings::default(), &[]);
    let root = state.root();
    for i in 0..10_000 {
        let id = state
            .add_child(
                root,
                ElementKind::Object,
                None,
                "s",
                Vec3::from_ints(i % 256, i / 256, 0),
            )
            .unwrap();
        state.elements.update(&id, |e| {
            e.script = Some(ScriptSlot {
                source: hash,
                state: Vec::new(),
                faults: 0,
                suspended: false,
            })
        });
        state.scripted.insert(id);
        state.timers.insert((0, id, 1));
    }
    let host = Host::new(sources).unwrap();
    let mut sim = Sim::new(state);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut times = Vec::new();
    for _ in 0..ticks {
        let t = sim.tick();
        let start = std::time::Instant::now();
        let r = pool
            .install(|| {
                sim.step(
                    &Batch {
                        tick: t,
                        time_ms: t * 50,
                        inputs: vec![],
                    },
                    &host,
                )
            })
            .unwrap();
        times.push(start.elapsed());
        assert_eq!(r.script_calls, 10_000);
    }
    times.sort();
    if times.is_empty() {
        return;
    }
    eprintln!(
        "median tick {:?} (first {:?})",
        times[times.len() / 2],
        times[0]
    );
}
