//! JSON views of the world for the HTTP API and the viewer.

use serde::Serialize;

use metatopia_sim::admin;
use metatopia_sim::state::{ChatLine, DAY_MS, Element, ElementKind, Role, Speaker, State};
use metatopia_sim::{ElementId, Fx, PlayerId, Settings, Sim, Vec3};

use crate::faults::Fault;
use metatopia_sim::hex;

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
    /// The replica group hosting the region (set by the HTTP API).
    pub group: Option<GroupView>,
    /// How the node is doing (set by the HTTP API).
    pub health: Option<Health>,
    /// Traffic with neighbour regions (set by the HTTP API; `null`
    /// without neighbours).
    pub border: Option<BorderStatus>,
}

/// `GET /api/status`'s `border`: hand-offs, chat lines and script
/// messages with neighbours (the region's counters, in its state), and
/// per neighbour the border sets this member exchanged (its own
/// counters since start) and the ghosts held of its bodies.
#[derive(Debug, Serialize)]
pub struct BorderStatus {
    /// Groups handed to neighbours.
    pub handoffs_out: u64,
    /// Groups taken from neighbours.
    pub handoffs_in: u64,
    /// Our offers that neighbours refused.
    pub handoffs_refused: u64,
    /// Hand-offs undone on a negative verdict (or given one here).
    pub handoffs_aborted: u64,
    /// Offers waiting for their switch tick, and groups released and
    /// kept until the target's verdict.
    pub handoffs_pending: u64,
    /// Chat lines and script messages with all neighbours (the region
    /// counts them together, not per neighbour).
    pub messages: metatopia_physics::region::RemoteCounts,
    /// Of those, queued for neighbours and not yet acknowledged.
    pub messages_unacked: u64,
    /// Per neighbour, by region id.
    pub neighbours: Vec<NeighbourStatus>,
}

/// One neighbour in [`BorderStatus`].
#[derive(Debug, Serialize)]
pub struct NeighbourStatus {
    /// Its region id.
    pub region: u32,
    /// Ghosts of its bodies held after the last published tick.
    pub ghosts: u64,
    /// Border sets exchanged with it since this node started.
    pub sets: crate::replica::core::SetCounts,
}

/// The border status of `p`, `None` for a region without neighbours.
pub fn border_status(p: &crate::world::Published) -> Option<BorderStatus> {
    p.ghosts.bounds?;
    let b = &p.border;
    Some(BorderStatus {
        handoffs_out: b.handoffs_out,
        handoffs_in: b.handoffs_in,
        handoffs_refused: b.refused,
        handoffs_aborted: b.aborted,
        handoffs_pending: b.pending + b.kept,
        messages: b.remote,
        messages_unacked: b.remote_unacked,
        neighbours: p
            .ghosts
            .neighbours
            .iter()
            .map(|(r, _)| NeighbourStatus {
                region: r.0,
                ghosts: p.ghosts.held.iter().filter(|(o, _)| o == r).count() as u64,
                sets: p.sets.get(r).copied().unwrap_or_default(),
            })
            .collect(),
    })
}

/// How the node is doing: the numbers `metatopia status` shows on one
/// line (`/metrics` has them all).
#[derive(Debug, Serialize)]
pub struct Health {
    /// The last tick's execution and commit time, ms.
    pub tick_ms_last: f64,
    /// The mean since start, ms.
    pub tick_ms_mean: f64,
    /// Region stream subscribers now.
    pub stream_subscribers: u64,
    /// HTTP connections open now.
    pub http_connections: u64,
    /// API inputs that did not commit since start (limits, signatures,
    /// the sim's rejections).
    pub inputs_refused: u64,
    /// Script faults since start.
    pub script_faults: u64,
    /// Blobs and bytes in the content store.
    pub content_blobs: u64,
    /// See `content_blobs`.
    pub content_bytes: u64,
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
    /// Why the temp-admin rule names whom it names, and what comes next.
    pub temp_admin_rule: TempAdminRule,
}

