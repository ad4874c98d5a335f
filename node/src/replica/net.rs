//! The replica group's network over libp2p: commonware's `Sender` and
//! `Receiver` on one long-lived, ordered libp2p stream per pair of
//! members (`/metatopia/replica/1`), never gossip (research/bft.md: gossip
//! neither orders nor reliably delivers).
//!
//! A frame is `channel (u64 le) ‖ length (u32 le) ‖ bytes`. Each member
//! keeps one writer per other member (a bounded queue; a full queue drops
//! the frame, which the engine and the core tolerate as loss) and reads
//! every inbound stream into the queue of the frame's channel. Streams
//! from peers that are not members are refused. The swarm is the
//! group's own (its own listen address), so the overlay's swarm stays as
//! it is; the swarm task is the one place to add protocols for members.
//!
//! Members of groups hosting neighbour regions trade border sets on the
//! same swarm over `/metatopia/border/1` ([`Mesh::border`]): each member
//! writes to every member of each neighbour's group, and accepts streams
//! only from those (ADR 0013).
//!
//! Members and observers also answer `/metatopia/content/1` (blobs by
//! hash, [`crate::content::peer`]) on this swarm: [`Mesh::serve_content`].

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use commonware_actor::{Feedback, Unreliable};
use commonware_cryptography::ed25519::PublicKey;
use commonware_p2p::{CheckedSender, LimitedSender, Receiver, Recipients};
use commonware_runtime::{IoBuf, IoBufs};
use commonware_utils::ordered::Set;
use ed25519_dalek::SigningKey;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use metatopia_sim::{PlayerId, RegionId};

use super::simplex::public_key;

/// The members' stream protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/metatopia/replica/1");

/// Observers' stream protocol: one stream per observer and member, both
/// ways, carrying the members' channel only ([`Mesh::serve_followers`],
/// [`follow`]).
pub const FOLLOW_PROTOCOL: StreamProtocol = StreamProtocol::new("/metatopia/follow/1");

/// Border traffic between groups hosting neighbour regions (ADR 0013):
/// one stream from each member to each member of each neighbour's group,
/// carrying encoded `Message::Border`s. Streams from peers that are not
/// members of a configured neighbour's group are refused.
pub const BORDER_PROTOCOL: StreamProtocol = StreamProtocol::new("/metatopia/border/1");

/// Frames queued per neighbour member, and inbound from all neighbours.
pub const BORDER_QUEUE_MAX: usize = 1024;

/// The frame channel of border streams (they carry one kind of frame).
const BORDER_CHANNEL: u64 = 0;

/// Most observers a member keeps streams with.
pub const FOLLOWERS_MAX: usize = super::core::FOLLOWERS_MAX;

/// Largest frame read (a resync snapshot is the largest message).
pub const FRAME_BYTES_MAX: usize = super::wire::MESSAGE_BYTES_MAX;

/// Frames queued per remote member, and per inbound channel.
pub const QUEUE_MAX: usize = 4096;

/// Why the mesh cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// libp2p could not be set up or listen.
    #[error("libp2p: {0}")]
    Libp2p(String),
    /// A member id is not an ed25519 key.
    #[error("member {0} is not an ed25519 public key")]
    BadMember(PlayerId),
}

fn p2p<E: std::fmt::Display>(e: E) -> NetError {
    NetError::Libp2p(e.to_string())
}

/// The libp2p peer id of a member (its node key).
pub fn peer_id(member: PlayerId) -> Result<PeerId, NetError> {
    let key = identity::ed25519::PublicKey::try_from_bytes(&member.0)
        .map_err(|_| NetError::BadMember(member))?;
    Ok(PeerId::from_public_key(&identity::PublicKey::from(key)))
}

/// Counters of the mesh.
#[derive(Debug, Default)]
pub struct Counters {
    /// Frames dropped because a member's send queue was full.
    pub send_dropped: AtomicU64,
    /// Frames dropped because a channel's receive queue was full.
    pub recv_dropped: AtomicU64,
    /// Inbound streams refused (not a member, bad frame).
    pub refused: AtomicU64,
    /// Border frames dropped because a neighbour member's queue was full.
    pub border_send_dropped: AtomicU64,
    /// Border frames dropped because the inbound border queue was full.
    pub border_recv_dropped: AtomicU64,
    /// Border streams refused (not a neighbour's member, bad frame).
    pub border_refused: AtomicU64,
    /// Border frames queued to send, and their bytes (each copy counted).
    pub border_sent: AtomicU64,
    /// See `border_sent`.
    pub border_sent_bytes: AtomicU64,
}

