//! The async service the node calls: a libp2p swarm on tokio that drives
//! one overlay core.
//!
//! ```no_run
//! # async fn demo() -> Result<(), metatopia_overlay::ServiceError> {
//! use metatopia_overlay::{Point, Service, service};
//! let (handle, _task) = Service::spawn(service::Config::new(Point::new(0, 0)))?;
//! handle.joined().await?;
//! let region = handle.locate(Point::new(1_000, 2_000)).await?;
//! # let _ = region; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{
    Multiaddr, PeerId, Swarm, connection_limits, identify, identity, mdns, request_response,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::net::{self, Behaviour, BehaviourEvent, PROTOCOL, node_id, pack_addr, unpack_addr};
use crate::peer::{self, Dest, Event, Output, Peer};
use crate::wire::{self, Contact, Message, NodeId, Point, RegionInfo};

/// Service settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's position in the world (a host uses its region's centre).
    pub position: Point,
    /// Identity; a fresh ed25519 key when `None`.
    pub keypair: Option<identity::Keypair>,
    /// Listen addresses (default `/ip4/127.0.0.1/tcp/0`).
    pub listen: Vec<Multiaddr>,
    /// Known peers to join through, each ending in `/p2p/<peer id>`. Empty
    /// (and no mDNS peer found) means: start a new overlay.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// How long to wait for an mDNS peer before starting alone.
    pub mdns_wait: Duration,
    /// Overlay core tunables.
    pub overlay: peer::Config,
    /// Most established connections.
    pub connections_max: u32,
    /// Most requests in flight (further sends are dropped and counted).
    pub requests_max: usize,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Command queue bound.
    pub commands_max: usize,
}

impl Config {
    /// Defaults at `position`, listening on loopback.
    pub fn new(position: Point) -> Self {
        Self {
            position,
            keypair: None,
            listen: vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4(std::net::Ipv4Addr::LOCALHOST))
                    .with(Protocol::Tcp(0)),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            mdns_wait: Duration::from_secs(2),
            overlay: peer::Config::default(),
            connections_max: 256,
            requests_max: 4096,
            request_timeout: Duration::from_secs(10),
            commands_max: 256,
        }
    }
}

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The transport could not be built.
    #[error("transport setup failed: {0}")]
    Transport(String),
    /// A listen address was refused.
    #[error("cannot listen: {0}")]
    Listen(String),
    /// The service task has stopped.
    #[error("overlay service stopped")]
    Stopped,
    /// The command queue is full.
    #[error("overlay command queue full")]
    Busy,
    /// The core refused the command.
    #[error("overlay refused the command: {0}")]
    Command(#[from] crate::peer::CommandError),
    /// No answer before the query deadline.
    #[error("overlay query timed out")]
    Timeout,
}

/// Where a routed query ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The peer owning the point.
    pub owner: Contact,
    /// The owner's libp2p peer id, if its contact carries one.
    pub owner_peer: Option<PeerId>,
    /// Region records covering the point, as the owner knows them.
    pub regions: Vec<RegionInfo>,
    /// Overlay hops taken.
    pub hops: u16,
}

/// A snapshot of the local overlay state (published on every change).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Joined the overlay.
    pub joined: bool,
    /// Current position.
    pub position: Point,
    /// Voronoi neighbours.
    pub voronoi: Vec<NodeId>,
    /// Number of direct links.
    pub links: usize,
    /// Requests dropped because `requests_max` were in flight.
    pub dropped_sends: u64,
    /// Region records refused (bad signatures, takeovers).
    pub regions_refused: u64,
}

enum Reply {
    Locate(oneshot::Sender<Result<Location, ServiceError>>),
    Aoi(oneshot::Sender<Result<Vec<Contact>, ServiceError>>),
    Announce(oneshot::Sender<Result<u32, ServiceError>>),
}

