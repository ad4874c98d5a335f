//! The state hash after every tick of a scenario file or a physics scene:
//! what `metatopia-trace` prints, so that two builds (native and
//! wasm32-wasip1) can be compared tick by tick.

use metatopia_sim::NoScripts;

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
/// without scripts: a scenario with `[[script]]`s fails.
pub fn run(text: &str, dir: Option<&std::path::Path>) -> anyhow::Result<Trace> {
    let mut trace = Vec::new();
    if physics_scene::is_physics_scene(text) {
        physics_scene::run_with(text, None, &mut |t, hash, _| {
            trace.push((t + 1, hash));
            Ok(())
        })?;
        return Ok(trace);
    }
    let prepared = scenario::parse_at(text, dir)?;
    if !prepared.script_sources.is_empty() {
        anyhow::bail!("the scenario has scripts; this runner has no script host");
    }
    let mut run = prepared.start(None)?;
    while run.step(&NoScripts, &mut |_| {})? {
        trace.push((run.tick(), run.state_hash()));
    }
    Ok(trace)
}