/// One peer's link as this node sees it (member, observer or neighbour
/// member), for status views: a link that stopped carrying frames one way
/// shows here first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Link {
    /// A libp2p connection to the peer is up.
    pub connected: bool,
    /// Outbound streams opened to it (more than one: reopened after a
    /// break).
    pub streams_opened: u64,
    /// Frames read from it.
    pub frames_in: u64,
    /// Frames written to it.
    pub frames_out: u64,
    /// Frames for it dropped because its send queue was full.
    pub dropped_out: u64,
    /// When the last frame from it was read (unix ms).
    pub last_in_ms: Option<u64>,
    /// When the last frame to it was written (unix ms).
    pub last_out_ms: Option<u64>,
}

/// Every peer's [`Link`], shared by the mesh's tasks.
#[derive(Debug, Clone, Default)]
pub struct Links {
    table: Arc<std::sync::Mutex<BTreeMap<PeerId, (PlayerId, Link)>>>,
    connected: Arc<std::sync::Mutex<std::collections::BTreeSet<PeerId>>>,
}

impl Links {
    fn with(&self, peer: PeerId, f: impl FnOnce(&mut Link)) {
        let Some(who) = player_of_peer(&peer) else {
            return;
        };
        if let Ok(mut t) = self.table.lock() {
            f(&mut t.entry(peer).or_insert((who, Link::default())).1);
        }
    }

    fn is_connected(&self, peer: PeerId) -> bool {
        self.connected.lock().is_ok_and(|c| c.contains(&peer))
    }

    fn opened(&self, peer: PeerId) {
        self.with(peer, |l| l.streams_opened += 1);
    }

    fn received(&self, peer: PeerId) {
        let now = unix_ms();
        self.with(peer, |l| {
            l.frames_in += 1;
            l.last_in_ms = Some(now);
        });
    }

    fn sent(&self, peer: PeerId) {
        let now = unix_ms();
        self.with(peer, |l| {
            l.frames_out += 1;
            l.last_out_ms = Some(now);
        });
    }

    fn dropped(&self, peer: PeerId) {
        self.with(peer, |l| l.dropped_out += 1);
    }

    /// Every peer this node has had frames or streams with, by key.
    pub fn snapshot(&self) -> BTreeMap<PlayerId, Link> {
        let connected = self.connected.lock().map(|c| c.clone()).unwrap_or_default();
        let Ok(t) = self.table.lock() else {
            return BTreeMap::new();
        };
        t.iter()
            .map(|(peer, (who, l))| {
                (
                    *who,
                    Link {
                        connected: connected.contains(peer),
                        ..*l
                    },
                )
            })
            .collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Frame {
    channel: u64,
    bytes: Bytes,
}

/// A member's swarm, listening.
pub struct Mesh {
    control: libp2p_stream::Control,
    me: PeerId,
    links: Links,
    follow_channel: Option<u64>,
    addresses: mpsc::Sender<(PeerId, Multiaddr)>,
    /// The address it listens on.
    pub addr: Multiaddr,
    /// Counters.
    pub counters: Arc<Counters>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("addr", &self.addr).finish()
    }
}

/// Caps on the swarm's libp2p connections (`[limits]` in node.toml): in
/// total, from one peer, handshakes in progress, and none while the
/// process's memory is over a size. A connection over a cap is denied by
/// the swarm before any protocol runs on it.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Established connections at once.
    pub total: u32,
    /// Established connections with one peer at once (two members may dial
    /// each other at the same moment: at least 2).
    pub per_peer: u32,
    /// Incoming connections still in their handshake.
    pub pending_incoming: u32,
    /// No new connection while the process uses more physical memory.
    pub memory_max_bytes: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            total: 1024,
            per_peer: 4,
            pending_incoming: 64,
            memory_max_bytes: usize::MAX,
        }
    }
}

/// The swarm's behaviours: the connection caps first (they deny before
/// anything else sees a connection), then the streams every protocol
/// here runs on.
#[derive(libp2p::swarm::NetworkBehaviour)]
struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    memory: libp2p::memory_connection_limits::Behaviour,
    streams: libp2p_stream::Behaviour,
}

