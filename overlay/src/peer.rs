//! The sans-IO overlay core: one peer's state machine.
//!
//! Messages and `now` (milliseconds, any epoch) go in through
//! [`Peer::handle`], [`Peer::tick`] and the commands; messages and events come
//! out of [`Peer::poll_output`], and [`Peer::next_deadline`] says when to call
//! [`Peer::tick`] again. No sockets, no clocks: the libp2p driver
//! ([`crate::Behaviour`]) and the simulator ([`crate::simnet`]) both run it.
//!
//! State per peer (VoroNet / VON):
//! - Voronoi neighbours (exact, from the local Delaunay triangulation of
//!   every known site, which includes the neighbours' own neighbour lists);
//! - AOI neighbours (within `aoi_radius_mm + aoi_buffer_mm`, VON-style, kept
//!   with hysteresis), of which the close neighbours are those within
//!   `close_radius_mm`;
//! - one long-range link whose target is drawn with Kleinberg's harmonic law
//!   (density ∝ 1/r², so `ln r` is uniform);
//! - back-links: peers whose long-link target lies in my cell; when my cell
//!   shrinks, I hand them over by routing their request onwards.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::geometry::{Exact2d, Geometry};
use crate::wire::{
    CONTACTS_MAX, Contact, IDS_MAX, Message, NodeId, Point, REGIONS_MAX, Rect, RegionId,
    RegionInfo, Route, RouteKind, Shape, Walk, WalkKind,
};

/// Routed messages buffered while a join is in flight.
const EARLY_MAX: usize = 64;

/// Tunables. Defaults suit a world in millimetres with cells of tens of metres.
#[derive(Debug, Clone)]
pub struct Config {
    /// AOI radius: peers keep every peer within it (VON).
    pub aoi_radius_mm: u64,
    /// Extra detection margin around the AOI.
    pub aoi_buffer_mm: u64,
    /// Close-neighbour radius (VoroNet d_min; a subset of the AOI links).
    pub close_radius_mm: u64,
    /// World bounds, used to draw long-link targets.
    pub world: Rect,
    /// Shortest long-link distance (the harmonic law's lower cut-off).
    pub long_link_min_mm: u64,
    /// Heartbeat period; also the period of the neighbour sync.
    pub heartbeat_ms: u64,
    /// Silence after which a link is probed; twice this, it is dead.
    pub failure_timeout_ms: u64,
    /// Join retry period.
    pub join_timeout_ms: u64,
    /// Query deadline (locate, AOI, announce).
    pub query_timeout_ms: u64,
    /// A locate with no answer after this long is routed again (same query
    /// id; the first answer wins). 0 never retries.
    pub query_retry_ms: u64,
    /// Routing hop limit (terminates routing even with stale positions).
    pub hops_max: u16,
    /// Lifetime of a stored region record; owners re-announce at a third.
    pub region_ttl_ms: u64,
    /// Most queries in flight.
    pub queries_max: usize,
    /// Most outputs queued before new ones are dropped.
    pub outbox_max: usize,
    /// Most known sites kept.
    pub known_max: usize,
    /// Long-link redraw period.
    pub long_link_refresh_ms: u64,
    /// Coalesce `Hello`s: neighbour-set changes are announced at most this
    /// long after they happen; 0 sends at once. With the default 50 ms the
    /// simulator's moving peers send about half the bytes at the same
    /// topology consistency (see docs/performance.md). Before joins were
    /// confirmed (see [`Peer::is_joined`]), coalescing let concurrent
    /// joiners be accepted by peers that did not know each other yet, which
    /// left interleaved groups of peers with no link between them.
    pub hello_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        let world = 1_000_000_000; // ±1000 km
        Self {
            aoi_radius_mm: 100_000,
            aoi_buffer_mm: 10_000,
            close_radius_mm: 10_000,
            world: Rect {
                min: Point::new(-world, -world),
                max: Point::new(world, world),
            },
            long_link_min_mm: 1_000,
            heartbeat_ms: 1_000,
            failure_timeout_ms: 3_000,
            join_timeout_ms: 2_000,
            query_timeout_ms: 5_000,
            query_retry_ms: 1_500,
            hops_max: 512,
            region_ttl_ms: 30_000,
            queries_max: 1024,
            outbox_max: 65_536,
            known_max: 2_048,
            long_link_refresh_ms: 60_000,
            hello_delay_ms: 50,
        }
    }
}

/// Where to send a message: the overlay id and the opaque transport address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    /// Overlay id.
    pub id: NodeId,
    /// Transport address (see [`Contact::addr`]).
    pub addr: Vec<u8>,
}

impl From<&Contact> for Dest {
    fn from(c: &Contact) -> Self {
        Self {
            id: c.id,
            addr: c.addr.clone(),
        }
    }
}

/// What the core asks its driver to do, or tells its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to `to`. If it cannot be delivered (dial or stream
    /// failure), call [`Peer::unreachable`] with it.
    Send {
        /// Destination.
        to: Dest,
        /// Message.
        msg: Message,
    },
    /// Something the user asked for happened.
    Event(Event),
}

/// Results for the user of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer is now part of the overlay.
    Joined,
    /// Answer to [`Peer::locate`].
    Located {
        /// Query id.
        query: u64,
        /// The owner of the point.
        owner: Contact,
        /// Regions it knows that cover the point.
        regions: Vec<RegionInfo>,
        /// Hops taken.
        hops: u16,
    },
    /// Answer to [`Peer::aoi`].
    AoiDone {
        /// Query id.
        query: u64,
        /// Peers inside the disc.
        peers: Vec<Contact>,
        /// Cells visited.
        visited: u32,
        /// False if a bound cut the walk short.
        complete: bool,
    },
    /// An [`Peer::announce`] walk finished.
    Announced {
        /// Query id.
        query: u64,
        /// Cells that stored the record.
        visited: u32,
    },
    /// A query had no answer before its deadline.
    QueryFailed {
        /// Query id.
        query: u64,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The peer has not joined (or has left) the overlay.
    #[error("peer is not joined")]
    NotJoined,
    /// `queries_max` queries are in flight.
    #[error("too many queries in flight")]
    TooManyQueries,
    /// The region record's signatures do not verify.
    #[error("the region record is not validly signed by a member of its group")]
    Unsigned,
}

