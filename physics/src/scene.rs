//! Scene drivers: one player (the "physics" founder, an admin) joined in
//! every region of a [`Cluster`], spawning and pushing bodies through
//! ordinary inputs, as a scenario file or a script would.
//!
//! Named scenes used by tests, benches and the CLI live here too, so their
//! numbers come from one definition.

use std::collections::BTreeMap;

use metatopia_sim::input::{Input, InputKind};
use metatopia_sim::physics::{BodyKind, BodySpec, Material, Shape};
use metatopia_sim::state::Settings;
use metatopia_sim::step::StepError;
use metatopia_sim::{ElementId, Fx, PlayerId, RegionId, ScriptHost, Vec3};

use crate::cluster::{Cluster, ClusterReport};
use crate::region::RegionConfig;

/// The player that drives scenes.
pub fn driver() -> PlayerId {
    PlayerId::from_name("physics scene driver")
}

/// Settings for scene regions: generous input limits for the driver.
pub fn settings() -> Settings {
    Settings {
        inputs_per_player_per_tick_max: 100_000,
        ..Settings::default()
    }
}

/// A unit ball of the default material.
pub fn ball(radius_milli: i64) -> BodySpec {
    BodySpec {
        kind: BodyKind::Dynamic,
        shape: Shape::Ball {
            radius: Fx::from_milli(radius_milli),
        },
        material: Material::default(),
    }
}

/// A cluster with the driver joined everywhere, and queued inputs.
#[derive(Debug)]
pub struct Scene {
    /// The regions.
    pub cluster: Cluster,
    queued: BTreeMap<RegionId, Vec<Input>>,
    seq: u64,
}

impl Scene {
    /// A scene over `cluster`; the driver's joins are queued for the first
    /// tick.
    pub fn new(cluster: Cluster) -> Scene {
        let mut scene = Scene {
            cluster,
            queued: BTreeMap::new(),
            seq: 0,
        };
        let ids: Vec<RegionId> = scene.cluster.regions().keys().copied().collect();
        for id in ids {
            scene.queue(
                id,
                InputKind::Join {
                    name: "driver".into(),
                },
            );
        }
        scene
    }

    /// A `nx` × `ny` grid of `size`-metre regions with the driver as
    /// founder.
    pub fn grid(nx: u32, ny: u32, size: i32, tune: impl Fn(&mut RegionConfig)) -> Scene {
        Scene::new(Cluster::grid(
            nx,
            ny,
            size,
            256,
            &settings(),
            &[driver()],
            tune,
        ))
    }

    /// The same scene with nothing queued (after [`Scene::new`] on regions
    /// the driver has already joined, e.g. restored from snapshots).
    pub fn without_queue(mut scene: Scene) -> Scene {
        scene.queued.clear();
        scene
    }

    /// Queues an input for the next tick.
    pub fn queue(&mut self, region: RegionId, kind: InputKind) {
        self.seq += 1;
        self.queued.entry(region).or_default().push(Input {
            player: driver(),
            seq: self.seq,
            kind,
        });
    }

    /// The region whose box contains the world position `pos`.
    pub fn region_at(&self, pos: Vec3) -> Option<RegionId> {
        self.cluster
            .regions()
            .values()
            .find(|r| r.config().bounds.contains(pos))
            .map(|r| r.id())
    }

    /// Queues a body at world position `pos` in the region containing it.
    /// Returns the region, or `None` if no region contains `pos`.
    pub fn spawn(
        &mut self,
        parent: Option<ElementId>,
        pos: Vec3,
        body: BodySpec,
        vel: Vec3,
    ) -> Option<RegionId> {
        let region = self.region_at(pos)?;
        let origin = self.cluster.region(region)?.config().bounds.min;
        self.queue(
            region,
            InputKind::SpawnBody {
                parent,
                name: "body".into(),
                pos: pos.saturating_sub(origin),
                body,
                vel,
            },
        );
        Some(region)
    }

    /// Runs one tick with the queued inputs.
    pub fn step(&mut self, host: &dyn ScriptHost) -> Result<ClusterReport, StepError> {
        let inputs = std::mem::take(&mut self.queued);
        self.cluster.tick(&inputs, host)
    }

    /// Owned bodies of every region: `(body, owner)`, in id order; a body
    /// owned twice appears twice.
    pub fn owners(&self) -> Vec<(ElementId, RegionId)> {
        let mut out: Vec<(ElementId, RegionId)> = self
            .cluster
            .regions()
            .values()
            .flat_map(|r| r.space().owned().map(move |id| (id, r.id())))
            .collect();
        out.sort();
        out
    }
}

/// A small deterministic generator (splitmix64) for scene layouts.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi` milli-units, as fixed point.
    pub fn milli(&mut self, lo: i64, hi: i64) -> Fx {
        let span = (hi - lo).max(1) as u64;
        Fx::from_milli(lo + (self.next_u64() % span) as i64)
    }
}

/// A fixed box (wall) of the given half extents.
pub fn wall(half: Vec3) -> BodySpec {
    BodySpec {
        kind: BodyKind::Fixed,
        shape: Shape::Cuboid { half },
        material: bouncy(),
    }
}