/// Starts a member's swarm (TCP, noise, yamux) listening on `listen`; its
/// identity is the node key. Must run inside a tokio runtime.
pub async fn listen(key: &SigningKey, listen: Multiaddr, caps: Caps) -> Result<Mesh, NetError> {
    let limits = libp2p::connection_limits::ConnectionLimits::default()
        .with_max_established(Some(caps.total))
        .with_max_established_per_peer(Some(caps.per_peer.max(2)))
        .with_max_pending_incoming(Some(caps.pending_incoming));
    let keypair = identity::Keypair::ed25519_from_bytes(key.to_bytes()).map_err(p2p)?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| {
            metatopia_overlay::traffic::tcp(key, &metatopia_overlay::traffic::GROUP)
        })
        .map_err(p2p)?
        .with_behaviour(|_| Behaviour {
            limits: libp2p::connection_limits::Behaviour::new(limits),
            memory: libp2p::memory_connection_limits::Behaviour::with_max_bytes(
                caps.memory_max_bytes,
            ),
            streams: libp2p_stream::Behaviour::new(),
        })
        .map_err(p2p)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    swarm.listen_on(listen).map_err(p2p)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let control = swarm.behaviour().streams.new_control();
    let me = *swarm.local_peer_id();
    let links = Links::default();
    let peers = links.connected.clone();
    let (addresses, mut new_addresses) = mpsc::channel::<(PeerId, Multiaddr)>(64);
    tokio::spawn(async move {
        // The members' addresses: the stream behaviour keeps none, so the
        // swarm task dials them, and again every half second while one is
        // not connected.
        let mut known: BTreeMap<PeerId, Multiaddr> = BTreeMap::new();
        let mut redial = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                event = swarm.select_next_some() => match event {
                    SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                        debug!(peer = ?peer_id, error = %error, "member unreachable");
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        if let Ok(mut p) = peers.lock() {
                            p.insert(peer_id);
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                        if let Ok(mut p) = peers.lock() {
                            p.remove(&peer_id);
                        }
                    }
                    _ => {}
                },
                a = new_addresses.recv() => match a {
                    Some((peer, addr)) => {
                        known.insert(peer, addr.clone());
                        let _ = swarm.dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                    }
                    None => return,
                },
                _ = redial.tick() => {
                    for (peer, addr) in &known {
                        if !swarm.is_connected(peer) {
                            let opts = DialOpts::peer_id(*peer).addresses(vec![addr.clone()]).build();
                            let _ = swarm.dial(opts);
                        }
                    }
                }
            }
        }
    });
    Ok(Mesh {
        control,
        me,
        links,
        follow_channel: None,
        addresses,
        addr,
        counters: Arc::new(Counters::default()),
    })
}

impl Mesh {
    /// Dials `member` at `addr` (and again while it is not connected).
    pub fn dial(&self, member: PlayerId, addr: Multiaddr) -> Result<(), NetError> {
        let peer = peer_id(member)?;
        if peer != self.me {
            let _ = self.addresses.try_send((peer, addr));
        }
        Ok(())
    }

    /// Peers connected now.
    pub fn connected(&self) -> usize {
        self.links.connected.lock().map_or(0, |c| c.len())
    }

    /// Every peer's link (shared: read it at any time).
    pub fn links(&self) -> Links {
        self.links.clone()
    }

    /// Answers `/metatopia/content/1` from `peers`' store, and lets
    /// `peers` fetch over this swarm, asking `members` (the group's, in
    /// order) first. Must run inside a tokio runtime.
    pub fn serve_content(
        &mut self,
        peers: &crate::content::peer::Peers,
        members: &[(PlayerId, Multiaddr)],
    ) -> Result<(), NetError> {
        let incoming = self
            .control
            .accept(crate::content::peer::PROTOCOL)
            .map_err(p2p)?;
        let mut ids = Vec::new();
        for (m, addr) in members {
            let peer = peer_id(*m)?;
            if peer != self.me {
                // Dialled by the swarm task, and again while it is down.
                self.dial(*m, addr.clone())?;
                ids.push(peer);
            }
        }
        peers.attach(crate::content::peer::Net {
            control: self.control.clone(),
            members: ids,
            connected: self.links.connected.clone(),
            me: self.me,
        });
        tokio::spawn(peers.clone().serve(incoming));
        Ok(())
    }

    /// Accepts observers' streams (see [`FOLLOW_PROTOCOL`]) from
    /// [`Mesh::connect`] on: their frames arrive on `channel` (the members'
    /// channel) and that channel's sender reaches them by key.
    pub fn serve_followers(&mut self, channel: u64) {
        self.follow_channel = Some(channel);
    }