/// Counters for the simulator and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages emitted.
    pub sent: u64,
    /// Outputs dropped because the outbox was full.
    pub dropped_outbox: u64,
    /// Routed messages dropped at the hop limit.
    pub dropped_hops: u64,
    /// Links declared dead (timeout or unreachable).
    pub dead: u64,
    /// Long-link handovers performed.
    pub handovers: u64,
    /// Region records refused: a signature that does not verify, or a
    /// record of another group for a region whose group still announces
    /// (an older record of the same group is dropped, not counted).
    pub regions_refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Joining {
        via: Dest,
        deadline: u64,
    },
    /// The join was accepted; waiting until every Voronoi neighbour has
    /// confirmed (a `Pong` to our `Probe`) that it knows us, so no peer
    /// still claims part of our cell once we own it.
    Confirming {
        deadline: u64,
    },
    Joined,
    Left,
}

#[derive(Debug, Clone)]
struct Entry {
    c: Contact,
    heard_ms: u64,
    probed_ms: Option<u64>,
    /// The Voronoi neighbour list this site last advertised to us.
    adv: Vec<NodeId>,
    /// Ids already introduced to this site since the last heartbeat round
    /// (damps repeated `Introduce` while everyone moves).
    told: BTreeSet<NodeId>,
}

#[derive(Debug, Clone, Copy)]
struct LongLink {
    target: Point,
    peer: Option<NodeId>,
    asked_ms: u64,
    drawn_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryKind {
    Locate,
    Aoi,
    Announce,
}

#[derive(Debug, Clone, Copy)]
struct Query {
    kind: QueryKind,
    deadline: u64,
    /// Locate only: the point, and when to route the query again if no
    /// answer came (a routed message dies with its sender and next hop
    /// when both crash while it is in flight).
    retry: Option<(Point, u64)>,
}

/// One overlay peer (the sans-IO core).
#[derive(Debug)]
pub struct Peer<G: Geometry = Exact2d> {
    cfg: Config,
    geo: G,
    me: Contact,
    rng: ChaCha8Rng,
    phase: Phase,
    known: BTreeMap<NodeId, Entry>,
    vn: BTreeSet<NodeId>,
    an: BTreeSet<NodeId>,
    /// Squared reach of my cell (see [`Geometry::neighbourhood`]).
    reach2: Option<u128>,
    long: Option<LongLink>,
    back: BTreeMap<NodeId, Point>,
    dead: BTreeMap<NodeId, u64>,
    regions: BTreeMap<RegionId, (RegionInfo, u64)>,
    own: BTreeMap<RegionId, RegionInfo>,
    queries: BTreeMap<u64, Query>,
    next_query: u64,
    out: VecDeque<Output>,
    early: Vec<Message>,
    /// Confirming: Voronoi neighbours that were probed / that answered.
    confirm_probed: BTreeSet<NodeId>,
    confirm_acked: BTreeSet<NodeId>,
    hello_vn: bool,
    hello_new: BTreeSet<NodeId>,
    hello_at: Option<u64>,
    next_heartbeat: u64,
    next_announce: u64,
    stats: Stats,
}

impl Peer<Exact2d> {
    /// A peer in exact 2-D mode.
    pub fn new(cfg: Config, me: Contact, seed: u64) -> Self {
        Self::with_geometry(cfg, Exact2d, me, seed)
    }
}

impl<G: Geometry> Peer<G> {
    /// A peer with a chosen geometry.
    pub fn with_geometry(cfg: Config, geo: G, mut me: Contact, seed: u64) -> Self {
        me.pos = Point::new(me.pos.x, me.pos.y);
        Self {
            cfg,
            geo,
            me,
            rng: ChaCha8Rng::seed_from_u64(seed),
            phase: Phase::Idle,
            known: BTreeMap::new(),
            vn: BTreeSet::new(),
            an: BTreeSet::new(),
            reach2: None,
            long: None,
            back: BTreeMap::new(),
            dead: BTreeMap::new(),
            regions: BTreeMap::new(),
            own: BTreeMap::new(),
            queries: BTreeMap::new(),
            next_query: 1,
            out: VecDeque::new(),
            early: Vec::new(),
            confirm_probed: BTreeSet::new(),
            confirm_acked: BTreeSet::new(),
            hello_vn: false,
            hello_new: BTreeSet::new(),
            hello_at: None,
            next_heartbeat: 0,
            next_announce: u64::MAX,
            stats: Stats::default(),
        }
    }

    // ---- inspection -------------------------------------------------------

    /// This peer's contact.
    pub fn me(&self) -> &Contact {
        &self.me
    }

    /// Whether the peer is part of the overlay: it was accepted and every
    /// Voronoi neighbour has confirmed (answered a `Probe`) that it knows
    /// it, so no other peer still claims a piece of its cell.
    pub fn is_joined(&self) -> bool {
        self.phase == Phase::Joined
    }

    /// Joined, or accepted and confirming: the peer keeps its neighbours.
    fn active(&self) -> bool {
        matches!(self.phase, Phase::Joined | Phase::Confirming { .. })
    }

    /// Current Voronoi neighbours.
    pub fn voronoi_neighbours(&self) -> &BTreeSet<NodeId> {
        &self.vn
    }

    /// Current AOI neighbours (within radius plus buffer, with hysteresis).
    pub fn aoi_neighbours(&self) -> &BTreeSet<NodeId> {
        &self.an
    }

    /// Close neighbours: known sites within `close_radius_mm`.
    pub fn close_neighbours(&self) -> Vec<NodeId> {
        let r = u128::from(self.cfg.close_radius_mm);
        self.an
            .iter()
            .copied()
            .filter(|id| {
                self.known
                    .get(id)
                    .is_some_and(|e| e.c.pos.dist2(self.me.pos) <= r * r)
            })
            .collect()
    }

    /// The long-link target and, once acknowledged, its owner.
    pub fn long_link(&self) -> Option<(Point, Option<NodeId>)> {
        self.long.map(|l| (l.target, l.peer))
    }

    /// Back-links: peers whose long-link target lies in this cell.
    pub fn back_links(&self) -> &BTreeMap<NodeId, Point> {
        &self.back
    }

    /// Every direct link (Voronoi, AOI, long link, back-links).
    pub fn links(&self) -> BTreeSet<NodeId> {
        let mut s: BTreeSet<NodeId> = self.vn.union(&self.an).copied().collect();
        s.extend(self.back.keys().copied());
        if let Some(p) = self.long.and_then(|l| l.peer) {
            s.insert(p);
        }
        s.retain(|id| self.known.contains_key(id));
        s
    }

    /// What this peer believes about another site.
    pub fn contact(&self, id: NodeId) -> Option<&Contact> {
        self.known.get(&id).map(|e| &e.c)
    }

