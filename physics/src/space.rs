//! [`Space`]: one region's rapier world.
//!
//! Bodies are keyed by element id. A body is either owned by this region
//! (it gets commands and produces events) or a ghost mirrored from the
//! neighbour that owns it (its pose and velocity are overwritten from every
//! ghost message; it produces no events, but owned bodies collide with it).
//!
//! Everything here is in world coordinates; [`crate::Region`] converts to
//! and from region coordinates for the main sim.
//!
//! Each step, after rapier:
//! - `Moved` for every owned body whose quantized position or velocity
//!   changed,
//! - `AtRest` when an owned body falls asleep,
//! - `Collided { id, other }` when an owned body starts touching another
//!   (owned or ghost): touching sets are rebuilt from the narrow phase, so a
//!   contact is reported once when it starts, and the set travels with the
//!   body on handoff so the new owner does not report it again.
//!
//! Events come out sorted by body id, so their order is canonical.

use std::collections::{BTreeMap, BTreeSet};

use metatopia_sim::id::RegionId;
use metatopia_sim::physics::{
    self, BodyKind, BodySpec, BodyTransfer, Ghost, Motion, PhysicsEvent, Shape,
};
use metatopia_sim::snapshot::{self, DecodeError};
use metatopia_sim::{ElementId, Fx, Vec3};
use rapier3d_f64::prelude::*;
use serde::{Deserialize, Serialize};

use crate::convert;

/// First bytes of a physics world snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"MTPW";
/// First bytes of the per-tick physics digest.
pub const DIGEST_MAGIC: [u8; 4] = *b"MTPD";

/// Space parameters, the same on every replica of a region.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Gravity, m/s².
    pub gravity: Vec3,
    /// Ticks per second; the step is `1 / tick_rate_hz` seconds.
    pub tick_rate_hz: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            gravity: Vec3::new(Fx::ZERO, Fx::ZERO, Fx::from_milli(-9_810)),
            tick_rate_hz: 20,
        }
    }
}

/// What the world keeps per body beside rapier's own data.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Slot {
    handle: RigidBodyHandle,
    /// `Some(owner)` for a ghost.
    ghost: Option<RegionId>,
    spec: BodySpec,
    vehicle: Option<ElementId>,
    resting: bool,
    /// Bodies it touches, sorted by id.
    touching: Vec<ElementId>,
    /// The last `(pos, vel)` reported in a `Moved` event.
    last: Option<(Vec3, Vec3)>,
}

impl Slot {
    /// Whether this is a ghost of a neighbour's body.
    pub fn is_ghost(&self) -> bool {
        self.ghost.is_some()
    }

    /// The body's spec.
    pub fn spec(&self) -> &BodySpec {
        &self.spec
    }
}

/// One region's physics space: its rapier world, the bodies it owns and the ghosts it mirrors.
pub struct Space {
    cfg: Config,
    rapier: PhysicsWorld,
    slots: BTreeMap<ElementId, Slot>,
    forced: Vec<RigidBodyHandle>,
    /// How many slots are seated bodies (derived; skips the vehicle pass
    /// when zero).
    seated: usize,
    cache: DigestCache,
}

/// Work the per-tick digest can reuse. Not state: every field is derived
/// from the state above, and a stale field is rebuilt, so
/// [`Space::tick_digest`] always equals [`Space::digest`].
#[derive(Default)]
struct DigestCache {
    /// Hash of the static records (id, ghost owner, spec, vehicle) of
    /// every body in id order; `None` after a body is added, removed or
    /// relabelled.
    statics: Option<[u8; 32]>,
    /// The dynamic records of every body in id order, written by the last
    /// step's event collection; valid while `dynamics_ok`.
    dynamics: Vec<u8>,
    /// Whether `dynamics` matches the world (cleared by every mutation
    /// after a step).
    dynamics_ok: bool,
    /// Contact pairs scratch buffer.
    pairs: Vec<(ElementId, ElementId)>,
    /// Scratch: each rapier body's quantized motion and sleep flag, by
    /// arena index, read in arena (memory) order.
    motions: Vec<Option<(RigidBodyHandle, Motion, bool)>>,
}

