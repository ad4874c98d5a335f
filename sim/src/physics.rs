//! Messages between the main sim and the physics sim, and between the
//! physics sims of neighbouring regions.
//!
//! The rapier world lives in `metatopia-physics`; this module holds only the
//! types both sides (and scripts) agree on, all in fixed point and ids, so
//! that `sim` stays free of floats and of rapier.
//!
//! - [`Command`]: what the main sim asks of its physics sim during a
//!   tick (spawn, remove, impulse, force, velocity, kinematic target).
//! - [`PhysicsEvent`]: what the physics sim reports for bodies its region
//!   owns (moved, collided, came to rest, left the region). They are inputs
//!   of the region's next tick.
//! - [`PhysicsInbox`]: what the region tick feeds the main sim: last tick's
//!   events and the element subtrees whose ownership switches this tick.
//! - [`Envelope`] / [`BorderMessage`]: ghosts and ownership handoff between
//!   regions, and chat lines and script messages ([`crate::remote`]),
//!   delivered as inputs of the receiving region's next batch.
//!   [`decode_envelope`] is the check-then-parse decoder for untrusted bytes.
//!
//! Rounding rule (floats never enter `sim`): the physics side converts an
//! `f64` to [`Fx`] as `round_half_even(value * 2^32)`, saturating at the
//! `Fx` range, NaN to zero; `Fx` to `f64` is `bits as f64 / 2^32` (exact
//! for every value below 2^21 in magnitude). See `metatopia-physics`'s
//! `convert` module and docs/physics.md.

use serde::{Deserialize, Serialize};

use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, PlayerId, RegionId};
use crate::snapshot::{self, DecodeError};
use crate::state::{Element, Pending};

pub use crate::body::{Body, BodyKind, BodySpec, Material, Shape};

/// A command from the main sim to its physics sim, issued during a tick and
/// applied, in issue order, before that tick's physics step. Positions are
/// in region coordinates.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Create a body for an element.
    Spawn {
        /// The element.
        id: ElementId,
        /// What it is made of.
        spec: BodySpec,
        /// Its centre.
        pos: Vec3,
        /// Its initial linear velocity.
        vel: Vec3,
        /// For a seated body: the body it rides (its parent element).
        vehicle: Option<ElementId>,
    },
    /// Remove an element's body.
    Remove {
        /// The element.
        id: ElementId,
    },
    /// Add an impulse (N·s) at the centre of mass.
    Impulse {
        /// The element.
        id: ElementId,
        /// The impulse.
        impulse: Vec3,
    },
    /// Apply a force (N) during the next step only.
    Force {
        /// The element.
        id: ElementId,
        /// The force.
        force: Vec3,
    },
    /// Set the linear velocity.
    SetVelocity {
        /// The element.
        id: ElementId,
        /// The velocity.
        vel: Vec3,
    },
    /// Move a kinematic body to `pos` over the next step.
    KinematicTarget {
        /// The element.
        id: ElementId,
        /// The target position.
        pos: Vec3,
    },
    /// Teleport a body (an element was moved by an input).
    SetPosition {
        /// The element.
        id: ElementId,
        /// The new centre.
        pos: Vec3,
    },
}

impl Command {
    /// The element the command is for.
    pub fn id(&self) -> ElementId {
        match self {
            Command::Spawn { id, .. }
            | Command::Remove { id }
            | Command::Impulse { id, .. }
            | Command::Force { id, .. }
            | Command::SetVelocity { id, .. }
            | Command::KinematicTarget { id, .. }
            | Command::SetPosition { id, .. } => *id,
        }
    }

    fn valid(&self) -> bool {
        match self {
            Command::Spawn { spec, .. } => spec.valid(),
            _ => true,
        }
    }
}

/// What a physics step reports, only for bodies the region owns. Positions
/// are in region coordinates.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum PhysicsEvent {
    /// The body's quantized position or velocity changed.
    Moved {
        /// The element.
        id: ElementId,
        /// Its centre.
        pos: Vec3,
        /// Its linear velocity.
        vel: Vec3,
    },
    /// The body started touching `other` (owned here or a ghost).
    Collided {
        /// The owned body.
        id: ElementId,
        /// What it touched.
        other: ElementId,
    },
    /// The body fell asleep.
    AtRest {
        /// The element.
        id: ElementId,
    },
    /// Ownership of the body passed to `to`.
    LeftRegion {
        /// The element.
        id: ElementId,
        /// The new owner.
        to: RegionId,
    },
}

