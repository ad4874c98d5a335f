//! JSON views of the world for the HTTP API and the viewer.

use serde::Serialize;

use metatopia_sim::state::{ChatLine, ElementKind, Role, Speaker, State};
use metatopia_sim::{ElementId, Fx, PlayerId, Settings, Sim, Vec3};

use crate::store::hex;

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Ticks executed.
    pub tick: u64,
    /// State hash after the last tick (hex).
    pub state_hash: String,
    /// Sim time of the last tick, ms since the Unix epoch.
    pub time_ms: u64,
    /// Regions this node hosts.
    pub regions: Vec<RegionSummary>,
    /// Players online in them.
    pub players_online: Vec<PlayerRef>,
    /// This node.
    pub node: NodeSummary,
}

/// A region in a status.
#[derive(Debug, Serialize)]
pub struct RegionSummary {
    /// Region id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Elements in it.
    pub elements: u64,
    /// Players online.
    pub players_online: u64,
    /// Current temp admin.
    pub temp_admin: Option<PlayerId>,
}

/// A player reference.
#[derive(Debug, Serialize)]
pub struct PlayerRef {
    /// Key.
    pub id: PlayerId,
    /// Name.
    pub name: String,
}

/// About the node.
#[derive(Debug, Serialize)]
pub struct NodeSummary {
    /// Software version.
    pub version: &'static str,
    /// The local player.
    pub player: PlayerId,
    /// Data directory.
    pub data_dir: String,
}

/// `GET /api/regions/{id}/state`.
#[derive(Debug, Serialize)]
pub struct RegionState {
    /// Region id.
    pub region: u32,
    /// Ticks executed.
    pub tick: u64,
    /// State hash (hex); also the ETag.
    pub state_hash: String,
    /// Sim time, ms.
    pub time_ms: u64,
    /// Settings.
    pub settings: Settings,
    /// Current temp admin.
    pub temp_admin: Option<PlayerId>,
    /// Every element.
    pub elements: Vec<ElementView>,
    /// Every player the region knows.
    pub players: Vec<PlayerView>,
    /// Recent chat, oldest first.
    pub chat: Vec<ChatView>,
}

/// An element.
#[derive(Debug, Serialize)]
pub struct ElementView {
    /// Id.
    pub id: ElementId,
    /// Parent.
    pub parent: Option<ElementId>,
    /// Kind.
    pub kind: ElementKind,
    /// Owning player.
    pub owner: Option<PlayerId>,
    /// Name.
    pub name: String,
    /// Position.
    pub pos: Vec3,
    /// Children.
    pub children: Vec<ElementId>,
    /// Attached script source (hex blake3), if any.
    pub script: Option<String>,
    /// Its physics body (spec, velocity, resting), if it has one.
    pub body: Option<metatopia_sim::physics::Body>,
}

/// A player.
#[derive(Debug, Serialize)]
pub struct PlayerView {
    /// Key.
    pub id: PlayerId,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Online now.
    pub online: bool,
    /// Avatar.
    pub avatar: Option<ElementId>,
    /// First join, ms.
    pub first_join_ms: Option<u64>,
    /// Last login, ms.
    pub last_login_ms: Option<u64>,
}

/// A chat line.
#[derive(Debug, Serialize)]
pub struct ChatView {
    /// Tick.
    pub tick: u64,
    /// Sim time, ms.
    pub time_ms: u64,
    /// Speaker: a player key or a script's element id.
    pub from: String,
    /// Speaker's name, when a player.
    pub name: Option<String>,
    /// Radius, if local chat.
    pub radius: Option<Fx>,
    /// Text.
    pub text: String,
}

fn chat_view(state: &State, line: &ChatLine) -> ChatView {
    let (from, name) = match line.from {
        Speaker::Player(p) => (
            p.to_string(),
            state.players.get(&p).map(|pl| pl.name.clone()),
        ),
        Speaker::Script(e) => (
            e.to_string(),
            state.elements.get(&e).map(|el| el.name.clone()),
        ),
    };
    ChatView {
        tick: line.tick,
        time_ms: line.time_ms,
        from,
        name,
        radius: line.radius,
        text: line.text.clone(),
    }
}

/// The status view.
pub fn status(sim: &Sim, hash: &[u8; 32], player: PlayerId, data_dir: &str) -> Status {
    let s = sim.state();
    Status {
        tick: s.tick,
        state_hash: hex(hash),
        time_ms: s.time_ms,
        regions: vec![RegionSummary {
            id: s.region.0,
            name: s.settings.name.clone(),
            elements: s.element_count(),
            players_online: s.online().count() as u64,
            temp_admin: s.temp_admin,
        }],
        players_online: s
            .online()
            .map(|p| PlayerRef {
                id: p.id,
                name: p.name.clone(),
            })
            .collect(),
        node: NodeSummary {
            version: env!("CARGO_PKG_VERSION"),
            player,
            data_dir: data_dir.to_string(),
        },
    }
}

/// The region state view.
pub fn region_state(sim: &Sim, hash: &[u8; 32]) -> RegionState {
    let s = sim.state();
    RegionState {
        region: s.region.0,
        tick: s.tick,
        state_hash: hex(hash),
        time_ms: s.time_ms,
        settings: s.settings.clone(),
        temp_admin: s.temp_admin,
        elements: s
            .elements
            .values()
            .map(|e| ElementView {
                id: e.id,
                parent: e.parent,
                kind: e.kind,
                owner: e.owner,
                name: e.name.clone(),
                pos: e.pos,
                children: e.children.clone(),
                script: e.script.as_ref().map(|sl| hex(&sl.source)),
                body: s.bodies.get(&e.id).cloned(),
            })
            .collect(),
        players: s
            .players
            .values()
            .map(|p| PlayerView {
                id: p.id,
                name: p.name.clone(),
                role: p.role,
                online: p.online,
                avatar: p.avatar,
                first_join_ms: p.first_join_ms,
                last_login_ms: p.last_login_ms,
            })
            .collect(),
        chat: s.chat.iter().map(|l| chat_view(s, l)).collect(),
    }
}