impl DigestCache {
    fn structure_changed(&mut self) {
        self.statics = None;
        self.dynamics_ok = false;
    }
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Space")
            .field("cfg", &self.cfg)
            .field("bodies", &self.slots.len())
            .finish()
    }
}

fn user_data(id: ElementId) -> u128 {
    (u128::from(id.region.0) << 64) | u128::from(id.counter)
}

fn element_of(data: u128) -> ElementId {
    ElementId::new((data >> 64) as u32, data as u64)
}

fn collider(spec: &BodySpec, id: ElementId) -> Collider {
    let builder = match spec.shape {
        Shape::Ball { radius } => ColliderBuilder::ball(convert::f64(radius)),
        Shape::Cuboid { half } => ColliderBuilder::cuboid(
            convert::f64(half.x),
            convert::f64(half.y),
            convert::f64(half.z),
        ),
    };
    builder
        .density(convert::f64(spec.material.density))
        .friction(convert::f64(spec.material.friction))
        .restitution(convert::f64(spec.material.restitution))
        .sensor(matches!(spec.kind, BodyKind::Seated { .. }))
        .user_data(user_data(id))
        .build()
}

fn is_seated(spec: &BodySpec) -> bool {
    matches!(spec.kind, BodyKind::Seated { .. })
}

fn rigid_body(spec: &BodySpec, id: ElementId, m: &Motion) -> RigidBody {
    let builder = match spec.kind {
        BodyKind::Dynamic => RigidBodyBuilder::dynamic(),
        BodyKind::Fixed => RigidBodyBuilder::fixed(),
        BodyKind::Kinematic | BodyKind::Seated { .. } => {
            RigidBodyBuilder::kinematic_position_based()
        }
    };
    let mut rb = builder
        .translation(convert::vector(m.pos))
        .linvel(convert::vector(m.vel))
        .angvel(convert::vector(m.angvel))
        .user_data(user_data(id))
        .build();
    rb.set_rotation(convert::rotation(m.rot), false);
    rb
}

impl Space {
    /// An empty world.
    pub fn new(cfg: Config) -> Space {
        let mut rapier = PhysicsWorld::new();
        rapier.gravity = convert::vector(cfg.gravity);
        rapier.integration_parameters.dt = 1.0 / f64::from(cfg.tick_rate_hz.max(1));
        Space {
            cfg,
            rapier,
            slots: BTreeMap::new(),
            forced: Vec::new(),
            seated: 0,
            cache: DigestCache::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Every body (owned and ghost), by id.
    pub fn slots(&self) -> &BTreeMap<ElementId, Slot> {
        &self.slots
    }

    /// Whether this world owns `id`.
    pub fn owns(&self, id: ElementId) -> bool {
        self.slots.get(&id).is_some_and(|s| s.ghost.is_none())
    }

    /// Owned bodies, by id.
    pub fn owned(&self) -> impl Iterator<Item = ElementId> + '_ {
        self.slots
            .iter()
            .filter(|(_, s)| s.ghost.is_none())
            .map(|(id, _)| *id)
    }

    /// The number of owned bodies.
    pub fn owned_count(&self) -> u32 {
        self.owned().count() as u32
    }

    /// The quantized motion of a body.
    pub fn motion(&self, id: ElementId) -> Option<Motion> {
        let slot = self.slots.get(&id)?;
        let rb = self.rapier.bodies.get(slot.handle)?;
        Some(convert::motion(
            rb.translation(),
            *rb.rotation(),
            rb.linvel(),
            rb.angvel(),
        ))
    }

    /// The quantized position of a body.
    pub fn position(&self, id: ElementId) -> Option<Vec3> {
        let slot = self.slots.get(&id)?;
        let rb = self.rapier.bodies.get(slot.handle)?;
        Some(convert::vec3(rb.translation()))
    }

    fn insert(&mut self, id: ElementId, slot_spec: BodyTransfer, ghost: Option<RegionId>) {
        self.cache.structure_changed();
        let rb = rigid_body(&slot_spec.spec, id, &slot_spec.motion);
        let handle = self.rapier.bodies.insert(rb);
        self.rapier.colliders.insert_with_parent(
            collider(&slot_spec.spec, id),
            handle,
            &mut self.rapier.bodies,
        );
        let last = ghost
            .is_none()
            .then_some((slot_spec.motion.pos, slot_spec.motion.vel));
        self.seated += usize::from(is_seated(&slot_spec.spec));
        self.slots.insert(
            id,
            Slot {
                handle,
                ghost,
                spec: slot_spec.spec,
                vehicle: slot_spec.vehicle,
                resting: slot_spec.resting,
                touching: {
                    let mut t = slot_spec.touching;
                    t.sort();
                    t.dedup();
                    t
                },
                last,
            },
        );
    }

    fn remove(&mut self, id: ElementId) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        self.seated -= usize::from(is_seated(&slot.spec));
        self.cache.structure_changed();
        self.rapier.remove_body(slot.handle);
        Some(slot)
    }