    /// Connects to the other members (`(member, address)`, this one
    /// included or not) and returns a sender and receiver per channel.
    pub async fn connect(
        &mut self,
        me: PlayerId,
        members: &[(PlayerId, Multiaddr)],
        channels: &[u64],
    ) -> Result<Vec<(NetSender, NetReceiver)>, NetError> {
        let mut keys: BTreeMap<PeerId, PublicKey> = BTreeMap::new();
        let mut writers = BTreeMap::new();
        for (m, addr) in members {
            let pk = public_key(*m).ok_or(NetError::BadMember(*m))?;
            if *m == me {
                continue;
            }
            let peer = peer_id(*m)?;
            keys.insert(peer, pk.clone());
            let _ = self.addresses.send((peer, addr.clone())).await;
            let (tx, rx) = mpsc::channel::<Frame>(QUEUE_MAX);
            writers.insert(pk, (peer, tx));
            let links = self.links.clone();
            tokio::spawn(write(self.control.clone(), peer, PROTOCOL, rx, links));
        }
        let writers = Arc::new(writers);
        let followers: Followers = Arc::default();
        let mut inbound = BTreeMap::new();
        let mut out = Vec::new();
        for &channel in channels {
            let (tx, rx) = mpsc::channel(QUEUE_MAX);
            inbound.insert(channel, tx);
            out.push((
                NetSender {
                    channel,
                    writers: writers.clone(),
                    followers: followers.clone(),
                    counters: self.counters.clone(),
                    links: self.links.clone(),
                },
                NetReceiver { rx },
            ));
        }
        if let Some(channel) = self.follow_channel
            && let Some(q) = inbound.get(&channel).cloned()
        {
            let incoming = self.control.accept(FOLLOW_PROTOCOL).map_err(p2p)?;
            tokio::spawn(accept_followers(
                incoming,
                channel,
                q,
                followers,
                self.counters.clone(),
                self.links.clone(),
            ));
        }
        let incoming = self.control.accept(PROTOCOL).map_err(p2p)?;
        let links = self.links.clone();
        tokio::spawn(accept(
            incoming,
            keys,
            inbound,
            self.counters.clone(),
            links,
        ));
        Ok(out)
    }
}

/// The members of the groups hosting neighbour regions, with addresses.
pub type NeighbourGroups = [(RegionId, Vec<(PlayerId, Multiaddr)>)];

impl Mesh {
    /// Starts border traffic with the neighbours' groups (see
    /// [`BORDER_PROTOCOL`]): dials their members, keeps a writer per member
    /// and accepts their streams (and nobody else's). Frames received come
    /// out with the sending member. A group learned later is added with
    /// [`BorderSender::add`]. Must run inside a tokio runtime; call it once.
    pub fn border(
        &mut self,
        neighbours: &NeighbourGroups,
    ) -> Result<(BorderSender, BorderReceiver), NetError> {
        let (in_tx, in_rx) = mpsc::channel(BORDER_QUEUE_MAX);
        let incoming = self.control.accept(BORDER_PROTOCOL).map_err(p2p)?;
        let sender = BorderSender {
            groups: Arc::default(),
            control: self.control.clone(),
            addresses: self.addresses.clone(),
            counters: self.counters.clone(),
            links: self.links.clone(),
        };
        for (region, members) in neighbours {
            sender.add(*region, members)?;
        }
        tokio::spawn(accept_border(
            incoming,
            sender.groups.clone(),
            in_tx,
            self.counters.clone(),
            self.links.clone(),
        ));
        Ok((sender, in_rx))
    }
}

/// The neighbours' groups the border transport knows: each region's
/// members' send queues, and who may open a border stream here.
#[derive(Debug, Default)]
struct BorderGroups {
    writers: BTreeMap<RegionId, Vec<(PeerId, mpsc::Sender<Frame>)>>,
    keys: BTreeMap<PeerId, PlayerId>,
}

/// Sends border frames to every member of a neighbour's group. Clones
/// share the groups.
#[derive(Clone)]
pub struct BorderSender {
    groups: Arc<std::sync::Mutex<BorderGroups>>,
    control: libp2p_stream::Control,
    addresses: mpsc::Sender<(PeerId, Multiaddr)>,
    counters: Arc<Counters>,
    links: Links,
}

impl std::fmt::Debug for BorderSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BorderSender").finish_non_exhaustive()
    }
}

