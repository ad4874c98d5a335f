//! [`Region`]: one full region tick, main sim and physics sim together,
//! and the border protocol with neighbouring regions.
//!
//! Order of a tick `t` (every replica does exactly this):
//! 1. Border envelopes sent by neighbours at the end of `t - 1` are checked
//!    (addressed here, from a neighbour, for this tick, valid) and applied in
//!    canonical order: by sender, then aborts, refusals, acceptances, offers, finals,
//!    forwarded influences, ghosts (the influences of all senders after all
//!    switches). Bad envelopes are refused with a reason and change nothing.
//! 2. The main sim steps with the batch and its physics inbox: departures
//!    and arrivals decided in 1, and the events of the physics step of
//!    `t - 1`.
//! 3. The physics space steps with the commands of 1 (pushed-back bodies,
//!    forwarded influences) followed by the main sim's commands; commands
//!    for a body in an outgoing handoff are numbered and held for the
//!    receiver instead.
//! 4. Borders: a group root whose centre is more than `hysteresis` inside a
//!    neighbour's box is offered to it (switch at `t + 2`); a body outside
//!    every box is pushed back inside; groups offered at `t - 1` send their
//!    final data; owned bodies within `margin` of a neighbour's box are
//!    sent to it as ghosts.
//! 5. Chat lines and script messages (`BorderMessage::Remote`, ADR 0016):
//!    the items the sim handed out are queued for the neighbours they
//!    concern and sent, numbered, with our acknowledgement of theirs
//!    (step 1 took theirs: only the next number expected from each
//!    neighbour goes to the sim, so each is applied once).
//! 6. The region hash is `blake3(sim hash || physics digest || border
//!    state || pending events [|| links, once not empty])`.
//!
//! Handoff of a group G from Y to Z (G World Engine): Y sends `Offer` at the
//! end of `t` (switch tick `t + 2`); Z accepts or refuses by capacity at
//! `t + 1`; at the end of `t + 1` Y sends `Final` (the subtree, scripts and
//! their state, bodies, timers, queued script events, and the influences
//! that arrived since the offer, numbered from 1). At `t + 2` Y releases G if
//! Z accepted, Z adopts it if it accepted and got the final data: ownership
//! switches at one agreed tick, so at the end of every tick G has exactly one
//! owner. If Z refused, Y keeps G, applies the held influences itself and
//! pushes G back inside its box. A linked group (a vehicle and its seated
//! bodies) is one subtree, counted whole against capacity: it crosses as one
//! or not at all.
//!
//! The `Accept` and the `Final` cross, so each side decides the switch
//! alone. Y releases G at `t + 2` unless Z refused (on an `Accept`, and
//! also with no answer at all: Z may have adopted it), keeping a copy; Z
//! adopts it only if it accepted and got the `Final`, and says which in a
//! `Verdict` at the end of `t + 2`. On "not adopted" Y takes G back from
//! its copy. Y keeps the copy, and asks again every tick (`Ask`), until a
//! verdict comes, so a lost message never loses G nor gives it two
//! owners; while the verdict is missing G has no owner (kept, not
//! simulated). See docs/physics.md.
//!
//! After the switch Y remembers where G's bodies went for
//! `forward_ticks`: its sim still accepts pushes and velocities for them
//! (`PhysicsInbox::forwarded`), and Y sends the commands to Z as numbered
//! `Influences`, which Z applies at its next tick (or passes on if the body
//! moved on).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use metatopia_sim::input::Batch;
use metatopia_sim::physics::{
    self, Arrival, BodyTransfer, BorderMessage, Envelope, NeighbourBox, PhysicsEvent, PhysicsInbox,
    Refusal, Transfer, is_influence,
};
use metatopia_sim::remote::{Outbound, Remote};
use metatopia_sim::snapshot::{self, DecodeError};
use metatopia_sim::state::ElementKind;
use metatopia_sim::state::{Settings, State};
use metatopia_sim::step::{Crossing, StepError, TickReport};
use metatopia_sim::{ElementId, Fx, PlayerId, RegionId, ScriptHost, Sim, Vec3};
use serde::{Deserialize, Serialize};

use crate::space::{self, Space};

/// First bytes of a region snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"MTPR";

/// An axis-aligned box in world coordinates: `min <= p < max`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Aabb {
    /// Lowest corner.
    pub min: Vec3,
    /// Highest corner (exclusive).
    pub max: Vec3,
}

impl Aabb {
    /// Whether `p` is inside.
    pub fn contains(&self, p: Vec3) -> bool {
        p.x >= self.min.x
            && p.y >= self.min.y
            && p.z >= self.min.z
            && p.x < self.max.x
            && p.y < self.max.y
            && p.z < self.max.z
    }

    /// How far `p` is outside, along the axis where it is farthest
    /// (Chebyshev distance); zero inside.
    pub fn outside_by(&self, p: Vec3) -> Fx {
        let axis = |v: Fx, lo: Fx, hi: Fx| {
            if v < lo {
                lo.saturating_sub(v)
            } else if v > hi {
                v.saturating_sub(hi)
            } else {
                Fx::ZERO
            }
        };
        axis(p.x, self.min.x, self.max.x)
            .max(axis(p.y, self.min.y, self.max.y))
            .max(axis(p.z, self.min.z, self.max.z))
    }

    /// Its size.
    pub fn size(&self) -> Vec3 {
        self.max.saturating_sub(self.min)
    }

    /// Whether the two boxes touch or overlap (share a face, edge or corner).
    pub fn touches(&self, o: &Aabb) -> bool {
        self.min.x <= o.max.x
            && o.min.x <= self.max.x
            && self.min.y <= o.max.y
            && o.min.y <= self.max.y
            && self.min.z <= o.max.z
            && o.min.z <= self.max.z
    }
}

/// A region's physics configuration; the same on every replica.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RegionConfig {
    /// The region.
    pub id: RegionId,
    /// Its box, world coordinates.
    pub bounds: Aabb,
    /// Neighbours it exchanges ghosts and handoffs with, by id.
    pub neighbours: Vec<(RegionId, Aabb)>,
    /// Owned bodies whose centre is within this distance of a neighbour's
    /// box are ghosted to it, metres.
    pub margin: Fx,
    /// A body is offered to a neighbour once its centre is this far inside
    /// the neighbour's box, metres (hysteresis against ping-pong).
    pub hysteresis: Fx,
    /// Most bodies the region owns; offers beyond it are refused.
    pub bodies_max: u32,
    /// For how many ticks after a body's ownership switched away its
    /// influences (pushes, velocities) are still accepted here and
    /// forwarded to the new owner.
    pub forward_ticks: u64,
    /// Gravity and tick rate.
    pub space: space::Config,
}

