//! Every example scenario parses, runs, and gives the same hash run twice
//! and on 1 or 4 rayon threads (the examples are what users copy from).

#![allow(clippy::unwrap_used)]

use metatopia_node::scenario;
use metatopia_tests::example_scenarios;

#[test]
fn examples_run_deterministically() {
    let files = example_scenarios();
    assert!(files.len() >= 2, "examples/ has scenarios: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let prepared = scenario::parse_at(&text, file.parent())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let host = metatopia_node::scripts::scenario_host(&prepared.script_sources).unwrap();
        let hash = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| prepared.run(None, &*host).unwrap().state_hash())
        };
        let one = hash(1);
        assert_eq!(one, hash(4), "{}", file.display());
        assert_eq!(one, hash(1), "{}", file.display());
    }
}
