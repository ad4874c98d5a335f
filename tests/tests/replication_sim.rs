//! The replication harness (`metatopia_tests::replication`): replica cores
//! over a simulated clock and network with loss, duplication, reorder,
//! partitions, crashes and a byzantine primary, every run from one seed.
//! `SIM_SEED=N cargo test -p metatopia-tests --test replication_sim`
//! reproduces one run; `scripts/replication-seeds N` runs many.

use metatopia_tests::replication::{Faults, Harness, run_seed};

/// Seeds CI runs (each a few seconds of simulated time with faults, then
/// healing).
const SEEDS: u64 = 24;

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (1..=SEEDS).collect(),
    }
}

#[test]
fn every_seed_is_safe_and_converges_after_healing() {
    for seed in seeds() {
        println!("seed {seed}");
        match run_seed(seed, 6_000, 6_000) {
            Ok(o) => println!("  {o:?}"),
            Err(e) => panic!("seed {seed}: {e}\nreproduce with SIM_SEED={seed}"),
        }
    }
}

/// LAN delays and no faults.
fn quiet() -> Faults {
    Faults {
        loss: 0.0,
        duplicate: 0.0,
        delay_ms: (5, 20),
        crashes: false,
        partitions: false,
        byzantine: None,
        heal_at_ms: 0,
    }
}

#[test]
fn a_quiet_group_ticks_at_its_rate_and_acknowledges_every_input() {
    // Clients send until 4 s; the faults (none) "heal" then too.
    let faults = Faults {
        heal_at_ms: 1_004_000,
        ..quiet()
    };
    let mut h = Harness::new(99, 4, faults);
    let o = h.run(5_000, true).expect("safe");
    // 5 s at 20 Hz: about 100 ticks.
    assert!(o.finalized_tick >= 90, "{o:?}");
    assert_eq!(o.nullified, 0, "{o:?}");
    assert!(o.acked > 50, "{o:?}");
    assert_eq!(h.unacknowledged(), Vec::new());
}

#[test]
fn a_diverged_replica_is_detected_and_resynced() {
    let mut h = Harness::new(7, 4, quiet());
    h.diverge(3, 29);
    let o = h.run(5_000, true).expect("safe");
    assert_eq!(o.resyncs, 1, "{o:?}");
    assert!(o.finalized_tick >= 90, "{o:?}");
}
