//! The state of one sim (one region): elements, players, chat, settings.
//!
//! `State` is built from persistent maps (`imbl`), so `clone` is a pointer
//! copy and a tick shares every untouched node with the state before it.
//! Holding a few recent states for rollback costs only what changed.

use std::collections::BTreeMap;

use imbl::{OrdMap, OrdSet, Vector};
use serde::{Deserialize, Serialize};

use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, PlayerId, RegionId};
use crate::table::Table;

pub use crate::script_event::{Pending, Speaker};
pub use element_hash::element_hash;

mod element_hash;

/// Milliseconds in a day of sim time.
pub const DAY_MS: u64 = 86_400_000;

/// What an element is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum ElementKind {
    /// The root of a region's hierarchy (its parent is the world).
    Region,
    /// A free-standing object.
    Object,
    /// A part of an object.
    Part,
    /// A player's avatar.
    Avatar,
}

/// A script attached to an element. The sim keeps what every replica must
/// agree on; the host (Lua, in `metatopia-scripts`) keeps compiled code.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ScriptSlot {
    /// blake3 of the script's source text.
    pub source: [u8; 32],
    /// The script's persistent state, encoded by the host.
    pub state: Vec<u8>,
    /// Faults in a row (errors, budget overruns, rejected outputs).
    pub faults: u32,
    /// Set after too many faults in a row; a suspended script gets no events.
    pub suspended: bool,
}

/// One node of the world hierarchy.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Element {
    /// The element's id.
    pub id: ElementId,
    /// Its parent; `None` only for the region root.
    pub parent: Option<ElementId>,
    /// What it is.
    pub kind: ElementKind,
    /// The region that owns (simulates) it; exactly one.
    pub owner_region: RegionId,
    /// The player who owns it (`None` for the region root).
    pub owner: Option<PlayerId>,
    /// Display name.
    pub name: String,
    /// Position in region coordinates.
    pub pos: Vec3,
    /// Children, sorted by id.
    pub children: Vec<ElementId>,
    /// The attached script, if any.
    pub script: Option<ScriptSlot>,
    /// The assets it shows, by blake3 of their bytes (ADR 0012).
    pub assets: Assets,
}

/// An element's asset references: blake3 hashes of blobs in the content
/// store, fetched by peers that lack them. The hash is all the sim
/// knows; the bytes never enter the state.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Assets {
    /// Its mesh (e.g. a glTF binary), if any.
    pub mesh: Option<[u8; 32]>,
    /// Its texture, if any.
    pub texture: Option<[u8; 32]>,
}

impl Assets {
    /// The hashes referenced, mesh first.
    pub fn hashes(&self) -> impl Iterator<Item = [u8; 32]> {
        self.mesh.into_iter().chain(self.texture)
    }
}

impl crate::table::EntryHash for Element {
    fn entry_hash(&self) -> [u8; 32] {
        element_hash(self)
    }
}

/// A player's standing in a region.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum Role {
    /// An ordinary player.
    Member,
    /// A permanent admin.
    Admin,
}

/// What a region knows of a player.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Player {
    /// The player's key.
    pub id: PlayerId,
    /// The name given at the last join.
    pub name: String,
    /// Sim time of the first join; `None` for a founder who has not joined yet.
    pub first_join_ms: Option<u64>,
    /// Sim time of the last join (a login is a committed join input).
    pub last_login_ms: Option<u64>,
    /// Sim time of the last login made while a permanent admin (or of being
    /// made permanent admin while online); the temp-admin rule reads this.
    pub last_admin_login_ms: Option<u64>,
    /// Member or permanent admin.
    pub role: Role,
    /// Whether the player is in the region now.
    pub online: bool,
    /// The avatar while online.
    pub avatar: Option<ElementId>,
    /// The highest input sequence number seen; lower or equal ones are dropped.
    pub last_seq: u64,
    /// The region the player's avatar crossed into when it last left this
    /// region over a border, until the player joins or arrives here again:
    /// their inputs here are refused with
    /// [`Rejection::Moved`](crate::input::Rejection::Moved).
    pub moved_to: Option<RegionId>,
}