impl BorderSender {
    /// Sets the group hosting `region` (its members with addresses): the
    /// swarm dials them, a writer per member starts, and their streams are
    /// accepted from now on. A group already set is replaced (the old
    /// members' writers stop when their queues are dropped). Must run
    /// inside a tokio runtime.
    pub fn add(&self, region: RegionId, members: &[(PlayerId, Multiaddr)]) -> Result<(), NetError> {
        let peers = members
            .iter()
            .map(|(m, addr)| Ok((peer_id(*m)?, *m, addr.clone())))
            .collect::<Result<Vec<_>, NetError>>()?;
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = groups.writers.remove(&region) {
            for (peer, _) in old {
                groups.keys.remove(&peer);
            }
        }
        let mut writers = Vec::with_capacity(peers.len());
        for (peer, member, addr) in peers {
            groups.keys.insert(peer, member);
            let _ = self.addresses.try_send((peer, addr));
            let (tx, rx) = mpsc::channel::<Frame>(BORDER_QUEUE_MAX);
            writers.push((peer, tx));
            tokio::spawn(write(
                self.control.clone(),
                peer,
                BORDER_PROTOCOL,
                rx,
                self.links.clone(),
            ));
        }
        groups.writers.insert(region, writers);
        Ok(())
    }

    /// Queues `bytes` to every member of the group hosting `region`; a
    /// full queue drops its copy (counted), an unknown region sends none.
    pub fn send(&self, region: RegionId, bytes: Bytes) {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let Some(writers) = groups.writers.get(&region) else {
            debug!(%region, "border frame for a region whose group is not known");
            return;
        };
        for (peer, w) in writers {
            let len = bytes.len() as u64;
            let frame = Frame {
                channel: BORDER_CHANNEL,
                bytes: bytes.clone(),
            };
            if w.try_send(frame).is_ok() {
                self.counters.border_sent.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .border_sent_bytes
                    .fetch_add(len, Ordering::Relaxed);
            } else {
                self.counters
                    .border_send_dropped
                    .fetch_add(1, Ordering::Relaxed);
                self.links.dropped(*peer);
                warn!(%region, "border frame dropped: a neighbour member's queue is full");
            }
        }
    }
}

/// Border frames received, with the neighbour member that sent them.
pub type BorderReceiver = mpsc::Receiver<(PlayerId, Vec<u8>)>;

/// Accepts neighbour members' border streams into one bounded queue.
async fn accept_border(
    mut incoming: libp2p_stream::IncomingStreams,
    groups: Arc<std::sync::Mutex<BorderGroups>>,
    inbound: mpsc::Sender<(PlayerId, Vec<u8>)>,
    counters: Arc<Counters>,
    links: Links,
) {
    while let Some((peer, mut stream)) = incoming.next().await {
        let member = groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(&peer)
            .copied();
        let Some(member) = member else {
            counters.border_refused.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %peer, "border stream from a peer that is not a neighbour's member refused");
            continue;
        };
        let (inbound, counters, links) = (inbound.clone(), counters.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                match read_frame(&mut stream, |c| c == BORDER_CHANNEL).await {
                    Ok(Some((_, bytes))) => {
                        links.received(peer);
                        if inbound.try_send((member, bytes)).is_err() {
                            counters.border_recv_dropped.fetch_add(1, Ordering::Relaxed);
                            debug!(peer = %peer, "border frame dropped: the inbound queue is full");
                        }
                    }
                    Ok(None) => return,
                    Err((channel, len)) => {
                        counters.border_refused.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %peer, channel, len, "bad border frame: stream closed");
                        return;
                    }
                }
            }
        });
    }
}

/// How long opening a stream may take before it is given up and tried
/// again.
const OPEN_WITHIN: Duration = Duration::from_secs(5);