    /// Whether this peer believes it owns `t` (no link is closer, ties to the
    /// smaller id).
    pub fn owns(&self, t: Point) -> bool {
        self.is_joined() && self.next_hop(t).is_none()
    }

    /// Region records stored here.
    pub fn regions(&self) -> impl Iterator<Item = &RegionInfo> {
        self.regions.values().map(|(r, _)| r)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Peer::tick`] should next run.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.phase {
            Phase::Idle | Phase::Left => None,
            Phase::Joining { deadline, .. } => Some(*deadline),
            Phase::Confirming { deadline } => {
                let d = self.next_heartbeat.min(*deadline);
                Some(self.hello_at.map_or(d, |h| h.min(d)))
            }
            Phase::Joined => {
                let q = self
                    .queries
                    .values()
                    .map(|q| q.retry.map_or(q.deadline, |r| r.1.min(q.deadline)))
                    .min();
                let d = q.map_or(self.next_heartbeat, |q| q.min(self.next_heartbeat));
                Some(self.hello_at.map_or(d, |h| h.min(d)))
            }
        }
    }

    // ---- commands ---------------------------------------------------------

    /// Become the first peer of a new overlay.
    pub fn start_alone(&mut self, now: u64) {
        self.phase = Phase::Joined;
        self.next_heartbeat = now + self.cfg.heartbeat_ms;
        self.out.push_back(Output::Event(Event::Joined));
    }

    /// Join through a known peer: greedy-route a join to the owner of my point.
    pub fn join(&mut self, now: u64, via: Dest) {
        self.phase = Phase::Joining {
            via: via.clone(),
            deadline: now + self.cfg.join_timeout_ms,
        };
        let msg = Message::Route(Route {
            target: self.me.pos,
            origin: self.me.clone(),
            hops: 0,
            kind: RouteKind::Join,
        });
        self.push_send(via, msg);
    }

    /// Leave gracefully: say goodbye to every link.
    pub fn leave(&mut self, _now: u64) {
        let bye = Message::Bye {
            from: self.me.clone(),
        };
        for id in self.links() {
            self.send_to(id, bye.clone());
        }
        self.phase = Phase::Left;
        self.known.clear();
        self.vn.clear();
        self.an.clear();
        self.back.clear();
        self.long = None;
        self.queries.clear();
    }

    /// Move to a new position; neighbours are told (VON move).
    pub fn move_to(&mut self, now: u64, pos: Point) {
        let pos = Point::new(pos.x, pos.y);
        if pos == self.me.pos {
            return;
        }
        self.me.pos = pos;
        self.me.seq = self.me.seq.wrapping_add(1);
        if !self.active() {
            return;
        }
        // A `Hello` sent right now carries the new position to the Voronoi
        // neighbours; a coalesced one would reach them late, so they get
        // the (small) heartbeat too.
        let hello_now = self.recompute(now, false) && self.cfg.hello_delay_ms == 0;
        let hb = Message::Heartbeat {
            from: self.me.clone(),
        };
        for id in self.links() {
            if !(hello_now && self.vn.contains(&id)) {
                self.send_to(id, hb.clone());
            }
        }
    }

    /// Ask which region covers `point` (routes to its owner).
    pub fn locate(&mut self, now: u64, point: Point) -> Result<u64, CommandError> {
        let query = self.new_query(now, QueryKind::Locate)?;
        if self.cfg.query_retry_ms > 0
            && let Some(q) = self.queries.get_mut(&query)
        {
            q.retry = Some((point, now + self.cfg.query_retry_ms));
        }
        self.start_route(now, point, RouteKind::Locate { query });
        Ok(query)
    }

    /// Find every peer within `radius_mm` of `centre`.
    pub fn aoi(&mut self, now: u64, centre: Point, radius_mm: u64) -> Result<u64, CommandError> {
        let query = self.new_query(now, QueryKind::Aoi)?;
        let shape = Shape::Disc {
            centre: Point::new(centre.x, centre.y),
            radius: radius_mm,
        };
        self.start_route(
            now,
            centre,
            RouteKind::Walk {
                query,
                shape,
                kind: WalkKind::Aoi,
            },
        );
        Ok(query)
    }

    /// Announce a hosted region: its record is stored at every cell meeting
    /// its bounds (reached by routing to its centre), and re-announced
    /// every third of `region_ttl_ms` while this peer keeps it.
    pub fn announce(&mut self, now: u64, region: RegionInfo) -> Result<u64, CommandError> {
        if region.signers().is_err() {
            return Err(CommandError::Unsigned);
        }
        self.own.insert(region.id, region.clone());
        self.next_announce = self.next_announce.min(now + self.cfg.region_ttl_ms / 3);
        self.announce_one(now, region)
    }

    /// Stop re-announcing a region (records expire by themselves).
    pub fn withdraw(&mut self, id: RegionId) {
        self.own.remove(&id);
    }

    fn announce_one(&mut self, now: u64, region: RegionInfo) -> Result<u64, CommandError> {
        let query = self.new_query(now, QueryKind::Announce)?;
        let shape = Shape::Rect(region.bounds);
        self.start_route(
            now,
            region.bounds.centre(),
            RouteKind::Walk {
                query,
                shape,
                kind: WalkKind::Announce(Box::new(region)),
            },
        );
        Ok(query)
    }

    fn new_query(&mut self, now: u64, kind: QueryKind) -> Result<u64, CommandError> {
        if self.phase != Phase::Joined {
            return Err(CommandError::NotJoined);
        }
        if self.queries.len() >= self.cfg.queries_max {
            return Err(CommandError::TooManyQueries);
        }
        let q = self.next_query;
        self.next_query += 1;
        self.queries.insert(
            q,
            Query {
                kind,
                deadline: now + self.cfg.query_timeout_ms,
                retry: None,
            },
        );
        Ok(q)
    }

    fn start_route(&mut self, now: u64, target: Point, kind: RouteKind) {
        let r = Route {
            target: Point::new(target.x, target.y),
            origin: self.me.clone(),
            hops: 0,
            kind,
        };
        self.route(now, r);
    }

    // ---- input ------------------------------------------------------------

    /// A message arrived.
    pub fn handle(&mut self, now: u64, msg: Message) {
        self.handle_msg(now, msg);
        self.advance_confirm(now, false);
    }

    /// Long on purpose: one arm per overlay message kind, the protocol table in one place.
    fn handle_msg(&mut self, now: u64, msg: Message) {
        if matches!(self.phase, Phase::Left | Phase::Idle) {
            return;
        }
        if let Some(from) = msg.sender()
            && from.id == self.me.id
        {
            return;
        }
        match msg {
            Message::Route(r) => {
                if self.phase == Phase::Joined {
                    self.route(now, r);
                } else if self.early.len() < EARLY_MAX {
                    // A neighbour may hand us work before our JoinReply lands.
                    self.early.push(Message::Route(r));
                }
            }
            Message::JoinReply {
                from,
                contacts,
                regions,
            } => self.on_join_reply(now, from, contacts, regions),
            Message::JoinRefused { from } => {
                if let Phase::Joining { via, .. } = self.phase.clone() {
                    // The exact point is taken: step aside by a millimetre.
                    let _ = from;
                    self.me.pos = Point::new(self.me.pos.x + 1, self.me.pos.y);
                    self.join(now, via);
                }
            }
            Message::Hello { from, vn, known } => self.on_hello(now, from, vn, known),
            Message::Heartbeat { from } => {
                let dest = Dest::from(&from);
                let id = from.id;
                self.on_heartbeat(now, from);
                self.pong_if_unlinked(id, dest);
            }
            Message::Pong { from } => {
                if matches!(self.phase, Phase::Confirming { .. }) {
                    self.confirm_acked.insert(from.id);
                }
                self.on_heartbeat(now, from);
            }
            Message::Probe { from } => {
                // A joiner probes its new neighbours: learn it before the
                // `Pong` confirms that we know it.
                if self.upsert(now, &from, true) && self.active() {
                    self.recompute(now, false);
                }
                let pong = Message::Pong {
                    from: self.me.clone(),
                };
                self.push_send(Dest::from(&from), pong);
            }
            Message::Introduce { from, contacts } => {
                if !self.active() {
                    return;
                }
                self.upsert(now, &from, true);
                for c in &contacts {
                    self.upsert(now, c, false);
                }
                self.recompute(now, false);
            }
            Message::Bye { from } => {
                if self.known.contains_key(&from.id) {
                    self.remove_dead(now, from.id);
                }
            }
            Message::LongLinkAck { from, target } => self.on_long_link_ack(now, from, target),
            Message::LongLinkRelease { from } => {
                self.back.remove(&from.id);
            }
            Message::LocateReply {
                from,
                query,
                mut regions,
                hops,
            } => {
                let before = regions.len();
                regions.retain(|r| r.signers().is_ok());
                self.stats.regions_refused += (before - regions.len()) as u64;
                if self.queries.remove(&query).is_some() {
                    self.out.push_back(Output::Event(Event::Located {
                        query,
                        owner: from,
                        regions,
                        hops,
                    }));
                }
            }
            Message::Walk(w) => {
                if self.phase == Phase::Joined {
                    self.walk(now, w);
                } else if self.early.len() < EARLY_MAX {
                    self.early.push(Message::Walk(w));
                }
            }
            Message::WalkDone {
                query,
                found,
                visited,
                complete,
            } => self.on_walk_done(query, found, visited, complete),
        }
    }

    /// A message we emitted could not be delivered: the destination is
    /// treated as failed, and routed messages take another path.
    pub fn unreachable(&mut self, now: u64, to: NodeId, msg: Message) {
        if self.phase == Phase::Left {
            return;
        }
        if self.known.contains_key(&to) {
            self.remove_dead(now, to);
        }
        self.dead.insert(to, now + 2 * self.cfg.failure_timeout_ms);
        self.advance_confirm(now, false);
        if !self.active() {
            return;
        }
        match msg {
            Message::Route(r) => self.route(now, r),
            Message::Walk(w) => self.walk(now, w),
            _ => {}
        }
    }

    /// A hint from the transport that a link may be gone (its connection
    /// closed): probe it now instead of waiting for missed heartbeats.
    pub fn suspect(&mut self, now: u64, id: NodeId) {
        if !self.active() || !self.known.contains_key(&id) {
            return;
        }
        if let Some(e) = self.known.get_mut(&id) {
            e.probed_ms = Some(now);
        }
        let msg = Message::Probe {
            from: self.me.clone(),
        };
        self.send_to(id, msg);
    }

    /// Timers: heartbeats, failure detection, join retries, re-announces,
    /// query deadlines.
    pub fn tick(&mut self, now: u64) {
        match self.phase.clone() {
            Phase::Idle | Phase::Left => {}
            Phase::Joining { via, deadline } => {
                if now >= deadline {
                    self.join(now, via);
                }
            }
            Phase::Confirming { deadline } => {
                self.advance_confirm(now, now >= deadline);
                self.tick_joined(now);
            }
            Phase::Joined => self.tick_joined(now),
        }
    }

    /// Long on purpose: the joined phase's timers in order (hello, pings, timeouts, announcements), one short block each.
    fn tick_joined(&mut self, now: u64) {
        if self.hello_at.is_some_and(|t| t <= now) {
            self.flush_hello();
        }
        let expired: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for query in expired {
            self.queries.remove(&query);
            self.out
                .push_back(Output::Event(Event::QueryFailed { query }));
        }
        let retry: Vec<(u64, Point)> = self
            .queries
            .iter()
            .filter_map(|(&id, q)| q.retry.filter(|r| r.1 <= now).map(|r| (id, r.0)))
            .collect();
        for (query, point) in retry {
            if let Some(q) = self.queries.get_mut(&query) {
                q.retry = Some((point, now + self.cfg.query_retry_ms));
            }
            self.start_route(now, point, RouteKind::Locate { query });
        }
        if now < self.next_heartbeat {
            return;
        }
        self.next_heartbeat = now + self.cfg.heartbeat_ms;
        self.dead.retain(|_, until| *until > now);
        for e in self.known.values_mut() {
            e.told.clear();
        }
        self.regions.retain(|_, (_, exp)| *exp > now);

        // Failure detection: probe after silence, declare dead after more.
        let timeout = self.cfg.failure_timeout_ms;
        let mut probe = Vec::new();
        let mut dead = Vec::new();
        for id in self.links() {
            if let Some(e) = self.known.get_mut(&id)
                && now.saturating_sub(e.heard_ms) > timeout
            {
                match e.probed_ms {
                    None => {
                        e.probed_ms = Some(now);
                        probe.push(id);
                    }
                    Some(t) if now.saturating_sub(t) >= timeout => dead.push(id),
                    Some(_) => {}
                }
            }
        }
        for id in dead {
            self.remove_dead(now, id);
        }
        let probe_msg = Message::Probe {
            from: self.me.clone(),
        };
        for id in probe {
            self.send_to(id, probe_msg.clone());
        }

        // Heartbeats: full sync to Voronoi neighbours, light to the others.
        let hello = self.hello_msg();
        let hb = Message::Heartbeat {
            from: self.me.clone(),
        };
        for id in self.links() {
            if self.vn.contains(&id) {
                self.send_to(id, hello.clone());
            } else {
                self.send_to(id, hb.clone());
            }
        }

        if self.phase != Phase::Joined {
            return;
        }
        // Long link: draw, retry or refresh.
        let refresh = self.cfg.long_link_refresh_ms;
        let retry = self.cfg.join_timeout_ms;
        let redo = match self.long {
            None => true,
            Some(l) => {
                now.saturating_sub(l.drawn_ms) >= refresh
                    || (l.peer.is_none() && now.saturating_sub(l.asked_ms) >= retry)
            }
        };
        if redo {
            self.draw_long_link(now);
        }

        if now >= self.next_announce {
            self.next_announce = now + self.cfg.region_ttl_ms / 3;
            let own: Vec<RegionInfo> = self.own.values().cloned().collect();
            for r in own {
                let _ = self.announce_one(now, r);
            }
        }
    }

    // ---- handlers ---------------------------------------------------------

    fn on_join_reply(
        &mut self,
        now: u64,
        from: Contact,
        contacts: Vec<Contact>,
        regions: Vec<RegionInfo>,
    ) {
        if !matches!(self.phase, Phase::Joining { .. }) {
            return;
        }
        self.phase = Phase::Confirming {
            deadline: now + self.cfg.join_timeout_ms,
        };
        self.confirm_probed.clear();
        self.confirm_acked.clear();
        self.next_heartbeat = now + self.cfg.heartbeat_ms;
        self.upsert(now, &from, true);
        for c in &contacts {
            self.upsert(now, c, false);
        }
        for r in regions.into_iter().take(REGIONS_MAX) {
            self.store_region(now, r);
        }
        self.recompute(now, true);
        self.advance_confirm(now, false);
    }

    /// While confirming: probe every Voronoi neighbour not yet probed; once
    /// each has answered (or `force`, at the deadline), the join is done.
    /// Until then routed work for us is buffered, so a point of our cell is
    /// only ever answered by us once every neighbour routes it to us.
    fn advance_confirm(&mut self, now: u64, force: bool) {
        if !matches!(self.phase, Phase::Confirming { .. }) {
            return;
        }
        let fresh: Vec<NodeId> = self
            .vn
            .iter()
            .filter(|id| !self.confirm_probed.contains(id))
            .copied()
            .collect();
        if !force && !fresh.is_empty() {
            let probe = Message::Probe {
                from: self.me.clone(),
            };
            for id in fresh {
                self.confirm_probed.insert(id);
                self.send_to(id, probe.clone());
            }
        }
        if !force && !self.vn.is_subset(&self.confirm_acked) {
            return;
        }
        self.phase = Phase::Joined;
        self.confirm_probed.clear();
        self.confirm_acked.clear();
        self.out.push_back(Output::Event(Event::Joined));
        self.draw_long_link(now);
        for m in std::mem::take(&mut self.early) {
            self.handle(now, m);
        }
    }

    fn on_hello(&mut self, now: u64, from: Contact, vn: Vec<Contact>, known: Vec<NodeId>) {
        if !self.active() {
            return;
        }
        let was_link = self.links().contains(&from.id);
        let mut changed = self.upsert(now, &from, true);
        let adv: Vec<NodeId> = vn.iter().map(|c| c.id).collect();
        if let Some(e) = self.known.get_mut(&from.id)
            && e.adv != adv
        {
            e.adv = adv;
            changed = true;
        }
        for c in &vn {
            changed |= self.upsert(now, c, false);
        }
        // Nothing new: the neighbour sets cannot have changed.
        let broadcast = changed && self.recompute(now, false);

        // Enclosing/AOI check (VON `EN`): tell the sender about sites it
        // should know and does not list.
        let their: BTreeSet<NodeId> = known.iter().copied().collect();
        let others: Vec<(NodeId, Point)> = self
            .known
            .values()
            .filter(|e| e.c.id != from.id)
            .map(|e| (e.c.id, e.c.pos))
            .chain(std::iter::once((self.me.id, self.me.pos)))
            .collect();
        let mut relevant: BTreeSet<NodeId> =
            self.geo.neighbours(from.pos, &others).into_iter().collect();
        let reach = u128::from(self.cfg.aoi_radius_mm + self.cfg.aoi_buffer_mm);
        for id in self.links() {
            if let Some(e) = self.known.get(&id)
                && e.c.pos.dist2(from.pos) <= reach * reach
            {
                relevant.insert(id);
            }
        }
        // No damping here: Hellos are already coalesced, and this check is
        // what repairs holes, so it must run on every Hello.
        let missing: Vec<Contact> = relevant
            .into_iter()
            .filter(|id| *id != from.id && *id != self.me.id && !their.contains(id))
            .filter_map(|id| self.known.get(&id).map(|e| e.c.clone()))
            .take(CONTACTS_MAX)
            .collect();
        if !missing.is_empty() {
            let msg = Message::Introduce {
                from: self.me.clone(),
                contacts: missing,
            };
            self.push_send(Dest::from(&from), msg);
        }
        let sent_hello = broadcast && self.vn.contains(&from.id);
        if !was_link && !sent_hello && self.links().contains(&from.id) {
            self.queue_hello(now, false, [from.id]);
        }
        self.pong_if_unlinked(from.id, Dest::from(&from));
    }

    /// A peer that treats me as a link while I do not treat it as one may
    /// hold a stale picture of me: tell it where I am (never answered).
    fn pong_if_unlinked(&mut self, id: NodeId, dest: Dest) {
        if self.active() && !self.links().contains(&id) {
            let pong = Message::Pong {
                from: self.me.clone(),
            };
            self.push_send(dest, pong);
        }
    }

    /// Schedule a `Hello` to the Voronoi neighbours (if `vn`) and to `new`.
    fn queue_hello(&mut self, now: u64, vn: bool, new: impl IntoIterator<Item = NodeId>) {
        self.hello_vn |= vn;
        self.hello_new.extend(new);
        if self.cfg.hello_delay_ms == 0 {
            self.flush_hello();
        } else if self.hello_vn || !self.hello_new.is_empty() {
            let at = now + self.cfg.hello_delay_ms;
            self.hello_at = Some(self.hello_at.map_or(at, |t| t.min(at)));
        }
    }

    fn flush_hello(&mut self) {
        self.hello_at = None;
        let links = self.links();
        let mut targets: BTreeSet<NodeId> = std::mem::take(&mut self.hello_new);
        if std::mem::take(&mut self.hello_vn) {
            targets.extend(self.vn.iter().copied());
        }
        targets.retain(|id| links.contains(id));
        if targets.is_empty() {
            return;
        }
        let hello = self.hello_msg();
        for id in targets {
            self.send_to(id, hello.clone());
        }
    }

    fn on_heartbeat(&mut self, now: u64, from: Contact) {
        if !self.active() {
            return;
        }
        let old = self.known.get(&from.id).map(|e| e.c.pos);
        let changed = self.upsert(now, &from, true);
        if !changed {
            return;
        }
        // "Newly in range" introductions for a mover, done only by its
        // boundary neighbours (VON): links in the outer half of its AOI.
        let half = u128::from(self.cfg.aoi_radius_mm / 2);
        let boundary = from.pos.dist2(self.me.pos) >= half * half;
        if let Some(old) = old {
            self.introduce_newcomers(boundary, &from, old);
            // A non-neighbour that stays out of every circumcircle through
            // me cannot change my Voronoi neighbours: only AOI links change.
            let far = self
                .reach2
                .is_some_and(|r| from.pos.dist2(self.me.pos) > r && old.dist2(self.me.pos) > r);
            if !self.vn.contains(&from.id) && far {
                self.recompute_aoi(now);
                return;
            }
        }
        self.recompute(now, false);
    }

    fn introduce_newcomers(&mut self, boundary: bool, from: &Contact, old: Point) {
        if boundary {
            let reach = u128::from(self.cfg.aoi_radius_mm + self.cfg.aoi_buffer_mm);
            let r2 = reach * reach;
            let fresh: Vec<Contact> = self
                .links()
                .into_iter()
                .filter(|&id| id != from.id)
                .filter_map(|id| self.known.get(&id))
                .filter(|e| e.c.pos.dist2(from.pos) <= r2 && e.c.pos.dist2(old) > r2)
                .map(|e| e.c.clone())
                .take(CONTACTS_MAX)
                .collect();
            let told = self
                .known
                .get(&from.id)
                .map(|e| e.told.clone())
                .unwrap_or_default();
            let fresh: Vec<Contact> = fresh
                .into_iter()
                .filter(|c| !told.contains(&c.id))
                .collect();
            if let Some(e) = self.known.get_mut(&from.id) {
                e.told.extend(fresh.iter().map(|c| c.id));
            }
            if !fresh.is_empty() {
                let msg = Message::Introduce {
                    from: self.me.clone(),
                    contacts: fresh,
                };
                self.push_send(Dest::from(from), msg);
            }
        }
    }

    /// AOI-only update (no triangulation): admit or drop AOI links.
    fn recompute_aoi(&mut self, now: u64) {
        let old_links = self.links();
        self.an = self.aoi_set();
        let new: Vec<NodeId> = self.links().difference(&old_links).copied().collect();
        self.queue_hello(now, false, new);
    }

    fn aoi_set(&self) -> BTreeSet<NodeId> {
        let enter = u128::from(self.cfg.aoi_radius_mm + self.cfg.aoi_buffer_mm);
        let keep = u128::from(self.cfg.aoi_radius_mm + self.cfg.aoi_buffer_mm * 5 / 4);
        self.known
            .values()
            .filter(|e| {
                let d = e.c.pos.dist2(self.me.pos);
                d <= enter * enter || (self.an.contains(&e.c.id) && d <= keep * keep)
            })
            .map(|e| e.c.id)
            .collect()
    }

    /// Acks can race with handovers: the true owner of the target is the
    /// site closest to it, so a closer acknowledger replaces a farther one
    /// and the loser is released.
    fn on_long_link_ack(&mut self, now: u64, from: Contact, target: Point) {
        let Some(l) = self.long else {
            return;
        };
        if l.target != target {
            let msg = Message::LongLinkRelease {
                from: self.me.clone(),
            };
            self.push_send(Dest::from(&from), msg);
            return;
        }
        let release = match l.peer.and_then(|p| self.known.get(&p)) {
            Some(cur) if cur.c.id != from.id => {
                if (cur.c.pos.dist2(target), cur.c.id) < (from.pos.dist2(target), from.id) {
                    Some(Dest::from(&from))
                } else {
                    Some(Dest::from(&cur.c))
                }
            }
            _ => None,
        };
        let keep_current = release.as_ref().is_some_and(|d| d.id == from.id);
        if let Some(d) = release {
            let msg = Message::LongLinkRelease {
                from: self.me.clone(),
            };
            self.push_send(d, msg);
        }
        if !keep_current {
            self.long = Some(LongLink {
                peer: Some(from.id),
                ..l
            });
            self.upsert(now, &from, true);
        }
    }

    fn on_walk_done(&mut self, query: u64, found: Vec<Contact>, visited: u32, complete: bool) {
        let Some(q) = self.queries.remove(&query) else {
            return;
        };
        let ev = match q.kind {
            QueryKind::Aoi => Event::AoiDone {
                query,
                peers: found,
                visited,
                complete,
            },
            QueryKind::Announce => Event::Announced { query, visited },
            QueryKind::Locate => return,
        };
        self.out.push_back(Output::Event(ev));
    }

    // ---- routing ----------------------------------------------------------

    /// The link strictly closer to `t` than me, by (distance², id).
    fn next_hop(&self, t: Point) -> Option<NodeId> {
        let mut best = (self.me.pos.dist2(t), self.me.id);
        let mut hop = None;
        for id in self.links() {
            if let Some(e) = self.known.get(&id) {
                let k = (e.c.pos.dist2(t), id);
                if k < best {
                    best = k;
                    hop = Some(id);
                }
            }
        }
        hop
    }

    fn route(&mut self, now: u64, mut r: Route) {
        if r.hops >= self.cfg.hops_max {
            self.stats.dropped_hops += 1;
            return;
        }
        match self.next_hop(r.target) {
            Some(hop) => {
                r.hops += 1;
                self.send_to(hop, Message::Route(r));
            }
            None => self.deliver(now, r),
        }
    }

    /// Long on purpose: one arm per route kind that arrives at its owner.
    fn deliver(&mut self, now: u64, r: Route) {
        let origin_is_me = r.origin.id == self.me.id;
        match r.kind {
            RouteKind::Join => {
                if origin_is_me {
                    return;
                }
                if r.origin.pos == self.me.pos {
                    let msg = Message::JoinRefused {
                        from: self.me.clone(),
                    };
                    self.push_send(Dest::from(&r.origin), msg);
                    return;
                }
                self.dead.remove(&r.origin.id);
                self.upsert(now, &r.origin, true);
                self.recompute(now, false);
                let contacts = self.contacts_for(&r.origin);
                let regions: Vec<RegionInfo> = self
                    .regions
                    .values()
                    .map(|(r, _)| r.clone())
                    .take(REGIONS_MAX)
                    .collect();
                let msg = Message::JoinReply {
                    from: self.me.clone(),
                    contacts,
                    regions,
                };
                self.push_send(Dest::from(&r.origin), msg);
            }
            RouteKind::LongLink => {
                if origin_is_me {
                    // My own target is in my cell: no link needed.
                    if let Some(l) = self.long.as_mut() {
                        l.peer = None;
                        l.asked_ms = now;
                    }
                    return;
                }
                self.upsert(now, &r.origin, true);
                self.back.insert(r.origin.id, r.target);
                let msg = Message::LongLinkAck {
                    from: self.me.clone(),
                    target: r.target,
                };
                self.push_send(Dest::from(&r.origin), msg);
            }
            RouteKind::Locate { query } => {
                let regions: Vec<RegionInfo> = self
                    .regions
                    .values()
                    .filter(|(g, _)| g.bounds.contains(r.target))
                    .map(|(g, _)| g.clone())
                    .take(REGIONS_MAX)
                    .collect();
                if origin_is_me {
                    if self.queries.remove(&query).is_some() {
                        self.out.push_back(Output::Event(Event::Located {
                            query,
                            owner: self.me.clone(),
                            regions,
                            hops: r.hops,
                        }));
                    }
                } else {
                    let msg = Message::LocateReply {
                        from: self.me.clone(),
                        query,
                        regions,
                        hops: r.hops,
                    };
                    self.push_send(Dest::from(&r.origin), msg);
                }
            }
            RouteKind::Walk { query, shape, kind } => {
                let w = Walk {
                    query,
                    origin: r.origin,
                    shape,
                    kind,
                    visited: Vec::new(),
                    frontier: Vec::new(),
                    found: Vec::new(),
                    hops: r.hops,
                };
                self.walk(now, w);
            }
        }
    }

    /// Contacts a joiner should know: its neighbours in my view, my Voronoi
    /// neighbours and my links within its AOI.
    fn contacts_for(&self, joiner: &Contact) -> Vec<Contact> {
        let others: Vec<(NodeId, Point)> = self
            .known
            .values()
            .filter(|e| e.c.id != joiner.id)
            .map(|e| (e.c.id, e.c.pos))
            .chain(std::iter::once((self.me.id, self.me.pos)))
            .collect();
        let mut ids: BTreeSet<NodeId> = self
            .geo
            .neighbours(joiner.pos, &others)
            .into_iter()
            .collect();
        ids.extend(self.vn.iter().copied());
        let reach = u128::from(self.cfg.aoi_radius_mm + self.cfg.aoi_buffer_mm);
        for e in self.known.values() {
            if e.c.pos.dist2(joiner.pos) <= reach * reach {
                ids.insert(e.c.id);
            }
        }
        let mut out: Vec<Contact> = ids
            .into_iter()
            .filter(|id| *id != joiner.id && *id != self.me.id)
            .filter_map(|id| self.known.get(&id).map(|e| e.c.clone()))
            .collect();
        out.sort_by_key(|c| (c.pos.dist2(joiner.pos), c.id));
        out.truncate(CONTACTS_MAX);
        out
    }

    fn walk(&mut self, now: u64, mut w: Walk) {
        if !w.visited.contains(&self.me.id) {
            if w.visited.len() >= IDS_MAX {
                self.finish_walk(now, w, false);
                return;
            }
            w.visited.push(self.me.id);
            if w.shape.contains(self.me.pos) {
                if w.found.len() >= CONTACTS_MAX {
                    self.finish_walk(now, w, false);
                    return;
                }
                w.found.push(self.me.clone());
            }
            if let WalkKind::Announce(region) = &w.kind {
                let region = (**region).clone();
                self.store_region(now, region);
            }
            for id in self.vn.clone() {
                let Some(e) = self.known.get(&id) else {
                    continue;
                };
                if w.visited.contains(&id) || w.frontier.iter().any(|c| c.id == id) {
                    continue;
                }
                if w.frontier.len() < CONTACTS_MAX && w.shape.meets_side_of(self.me.pos, e.c.pos) {
                    w.frontier.push(e.c.clone());
                }
            }
        }
        let anchor = w.shape.anchor();
        w.frontier
            .sort_by_key(|c| std::cmp::Reverse((c.pos.dist2(anchor), c.id)));
        while let Some(next) = w.frontier.pop() {
            if w.visited.contains(&next.id) || next.id == self.me.id {
                continue;
            }
            w.hops = w.hops.saturating_add(1);
            self.push_send(Dest::from(&next), Message::Walk(w));
            return;
        }
        self.finish_walk(now, w, true);
    }

    fn finish_walk(&mut self, _now: u64, w: Walk, complete: bool) {
        let visited = u32::try_from(w.visited.len()).unwrap_or(u32::MAX);
        if w.origin.id == self.me.id {
            self.on_walk_done(w.query, w.found, visited, complete);
        } else {
            let msg = Message::WalkDone {
                query: w.query,
                found: w.found,
                visited,
                complete,
            };
            self.push_send(Dest::from(&w.origin), msg);
        }
    }

    /// Stores a region record if it is signed by its group and may replace
    /// the live record of its region ([`crate::record`]); counts it in
    /// [`Stats::regions_refused`] otherwise.
    fn store_region(&mut self, now: u64, region: RegionInfo) {
        let verdict = region
            .signers()
            .and_then(|_| match self.regions.get(&region.id) {
                Some((stored, exp)) if *exp > now => region.may_replace(stored),
                _ => Ok(()),
            });
        if let Err(e) = verdict {
            // An older record of the same group is normal (its members
            // announce with their own clocks); anything else is refused.
            if !matches!(e, crate::record::RecordError::Stale { .. }) {
                self.stats.regions_refused += 1;
            }
            tracing::debug!(region = region.id.0, error = %e, "region record refused");
            return;
        }
        let exp = now + self.cfg.region_ttl_ms;
        if !self.regions.contains_key(&region.id) && self.regions.len() >= REGIONS_MAX {
            // Evict the record closest to expiry.
            if let Some(id) = self
                .regions
                .iter()
                .min_by_key(|(_, (_, e))| *e)
                .map(|(id, _)| *id)
            {
                self.regions.remove(&id);
            }
        }
        self.regions.insert(region.id, (region, exp));
    }

    // ---- neighbour maintenance -------------------------------------------

    fn draw_long_link(&mut self, now: u64) {
        let target = self.draw_target();
        self.long = Some(LongLink {
            target,
            peer: None,
            asked_ms: now,
            drawn_ms: now,
        });
        self.start_route(now, target, RouteKind::LongLink);
    }

    /// Kleinberg's harmonic law in 2-D: density ∝ 1/r² over the plane means
    /// `ln r` is uniform on [ln r_min, ln r_max]; the angle is uniform.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    fn draw_target(&mut self) -> Point {
        let w = self.cfg.world;
        let dx = (w.max.x - w.min.x) as f64;
        let dy = (w.max.y - w.min.y) as f64;
        let r_max = (dx * dx + dy * dy).sqrt().max(2.0);
        let r_min = (self.cfg.long_link_min_mm as f64).clamp(1.0, r_max / 2.0);
        let mut last = self.me.pos;
        for _ in 0..16 {
            let u: f64 = self.rng.random();
            let r = r_min * (r_max / r_min).powf(u);
            let a: f64 = self.rng.random::<f64>() * std::f64::consts::TAU;
            let t = Point::new(
                self.me.pos.x + (r * a.cos()).round() as i64,
                self.me.pos.y + (r * a.sin()).round() as i64,
            );
            last = t;
            if w.contains(t) {
                return t;
            }
        }
        Point::new(
            last.x.clamp(w.min.x, w.max.x),
            last.y.clamp(w.min.y, w.max.y),
        )
    }

    /// Insert or refresh a site. Returns true if it is new or moved.
    fn upsert(&mut self, now: u64, c: &Contact, heard: bool) -> bool {
        if c.id == self.me.id || !c.pos.is_valid() {
            return false;
        }
        if heard {
            self.dead.remove(&c.id);
        } else if self.dead.contains_key(&c.id) {
            return false;
        }
        match self.known.get_mut(&c.id) {
            Some(e) => {
                if heard {
                    e.heard_ms = now;
                    e.probed_ms = None;
                }
                if c.seq > e.c.seq || (heard && c.seq == e.c.seq && c.pos != e.c.pos) {
                    let moved = e.c.pos != c.pos;
                    e.c = c.clone();
                    moved
                } else {
                    false
                }
            }
            None => {
                if self.known.len() >= self.cfg.known_max {
                    return false;
                }
                self.known.insert(
                    c.id,
                    Entry {
                        c: c.clone(),
                        heard_ms: now,
                        probed_ms: None,
                        adv: Vec::new(),
                        told: BTreeSet::new(),
                    },
                );
                true
            }
        }
    }

    fn remove_dead(&mut self, now: u64, id: NodeId) {
        self.stats.dead += 1;
        self.known.remove(&id);
        self.vn.remove(&id);
        self.an.remove(&id);
        self.back.remove(&id);
        self.dead.insert(id, now + 2 * self.cfg.failure_timeout_ms);
        for e in self.known.values_mut() {
            e.adv.retain(|a| *a != id);
        }
        if let Some(l) = self.long
            && l.peer == Some(id)
        {
            self.long = Some(LongLink {
                peer: None,
                asked_ms: now,
                ..l
            });
            self.start_route(now, l.target, RouteKind::LongLink);
        }
        if self.active() {
            self.recompute(now, false);
        }
    }

    fn hello_msg(&self) -> Message {
        let vn: Vec<Contact> = self
            .vn
            .iter()
            .filter_map(|id| self.known.get(id).map(|e| e.c.clone()))
            .take(CONTACTS_MAX)
            .collect();
        let known: Vec<NodeId> = self.links().into_iter().take(IDS_MAX).collect();
        Message::Hello {
            from: self.me.clone(),
            vn,
            known,
        }
    }

    /// Recompute Voronoi and AOI neighbours from everything known, prune, hand
    /// over back-links, and tell neighbours. Returns whether the Voronoi
    /// neighbours were sent a fresh `Hello`.
    fn recompute(&mut self, now: u64, force: bool) -> bool {
        let old_links = self.links();
        let sites: Vec<(NodeId, Point)> = self.known.values().map(|e| (e.c.id, e.c.pos)).collect();
        let (vn, reach2) = self.geo.neighbourhood(self.me.pos, &sites);
        let vn: BTreeSet<NodeId> = vn.into_iter().collect();
        self.reach2 = reach2;
        let an = self.aoi_set();
        let vn_changed = vn != self.vn;
        self.vn = vn;
        self.an = an;

        // Prune: keep links and the sites my Voronoi neighbours advertise.
        let mut keep_ids = self.links();
        if let Some(l) = self.long
            && let Some(p) = l.peer
        {
            keep_ids.insert(p);
        }
        for id in &self.vn {
            if let Some(e) = self.known.get(id) {
                keep_ids.extend(e.adv.iter().copied());
            }
        }
        self.known.retain(|id, _| keep_ids.contains(id));

        let links = self.links();
        let broadcast = vn_changed || force;
        let new: Vec<NodeId> = links.difference(&old_links).copied().collect();
        self.queue_hello(now, broadcast, new);

        // Hand over back-links whose targets left my cell.
        let moved: Vec<(NodeId, Point)> = self
            .back
            .iter()
            .filter(|(_, t)| self.next_hop(**t).is_some())
            .map(|(id, t)| (*id, *t))
            .collect();
        for (id, target) in moved {
            self.back.remove(&id);
            if let Some(origin) = self.known.get(&id).map(|e| e.c.clone()) {
                self.stats.handovers += 1;
                let r = Route {
                    target,
                    origin,
                    hops: 0,
                    kind: RouteKind::LongLink,
                };
                self.route(now, r);
            }
        }
        broadcast
    }

    // ---- output -----------------------------------------------------------

    fn send_to(&mut self, id: NodeId, msg: Message) {
        if let Some(e) = self.known.get(&id) {
            let d = Dest::from(&e.c);
            self.push_send(d, msg);
        }
    }

    fn push_send(&mut self, to: Dest, msg: Message) {
        if self.out.len() >= self.cfg.outbox_max {
            self.stats.dropped_outbox += 1;
            tracing::warn!(peer = %self.me.id, "overlay outbox full, message dropped");
            return;
        }
        self.stats.sent += 1;
        self.out.push_back(Output::Send { to, msg });
    }
}