impl Player {
    /// A player this region has not seen: offline, no avatar, a member
    /// (or `role`), nothing joined or seen yet.
    pub fn unseen(id: PlayerId, role: Role) -> Player {
        Player {
            id,
            name: String::new(),
            first_join_ms: None,
            last_login_ms: None,
            last_admin_login_ms: None,
            role,
            online: false,
            avatar: None,
            last_seq: 0,
            moved_to: None,
        }
    }
}

impl crate::table::EntryHash for Player {}

/// One line of chat.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChatLine {
    /// The tick it was said.
    pub tick: u64,
    /// Sim time it was said.
    pub time_ms: u64,
    /// Who said it.
    pub from: Speaker,
    /// Where it was said from.
    pub pos: Vec3,
    /// Hearing radius; `None` is the whole region.
    pub radius: Option<Fx>,
    /// The text.
    pub text: String,
}

/// Region settings. Changed only by admin inputs, so every replica agrees.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// Display name.
    pub name: String,
    /// Ticks per second of sim time.
    pub tick_rate_hz: u32,
    /// X: days without a permanent admin login before a temp admin is chosen.
    pub temp_admin_absence_days: u32,
    /// Y: a temp admin must have logged in within this many days.
    pub temp_admin_recent_days: u32,
    /// The region spans `[0, size)` on each axis.
    pub size: Vec3,
    /// Where avatars appear.
    pub spawn: Vec3,
    /// Most elements the region holds.
    pub elements_max: u32,
    /// Deepest hierarchy below the region root.
    pub depth_max: u32,
    /// Most players online at once.
    pub players_online_max: u32,
    /// Chat lines kept in history.
    pub chat_history_max: u32,
    /// Longest chat line, in bytes.
    pub text_bytes_max: u32,
    /// Longest name, in bytes.
    pub name_bytes_max: u32,
    /// Most inputs one player may have in one tick's batch.
    pub inputs_per_player_per_tick_max: u32,
    /// Script faults in a row before the script is suspended.
    pub script_faults_max: u32,
    /// Most messages one script may send in one tick.
    pub script_sends_per_tick_max: u32,
    /// Most messages waiting for delivery in the region.
    pub mailbox_max: u32,
    /// Most events one script handles in one tick; the rest are dropped.
    pub script_inbox_max: u32,
    /// Largest script state, in bytes.
    pub script_state_bytes_max: u32,
    /// Most timers pending in the region.
    pub timers_max: u32,
    /// VM instructions one script handler may run (counted in steps of 1000).
    pub script_instructions_max: u32,
    /// Bytes of live Lua data one script call may hold.
    pub script_memory_bytes_max: u32,
    /// SPDX licence identifiers accepted for uploaded scripts.
    pub script_licences: Vec<String>,
    /// Fastest walking speed an avatar may be given, m/s (`Walk`).
    pub walk_speed_max: Fx,
}

/// The copyleft licences a new region accepts for scripts.
pub const DEFAULT_SCRIPT_LICENCES: &[&str] = &[
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "MPL-2.0",
    "EUPL-1.2",
    "CC-BY-SA-4.0",
    "OSL-3.0",
];

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            name: "Home".into(),
            tick_rate_hz: 20,
            temp_admin_absence_days: 30,
            temp_admin_recent_days: 7,
            size: Vec3::from_ints(256, 256, 4096),
            spawn: Vec3::from_ints(128, 128, 0),
            elements_max: 100_000,
            depth_max: 16,
            players_online_max: 100,
            chat_history_max: 200,
            text_bytes_max: 1024,
            name_bytes_max: 64,
            inputs_per_player_per_tick_max: 64,
            script_faults_max: 5,
            script_sends_per_tick_max: 16,
            mailbox_max: 100_000,
            script_inbox_max: 256,
            script_state_bytes_max: 65_536,
            timers_max: 100_000,
            script_instructions_max: 1_000_000,
            script_memory_bytes_max: 4 * 1024 * 1024,
            script_licences: DEFAULT_SCRIPT_LICENCES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            walk_speed_max: Fx::from_int(4),
        }
    }
}