    /// Applies one command to an owned body; commands for unknown bodies or
    /// ghosts are ignored (the main sim checked them; a ghost's owner gets
    /// its own).
    pub fn apply(&mut self, cmd: &physics::Command) {
        self.cache.dynamics_ok = false;
        if let physics::Command::Spawn {
            id,
            spec,
            pos,
            vel,
            vehicle,
        } = cmd
        {
            if self.slots.contains_key(id) {
                // A ghost of a body this region now creates cannot exist
                // (ids are minted here); an owned duplicate is ignored.
                return;
            }
            let body = BodyTransfer {
                id: *id,
                spec: *spec,
                motion: Motion {
                    pos: *pos,
                    rot: [Fx::ZERO, Fx::ZERO, Fx::ZERO, Fx::ONE],
                    vel: *vel,
                    angvel: Vec3::ZERO,
                },
                resting: false,
                vehicle: *vehicle,
                touching: Vec::new(),
            };
            self.insert(*id, body, None);
            // A fresh body is reported once so the sim sees it.
            if let Some(s) = self.slots.get_mut(id) {
                s.last = None;
            }
            return;
        }
        let id = cmd.id();
        let Some(slot) = self.slots.get(&id) else {
            return;
        };
        if slot.ghost.is_some() {
            return;
        }
        let handle = slot.handle;
        if let physics::Command::Remove { .. } = cmd {
            self.remove(id);
            return;
        }
        let Some(rb) = self.rapier.bodies.get_mut(handle) else {
            return;
        };
        match cmd {
            physics::Command::Impulse { impulse, .. } => {
                rb.apply_impulse(convert::vector(*impulse), true);
            }
            physics::Command::Force { force, .. } => {
                rb.add_force(convert::vector(*force), true);
                self.forced.push(handle);
            }
            physics::Command::SetVelocity { vel, .. } => {
                rb.set_linvel(convert::vector(*vel), true);
            }
            physics::Command::KinematicTarget { pos, .. } => {
                rb.set_next_kinematic_translation(convert::vector(*pos));
            }
            physics::Command::SetPosition { pos, .. } => {
                rb.set_translation(convert::vector(*pos), true);
            }
            physics::Command::Spawn { .. } | physics::Command::Remove { .. } => {}
        }
    }

    /// Applies `commands` in order, steps once, and returns the events of
    /// owned bodies, sorted by id.
    pub fn step(&mut self, commands: &[physics::Command]) -> Vec<PhysicsEvent> {
        for cmd in commands {
            self.apply(cmd);
        }
        self.follow_vehicles();
        self.rapier.step();
        for handle in std::mem::take(&mut self.forced) {
            if let Some(rb) = self.rapier.bodies.get_mut(handle) {
                rb.reset_forces(false);
            }
        }
        self.collect_events()
    }

