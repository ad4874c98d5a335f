//! A deterministic simulated network running many real cores.
//!
//! One `u64` seed decides every latency. Messages to a crashed or departed
//! peer come back to the sender as [`Peer::unreachable`] after one more
//! latency (a refused dial). Timers run at step boundaries: call
//! [`SimNet::step`] with the step length.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::peer::{Config, Dest, Event, Output, Peer};
use crate::wire::{Contact, Message, NodeId, Point, encoded_len};

/// Simulated network settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Smallest one-way latency.
    pub latency_min_ms: u64,
    /// Largest one-way latency.
    pub latency_max_ms: u64,
    /// Count encoded bytes of every message (costs an encode per message).
    pub count_bytes: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency_min_ms: 5,
            latency_max_ms: 40,
            count_bytes: false,
        }
    }
}

#[derive(Debug)]
enum Kind {
    Deliver { from: NodeId, msg: Message },
    Unreachable { dead: NodeId, msg: Message },
}

#[derive(Debug)]
struct Item {
    at: u64,
    seq: u64,
    to: NodeId,
    kind: Kind,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Per-peer traffic counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Messages sent.
    pub msgs: u64,
    /// Bytes sent (if counted).
    pub bytes: u64,
}

/// Many cores on one simulated network.
#[derive(Debug)]
pub struct SimNet {
    /// Simulated time, milliseconds.
    pub now: u64,
    cfg: SimConfig,
    peers: Vec<Option<Peer>>,
    queue: BinaryHeap<Item>,
    seq: u64,
    rng: ChaCha8Rng,
    traffic: Vec<Traffic>,
    events: Vec<(NodeId, Event)>,
    timers: BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    scheduled: Vec<u64>,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Messages sent, by kind.
    pub kinds: std::collections::BTreeMap<&'static str, u64>,
    /// Messages lost because both ends were gone, by kind.
    pub lost: std::collections::BTreeMap<&'static str, u64>,
    /// When each peer slot became joined (`u64::MAX`: not yet).
    joined_at: Vec<u64>,
    /// When each locate was answered, keyed by (origin, query): the moment
    /// the owner decided, before the reply's own latency.
    answered_at: std::collections::BTreeMap<(NodeId, u64), (u64, NodeId)>,
}

fn idx(id: NodeId) -> usize {
    usize::try_from(id.0).unwrap_or(usize::MAX)
}

impl SimNet {
    /// An empty network.
    pub fn new(cfg: SimConfig, seed: u64) -> Self {
        Self {
            now: 0,
            cfg,
            peers: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
            traffic: Vec::new(),
            events: Vec::new(),
            timers: BinaryHeap::new(),
            scheduled: Vec::new(),
            delivered: 0,
            kinds: std::collections::BTreeMap::new(),
            lost: std::collections::BTreeMap::new(),
            joined_at: Vec::new(),
            answered_at: std::collections::BTreeMap::new(),
        }
    }

    /// Create a peer (not yet joined); its id is its index.
    pub fn add(&mut self, cfg: Config, pos: Point, seed: u64) -> NodeId {
        let id = NodeId(self.peers.len() as u64);
        let me = Contact {
            id,
            pos,
            seq: 0,
            addr: Vec::new(),
        };
        self.peers.push(Some(Peer::new(cfg, me, seed)));
        self.traffic.push(Traffic::default());
        self.scheduled.push(u64::MAX);
        self.joined_at.push(u64::MAX);
        id
    }

    /// When a peer slot became joined, if it did.
    pub fn joined_at(&self, id: NodeId) -> Option<u64> {
        self.joined_at
            .get(idx(id))
            .copied()
            .filter(|t| *t != u64::MAX)
    }

    /// When, and by whom, the locate `query` of `origin` was answered (the
    /// owner's decision, one latency before the origin hears it). Forgets it.
    pub fn take_answered_at(&mut self, origin: NodeId, query: u64) -> Option<(u64, NodeId)> {
        self.answered_at.remove(&(origin, query))
    }

    /// The first peer of the overlay.
    pub fn start_alone(&mut self, id: NodeId) {
        let now = self.now;
        if let Some(p) = self.peer_mut(id) {
            p.start_alone(now);
        }
        self.flush(id);
    }

    /// Join `id` through `via`.
    pub fn join(&mut self, id: NodeId, via: NodeId) {
        let now = self.now;
        if let Some(p) = self.peer_mut(id) {
            p.join(
                now,
                Dest {
                    id: via,
                    addr: Vec::new(),
                },
            );
        }
        self.flush(id);
    }

    /// Graceful leave.
    pub fn leave(&mut self, id: NodeId) {
        let now = self.now;
        if let Some(p) = self.peer_mut(id) {
            p.leave(now);
        }
        self.flush(id);
        if let Some(slot) = self.peers.get_mut(idx(id)) {
            *slot = None;
        }
    }

    /// Crash: the peer vanishes without a word.
    pub fn kill(&mut self, id: NodeId) {
        if let Some(slot) = self.peers.get_mut(idx(id)) {
            *slot = None;
        }
    }

    /// Move a peer.
    pub fn move_to(&mut self, id: NodeId, pos: Point) {
        let now = self.now;
        if let Some(p) = self.peer_mut(id) {
            p.move_to(now, pos);
        }
        self.flush(id);
    }

    /// Run a command against a peer and flush what it emits.
    pub fn with_peer<R>(&mut self, id: NodeId, f: impl FnOnce(&mut Peer, u64) -> R) -> Option<R> {
        let now = self.now;
        let r = self.peer_mut(id).map(|p| f(p, now));
        self.flush(id);
        r
    }