/// The whole state of one sim.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct State {
    /// The region this sim runs.
    pub region: RegionId,
    /// The next tick to execute (ticks executed so far).
    pub tick: u64,
    /// Sim time at the last executed tick, milliseconds.
    pub time_ms: u64,
    /// Region settings.
    pub settings: Settings,
    /// The next element counter this region mints.
    pub next_counter: u64,
    /// Every element, by id.
    pub elements: Table<ElementId, Element>,
    /// Elements that carry a script, for event routing.
    #[serde(with = "crate::codec::ord_set")]
    pub scripted: OrdSet<ElementId>,
    /// Every player the region has seen.
    pub players: Table<PlayerId, Player>,
    /// Players who may not join.
    #[serde(with = "crate::codec::ord_set")]
    pub banned: OrdSet<PlayerId>,
    /// The temp admin at the last tick (the temp-admin rule).
    pub temp_admin: Option<PlayerId>,
    /// Recent chat, oldest first, at most `chat_history_max` lines.
    #[serde(with = "crate::codec::vector")]
    pub chat: Vector<ChatLine>,
    /// Events for scripts at the next tick, in the order they were made.
    #[serde(with = "crate::codec::vector")]
    pub mailbox: Vector<Pending>,
    /// Pending timers: (due tick, script, timer id), in order.
    pub timers: crate::timers::Timers,
    /// Physical elements: shape, material, velocity (positions are the
    /// elements' own). Changed by body inputs and physics events.
    pub bodies: Table<ElementId, crate::body::Body>,
    /// Walking avatars and their velocities (m/s, never zero, at most
    /// `walk_speed_max` long), by avatar id: each tick moves them in this
    /// order (ADR 0017).
    #[serde(with = "crate::codec::ord_map")]
    pub walking: OrdMap<ElementId, Vec3>,
}

impl State {
    /// A new region with its root element. `founders` become permanent admins
    /// without having joined yet (their first join records their times).
    pub fn new(region: RegionId, settings: Settings, founders: &[PlayerId]) -> State {
        let root = ElementId { region, counter: 0 };
        let mut elements = Table::new();
        elements.insert(
            root,
            Element {
                id: root,
                parent: None,
                kind: ElementKind::Region,
                owner_region: region,
                owner: None,
                name: settings.name.clone(),
                pos: Vec3::ZERO,
                children: Vec::new(),
                script: None,
                assets: Assets::default(),
            },
        );
        let mut players = Table::new();
        for &id in founders {
            players.insert(id, Player::unseen(id, Role::Admin));
        }
        State {
            region,
            tick: 0,
            time_ms: 0,
            settings,
            next_counter: 1,
            elements,
            scripted: OrdSet::new(),
            players,
            banned: OrdSet::new(),
            temp_admin: None,
            chat: Vector::new(),
            mailbox: Vector::new(),
            timers: crate::timers::Timers::new(),
            bodies: Table::new(),
            walking: OrdMap::new(),
        }
    }

    /// The region root's id.
    pub fn root(&self) -> ElementId {
        ElementId {
            region: self.region,
            counter: 0,
        }
    }

    /// Whether `player` may act as an admin now (permanent or temp).
    pub fn is_admin(&self, player: PlayerId) -> bool {
        self.temp_admin == Some(player)
            || self
                .players
                .get(&player)
                .is_some_and(|p| p.role == Role::Admin)
    }

    /// Whether `ancestor` is `element` or one of its ancestors.
    pub fn is_within(&self, element: ElementId, ancestor: ElementId) -> bool {
        is_within(&self.elements, self.settings.depth_max, element, ancestor)
    }

    /// Whether `pos` lies inside the region's bounds.
    pub fn in_bounds(&self, pos: Vec3) -> bool {
        in_bounds(self.settings.size, pos)
    }

    /// Depth below the region root (root = 0).
    pub fn depth(&self, element: ElementId) -> u32 {
        let mut d = 0u32;
        let mut cur = self.elements.get(&element).and_then(|e| e.parent);
        while let Some(id) = cur {
            d += 1;
            if d > self.settings.depth_max.saturating_add(2) {
                break;
            }
            cur = self.elements.get(&id).and_then(|e| e.parent);
        }
        d
    }