enum Command {
    Locate(Point, oneshot::Sender<Result<Location, ServiceError>>),
    Aoi(
        Point,
        u64,
        oneshot::Sender<Result<Vec<Contact>, ServiceError>>,
    ),
    Announce(RegionInfo, oneshot::Sender<Result<u32, ServiceError>>),
    Withdraw(crate::wire::RegionId),
    MoveTo(Point),
    LocalAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Leave(oneshot::Sender<()>),
}

/// The handle the node keeps. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    peer_id: PeerId,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Handle {
    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This node's overlay id.
    pub fn node_id(&self) -> NodeId {
        node_id(&self.peer_id)
    }

    /// The latest status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Wait until the node has joined the overlay.
    pub async fn joined(&self) -> Result<(), ServiceError> {
        let mut rx = self.status.clone();
        rx.wait_for(|s| s.joined)
            .await
            .map_err(|_| ServiceError::Stopped)?;
        Ok(())
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(make(tx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServiceError::Busy,
            mpsc::error::TrySendError::Closed(_) => ServiceError::Stopped,
        })?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }

    /// Route to the owner of `point` and return the region announced there.
    pub async fn locate(&self, point: Point) -> Result<Option<RegionInfo>, ServiceError> {
        let loc = self.route(point).await?;
        Ok(loc.regions.into_iter().find(|r| r.bounds.contains(point)))
    }

    /// Route to the owner of `point`; full answer.
    pub async fn route(&self, point: Point) -> Result<Location, ServiceError> {
        self.call(|tx| Command::Locate(point, tx)).await?
    }

    /// Every peer within `radius_mm` of `centre`.
    pub async fn aoi(&self, centre: Point, radius_mm: u64) -> Result<Vec<Contact>, ServiceError> {
        self.call(|tx| Command::Aoi(centre, radius_mm, tx)).await?
    }

    /// Announce a hosted region (kept alive by re-announcing until withdrawn).
    /// Returns the number of cells that stored it.
    pub async fn announce(&self, region: RegionInfo) -> Result<u32, ServiceError> {
        self.call(|tx| Command::Announce(region, tx)).await?
    }

    /// Stop re-announcing a region.
    pub async fn withdraw(&self, id: crate::wire::RegionId) -> Result<(), ServiceError> {
        self.tx
            .send(Command::Withdraw(id))
            .await
            .map_err(|_| ServiceError::Stopped)
    }

    /// Move this node (for example an avatar's position).
    pub async fn move_to(&self, point: Point) -> Result<(), ServiceError> {
        self.tx
            .send(Command::MoveTo(point))
            .await
            .map_err(|_| ServiceError::Stopped)
    }

    /// Addresses this node listens on, each ending in `/p2p/<peer id>`
    /// (waits for the first listener).
    pub async fn local_addrs(&self) -> Result<Vec<Multiaddr>, ServiceError> {
        self.call(Command::LocalAddrs).await
    }

    /// Leave the overlay gracefully and stop the service.
    pub async fn leave(&self) -> Result<(), ServiceError> {
        self.call(Command::Leave).await
    }
}

/// The overlay service.
#[derive(Debug)]
pub struct Service;

impl Service {
    /// Build the swarm and run it on the current tokio runtime.
    pub fn spawn(cfg: Config) -> Result<(Handle, JoinHandle<()>), ServiceError> {
        let keypair = cfg
            .keypair
            .clone()
            .unwrap_or_else(identity::Keypair::generate_ed25519);
        let peer_id = keypair.public().to_peer_id();
        let swarm = build_swarm(&cfg, keypair)?;
        let (tx, rx) = mpsc::channel(cfg.commands_max.max(1));
        let (status_tx, status_rx) = watch::channel(Status {
            position: cfg.position,
            ..Status::default()
        });
        let mut driver = Driver {
            cfg,
            swarm,
            peer_id,
            core: None,
            started: Instant::now(),
            in_flight: BTreeMap::new(),
            replies: BTreeMap::new(),
            addr_waiters: Vec::new(),
            status: status_tx,
            dropped_sends: 0,
            mdns_deadline: None,
            mdns_early: Vec::new(),
        };
        for addr in driver.cfg.listen.clone() {
            driver
                .swarm
                .listen_on(addr)
                .map_err(|e| ServiceError::Listen(e.to_string()))?;
        }
        let task = tokio::spawn(async move { driver.run(rx).await });
        Ok((
            Handle {
                tx,
                status: status_rx,
                peer_id,
            },
            task,
        ))
    }
}

