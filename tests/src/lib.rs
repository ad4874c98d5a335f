//! Cross-crate scenarios and, as replication lands, the deterministic
//! simulation harness. Helpers shared by the tests in `tests/tests/`.

use std::path::{Path, PathBuf};

/// The repository's `examples/` folder.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every `*.toml` scenario directly in `examples/`, sorted.
pub fn example_scenarios() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub mod border;
pub mod determinism;
pub mod replication;
pub mod simplex_harness;