impl RegionConfig {
    /// A region with default margin (2 m), hysteresis (0.5 m), capacity
    /// (10,000 bodies), forwarding window (200 ticks) and space config, and
    /// no neighbours.
    pub fn new(id: RegionId, bounds: Aabb) -> RegionConfig {
        RegionConfig {
            id,
            bounds,
            neighbours: Vec::new(),
            margin: Fx::from_int(2),
            hysteresis: Fx::from_milli(500),
            bodies_max: 10_000,
            forward_ticks: 200,
            space: space::Config::default(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
struct Outgoing {
    to: RegionId,
    switch_tick: u64,
    influences: Vec<(u32, physics::Command)>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct Incoming {
    from: RegionId,
    switch_tick: u64,
    bodies: u32,
}

/// A body handed away: influences for it go to `to` until tick `until`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct Forward {
    to: RegionId,
    until: u64,
    /// Its element's owner (for the sim's permission check).
    owner: Option<PlayerId>,
}

/// A group released at its switch tick (on an `Accept`, or with no answer
/// by then), kept until the target's verdict says whether it adopted it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct Released {
    to: RegionId,
    /// The handoff's switch tick (when it was released).
    tick: u64,
    /// The subtree in our coordinates, its bodies and the held influences.
    transfer: Transfer,
    bodies: Vec<BodyTransfer>,
    influences: Vec<physics::Command>,
}

/// Handoff state and counters. Part of the region hash.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
struct Border {
    outgoing: BTreeMap<ElementId, Outgoing>,
    incoming: BTreeMap<ElementId, Incoming>,
    /// Bodies handed away recently, by id.
    forwards: BTreeMap<ElementId, Forward>,
    /// Groups released (in our coordinates), kept until the target's
    /// verdict, by root.
    released: BTreeMap<ElementId, Released>,
    /// Our verdicts on handoffs offered to us, by (root, switch tick):
    /// (source, adopted), kept `forward_ticks` after the switch tick to
    /// answer the source's `Ask`.
    verdicts: BTreeMap<(ElementId, u64), (RegionId, bool)>,
    /// Handoffs that did not complete after an accept: our negative
    /// verdicts on accepted offers, and groups taken back on one.
    aborted: u64,
    /// Groups given away, taken in, and offers refused to us.
    handoffs_out: u64,
    handoffs_in: u64,
    refused: u64,
    /// Influences forwarded (also the last sequence number used), applied
    /// here after forwarding, and dropped (the body was gone everywhere we
    /// know of).
    influences_forwarded: u64,
    influences_applied: u64,
    influences_dropped: u64,
}

/// Most items waiting for a neighbour's acknowledgement, per neighbour;
/// more are dropped and counted ([`RemoteCounts::dropped`]).
pub const REMOTE_QUEUE_MAX: usize = 1024;
/// An item not acknowledged this many ticks after it was sent is sent
/// again (an acknowledgement takes two ticks on a link that is on time).
pub const REMOTE_RESEND_TICKS: u64 = 2;

/// An item for a neighbour, waiting for its acknowledgement.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
struct Queued {
    seq: u64,
    /// The tick it was last sent at, if it was.
    sent: Option<u64>,
    /// World coordinates.
    item: Remote,
}

/// Our stream of items to one neighbour.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
struct OutLink {
    /// The number of the next item.
    next: u64,
    /// Items not yet acknowledged, ascending numbers.
    queue: VecDeque<Queued>,
}

/// Counters of the chat lines and script messages between regions.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct RemoteCounts {
    /// Items queued for neighbours (a chat line once per neighbour in range).
    pub queued: u64,
    /// Items sent again for want of an acknowledgement.
    pub resent: u64,
    /// Items not queued: the neighbour's queue was full
    /// ([`REMOTE_QUEUE_MAX`]), or the item would break the wire limits.
    pub dropped: u64,
    /// Messages addressed to a region that is not a neighbour.
    pub unroutable: u64,
    /// Items from neighbours applied by the sim.
    pub delivered: u64,
    /// Items from neighbours the sim refused (an address that does not
    /// resolve here, text over this region's limit).
    pub refused: u64,
    /// Items from neighbours received again (already taken).
    pub duplicates: u64,
    /// Items from neighbours received ahead of one missing (not taken;
    /// they come again).
    pub early: u64,
}

/// The streams of chat lines and script messages with neighbours. Part of
/// the region hash and snapshot only once it is not empty, so regions that
/// never sent or got one keep the hashes and snapshots they had.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
struct Links {
    /// Per neighbour: our items it has not acknowledged.
    out: BTreeMap<RegionId, OutLink>,
    /// Per neighbour: the number of the next item we take from it.
    next_in: BTreeMap<RegionId, u64>,
    counts: RemoteCounts,
}

/// Counters of the border protocol.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BorderCounts {
    /// Groups handed to neighbours.
    pub handoffs_out: u64,
    /// Groups taken from neighbours.
    pub handoffs_in: u64,
    /// Our offers that neighbours refused.
    pub refused: u64,
    /// Offers waiting for their switch tick.
    pub pending: u64,
    /// Influences forwarded to a body's new owner.
    pub influences_forwarded: u64,
    /// Forwarded influences applied here.
    pub influences_applied: u64,
    /// Forwarded influences for bodies no longer here nor forwardable.
    pub influences_dropped: u64,
    /// Negative verdicts this region gave on offers it had accepted (no
    /// `Final` by the switch tick) plus groups it took back on a negative
    /// verdict.
    pub aborted: u64,
    /// Groups released and kept here until the target's verdict comes.
    pub kept: u64,
    /// Chat lines and script messages with neighbours.
    pub remote: RemoteCounts,
    /// Of those, items queued for neighbours and not yet acknowledged.
    pub remote_unacked: u64,
}

/// What one region tick did.
#[derive(Debug, Clone)]
pub struct RegionReport {
    /// The tick executed.
    pub tick: u64,
    /// The region hash after it.
    pub hash: [u8; 32],
    /// The main sim's report.
    pub sim: TickReport,
    /// Physics events of owned bodies this tick (region coordinates),
    /// including `LeftRegion` for groups handed away.
    pub events: Vec<PhysicsEvent>,
    /// Border envelopes for neighbours, to apply at the next tick.
    pub outbox: Vec<Envelope>,
    /// Envelopes refused, with the reason.
    pub refused: Vec<(RegionId, String)>,
    /// Offers made this tick (group roots).
    pub offers: Vec<ElementId>,
}

/// One region: its main sim, its physics space and its border state.
#[derive(Debug)]
pub struct Region {
    cfg: RegionConfig,
    sim: Sim,
    space: Space,
    border: Border,
    links: Links,
    /// This tick's physics events, for the main sim's next tick.
    pending: Vec<PhysicsEvent>,
    hash: [u8; 32],
}

fn rank(m: &BorderMessage) -> u8 {
    match m {
        BorderMessage::Verdict { .. } => 0,
        BorderMessage::Refuse { .. } => 1,
        BorderMessage::Accept { .. } => 2,
        BorderMessage::Offer { .. } => 3,
        BorderMessage::Final { .. } => 4,
        BorderMessage::Influences { .. } => 5,
        BorderMessage::Ghosts { .. } => 6,
        BorderMessage::Ask { .. } => 7,
        BorderMessage::Remote { .. } => 8,
    }
}

/// `cmd` with its positions shifted by `by`.
fn shift(cmd: &physics::Command, by: Vec3) -> physics::Command {
    let mut c = cmd.clone();
    match &mut c {
        physics::Command::Spawn { pos, .. }
        | physics::Command::KinematicTarget { pos, .. }
        | physics::Command::SetPosition { pos, .. } => *pos = pos.saturating_add(by),
        _ => {}
    }
    c
}

/// What step 1 of a tick gathers for the steps after it.
struct Received<'a> {
    now: u64,
    /// Commands for this tick's physics step, before the sim's own.
    pre: Vec<physics::Command>,
    /// The sim's physics inbox: departures, arrivals, last tick's events.
    sim: PhysicsInbox,
    /// Physics events of this tick for the report.
    events: Vec<PhysicsEvent>,
    outbox: Vec<Envelope>,
    /// Influences for bodies handed away, by new owner, in issue order.
    forward: BTreeMap<RegionId, Vec<physics::Command>>,
    /// Forwarded influences received, applied after every switch.
    late: Vec<&'a physics::Command>,
    /// Neighbours whose items we received this tick (acknowledged in this
    /// tick's outbox).
    acks: BTreeSet<RegionId>,
}