/// The temp-admin rule explained (see `metatopia_sim::admin`).
#[derive(Debug, Serialize)]
pub struct TempAdminRule {
    /// The temp admin the rule names now.
    pub temp_admin: Option<PlayerRef>,
    /// No temp admin while a permanent admin logged in within this many days.
    pub absence_days: u32,
    /// The temp admin is the oldest player who logged in within this many days.
    pub recent_days: u32,
    /// The newest login of a permanent admin (not banned), the one the rule
    /// counts.
    pub last_admin_login: Option<LoginView>,
    /// What happens next if nobody logs in.
    pub next_change: Option<ChangeView>,
    /// The same in one sentence.
    pub summary: String,
}

/// A login the rule counts.
#[derive(Debug, Serialize)]
pub struct LoginView {
    /// Who.
    pub player: PlayerRef,
    /// Sim time, ms.
    pub at_ms: u64,
    /// Whole days before the region's sim time.
    pub days_ago: u64,
}

/// The rule's next change.
#[derive(Debug, Serialize)]
pub struct ChangeView {
    /// Sim time of the change, ms.
    pub at_ms: u64,
    /// Days until then, rounded up.
    pub days: u64,
    /// The temp admin from then on; `None`: the role ends.
    pub temp_admin: Option<PlayerRef>,
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
    /// Why the temp-admin rule names whom it names, and what comes next.
    pub temp_admin_rule: TempAdminRule,
    /// The most recent script faults since the node started, oldest first
    /// (at most [`crate::faults::RECENT_MAX`]).
    pub script_faults: Vec<Fault>,
    /// Every element.
    pub elements: Vec<ElementView>,
    /// Every player the region knows.
    pub players: Vec<PlayerView>,
    /// Recent chat, oldest first.
    pub chat: Vec<ChatView>,
    /// Where the region lies among its neighbours, and the ghosts of
    /// their bodies near the border; `null` for a region without
    /// neighbours.
    pub border: Option<BorderView>,
}

/// `RegionState.border`: the region's place in the world, its
/// neighbours' and the ghosts it holds of their bodies. Everything in
/// world coordinates: an element's `pos` is relative to `origin`.
#[derive(Debug, Serialize)]
pub struct BorderView {
    /// This region's box's lower corner, world coordinates (its
    /// elements' positions are relative to it).
    pub origin: Vec3,
    /// Its box's upper corner.
    pub max: Vec3,
    /// The neighbours' boxes, by region id.
    pub neighbours: Vec<NeighbourView>,
    /// The ghosts held after the tick, by owner then id.
    pub ghosts: Vec<GhostView>,
}

/// A neighbour region's box.
#[derive(Debug, Serialize)]
pub struct NeighbourView {
    /// Its id.
    pub region: u32,
    /// Lower corner, world coordinates.
    pub min: Vec3,
    /// Upper corner.
    pub max: Vec3,
}

/// A ghost: a neighbour's body near the border as the neighbour last
/// sent it (one tick old).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct GhostView {
    /// The element id (in the owner's state).
    pub id: ElementId,
    /// The region that owns it.
    pub region: u32,
    /// Its centre, world coordinates.
    pub pos: Vec3,
    /// Its velocity.
    pub vel: Vec3,
    /// Its rotation quaternion `[x, y, z, w]`; `null` for a ball (whose
    /// rotation does not show).
    pub rot: Option<[Fx; 4]>,
    /// Shape, material and kind.
    pub spec: metatopia_sim::physics::BodySpec,
}

/// A ghost as the API shows it.
pub fn ghost_view(owner: metatopia_sim::RegionId, g: &metatopia_sim::physics::Ghost) -> GhostView {
    let ball = matches!(g.spec.shape, metatopia_sim::physics::Shape::Ball { .. });
    GhostView {
        id: g.id,
        region: owner.0,
        pos: g.motion.pos,
        vel: g.motion.vel,
        rot: (!ball).then_some(g.motion.rot),
        spec: g.spec,
    }
}

