//! Physics scene files: several regions as axis-aligned boxes that are
//! neighbours, bodies spawned and pushed at ticks, run headless through
//! `metatopia run` (a scenario file whose top level has a `[physics]`
//! table). Format: `docs/physics.md`, "Scene files".
//!
//! ```toml
//! [physics]
//! ticks = 200
//! gravity = "0,0,0"
//! scene = "border-storm"      # optional named scene
//! bodies = 1000               # its body count
//! seed = 11
//!
//! [[physics.region]]           # explicit regions (no `scene`)
//! id = 1
//! min = "0,0,0"
//! max = "64,64,256"
//!
//! [[physics.body]]
//! tick = 0                     # spawned in the batch of this tick (>= 1)
//! pos = "61,10,10"             # world coordinates
//! shape = "ball:0.5"           # or "box:HX,HY,HZ"
//! kind = "dynamic"             # dynamic | kinematic | fixed | seated:OX,OY,OZ
//! vel = "2,0,0"
//! parent = 3                   # a seated body's vehicle: an index into
//!                              # physics.body, spawned at an earlier tick
//!
//! [[physics.push]]
//! tick = 30
//! body = 0                     # index into physics.body
//! impulse = "0,1,0"
//! ```

use std::collections::BTreeMap;

use metatopia_physics::Cluster;
use metatopia_physics::cluster::ClusterReport;
use metatopia_physics::region::{Aabb, Region, RegionConfig};
use metatopia_physics::scene::{self, Scene};
use metatopia_sim::input::InputKind;
use metatopia_sim::physics::PhysicsEvent;
use metatopia_sim::{ElementId, Fx, NoScripts, RegionId, Vec3, hex};
use serde::Deserialize;

use crate::action::BodyText;

/// Most ticks a physics scene may run.
pub const TICKS_MAX: u64 = 10_000_000;
/// Most bodies or regions a physics scene may declare.
pub const ITEMS_MAX: usize = 100_000;

/// The file: only a `[physics]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    physics: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    ticks: u64,
    #[serde(default)]
    gravity: Option<String>,
    #[serde(default)]
    margin: Option<String>,
    #[serde(default)]
    hysteresis: Option<String>,
    #[serde(default)]
    scene: Option<String>,
    #[serde(default)]
    bodies: Option<u32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default, rename = "region")]
    regions: Vec<RegionSpec>,
    #[serde(default, rename = "body")]
    body_list: Vec<BodySpecToml>,
    #[serde(default, rename = "push")]
    pushes: Vec<PushSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionSpec {
    id: u32,
    min: String,
    max: String,
    #[serde(default)]
    bodies_max: Option<u32>,
}

/// A `[[physics.body]]`. Its body fields repeat those of the
/// `spawn_body` action (`action::Action::SpawnBody`) because serde cannot
/// `flatten` a shared struct into a type that denies unknown fields, and
/// both must deny them (a misspelt field is an error, not a default); the
/// text of the fields is read by one function, `action::body_spec`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodySpecToml {
    #[serde(default = "one")]
    tick: u64,
    pos: String,
    shape: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    vel: Option<String>,
    #[serde(default)]
    restitution: Option<String>,
    #[serde(default)]
    friction: Option<String>,
    #[serde(default)]
    density: Option<String>,
    /// The body it is part of (a seated passenger's vehicle), as an index
    /// into `physics.body`; spawned at an earlier tick.
    #[serde(default)]
    parent: Option<usize>,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushSpec {
    tick: u64,
    body: usize,
    impulse: String,
}

/// Whether `text` is a physics scene (a TOML table with a `physics` key).
pub fn is_physics_scene(text: &str) -> bool {
    text.parse::<toml::Table>()
        .is_ok_and(|t| t.contains_key("physics"))
}

fn err(field: &str, m: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{field}: {m}")
}

fn vec3(field: &str, s: &str) -> anyhow::Result<Vec3> {
    s.parse().map_err(|e| err(field, e))
}

fn fx(field: &str, s: &str) -> anyhow::Result<Fx> {
    s.parse().map_err(|e| err(field, e))
}

/// What a physics scene did.
#[derive(Debug)]
pub struct Outcome {
    /// Lines to print, the last one `state_hash=<hex>`.
    pub lines: Vec<String>,
}

