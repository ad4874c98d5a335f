//! Runs the replication harness over many seeds and prints how many
//! passed, with each failure's seed and reason.
//!
//! `cargo run --release -p metatopia-tests --example replication_seeds -- [COUNT] [FIRST]`
//! (defaults: 1000 seeds from 1). A failing seed reproduces with
//! `SIM_SEED=N cargo test -p metatopia-tests --test replication_sim`.

use metatopia_tests::replication::run_seed;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let first: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let started = std::time::Instant::now();
    let mut failed = Vec::new();
    for seed in first..first + count {
        if let Err(e) = run_seed(seed, 6_000, 6_000) {
            println!("seed {seed}: FAILED: {e}");
            failed.push(seed);
        }
    }
    println!(
        "{} passed, {} failed ({} seeds from {first} in {:.1} s)",
        count - failed.len() as u64,
        failed.len(),
        count,
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failed seeds: {failed:?}");
        std::process::exit(1);
    }
}