/// An element subtree whose ownership moves between regions, with
/// everything the sim keeps for it: the elements (scripts and their state
/// included, parents first), their bodies, their pending timers and
/// undelivered script events.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Transfer {
    /// The subtree, root first, parents before children. Positions are in
    /// the coordinates of the region the transfer is handed to.
    pub elements: Vec<Element>,
    /// Bodies of elements in the subtree, by id.
    pub bodies: Vec<(ElementId, Body)>,
    /// Pending timers of scripts in the subtree: (due tick, script, timer).
    pub timers: Vec<(u64, ElementId, u32)>,
    /// Undelivered events for scripts in the subtree.
    pub mailbox: Vec<Pending>,
    /// When the root is a player's avatar: the player, who follows it
    /// (goes offline where it leaves, online where it arrives).
    pub player: Option<Arrival>,
}

/// The player whose avatar is the root of a [`Transfer`]: what the region
/// it arrives in needs to make them present there (docs/adr/0018).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Arrival {
    /// The player.
    pub player: PlayerId,
    /// Their name (as given at the join where the walk began).
    pub name: String,
    /// The highest input sequence number the region they leave took from
    /// them: the region they arrive in drops anything not above it (one
    /// counter per player across regions; an input applied before the
    /// crossing cannot apply again after it).
    pub last_seq: u64,
    /// The region the avatar comes from.
    pub from: RegionId,
}

/// Longest player name in an [`Arrival`] on the wire, bytes (the
/// receiving region also applies its own `name_bytes_max`).
pub const ARRIVAL_NAME_BYTES_MAX: usize = 1024;

/// Why a region did not take an avatar (or a body) offered to it, or
/// gave it back.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The region owns as many bodies as it may.
    #[error("the region has no room for more bodies")]
    Capacity,
    /// The group is already there, or already offered to it.
    #[error("the region already has or expects it")]
    Busy,
    /// The player is banned from the region.
    #[error("the player is banned from that region")]
    Banned,
    /// The region has as many players online as it may.
    #[error("that region is full ({0} players online)")]
    Full(u32),
    /// The player is already in the region (joined there with another
    /// avatar).
    #[error("the player is already in that region")]
    AlreadyThere,
    /// The region accepted but did not adopt it: the hand-off's data came
    /// too late (a late or lost border set), or the player could no
    /// longer be admitted at the switch.
    #[error("the hand-off did not complete in time")]
    NotAdopted,
}

/// A neighbour's box as the sim sees it: region coordinates of this
/// region (`min` may be negative, `max` past the size).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NeighbourBox {
    /// The neighbour.
    pub region: RegionId,
    /// Lowest corner.
    pub min: Vec3,
    /// Highest corner (exclusive).
    pub max: Vec3,
}

impl NeighbourBox {
    /// Whether `p` is inside.
    pub fn contains(&self, p: Vec3) -> bool {
        p.x >= self.min.x
            && p.y >= self.min.y
            && p.z >= self.min.z
            && p.x < self.max.x
            && p.y < self.max.y
            && p.z < self.max.z
    }
}

impl Transfer {
    /// The subtree's root.
    pub fn root(&self) -> Option<ElementId> {
        self.elements.first().map(|e| e.id)
    }
}

/// What the region tick hands the main sim at the start of a tick.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PhysicsInbox {
    /// Subtrees whose ownership leaves this region now (by root id), with
    /// the region they go to.
    pub departures: Vec<(ElementId, RegionId)>,
    /// Subtrees whose ownership arrives now; each root is attached under
    /// the region root.
    pub arrivals: Vec<Transfer>,
    /// Events from last tick's physics step.
    pub events: Vec<PhysicsEvent>,
    /// Bodies whose ownership left this region recently, with their
    /// element's owner, sorted by id: a `Push` or `SetVelocity` for one of
    /// them is still accepted (same permission rules) and its command is
    /// forwarded to the new owner by the region.
    pub forwarded: Vec<(ElementId, Option<crate::PlayerId>)>,
    /// Chat lines and script messages from neighbours (positions in this
    /// region's coordinates), with the sending region, in canonical order
    /// (by sending region, then by the sender's numbering). Applied after
    /// the physics events, before last tick's queued script events.
    pub remote: Vec<(RegionId, crate::remote::Remote)>,
    /// The neighbours' boxes, in this region's coordinates: an avatar may
    /// stand outside this region's box only inside one of them, and
    /// crosses into one once more than `hysteresis` past the box
    /// (docs/adr/0018). Empty: avatars stay inside the box.
    pub neighbours: Vec<NeighbourBox>,
    /// See `neighbours`.
    pub hysteresis: Fx,
    /// Avatars offered to a neighbour whose switch is still due, with the
    /// neighbour, by id.
    pub crossing: Vec<(ElementId, RegionId)>,
    /// Avatars whose crossing failed, after the departures and arrivals
    /// (a group taken back is among the arrivals): the region they tried
    /// and why. Each is put back inside the box and its player told.
    pub refused: Vec<(ElementId, RegionId, Refusal)>,
}

