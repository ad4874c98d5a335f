//! Scenario files: a world and its inputs in TOML, run headless.
//!
//! The format is documented in `docs/scenario.md`. Parsing checks every
//! reference before anything runs, and each error names the field that is
//! wrong (`input[3].element: no object with key "crate"`).

use std::collections::BTreeMap;

use serde::Deserialize;

use metatopia_sim::input::{Event, Input};
use metatopia_sim::state::{ElementKind, Settings, State};
use metatopia_sim::{Batch, ElementId, PlayerId, RegionId, ScriptHost, Sim, Vec3};

use crate::action::{Action, Resolve};

/// Largest scenario file accepted, bytes.
pub const FILE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most ticks a scenario may ask for.
pub const TICKS_MAX: u64 = 100_000_000;
/// Latest sim time a scenario may reach, ms since the Unix epoch: the end
/// of the year 9999. Later times (`u64::MAX`) would saturate silently.
pub const TIME_MS_MAX: u64 = 253_402_300_799_999;
/// Longest tick a scenario may ask for, ms: a year.
pub const TICK_MS_MAX: u64 = 366 * 86_400_000;

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Ticks to run; default: one past the last input's tick.
    #[serde(default)]
    pub ticks: Option<u64>,
    /// Sim time per tick, ms (default 50: 20 Hz).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Sim time of tick 0, ms.
    #[serde(default)]
    pub start_ms: u64,
    /// Regions (at least one).
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionSpec>,
    /// Players, named for reference.
    #[serde(default, rename = "player")]
    pub players: Vec<PlayerSpec>,
    /// Objects in the genesis state.
    #[serde(default, rename = "object")]
    pub objects: Vec<ObjectSpec>,
    /// Inputs at ticks.
    #[serde(default, rename = "input")]
    pub inputs: Vec<InputSpec>,
    /// Clock jumps: from `tick` on, time is `time_ms + (t - tick) * tick_ms`.
    #[serde(default, rename = "clock")]
    pub clock: Vec<ClockSpec>,
    /// Lua scripts, named for `attach` inputs (`script = "@key"`).
    #[serde(default, rename = "script")]
    pub scripts: Vec<ScriptSpec>,
}

/// A script a scenario can attach: from a file (relative to the scenario
/// file) or inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptSpec {
    /// Reference name, used as `@key` in `attach` inputs.
    pub key: String,
    /// Path of the Lua file, relative to the scenario file.
    #[serde(default)]
    pub path: Option<String>,
    /// The source itself, instead of `path`.
    #[serde(default)]
    pub source: Option<String>,
}

fn default_tick_ms() -> u64 {
    50
}

/// A region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Region id.
    pub id: u32,
    /// Player names who start as permanent admins.
    #[serde(default)]
    pub founders: Vec<String>,
    /// Settings; absent ones keep their defaults.
    #[serde(default)]
    pub settings: SettingsSpec,
}

/// Region settings in a scenario.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SettingsSpec {
    pub name: Option<String>,
    pub tick_rate_hz: Option<u32>,
    pub temp_admin_absence_days: Option<u32>,
    pub temp_admin_recent_days: Option<u32>,
    pub size: Option<String>,
    pub spawn: Option<String>,
    pub elements_max: Option<u32>,
    pub depth_max: Option<u32>,
    pub players_online_max: Option<u32>,
    pub chat_history_max: Option<u32>,
    pub text_bytes_max: Option<u32>,
    pub name_bytes_max: Option<u32>,
    pub inputs_per_player_per_tick_max: Option<u32>,
    pub script_instructions_max: Option<u32>,
    pub script_memory_bytes_max: Option<u32>,
    pub script_licences: Option<Vec<String>>,
    /// Fastest walk, m/s (decimal text).
    pub walk_speed_max: Option<String>,
}

/// A player.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayerSpec {
    /// Name used in this file.
    pub name: String,
    /// Key (64 hex digits); default: derived from the name.
    #[serde(default)]
    pub key: Option<String>,
}

