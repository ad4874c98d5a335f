//! The region stream: `GET /api/regions/{id}/stream`, a WebSocket that
//! pushes every published tick's changes and events (protocol in
//! `docs/stream.md`).
//!
//! One task, the [`Hub`], follows the world's published ticks and turns
//! each into one frame, computed once for every subscriber: the elements,
//! bodies and players that changed against the tick before
//! ([`metatopia_sim::table::Table::changes`]), the chat said, and the
//! events. Frames wait in one bounded broadcast ring
//! ([`STREAM_LAG_TICKS`]); each subscriber's task copies out only the
//! events addressed to its player. A subscriber that falls further behind
//! than the ring is dropped with close code 4008 and a reason; one whose
//! socket does not take a frame within [`SEND_TIMEOUT`] is cut off. So a
//! slow reader holds no memory of its own and never slows the tick.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tracing::{debug, warn};

use metatopia_sim::state::{Element, State as Region};
use metatopia_sim::table::Change;
use metatopia_sim::{ElementId, Event, PlayerId, hex};

use crate::faults::Faults;
use crate::replica::core::Ghosts;
use crate::view;
use crate::web::{App, error, token_matches};
use crate::world::{Handle, Published};

/// Ticks of frames the hub keeps for its subscribers (3.2 s at 20 Hz); a
/// subscriber further behind is dropped.
pub const STREAM_LAG_TICKS: usize = 64;

/// Longest a subscriber's socket may take to accept one frame.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code for a subscriber that fell behind (application range).
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// One tick's frame, shared by every subscriber.
#[derive(Debug)]
struct Frame {
    /// The region's tick after it (`state.tick`).
    tick: u64,
    body: FrameBody,
}

#[derive(Debug)]
enum FrameBody {
    /// The whole state (`GET .../state`'s body), after a rollback or a
    /// skipped tick.
    Snapshot(String),
    /// A tick frame: the JSON up to the events array's opening bracket,
    /// the events everyone sees, and those addressed to one player.
    Tick {
        head: String,
        public: Vec<String>,
        addressed: Vec<(PlayerId, String)>,
    },
}

impl Frame {
    /// The text sent to a subscriber who is `you`.
    fn text(&self, you: Option<PlayerId>) -> String {
        match &self.body {
            FrameBody::Snapshot(state) => snapshot_text(you, state),
            FrameBody::Tick {
                head,
                public,
                addressed,
            } => {
                let mut out = String::with_capacity(head.len() + 64);
                out.push_str(head);
                let mine = addressed
                    .iter()
                    .filter(|(to, _)| Some(*to) == you)
                    .map(|(_, e)| e);
                for (i, e) in public.iter().chain(mine).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(e);
                }
                out.push_str("]}");
                out
            }
        }
    }
}

fn snapshot_text(you: Option<PlayerId>, state: &str) -> String {
    let you = you.map_or("null".to_string(), |p| format!("\"{p}\""));
    format!("{{\"type\":\"snapshot\",\"you\":{you},\"state\":{state}}}")
}

/// Counters of the stream, for `/metrics`.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Subscribers connected now.
    pub subscribers: AtomicUsize,
    /// Subscribers dropped for falling behind or not reading.
    pub dropped_slow: AtomicU64,
    /// Subscribers refused at the limit.
    pub refused_full: AtomicU64,
    /// Frames the hub built.
    pub frames: AtomicU64,
}

/// The stream's shared end: subscribe to frames, count subscribers, stop.
#[derive(Debug, Clone)]
pub struct Hub {
    frames: broadcast::Sender<Arc<Frame>>,
    stopping: watch::Receiver<bool>,
    stop: Arc<watch::Sender<bool>>,
    subscribers_max: usize,
    /// Counters.
    pub counters: Arc<StreamCounters>,
}

impl Hub {
    /// Starts the hub's task on the current runtime; it follows `world`
    /// until the world stops or [`Hub::stop`].
    pub fn start(world: &Handle, faults: Arc<Faults>, subscribers_max: usize) -> Hub {
        let (frames, _) = broadcast::channel(STREAM_LAG_TICKS);
        let (stop, stopping) = watch::channel(false);
        let hub = Hub {
            frames,
            stopping,
            stop: Arc::new(stop),
            subscribers_max,
            counters: Arc::default(),
        };
        tokio::spawn(follow(world.clone(), faults, hub.clone()));
        hub
    }