/// Opens a `protocol` stream to `peer`, only while the swarm task has a
/// connection to it (it dials members itself, with their addresses, and
/// again while they are down), and bounded by [`OPEN_WITHIN`].
///
/// Why not let `libp2p_stream` dial: its `open_stream` to a peer it does not
/// count as connected parks the request until the peer's next new
/// connection. The peer counts as connected only once the swarm has told
/// the behaviour, just after it handed the parked requests to the new
/// connection; a request made in that gap is parked, its own dial is
/// refused (already connected) without a failure event, and no later
/// connection comes: the stream never opens. Its dial request can also
/// be dropped outright when another is queued (rust-libp2p issue 6157,
/// "Dial requests in `stream` behaviour are silently dropped"). That
/// froze one direction of a restarted member's links (an observer, or the
/// primary, never sending to it) in the loaded `node_group` runs.
async fn open(
    control: &mut libp2p_stream::Control,
    links: &Links,
    peer: PeerId,
    protocol: StreamProtocol,
) -> Result<libp2p::Stream, String> {
    if !links.is_connected(peer) {
        return Err("not connected".into());
    }
    match tokio::time::timeout(OPEN_WITHIN, control.open_stream(peer, protocol)).await {
        Ok(Ok(s)) => {
            links.opened(peer);
            Ok(s)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no stream within {} ms", OPEN_WITHIN.as_millis())),
    }
}

/// One remote member's writer: (re)opens the stream and writes frames.
async fn write(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    protocol: StreamProtocol,
    mut rx: mpsc::Receiver<Frame>,
    links: Links,
) {
    loop {
        let mut stream = match open(&mut control, &links, peer, protocol.clone()).await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer = %peer, error = %e, "cannot open a stream to a member");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        match write_frames(&mut stream, &mut rx, &links, peer).await {
            Ok(()) => return,
            Err(e) => debug!(peer = %peer, error = %e, "stream to a member broke"),
        }
    }
}

/// Observers' writers, by key.
type Followers = Arc<std::sync::Mutex<BTreeMap<PublicKey, (PeerId, mpsc::Sender<Frame>)>>>;

/// The ed25519 key inside a peer id (ed25519 peer ids inline their key).
pub fn key_of(peer: &PeerId) -> Option<PublicKey> {
    public_key(player_of_peer(peer)?)
}

/// The node key inside a peer id, as a player id.
fn player_of_peer(peer: &PeerId) -> Option<PlayerId> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    let key = identity::PublicKey::try_decode_protobuf(hash.digest())
        .ok()?
        .try_into_ed25519()
        .ok()?;
    Some(PlayerId(key.to_bytes()))
}

/// Writes frames to a stream until the queue closes or the stream breaks.
async fn write_frames(
    mut out: impl futures::AsyncWrite + Unpin,
    rx: &mut mpsc::Receiver<Frame>,
    links: &Links,
    peer: PeerId,
) -> std::io::Result<()> {
    while let Some(frame) = rx.recv().await {
        let mut head = [0u8; 12];
        head[..8].copy_from_slice(&frame.channel.to_le_bytes());
        head[8..].copy_from_slice(&(frame.bytes.len() as u32).to_le_bytes());
        out.write_all(&head).await?;
        out.write_all(&frame.bytes).await?;
        out.flush().await?;
        links.sent(peer);
    }
    Ok(())
}

/// Reads one frame: `Ok(None)` at the end of the stream, `Err` for a frame
/// that is too large or on a channel not in `accepted`.
async fn read_frame(
    input: &mut (impl futures::AsyncRead + Unpin),
    accepted: impl Fn(u64) -> bool,
) -> Result<Option<(u64, Vec<u8>)>, (u64, usize)> {
    let mut head = [0u8; 12];
    if input.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    let channel = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes")) as usize;
    if len > FRAME_BYTES_MAX || !accepted(channel) {
        return Err((channel, len));
    }
    let mut bytes = vec![0u8; len];
    if input.read_exact(&mut bytes).await.is_err() {
        return Ok(None);
    }
    Ok(Some((channel, bytes)))
}

/// Accepts observers' streams: their frames go to the members' channel,
/// and the channel's senders reach them by key while the stream lasts.
async fn accept_followers(
    mut incoming: libp2p_stream::IncomingStreams,
    channel: u64,
    inbound: mpsc::Sender<(PublicKey, IoBuf)>,
    followers: Followers,
    counters: Arc<Counters>,
    links: Links,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let Some(pk) = key_of(&peer) else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (tx, mut rx) = mpsc::channel::<Frame>(QUEUE_MAX);
        {
            let Ok(mut f) = followers.lock() else { return };
            if !f.contains_key(&pk) && f.len() >= FOLLOWERS_MAX {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %peer, "observer refused: {FOLLOWERS_MAX} observers already");
                continue;
            }
            f.insert(pk.clone(), (peer, tx.clone()));
        }
        let (mut read, write) = stream.split();
        let writer_links = links.clone();
        tokio::spawn(async move {
            let _ = write_frames(write, &mut rx, &writer_links, peer).await;
        });
        let (inbound, followers, counters) = (inbound.clone(), followers.clone(), counters.clone());
        let links = links.clone();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut read, |c| c == channel).await {
                    Ok(Some((_, bytes))) => {
                        links.received(peer);
                        if inbound.try_send((pk.clone(), IoBuf::from(bytes))).is_err() {
                            counters.recv_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => break,
                    Err((c, len)) => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %peer, channel = c, len, "bad frame from an observer: stream closed");
                        break;
                    }
                }
            }
            if let Ok(mut f) = followers.lock()
                && f.get(&pk).is_some_and(|(_, t)| t.same_channel(&tx))
            {
                f.remove(&pk);
            }
        });
    }
}