fn build_swarm(cfg: &Config, keypair: identity::Keypair) -> Result<Swarm<Behaviour>, ServiceError> {
    let rr_cfg = request_response::Config::default()
        .with_request_timeout(cfg.request_timeout)
        .with_max_concurrent_streams(256);
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(cfg.connections_max))
        .with_max_established_per_peer(Some(2))
        .with_max_pending_incoming(Some(64))
        .with_max_pending_outgoing(Some(64));
    let use_mdns = cfg.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| crate::traffic::tcp(key, &crate::traffic::OVERLAY))
        .map_err(|e| ServiceError::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let mdns = if use_mdns {
                mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id()).ok()
            } else {
                None
            };
            Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                overlay: request_response::Behaviour::with_codec(
                    net::Codec,
                    [(PROTOCOL, request_response::ProtocolSupport::Full)],
                    rr_cfg,
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/metatopia/overlay-id/1".into(),
                    key.public(),
                )),
                mdns: mdns.into(),
            }
        })
        .map_err(|e| ServiceError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    Ok(swarm)
}

struct Driver {
    cfg: Config,
    swarm: Swarm<Behaviour>,
    peer_id: PeerId,
    core: Option<Peer>,
    started: Instant,
    in_flight: BTreeMap<request_response::OutboundRequestId, (NodeId, Message)>,
    replies: BTreeMap<u64, Reply>,
    addr_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    status: watch::Sender<Status>,
    dropped_sends: u64,
    mdns_deadline: Option<u64>,
    /// mDNS peers discovered before the core started (bounded).
    mdns_early: Vec<(PeerId, Multiaddr)>,
}

impl Driver {
    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn local_addrs(&self) -> Vec<Multiaddr> {
        self.swarm
            .listeners()
            .map(|a| a.clone().with(Protocol::P2p(self.peer_id)))
            .collect()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let deadline = self
                .core
                .as_ref()
                .and_then(Peer::next_deadline)
                .into_iter()
                .chain(self.mdns_deadline)
                .min()
                .map(|d| self.started + Duration::from_millis(d));
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = rx.recv() => match cmd {
                    Some(Command::Leave(done)) => {
                        let now = self.now();
                        if let Some(c) = self.core.as_mut() {
                            c.leave(now);
                        }
                        self.pump();
                        // Give the goodbyes a moment to leave the sockets.
                        let until = Instant::now() + Duration::from_millis(200);
                        while let Ok(ev) = tokio::time::timeout_at(until, self.swarm.select_next_some()).await {
                            self.on_swarm(ev);
                        }
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.on_command(c),
                    None => return,
                },
                () = sleep => {
                    let now = self.now();
                    if self.mdns_deadline.is_some_and(|d| d <= now) {
                        self.mdns_deadline = None;
                        if let Some(c) = self.core.as_mut().filter(|c| !c.is_joined()) {
                            c.start_alone(now);
                        }
                    }
                    if let Some(c) = self.core.as_mut() {
                        c.tick(now);
                    }
                }
            }
            self.pump();
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = self.now();
        let Some(core) = self.core.as_mut() else {
            match cmd {
                Command::LocalAddrs(tx) => self.addr_waiters.push(tx),
                Command::Locate(_, tx) => {
                    let _ = tx.send(Err(crate::peer::CommandError::NotJoined.into()));
                }
                Command::Aoi(_, _, tx) => {
                    let _ = tx.send(Err(crate::peer::CommandError::NotJoined.into()));
                }
                Command::Announce(_, tx) => {
                    let _ = tx.send(Err(crate::peer::CommandError::NotJoined.into()));
                }
                Command::MoveTo(p) => self.cfg.position = p,
                Command::Withdraw(_) | Command::Leave(_) => {}
            }
            return;
        };
        match cmd {
            Command::Locate(p, tx) => match core.locate(now, p) {
                Ok(q) => {
                    self.replies.insert(q, Reply::Locate(tx));
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                }
            },
            Command::Aoi(p, r, tx) => match core.aoi(now, p, r) {
                Ok(q) => {
                    self.replies.insert(q, Reply::Aoi(tx));
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                }
            },
            Command::Announce(region, tx) => match core.announce(now, region) {
                Ok(q) => {
                    self.replies.insert(q, Reply::Announce(tx));
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                }
            },
            Command::Withdraw(id) => core.withdraw(id),
            Command::MoveTo(p) => core.move_to(now, p),
            Command::LocalAddrs(tx) => {
                let _ = tx.send(self.local_addrs());
            }
            Command::Leave(_) => {}
        }
    }