    /// Closes every subscriber with 1001 ("the node is stopping") and
    /// refuses new ones.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn stopped(&self) -> bool {
        *self.stopping.borrow()
    }
}

/// The hub's task: one frame per published tick, built only while someone
/// listens.
async fn follow(world: Handle, faults: Arc<Faults>, hub: Hub) {
    let mut ticks = world.subscribe();
    let mut stopping = hub.stopping.clone();
    let mut prev = world.latest();
    let mut rule = rule_json(&prev);
    loop {
        let published = tokio::select! {
            r = ticks.recv() => match r {
                Ok(p) => p,
                // The next tick is not consecutive: it goes out as a snapshot.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(missed = n, "stream hub fell behind the world");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = stopping.changed() => break,
        };
        if hub.frames.receiver_count() > 0 {
            let consecutive = published.sim.tick() == prev.sim.tick() + 1;
            let frame = if consecutive {
                tick_frame(&prev, &published, &faults, &mut rule)
            } else {
                rule = rule_json(&published);
                snapshot_frame(&published, &faults)
            };
            hub.counters.frames.fetch_add(1, Ordering::Relaxed);
            let _ = hub.frames.send(Arc::new(frame));
        }
        prev = published;
    }
    hub.stop();
}

fn rule_json(p: &Published) -> String {
    serde_json::to_string(&view::temp_admin_rule(p.sim.state())).unwrap_or_default()
}

fn state_json(p: &Published, faults: &Faults) -> String {
    serde_json::to_string(&view::region_state(p, &faults.recent())).unwrap_or_default()
}

fn snapshot_frame(p: &Published, faults: &Faults) -> Frame {
    Frame {
        tick: p.sim.tick(),
        body: FrameBody::Snapshot(state_json(p, faults)),
    }
}

/// The frame of `cur`, the tick after `prev`. `rule` is the temp-admin
/// rule's JSON at `prev`; it is sent again only when it changed.
fn tick_frame(prev: &Published, cur: &Published, faults: &Faults, rule: &mut String) -> Frame {
    let (a, b) = (prev.sim.state(), cur.sim.state());
    let recent = faults.recent();
    let mut changed = BTreeSet::new();
    let mut removed = Vec::new();
    for c in b.elements.changes(&a.elements) {
        match c {
            Change::Set(id, _) => {
                changed.insert(*id);
            }
            Change::Removed(id) => removed.push(*id),
        }
    }
    for c in b.bodies.changes(&a.bodies) {
        // A body added or dropped changes its element's view.
        let (Change::Set(id, _) | Change::Removed(id)) = c;
        changed.insert(*id);
    }
    let mut elements = Vec::new();
    let mut moved = Vec::new();
    for id in &changed {
        let Some(e) = b.elements.get(id) else {
            continue;
        };
        match movement(a, b, e) {
            Some(m) => moved.push(m),
            None => elements.push(view::element_view(b, e, &recent)),
        }
    }
    let players: Vec<_> = b
        .players
        .changes(&a.players)
        .into_iter()
        .filter_map(|c| match c {
            Change::Set(_, p) => Some(view::player_view(p)),
            Change::Removed(_) => None,
        })
        .collect();
    let mut chat = Vec::new();
    let mut public = Vec::new();
    let mut addressed = Vec::new();
    for e in cur.events.iter() {
        let value = match e {
            Event::Chat { line, .. } => {
                chat.push(view::chat_view(b, line));
                continue;
            }
            Event::Joined { player } => json!({"event": "joined", "player": player}),
            Event::Left { player } => json!({"event": "left", "player": player}),
            Event::TempAdmin { player } => json!({"event": "temp_admin", "player": player}),
            Event::Crossed { player, from, to } => {
                json!({"event": "crossed", "player": player, "from": from.0, "to": to.0})
            }
            Event::CrossRefused { player, to, reason } => {
                let v = json!({"event": "cross_refused", "to": to.0,
                    "reason": reason.to_string()});
                addressed.push((*player, v.to_string()));
                continue;
            }
            Event::Rejected {
                player,
                seq,
                reason,
            } => {
                let mut v = json!({"event": "rejected", "seq": seq, "reason": reason.to_string()});
                if let metatopia_sim::input::Rejection::Moved(to) = reason {
                    // The client sends the player's inputs there now.
                    v["moved_to"] = json!(to.0);
                }
                addressed.push((*player, v.to_string()));
                continue;
            }
            Event::ScriptFault {
                script,
                owner,
                error,
                suspended,
            } => {
                if let Some(owner) = owner {
                    let v = json!({"event": "script_fault", "element": script,
                        "error": error, "suspended": suspended});
                    addressed.push((*owner, v.to_string()));
                }
                continue;
            }
        };
        public.push(value.to_string());
    }
    let mut head = json!({
        "type": "tick",
        "tick": b.tick,
        "state_hash": hex(&cur.hash),
        "time_ms": b.time_ms,
        "temp_admin": b.temp_admin,
        "elements": elements,
        "moved": moved,
        "removed": removed,
        "players": players,
        "chat": chat,
    });
    if a.settings != b.settings {
        head["settings"] = json!(b.settings);
    }
    ghost_changes(&prev.ghosts, &cur.ghosts, &mut head);
    let new_rule = rule_json(cur);
    if new_rule != *rule {
        head["temp_admin_rule"] = serde_json::from_str(&new_rule).unwrap_or_default();
        *rule = new_rule;
    }
    // Reopen the object to append the events array.
    let mut head = head.to_string();
    head.pop();
    let _ = write!(head, ",\"events\":[");
    Frame {
        tick: b.tick,
        body: FrameBody::Tick {
            head,
            public,
            addressed,
        },
    }
}

/// An element that only moved between `a` and `b` (its position, and its
/// body's velocity and rest), in the tick frame's short form: `[id, x, y,
/// z]`, or `[id, x, y, z, vx, vy, vz, resting]` for a body. `None` when
/// anything else about it changed (or it is new): then the frame carries
/// its whole view. Compared by value, so a field added to an element or a
/// body later can never be dropped from the stream by mistake.
fn movement(a: &Region, b: &Region, e: &Element) -> Option<Value> {
    let before = a.elements.get(&e.id)?;
    let mut only_moved = before.clone();
    only_moved.pos = e.pos;
    if only_moved != *e {
        return None;
    }
    let p = e.pos;
    match (a.bodies.get(&e.id), b.bodies.get(&e.id)) {
        (None, None) => Some(json!([e.id, p.x, p.y, p.z])),
        (Some(was), Some(body)) => {
            let mut only_moved = was.clone();
            only_moved.vel = body.vel;
            only_moved.resting = body.resting;
            (only_moved == *body).then(|| {
                let v = body.vel;
                json!([e.id, p.x, p.y, p.z, v.x, v.y, v.z, body.resting])
            })
        }
        _ => None,
    }
}

/// The ghosts that changed from `a` to `b`, into the tick frame `head`
/// (each key only when not empty, so a region without neighbours sends
/// none): `ghosts`, added or changed whole; `ghosts_moved`, `[id, x, y,
/// z, vx, vy, vz]` (world coordinates) of those whose position or
/// velocity alone changed; `ghosts_gone`, the ids no longer held.
fn ghost_changes(a: &Ghosts, b: &Ghosts, head: &mut Value) {
    if a.held.is_empty() && b.held.is_empty() {
        return;
    }
    let before: BTreeMap<ElementId, view::GhostView> = a
        .held
        .iter()
        .map(|(o, g)| (g.id, view::ghost_view(*o, g)))
        .collect();
    let mut whole = Vec::new();
    let mut moved = Vec::new();
    let mut held = BTreeSet::new();
    for (o, g) in &b.held {
        held.insert(g.id);
        let now = view::ghost_view(*o, g);
        match before.get(&g.id) {
            Some(was) if *was == now => {}
            Some(was) if was.region == now.region && was.rot == now.rot && was.spec == now.spec => {
                let (p, v) = (now.pos, now.vel);
                moved.push(json!([now.id, p.x, p.y, p.z, v.x, v.y, v.z]));
            }
            _ => whole.push(now),
        }
    }
    let gone: Vec<ElementId> = before.into_keys().filter(|id| !held.contains(id)).collect();
    if !whole.is_empty() {
        head["ghosts"] = json!(whole);
    }
    if !moved.is_empty() {
        head["ghosts_moved"] = json!(moved);
    }
    if !gone.is_empty() {
        head["ghosts_gone"] = json!(gone);
    }
}

/// The stream's query: `?token=` makes the subscriber the node's player.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    token: Option<String>,
}