    /// Seated bodies move to their vehicle's centre plus their offset.
    fn follow_vehicles(&mut self) {
        if self.seated == 0 {
            return;
        }
        self.cache.dynamics_ok = false;
        let mut targets = Vec::new();
        for slot in self.slots.values() {
            if let (BodyKind::Seated { offset }, Some(vehicle)) = (slot.spec.kind, slot.vehicle)
                && let Some(v) = self.slots.get(&vehicle)
                && let Some(vb) = self.rapier.bodies.get(v.handle)
            {
                targets.push((
                    slot.handle,
                    vb.translation() + convert::vector(offset),
                    vb.linvel(),
                ));
            }
        }
        for (handle, pos, vel) in targets {
            if let Some(rb) = self.rapier.bodies.get_mut(handle) {
                rb.set_next_kinematic_translation(pos);
                rb.set_linvel(vel, true);
            }
        }
    }

    /// Events of owned bodies after a step, and the digest's dynamic
    /// records of every body (the pose and velocity are quantized once for
    /// both).
    ///
    /// Long on purpose: one pass over the bodies builds both the events and the digest records (the pose is quantized once for both).
    fn collect_events(&mut self) -> Vec<PhysicsEvent> {
        // Active contacts as (body, other) pairs, both ways, sorted.
        let mut pairs = std::mem::take(&mut self.cache.pairs);
        pairs.clear();
        let colliders = &self.rapier.colliders;
        let id_of = |h: ColliderHandle| colliders.get(h).map(|c| element_of(c.user_data));
        for pair in self.rapier.narrow_phase.contact_pairs() {
            if !pair.has_any_active_contact() {
                continue;
            }
            let (Some(a), Some(b)) = (id_of(pair.collider1), id_of(pair.collider2)) else {
                continue;
            };
            if a != b {
                pairs.push((a, b));
                pairs.push((b, a));
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        let mut events = Vec::with_capacity(self.slots.len());
        let mut records = std::mem::take(&mut self.cache.dynamics);
        records.clear();
        records.reserve(self.slots.len() * DYNAMIC_LEN);
        // Read rapier's bodies in memory order (much cheaper than jumping
        // around in id order), then walk the slots in id order.
        let mut motions = std::mem::take(&mut self.cache.motions);
        motions.clear();
        for (handle, rb) in self.rapier.bodies.iter() {
            let index = handle.into_raw_parts().0 as usize;
            if motions.len() <= index {
                motions.resize(index + 1, None);
            }
            let m = convert::motion(rb.translation(), *rb.rotation(), rb.linvel(), rb.angvel());
            motions[index] = Some((handle, m, rb.is_sleeping()));
        }
        let mut k = 0;
        for (id, slot) in self.slots.iter_mut() {
            while k < pairs.len() && pairs[k].0 < *id {
                k += 1;
            }
            let start = k;
            while k < pairs.len() && pairs[k].0 == *id {
                k += 1;
            }
            let read = motions
                .get(slot.handle.into_raw_parts().0 as usize)
                .and_then(Option::as_ref)
                .filter(|(h, _, _)| *h == slot.handle);
            let motion = read.map(|(_, m, _)| m);
            if let (None, Some((_, m, sleeping))) = (slot.ghost, read) {
                let sleeping = *sleeping;
                let now = (m.pos, m.vel);
                if slot.last != Some(now) {
                    slot.last = Some(now);
                    events.push(PhysicsEvent::Moved {
                        id: *id,
                        pos: now.0,
                        vel: now.1,
                    });
                }
                if sleeping && !slot.resting {
                    events.push(PhysicsEvent::AtRest { id: *id });
                }
                slot.resting = sleeping;
                let new = &pairs[start..k];
                let same = new.len() == slot.touching.len()
                    && new.iter().zip(&slot.touching).all(|(p, o)| p.1 == *o);
                if !same {
                    for (_, other) in new {
                        if slot.touching.binary_search(other).is_err() {
                            events.push(PhysicsEvent::Collided {
                                id: *id,
                                other: *other,
                            });
                        }
                    }
                    slot.touching = new.iter().map(|p| p.1).collect();
                }
            }
            dynamic_record(&mut records, slot, motion);
        }
        self.cache.pairs = pairs;
        self.cache.motions = motions;
        self.cache.dynamics = records;
        self.cache.dynamics_ok = true;
        events
    }

    /// Replaces the ghosts mirrored from `owner` with `ghosts` (sorted by
    /// id). Ids this world owns are skipped; a ghost listed by a new owner
    /// is relabelled.
    pub fn set_ghosts(&mut self, owner: RegionId, ghosts: &[Ghost]) {
        let listed: BTreeSet<ElementId> = ghosts.iter().map(|g| g.id).collect();
        let stale: Vec<ElementId> = self
            .slots
            .iter()
            .filter(|(id, s)| s.ghost == Some(owner) && !listed.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.remove(id);
        }
        for g in ghosts {
            match self.slots.get_mut(&g.id) {
                Some(slot) if slot.ghost.is_none() => {}
                Some(slot) if slot.spec == g.spec => {
                    if slot.ghost != Some(owner) {
                        slot.ghost = Some(owner);
                        self.cache.statics = None;
                    }
                    self.cache.dynamics_ok = false;
                    if let Some(rb) = self.rapier.bodies.get_mut(slot.handle) {
                        rb.set_translation(convert::vector(g.motion.pos), true);
                        rb.set_rotation(convert::rotation(g.motion.rot), true);
                        rb.set_linvel(convert::vector(g.motion.vel), true);
                        rb.set_angvel(convert::vector(g.motion.angvel), true);
                    }
                }
                Some(_) => {
                    self.remove(g.id);
                    self.insert_ghost(owner, g);
                }
                None => self.insert_ghost(owner, g),
            }
        }
    }

    fn insert_ghost(&mut self, owner: RegionId, g: &Ghost) {
        let body = BodyTransfer {
            id: g.id,
            spec: g.spec,
            motion: g.motion,
            resting: false,
            vehicle: None,
            touching: Vec::new(),
        };
        self.insert(g.id, body, Some(owner));
    }

    /// Every ghost held, by owner then id, with where it is now (world
    /// coordinates): what the neighbours' last ghost lists put here.
    pub fn ghosts(&self) -> Vec<(RegionId, Ghost)> {
        let mut out: Vec<(RegionId, Ghost)> = self
            .slots
            .iter()
            .filter_map(|(id, s)| {
                let owner = s.ghost?;
                Some((
                    owner,
                    Ghost {
                        id: *id,
                        spec: s.spec,
                        motion: self.motion(*id)?,
                    },
                ))
            })
            .collect();
        out.sort_by_key(|(owner, g)| (*owner, g.id));
        out
    }

    /// The owner of a ghost, `None` if `id` is owned here or unknown.
    pub fn ghost_of(&self, id: ElementId) -> Option<RegionId> {
        self.slots.get(&id).and_then(|s| s.ghost)
    }

    /// A ghost record of an owned body, for a neighbour.
    pub fn ghost(&self, id: ElementId) -> Option<Ghost> {
        let slot = self.slots.get(&id).filter(|s| s.ghost.is_none())?;
        Some(Ghost {
            id,
            spec: slot.spec,
            motion: self.motion(id)?,
        })
    }

    /// The handoff record of an owned body.
    pub fn transfer(&self, id: ElementId) -> Option<BodyTransfer> {
        let slot = self.slots.get(&id).filter(|s| s.ghost.is_none())?;
        Some(BodyTransfer {
            id,
            spec: slot.spec,
            motion: self.motion(id)?,
            resting: slot.resting,
            vehicle: slot.vehicle,
            touching: slot.touching.clone(),
        })
    }

    /// Takes ownership of a body handed over by a neighbour, replacing any
    /// ghost of it.
    pub fn adopt(&mut self, body: &BodyTransfer) {
        self.remove(body.id);
        self.insert(body.id, body.clone(), None);
    }

    /// Lets an owned body go (its ownership moved away).
    pub fn release(&mut self, id: ElementId) -> bool {
        if self.owns(id) {
            self.remove(id);
            true
        } else {
            false
        }
    }

    /// The per-tick digest, computed from scratch: the world config, the
    /// number of bodies, the hash of every body's static record in id order
    /// (id, ghost owner, spec, vehicle; [`STATIC_LEN`] bytes, fixed layout)
    /// and every body's dynamic record in id order (quantized position,
    /// rotation, velocity and angular velocity, sleep and report flags,
    /// contacts; [`DYNAMIC_LEN`] bytes plus 12 per contact). Everything is
    /// little endian, fixed width.
    pub fn digest(&self) -> [u8; 32] {
        let statics = self.statics_hash();
        let mut records = Vec::with_capacity(self.slots.len() * DYNAMIC_LEN);
        for slot in self.slots.values() {
            let motion = self.rapier.bodies.get(slot.handle).map(|rb| {
                convert::motion(rb.translation(), *rb.rotation(), rb.linvel(), rb.angvel())
            });
            dynamic_record(&mut records, slot, motion.as_ref());
        }
        self.finish_digest(&statics, &records)
    }

    /// The same value as [`Space::digest`], reusing what the last step
    /// already quantized (and the static hash while no body was added,
    /// removed or relabelled). This is what a region tick pays.
    pub fn tick_digest(&mut self) -> [u8; 32] {
        let statics = match self.cache.statics {
            Some(h) => h,
            None => {
                let h = self.statics_hash();
                self.cache.statics = Some(h);
                h
            }
        };
        if !self.cache.dynamics_ok {
            let mut records = std::mem::take(&mut self.cache.dynamics);
            records.clear();
            for slot in self.slots.values() {
                let motion = self.rapier.bodies.get(slot.handle).map(|rb| {
                    convert::motion(rb.translation(), *rb.rotation(), rb.linvel(), rb.angvel())
                });
                dynamic_record(&mut records, slot, motion.as_ref());
            }
            self.cache.dynamics = records;
            self.cache.dynamics_ok = true;
        }
        self.finish_digest(&statics, &self.cache.dynamics)
    }

    fn statics_hash(&self) -> [u8; 32] {
        let mut buf = Vec::with_capacity(self.slots.len() * STATIC_LEN);
        for (id, slot) in &self.slots {
            buf.extend_from_slice(&static_record(*id, slot));
        }
        *blake3::hash(&buf).as_bytes()
    }

    fn finish_digest(&self, statics: &[u8; 32], records: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&DIGEST_MAGIC);
        let mut cfg = Vec::with_capacity(32);
        put(&mut cfg, &self.cfg);
        h.update(&cfg);
        h.update(&(self.slots.len() as u64).to_le_bytes());
        h.update(statics);
        h.update(records);
        *h.finalize().as_bytes()
    }

    /// The full snapshot: rapier's whole `PhysicsWorld` (bodies, colliders,
    /// islands, broad and narrow phase with warm-start data) and our slots.
    /// About 1 KB per body; hash it at checkpoints, not every tick.
    pub fn snapshot(&self) -> Vec<u8> {
        snapshot::encode(SNAPSHOT_MAGIC, &(&self.cfg, &self.rapier, &self.slots))
    }

    /// A world from [`Space::snapshot`] bytes. Continuing from it gives the
    /// same digests as never stopping.
    pub fn restore(bytes: &[u8]) -> Result<Space, DecodeError> {
        let (cfg, rapier, slots): (Config, PhysicsWorld, BTreeMap<ElementId, Slot>) =
            snapshot::decode(SNAPSHOT_MAGIC, bytes)?;
        let seated = slots.values().filter(|s| is_seated(&s.spec)).count();
        Ok(Space {
            cfg,
            rapier,
            slots,
            forced: Vec::new(),
            seated,
            cache: DigestCache::default(),
        })
    }

    /// The underlying rapier world (for benches comparing with bare rapier).
    pub fn rapier(&self) -> &PhysicsWorld {
        &self.rapier
    }
}

/// Bytes of a body's static digest record.
pub const STATIC_LEN: usize = 12 + 8 + 25 + 25 + 24 + 13;
/// Bytes of a body's dynamic digest record without its contacts.
pub const DYNAMIC_LEN: usize = 1 + 13 * 8 + 1 + 4;

/// Writes `bytes` at `*at` and advances it.
fn put_at(out: &mut [u8], at: &mut usize, bytes: &[u8]) {
    out[*at..*at + bytes.len()].copy_from_slice(bytes);
    *at += bytes.len();
}

fn put_fx(out: &mut [u8], at: &mut usize, v: Fx) {
    put_at(out, at, &v.to_bits().to_le_bytes());
}

fn put_vec3(out: &mut [u8], at: &mut usize, v: Vec3) {
    put_fx(out, at, v.x);
    put_fx(out, at, v.y);
    put_fx(out, at, v.z);
}

/// A body's static record: id, ghost owner (`u64::MAX` if owned), kind
/// (tag and seat offset), shape (tag and radius or half extents), material,
/// vehicle (tag and id). Unused fields are zero, so every record has the
/// same length and one encoding.
fn static_record(id: ElementId, slot: &Slot) -> [u8; STATIC_LEN] {
    let mut r = [0u8; STATIC_LEN];
    let at = &mut 0;
    put_at(&mut r, at, &id.to_bytes());
    let ghost = slot.ghost.map_or(u64::MAX, |o| u64::from(o.0));
    put_at(&mut r, at, &ghost.to_le_bytes());
    let (kind, offset) = match slot.spec.kind {
        BodyKind::Dynamic => (0, Vec3::ZERO),
        BodyKind::Kinematic => (1, Vec3::ZERO),
        BodyKind::Fixed => (2, Vec3::ZERO),
        BodyKind::Seated { offset } => (3, offset),
    };
    put_at(&mut r, at, &[kind]);
    put_vec3(&mut r, at, offset);
    let (shape, size) = match slot.spec.shape {
        Shape::Ball { radius } => (0, Vec3::new(radius, Fx::ZERO, Fx::ZERO)),
        Shape::Cuboid { half } => (1, half),
    };
    put_at(&mut r, at, &[shape]);
    put_vec3(&mut r, at, size);
    let m = slot.spec.material;
    put_vec3(&mut r, at, Vec3::new(m.density, m.friction, m.restitution));
    match slot.vehicle {
        Some(v) => {
            put_at(&mut r, at, &[1]);
            put_at(&mut r, at, &v.to_bytes());
        }
        None => put_at(&mut r, at, &[0; 13]),
    }
    debug_assert_eq!(*at, STATIC_LEN);
    r
}

/// Appends a body's dynamic record: motion (tag, then position, rotation,
/// velocity, angular velocity; zeros if rapier has no body), flags (bit 0
/// asleep, bit 1 last report matches the motion, bit 2 reported at all),
/// number of contacts, and the contacts' ids.
#[inline]
fn dynamic_record(buf: &mut Vec<u8>, slot: &Slot, motion: Option<&Motion>) {
    let mut r = [0u8; DYNAMIC_LEN];
    let at = &mut 0;
    match motion {
        Some(m) => {
            put_at(&mut r, at, &[1]);
            put_vec3(&mut r, at, m.pos);
            for q in m.rot {
                put_fx(&mut r, at, q);
            }
            put_vec3(&mut r, at, m.vel);
            put_vec3(&mut r, at, m.angvel);
        }
        None => *at += 1 + 13 * 8,
    }
    let reported = slot.last == motion.map(|m| (m.pos, m.vel));
    let flags =
        u8::from(slot.resting) | (u8::from(reported) << 1) | (u8::from(slot.last.is_some()) << 2);
    put_at(&mut r, at, &[flags]);
    put_at(&mut r, at, &(slot.touching.len() as u32).to_le_bytes());
    debug_assert_eq!(*at, DYNAMIC_LEN);
    buf.extend_from_slice(&r);
    for t in &slot.touching {
        buf.extend_from_slice(&t.to_bytes());
    }
}

fn put<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    postcard::to_io(value, &mut *buf).expect("postcard encoding into a Vec cannot fail");
}