/// An object present at genesis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectSpec {
    /// Reference name, used as `@key` in inputs.
    #[serde(default)]
    pub key: Option<String>,
    /// Region; default: the first region.
    #[serde(default)]
    pub region: Option<u32>,
    /// Display name.
    pub name: String,
    /// Position `"x,y,z"`.
    pub pos: String,
    /// Owning player's name.
    #[serde(default)]
    pub owner: Option<String>,
    /// Parent `@key`; default: the region root.
    #[serde(default)]
    pub parent: Option<String>,
}

/// An input at a tick.
#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    /// The tick.
    pub tick: u64,
    /// The acting player's name (or key).
    pub by: String,
    /// Region; default: the first region.
    #[serde(default)]
    pub region: Option<u32>,
    /// Sequence number; default: the player's next.
    #[serde(default)]
    pub seq: Option<u64>,
    /// What to do (`do = "..."` and its fields).
    #[serde(flatten)]
    pub action: Action,
}

/// A clock jump.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSpec {
    /// From this tick on...
    pub tick: u64,
    /// ...time is this (plus tick_ms per tick after it).
    pub time_ms: u64,
}

/// What is wrong with a scenario.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// Not valid TOML, or a field of the wrong type or name.
    #[error("{0}")]
    Syntax(String),
    /// A field's value is wrong.
    #[error("{field}: {message}")]
    Field {
        /// Where, e.g. `input[3].element`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn field(field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    use crate::quote::{MESSAGE_CHARS_MAX, cap};
    let (field, message) = (field.into(), message.into());
    ScenarioError::Field {
        field: cap(&field, MESSAGE_CHARS_MAX).into_owned(),
        message: cap(&message, MESSAGE_CHARS_MAX).into_owned(),
    }
}

/// One input waiting for its tick: (index in the file, player, explicit
/// sequence number, action).
pub type PendingInput = (usize, PlayerId, Option<u64>, Action);

/// A scenario checked and ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Genesis states by region.
    pub genesis: BTreeMap<RegionId, State>,
    /// Inputs by (tick, region), in file order, with sequence numbers.
    pub inputs: BTreeMap<(u64, RegionId), Vec<PendingInput>>,
    /// Object keys.
    pub keys: BTreeMap<String, ElementId>,
    /// Player names.
    pub names: BTreeMap<String, PlayerId>,
    /// Script sources named in the file, for the script host.
    pub script_sources: Vec<String>,
    scripts: BTreeMap<String, [u8; 32]>,
    /// Ticks to run.
    pub ticks: u64,
    tick_ms: u64,
    start_ms: u64,
    clock: Vec<ClockSpec>,
}

/// Parses and checks a scenario.
pub fn parse(text: &str) -> Result<Prepared, ScenarioError> {
    parse_at(text, None)
}

/// Parses and checks a scenario whose script paths are relative to `dir`.
pub fn parse_at(text: &str, dir: Option<&std::path::Path>) -> Result<Prepared, ScenarioError> {
    if text.len() > FILE_BYTES_MAX {
        return Err(field(
            "file",
            format!("{} bytes, limit {FILE_BYTES_MAX}", text.len()),
        ));
    }
    let sc: Scenario = toml::from_str(text)
        .map_err(|e| ScenarioError::Syntax(crate::quote::toml_error(text, &e)))?;
    prepare(sc, dir)
}

/// Script hashes by scenario key.
type ScriptKeys = BTreeMap<String, [u8; 32]>;

