//! The determinism suite's driver: the named scenarios in
//! `tests/determinism/`, run normally or in a variant (heavy mode, restarts
//! at given ticks), as a trace of `(tick, state hash)` after every tick.
//! Used by `tests/tests/determinism.rs` and the `determinism_heavy` bench
//! example.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use metatopia_node::physics_scene;
use metatopia_node::scenario::{self, Prepared};
use metatopia_physics::Cluster;
use metatopia_sim::RegionId;
use metatopia_sim::snapshot::{decode_state, encode_state};
use metatopia_sim::state::State;

/// The suite's folder.
pub fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("determinism")
}

/// The golden hashes file.
pub fn golden_path() -> PathBuf {
    suite_dir().join("golden.toml")
}

/// One hash after each tick: `(ticks executed, state hash)`.
pub type Trace = Vec<(u64, [u8; 32])>;

/// How a run is driven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Start at genesis, step to the end.
    Normal,
    /// After every tick: snapshot every region, drop the sims, the driver
    /// and the script host (its cached Lua states), restore from the bytes
    /// and continue.
    Heavy,
    /// The same, only after the ticks listed (ticks executed).
    Restart(Vec<u64>),
}

impl Mode {
    fn reload_after(&self, executed: u64) -> bool {
        match self {
            Mode::Normal => false,
            Mode::Heavy => true,
            Mode::Restart(at) => at.contains(&executed),
        }
    }
}

/// A scenario of the suite.
#[derive(Debug)]
pub struct Case {
    /// File name without `.toml`.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// What it is.
    pub kind: Kind,
}

/// A scenario file or a physics scene.
#[derive(Debug)]
pub enum Kind {
    /// A scenario (docs/scenario.md), run by `scenario::Run`.
    Scenario(Box<Prepared>),
    /// A physics scene (docs/physics.md), run by `physics_scene::run_with`.
    Physics(String),
}

impl Case {
    /// Ticks the case runs.
    pub fn ticks(&self) -> u64 {
        match &self.kind {
            Kind::Scenario(p) => p.ticks,
            Kind::Physics(text) => text
                .parse::<toml::Table>()
                .ok()
                .and_then(|t| t.get("physics")?.get("ticks")?.as_integer())
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(0),
        }
    }
}

/// Every `*.toml` of the suite but `golden.toml`, sorted by name.
pub fn cases() -> Result<Vec<Case>> {
    let dir = suite_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && *p != golden_path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| anyhow!("{}: bad file name", path.display()))?
                .to_string();
            let text = std::fs::read_to_string(&path)?;
            let kind = if physics_scene::is_physics_scene(&text) {
                Kind::Physics(text)
            } else {
                let p = scenario::parse_at(&text, path.parent())
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                Kind::Scenario(Box::new(p))
            };
            Ok(Case { name, path, kind })
        })
        .collect()
}

/// The states of every region after each tick (scenarios only), to name
/// what differs when two runs disagree.
pub type States = Vec<BTreeMap<RegionId, State>>;

/// Runs `case` in `mode` on the current rayon pool; with `keep`, also
/// returns the states after each tick (scenarios only).
pub fn run(case: &Case, mode: &Mode, keep: bool) -> Result<(Trace, States)> {
    match &case.kind {
        Kind::Scenario(p) => run_scenario(p, mode, keep),
        Kind::Physics(text) => Ok((run_physics(text, mode)?, Vec::new())),
    }
}

fn run_scenario(p: &Prepared, mode: &Mode, keep: bool) -> Result<(Trace, States)> {
    let mut host = metatopia_node::scripts::scenario_host(&p.script_sources)?;
    let mut run = p.start(None)?;
    let mut trace = Vec::new();
    let mut states = Vec::new();
    while run.step(&*host, &mut |_| {})? {
        let executed = run.tick();
        let hash = run.state_hash();
        trace.push((executed, hash));
        if keep {
            states.push(
                run.sims()
                    .iter()
                    .map(|(id, sim)| (*id, sim.state().clone()))
                    .collect(),
            );
        }
        if mode.reload_after(executed) {
            let bytes = run.snapshots();
            // Drop everything: the run (sims and driver) and the host.
            drop(run);
            drop(host);
            host = metatopia_node::scripts::scenario_host(&p.script_sources)?;
            let states = bytes
                .iter()
                .map(|(id, b)| Ok((*id, decode_state(b)?)))
                .collect::<Result<BTreeMap<_, _>>>()?;
            run = p.resume(None, states)?;
            if run.state_hash() != hash {
                bail!("tick {executed}: the state restored from its snapshot hashes differently");
            }
            for (id, sim) in run.sims() {
                if encode_state(sim.state()) != bytes[id] {
                    bail!("tick {executed}: region {id} re-encodes differently after restore");
                }
            }
        }
    }
    Ok((trace, states))
}

fn run_physics(text: &str, mode: &Mode) -> Result<Trace> {
    let mut trace = Vec::new();
    physics_scene::run_with(text, None, &mut |t, hash, cluster| {
        let executed = t + 1;
        trace.push((executed, hash));
        if mode.reload_after(executed) {
            let bytes = cluster.snapshot();
            let restored = Cluster::restore(&bytes).map_err(|e| anyhow!("tick {executed}: {e}"))?;
            for (id, r) in cluster.regions() {
                if restored.region(*id).map(|x| x.hash()) != Some(r.hash()) {
                    bail!(
                        "tick {executed}: region {id} restored from its snapshot hashes differently"
                    );
                }
            }
            *cluster = restored;
        }
        Ok(())
    })?;
    Ok(trace)
}