    /// A live peer.
    pub fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.peers.get(idx(id)).and_then(Option::as_ref)
    }

    fn peer_mut(&mut self, id: NodeId) -> Option<&mut Peer> {
        self.peers.get_mut(idx(id)).and_then(Option::as_mut)
    }

    /// Ids of live peers.
    pub fn alive(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter_map(|p| p.as_ref().map(|p| p.me().id))
            .collect()
    }

    /// Live, joined peers and their true positions.
    pub fn sites(&self) -> Vec<(NodeId, Point)> {
        self.peers
            .iter()
            .filter_map(|p| p.as_ref())
            .filter(|p| p.is_joined())
            .map(|p| (p.me().id, p.me().pos))
            .collect()
    }

    /// Number of peer slots ever created.
    pub fn slots(&self) -> usize {
        self.peers.len()
    }

    /// Traffic of a peer slot.
    pub fn traffic(&self, id: NodeId) -> Traffic {
        self.traffic.get(idx(id)).copied().unwrap_or_default()
    }

    /// Take the events emitted so far.
    pub fn take_events(&mut self) -> Vec<(NodeId, Event)> {
        std::mem::take(&mut self.events)
    }

    /// Messages in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    fn latency(&mut self) -> u64 {
        let (a, b) = (
            self.cfg.latency_min_ms,
            self.cfg.latency_max_ms.max(self.cfg.latency_min_ms),
        );
        self.rng.random_range(a..=b)
    }

    fn flush(&mut self, id: NodeId) {
        let now = self.now;
        if self.peer(id).is_some_and(Peer::is_joined)
            && let Some(t) = self.joined_at.get_mut(idx(id))
            && *t == u64::MAX
        {
            *t = now;
        }
        if let Some(d) = self.peer(id).and_then(Peer::next_deadline)
            && let Some(s) = self.scheduled.get_mut(idx(id))
            && *s != d
        {
            *s = d;
            self.timers.push(std::cmp::Reverse((d, id.0)));
        }
        loop {
            let Some(out) = self.peer_mut(id).and_then(Peer::poll_output) else {
                return;
            };
            match out {
                Output::Event(e) => {
                    if let Event::Located { query, .. } = &e {
                        self.answered_at.entry((id, *query)).or_insert((now, id));
                    }
                    self.events.push((id, e));
                }
                Output::Send { to, msg } => {
                    if let Message::LocateReply { query, .. } = &msg {
                        self.answered_at.insert((to.id, *query), (now, id));
                    }
                    *self.kinds.entry(msg.kind_name()).or_default() += 1;
                    if let Some(t) = self.traffic.get_mut(idx(id)) {
                        t.msgs += 1;
                        if self.cfg.count_bytes {
                            t.bytes += encoded_len(&msg) as u64;
                        }
                    }
                    let at = self.now + self.latency();
                    self.seq += 1;
                    self.queue.push(Item {
                        at,
                        seq: self.seq,
                        to: to.id,
                        kind: Kind::Deliver { from: id, msg },
                    });
                }
            }
        }
    }

    /// Deliver everything due up to `until`, then advance the clock there.
    pub fn run_until(&mut self, until: u64) {
        while let Some(top) = self.queue.peek() {
            if top.at > until {
                break;
            }
            let Some(item) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(item.at);
            let now = self.now;
            match item.kind {
                Kind::Deliver { from, msg } => {
                    if self.peer(item.to).is_some() {
                        self.delivered += 1;
                    }
                    if let Some(p) = self.peer_mut(item.to) {
                        p.handle(now, msg);
                        self.flush(item.to);
                    } else if self.peer(from).is_none() {
                        *self.lost.entry(msg.kind_name()).or_default() += 1;
                    } else {
                        let at = now + self.latency();
                        self.seq += 1;
                        self.queue.push(Item {
                            at,
                            seq: self.seq,
                            to: from,
                            kind: Kind::Unreachable { dead: item.to, msg },
                        });
                    }
                }
                Kind::Unreachable { dead, msg } => {
                    if let Some(p) = self.peer_mut(item.to) {
                        p.unreachable(now, dead, msg);
                        self.flush(item.to);
                    } else {
                        *self.lost.entry(msg.kind_name()).or_default() += 1;
                    }
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Advance by `dt_ms`: deliver messages, then run due timers.
    pub fn step(&mut self, dt_ms: u64) {
        let until = self.now + dt_ms;
        self.run_until(until);
        let now = self.now;
        while let Some(&std::cmp::Reverse((d, i))) = self.timers.peek() {
            if d > now {
                break;
            }
            self.timers.pop();
            let id = NodeId(i);
            if let Some(s) = self.scheduled.get_mut(idx(id))
                && *s == d
            {
                *s = u64::MAX;
            }
            let due = self
                .peer(id)
                .and_then(Peer::next_deadline)
                .is_some_and(|d| d <= now);
            if due && let Some(p) = self.peer_mut(id) {
                p.tick(now);
            }
            // Re-arm (also for a stale entry whose deadline moved later).
            self.flush(id);
        }
    }

    /// Deliver every message in flight without running timers (bounded).
    pub fn drain(&mut self, max_ms: u64) {
        let end = self.now + max_ms;
        while !self.queue.is_empty() && self.now < end {
            let next = self.queue.peek().map_or(end, |i| i.at);
            self.run_until(next.min(end));
        }
    }
}
