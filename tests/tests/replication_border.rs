//! Two regions side by side, each hosted by its own group of four replica
//! cores, trading border traffic as certified border sets
//! (`metatopia_tests::border`): a storm of balls crossing the border both
//! ways, with faults on the link between the groups and a crash of one
//! group's primary. `SIM_SEED=N cargo test -p metatopia-tests --test
//! replication_border` reproduces one run.

use metatopia_tests::border::{Harness, LinkFaults, run_seed};

/// Seeds CI runs.
const SEEDS: u64 = 4;

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (1..=SEEDS).collect(),
    }
}

#[test]
fn a_quiet_link_hands_every_body_over_at_plus_two() {
    let mut h = Harness::new(11, 36, LinkFaults::quiet());
    let o = h.run(8_000).expect("safe");
    println!("{o:?}");
    assert!(o.ticks_checked >= 140, "{o:?}");
    assert!(o.switches >= 50, "{o:?}");
    assert_eq!(o.switches, o.switches_at_2, "{o:?}");
    assert_eq!((o.in_limbo, o.doubled, o.lost), (0, 0, 0), "{o:?}");
}

/// Link faults (loss, duplicates, reorder, partitions) and a crash of
/// group 2's primary in the middle: never two owners, nothing lost; a
/// body may be kept by its source, unowned, while a verdict is missing.
#[test]
fn every_seed_keeps_one_owner_per_body_under_link_faults() {
    for seed in seeds() {
        println!("seed {seed}");
        match run_seed(seed, 36, 6_000, 4_000) {
            Ok(o) => {
                println!("  {o:?}");
                assert_eq!(
                    o.doubled, 0,
                    "seed {seed}: {o:?}\nreproduce with SIM_SEED={seed}"
                );
                assert_eq!(
                    o.lost, 0,
                    "seed {seed}: {o:?}\nreproduce with SIM_SEED={seed}"
                );
            }
            Err(e) => panic!("seed {seed}: {e}\nreproduce with SIM_SEED={seed}"),
        }
    }
}