/// Frames an observer sends: to one member, or to every member (`None`).
pub type FollowSender = mpsc::Sender<(Option<PlayerId>, Bytes)>;

/// Frames an observer receives, with the member that sent them.
pub type FollowReceiver = mpsc::Receiver<(PlayerId, Vec<u8>)>;

/// An observer's link to a group: one [`FOLLOW_PROTOCOL`] stream to each
/// member, reopened when it breaks. Frames to send go in with the member's
/// id (`None`: every member); frames received come out with the member's
/// id. Must run inside a tokio runtime.
pub fn follow(
    mesh: &Mesh,
    members: &[(PlayerId, Multiaddr)],
    channel: u64,
) -> Result<(FollowSender, FollowReceiver), NetError> {
    let (in_tx, in_rx) = mpsc::channel(QUEUE_MAX);
    let mut writers = BTreeMap::new();
    for (m, addr) in members {
        let peer = peer_id(*m)?;
        let _ = mesh.addresses.try_send((peer, addr.clone()));
        let (tx, rx) = mpsc::channel::<Frame>(QUEUE_MAX);
        writers.insert(*m, tx);
        tokio::spawn(follow_member(
            mesh.control.clone(),
            (*m, peer),
            channel,
            rx,
            in_tx.clone(),
            mesh.links.clone(),
        ));
    }
    let (out_tx, mut out_rx) = mpsc::channel::<(Option<PlayerId>, Bytes)>(QUEUE_MAX);
    tokio::spawn(async move {
        while let Some((to, bytes)) = out_rx.recv().await {
            for (m, w) in &writers {
                if to.is_none_or(|t| t == *m) {
                    let _ = w.try_send(Frame {
                        channel,
                        bytes: bytes.clone(),
                    });
                }
            }
        }
    });
    Ok((out_tx, in_rx))
}

