//! The determinism feature guard for rapier.
//!
//! `cfg(feature)` only sees this crate's own features, so a workspace
//! member that turned on `parallel` or a SIMD feature of rapier (or parry)
//! would slip past a `compile_error!`. This test asks cargo which features
//! it resolved for `rapier3d-f64` and `parry3d-f64` in this workspace and
//! fails if determinism is at risk. It runs in CI with the other tests.

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn rapier_is_built_deterministic() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--manifest-path",
            manifest,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = meta["resolve"]["nodes"].as_array().unwrap();
    let features = |name: &str| -> Vec<Vec<String>> {
        nodes
            .iter()
            .filter(|n| {
                let id = n["id"].as_str().unwrap_or("");
                id.contains(&format!("/{name}@"))
                    || id.contains(&format!("#{name}@"))
                    || id.starts_with(&format!("{name} "))
            })
            .map(|n| {
                n["features"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect()
            })
            .collect()
    };
    let rapier = features("rapier3d-f64");
    let parry = features("parry3d-f64");
    assert_eq!(
        rapier.len(),
        1,
        "exactly one rapier3d-f64 in the build: {rapier:?}"
    );
    assert_eq!(
        parry.len(),
        1,
        "exactly one parry3d-f64 in the build: {parry:?}"
    );
    for f in rapier.iter().chain(&parry).flatten() {
        assert!(
            f != "parallel" && !f.starts_with("simd"),
            "feature {f} breaks cross-platform determinism; see physics/src/lib.rs"
        );
    }
    assert!(
        rapier[0].iter().any(|f| f == "enhanced-determinism"),
        "{rapier:?}"
    );
    assert!(
        parry[0].iter().any(|f| f == "enhanced-determinism"),
        "{parry:?}"
    );
}