/// Parses and runs a physics scene; `ticks` overrides the file's.
pub fn run(text: &str, ticks: Option<u64>) -> anyhow::Result<Outcome> {
    run_with(text, ticks, &mut |_, _, _| Ok(()))
}

/// What [`run_with`] calls after each tick: `(tick, cluster hash, cluster)`.
pub type AfterTick<'a> = dyn FnMut(u64, [u8; 32], &mut Cluster) -> anyhow::Result<()> + 'a;

/// [`run`], calling `after(tick, cluster hash, cluster)` after each tick:
/// the determinism suite checks every tick's hash there, and may replace
/// the cluster with one restored from its snapshot (heavy mode).
///
/// Long on purpose: the scene driver reads top to bottom (build, then each tick: spawns, pushes, step, tallies); its steps share many locals.
pub fn run_with(
    text: &str,
    ticks: Option<u64>,
    after: &mut AfterTick<'_>,
) -> anyhow::Result<Outcome> {
    let file: File = toml::from_str(text)
        .map_err(|e| anyhow::anyhow!("{}", crate::quote::toml_error(text, &e)))?;
    let spec = file.physics;
    let ticks = ticks.unwrap_or(spec.ticks);
    if ticks > TICKS_MAX {
        return Err(err("physics.ticks", format!("{ticks} exceeds {TICKS_MAX}")));
    }
    if spec.regions.len() > ITEMS_MAX || spec.body_list.len() > ITEMS_MAX {
        return Err(err("physics", "too many regions or bodies"));
    }
    let gravity = match &spec.gravity {
        Some(g) => Some(vec3("physics.gravity", g)?),
        None => None,
    };
    let margin = spec
        .margin
        .as_deref()
        .map(|m| fx("physics.margin", m))
        .transpose()?;
    let hysteresis = spec
        .hysteresis
        .as_deref()
        .map(|m| fx("physics.hysteresis", m))
        .transpose()?;
    let tune = |c: &mut RegionConfig| {
        if let Some(g) = gravity {
            c.space.gravity = g;
        }
        if let Some(m) = margin {
            c.margin = m;
        }
        if let Some(h) = hysteresis {
            c.hysteresis = h;
        }
    };
    let mut s = match spec.scene.as_deref() {
        Some(name) => {
            if !spec.regions.is_empty() || !spec.body_list.is_empty() {
                return Err(err(
                    "physics.scene",
                    "a named scene declares its own regions and bodies",
                ));
            }
            let n = spec.bodies.unwrap_or(1000);
            if n as usize > ITEMS_MAX {
                return Err(err("physics.bodies", format!("{n} exceeds {ITEMS_MAX}")));
            }
            let seed = spec.seed.unwrap_or(1);
            match name {
                "border-storm" => scene::border_storm(n, seed),
                "active-bodies" => scene::active_bodies(n, seed),
                other => {
                    return Err(err(
                        "physics.scene",
                        format!("unknown scene {other:?} (border-storm, active-bodies)"),
                    ));
                }
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => build(&spec, &tune)?,
    };
    // Predicted element ids: each region mints the driver's avatar first
    // (counter 1), then one id per accepted spawn, in input order.
    let mut next: BTreeMap<RegionId, u64> = s.cluster.regions().keys().map(|r| (*r, 2)).collect();
    let mut ids: Vec<Option<ElementId>> = vec![None; spec.body_list.len()];
    let mut by_tick: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, b) in spec.body_list.iter().enumerate() {
        if b.tick == 0 {
            return Err(err(
                &format!("physics.body[{i}].tick"),
                "bodies spawn from tick 1 (tick 0 joins the driver)",
            ));
        }
        by_tick.entry(b.tick).or_default().push(i);
    }
    for (i, b) in spec.body_list.iter().enumerate() {
        if let Some(p) = b.parent
            && spec.body_list.get(p).is_none_or(|v| v.tick >= b.tick)
        {
            return Err(err(
                &format!("physics.body[{i}].parent"),
                "no such body spawned at an earlier tick",
            ));
        }
    }
    for (i, p) in spec.pushes.iter().enumerate() {
        if p.body >= spec.body_list.len() {
            return Err(err(&format!("physics.push[{i}].body"), "no such body"));
        }
        if p.tick <= spec.body_list[p.body].tick {
            return Err(err(
                &format!("physics.push[{i}].tick"),
                "before the body exists",
            ));
        }
    }
    let mut handoffs = 0u64;
    let mut collisions = 0u64;
    let mut last: Option<ClusterReport> = None;
    let start = s.cluster.tick_number();
    for t in start..start.saturating_add(ticks) {
        for &i in by_tick.get(&t).map(Vec::as_slice).unwrap_or(&[]) {
            let b = &spec.body_list[i];
            let f = |name: &str| format!("physics.body[{i}].{name}");
            let pos = vec3(&f("pos"), &b.pos)?;
            let body = crate::action::body_spec(
                &BodyText {
                    shape: &b.shape,
                    kind: b.kind.as_deref(),
                    density: b.density.as_deref(),
                    friction: b.friction.as_deref(),
                    restitution: b.restitution.as_deref(),
                },
                f,
            )?;
            if !body.valid() {
                return Err(err(&f("shape"), "shape or material out of range"));
            }
            let vel = b
                .vel
                .as_deref()
                .map(|v| vec3(&f("vel"), v))
                .transpose()?
                .unwrap_or(Vec3::ZERO);
            let parent = b.parent.and_then(|p| ids[p]);
            let region = s
                .region_at(pos)
                .ok_or_else(|| err(&f("pos"), "outside every region"))?;
            if let Some(vehicle) = parent
                && !s.owners().contains(&(vehicle, region))
            {
                return Err(err(
                    &f("parent"),
                    format!("at tick {t} the parent body is not in the region at pos ({region})"),
                ));
            }
            s.spawn(parent, pos, body, vel);
            let counter = next.entry(region).or_insert(2);
            ids[i] = Some(ElementId {
                region,
                counter: *counter,
            });
            *counter += 1;
        }
        for (i, p) in spec.pushes.iter().enumerate().filter(|(_, p)| p.tick == t) {
            let impulse = vec3(&format!("physics.push[{i}].impulse"), &p.impulse)?;
            let Some(id) = ids[p.body] else { continue };
            if let Some((_, owner)) = s.owners().into_iter().find(|(b, _)| *b == id) {
                s.queue(
                    owner,
                    InputKind::Push {
                        element: id,
                        impulse,
                    },
                );
            }
        }
        let rep = s
            .step(&NoScripts)
            .map_err(|e| anyhow::anyhow!("tick {t}: {e}"))?;
        for r in rep.regions.values() {
            handoffs += r
                .events
                .iter()
                .filter(|e| matches!(e, PhysicsEvent::LeftRegion { .. }))
                .count() as u64;
            collisions += r
                .events
                .iter()
                .filter(|e| matches!(e, PhysicsEvent::Collided { .. }))
                .count() as u64;
        }
        after(t, rep.hash, &mut s.cluster)?;
        last = Some(rep);
    }
    let mut lines = Vec::new();
    for r in s.cluster.regions().values() {
        let c = r.border_counts();
        lines.push(format!(
            "region {}: tick {} bodies {} handoffs out {} in {} refused {} hash={}",
            r.id(),
            r.tick_number(),
            r.space().owned_count(),
            c.handoffs_out,
            c.handoffs_in,
            c.refused,
            hex(&r.hash())
        ));
    }
    lines.push(format!(
        "physics: {handoffs} body handoffs, {collisions} collision reports"
    ));
    let hash = last.map_or([0; 32], |r| r.hash);
    lines.push(format!("state_hash={}", hex(&hash)));
    Ok(Outcome { lines })
}

fn build(spec: &Spec, tune: &dyn Fn(&mut RegionConfig)) -> anyhow::Result<Scene> {
    if spec.regions.is_empty() {
        return Err(err(
            "physics.region",
            "at least one region (or a named scene)",
        ));
    }
    let mut boxes = Vec::new();
    for (i, r) in spec.regions.iter().enumerate() {
        let b = Aabb {
            min: vec3(&format!("physics.region[{i}].min"), &r.min)?,
            max: vec3(&format!("physics.region[{i}].max"), &r.max)?,
        };
        if !(b.min.x < b.max.x && b.min.y < b.max.y && b.min.z < b.max.z) {
            return Err(err(
                &format!("physics.region[{i}]"),
                "min must be below max on every axis",
            ));
        }
        if boxes.iter().any(|(id, _, _)| *id == RegionId(r.id)) {
            return Err(err(&format!("physics.region[{i}].id"), "repeated"));
        }
        boxes.push((RegionId(r.id), b, r.bodies_max));
    }
    let regions = boxes
        .iter()
        .map(|(id, b, max)| {
            let mut cfg = RegionConfig::new(*id, *b);
            cfg.neighbours = boxes
                .iter()
                .filter(|(o, ob, _)| o != id && b.touches(ob))
                .map(|(o, ob, _)| (*o, *ob))
                .collect();
            if let Some(m) = max {
                cfg.bodies_max = *m;
            }
            tune(&mut cfg);
            Region::new(cfg, scene::settings(), &[scene::driver()])
        })
        .collect();
    let mut s = Scene::new(Cluster::new(regions));
    s.step(&NoScripts)
        .map_err(|e| anyhow::anyhow!("tick 0: {e}"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD_ON: &str = r#"
[physics]
ticks = 60
gravity = "0,0,0"

[[physics.region]]
id = 1
min = "0,0,0"
max = "64,64,64"

[[physics.region]]
id = 2
min = "64,0,0"
max = "128,64,64"

[[physics.body]]
pos = "61,10,10"
shape = "ball:0.5"
vel = "2,0,0"

[[physics.body]]
pos = "67,10,10"
shape = "ball:0.5"
vel = "-2,0,0"

[[physics.push]]
tick = 40
body = 0
impulse = "0,1,0"
"#;

    #[test]
    fn head_on_scene_runs_and_is_deterministic() {
        assert!(is_physics_scene(HEAD_ON));
        let a = run(HEAD_ON, None).unwrap();
        let b = run(HEAD_ON, None).unwrap();
        assert_eq!(a.lines, b.lines);
        assert!(a.lines.last().unwrap().starts_with("state_hash="));
        assert!(
            a.lines
                .iter()
                .any(|l| l == "physics: 0 body handoffs, 2 collision reports"),
            "{:?}",
            a.lines
        );
    }

    #[test]
    fn bad_scenes_get_clear_errors() {
        let bad = HEAD_ON.replace("ball:0.5\"\nvel = \"2", "cone:1\"\nvel = \"2");
        let e = run(&bad, None).unwrap_err().to_string();
        assert!(e.contains("physics.body[0].shape"), "{e}");
        let outside = HEAD_ON.replace("61,10,10", "-5,10,10");
        let e = run(&outside, None).unwrap_err().to_string();
        assert!(e.contains("outside every region"), "{e}");
        let e = run("[physics]\nticks = 1\nscene = \"nope\"\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown scene"), "{e}");
    }

    #[test]
    fn a_seated_body_needs_its_vehicle_spawned_before_it_and_beside_it() {
        let seat = |parent: usize, tick: u64, pos: &str| {
            format!(
                "{HEAD_ON}\n[[physics.body]]\ntick = {tick}\npos = \"{pos}\"\nshape = \"ball:0.3\"\nkind = \"seated:0,0,1\"\nparent = {parent}\n"
            )
        };
        let ok = run(&seat(0, 2, "61,10,11"), None).unwrap();
        assert!(ok.lines.last().unwrap().starts_with("state_hash="));
        let e = run(&seat(5, 2, "61,10,11"), None).unwrap_err().to_string();
        assert!(e.contains("physics.body[2].parent"), "{e}");
        let e = run(&seat(0, 1, "61,10,11"), None).unwrap_err().to_string();
        assert!(e.contains("earlier tick"), "{e}");
        // Body 1 is in region 2; a seat spawned in region 1 cannot ride it.
        let e = run(&seat(1, 2, "61,10,11"), None).unwrap_err().to_string();
        assert!(e.contains("not in the region"), "{e}");
        let bad = seat(0, 2, "61,10,11").replace("seated:0,0,1", "seated:up");
        let e = run(&bad, None).unwrap_err().to_string();
        assert!(e.contains("physics.body[2].kind"), "{e}");
    }
}