/// `GET /api/regions/{id}/stream`.
pub(crate) async fn route(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if let Err(r) = crate::http::check_region(&app, &id) {
        return *r;
    }
    let you = match q.token {
        None => None,
        Some(t) if token_matches(&app, &t) => Some(app.player),
        Some(_) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "wrong token: leave `token` out for the public stream, or give the node's token (DIR/token)".into(),
            );
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "this route is a WebSocket (docs/stream.md); connect with a WebSocket client: {e}"
                ),
            );
        }
    };
    ws.on_upgrade(move |socket| serve(socket, app, you))
        .into_response()
}

/// Decrements the subscriber count when a subscriber's task ends.
struct Admitted(Arc<StreamCounters>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn close(mut socket: WebSocket, code: u16, reason: String) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}

async fn send(socket: &mut WebSocket, text: String) -> Result<(), &'static str> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("gone"),
        Err(_) => Err("not reading"),
    }
}

/// One subscriber: a snapshot, then every frame after it.
async fn serve(mut socket: WebSocket, app: App, you: Option<PlayerId>) {
    let hub = app.stream.clone();
    let counters = hub.counters.clone();
    if hub.stopped() {
        return close(socket, close_code::AWAY, "the node is stopping".into()).await;
    }
    let n = counters.subscribers.fetch_add(1, Ordering::Relaxed);
    let admitted = Admitted(counters.clone());
    if n >= hub.subscribers_max {
        counters.refused_full.fetch_add(1, Ordering::Relaxed);
        // Not a subscriber: uncounted before the client can see the close.
        drop(admitted);
        let reason = format!(
            "too many stream subscribers ({}, [limits] stream_subscribers_max in node.toml)",
            hub.subscribers_max
        );
        return close(socket, close_code::AGAIN, reason).await;
    }
    // Subscribe before reading the latest state: every frame after that
    // state is then in the queue (docs/stream.md).
    let mut frames = hub.frames.subscribe();
    let mut stopping = hub.stopping.clone();
    let latest = app.world.latest();
    let mut at = latest.sim.tick();
    let first = snapshot_text(you, &state_json(&latest, &app.faults));
    drop(latest);
    if send(&mut socket, first).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            f = frames.recv() => match f {
                Ok(frame) => {
                    let snapshot = matches!(frame.body, FrameBody::Snapshot(_));
                    if !snapshot && frame.tick <= at {
                        continue;
                    }
                    at = frame.tick;
                    if let Err(why) = send(&mut socket, frame.text(you)).await {
                        if why == "not reading" {
                            counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                            warn!("stream subscriber dropped: its socket took no frame in {SEND_TIMEOUT:?}");
                        }
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    counters.dropped_slow.fetch_add(1, Ordering::Relaxed);
                    warn!(behind = n, "stream subscriber dropped: too slow");
                    let reason = format!("too slow: {n} ticks behind, reconnect for a fresh snapshot");
                    return close(socket, CLOSE_TOO_SLOW, reason).await;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return close(socket, close_code::AWAY, "the node is stopping".into()).await;
                }
            },
            m = socket.recv() => match m {
                // Pings are answered by the socket itself; other frames
                // from the client mean nothing.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = stopping.changed() => {
                return close(socket, close_code::AWAY, "the node is stopping".into()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_frame_gives_each_subscriber_its_own_events() {
        let (alice, bob) = (PlayerId([1; 32]), PlayerId([2; 32]));
        let frame = Frame {
            tick: 5,
            body: FrameBody::Tick {
                head: r#"{"type":"tick","tick":5,"events":["#.into(),
                public: vec![r#"{"event":"joined"}"#.into()],
                addressed: vec![
                    (alice, r#"{"event":"rejected","seq":1}"#.into()),
                    (bob, r#"{"event":"rejected","seq":2}"#.into()),
                ],
            },
        };
        let events = |you| {
            let v: serde_json::Value = serde_json::from_str(&frame.text(you)).expect("JSON");
            v["events"].clone()
        };
        assert_eq!(events(None), json!([{"event": "joined"}]));
        assert_eq!(
            events(Some(bob)),
            json!([{"event": "joined"}, {"event": "rejected", "seq": 2}])
        );
        let snapshot = Frame {
            tick: 5,
            body: FrameBody::Snapshot(r#"{"tick":5}"#.into()),
        };
        let v: serde_json::Value = serde_json::from_str(&snapshot.text(Some(alice))).expect("JSON");
        assert_eq!(v["you"], json!(alice.to_string()));
        assert_eq!(v["state"]["tick"], 5);
    }
}