/// The border view of `ghosts`, `None` without neighbours.
pub fn border_view(ghosts: &crate::replica::core::Ghosts) -> Option<BorderView> {
    let bounds = ghosts.bounds?;
    Some(BorderView {
        origin: bounds.min,
        max: bounds.max,
        neighbours: ghosts
            .neighbours
            .iter()
            .map(|(r, b)| NeighbourView {
                region: r.0,
                min: b.min,
                max: b.max,
            })
            .collect(),
        ghosts: ghosts.held.iter().map(|(o, g)| ghost_view(*o, g)).collect(),
    })
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
    /// The attached script's standing, if any.
    pub script_status: Option<ScriptStatus>,
    /// Its physics body (spec, velocity, resting), if it has one.
    pub body: Option<metatopia_sim::physics::Body>,
    /// Its asset references (hex blake3; `GET /assets/{hash}` serves them).
    pub assets: AssetsView,
}

/// An element's asset references, as hex hashes.
#[derive(Debug, Serialize)]
pub struct AssetsView {
    /// Its mesh, if any.
    pub mesh: Option<String>,
    /// Its texture, if any.
    pub texture: Option<String>,
}

/// An attached script's standing.
#[derive(Debug, Serialize)]
pub struct ScriptStatus {
    /// Faults in a row (a call that succeeds resets it).
    pub faults: u32,
    /// Suspended after `script_faults_max` faults in a row: it gets no events.
    pub suspended: bool,
    /// The newest fault's message among the recent faults, if any.
    pub last_error: Option<String>,
    /// How to resume it, when suspended.
    pub resume: Option<String>,
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

/// A chat line as the API shows it.
pub(crate) fn chat_view(state: &State, line: &ChatLine) -> ChatView {
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
            temp_admin_rule: temp_admin_rule(s),
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
        group: None,
        health: None,
        border: None,
    }
}

fn player_ref(state: &State, id: PlayerId) -> PlayerRef {
    PlayerRef {
        id,
        name: state
            .players
            .get(&id)
            .map(|p| p.name.clone())
            .unwrap_or_default(),
    }
}

/// A player's name for a sentence: the name, else the short key.
fn who(state: &State, id: PlayerId) -> String {
    match state.players.get(&id) {
        Some(p) if !p.name.is_empty() => p.name.clone(),
        _ => id.to_string(),
    }
}

/// "1 day", "3 days".
fn days(n: u64) -> String {
    if n == 1 {
        "1 day".into()
    } else {
        format!("{n} days")
    }
}

/// The temp-admin rule explained at the state's sim time.
pub fn temp_admin_rule(state: &State) -> TempAdminRule {
    let e = admin::explain(state);
    let now = state.time_ms;
    let st = &state.settings;
    let last_admin_login = e.last_admin_login.map(|l| LoginView {
        player: player_ref(state, l.player),
        at_ms: l.at_ms,
        days_ago: now.saturating_sub(l.at_ms) / DAY_MS,
    });
    let next_change = e.next_change.map(|c| ChangeView {
        at_ms: c.at_ms,
        days: c.at_ms.saturating_sub(now).div_ceil(DAY_MS),
        temp_admin: c.temp_admin.map(|p| player_ref(state, p)),
    });
    let admin = match &last_admin_login {
        Some(l) => format!(
            "the last admin login was {}'s, {} ago",
            who(state, l.player.id),
            days(l.days_ago)
        ),
        None => "no permanent admin has logged in".into(),
    };
    let mut summary = match e.temp_admin {
        Some(p) => format!(
            "{} is temp admin: no permanent admin logged in within {} ({admin}), and {} is the oldest player who logged in within {}",
            who(state, p),
            days(u64::from(st.temp_admin_absence_days)),
            who(state, p),
            days(u64::from(st.temp_admin_recent_days)),
        ),
        None if last_admin_login.as_ref().is_some_and(|l| {
            now.saturating_sub(l.at_ms) <= u64::from(st.temp_admin_absence_days) * DAY_MS
        }) =>
        {
            format!(
                "no temp admin: a permanent admin logged in within {} ({admin})",
                days(u64::from(st.temp_admin_absence_days))
            )
        }
        None => format!(
            "no temp admin: no permanent admin logged in within {} ({admin}), and nobody else logged in within {}",
            days(u64::from(st.temp_admin_absence_days)),
            days(u64::from(st.temp_admin_recent_days))
        ),
    };
    match &next_change {
        Some(c) => summary.push_str(&match &c.temp_admin {
            Some(p) => format!(
                "; in {} the role passes to {} unless someone logs in",
                days(c.days),
                who(state, p.id)
            ),
            None => format!("; in {} the role ends unless someone logs in", days(c.days)),
        }),
        None => summary.push_str("; this changes only when someone logs in"),
    }
    TempAdminRule {
        temp_admin: e.temp_admin.map(|p| player_ref(state, p)),
        absence_days: st.temp_admin_absence_days,
        recent_days: st.temp_admin_recent_days,
        last_admin_login,
        next_change,
        summary,
    }
}