impl Received<'_> {
    fn new(now: u64, pending: Vec<PhysicsEvent>) -> Self {
        Received {
            now,
            pre: Vec::new(),
            sim: PhysicsInbox {
                events: pending,
                ..PhysicsInbox::default()
            },
            events: Vec::new(),
            outbox: Vec::new(),
            forward: BTreeMap::new(),
            late: Vec::new(),
            acks: BTreeSet::new(),
        }
    }
}

/// The physics step's events with positions relative to the region's
/// origin (the sim's frame).
fn to_region_frame(events: Vec<PhysicsEvent>, origin: Vec3) -> Vec<PhysicsEvent> {
    events
        .into_iter()
        .map(|e| match e {
            PhysicsEvent::Moved { id, pos, vel } => PhysicsEvent::Moved {
                id,
                pos: pos.saturating_sub(origin),
                vel,
            },
            other => other,
        })
        .collect()
}

impl Region {
    /// A new region with an empty space. `settings.size` and
    /// `settings.tick_rate_hz` are taken from the config; a spawn point
    /// outside the box moves to the middle of its floor.
    pub fn new(cfg: RegionConfig, mut settings: Settings, founders: &[PlayerId]) -> Region {
        settings.size = cfg.bounds.size();
        settings.tick_rate_hz = cfg.space.tick_rate_hz;
        let size = settings.size;
        let s = settings.spawn;
        if !(s.x < size.x && s.y < size.y && s.z < size.z) {
            let half = |v: Fx| Fx::from_bits(v.to_bits() / 2);
            settings.spawn = Vec3::new(half(size.x), half(size.y), Fx::ZERO);
        }
        let state = State::new(cfg.id, settings, founders);
        let space = Space::new(cfg.space);
        Region::assemble(
            cfg,
            state,
            space,
            Border::default(),
            Links::default(),
            Vec::new(),
        )
    }

    /// A region from its parts, with its hash computed.
    fn assemble(
        cfg: RegionConfig,
        state: State,
        space: Space,
        border: Border,
        links: Links,
        pending: Vec<PhysicsEvent>,
    ) -> Region {
        let mut region = Region {
            cfg,
            sim: Sim::new(state),
            space,
            border,
            links,
            pending,
            hash: [0; 32],
        };
        region.hash = region.compute_hash();
        region
    }

    /// A region around an existing sim state (a node's genesis, say). Its
    /// box is `[0, settings.size)` and its tick rate the settings' (space
    /// coordinates are region coordinates); it has no neighbours. Bodies
    /// the state already has are spawned in the physics space, in id
    /// order, at their element's position with their velocity.
    pub fn from_state(state: State) -> Region {
        let settings = &state.settings;
        let bounds = Aabb {
            min: Vec3::ZERO,
            max: settings.size,
        };
        let mut cfg = RegionConfig::new(state.region, bounds);
        cfg.space.tick_rate_hz = settings.tick_rate_hz;
        let mut space = Space::new(cfg.space);
        for (id, body) in state.bodies.iter() {
            let Some(e) = state.elements.get(id) else {
                continue;
            };
            let vehicle = match body.spec.kind {
                metatopia_sim::physics::BodyKind::Seated { .. } => e.parent,
                _ => None,
            };
            space.apply(&physics::Command::Spawn {
                id: *id,
                spec: body.spec,
                pos: e.pos,
                vel: body.vel,
                vehicle,
            });
        }
        Region::assemble(
            cfg,
            state,
            space,
            Border::default(),
            Links::default(),
            Vec::new(),
        )
    }

    /// The configuration.
    pub fn config(&self) -> &RegionConfig {
        &self.cfg
    }

    /// The region's id.
    pub fn id(&self) -> RegionId {
        self.cfg.id
    }

    /// The main sim.
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// The physics space.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The region hash.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The next tick to execute.
    pub fn tick_number(&self) -> u64 {
        self.sim.tick()
    }

    /// Border protocol counters.
    pub fn border_counts(&self) -> BorderCounts {
        BorderCounts {
            handoffs_out: self.border.handoffs_out,
            handoffs_in: self.border.handoffs_in,
            refused: self.border.refused,
            pending: self.border.outgoing.len() as u64,
            influences_forwarded: self.border.influences_forwarded,
            influences_applied: self.border.influences_applied,
            influences_dropped: self.border.influences_dropped,
            aborted: self.border.aborted,
            kept: self.border.released.len() as u64,
            remote: self.remote_counts(),
            remote_unacked: self.remote_unacked(),
        }
    }