/// A body's dynamic state, quantized, in world coordinates.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Motion {
    /// Centre.
    pub pos: Vec3,
    /// Rotation quaternion `(x, y, z, w)`.
    pub rot: [Fx; 4],
    /// Linear velocity.
    pub vel: Vec3,
    /// Angular velocity.
    pub angvel: Vec3,
}

/// A body mirrored to a neighbour.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Ghost {
    /// The element.
    pub id: ElementId,
    /// What it is made of.
    pub spec: BodySpec,
    /// Where it is.
    pub motion: Motion,
}

/// A body in a handoff, with the contacts it had (so the receiver does not
/// report them again).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BodyTransfer {
    /// The element.
    pub id: ElementId,
    /// What it is made of.
    pub spec: BodySpec,
    /// Where it is.
    pub motion: Motion,
    /// Whether it was asleep.
    pub resting: bool,
    /// For a seated body: the body it rides.
    pub vehicle: Option<ElementId>,
    /// Bodies it was touching, by id.
    pub touching: Vec<ElementId>,
}

/// A message between the physics sims of neighbouring regions. The
/// handoff follows the G World Engine procedure: offer, accept or refuse by
/// capacity, numbered influences forwarded, switch at an agreed tick.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BorderMessage {
    /// The sender's owned bodies within the margin of the receiver's box,
    /// as of the end of the envelope's tick. Replaces the previous set.
    Ghosts {
        /// The bodies, by id.
        bodies: Vec<Ghost>,
    },
    /// The sender asks the receiver to take a group (a root body and its
    /// subtree); the switch happens at `switch_tick` if accepted.
    Offer {
        /// The group's root element.
        root: ElementId,
        /// Bodies in the group (the capacity the receiver needs).
        bodies: u32,
        /// The tick at which ownership switches.
        switch_tick: u64,
        /// When the root is a player's avatar: the player (the receiver
        /// checks it may admit them).
        player: Option<PlayerId>,
    },
    /// The receiver of an offer takes the group.
    Accept {
        /// The group's root element.
        root: ElementId,
    },
    /// The receiver of an offer refuses it.
    Refuse {
        /// The group's root element.
        root: ElementId,
        /// Why.
        reason: Refusal,
    },
    /// The group's data at the end of the tick before the switch, and the
    /// influences (commands) that arrived for it since the offer, numbered
    /// from 1. Applied only if the offer was accepted.
    Final {
        /// The elements, scripts and sim-side bodies, in receiver coordinates.
        transfer: Transfer,
        /// The physics side of each body, world coordinates.
        bodies: Vec<BodyTransfer>,
        /// Influences, by sequence number.
        influences: Vec<(u32, Command)>,
    },
    /// The target's verdict on a handoff at its switch tick: it adopted
    /// the group (it had accepted and got the final data by then) or not.
    /// Sent at the end of the switch tick, and again in answer to every
    /// [`BorderMessage::Ask`]. The source, which released the group into
    /// its keeping at the switch tick (on an `Accept`, or with no answer),
    /// drops its copy on `adopted` and takes the group back otherwise.
    Verdict {
        /// The group's root element.
        root: ElementId,
        /// The handoff's switch tick.
        switch_tick: u64,
        /// Whether the target adopted the group.
        adopted: bool,
    },
    /// Influences that reached the sender after a body's ownership had
    /// switched to the receiver, numbered by the sender (from 1, never
    /// reused). The receiver applies them before its own commands, in
    /// number order, or forwards them again if the body moved on.
    Influences {
        /// `(sequence number, command)`, ascending numbers.
        influences: Vec<(u64, Command)>,
    },
    /// The source still keeps a group it released at `switch_tick` and has
    /// not heard the target's verdict: sent at the end of every tick until
    /// a [`BorderMessage::Verdict`] comes (messages between groups get
    /// lost; the group is never dropped on silence).
    Ask {
        /// The group's root element.
        root: ElementId,
        /// The handoff's switch tick.
        switch_tick: u64,
    },
    /// Chat lines and script messages for the receiver (positions in
    /// world coordinates), numbered by the sender per receiver from 0 and
    /// sent again until acknowledged, and the sender's acknowledgement of
    /// the receiver's own: every item it took below `ack`. The receiver
    /// applies an item only if its number is the next it expects, so each
    /// is applied exactly once and in order (docs/adr/0016).
    Remote {
        /// The next number the sender expects from the receiver.
        ack: u64,
        /// Items, ascending numbers.
        items: Vec<(u64, crate::remote::Remote)>,
    },
}