/// Frictionless, perfectly elastic: bodies keep moving.
pub fn bouncy() -> Material {
    Material {
        density: Fx::ONE,
        friction: Fx::ZERO,
        restitution: Fx::ONE,
    }
}

fn v(x: i64, y: i64, z: i64) -> Vec3 {
    Vec3::new(Fx::from_milli(x), Fx::from_milli(y), Fx::from_milli(z))
}

/// The `active-bodies` scene: one 64 m region, zero gravity, a closed box
/// of six walls (0..40 m) holding `n` elastic balls (radius 0.4 m) on a
/// lattice with random velocities of up to 4 m/s per axis: every body
/// stays awake and collides. The first two ticks (join, spawn) are run.
pub fn active_bodies(n: u32, seed: u64) -> Result<Scene, StepError> {
    let mut scene = Scene::grid(1, 1, 64, |c| {
        c.space.gravity = Vec3::ZERO;
    });
    scene.step(&metatopia_sim::NoScripts)?;
    let walls = [
        (v(20_000, 20_000, -500), v(21_000, 21_000, 500)),
        (v(20_000, 20_000, 40_500), v(21_000, 21_000, 500)),
        (v(-500, 20_000, 20_000), v(500, 21_000, 21_000)),
        (v(40_500, 20_000, 20_000), v(500, 21_000, 21_000)),
        (v(20_000, -500, 20_000), v(21_000, 500, 21_000)),
        (v(20_000, 40_500, 20_000), v(21_000, 500, 21_000)),
    ];
    // Walls reach slightly outside the region box; spawn them from inside.
    for (pos, half) in walls {
        let inside = Vec3::new(
            pos.x.max(Fx::ZERO),
            pos.y.max(Fx::ZERO),
            pos.z.max(Fx::ZERO),
        );
        scene.queue(
            RegionId(1),
            metatopia_sim::input::InputKind::SpawnBody {
                parent: None,
                name: "wall".into(),
                pos: inside,
                body: wall(half),
                vel: Vec3::ZERO,
            },
        );
    }
    let mut rng = Rng(seed);
    let side = (n as f64).cbrt().ceil() as u32;
    let step_mm = (38_000 / i64::from(side.max(1))).max(900);
    let mut count = 0;
    'outer: for i in 0..side {
        for j in 0..side {
            for k in 0..side {
                if count == n {
                    break 'outer;
                }
                let pos = v(
                    1_500 + i64::from(i) * step_mm,
                    1_500 + i64::from(j) * step_mm,
                    1_500 + i64::from(k) * step_mm,
                );
                let vel = Vec3::new(
                    rng.milli(-4_000, 4_000),
                    rng.milli(-4_000, 4_000),
                    rng.milli(-4_000, 4_000),
                );
                let mut spec = ball(400);
                spec.material = bouncy();
                scene.spawn(None, pos, spec, vel);
                count += 1;
            }
        }
    }
    scene.step(&metatopia_sim::NoScripts)?;
    Ok(scene)
}

/// The `border-storm` scene: two 64 m regions side by side (border at
/// x = 64), zero gravity, two walls at x = 52 and x = 76, and `n` elastic
/// balls in separate lanes (1.5 m apart in y and z) flying along x at 8 m/s
/// from random starting points: every ball crosses the border about every
/// 1.5 s, back and forth, forever. The first two ticks are run.
pub fn border_storm(n: u32, seed: u64) -> Result<Scene, StepError> {
    storm(n, seed, true)
}

/// The border-storm scene in one 128 m region (no border): the baseline
/// for the cost the border adds.
pub fn border_storm_baseline(n: u32, seed: u64) -> Result<Scene, StepError> {
    storm(n, seed, false)
}

fn storm(n: u32, seed: u64, split: bool) -> Result<Scene, StepError> {
    let lanes = (n as f64).sqrt().ceil() as i64;
    let extent = 2_000 + lanes * 1_500;
    let zero_g = |c: &mut RegionConfig| {
        c.space.gravity = Vec3::ZERO;
    };
    let mut scene = if split {
        Scene::grid(2, 1, 64, zero_g)
    } else {
        Scene::grid(1, 1, 128, zero_g)
    };
    scene.step(&metatopia_sim::NoScripts)?;
    let half = v(500, extent / 2 + 1_000, extent / 2 + 1_000);
    scene.spawn(
        None,
        v(51_500, extent / 2, extent / 2),
        wall(half),
        Vec3::ZERO,
    );
    scene.spawn(
        None,
        v(76_500, extent / 2, extent / 2),
        wall(half),
        Vec3::ZERO,
    );
    let mut rng = Rng(seed);
    let mut count = 0;
    'outer: for j in 0..lanes {
        for k in 0..lanes {
            if count == n {
                break 'outer;
            }
            let x = rng.milli(53_000, 75_000);
            let dir = if rng.next_u64().is_multiple_of(2) {
                8_000
            } else {
                -8_000
            };
            let pos = Vec3::new(
                x,
                Fx::from_milli(2_000 + j * 1_500),
                Fx::from_milli(2_000 + k * 1_500),
            );
            let mut spec = ball(250);
            spec.material = bouncy();
            scene.spawn(None, pos, spec, v(dir, 0, 0));
            count += 1;
        }
    }
    scene.step(&metatopia_sim::NoScripts)?;
    Ok(scene)
}
