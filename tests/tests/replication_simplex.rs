//! The replica cores under the real engine (commonware Simplex) in the
//! deterministic runtime: a crash and restart, a byzantine primary, lossy
//! links and a partition, then healing (`metatopia_tests::simplex_harness`).
//! `SIM_SEED=N` reproduces one run.

use metatopia_tests::simplex_harness::run_seed;

/// Seeds CI runs (about 12 simulated seconds each).
const SEEDS: u64 = 6;

#[test]
fn the_real_engine_is_safe_under_faults_and_converges_after_healing() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (1..=SEEDS).collect(),
    };
    for seed in seeds {
        let n = 4 + (seed % 4) as usize;
        println!("seed {seed}: {n} members");
        match run_seed(seed, n, 12) {
            Ok(o) => println!("  {o:?}"),
            Err(e) => panic!("seed {seed}: {e}\nreproduce with SIM_SEED={seed}"),
        }
    }
}