    /// The bodies of groups released at a switch and kept here until the
    /// target's verdict (owned by the target if it adopted them, by nobody
    /// if it did not), in id order.
    pub fn kept_bodies(&self) -> Vec<ElementId> {
        let mut ids: Vec<ElementId> = self
            .border
            .released
            .values()
            .flat_map(|r| r.bodies.iter().map(|b| b.id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Counters of the chat lines and script messages exchanged with
    /// neighbours.
    pub fn remote_counts(&self) -> RemoteCounts {
        self.links.counts
    }

    /// Items queued for neighbours and not yet acknowledged.
    pub fn remote_unacked(&self) -> u64 {
        self.links.out.values().map(|o| o.queue.len() as u64).sum()
    }

    fn origin(&self) -> Vec3 {
        self.cfg.bounds.min
    }

    fn neighbour(&self, id: RegionId) -> Option<Aabb> {
        self.cfg
            .neighbours
            .iter()
            .find(|(r, _)| *r == id)
            .map(|(_, b)| *b)
    }

    fn compute_hash(&mut self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"metatopia region hash\0");
        h.update(&self.sim.hash());
        let digest = self.space.tick_digest();
        // The cached digest must equal the one computed from scratch; every
        // debug-build test checks it on every tick.
        debug_assert_eq!(digest, self.space.digest());
        h.update(&digest);
        let mut buf = Vec::new();
        postcard::to_io(&(&self.border, &self.pending), &mut buf)
            .expect("postcard encoding into a Vec cannot fail");
        if self.links != Links::default() {
            postcard::to_io(&self.links, &mut buf)
                .expect("postcard encoding into a Vec cannot fail");
        }
        h.update(&buf);
        *h.finalize().as_bytes()
    }

    /// Why an envelope cannot be applied now, if it cannot.
    fn check_envelope(&self, env: &Envelope, now: u64) -> Result<(), String> {
        if env.to != self.cfg.id {
            return Err(format!("addressed to region {}", env.to));
        }
        if self.neighbour(env.from).is_none() {
            return Err(format!("region {} is not a neighbour", env.from));
        }
        if env.tick.saturating_add(1) != now {
            return Err(format!("sent at tick {}, applied at {now}", env.tick));
        }
        env.validate().map_err(|e| e.to_string())
    }

    /// Executes one tick: `batch` for the main sim and the border envelopes
    /// neighbours sent at the end of the previous tick. On a batch error
    /// nothing changes. The steps are those of the module doc.
    pub fn tick(
        &mut self,
        batch: &Batch,
        host: &dyn ScriptHost,
        inbox: &[Envelope],
    ) -> Result<RegionReport, StepError> {
        self.sim.check(batch)?;
        let now = self.sim.tick();
        let origin = self.origin();
        let (msgs, refused) = self.sorted_inbox(inbox, now);
        let mut work = Received::new(now, std::mem::take(&mut self.pending));
        for env in msgs {
            self.receive(env, &mut work);
        }
        self.apply_late_influences(&mut work);
        self.deadlines(&mut work);
        self.expire_forwards(&mut work);
        self.borders_for_sim(&mut work);
        let sim_report = self.sim.step_with_physics(batch, host, &work.sim)?;
        self.links.counts.delivered += u64::from(sim_report.remote_delivered);
        self.links.counts.refused += u64::from(sim_report.remote_refused);
        let commands = self.route_commands(&sim_report.physics, origin, &mut work);
        let Received {
            forward,
            mut outbox,
            events: mut events_out,
            acks,
            ..
        } = work;
        self.send_influences(now, forward, &mut outbox);
        self.send_remote(now, &sim_report.remote, &acks, &mut outbox);
        let step_events = self.space.step(&commands);
        let offers = self.borders(now, &sim_report.crossings, &mut outbox);
        self.send_finals(now, &mut outbox);
        self.send_ghosts(now, &mut outbox);
        let local = to_region_frame(step_events, origin);
        events_out.extend(local.iter().cloned());
        self.pending = local;
        self.hash = self.compute_hash();
        Ok(RegionReport {
            tick: now,
            hash: self.hash,
            sim: sim_report,
            events: events_out,
            outbox,
            refused,
            offers,
        })
    }

    /// Step 1, the check: the envelopes that apply now, in canonical order
    /// (by sender, then by kind), and the refused ones with their reasons.
    fn sorted_inbox<'a>(
        &self,
        inbox: &'a [Envelope],
        now: u64,
    ) -> (Vec<&'a Envelope>, Vec<(RegionId, String)>) {
        let mut refused = Vec::new();
        let mut msgs: Vec<&Envelope> = Vec::new();
        for env in inbox {
            match self.check_envelope(env, now) {
                Ok(()) => msgs.push(env),
                Err(reason) => refused.push((env.from, reason)),
            }
        }
        msgs.sort_by_key(|e| (e.from, rank(&e.msg)));
        (msgs, refused)
    }

    /// Step 1: one checked envelope.
    fn receive<'a>(&mut self, env: &'a Envelope, work: &mut Received<'a>) {
        match &env.msg {
            BorderMessage::Verdict {
                root,
                switch_tick,
                adopted,
            } => self.verdict(*root, *switch_tick, *adopted, env.from, work),
            BorderMessage::Ask { root, switch_tick } => {
                self.ask(*root, *switch_tick, env.from, work);
            }
            BorderMessage::Refuse { root, reason } => {
                self.refused(*root, *reason, env.from, work);
            }
            BorderMessage::Accept { root } => self.accepted(*root, env.from, work),
            BorderMessage::Offer {
                root,
                bodies,
                switch_tick,
                player,
            } => self.offered(*root, *bodies, *switch_tick, *player, env.from, work),
            BorderMessage::Final {
                transfer,
                bodies,
                influences,
            } => self.final_data(transfer, bodies, influences, env.from, work),
            BorderMessage::Influences { influences } => {
                // After every switch of this tick (`apply_late_influences`).
                work.late.extend(influences.iter().map(|(_, c)| c));
            }
            BorderMessage::Ghosts { bodies } => {
                self.space.set_ghosts(env.from, bodies);
            }
            BorderMessage::Remote { ack, items } => self.remote_in(env.from, *ack, items, work),
        }
    }

    /// `from`'s chat lines and messages, and its acknowledgement of ours:
    /// acknowledged items leave our queue; an item is handed to the sim
    /// if it is the next `from` numbered, counted as a duplicate if we
    /// took it before, as early if one before it is missing (it comes
    /// again). Anything received is acknowledged this tick.
    fn remote_in(
        &mut self,
        from: RegionId,
        ack: u64,
        items: &[(u64, Remote)],
        work: &mut Received<'_>,
    ) {
        if let Some(link) = self.links.out.get_mut(&from) {
            while link.queue.front().is_some_and(|q| q.seq < ack) {
                link.queue.pop_front();
            }
        }
        if items.is_empty() {
            return;
        }
        work.acks.insert(from);
        let to_here = Vec3::ZERO.saturating_sub(self.origin());
        let next = self.links.next_in.entry(from).or_default();
        for (seq, item) in items {
            if *seq == *next {
                *next += 1;
                work.sim.remote.push((from, item.shifted(to_here)));
            } else if *seq < *next {
                self.links.counts.duplicates += 1;
            } else {
                self.links.counts.early += 1;
            }
        }
    }

    /// After the sim: queues what it said and sent for the neighbours it
    /// concerns (a chat line for every neighbour whose box is within its
    /// radius, a message for the region it names), then sends each
    /// neighbour its items not yet sent, or, when the oldest is not
    /// acknowledged [`REMOTE_RESEND_TICKS`] after it was sent, its items
    /// from the oldest on (at most
    /// [`REMOTE_ITEMS_MAX`](metatopia_sim::physics::REMOTE_ITEMS_MAX) a
    /// tick, oldest first) with our acknowledgement of its items; a
    /// neighbour with nothing to send or acknowledge gets no envelope.
    fn send_remote(
        &mut self,
        now: u64,
        made: &[Outbound],
        acks: &BTreeSet<RegionId>,
        outbox: &mut Vec<Envelope>,
    ) {
        let origin = self.origin();
        for o in made {
            let item = o.item.shifted(origin);
            match (o.to, &item) {
                (None, Remote::Chat { pos, radius, .. }) => {
                    let near: Vec<RegionId> = self
                        .cfg
                        .neighbours
                        .iter()
                        .filter(|(_, b)| b.outside_by(*pos) <= *radius)
                        .map(|(r, _)| *r)
                        .collect();
                    for to in near {
                        self.queue_remote(to, item.clone());
                    }
                }
                (Some(to), _) if self.neighbour(to).is_some() => self.queue_remote(to, item),
                _ => self.links.counts.unroutable += 1,
            }
        }
        let neighbours: Vec<RegionId> = self.cfg.neighbours.iter().map(|(r, _)| *r).collect();
        for to in neighbours {
            let mut items = Vec::new();
            if let Some(link) = self.links.out.get_mut(&to) {
                // Go back: if the oldest item is due again, everything
                // from it is sent again (the receiver takes items only
                // in order); else only what was never sent.
                let again = link.queue.front().is_some_and(|q| {
                    q.sent
                        .is_some_and(|at| at.saturating_add(REMOTE_RESEND_TICKS) <= now)
                });
                for q in link.queue.iter_mut() {
                    if items.len() == metatopia_sim::physics::REMOTE_ITEMS_MAX {
                        break;
                    }
                    if q.sent.is_some() && !again {
                        continue;
                    }
                    if q.sent.is_some() {
                        self.links.counts.resent += 1;
                    }
                    q.sent = Some(now);
                    items.push((q.seq, q.item.clone()));
                }
            }
            if items.is_empty() && !acks.contains(&to) {
                continue;
            }
            let ack = self.links.next_in.get(&to).copied().unwrap_or(0);
            outbox.push(Envelope {
                from: self.cfg.id,
                to,
                tick: now,
                msg: BorderMessage::Remote { ack, items },
            });
        }
    }