/// Reads and licence-checks the `[[script]]` sources.
fn load_scripts(
    specs: &[ScriptSpec],
    dir: Option<&std::path::Path>,
    licences: &[String],
) -> Result<(Vec<String>, ScriptKeys), ScenarioError> {
    let mut texts = Vec::new();
    let mut keys = BTreeMap::new();
    for (i, sp) in specs.iter().enumerate() {
        let text = match (&sp.path, &sp.source) {
            (Some(p), None) => {
                let path = dir.map(|d| d.join(p)).unwrap_or_else(|| p.into());
                let bytes = std::fs::read(&path).map_err(|e| {
                    field(
                        format!("script[{i}].path"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                String::from_utf8(bytes)
                    .map_err(|_| field(format!("script[{i}].path"), "not valid UTF-8"))?
            }
            (None, Some(s)) => s.clone(),
            _ => {
                return Err(field(
                    format!("script[{i}]"),
                    "give exactly one of `path` and `source`",
                ));
            }
        };
        let hash = check_script(&text, licences).map_err(|e| field(format!("script[{i}]"), e))?;
        if keys.insert(sp.key.clone(), hash).is_some() {
            return Err(field(
                format!("script[{i}].key"),
                format!("{:?} is used twice", sp.key),
            ));
        }
        texts.push(text);
    }
    Ok((texts, keys))
}

/// Checks a script's size and licence; its hash.
#[cfg(feature = "scripts")]
fn check_script(text: &str, licences: &[String]) -> Result<[u8; 32], String> {
    if text.len() > metatopia_scripts::host::SOURCE_BYTES_MAX {
        return Err("source too large".into());
    }
    metatopia_scripts::licence::check(text, licences).map_err(|e| e.to_string())?;
    Ok(metatopia_scripts::hash_source(text))
}

/// Without Lua (the `scripts` feature) a scenario cannot have scripts.
#[cfg(not(feature = "scripts"))]
fn check_script(_text: &str, _licences: &[String]) -> Result<[u8; 32], String> {
    Err("this build has no Lua (metatopia-scenario without its `scripts` feature)".into())
}

/// Long on purpose: it checks a scenario file field by field, each check a few lines with its own error.
fn prepare(sc: Scenario, dir: Option<&std::path::Path>) -> Result<Prepared, ScenarioError> {
    if sc.regions.is_empty() {
        return Err(field("region", "a scenario needs at least one [[region]]"));
    }
    let mut names = BTreeMap::new();
    for (i, p) in sc.players.iter().enumerate() {
        let id = match &p.key {
            Some(k) => k
                .parse()
                .map_err(|e| field(format!("player[{i}].key"), format!("{e}")))?,
            None => PlayerId::from_name(&p.name),
        };
        if names.insert(p.name.clone(), id).is_some() {
            return Err(field(
                format!("player[{i}].name"),
                format!("{:?} is defined twice", p.name),
            ));
        }
    }
    let player = |f: String, name: &str| -> Result<PlayerId, ScenarioError> {
        names
            .get(name)
            .copied()
            .or_else(|| name.parse().ok())
            .ok_or_else(|| field(f, format!("no [[player]] named {name:?}")))
    };
    let mut genesis = BTreeMap::new();
    for (i, r) in sc.regions.iter().enumerate() {
        let settings = settings(&r.settings, &format!("region[{i}].settings"))?;
        let founders = r
            .founders
            .iter()
            .enumerate()
            .map(|(j, n)| player(format!("region[{i}].founders[{j}]"), n))
            .collect::<Result<Vec<_>, _>>()?;
        if genesis
            .insert(
                RegionId(r.id),
                State::new(RegionId(r.id), settings, &founders),
            )
            .is_some()
        {
            return Err(field(
                format!("region[{i}].id"),
                format!("region {} is defined twice", r.id),
            ));
        }
    }
    let first = RegionId(sc.regions[0].id);
    let region_ids: Vec<RegionId> = genesis.keys().copied().collect();
    let region_of = |f: String, r: Option<u32>| -> Result<RegionId, ScenarioError> {
        let id = r.map(RegionId).unwrap_or(first);
        if region_ids.contains(&id) {
            Ok(id)
        } else {
            Err(field(f, format!("no [[region]] with id {}", id.0)))
        }
    };
    let mut keys = BTreeMap::new();
    for (i, o) in sc.objects.iter().enumerate() {
        let region = region_of(format!("object[{i}].region"), o.region)?;
        let pos: Vec3 = o
            .pos
            .parse()
            .map_err(|e| field(format!("object[{i}].pos"), format!("{e}")))?;
        let owner = o
            .owner
            .as_deref()
            .map(|n| player(format!("object[{i}].owner"), n))
            .transpose()?;
        let state = genesis.get_mut(&region).expect("region checked above");
        let (parent, kind) = match &o.parent {
            None => (state.root(), ElementKind::Object),
            Some(p) => {
                let key = p.strip_prefix('@').unwrap_or(p);
                let id = keys.get(key).copied().ok_or_else(|| {
                    field(
                        format!("object[{i}].parent"),
                        format!("no earlier [[object]] with key {key:?}"),
                    )
                })?;
                (id, ElementKind::Part)
            }
        };
        let id = state
            .add_child(parent, kind, owner, &o.name, pos)
            .map_err(|e| field(format!("object[{i}]"), e.to_string()))?;
        if let Some(k) = &o.key
            && keys.insert(k.clone(), id).is_some()
        {
            return Err(field(
                format!("object[{i}].key"),
                format!("{k:?} is used twice"),
            ));
        }
    }
    let licences = genesis
        .get(&first)
        .map(|s| s.settings.script_licences.clone())
        .unwrap_or_default();
    let (script_sources, scripts) = load_scripts(&sc.scripts, dir, &licences)?;
    let mut inputs: BTreeMap<(u64, RegionId), Vec<_>> = BTreeMap::new();
    let mut last_tick = 0;
    for (i, inp) in sc.inputs.iter().enumerate() {
        let region = region_of(format!("input[{i}].region"), inp.region)?;
        let who = player(format!("input[{i}].by"), &inp.by)?;
        if inp.tick >= TICKS_MAX {
            return Err(field(
                format!("input[{i}].tick"),
                format!("must be below {TICKS_MAX}"),
            ));
        }
        // Resolve references now, so errors surface before anything runs
        // ("me" can only be resolved while running).
        let check = Resolver {
            keys: &keys,
            names: &names,
            scripts: &scripts,
            avatar: Some(ElementId::new(region.0, 0)),
        };
        inp.action
            .to_input(&check)
            .map_err(|e| field(format!("input[{i}].{}", e.field), e.message))?;
        last_tick = last_tick.max(inp.tick + 1);
        inputs
            .entry((inp.tick, region))
            .or_default()
            .push((i, who, inp.seq, inp.action.clone()));
    }
    let ticks = sc.ticks.unwrap_or(last_tick);
    if ticks > TICKS_MAX {
        return Err(field("ticks", format!("must be at most {TICKS_MAX}")));
    }
    if sc.tick_ms == 0 {
        return Err(field("tick_ms", "must be at least 1"));
    }
    if sc.tick_ms > TICK_MS_MAX {
        return Err(field(
            "tick_ms",
            format!("{} ms, limit {TICK_MS_MAX} (a year)", sc.tick_ms),
        ));
    }
    if sc.start_ms > TIME_MS_MAX {
        return Err(field(
            "start_ms",
            format!("{} ms, limit {TIME_MS_MAX} (the end of 9999)", sc.start_ms),
        ));
    }
    for (i, c) in sc.clock.iter().enumerate() {
        if c.time_ms > TIME_MS_MAX {
            return Err(field(
                format!("clock[{i}].time_ms"),
                format!("{} ms, limit {TIME_MS_MAX} (the end of 9999)", c.time_ms),
            ));
        }
    }
    let mut clock = sc.clock.clone();
    clock.sort_by_key(|c| c.tick);
    let prepared = Prepared {
        genesis,
        inputs,
        keys,
        names,
        script_sources,
        scripts,
        ticks,
        tick_ms: sc.tick_ms,
        start_ms: sc.start_ms,
        clock,
    };
    prepared.check_ticks(ticks)?;
    Ok(prepared)
}

fn settings(s: &SettingsSpec, at: &str) -> Result<Settings, ScenarioError> {
    let mut out = Settings::default();
    let vec = |f: &str, v: &str| -> Result<Vec3, ScenarioError> {
        v.parse()
            .map_err(|e| field(format!("{at}.{f}"), format!("{e}")))
    };
    if let Some(v) = &s.name {
        out.name = v.clone();
    }
    if let Some(v) = s.tick_rate_hz {
        if !(1..=1000).contains(&v) {
            return Err(field(format!("{at}.tick_rate_hz"), "must be in 1..=1000"));
        }
        out.tick_rate_hz = v;
    }
    if let Some(v) = &s.size {
        out.size = vec("size", v)?;
    }
    if let Some(v) = &s.spawn {
        out.spawn = vec("spawn", v)?;
    }
    macro_rules! copy {
        ($($f:ident),*) => { $( if let Some(v) = s.$f { out.$f = v; } )* };
    }
    copy!(
        temp_admin_absence_days,
        temp_admin_recent_days,
        elements_max,
        depth_max,
        players_online_max,
        chat_history_max,
        text_bytes_max,
        name_bytes_max,
        inputs_per_player_per_tick_max,
        script_instructions_max,
        script_memory_bytes_max
    );
    if let Some(v) = &s.script_licences {
        out.script_licences = v.clone();
    }
    if let Some(v) = &s.walk_speed_max {
        out.walk_speed_max = v
            .parse()
            .map_err(|e| field(format!("{at}.walk_speed_max"), format!("{e}")))?;
    }
    Ok(out)
}

struct Resolver<'a> {
    keys: &'a BTreeMap<String, ElementId>,
    names: &'a BTreeMap<String, PlayerId>,
    scripts: &'a BTreeMap<String, [u8; 32]>,
    avatar: Option<ElementId>,
}

impl Resolve for Resolver<'_> {
    fn element_key(&self, key: &str) -> Option<ElementId> {
        self.keys.get(key).copied()
    }

    fn player_name(&self, name: &str) -> Option<PlayerId> {
        self.names.get(name).copied()
    }

    fn my_avatar(&self) -> Option<ElementId> {
        self.avatar
    }

    fn script_key(&self, key: &str) -> Option<[u8; 32]> {
        self.scripts.get(key).copied()
    }
}

/// Something a scenario's author wants to see while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Notice<'a> {
    /// An input was refused; nothing it asked for happened.
    Rejected {
        /// The tick.
        tick: u64,
        /// The region.
        region: RegionId,
        /// Its index among the file's `[[input]]`s.
        input: usize,
        /// The sender.
        player: PlayerId,
        /// The sender's name in the file, if it has one.
        name: Option<&'a str>,
        /// The action as written.
        action: &'a Action,
        /// Why.
        reason: &'a metatopia_sim::Rejection,
    },
    /// A script faulted; nothing it did that tick applies.
    ScriptFault {
        /// The tick.
        tick: u64,
        /// The region.
        region: RegionId,
        /// The script's element.
        script: ElementId,
        /// Its owner.
        owner: Option<PlayerId>,
        /// The sandbox's message.
        error: &'a str,
        /// Whether the script is suspended from now on.
        suspended: bool,
    },
}

/// An input a run sent: its player and sequence number.
type Sent = (PlayerId, u64);

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Ticks run.
    pub ticks: u64,
    /// Final sims by region.
    pub sims: BTreeMap<RegionId, Sim>,
    /// Inputs accepted, rejected, dropped as duplicates (all regions).
    pub accepted: u64,
    /// Rejected inputs.
    pub rejected: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Script faults.
    pub faults: u64,
}