    fn start_core(&mut self, addr: &Multiaddr) {
        let me = Contact {
            id: node_id(&self.peer_id),
            pos: self.cfg.position,
            seq: 0,
            addr: pack_addr(&self.peer_id, Some(addr)),
        };
        let seed = me.id.0;
        let mut core = Peer::new(self.cfg.overlay.clone(), me, seed);
        let now = self.now();
        let mut joined_via = false;
        for b in &self.cfg.bootstrap {
            let Some(Protocol::P2p(peer)) = b.iter().last() else {
                tracing::warn!(addr = %b, "bootstrap address without /p2p/ peer id ignored");
                continue;
            };
            let mut bare = b.clone();
            bare.pop();
            core.join(
                now,
                Dest {
                    id: node_id(&peer),
                    addr: pack_addr(&peer, Some(&bare)),
                },
            );
            joined_via = true;
            break;
        }
        if !joined_via {
            if self.cfg.mdns {
                self.mdns_deadline =
                    Some(now + u64::try_from(self.cfg.mdns_wait.as_millis()).unwrap_or(0));
            } else {
                core.start_alone(now);
            }
        }
        self.core = Some(core);
        for (peer, addr) in std::mem::take(&mut self.mdns_early) {
            self.mdns_join(now, peer, &addr);
        }
        let addrs = self.local_addrs();
        for w in self.addr_waiters.drain(..) {
            let _ = w.send(addrs.clone());
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        let now = self.now();
        match ev {
            SwarmEvent::NewListenAddr { address, .. } if self.core.is_none() => {
                self.start_core(&address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Overlay(ev)) => self.on_overlay(now, ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for a in info.listen_addrs.into_iter().take(8) {
                    self.swarm.add_peer_address(peer_id, a);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
                for (peer, addr) in list {
                    self.swarm.add_peer_address(peer, addr.clone());
                    if self.core.is_some() {
                        self.mdns_join(now, peer, &addr);
                    } else if self.mdns_early.len() < 64 {
                        self.mdns_early.push((peer, addr));
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                // A hint, not a verdict: probe the peer; if it is gone the
                // dial fails and the core repairs around it.
                if let Some(c) = self.core.as_mut() {
                    c.suspect(now, node_id(&peer_id));
                }
            }
            _ => {}
        }
    }

    /// While waiting for mDNS peers: join through a discovered peer whose
    /// node id is smaller than ours. Two waiting peers that found each
    /// other would otherwise both join through the other and wait forever;
    /// this way the smallest waits out `mdns_wait`, starts the overlay, and
    /// the others' join retries reach it.
    fn mdns_join(&mut self, now: u64, peer: PeerId, addr: &Multiaddr) {
        let Some(c) = self.core.as_mut() else {
            return;
        };
        let id = node_id(&peer);
        if c.is_joined() || self.mdns_deadline.is_none() || id >= c.me().id {
            return;
        }
        self.mdns_deadline = None;
        c.join(
            now,
            Dest {
                id,
                addr: pack_addr(&peer, Some(addr)),
            },
        );
    }

    fn on_overlay(&mut self, now: u64, ev: request_response::Event<Vec<u8>, u8>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let _ = self.swarm.behaviour_mut().overlay.send_response(channel, 1);
                    match wire::decode(&request) {
                        Ok(msg) => {
                            if msg.sender().is_some_and(|s| s.id != node_id(&peer)) {
                                tracing::warn!(%peer, "overlay message with a forged sender dropped");
                                return;
                            }
                            if let Some(c) = self.core.as_mut() {
                                c.handle(now, msg);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "undecodable overlay message dropped")
                        }
                    }
                }
                request_response::Message::Response { request_id, .. } => {
                    self.in_flight.remove(&request_id);
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some((id, msg)) = self.in_flight.remove(&request_id) {
                    tracing::debug!(%peer, error = %error, "overlay send failed");
                    if let Some(c) = self.core.as_mut() {
                        c.unreachable(now, id, msg);
                    }
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, error = %error, "overlay inbound request failed");
            }
            _ => {}
        }
    }

    /// Move the core's outputs to the network and to waiting callers.
    fn pump(&mut self) {
        let now = self.now();
        while let Some(out) = self.core.as_mut().and_then(Peer::poll_output) {
            match out {
                Output::Send { to, msg } => self.send(now, to, msg),
                Output::Event(e) => self.on_event(e),
            }
        }
        if let Some(c) = self.core.as_ref() {
            let s = Status {
                joined: c.is_joined(),
                position: c.me().pos,
                voronoi: c.voronoi_neighbours().iter().copied().collect(),
                links: c.links().len(),
                dropped_sends: self.dropped_sends,
                regions_refused: c.stats().regions_refused,
            };
            self.status.send_if_modified(|old| {
                if *old == s {
                    false
                } else {
                    *old = s;
                    true
                }
            });
        }
    }

    fn send(&mut self, now: u64, to: Dest, msg: Message) {
        let Some((peer, addr)) = unpack_addr(&to.addr).filter(|(p, _)| node_id(p) == to.id) else {
            if let Some(c) = self.core.as_mut() {
                c.unreachable(now, to.id, msg);
            }
            return;
        };
        if self.in_flight.len() >= self.cfg.requests_max {
            self.dropped_sends += 1;
            tracing::warn!(%peer, "overlay request limit reached, message dropped");
            return;
        }
        let Ok(bytes) = wire::encode(&msg) else {
            tracing::warn!(%peer, "overlay message over the size bound dropped");
            return;
        };
        let addrs: Vec<Multiaddr> = addr.into_iter().collect();
        let id = self
            .swarm
            .behaviour_mut()
            .overlay
            .send_request_with_addresses(&peer, bytes, addrs);
        self.in_flight.insert(id, (to.id, msg));
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Joined => tracing::info!(peer = %self.peer_id, "joined the overlay"),
            Event::Located {
                query,
                owner,
                regions,
                hops,
            } => {
                if let Some(Reply::Locate(tx)) = self.replies.remove(&query) {
                    let owner_peer = unpack_addr(&owner.addr).map(|(p, _)| p);
                    let _ = tx.send(Ok(Location {
                        owner,
                        owner_peer,
                        regions,
                        hops,
                    }));
                }
            }
            Event::AoiDone { query, peers, .. } => {
                if let Some(Reply::Aoi(tx)) = self.replies.remove(&query) {
                    let _ = tx.send(Ok(peers));
                }
            }
            Event::Announced { query, visited } => {
                if let Some(Reply::Announce(tx)) = self.replies.remove(&query) {
                    let _ = tx.send(Ok(visited));
                }
            }
            Event::QueryFailed { query } => match self.replies.remove(&query) {
                Some(Reply::Locate(tx)) => {
                    let _ = tx.send(Err(ServiceError::Timeout));
                }
                Some(Reply::Aoi(tx)) => {
                    let _ = tx.send(Err(ServiceError::Timeout));
                }
                Some(Reply::Announce(tx)) => {
                    let _ = tx.send(Err(ServiceError::Timeout));
                }
                None => {}
            },
        }
    }
}