/// One member's stream of an observer.
async fn follow_member(
    mut control: libp2p_stream::Control,
    (member, peer): (PlayerId, PeerId),
    channel: u64,
    mut rx: mpsc::Receiver<Frame>,
    inbound: mpsc::Sender<(PlayerId, Vec<u8>)>,
    links: Links,
) {
    loop {
        let stream = match open(&mut control, &links, peer, FOLLOW_PROTOCOL).await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer = %peer, error = %e, "cannot open a stream to a member");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (mut read, write) = stream.split();
        let reader = async {
            loop {
                match read_frame(&mut read, |c| c == channel).await {
                    Ok(Some((_, bytes))) => {
                        links.received(peer);
                        if inbound.send((member, bytes)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err((c, len)) => {
                        warn!(peer = %peer, channel = c, len, "bad frame from a member: stream closed");
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = reader => {}
            r = write_frames(write, &mut rx, &links, peer) => {
                if r.is_ok() {
                    return;
                }
            }
        }
        if inbound.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Accepts members' streams and reads their frames into the channels.
async fn accept(
    mut incoming: libp2p_stream::IncomingStreams,
    keys: BTreeMap<PeerId, PublicKey>,
    inbound: BTreeMap<u64, mpsc::Sender<(PublicKey, IoBuf)>>,
    counters: Arc<Counters>,
    links: Links,
) {
    let inbound = Arc::new(inbound);
    while let Some((peer, mut stream)) = incoming.next().await {
        let Some(pk) = keys.get(&peer).cloned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            warn!(peer = %peer, "stream from a peer that is not a member refused");
            continue;
        };
        let (inbound, counters, links) = (inbound.clone(), counters.clone(), links.clone());
        tokio::spawn(async move {
            loop {
                let (channel, bytes) = match read_frame(&mut stream, |c| inbound.contains_key(&c))
                    .await
                {
                    Ok(Some(f)) => {
                        links.received(peer);
                        f
                    }
                    Ok(None) => return,
                    Err((channel, len)) => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        warn!(peer = %peer, channel, len, "bad frame from a member: stream closed");
                        return;
                    }
                };
                if let Some(q) = inbound.get(&channel)
                    && q.try_send((pk.clone(), IoBuf::from(bytes))).is_err()
                {
                    counters.recv_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Sends on one channel to members.
#[derive(Clone)]
pub struct NetSender {
    channel: u64,
    writers: Arc<BTreeMap<PublicKey, (PeerId, mpsc::Sender<Frame>)>>,
    followers: Followers,
    counters: Arc<Counters>,
    links: Links,
}

impl std::fmt::Debug for NetSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetSender")
            .field("channel", &self.channel)
            .finish()
    }
}

/// A send checked against the members.
#[derive(Debug)]
pub struct Checked<'a> {
    sender: &'a NetSender,
    to: Vec<PublicKey>,
}

impl LimitedSender for NetSender {
    type PublicKey = PublicKey;
    type Checked<'a> = Checked<'a>;

    fn check(&mut self, recipients: Recipients<PublicKey>) -> Result<Checked<'_>, SystemTime> {
        // All is the members; observers are reached by name.
        let to = match recipients {
            Recipients::All => self.writers.keys().cloned().collect(),
            Recipients::Some(v) => v,
            Recipients::One(k) => vec![k],
        };
        Ok(Checked { sender: self, to })
    }
}

impl CheckedSender for Checked<'_> {
    type PublicKey = PublicKey;

    fn recipients(&self) -> Vec<PublicKey> {
        self.to.clone()
    }

    fn send(self, message: impl Into<IoBufs> + Send, _priority: bool) -> Unreliable<Feedback> {
        let bytes: Bytes = message.into().coalesce().into();
        let mut sent = false;
        for k in &self.to {
            let (peer, q) = match self.sender.writers.get(k) {
                Some(q) => q.clone(),
                None => {
                    let follower = self
                        .sender
                        .followers
                        .lock()
                        .ok()
                        .and_then(|f| f.get(k).cloned());
                    match follower {
                        Some(q) => q,
                        None => continue,
                    }
                }
            };
            let frame = Frame {
                channel: self.sender.channel,
                bytes: bytes.clone(),
            };
            if q.try_send(frame).is_ok() {
                sent = true;
            } else {
                self.sender
                    .counters
                    .send_dropped
                    .fetch_add(1, Ordering::Relaxed);
                self.sender.links.dropped(peer);
            }
        }
        if sent || self.to.is_empty() {
            Unreliable::Outcome(Feedback::Ok)
        } else {
            Unreliable::Rejected
        }
    }
}

/// Receives one channel's frames from members.
#[derive(Debug)]
pub struct NetReceiver {
    rx: mpsc::Receiver<(PublicKey, IoBuf)>,
}

/// The mesh has stopped.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the replica mesh has stopped")]
pub struct Closed;

impl Receiver for NetReceiver {
    type Error = Closed;
    type PublicKey = PublicKey;

    async fn recv(&mut self) -> Result<(PublicKey, IoBuf), Closed> {
        self.rx.recv().await.ok_or(Closed)
    }

    fn capacity(&self) -> NonZeroUsize {
        NonZeroUsize::new(QUEUE_MAX).unwrap_or(NonZeroUsize::MIN)
    }
}

/// A blocker that records the members the engine proved byzantine and
/// drops nothing yet (a group of 3f + 1 outvotes them; disconnecting them
/// is future work).
#[derive(Clone, Default)]
pub struct Blocker {
    blocked: Arc<std::sync::Mutex<Vec<PublicKey>>>,
    subscribers:
        Arc<std::sync::Mutex<Vec<commonware_utils::channel::ring::Sender<Set<PublicKey>>>>>,
}

impl std::fmt::Debug for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocker").finish_non_exhaustive()
    }
}

impl Blocker {
    fn set(&self) -> Set<PublicKey> {
        let blocked = self.blocked.lock().map(|b| b.clone()).unwrap_or_default();
        Set::from_iter_dedup(blocked)
    }
}

impl commonware_p2p::Blocker for Blocker {
    type PublicKey = PublicKey;

    fn block(&mut self, peer: PublicKey) -> Feedback {
        warn!(member = ?peer, "member blocked for byzantine behaviour");
        if let Ok(mut b) = self.blocked.lock() {
            b.push(peer);
        }
        let set = self.set();
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.retain(|s| s.send_lossy(set.clone()));
        }
        Feedback::Ok
    }

    fn blocked(&mut self) -> commonware_p2p::BlockedSubscription<PublicKey> {
        let (tx, rx) = commonware_utils::channel::ring::channel(NonZeroUsize::MIN);
        tx.send_lossy(self.set());
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(tx);
        }
        rx
    }
}
