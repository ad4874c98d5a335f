//! The state hash after every tick of a scenario file or a physics scene:
//! what `metatopia-trace` prints, so that two builds (native and
//! wasm32-wasip1) can be compared tick by tick. In heavy mode every tick
//! also goes through a snapshot: encode, drop, decode, continue (as the
//! determinism suite's heavy mode does), so a wasm32 build also decodes
//! what it encoded.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail};
use metatopia_physics::Cluster;
use metatopia_sim::NoScripts;
use metatopia_sim::snapshot::decode_state;

use crate::{physics_scene, scenario};

/// `(ticks executed, state hash)` after each tick.
pub type Trace = Vec<(u64, [u8; 32])>;

/// Whether a scenario file has `[[script]]`s, which need a script host
/// (Lua); [`run`] has none.
pub fn has_scripts(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("script"))
}

/// Runs a scenario file or a physics scene (by its text) to its end,
/// without scripts: a scenario with `[[script]]`s fails. With `heavy`,
/// after every tick the state is snapshotted, dropped and restored, and
/// the restored state must hash the same.
pub fn run(text: &str, dir: Option<&std::path::Path>, heavy: bool) -> anyhow::Result<Trace> {
    let mut trace = Vec::new();
    if physics_scene::is_physics_scene(text) {
        physics_scene::run_with(text, None, &mut |t, hash, cluster| {
            trace.push((t + 1, hash));
            if heavy {
                let restored = Cluster::restore(&cluster.snapshot())
                    .map_err(|e| anyhow!("tick {}: {e}", t + 1))?;
                for (id, r) in cluster.regions() {
                    if restored.region(*id).map(|x| x.hash()) != Some(r.hash()) {
                        bail!("tick {}: region {id} restores to another hash", t + 1);
                    }
                }
                *cluster = restored;
            }
            Ok(())
        })?;
        return Ok(trace);
    }
    let prepared = scenario::parse_at(text, dir)?;
    if !prepared.script_sources.is_empty() {
        bail!("the scenario has scripts; this runner has no script host");
    }
    let mut run = prepared.start(None)?;
    while run.step(&NoScripts, &mut |_| {})? {
        let (tick, hash) = (run.tick(), run.state_hash());
        trace.push((tick, hash));
        if heavy {
            let bytes = run.snapshots();
            drop(run);
            let states = bytes
                .iter()
                .map(|(id, b)| Ok((*id, decode_state(b)?)))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
            run = prepared.resume(None, states)?;
            if run.state_hash() != hash {
                bail!("tick {tick}: the state restored from its snapshot hashes differently");
            }
        }
    }
    Ok(trace)
}