    /// Queues an item (world coordinates) for `to`, or drops and counts
    /// it if the queue is full or the item breaks the wire limits.
    fn queue_remote(&mut self, to: RegionId, item: Remote) {
        let link = self.links.out.entry(to).or_default();
        if link.queue.len() >= REMOTE_QUEUE_MAX || !item.valid() {
            self.links.counts.dropped += 1;
            return;
        }
        link.queue.push_back(Queued {
            seq: link.next,
            sent: None,
            item,
        });
        link.next += 1;
        self.links.counts.queued += 1;
    }

    /// `from` refused our offer of `root`: it stays here, back inside,
    /// then the influences held for it apply. An avatar is put back by
    /// the sim, which tells its player why.
    fn refused(
        &mut self,
        root: ElementId,
        reason: Refusal,
        from: RegionId,
        work: &mut Received<'_>,
    ) {
        if self
            .border
            .outgoing
            .get(&root)
            .is_some_and(|o| o.to == from)
        {
            let o = self.border.outgoing.remove(&root).unwrap_or_default();
            self.border.refused += 1;
            work.pre.extend(self.push_back(root));
            work.pre.extend(o.influences.into_iter().map(|(_, c)| c));
            if self.avatar_player(root).is_some() {
                work.sim.refused.push((root, from, reason));
            }
        }
    }

    /// The player whose avatar `root` is, if it is one.
    fn avatar_player(&self, root: ElementId) -> Option<PlayerId> {
        let e = self.sim.state().elements.get(&root)?;
        if e.kind != ElementKind::Avatar {
            return None;
        }
        e.owner
    }

    /// Step 1, last: what the sim needs for avatars near the borders: the
    /// neighbours' boxes in region coordinates, the hysteresis, and the
    /// avatars whose crossing is under way.
    fn borders_for_sim(&self, work: &mut Received<'_>) {
        let origin = self.origin();
        work.sim.neighbours = self
            .cfg
            .neighbours
            .iter()
            .map(|(region, b)| NeighbourBox {
                region: *region,
                min: b.min.saturating_sub(origin),
                max: b.max.saturating_sub(origin),
            })
            .collect();
        work.sim.hysteresis = self.cfg.hysteresis;
        work.sim.crossing = self
            .border
            .outgoing
            .iter()
            .filter(|(root, _)| self.avatar_player(**root).is_some())
            .map(|(root, o)| (*root, o.to))
            .collect();
    }

    /// `from` accepted our offer of `root` for this tick: release the
    /// group, keeping a copy until `from` can no longer abort.
    fn accepted(&mut self, root: ElementId, from: RegionId, work: &mut Received<'_>) {
        let ok = self
            .border
            .outgoing
            .get(&root)
            .is_some_and(|o| o.to == from && o.switch_tick == work.now);
        if !ok {
            return;
        }
        let o = self.border.outgoing.remove(&root).unwrap_or_default();
        self.keep_and_release(root, from, o, work);
    }

    /// Releases the group `root` to `to` at its switch tick, keeping a copy
    /// (with the influences held for it) until `to`'s verdict.
    fn keep_and_release(
        &mut self,
        root: ElementId,
        from: RegionId,
        o: Outgoing,
        work: &mut Received<'_>,
    ) {
        self.border.handoffs_out += 1;
        if let Some(BorderMessage::Final {
            transfer, bodies, ..
        }) = self.final_message(root, self.origin())
        {
            self.border.released.insert(
                root,
                Released {
                    to: from,
                    tick: work.now,
                    transfer,
                    bodies,
                    influences: o.influences.into_iter().map(|(_, c)| c).collect(),
                },
            );
        }
        self.release_group(root, from, work);
    }

    /// Lets the bodies of the group `root` go to `to` (remembering where,
    /// for forwarding) and tells the sim the subtree departs.
    fn release_group(&mut self, root: ElementId, to: RegionId, work: &mut Received<'_>) {
        for id in self.group_bodies(root) {
            self.space.release(id);
            work.events.push(PhysicsEvent::LeftRegion { id, to });
            let owner = self.sim.state().elements.get(&id).and_then(|e| e.owner);
            self.border.forwards.insert(
                id,
                Forward {
                    to,
                    until: work.now.saturating_add(self.cfg.forward_ticks),
                    owner,
                },
            );
        }
        work.sim.departures.push((root, to));
    }

    /// `from` offers the group `root` (of `bodies` bodies) for
    /// `switch_tick`: accepted if it fits, is new here and, for a player's
    /// avatar, the player may come in (not banned, not here already, room
    /// for one more); else refused with the reason.
    fn offered(
        &mut self,
        root: ElementId,
        bodies: u32,
        switch_tick: u64,
        player: Option<PlayerId>,
        from: RegionId,
        work: &mut Received<'_>,
    ) {
        let waiting: u64 = self
            .border
            .incoming
            .values()
            .map(|i| u64::from(i.bodies))
            .sum();
        let fits = u64::from(self.space.owned_count()) + waiting + u64::from(bodies)
            <= u64::from(self.cfg.bodies_max);
        // A group we give back this tick (an abort) may be offered again at
        // once.
        let here = self.sim.state().elements.contains_key(&root)
            && !work.sim.departures.iter().any(|(r, _)| *r == root);
        let fresh =
            !here && !self.border.incoming.contains_key(&root) && switch_tick == work.now + 1;
        let admitted = player.map_or(Ok(()), |p| self.admits(p, work));
        let verdict = if !fresh {
            Err(Refusal::Busy)
        } else if !fits {
            Err(Refusal::Capacity)
        } else {
            admitted
        };
        let msg = if let Err(reason) = verdict {
            if !self.border.incoming.contains_key(&root) {
                self.border
                    .verdicts
                    .insert((root, switch_tick), (from, false));
            }
            BorderMessage::Refuse { root, reason }
        } else {
            self.border.incoming.insert(
                root,
                Incoming {
                    from,
                    switch_tick,
                    bodies,
                },
            );
            BorderMessage::Accept { root }
        };
        work.outbox.push(Envelope {
            from: self.cfg.id,
            to: from,
            tick: work.now,
            msg,
        });
    }

