//! The determinism feature guard for rapier.
//!
//! `cfg(feature)` only sees this crate's own features, so a workspace
//! member that turned on `parallel` or a SIMD feature of rapier (or parry)
//! would slip past a `compile_error!`. This test reads the features cargo
//! compiled into the rapier and parry that this very test binary links and
//! fails if determinism is at risk. `cargo test --workspace` (CI, the
//! README) builds one rapier with every member's features unified, so a
//! member that turns on `parallel` fails here.
//!
//! Where the features come from: cargo keeps a record of every compiled
//! unit in `<target>/<profile>/.fingerprint/<package>-<hash>/`: a file
//! `<kind>-<crate>` holding the unit's fingerprint (16 hex digits) and
//! `<kind>-<crate>.json` with its `features` and its dependencies (as
//! `[package hash, crate name, public, fingerprint]`). This test starts at
//! its own unit (the directory named like its executable) and follows the
//! fingerprints to rapier and parry, so stale records of other builds are
//! never read. It asks nothing of cargo or the network and does not depend
//! on what `~/.cargo` holds (issue 11: `cargo metadata --offline` needed
//! every package of `Cargo.lock`, Windows-only ones too, and failed on a
//! fresh machine). If a cargo release changes this layout the test fails
//! saying so; it never passes without having read both feature lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A compiled unit's record: its `.json` fingerprint file.
fn record(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read cargo's build record {} ({e}); has cargo's fingerprint layout changed?",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON ({e})", path.display()))
}

/// The fingerprint (cargo's hex of the little-endian u64) of the
/// dependency `krate` in `unit`'s record.
fn dep_fingerprint(unit: &Value, krate: &str) -> String {
    let deps = unit["deps"]
        .as_array()
        .expect("a build record lists its dependencies under \"deps\"");
    let fp = deps
        .iter()
        .find(|d| d[1].as_str() == Some(krate))
        .unwrap_or_else(|| panic!("{krate} is not among the dependencies {deps:?}"))[3]
        .as_u64()
        .expect("a dependency's fourth field is its fingerprint");
    fp.to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The record of the library unit of `package` (crate `krate`) whose
/// fingerprint is `fp`.
fn lib_record(fingerprints: &Path, package: &str, krate: &str, fp: &str) -> Value {
    let prefix = format!("{package}-");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(fingerprints).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        let Ok(hash) = std::fs::read_to_string(dir.join(format!("lib-{krate}"))) else {
            continue;
        };
        if hash.trim() == fp {
            return record(&dir.join(format!("lib-{krate}.json")));
        }
        seen.push((name, hash));
    }
    panic!(
        "no build record of {package} with fingerprint {fp} in {} (seen: {seen:?})",
        fingerprints.display()
    );
}

fn features(unit: &Value) -> Vec<String> {
    // Stored as a JSON array inside a string: "[\"alloc\", \"std\"]".
    let text = unit["features"]
        .as_str()
        .expect("a build record has a \"features\" string");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("features {text:?}: {e}"))
}

/// This test's own record: `<profile>/deps/physics_features-<hash>` is
/// recorded in `<profile>/.fingerprint/metatopia-physics-<hash>/`.
fn own_record() -> (PathBuf, Value) {
    let exe = std::env::current_exe().unwrap();
    let stem = exe.file_stem().unwrap().to_string_lossy().into_owned();
    let hash = stem
        .strip_prefix("physics_features-")
        .unwrap_or_else(|| panic!("unexpected test executable name {stem:?}"));
    let fingerprints = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in <profile>/deps")
        .join(".fingerprint");
    let own = record(
        &fingerprints
            .join(format!("metatopia-physics-{hash}"))
            .join("test-integration-test-physics_features.json"),
    );
    (fingerprints, own)
}

#[test]
fn rapier_is_built_deterministic() {
    let (fingerprints, own) = own_record();
    let rapier = lib_record(
        &fingerprints,
        "rapier3d-f64",
        "rapier3d_f64",
        &dep_fingerprint(&own, "rapier3d_f64"),
    );
    let parry = lib_record(
        &fingerprints,
        "parry3d-f64",
        "parry3d_f64",
        &dep_fingerprint(&rapier, "parry3d_f64"),
    );
    let (rapier, parry) = (features(&rapier), features(&parry));
    println!("rapier3d-f64 features: {rapier:?}");
    println!("parry3d-f64 features: {parry:?}");
    for f in rapier.iter().chain(&parry) {
        assert!(
            f != "parallel" && !f.starts_with("simd"),
            "feature {f} breaks cross-platform determinism; see physics/src/lib.rs"
        );
    }
    assert!(
        rapier.iter().any(|f| f == "enhanced-determinism"),
        "{rapier:?}"
    );
    assert!(
        parry.iter().any(|f| f == "enhanced-determinism"),
        "{parry:?}"
    );
}
