//! Inputs (what players ask for), batches (what a replica group agrees on
//! for one tick) and events (what a tick tells players).

use serde::{Deserialize, Serialize};

use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, PlayerId};

pub use crate::rejection::Rejection;

/// One player's command. Inputs are signed by the node layer; the sim sees
/// verified ones.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Input {
    /// Who sends it.
    pub player: PlayerId,
    /// Per-player sequence number; an input whose number is not above the
    /// player's last accepted one is a duplicate or replay and is dropped.
    pub seq: u64,
    /// What it asks for.
    pub kind: InputKind,
}

/// What an input asks for.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum InputKind {
    /// Enter the region (a login). Creates the avatar.
    Join {
        /// Display name.
        name: String,
    },
    /// Leave the region. Removes the avatar.
    Leave,
    /// Move an element the player owns (or any, for admins) to `to`.
    Move {
        /// The element (often the player's avatar).
        element: ElementId,
        /// New position, inside the region.
        to: Vec3,
    },
    /// Chat from the player's avatar.
    Say {
        /// The line.
        text: String,
        /// Hearing radius; `None` is the whole region.
        radius: Option<Fx>,
    },
    /// Touch an element; its script (or its nearest scripted ancestor's) hears it.
    Touch {
        /// The element touched.
        element: ElementId,
    },
    /// Move an element (and its subtree) under a new parent.
    Reparent {
        /// The element to move.
        element: ElementId,
        /// The new parent.
        parent: ElementId,
    },
    /// Create an object (under the region root, or as a part of an object).
    Create {
        /// The parent; `None` is the region root. Under the root it is an
        /// object, under an object a part.
        parent: Option<ElementId>,
        /// Display name.
        name: String,
        /// Position, inside the region.
        pos: Vec3,
    },
    /// Delete an element the player owns, with its subtree.
    Delete {
        /// The element.
        element: ElementId,
    },
    /// Attach a script (by source hash) to an element the player owns,
    /// replacing any script there (its state is kept: hot reload).
    AttachScript {
        /// The element.
        element: ElementId,
        /// blake3 of the source.
        source: [u8; 32],
    },
    /// Remove an element's script.
    DetachScript {
        /// The element.
        element: ElementId,
    },
    /// Admin actions; permanent or temp admins only.
    Admin(AdminAction),
    /// Create an object (or a part) that is a physical body.
    SpawnBody {
        /// The parent; `None` is the region root.
        parent: Option<ElementId>,
        /// Display name.
        name: String,
        /// Centre, inside the region.
        pos: Vec3,
        /// Shape, material and kind.
        body: crate::physics::BodySpec,
        /// Initial linear velocity, m/s.
        vel: Vec3,
    },
    /// Push a body (any player in the region may push).
    Push {
        /// The body.
        element: ElementId,
        /// Impulse, N·s.
        impulse: Vec3,
    },
    /// Set a body's velocity (its owner or an admin).
    SetVelocity {
        /// The body.
        element: ElementId,
        /// Linear velocity, m/s.
        vel: Vec3,
    },
    /// Set the assets an element shows (its owner or an admin): each
    /// reference is replaced, `None` clears it. The hashes need not be
    /// stored anywhere yet; peers fetch the bytes by hash (ADR 0012).
    SetAssets {
        /// The element (not the region root).
        element: ElementId,
        /// blake3 of its mesh, or `None`.
        mesh: Option<[u8; 32]>,
        /// blake3 of its texture, or `None`.
        texture: Option<[u8; 32]>,
    },
    /// Set the walking velocity of the sender's avatar (m/s); zero stops
    /// it. Each tick moves every walking avatar by `vel / tick_rate_hz`
    /// (ADR 0017). A speed above the region's `walk_speed_max` is refused.
    Walk {
        /// Velocity, m/s.
        vel: Vec3,
    },
}

/// What admins may do.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum AdminAction {
    /// Make a player a permanent admin.
    Grant {
        /// The player.
        player: PlayerId,
    },
    /// Make a permanent admin an ordinary player.
    Revoke {
        /// The player.
        player: PlayerId,
    },
    /// Remove a player from the region now (they may join again).
    Kick {
        /// The player.
        player: PlayerId,
    },
    /// Remove a player and refuse their joins.
    Ban {
        /// The player.
        player: PlayerId,
    },
    /// Lift a ban.
    Unban {
        /// The player.
        player: PlayerId,
    },
    /// Change settings; absent fields stay as they are.
    Settings(SettingsPatch),
}

/// A change to region settings.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct SettingsPatch {
    /// Display name.
    pub name: Option<String>,
    /// X, days.
    pub temp_admin_absence_days: Option<u32>,
    /// Y, days.
    pub temp_admin_recent_days: Option<u32>,
    /// Spawn point.
    pub spawn: Option<Vec3>,
    /// Most elements.
    pub elements_max: Option<u32>,
    /// Most players online.
    pub players_online_max: Option<u32>,
    /// Chat history length.
    pub chat_history_max: Option<u32>,
    /// Longest chat line, bytes.
    pub text_bytes_max: Option<u32>,
    /// VM instructions per script handler.
    pub script_instructions_max: Option<u32>,
    /// Bytes of live Lua data per script call.
    pub script_memory_bytes_max: Option<u32>,
    /// Accepted SPDX licence identifiers for scripts.
    pub script_licences: Option<Vec<String>>,
    /// Fastest walk, m/s.
    pub walk_speed_max: Option<Fx>,
}

/// The inputs a replica group agreed on for one tick, with the agreed sim time.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    /// The tick this batch executes; must equal the state's next tick.
    pub tick: u64,
    /// Sim time of this tick, milliseconds; never below the last tick's.
    pub time_ms: u64,
    /// The inputs, in the agreed order.
    pub inputs: Vec<Input>,
}

/// What a tick tells the outside world. Events are output, not state.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Event {
    /// An input was refused.
    Rejected {
        /// The sender.
        player: PlayerId,
        /// The input's sequence number.
        seq: u64,
        /// Why.
        reason: Rejection,
    },
    /// A chat line was said; `listeners` are the online players who hear it.
    Chat {
        /// The line.
        line: crate::state::ChatLine,
        /// Online players within the radius, by id.
        listeners: Vec<PlayerId>,
    },
    /// A player joined.
    Joined {
        /// The player.
        player: PlayerId,
    },
    /// A player left (or was kicked or banned).
    Left {
        /// The player.
        player: PlayerId,
    },
    /// The temp admin changed.
    TempAdmin {
        /// The new temp admin, if any.
        player: Option<PlayerId>,
    },
    /// A player's avatar crossed the border between two regions, with
    /// what it carried: told by the region it left (at the switch) and by
    /// the region it entered (at the same tick). The player's inputs go to
    /// `to` from now on.
    Crossed {
        /// The player.
        player: PlayerId,
        /// The region the avatar left.
        from: crate::id::RegionId,
        /// The region it is in now.
        to: crate::id::RegionId,
    },
    /// A player's avatar did not cross into `to`: the region refused it
    /// (banned, full, ...) or did not adopt it in time. The avatar is
    /// back inside this region, the player still in it.
    CrossRefused {
        /// The player.
        player: PlayerId,
        /// The region it tried to enter.
        to: crate::id::RegionId,
        /// Why.
        reason: crate::physics::Refusal,
    },
    /// A script's handler failed; nothing it did this tick applies.
    ScriptFault {
        /// The script's element.
        script: ElementId,
        /// Its owner, who is told.
        owner: Option<PlayerId>,
        /// What went wrong.
        error: String,
        /// Whether the script is now suspended.
        suspended: bool,
    },
}