    /// The final data of a group we accepted from `from`: adopted if it
    /// came by the switch tick and clashes with nothing here.
    fn final_data(
        &mut self,
        transfer: &Transfer,
        bodies: &[BodyTransfer],
        influences: &[(u32, physics::Command)],
        from: RegionId,
        work: &mut Received<'_>,
    ) {
        let Some(root) = transfer.root() else {
            return;
        };
        let ok = self
            .border
            .incoming
            .get(&root)
            .is_some_and(|i| i.from == from && i.switch_tick == work.now);
        let clash = transfer
            .elements
            .iter()
            .any(|e| self.sim.state().elements.contains_key(&e.id));
        // The player may have joined here, or been banned, since the offer.
        let admitted = transfer
            .player
            .as_ref()
            .is_none_or(|a| a.from == from && self.admits(a.player, work).is_ok());
        if ok && !clash && admitted {
            self.border.incoming.remove(&root);
            self.border.handoffs_in += 1;
            self.border.verdicts.insert((root, work.now), (from, true));
            work.outbox.push(Envelope {
                from: self.cfg.id,
                to: from,
                tick: work.now,
                msg: BorderMessage::Verdict {
                    root,
                    switch_tick: work.now,
                    adopted: true,
                },
            });
            for b in bodies {
                self.space.adopt(b);
                self.border.forwards.remove(&b.id);
            }
            work.sim.arrivals.push(transfer.clone());
            work.pre.extend(influences.iter().map(|(_, c)| c.clone()));
        }
    }

    /// Step 1, last: forwarded influences, by sender and number: applied if
    /// the body is ours now, passed on if it moved on, dropped otherwise.
    fn apply_late_influences(&mut self, work: &mut Received<'_>) {
        for cmd in std::mem::take(&mut work.late) {
            let id = cmd.id();
            if self.space.owns(id) {
                self.border.influences_applied += 1;
                work.pre.push(cmd.clone());
            } else if let Some(f) = self.border.forwards.get(&id) {
                work.forward.entry(f.to).or_default().push(cmd.clone());
            } else {
                self.border.influences_dropped += 1;
            }
        }
    }

    /// Deadlines. An accepted offer whose final data did not come by the
    /// switch tick is not adopted: the verdict says so (the source takes
    /// its group back). Our own offer that got no answer by then is
    /// released into our keeping as if accepted (the target may have
    /// adopted it: it never has two owners), and the target's verdict
    /// decides. A group kept past its switch tick without a verdict asks
    /// for it again, every tick: messages between groups get lost, and the
    /// group is never dropped on silence. Verdicts are remembered
    /// `forward_ticks` to answer.
    fn deadlines(&mut self, work: &mut Received<'_>) {
        let now = work.now;
        let mut refusals: Vec<(ElementId, RegionId, u64)> = Vec::new();
        for (root, i) in &self.border.incoming {
            if i.switch_tick <= now {
                refusals.push((*root, i.from, i.switch_tick));
            }
        }
        self.border.incoming.retain(|_, i| i.switch_tick > now);
        self.border.aborted += refusals.len() as u64;
        for (root, to, switch_tick) in refusals {
            self.border
                .verdicts
                .insert((root, switch_tick), (to, false));
            work.outbox.push(Envelope {
                from: self.cfg.id,
                to,
                tick: now,
                msg: BorderMessage::Verdict {
                    root,
                    switch_tick,
                    adopted: false,
                },
            });
        }
        let lapsed: Vec<ElementId> = self
            .border
            .outgoing
            .iter()
            .filter(|(_, o)| o.switch_tick <= now)
            .map(|(r, _)| *r)
            .collect();
        for root in lapsed {
            if let Some(o) = self.border.outgoing.remove(&root) {
                let to = o.to;
                self.keep_and_release(root, to, o, work);
            }
        }
        for (root, r) in &self.border.released {
            if r.tick < now {
                work.outbox.push(Envelope {
                    from: self.cfg.id,
                    to: r.to,
                    tick: now,
                    msg: BorderMessage::Ask {
                        root: *root,
                        switch_tick: r.tick,
                    },
                });
            }
        }
        let window = self.cfg.forward_ticks;
        self.border
            .verdicts
            .retain(|(_, at), _| at.saturating_add(window) > now);
    }

    /// Forwarding windows that end now close; the sim hears of the open
    /// ones (it still accepts influences for those bodies).
    fn expire_forwards(&mut self, work: &mut Received<'_>) {
        let now = work.now;
        self.border.forwards.retain(|_, f| f.until > now);
        work.sim.forwarded = self
            .border
            .forwards
            .iter()
            .map(|(id, f)| (*id, f.owner))
            .collect();
    }

    /// Step 3, first part: the sim's commands in world coordinates, after
    /// the commands of step 1. A command for a body in an outgoing handoff
    /// is numbered and held for the receiver; an influence for a body
    /// handed away is forwarded to its new owner.
    fn route_commands(
        &mut self,
        sim_commands: &[physics::Command],
        origin: Vec3,
        work: &mut Received<'_>,
    ) -> Vec<physics::Command> {
        let mut leaving: BTreeMap<ElementId, ElementId> = BTreeMap::new();
        for root in self.border.outgoing.keys() {
            for id in self.group_bodies(*root) {
                leaving.insert(id, *root);
            }
        }
        let mut commands = std::mem::take(&mut work.pre);
        for cmd in sim_commands {
            let cmd = shift(cmd, origin);
            let hold = !matches!(
                cmd,
                physics::Command::Remove { .. } | physics::Command::Spawn { .. }
            );
            match leaving.get(&cmd.id()) {
                Some(root) if hold => {
                    if let Some(o) = self.border.outgoing.get_mut(root) {
                        let seq = o.influences.len() as u32 + 1;
                        o.influences.push((seq, cmd));
                    }
                }
                _ => match self.border.forwards.get(&cmd.id()) {
                    Some(f) if is_influence(&cmd) && !self.space.owns(cmd.id()) => {
                        work.forward.entry(f.to).or_default().push(cmd);
                    }
                    _ => commands.push(cmd),
                },
            }
        }
        commands
    }

    /// `from`'s verdict on the handoff of `root` at `switch_tick`: if we
    /// still keep the group for it, drop the copy (adopted) or take the
    /// group back (not adopted). Anything else is stale and ignored.
    fn verdict(
        &mut self,
        root: ElementId,
        switch_tick: u64,
        adopted: bool,
        from: RegionId,
        work: &mut Received<'_>,
    ) {
        if !self
            .border
            .released
            .get(&root)
            .is_some_and(|r| r.to == from && r.tick == switch_tick)
        {
            return;
        }
        let Some(r) = self.border.released.remove(&root) else {
            return;
        };
        if adopted {
            return;
        }
        if r.transfer.player.is_some() {
            work.sim.refused.push((root, r.to, Refusal::NotAdopted));
        }
        self.border.aborted += 1;
        self.border.handoffs_out = self.border.handoffs_out.saturating_sub(1);
        for b in &r.bodies {
            self.space.adopt(b);
            self.border.forwards.remove(&b.id);
        }
        work.sim.arrivals.push(r.transfer);
        work.pre.extend(r.influences);
    }