impl Outcome {
    /// The scenario's state hash: the region's hash when there is one
    /// region, else blake3 over `(region id, hash)` in id order.
    pub fn state_hash(&self) -> [u8; 32] {
        regions_hash(&self.sims)
    }
}

impl Prepared {
    /// Sim time at tick `t`.
    pub fn time_at(&self, t: u64) -> u64 {
        match self.clock.iter().rev().find(|c| c.tick <= t) {
            Some(c) => c
                .time_ms
                .saturating_add((t - c.tick).saturating_mul(self.tick_ms)),
            None => self.start_ms.saturating_add(t.saturating_mul(self.tick_ms)),
        }
    }

    /// Refuses a run of `ticks` ticks that asks for too many, or whose
    /// clock would pass [`TIME_MS_MAX`].
    fn check_ticks(&self, ticks: u64) -> Result<(), ScenarioError> {
        if ticks > TICKS_MAX {
            return Err(field("ticks", format!("must be at most {TICKS_MAX}")));
        }
        if ticks == 0 {
            return Ok(());
        }
        let last = ticks - 1;
        // Time runs linearly from the start and from each clock jump (those
        // at one tick: the last in the file wins) until the next jump; check
        // where each stretch ends.
        let starts: Vec<(u64, u64, String)> =
            std::iter::once((0, self.start_ms, "start_ms".into()))
                .chain(self.clock.iter().map(|c| {
                    (
                        c.tick,
                        c.time_ms,
                        format!("the [[clock]] at tick {}", c.tick),
                    )
                }))
                .filter(|(tick, _, _)| *tick <= last)
                .collect();
        for (k, (tick, ms, from)) in starts.iter().enumerate() {
            let Some(end_tick) = starts[k + 1..]
                .iter()
                .map(|(t, _, _)| *t)
                .find(|t| t > tick)
                .map(|t| t - 1)
                .or(Some(last))
                .filter(|_| !starts[k + 1..].iter().any(|(t, _, _)| t == tick))
            else {
                continue;
            };
            let end = (end_tick - tick)
                .checked_mul(self.tick_ms)
                .and_then(|d| d.checked_add(*ms));
            if end.is_none_or(|end| end > TIME_MS_MAX) {
                return Err(field(
                    "tick_ms",
                    format!(
                        "{} ms per tick from {from} at {ms} ms passes {TIME_MS_MAX} ms (the end of 9999) by tick {end_tick}",
                        self.tick_ms
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Runs `ticks` ticks (default: the scenario's).
    pub fn run(&self, ticks: Option<u64>, host: &dyn ScriptHost) -> Result<Outcome, ScenarioError> {
        self.run_with(ticks, host, &mut |_| {})
    }

    /// Runs `ticks` ticks (default: the scenario's), telling `notice` about
    /// every rejected input and script fault as it happens.
    pub fn run_with(
        &self,
        ticks: Option<u64>,
        host: &dyn ScriptHost,
        notice: &mut dyn FnMut(Notice<'_>),
    ) -> Result<Outcome, ScenarioError> {
        let mut run = self.start(ticks)?;
        while run.step(host, notice)? {}
        Ok(run.finish())
    }

    /// A run of `ticks` ticks (default: the scenario's) from genesis, to be
    /// stepped one tick at a time ([`Run::step`]).
    pub fn start(&self, ticks: Option<u64>) -> Result<Run<'_>, ScenarioError> {
        let sims = self
            .genesis
            .iter()
            .map(|(id, s)| (*id, Sim::new(s.clone())))
            .collect();
        self.resume_sims(ticks, sims)
    }

    /// A run of `ticks` ticks (default: the scenario's) that continues from
    /// `states` (one per region, all at the same tick, e.g. decoded from
    /// snapshots of an earlier run of this scenario): a restart. Nothing
    /// of the earlier run is needed but the states; the driver's own
    /// bookkeeping (sequence numbers, the clock) follows from the file.
    /// The tallies of the [`Outcome`] count only the ticks this run steps.
    pub fn resume(
        &self,
        ticks: Option<u64>,
        states: BTreeMap<RegionId, State>,
    ) -> Result<Run<'_>, ScenarioError> {
        if !states.keys().eq(self.genesis.keys()) {
            return Err(field(
                "snapshot",
                "the states are not one per region of the scenario",
            ));
        }
        let mut tick = None;
        for (id, s) in &states {
            if s.region != *id {
                return Err(field(
                    "snapshot",
                    format!("the state for region {id} is region {}'s", s.region),
                ));
            }
            if tick.is_some_and(|t| t != s.tick) {
                return Err(field(
                    "snapshot",
                    "the regions' states are at different ticks",
                ));
            }
            tick = Some(s.tick);
        }
        let sims = states
            .into_iter()
            .map(|(id, s)| (id, Sim::new(s)))
            .collect();
        self.resume_sims(ticks, sims)
    }

    fn resume_sims(
        &self,
        ticks: Option<u64>,
        sims: BTreeMap<RegionId, Sim>,
    ) -> Result<Run<'_>, ScenarioError> {
        let ticks = ticks.unwrap_or(self.ticks);
        self.check_ticks(ticks)?;
        let next = sims.values().next().map_or(0, Sim::tick);
        // The driver's bookkeeping depends on the file alone: replay it for
        // the ticks already executed.
        let mut seqs: BTreeMap<(RegionId, PlayerId), u64> = BTreeMap::new();
        for ((_, region), list) in self.inputs.range(..(next, RegionId(0))) {
            for (_, who, seq, _) in list {
                let n = seqs.entry((*region, *who)).or_insert(0);
                *n = (*n).max(seq.unwrap_or(*n + 1));
            }
        }
        // Time is the running maximum of `time_at`, which rises within each
        // stretch between clock jumps: the maximum is at a stretch's end.
        let time = std::iter::once(next)
            .chain(self.clock.iter().map(|c| c.tick).filter(|t| *t < next))
            .filter(|t| *t > 0)
            .map(|t| self.time_at(t - 1))
            .max()
            .unwrap_or(0);
        Ok(Run {
            prepared: self,
            name_of: self.names.iter().map(|(n, id)| (*id, n.as_str())).collect(),
            sims,
            seqs,
            time,
            next,
            out: Outcome {
                ticks,
                sims: BTreeMap::new(),
                accepted: 0,
                rejected: 0,
                duplicates: 0,
                faults: 0,
            },
        })
    }
}

/// A scenario run in progress: the sims and the driver's bookkeeping.
/// [`Prepared::run_with`] is `start` and `step` until done; a test steps
/// it itself to look at (or snapshot and restart from) every tick.
#[derive(Debug)]
pub struct Run<'p> {
    prepared: &'p Prepared,
    name_of: BTreeMap<PlayerId, &'p str>,
    sims: BTreeMap<RegionId, Sim>,
    /// The last sequence number sent, by (region, player).
    seqs: BTreeMap<(RegionId, PlayerId), u64>,
    /// Sim time of the last tick: clock jumps never go back.
    time: u64,
    /// The next tick to run.
    next: u64,
    /// Tallies; `sims` is filled by [`Run::finish`].
    out: Outcome,
}

impl Run<'_> {
    /// The next tick to run (ticks executed so far).
    pub fn tick(&self) -> u64 {
        self.next
    }

    /// Whether every tick asked for has run.
    pub fn done(&self) -> bool {
        self.next >= self.out.ticks
    }

    /// The sims by region.
    pub fn sims(&self) -> &BTreeMap<RegionId, Sim> {
        &self.sims
    }

    /// The scenario's state hash now (see [`Outcome::state_hash`]).
    pub fn state_hash(&self) -> [u8; 32] {
        regions_hash(&self.sims)
    }

    /// The snapshot bytes of every region's state now
    /// (`metatopia_sim::snapshot::encode_state`).
    pub fn snapshots(&self) -> BTreeMap<RegionId, Vec<u8>> {
        self.sims
            .iter()
            .map(|(id, sim)| (*id, metatopia_sim::snapshot::encode_state(sim.state())))
            .collect()
    }

    /// The outcome: tallies and the final sims.
    pub fn finish(mut self) -> Outcome {
        self.out.sims = self.sims;
        self.out
    }

    /// Runs the next tick; `false` (and nothing run) once done.
    ///
    /// Long on purpose: the scenario tick: inputs due, the step, then notices and tallies, all over shared locals.
    pub fn step(
        &mut self,
        host: &dyn ScriptHost,
        notice: &mut dyn FnMut(Notice<'_>),
    ) -> Result<bool, ScenarioError> {
        if self.done() {
            return Ok(false);
        }
        let t = self.next;
        let p = self.prepared;
        let out = &mut self.out;
        // Clock jumps never go back: time is the running maximum.
        self.time = p.time_at(t).max(self.time);
        for (region, sim) in self.sims.iter_mut() {
            let mut inputs = Vec::new();
            // (player, seq) -> (index in the file, action), to name
            // rejected inputs.
            let mut sent: Vec<(Sent, (usize, &Action))> = Vec::new();
            if let Some(list) = p.inputs.get(&(t, *region)) {
                for (i, who, seq, action) in list {
                    let avatar = sim.state().players.get(who).and_then(|p| p.avatar);
                    let resolver = Resolver {
                        keys: &p.keys,
                        names: &p.names,
                        scripts: &p.scripts,
                        avatar,
                    };
                    let kind = action
                        .to_input(&resolver)
                        .map_err(|e| field(format!("input[{i}].{}", e.field), e.message))?;
                    let next = self.seqs.entry((*region, *who)).or_insert(0);
                    let seq = seq.unwrap_or(*next + 1);
                    *next = (*next).max(seq);
                    sent.push(((*who, seq), (*i, action)));
                    inputs.push(Input {
                        player: *who,
                        seq,
                        kind,
                    });
                }
            }
            let report = sim
                .step(
                    &Batch {
                        tick: t,
                        time_ms: self.time,
                        inputs,
                    },
                    host,
                )
                .map_err(|e| field("clock", e.to_string()))?;
            out.accepted += u64::from(report.accepted);
            out.rejected += u64::from(report.rejected);
            out.duplicates += u64::from(report.duplicates);
            for e in &report.events {
                match e {
                    Event::Rejected {
                        player,
                        seq,
                        reason,
                    } => {
                        // Duplicates share a (player, seq): the first
                        // with that pair is the one the sim refused.
                        if let Some((_, (input, action))) =
                            sent.iter().find(|(k, _)| *k == (*player, *seq))
                        {
                            notice(Notice::Rejected {
                                tick: t,
                                region: *region,
                                input: *input,
                                player: *player,
                                name: self.name_of.get(player).copied(),
                                action,
                                reason,
                            });
                        }
                    }
                    Event::ScriptFault {
                        script,
                        owner,
                        error,
                        suspended,
                    } => {
                        out.faults += 1;
                        notice(Notice::ScriptFault {
                            tick: t,
                            region: *region,
                            script: *script,
                            owner: *owner,
                            error,
                            suspended: *suspended,
                        });
                    }
                    _ => {}
                }
            }
        }
        self.next = t + 1;
        Ok(true)
    }
}

/// The state hash of several regions: the region's hash when there is one,
/// else blake3 over `(region id, hash)` in id order.
pub fn regions_hash(sims: &BTreeMap<RegionId, Sim>) -> [u8; 32] {
    if sims.len() == 1
        && let Some(sim) = sims.values().next()
    {
        return sim.hash();
    }
    let mut h = blake3::Hasher::new();
    h.update(b"metatopia scenario regions\0");
    for (id, sim) in sims {
        h.update(&id.0.to_le_bytes());
        h.update(&sim.hash());
    }
    *h.finalize().as_bytes()
}