/// How to resume the suspended script of `e`.
fn resume_hint(e: &Element, source: &[u8; 32]) -> String {
    format!(
        "attach a script again (its owner or an admin): `metatopia script push FILE --object {id}` uploads a new version, or the action {{\"do\":\"attach\",\"element\":\"{id}\",\"script\":\"{hash}\"}} restarts this one",
        id = e.id,
        hash = hex(source)
    )
}

/// An element as the API shows it; `faults` as in [`region_state`].
pub(crate) fn element_view(s: &State, e: &Element, faults: &[Fault]) -> ElementView {
    ElementView {
        id: e.id,
        parent: e.parent,
        kind: e.kind,
        owner: e.owner,
        name: e.name.clone(),
        pos: e.pos,
        children: e.children.clone(),
        script: e.script.as_ref().map(|sl| hex(&sl.source)),
        script_status: e.script.as_ref().map(|sl| ScriptStatus {
            faults: sl.faults,
            suspended: sl.suspended,
            last_error: faults
                .iter()
                .rev()
                .find(|f| f.script == e.id)
                .map(|f| f.error.clone()),
            resume: sl.suspended.then(|| resume_hint(e, &sl.source)),
        }),
        body: s.bodies.get(&e.id).cloned(),
        assets: AssetsView {
            mesh: e.assets.mesh.map(|h| hex(&h)),
            texture: e.assets.texture.map(|h| hex(&h)),
        },
    }
}

/// The region state view; `faults` are the node's recent script faults,
/// oldest first.
pub fn region_state(p: &crate::world::Published, faults: &[Fault]) -> RegionState {
    let (sim, hash) = (&p.sim, &p.hash);
    let s = sim.state();
    RegionState {
        region: s.region.0,
        tick: s.tick,
        state_hash: hex(hash),
        time_ms: s.time_ms,
        settings: s.settings.clone(),
        temp_admin: s.temp_admin,
        temp_admin_rule: temp_admin_rule(s),
        script_faults: faults.to_vec(),
        elements: s
            .elements
            .values()
            .map(|e| element_view(s, e, faults))
            .collect(),
        players: s.players.values().map(player_view).collect(),
        chat: s.chat.iter().map(|l| chat_view(s, l)).collect(),
        border: border_view(&p.ghosts),
    }
}

/// A player as the API shows it.
pub(crate) fn player_view(p: &metatopia_sim::state::Player) -> PlayerView {
    PlayerView {
        id: p.id,
        name: p.name.clone(),
        role: p.role,
        online: p.online,
        avatar: p.avatar,
        first_join_ms: p.first_join_ms,
        last_login_ms: p.last_login_ms,
    }
}