/// Whether a command may travel as a forwarded influence (it acts on a
/// body's motion; spawning, removing and teleporting stay with the owner).
pub fn is_influence(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Impulse { .. }
            | Command::Force { .. }
            | Command::SetVelocity { .. }
            | Command::KinematicTarget { .. }
    )
}

/// A border message with its routing: sent by `from` at the end of `tick`,
/// applied by `to` at `tick + 1`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Sending region.
    pub from: RegionId,
    /// Receiving region.
    pub to: RegionId,
    /// The tick at whose end it was sent.
    pub tick: u64,
    /// The message.
    pub msg: BorderMessage,
}

/// First bytes of an encoded border envelope.
pub const BORDER_MAGIC: [u8; 4] = *b"MTPB";
/// Most bodies in one ghost message.
pub const GHOSTS_MAX: usize = 16_384;
/// Most elements (or bodies) in one handoff.
pub const TRANSFER_ELEMENTS_MAX: usize = 1024;
/// Most influences forwarded in one handoff.
pub const INFLUENCES_MAX: usize = 4096;
/// Most timers or mailbox entries in one handoff.
pub const TRANSFER_PENDING_MAX: usize = 65_536;
/// Most items in one [`BorderMessage::Remote`].
pub const REMOTE_ITEMS_MAX: usize = 64;
/// Largest encoded border envelope, bytes.
pub const BORDER_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Why a border envelope is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BorderError {
    /// The bytes are not a canonical envelope.
    #[error("border envelope: {0}")]
    Decode(#[from] DecodeError),
    /// The envelope is larger than allowed.
    #[error("border envelope of {0} bytes exceeds {BORDER_BYTES_MAX}")]
    TooLarge(usize),
    /// The envelope decodes but breaks a rule.
    #[error("invalid border envelope: {0}")]
    Invalid(String),
}

impl Envelope {
    /// Checks bounds and values: counts within limits, shapes and
    /// materials in range, ids unique where they must be, a transfer's
    /// elements forming one subtree.
    ///
    /// Long on purpose: one arm per border message kind, each bound checked where it is read.
    pub fn validate(&self) -> Result<(), BorderError> {
        let bad = |m: String| Err(BorderError::Invalid(m));
        if self.from == self.to {
            return bad(format!("region {} sends to itself", self.from));
        }
        match &self.msg {
            BorderMessage::Ghosts { bodies } => {
                if bodies.len() > GHOSTS_MAX {
                    return bad(format!("{} ghosts, limit {GHOSTS_MAX}", bodies.len()));
                }
                if !bodies.windows(2).all(|w| w[0].id < w[1].id) {
                    return bad("ghosts not sorted by id or repeated".into());
                }
                if let Some(g) = bodies.iter().find(|g| !g.spec.valid()) {
                    return bad(format!("ghost {} has an invalid body", g.id));
                }
            }
            BorderMessage::Offer {
                bodies,
                switch_tick,
                player,
                ..
            } => {
                // An avatar may carry no body; any other group is bodies.
                if (*bodies == 0 && player.is_none()) || *bodies as usize > TRANSFER_ELEMENTS_MAX {
                    return bad(format!("offer of {bodies} bodies"));
                }
                if *switch_tick <= self.tick {
                    return bad(format!(
                        "switch tick {switch_tick} is not after tick {}",
                        self.tick
                    ));
                }
            }
            BorderMessage::Remote { items, .. } => {
                if items.len() > REMOTE_ITEMS_MAX {
                    return bad(format!(
                        "{} remote items, limit {REMOTE_ITEMS_MAX}",
                        items.len()
                    ));
                }
                if !items.windows(2).all(|w| w[0].0 < w[1].0) {
                    return bad("remote items not in ascending order".into());
                }
                if let Some((n, _)) = items.iter().find(|(_, r)| !r.valid()) {
                    return bad(format!(
                        "remote item {n} is empty, too long or has no radius"
                    ));
                }
            }
            BorderMessage::Accept { .. }
            | BorderMessage::Refuse { .. }
            | BorderMessage::Verdict { .. }
            | BorderMessage::Ask { .. } => {}
            BorderMessage::Influences { influences } => {
                if influences.is_empty() || influences.len() > INFLUENCES_MAX {
                    return bad(format!("{} forwarded influences", influences.len()));
                }
                if !influences.windows(2).all(|w| w[0].0 < w[1].0)
                    || influences.first().is_some_and(|i| i.0 == 0)
                {
                    return bad("forwarded influences not numbered 1.. in order".into());
                }
                if !influences.iter().all(|(_, c)| is_influence(c) && c.valid()) {
                    return bad("a forwarded command is not an influence".into());
                }
            }
            BorderMessage::Final {
                transfer,
                bodies,
                influences,
            } => {
                let t = transfer;
                if t.elements.is_empty() || t.elements.len() > TRANSFER_ELEMENTS_MAX {
                    return bad(format!("transfer of {} elements", t.elements.len()));
                }
                if bodies.len() > TRANSFER_ELEMENTS_MAX || t.bodies.len() > TRANSFER_ELEMENTS_MAX {
                    return bad("too many bodies in transfer".into());
                }
                if t.timers.len() > TRANSFER_PENDING_MAX || t.mailbox.len() > TRANSFER_PENDING_MAX {
                    return bad("too many pending entries in transfer".into());
                }
                if influences.len() > INFLUENCES_MAX {
                    return bad(format!("{} influences", influences.len()));
                }
                let mut ids: Vec<ElementId> = t.elements.iter().map(|e| e.id).collect();
                for e in &t.elements[1..] {
                    match e.parent {
                        Some(p) if ids.contains(&p) => {}
                        _ => return bad(format!("element {} is outside the subtree", e.id)),
                    }
                }
                ids.sort();
                if ids.windows(2).any(|w| w[0] == w[1]) {
                    return bad("repeated element in transfer".into());
                }
                if let Some(a) = &t.player {
                    let root = &t.elements[0];
                    if root.kind != crate::state::ElementKind::Avatar
                        || root.owner != Some(a.player)
                    {
                        return bad("a player travels only with their avatar".into());
                    }
                    if a.from != self.from || a.name.len() > ARRIVAL_NAME_BYTES_MAX {
                        return bad("arrival from another region or name too long".into());
                    }
                }
                let inside = |id: &ElementId| ids.binary_search(id).is_ok();
                if !t.bodies.iter().all(|(id, b)| inside(id) && b.spec.valid()) {
                    return bad("transfer body outside the subtree or invalid".into());
                }
                if !bodies.iter().all(|b| inside(&b.id) && b.spec.valid()) {
                    return bad("handoff body outside the subtree or invalid".into());
                }
                if bodies.len() != t.bodies.len()
                    || !bodies.iter().zip(&t.bodies).all(|(b, (id, _))| b.id == *id)
                {
                    return bad("physics and sim bodies differ".into());
                }
                if !t.timers.iter().all(|(_, s, _)| inside(s))
                    || !t.mailbox.iter().all(|p| inside(&p.to))
                {
                    return bad("pending entry outside the subtree".into());
                }
                if !influences.windows(2).all(|w| w[0].0 < w[1].0)
                    || influences.first().is_some_and(|i| i.0 == 0)
                {
                    return bad("influences not numbered 1.. in order".into());
                }
                if !influences.iter().all(|(_, c)| inside(&c.id()) && c.valid()) {
                    return bad("influence for a body outside the subtree".into());
                }
            }
        }
        Ok(())
    }
}

/// Encodes an envelope (`MTPB || version || postcard`).
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    snapshot::encode(BORDER_MAGIC, envelope)
}

/// Decodes and validates an envelope from untrusted bytes. Anything
/// malformed, non-canonical, oversized or out of range is refused with a
/// clear error.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, BorderError> {
    if bytes.len() > BORDER_BYTES_MAX {
        return Err(BorderError::TooLarge(bytes.len()));
    }
    let envelope: Envelope = snapshot::decode(BORDER_MAGIC, bytes)?;
    envelope.validate()?;
    Ok(envelope)
}