    /// `from` asks for our verdict on its handoff of `root` at
    /// `switch_tick`: the one we remember, or "not adopted" if we remember
    /// none within the window (every adoption is remembered that long).
    fn ask(&mut self, root: ElementId, switch_tick: u64, from: RegionId, work: &mut Received<'_>) {
        let now = work.now;
        let adopted = match self.border.verdicts.get(&(root, switch_tick)) {
            Some((src, adopted)) if *src == from => Some(*adopted),
            Some(_) => None,
            None if switch_tick < now
                && switch_tick.saturating_add(self.cfg.forward_ticks) > now =>
            {
                Some(false)
            }
            None => None,
        };
        if let Some(adopted) = adopted {
            work.outbox.push(Envelope {
                from: self.cfg.id,
                to: from,
                tick: now,
                msg: BorderMessage::Verdict {
                    root,
                    switch_tick,
                    adopted,
                },
            });
        }
    }

    /// Envelopes carrying influences to the new owners of bodies handed
    /// away, numbered in issue order.
    fn send_influences(
        &mut self,
        now: u64,
        forward: BTreeMap<RegionId, Vec<physics::Command>>,
        outbox: &mut Vec<Envelope>,
    ) {
        for (to, cmds) in forward {
            for chunk in cmds.chunks(metatopia_sim::physics::INFLUENCES_MAX) {
                let influences = chunk
                    .iter()
                    .map(|c| {
                        self.border.influences_forwarded += 1;
                        (self.border.influences_forwarded, c.clone())
                    })
                    .collect();
                outbox.push(Envelope {
                    from: self.cfg.id,
                    to,
                    tick: now,
                    msg: BorderMessage::Influences { influences },
                });
            }
        }
    }

    /// Owned bodies in the subtree of `root`, by id.
    fn group_bodies(&self, root: ElementId) -> Vec<ElementId> {
        let mut ids: Vec<ElementId> = self
            .sim
            .state()
            .subtree(root)
            .into_iter()
            .filter(|id| self.space.owns(*id))
            .collect();
        ids.sort();
        ids
    }

    /// Commands that put a group root back inside the box and stop it
    /// moving outwards.
    fn push_back(&self, root: ElementId) -> Vec<physics::Command> {
        let Some(m) = self.space.motion(root) else {
            return Vec::new();
        };
        let b = self.cfg.bounds;
        let inside = Fx::from_bits(1 << 22); // 1/1024 m inside the far faces
        let clamp = |v: Fx, lo: Fx, hi: Fx| {
            let hi = hi.saturating_sub(inside);
            if v < lo {
                lo
            } else if v > hi {
                hi
            } else {
                v
            }
        };
        let stop = |v: Fx, p: Fx, lo: Fx, hi: Fx| {
            if (p < lo && v < Fx::ZERO) || (p >= hi && v > Fx::ZERO) {
                Fx::ZERO
            } else {
                v
            }
        };
        let pos = Vec3::new(
            clamp(m.pos.x, b.min.x, b.max.x),
            clamp(m.pos.y, b.min.y, b.max.y),
            clamp(m.pos.z, b.min.z, b.max.z),
        );
        let vel = Vec3::new(
            stop(m.vel.x, m.pos.x, b.min.x, b.max.x),
            stop(m.vel.y, m.pos.y, b.min.y, b.max.y),
            stop(m.vel.z, m.pos.z, b.min.z, b.max.z),
        );
        vec![
            physics::Command::SetPosition { id: root, pos },
            physics::Command::SetVelocity { id: root, vel },
        ]
    }

    /// The owned bodies outside our box: group roots deep enough in a
    /// neighbour to offer (with the neighbour), and bodies outside every
    /// box to push back (not seated ones: their vehicle carries them).
    fn outside(&self) -> (Vec<(ElementId, RegionId)>, Vec<ElementId>) {
        let state = self.sim.state();
        let region_root = state.root();
        let mut offers = Vec::new();
        let mut clamp = Vec::new();
        for id in self.space.owned() {
            let Some(pos) = self.space.position(id) else {
                continue;
            };
            if self.cfg.bounds.contains(pos) {
                continue;
            }
            let is_root = state
                .elements
                .get(&id)
                .is_some_and(|e| e.parent == Some(region_root));
            let seated = self.space.slots().get(&id).is_some_and(|s| {
                matches!(
                    s.spec().kind,
                    metatopia_sim::physics::BodyKind::Seated { .. }
                )
            });
            let host = self
                .cfg
                .neighbours
                .iter()
                .find(|(_, b)| b.contains(pos))
                .map(|(r, _)| *r);
            match host {
                None if !seated => clamp.push(id),
                None => {}
                Some(to) => {
                    let depth = self.cfg.bounds.outside_by(pos);
                    if is_root
                        && depth > self.cfg.hysteresis
                        && !self.border.outgoing.contains_key(&id)
                    {
                        offers.push((id, to));
                    }
                }
            }
        }
        (offers, clamp)
    }

    /// Step 4, first part: offers for groups deep enough in a neighbour
    /// and for the avatars the sim saw cross (`crossings`), push-back for
    /// bodies outside every box. Returns the offered roots.
    fn borders(
        &mut self,
        now: u64,
        crossings: &[Crossing],
        outbox: &mut Vec<Envelope>,
    ) -> Vec<ElementId> {
        let (offers, clamp) = self.outside();
        for id in clamp {
            for cmd in self.push_back(id) {
                self.space.apply(&cmd);
            }
        }
        let avatars = crossings.iter().filter(|c| {
            self.neighbour(c.to).is_some()
                && !self.border.outgoing.contains_key(&c.avatar)
                && self.avatar_player(c.avatar) == Some(c.player)
        });
        let offers: Vec<(ElementId, RegionId, Option<PlayerId>)> = offers
            .into_iter()
            .map(|(root, to)| (root, to, None))
            .chain(avatars.map(|c| (c.avatar, c.to, Some(c.player))))
            .collect();
        let mut roots = Vec::new();
        for (root, to, player) in offers {
            let bodies = self.group_bodies(root).len() as u32;
            let switch_tick = now + 2;
            self.border.outgoing.insert(
                root,
                Outgoing {
                    to,
                    switch_tick,
                    influences: Vec::new(),
                },
            );
            outbox.push(Envelope {
                from: self.cfg.id,
                to,
                tick: now,
                msg: BorderMessage::Offer {
                    root,
                    bodies,
                    switch_tick,
                    player,
                },
            });
            roots.push(root);
        }
        roots
    }