/// The replica group as this member sees it.
#[derive(Debug, Serialize)]
pub struct GroupView {
    /// The members (hex node keys), in the manifest's order.
    pub members: Vec<String>,
    /// This node.
    pub me: Option<String>,
    /// Recent signed checkpoints, newest first.
    pub checkpoints: Vec<CheckpointView>,
    /// This member's divergence, if it found one and has not resynced.
    pub desync: Option<DesyncView>,
    /// The last divergence it resynced from.
    pub last_desync: Option<DesyncView>,
    /// Resyncs since start.
    pub resyncs: u64,
    /// The primary (hex node key), as the engine last named it.
    pub primary: Option<String>,
    /// The view in which the engine named it.
    pub view: Option<u64>,
    /// Where the members listen (`HEX@MULTIADDR`).
    pub addresses: Vec<String>,
    /// This node follows the group as an observer.
    pub observer: bool,
    /// Border traffic with neighbour groups since start.
    pub border: crate::world::BorderTraffic,
    /// Every peer's link (hex key → link), members, observers and
    /// neighbours' members alike.
    pub links: std::collections::BTreeMap<String, LinkView>,
    /// The neighbour regions and their hosting groups: members (hex keys,
    /// empty while unknown) and where the group came from (`config`,
    /// `overlay`, or `unknown` while it is looked up in the overlay).
    pub neighbours: Vec<crate::world::NeighbourStatus>,
}

/// A peer's link as this node sees it.
#[derive(Debug, Serialize)]
pub struct LinkView {
    /// The counters.
    #[serde(flatten)]
    pub link: crate::replica::net::Link,
    /// Milliseconds since the last frame from the peer was read.
    pub last_in_ms_ago: Option<u64>,
    /// Milliseconds since the last frame to the peer was written.
    pub last_out_ms_ago: Option<u64>,
}

/// One checkpoint tick.
#[derive(Debug, Serialize)]
pub struct CheckpointView {
    /// The tick (the hashes are the region after it).
    pub tick: u64,
    /// Members whose signed checkpoint this member has seen.
    pub signed: usize,
    /// Whether they all give the same hash.
    pub agree: bool,
    /// Member (hex) → region hash (hex).
    pub hashes: std::collections::BTreeMap<String, String>,
}

/// A divergence.
#[derive(Debug, Serialize)]
pub struct DesyncView {
    /// The checkpoint tick.
    pub tick: u64,
    /// This member's hash.
    pub mine: String,
    /// The hash f + 1 others signed.
    pub theirs: String,
    /// What differed, field by field (`part field: mine != theirs`); set
    /// once it resynced and compared its state with the group's.
    pub differences: Vec<String>,
}

/// The group view of a status.
pub fn group(g: &crate::world::GroupStatus) -> GroupView {
    GroupView {
        members: g.members.iter().map(|m| hex(&m.0)).collect(),
        me: g.me.map(|m| hex(&m.0)),
        checkpoints: g
            .checkpoints
            .iter()
            .rev()
            .map(|(tick, by)| {
                let mut hashes = by.values();
                let first = hashes.next();
                CheckpointView {
                    tick: *tick,
                    signed: by.len(),
                    agree: hashes.all(|h| Some(h) == first),
                    hashes: by.iter().map(|(m, h)| (hex(&m.0), hex(h))).collect(),
                }
            })
            .collect(),
        desync: g.desync.as_ref().map(|d| DesyncView {
            tick: d.tick,
            mine: hex(&d.mine),
            theirs: hex(&d.theirs),
            differences: Vec::new(),
        }),
        last_desync: g.last_desync.as_ref().map(|(d, differences)| DesyncView {
            tick: d.tick,
            mine: hex(&d.mine),
            theirs: hex(&d.theirs),
            differences: differences.clone(),
        }),
        resyncs: g.resyncs,
        primary: g.primary.map(|(_, p)| hex(&p.0)),
        view: g.primary.map(|(v, _)| v),
        addresses: g.addresses.clone(),
        observer: g.observer,
        border: g.border,
        links: {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let ago = |t: Option<u64>| t.map(|t| now.saturating_sub(t));
            g.links
                .iter()
                .map(|(k, l)| {
                    let view = LinkView {
                        link: *l,
                        last_in_ms_ago: ago(l.last_in_ms),
                        last_out_ms_ago: ago(l.last_out_ms),
                    };
                    (hex(&k.0), view)
                })
                .collect()
        },
        neighbours: g.neighbours.clone(),
    }
}