    /// Depth of the deepest element in the subtree rooted at `element`,
    /// counted from `element` (a leaf is 0).
    pub fn subtree_height(&self, element: ElementId) -> u32 {
        self.elements
            .get(&element)
            .map(|e| {
                e.children
                    .iter()
                    .map(|c| 1 + self.subtree_height(*c))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Ids of the subtree rooted at `element`, parents before children.
    pub fn subtree(&self, element: ElementId) -> Vec<ElementId> {
        let mut out = Vec::new();
        let mut stack = vec![element];
        while let Some(id) = stack.pop() {
            if let Some(e) = self.elements.get(&id) {
                out.push(id);
                stack.extend(e.children.iter().rev());
            }
        }
        out
    }

    /// Players online, by id.
    pub fn online(&self) -> impl Iterator<Item = &Player> {
        self.players.values().filter(|p| p.online)
    }

    /// The number of elements, for limits.
    pub fn element_count(&self) -> u64 {
        self.elements.len() as u64
    }

    /// Adds a child element under `parent`, checking the element limit, the
    /// depth limit and the region bounds. Used by the tick and to build a
    /// genesis state.
    pub fn add_child(
        &mut self,
        parent: ElementId,
        kind: ElementKind,
        owner: Option<PlayerId>,
        name: &str,
        pos: Vec3,
    ) -> Result<ElementId, crate::rejection::Rejection> {
        use crate::rejection::Rejection;
        if !self.elements.contains_key(&parent) {
            return Err(Rejection::UnknownElement(parent));
        }
        let max = self.settings.elements_max;
        if self.element_count() >= u64::from(max) {
            return Err(Rejection::OutOfBounds(format!(
                "the region holds its maximum of {max} elements"
            )));
        }
        if !self.in_bounds(pos) {
            return Err(Rejection::OutOfBounds(format!(
                "position {pos} is outside the region"
            )));
        }
        let depth_max = self.settings.depth_max;
        if self.depth(parent) + 1 > depth_max {
            return Err(Rejection::OutOfBounds(format!(
                "hierarchy would be deeper than {depth_max}"
            )));
        }
        let id = ElementId {
            region: self.region,
            counter: self.next_counter,
        };
        self.next_counter += 1;
        let region = self.region;
        self.elements.insert(
            id,
            Element {
                id,
                parent: Some(parent),
                kind,
                owner_region: region,
                owner,
                name: name.to_string(),
                pos,
                children: Vec::new(),
                script: None,
                assets: Assets::default(),
            },
        );
        // Fresh ids are the largest so far: pushing keeps the list sorted.
        self.elements.update(&parent, |p| p.children.push(id));
        Ok(id)
    }

    /// Counts of things, for status views.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("elements", self.elements.len() as u64),
            ("players", self.players.len() as u64),
            ("online", self.online().count() as u64),
            ("scripts", self.scripted.len() as u64),
            ("chat", self.chat.len() as u64),
        ])
    }
}

/// Whether `ancestor` is `element` or one of its ancestors in `elements`.
/// The hierarchy is a tree by construction; the `depth_max + 2` step bound
/// only guards a corrupt snapshot from looping forever.
pub fn is_within(
    elements: &Table<ElementId, Element>,
    depth_max: u32,
    element: ElementId,
    ancestor: ElementId,
) -> bool {
    let mut cur = Some(element);
    let mut steps = 0u32;
    while let Some(id) = cur {
        if id == ancestor {
            return true;
        }
        steps += 1;
        if steps > depth_max.saturating_add(2) {
            return false;
        }
        cur = elements.get(&id).and_then(|e| e.parent);
    }
    false
}

/// Whether `pos` lies inside a region of `size` (it spans `[0, size)`).
pub fn in_bounds(size: Vec3, pos: Vec3) -> bool {
    pos.x >= Fx::ZERO
        && pos.y >= Fx::ZERO
        && pos.z >= Fx::ZERO
        && pos.x < size.x
        && pos.y < size.y
        && pos.z < size.z
}