    /// Step 4, second part: the final data of groups switching next tick.
    fn send_finals(&mut self, now: u64, outbox: &mut Vec<Envelope>) {
        let due: Vec<(ElementId, RegionId)> = self
            .border
            .outgoing
            .iter()
            .filter(|(_, o)| o.switch_tick == now + 1)
            .map(|(r, o)| (*r, o.to))
            .collect();
        for (root, to) in due {
            let target = self.neighbour(to).map(|b| b.min);
            let envelope = target
                .and_then(|min| self.final_message(root, min))
                .map(|msg| Envelope {
                    from: self.cfg.id,
                    to,
                    tick: now,
                    msg,
                });
            match envelope {
                Some(env) if env.validate().is_ok() => outbox.push(env),
                _ => {
                    // The group vanished (deleted), or its data would break
                    // the message limits: cancel the handoff (an Accept is
                    // then ignored), keep the group inside as after a
                    // refusal, and apply the held influences here.
                    if let Some(o) = self.border.outgoing.remove(&root) {
                        self.border.refused += 1;
                        for cmd in self.push_back(root) {
                            self.space.apply(&cmd);
                        }
                        for (_, cmd) in &o.influences {
                            self.space.apply(cmd);
                        }
                    }
                }
            }
        }
    }

    /// The final data of a group for a region whose box starts at
    /// `target_min` (our own origin for the copy we keep).
    fn final_message(&self, root: ElementId, target_min: Vec3) -> Option<BorderMessage> {
        let state = self.sim.state();
        let ids = state.subtree(root);
        if ids.is_empty() {
            return None;
        }
        // Region coordinates here -> region coordinates there.
        let shift = self.origin().saturating_sub(target_min);
        let mut elements = Vec::with_capacity(ids.len());
        let mut sim_bodies = Vec::new();
        let mut bodies: Vec<BodyTransfer> = Vec::new();
        for id in &ids {
            let mut e = state.elements.get(id)?.clone();
            e.pos = e.pos.saturating_add(shift);
            if let (Some(body), Some(t)) = (state.bodies.get(id), self.space.transfer(*id)) {
                e.pos = t.motion.pos.saturating_sub(target_min);
                let mut body = body.clone();
                body.vel = t.motion.vel;
                sim_bodies.push((*id, body));
                bodies.push(t);
            }
            elements.push(e);
        }
        let mut order: Vec<usize> = (0..bodies.len()).collect();
        order.sort_by_key(|i| bodies[*i].id);
        let bodies: Vec<BodyTransfer> = order.iter().map(|i| bodies[*i].clone()).collect();
        let sim_bodies: Vec<_> = order.iter().map(|i| sim_bodies[*i].clone()).collect();
        let inside = |id: &ElementId| ids.contains(id);
        let transfer = Transfer {
            elements,
            bodies: sim_bodies,
            timers: state
                .timers
                .iter()
                .filter(|(_, s, _)| inside(s))
                .copied()
                .collect(),
            mailbox: state
                .mailbox
                .iter()
                .filter(|p| inside(&p.to))
                .cloned()
                .collect(),
            player: self.arrival(root),
        };
        let influences = self
            .border
            .outgoing
            .get(&root)
            .map(|o| o.influences.clone())
            .unwrap_or_default();
        Some(BorderMessage::Final {
            transfer,
            bodies,
            influences,
        })
    }

    /// The player who travels with the group `root`, if it is their
    /// avatar (they are online with it).
    fn arrival(&self, root: ElementId) -> Option<Arrival> {
        let who = self.avatar_player(root)?;
        let p = self.sim.state().players.get(&who)?;
        if p.avatar != Some(root) {
            return None;
        }
        Some(Arrival {
            player: who,
            name: p.name.clone(),
            last_seq: p.last_seq,
            from: self.cfg.id,
        })
    }

    /// Whether the sim may admit `who` now, counting the avatars accepted
    /// earlier in this tick's step 1 (they are not online yet).
    fn admits(&self, who: PlayerId, work: &Received<'_>) -> Result<(), Refusal> {
        let state = self.sim.state();
        metatopia_sim::step::admits(state, who)?;
        let arriving: Vec<PlayerId> = work
            .sim
            .arrivals
            .iter()
            .filter_map(|t| t.player.as_ref().map(|a| a.player))
            .collect();
        if arriving.contains(&who) {
            return Err(Refusal::AlreadyThere);
        }
        let max = state.settings.players_online_max;
        if state.online().count() as u64 + arriving.len() as u64 >= u64::from(max) {
            return Err(Refusal::Full(max));
        }
        Ok(())
    }

    /// Step 4, last part: ghosts for every neighbour (an empty list clears
    /// the neighbour's ghosts of ours).
    fn send_ghosts(&self, now: u64, outbox: &mut Vec<Envelope>) {
        for (to, b) in &self.cfg.neighbours {
            let bodies = self
                .space
                .owned()
                .filter(|id| {
                    self.space
                        .position(*id)
                        .is_some_and(|p| b.outside_by(p) <= self.cfg.margin)
                })
                .filter_map(|id| self.space.ghost(id))
                .take(metatopia_sim::physics::GHOSTS_MAX)
                .collect();
            outbox.push(Envelope {
                from: self.cfg.id,
                to: *to,
                tick: now,
                msg: BorderMessage::Ghosts { bodies },
            });
        }
    }

    /// The full snapshot: config, sim state, physics space, border state and
    /// pending events. Restoring it and continuing gives the same hashes as
    /// never stopping.
    pub fn snapshot(&self) -> Vec<u8> {
        let sim = snapshot::encode_state(self.sim.state());
        let space = self.space.snapshot();
        if self.links == Links::default() {
            snapshot::encode(
                SNAPSHOT_MAGIC,
                &(&self.cfg, &sim, &space, &self.border, &self.pending),
            )
        } else {
            snapshot::encode(
                SNAPSHOT_MAGIC,
                &(
                    &self.cfg,
                    &sim,
                    &space,
                    &self.border,
                    &self.pending,
                    &self.links,
                ),
            )
        }
    }

    /// A region from [`Region::snapshot`] bytes.
    ///
    /// A region that never exchanged chat or messages with a neighbour
    /// has no links part (as before links existed); one that did has it
    /// last. A links part that is empty is not canonical.
    pub fn restore(bytes: &[u8]) -> Result<Region, DecodeError> {
        type Parts = (RegionConfig, Vec<u8>, Vec<u8>, Border, Vec<PhysicsEvent>);
        type WithLinks = (
            RegionConfig,
            Vec<u8>,
            Vec<u8>,
            Border,
            Vec<PhysicsEvent>,
            Links,
        );
        let (cfg, sim, space, border, pending, links) =
            match snapshot::decode::<Parts>(SNAPSHOT_MAGIC, bytes) {
                Ok((cfg, sim, space, border, pending)) => {
                    (cfg, sim, space, border, pending, Links::default())
                }
                Err(first) => match snapshot::decode::<WithLinks>(SNAPSHOT_MAGIC, bytes) {
                    Ok(parts) if parts.5 == Links::default() => {
                        return Err(DecodeError::NonCanonical);
                    }
                    Ok(parts) => parts,
                    Err(_) => return Err(first),
                },
            };
        let state = snapshot::decode_state(&sim)?;
        let space = Space::restore(&space)?;
        Ok(Region::assemble(cfg, state, space, border, links, pending))
    }
}
