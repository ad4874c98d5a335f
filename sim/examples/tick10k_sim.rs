//! The sim's side of the 10,000-script tick, for profilers: the scene of
//! the `tick_10k_scripts` benches, stepped with a Rust host that returns
//! what the Lua script returns (one timer and an 8-byte state), on a rayon
//! pool of THREADS threads. Two warm-up ticks, then TICKS measured ones
//! (in `measured`, for callgrind's `--toggle-collect`). It prints the
//! state hash and reads no clock (the sim crate's rule); time it with
//! `perf stat` or `time`.
//!
//! ```text
//! cargo build --profile bench -p metatopia-sim --example tick10k_sim
//! target/release/examples/tick10k_sim [TICKS] [THREADS]
//! valgrind --tool=callgrind --toggle-collect='*tick10k_sim*measured*' \
//!     target/release/examples/tick10k_sim 3 1
//! ```

use metatopia_sim::Sim;

/// Steps `n` ticks; returns the last state hash.
#[inline(never)]
fn measured(sim: &mut Sim, n: u32) -> [u8; 32] {
    let mut hash = sim.hash();
    for _ in 0..n {
        hash = metatopia_sim::testing::step_idle(sim, &metatopia_sim::testing::TimerHost).hash;
    }
    hash
}

fn arg(i: usize, default: u32) -> u32 {
    std::env::args()
        .nth(i)
        .map_or(default, |s| s.parse().expect("a number"))
}

fn main() {
    let ticks = arg(1, 20).max(1);
    let threads = arg(2, 1) as usize;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool");
    let mut sim = Sim::new(metatopia_sim::testing::timer_region(10_000, [7; 32]));
    pool.install(|| measured(&mut sim, 2));
    let hash = pool.install(|| measured(&mut sim, ticks));
    println!("{ticks} ticks on {threads} threads, state hash {hash:02x?}");
}
