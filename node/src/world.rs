//! The local world: a region hosted by this node's replica core, ticking
//! in real time.
//!
//! One OS thread owns the [`Replica`] core (main sim and physics world at
//! its head) and the [`Store`]. It is the core's driver: it hands it the
//! players' inputs (signed here with the node's key, numbered in order),
//! relays between the core and its ordering engine, sleeps until the
//! core's next deadline, makes finalized ticks durable, publishes
//! notarized states and answers the players whose inputs a finalized tick
//! held. A player who got an answer has a committed input: it survives
//! `kill -9`. A private world is a group of one ([`Solo`] engine); a group
//! of several uses the same core with a BFT engine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn};

use metatopia_physics::Region;
use metatopia_sim::input::{InputKind, Rejection};
use metatopia_sim::state::State;
use metatopia_sim::{PlayerId, ScriptHost};

pub use crate::replica::Published;
use crate::replica::core::{Output, Refusal};
use crate::replica::wire::{Sig, player_of};
use crate::replica::{Digest, Engine, Manifest, Replica, SignedInput, Solo, SourceBook};
use crate::store::{LogRecord, Store, StoreError};

mod observe;
pub use observe::{ObserveError, Observing, start_observer};

/// How the world runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// A snapshot every this many ticks.
    pub snapshot_every: u64,
    /// Most inputs in one tick's batch; the rest wait for the next tick.
    pub inputs_per_tick_max: usize,
    /// Most inputs waiting; beyond that submissions are refused as busy.
    pub queue_max: usize,
    /// Most inputs of one player waiting.
    pub player_pending_max: usize,
    /// New inputs one player may send per second on average, and at once.
    pub player_inputs_per_sec: u32,
    /// See `player_inputs_per_sec`.
    pub player_inputs_burst: u32,
    /// Neighbour regions hosted by other groups (ADR 0013).
    pub neighbours: Vec<crate::replica::group::Neighbour>,
    /// The world's tick schedule (`replica::Config::epoch_ms`).
    pub epoch_ms: Option<u64>,
    /// `replica::Config::border_wait_ms`.
    pub border_wait_ms: u64,
    /// `replica::Config::border_wait_live_ms`.
    pub border_wait_live_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            snapshot_every: 200,
            inputs_per_tick_max: 1000,
            queue_max: 4096,
            player_pending_max: 256,
            player_inputs_per_sec: 1000,
            player_inputs_burst: 2000,
            neighbours: Vec::new(),
            epoch_ms: None,
            border_wait_ms: 20,
            border_wait_live_ms: 100,
        }
    }
}

/// A committed input's receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    /// The tick whose batch held it.
    pub tick: u64,
    /// Its sequence number.
    pub seq: u64,
}

/// Why a submission did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The sim refused it (it changed nothing).
    #[error("{0}")]
    Rejected(Rejection),
    /// The replica refused it before ordering.
    #[error("{0}")]
    Refused(Refusal),
    /// Too many inputs are waiting.
    #[error("the node is busy: input queue full")]
    Busy,
    /// This node holds no key for the player.
    #[error("this node cannot sign for player {0}")]
    NotMine(PlayerId),
    /// The world has stopped.
    #[error("the world has stopped")]
    Stopped,
    /// Another input of this player committed with the same sequence
    /// number (signed by an earlier run of this node, or by another node
    /// holding the same key); this one was not applied.
    #[error(
        "sequence number {seq} of this player was taken by another input, committed at tick {tick}; this input was not applied (send it again)"
    )]
    Superseded {
        /// The sequence number.
        seq: u64,
        /// The tick that committed the other input.
        tick: u64,
    },
    /// The node could not durably reserve sequence numbers for its player.
    #[error("this node cannot record its player's sequence numbers: {0}")]
    Sequence(String),
}

/// What the tick thread is handed.
struct Submit {
    input: SignedInput,
    reply: Reply,
}

/// The node's key and the next sequence number of its player; one lock so
/// that inputs enter the queue in the order of their numbers.
///
/// A sequence number is never signed twice, also across restarts: before
/// signing `next_seq`, the signer has made `reserved > next_seq` durable in
/// the store, and a restart numbers from `reserved` on. (Numbering from the
/// state's `last_seq` alone would reuse the numbers of inputs still in flight
/// or committed in ticks this node has not caught up with.) Gaps are fine:
/// the sim only needs numbers to grow.
#[derive(Debug)]
struct Signer {
    key: SigningKey,
    region: metatopia_sim::RegionId,
    next_seq: u64,
    /// Numbers below this may have been signed; none at or above it.
    reserved: u64,
    /// Where `reserved` is kept; none for an observer (it numbers from the
    /// group's state, which it follows).
    store: Option<Arc<Store>>,
}

/// Sequence numbers reserved with one durable write.
const SEQ_BLOCK: u64 = 1024;

impl Signer {
    /// Signs `kind` with the next number, reserving a new block first when
    /// the reserved one is used up.
    fn sign(&mut self, kind: InputKind) -> Result<SignedInput, SubmitError> {
        if let Some(store) = &self.store
            && self.next_seq >= self.reserved
        {
            if self.reserved == 0 {
                // First input of this run: number after what earlier runs
                // reserved.
                let before = store
                    .seq_reserved()
                    .map_err(|e| SubmitError::Sequence(e.to_string()))?;
                self.next_seq = self.next_seq.max(before);
            }
            let upto = self.next_seq + SEQ_BLOCK;
            store
                .reserve_seq(upto)
                .map_err(|e| SubmitError::Sequence(e.to_string()))?;
            self.reserved = upto;
        }
        Ok(SignedInput::sign(
            &self.key,
            self.region,
            self.next_seq,
            kind,
        ))
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Ticks executed since start.
    pub ticks: AtomicU64,
    /// Inputs accepted.
    pub accepted: AtomicU64,
    /// Inputs rejected.
    pub rejected: AtomicU64,
    /// Inputs refused because the queue was full.
    pub busy: AtomicU64,
    /// Total tick execution time, microseconds (step + commit).
    pub tick_us_total: AtomicU64,
    /// Last tick's execution time, microseconds.
    pub tick_us_last: AtomicU64,
}

/// A cheap handle to the running world.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Submit>,
    signer: Arc<Mutex<Signer>>,
    published: watch::Receiver<Arc<Published>>,
    events: broadcast::Sender<Arc<Published>>,
    /// Counters.
    pub counters: Arc<Counters>,
    group: Arc<Mutex<GroupStatus>>,
}

impl Handle {
    /// The replica group as this member sees it.
    pub fn group(&self) -> GroupStatus {
        self.group.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The latest notarized world.
    pub fn latest(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// A stream of notarized ticks (lagging receivers skip ahead).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.events.subscribe()
    }

    /// Signs an input of this node's player with the next sequence number,
    /// submits it, and waits until its tick is finalized or it is refused.
    pub async fn submit(&self, player: PlayerId, kind: InputKind) -> Result<Receipt, SubmitError> {
        let (reply, rx) = oneshot::channel();
        {
            let mut signer = self.signer.lock().map_err(|_| SubmitError::Stopped)?;
            if player_of(&signer.key) != player {
                return Err(SubmitError::NotMine(player));
            }
            let input = signer.sign(kind)?;
            self.tx
                .try_send(Submit { input, reply })
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => {
                        self.counters.busy.fetch_add(1, Ordering::Relaxed);
                        warn!("input queue full: input refused");
                        SubmitError::Busy
                    }
                    mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
                })?;
            signer.next_seq += 1;
        }
        rx.await.map_err(|_| SubmitError::Stopped)?
    }
}

/// Milliseconds since the Unix epoch (the node's wall clock; the sim only
/// ever sees it through the batch).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The live region of a node around a genesis state: box `[0, size)`,
/// no neighbours, default gravity, the settings' tick rate.
pub fn region(genesis: State) -> Region {
    Region::from_state(genesis)
}

/// Where a region lies in the world, for physics: its box and its
/// neighbours' boxes (world coordinates), fixed when the world is created
/// (they are in every region snapshot) and checked on every start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The region's box.
    pub bounds: metatopia_physics::region::Aabb,
    /// Neighbour regions' boxes, by id.
    pub neighbours: Vec<(metatopia_sim::RegionId, metatopia_physics::region::Aabb)>,
}

impl Placement {
    /// Regions of `size` (all of the node's regions are the default size)
    /// with south-west corners at `origin` (this one) and at the
    /// neighbours' origins, world millimetres; every box starts at z = 0.
    pub fn new(
        size: metatopia_sim::Vec3,
        origin: metatopia_overlay::Point,
        neighbours: &[(metatopia_sim::RegionId, metatopia_overlay::Point)],
    ) -> Placement {
        use metatopia_sim::{Fx, Vec3};
        let boxed = |p: metatopia_overlay::Point| {
            let min = Vec3::new(Fx::from_milli(p.x), Fx::from_milli(p.y), Fx::ZERO);
            metatopia_physics::region::Aabb {
                min,
                max: min.saturating_add(size),
            }
        };
        Placement {
            bounds: boxed(origin),
            neighbours: neighbours.iter().map(|(r, p)| (*r, boxed(*p))).collect(),
        }
    }

    /// The placement a region from [`region`] has: its box at the origin,
    /// no neighbours.
    pub fn solo(size: metatopia_sim::Vec3) -> Placement {
        Placement::new(size, metatopia_overlay::Point::new(0, 0), &[])
    }

    /// Whether `region` lies here.
    pub fn matches(&self, region: &Region) -> bool {
        let cfg = region.config();
        cfg.bounds == self.bounds && cfg.neighbours == self.neighbours
    }

    /// The genesis region of `manifest` placed here. Its hash is the
    /// manifest's genesis hash (an empty space does not depend on where
    /// it is), so the genesis digest does not change.
    pub fn genesis(&self, manifest: &Manifest) -> Region {
        let plain = manifest.genesis();
        let mut cfg = plain.config().clone();
        cfg.bounds = self.bounds;
        cfg.neighbours = self.neighbours.clone();
        let placed = Region::new(cfg, manifest.settings.clone(), &manifest.founders);
        debug_assert_eq!(placed.hash(), plain.hash(), "placement changed the genesis");
        placed
    }
}

/// What a node hosts: its region as recovered, and what runs it.
pub struct Hosted {
    /// The store the region was recovered from.
    pub store: Store,
    /// The region manifest (a group of one: this node).
    pub manifest: Manifest,
    /// The node's key (signs inputs and checkpoints).
    pub key: SigningKey,
    /// The region after the last finalized tick.
    pub region: Region,
    /// Digest of that tick's proposal (the genesis digest at genesis).
    pub head: Digest,
    /// The script host.
    pub host: Arc<dyn ScriptHost + Send + Sync>,
    /// Script sources.
    pub sources: Arc<dyn SourceBook>,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosted")
            .field("manifest", &self.manifest)
            .field("tick", &self.region.tick_number())
            .finish_non_exhaustive()
    }
}

/// A replica group's state as this member sees it, for status views.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    /// The members (node keys), in the manifest's order.
    pub members: Vec<PlayerId>,
    /// This node.
    pub me: Option<PlayerId>,
    /// Recent signed checkpoints: tick → member → region hash.
    pub checkpoints: BTreeMap<u64, BTreeMap<PlayerId, Digest>>,
    /// This member's divergence, if it found one (until it resyncs).
    pub desync: Option<crate::replica::core::Desync>,
    /// Resyncs done since start.
    pub resyncs: u64,
    /// The last divergence this member resynced from, with what differed.
    pub last_desync: Option<(crate::replica::core::Desync, Vec<String>)>,
    /// The primary (the engine's leader of the newest view this member
    /// voted in) and that view; this node in a group of one.
    pub primary: Option<(u64, PlayerId)>,
    /// Where the members listen (`HEX@MULTIADDR`, as in node.toml), for
    /// observers (`metatopia join --via`).
    pub addresses: Vec<String>,
    /// This node follows the group as an observer (it is not a member).
    pub observer: bool,
    /// Border traffic with neighbour groups since start (ADR 0013).
    pub border: BorderTraffic,
    /// Every peer's link (members, observers, neighbours' members), by
    /// key.
    pub links: BTreeMap<PlayerId, crate::replica::net::Link>,
    /// The neighbour regions and their hosting groups.
    pub neighbours: Vec<NeighbourStatus>,
}

/// A member's border traffic with neighbour groups: the transport's
/// counters ([`crate::replica::net::Counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BorderTraffic {
    /// Border frames queued to neighbours' members (each copy counted).
    pub frames_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Frames dropped on full queues, outbound and inbound.
    pub dropped: u64,
    /// Streams or frames refused (not a neighbour's member, bad frame).
    pub refused: u64,
}

impl BorderTraffic {
    fn of(c: &crate::replica::net::Counters) -> BorderTraffic {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BorderTraffic {
            frames_sent: get(&c.border_sent),
            bytes_sent: get(&c.border_sent_bytes),
            dropped: get(&c.border_send_dropped).saturating_add(get(&c.border_recv_dropped)),
            refused: get(&c.border_refused),
        }
    }
}

/// Checkpoint ticks kept for status views.
const STATUS_CHECKPOINTS_MAX: usize = 16;

/// What the drivers share: the channels to the HTTP side and the store.
struct Parts {
    handle: Handle,
    rx: mpsc::Receiver<Submit>,
    core: Replica,
    sink: Sink,
}

/// Builds the handle, the core and the sink of a hosted region.
fn parts(hosted: Hosted, config: &Config) -> Parts {
    let Hosted {
        store,
        manifest,
        key,
        region,
        head,
        host,
        sources,
    } = hosted;
    let state = region.sim().state();
    let me = player_of(&key);
    let published = Arc::new(Published::new(
        region.tick_number().saturating_sub(1),
        &region,
        region.hash(),
        Vec::new(),
        Arc::default(),
    ));
    let hz = u64::from(state.settings.tick_rate_hz.clamp(1, 1000));
    let replica_config = crate::replica::Config {
        tick_ms: 1000 / hz,
        inputs_per_tick_max: config.inputs_per_tick_max,
        mempool_max: config.queue_max.max(1),
        player_pending_max: config.player_pending_max.max(1),
        player_inputs_per_sec: config.player_inputs_per_sec.max(1),
        player_inputs_burst: config.player_inputs_burst.max(1),
        store_snapshot_every: config.snapshot_every.max(1),
        diverge_at: diverge_at_for_test(),
        neighbours: config.neighbours.clone(),
        epoch_ms: config.epoch_ms,
        border_wait_ms: config.border_wait_ms,
        border_wait_live_ms: config.border_wait_live_ms,
        ..crate::replica::Config::default()
    };
    let group = GroupStatus {
        members: manifest.members.clone(),
        me: Some(me),
        primary: (manifest.members.len() == 1).then_some((0, me)),
        ..GroupStatus::default()
    };
    let (handle, rx, sink) = connect(
        &key,
        manifest.region,
        published,
        group,
        Some(Arc::new(store)),
        config.queue_max,
    );
    let core = Replica::new(replica_config, manifest, key, host, sources, region, head);
    Parts {
        handle,
        rx,
        core,
        sink,
    }
}

/// The handle the HTTP side holds and the sink the driver feeds, around
/// the world as `published` shows it: the input queue (`queue_max`), the
/// signer of this node's player (numbering after its last sequence number
/// in that world and after what `store` reserved), the published state, the event stream, the counters and
/// the group status.
fn connect(
    key: &SigningKey,
    region: metatopia_sim::RegionId,
    published: Arc<Published>,
    group: GroupStatus,
    store: Option<Arc<Store>>,
    queue_max: usize,
) -> (Handle, mpsc::Receiver<Submit>, Sink) {
    let (tx, rx) = mpsc::channel(queue_max.max(1));
    let me = player_of(key);
    let signer = Signer {
        key: key.clone(),
        region,
        next_seq: published
            .sim
            .state()
            .players
            .get(&me)
            .map_or(0, |p| p.last_seq)
            + 1,
        reserved: 0,
        store: store.clone(),
    };
    let group = Arc::new(Mutex::new(group));
    let (pub_tx, pub_rx) = watch::channel(published);
    let (events, _) = broadcast::channel(64);
    let counters = Arc::new(Counters::default());
    let handle = Handle {
        tx,
        signer: Arc::new(Mutex::new(signer)),
        published: pub_rx,
        events: events.clone(),
        counters: counters.clone(),
        group: group.clone(),
    };
    let sink = Sink {
        store,
        pub_tx,
        events,
        counters,
        waiting: Arc::default(),
        group,
        started: Instant::now(),
    };
    (handle, rx, sink)
}

/// Members as `HEX@MULTIADDR`, the form of node.toml and of the status.
fn listing(members: &[(PlayerId, libp2p::Multiaddr)]) -> Vec<String> {
    members
        .iter()
        .map(|(m, a)| format!("{}@{a}", metatopia_sim::hex(&m.0)))
        .collect()
}

/// `METATOPIA_TEST_DIVERGE_AT=TICK` makes this replica execute that tick
/// wrongly, so that tests can watch the group find and heal a divergence
/// through the real binary. Debug builds only: a release build ignores it.
fn diverge_at_for_test() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let tick = std::env::var("METATOPIA_TEST_DIVERGE_AT")
        .ok()?
        .parse()
        .ok()?;
    warn!(
        tick,
        "METATOPIA_TEST_DIVERGE_AT: this replica will diverge (test build)"
    );
    Some(tick)
}

/// Starts the tick thread of a private world (a group of one, the
/// [`Solo`] engine). It runs until `stop` is set, then returns.
pub fn start(
    hosted: Hosted,
    config: Config,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(Handle, JoinHandle<Result<(), StoreError>>)> {
    let head = hosted.head;
    let Parts {
        handle,
        rx,
        core,
        sink,
    } = parts(hosted, &config);
    let driver = Driver {
        core,
        engine: Solo::new(head),
        stop,
        rx,
        sink,
    };
    let thread = std::thread::Builder::new()
        .name("metatopia-tick".into())
        .spawn(move || driver.run())?;
    Ok((handle, thread))
}

/// Carries out the core's outputs that are not for the engine or the
/// network: durable commits, published states, answers, status.
struct Sink {
    /// The log (none on an observer, which keeps no log).
    store: Option<Arc<Store>>,
    pub_tx: watch::Sender<Arc<Published>>,
    events: broadcast::Sender<Arc<Published>>,
    counters: Arc<Counters>,
    waiting: Arc<Waiting>,
    group: Arc<Mutex<GroupStatus>>,
    /// When the current batch of work began (tick duration metric).
    started: Instant,
}

/// The submissions of this node's player that wait for their answer,
/// by (player, sequence number), with the signature of the input sent.
/// Shared, so that a member's input task can register a submission while
/// its committer answers others.
#[derive(Default)]
struct Waiting(Mutex<BTreeMap<(PlayerId, u64), (Sig, Reply)>>);

/// Where a submission's answer goes.
type Reply = oneshot::Sender<Result<Receipt, SubmitError>>;

impl Waiting {
    /// Remembers `s`'s reply; gives the input to hand to the core.
    fn wait(&self, s: Submit) -> SignedInput {
        let key = (s.input.input.player, s.input.input.seq);
        if let Ok(mut w) = self.0.lock() {
            w.insert(key, (s.input.sig, s.reply));
        }
        s.input
    }

    /// Answers the submission of (`player`, `seq`). `committed` is the
    /// signature of the input that committed with that number, if one
    /// did: when it is not the input sent, the answer is
    /// [`SubmitError::Superseded`], never another input's receipt.
    fn answer(
        &self,
        player: PlayerId,
        seq: u64,
        committed: Option<(Sig, u64)>,
        answer: Result<Receipt, SubmitError>,
    ) {
        let waiting = self
            .0
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&(player, seq)));
        if let Some((sent, reply)) = waiting {
            let answer = match committed {
                Some((sig, tick)) if sig != sent => {
                    warn!(
                        seq,
                        tick, "another input of this player committed with this sequence number"
                    );
                    Err(SubmitError::Superseded { seq, tick })
                }
                _ => answer,
            };
            let _ = reply.send(answer);
        }
    }

    /// Answers every waiting submission: the world stopped.
    fn stop_all(&self) {
        let all = self.0.lock().map(|mut w| std::mem::take(&mut *w));
        for (_, (_, reply)) in all.unwrap_or_default() {
            let _ = reply.send(Err(SubmitError::Stopped));
        }
    }
}

impl Sink {
    fn wait(&mut self, s: Submit) -> SignedInput {
        self.waiting.wait(s)
    }

    fn stop_all(&mut self) {
        self.waiting.stop_all();
    }

    fn output(&mut self, out: Output) -> Result<(), StoreError> {
        match out {
            // The drivers handle these.
            Output::Answer(_) | Output::Send { .. } => {}
            Output::Visible(p) => {
                self.pub_tx.send_replace(p.clone());
                let _ = self.events.send(p);
            }
            Output::Commit(c) => {
                let record = LogRecord {
                    proposal: (*c.proposal).clone(),
                    hash: c.hash,
                    proof: c.proof,
                };
                let appended = match &self.store {
                    Some(store) => store.append(&record, c.snapshot.as_deref().map(|b| &b[..])),
                    None => Ok(()),
                };
                if let Err(e) = appended {
                    warn!(error = %e, "commit failed: stopping the world");
                    self.stop_all();
                    return Err(e);
                }
                let elapsed = self.started.elapsed().as_micros() as u64;
                self.counters.ticks.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tick_us_total
                    .fetch_add(elapsed, Ordering::Relaxed);
                self.counters.tick_us_last.store(elapsed, Ordering::Relaxed);
                debug!(
                    tick = record.tick(),
                    inputs = record.proposal.inputs.len(),
                    "tick committed"
                );
            }
            Output::Committed {
                player,
                seq,
                tick,
                sig,
                rejection,
            } => {
                let counter = match rejection {
                    Some(_) => &self.counters.rejected,
                    None => &self.counters.accepted,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.waiting.answer(
                    player,
                    seq,
                    Some((sig, tick)),
                    match rejection {
                        Some(reason) => Err(SubmitError::Rejected(reason)),
                        None => Ok(Receipt { tick, seq }),
                    },
                );
            }
            Output::Refused {
                player,
                seq,
                refusal,
            } => self
                .waiting
                .answer(player, seq, None, Err(SubmitError::Refused(refusal))),
            Output::Checkpoint { tick, member, hash } => {
                if let Ok(mut g) = self.group.lock() {
                    g.checkpoints.entry(tick).or_default().insert(member, hash);
                    while g.checkpoints.len() > STATUS_CHECKPOINTS_MAX {
                        g.checkpoints.pop_first();
                    }
                }
            }
            Output::Desync(d) => {
                warn!(tick = d.tick, mine = %metatopia_sim::hex(&d.mine), theirs = %metatopia_sim::hex(&d.theirs), "desync: this member diverged from its group; resyncing");
                if let Ok(mut g) = self.group.lock() {
                    g.desync = Some(d);
                }
            }
            Output::Resynced {
                tick,
                hash,
                snapshot,
                differences,
            } => {
                info!(tick, "resynced from the group's snapshot");
                if let Some(store) = &self.store
                    && let Err(e) = store.adopt(tick, hash, &snapshot)
                {
                    warn!(error = %e, "the adopted snapshot could not be stored: stopping the world");
                    self.stop_all();
                    return Err(e);
                }
                if let Ok(mut g) = self.group.lock() {
                    if let Some(d) = g.desync.take() {
                        g.last_desync = Some((d, differences));
                    }
                    g.resyncs += 1;
                }
            }
        }
        Ok(())
    }
}

/// The tick thread of a private world: the core's driver with [`Solo`].
struct Driver {
    core: Replica,
    engine: Solo,
    stop: Arc<AtomicBool>,
    rx: mpsc::Receiver<Submit>,
    sink: Sink,
}

impl Driver {
    fn run(mut self) -> Result<(), StoreError> {
        info!(tick = self.core.head().tick_number(), "world ticking");
        while !self.stop.load(Ordering::Relaxed) {
            let now = unix_ms();
            while let Ok(s) = self.rx.try_recv() {
                let input = self.sink.wait(s);
                let (player, seq) = (input.input.player, input.input.seq);
                if let Err(refusal) = self.core.submit(input) {
                    self.sink.output(Output::Refused {
                        player,
                        seq,
                        refusal,
                    })?;
                }
            }
            self.sink.started = Instant::now();
            let mut worked = false;
            while let Some(order) = self.engine.poll_order() {
                let _span = info_span!("tick", tick = self.core.head().tick_number()).entered();
                self.core.order(now, order);
                worked = true;
            }
            self.core.tick(now);
            while let Some(out) = self.core.poll_output() {
                match out {
                    Output::Answer(a) => {
                        self.engine.answer(a);
                        worked = true;
                    }
                    // A group of one has nobody to talk to.
                    Output::Send { .. } => {}
                    other => self.sink.output(other)?,
                }
            }
            if worked {
                continue;
            }
            let wait = self
                .core
                .next_deadline()
                .map_or(50, |d| d.saturating_sub(unix_ms()).clamp(1, 50));
            std::thread::sleep(Duration::from_millis(wait));
        }
        info!(tick = self.core.head().tick_number(), "world stopped");
        self.sink.stop_all();
        Ok(())
    }
}

/// Most outputs a member's driver may be ahead of its committer.
const COMMIT_QUEUE_MAX: usize = 4096;

/// An output and when the driver gave it out.
type Queued = (Instant, Output);

/// The committer of a member: a thread of its own that carries out the
/// sink's outputs in order (the log append and its fsync, then answers,
/// published states, status), so that a slow disk never stalls the
/// consensus driver and its votes. A player's answer still follows its
/// tick's durable commit: one thread, one queue, in the driver's order.
/// It stops on the first store error, which it leaves in `failure`.
fn committer(
    mut sink: Sink,
    failure: Arc<Mutex<Option<StoreError>>>,
) -> std::io::Result<(std::sync::mpsc::SyncSender<Queued>, JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Queued>(COMMIT_QUEUE_MAX);
    let thread = std::thread::Builder::new()
        .name("metatopia-commit".into())
        .spawn(move || {
            for (started, out) in rx {
                sink.started = started;
                if let Err(e) = sink.output(out) {
                    if let Ok(mut f) = failure.lock() {
                        *f = Some(e);
                    }
                    return;
                }
            }
        })?;
    Ok((tx, thread))
}

/// Where a member of a group of several listens and who the others are.
#[derive(Debug)]
pub struct Membership {
    /// This member's libp2p listen address.
    pub listen: libp2p::Multiaddr,
    /// Every member with its address (the manifest's members).
    pub members: Vec<(PlayerId, libp2p::Multiaddr)>,
    /// The engine's vote journal and other storage.
    pub storage: std::path::PathBuf,
    /// The content store's peer side: served and fetched over the mesh.
    pub peers: Option<crate::content::peer::Peers>,
    /// Caps on the mesh's libp2p connections.
    pub caps: crate::replica::net::Caps,
    /// The groups hosting neighbour regions, their members with addresses
    /// (border traffic, ADR 0013); a group not known yet has none.
    pub neighbours: Vec<(metatopia_sim::RegionId, Vec<(PlayerId, libp2p::Multiaddr)>)>,
    /// Groups of neighbour regions learned after the start (the overlay's
    /// signed region records, [`crate::overlay::find_neighbours`]).
    pub learned: Option<tokio::sync::mpsc::Receiver<LearnedGroup>>,
}

/// A neighbour region's hosting group, learned from the overlay: its
/// members with addresses.
#[derive(Debug, Clone)]
pub struct LearnedGroup {
    /// The neighbour region.
    pub region: metatopia_sim::RegionId,
    /// Its group's members, with their group addresses.
    pub members: Vec<(PlayerId, libp2p::Multiaddr)>,
}

/// A neighbour region as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NeighbourStatus {
    /// The region.
    pub region: u32,
    /// Its hosting group's members (node keys, hex); empty while unknown.
    pub members: Vec<String>,
    /// Where the group came from: `config` (node.toml), `overlay` (its
    /// signed region record) or `unknown` (still looked for).
    pub source: &'static str,
}

/// Starts a member of a replica group of several: its own thread runs the
/// engine's runtime (commonware on tokio), the members' libp2p mesh, the
/// Simplex engine and the core's driver ([`crate::replica::member::run`]).
/// It runs until `stop` is set.
pub fn start_member(
    hosted: Hosted,
    membership: Membership,
    config: Config,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(Handle, JoinHandle<Result<(), StoreError>>)> {
    use crate::replica::{member, net, simplex};
    use commonware_runtime::{Runner as _, Spawner as _, Supervisor as _};
    let key = hosted.key.clone();
    let genesis = hosted.manifest.genesis_digest();
    let members_ids = hosted.manifest.members.clone();
    // A primary waiting for a neighbour's border set is not silent.
    let timing = if membership.neighbours.is_empty() {
        simplex::Timing::default()
    } else {
        simplex::Timing::default()
            .with_border_wait(config.border_wait_ms.max(config.border_wait_live_ms))
    };
    let Parts {
        handle,
        mut rx,
        core,
        sink,
    } = parts(hosted, &config);
    if let Ok(mut g) = sink.group.lock() {
        g.addresses = listing(&membership.members);
        g.neighbours = membership
            .neighbours
            .iter()
            .map(|(region, members)| NeighbourStatus {
                region: region.0,
                members: members
                    .iter()
                    .map(|(m, _)| metatopia_sim::hex(&m.0))
                    .collect(),
                source: if members.is_empty() {
                    "unknown"
                } else {
                    "config"
                },
            })
            .collect();
    }
    let waiting = sink.waiting.clone();
    let status = sink.group.clone();
    let failure: Arc<Mutex<Option<StoreError>>> = Arc::new(Mutex::new(None));
    let (commits, committer) = committer(sink, failure.clone())?;
    let queue_max = config.queue_max.max(1);
    let thread = std::thread::Builder::new()
        .name("metatopia-member".into())
        .spawn(move || {
            let cfg = commonware_runtime::tokio::Config::new()
                .with_storage_directory(&membership.storage)
                .with_worker_threads(2);
            commonware_runtime::tokio::Runner::new(cfg).start(|ctx| async move {
                let failed = |what: String| {
                    warn!(error = %what, "the replica group cannot start");
                    Err(StoreError::Db(what))
                };
                let mut mesh =
                    match net::listen(&key, membership.listen.clone(), membership.caps).await {
                        Ok(m) => m,
                        Err(e) => return failed(e.to_string()),
                    };
                info!(addr = %mesh.addr, "replica group member listening");
                let counters = mesh.counters.clone();
                let links = mesh.links();
                mesh.serve_followers(simplex::CHANNEL_MEMBERS);
                if let Some(p) = &membership.peers
                    && let Err(e) = mesh.serve_content(p, &membership.members)
                {
                    return failed(e.to_string());
                }
                let mut chans = match mesh
                    .connect(player_of(&key), &membership.members, &simplex::CHANNELS)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => return failed(e.to_string()),
                };
                let (Some(members_ch), Some(resolver), Some(certs), Some(votes)) =
                    (chans.pop(), chans.pop(), chans.pop(), chans.pop())
                else {
                    return failed("the mesh gave fewer channels than asked".into());
                };
                let border = if membership.neighbours.is_empty() {
                    None
                } else {
                    match mesh.border(&membership.neighbours) {
                        Ok((tx, rx)) => {
                            let groups = membership.learned.map(|learned| {
                                learn_groups(learned, tx.clone(), status.clone(), &ctx)
                            });
                            Some(member::Border {
                                send: Box::new(move |region, bytes| tx.send(region, bytes)),
                                recv: rx,
                                groups,
                            })
                        }
                        Err(e) => return failed(e.to_string()),
                    }
                };
                let (app, engine) = simplex::bridge();
                let primary = engine.primary();
                if let Err(e) = simplex::start(
                    ctx.child("engine"),
                    &key,
                    &members_ids,
                    genesis,
                    "simplex".into(),
                    &timing,
                    net::Blocker::default(),
                    app,
                    votes,
                    certs,
                    resolver,
                ) {
                    return failed(e.to_string());
                }
                // Players' inputs: remembered for their answers, then
                // handed to the core.
                let (in_tx, in_rx) = commonware_utils::channel::mpsc::channel(queue_max);
                let inbox = waiting.clone();
                ctx.child("inputs").spawn(move |_| async move {
                    while let Some(s) = rx.recv().await {
                        let input = inbox.wait(s);
                        if in_tx.send(input).await.is_err() {
                            return;
                        }
                    }
                });
                let run = member::run(
                    ctx.child("member"),
                    core,
                    engine,
                    members_ch,
                    in_rx,
                    border,
                    member::Faults::default(),
                    // Blocks only when the committer is COMMIT_QUEUE_MAX
                    // outputs behind (the disk cannot keep up); fails only
                    // when it stopped on a store error, which stops this
                    // member below.
                    move |out| {
                        let _ = commits.send((Instant::now(), out));
                    },
                );
                let watch_stop = async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if let Ok(mut g) = status.lock() {
                            g.primary = primary.get();
                            g.border = BorderTraffic::of(&counters);
                            g.links = links.snapshot();
                        }
                        let store_failed = failure.lock().map(|f| f.is_some()).unwrap_or(true);
                        if stop.load(Ordering::Relaxed) || store_failed {
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = run => {},
                    () = watch_stop => {},
                }
                // The driver (and with it the committer's queue) is gone:
                // the committer finishes what was queued and ends.
                if committer.join().is_err() {
                    warn!("the committer panicked");
                }
                waiting.stop_all();
                let err = failure.lock().ok().and_then(|mut f| f.take());
                match err {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            })
        })?;
    Ok((handle, thread))
}

/// Takes neighbours' groups as they are learned: hands each to the
/// border transport (which dials and accepts its members from then on),
/// then to the core (which checks their border sets against them), and
/// shows it in the status. Returns the core's end.
fn learn_groups(
    mut learned: tokio::sync::mpsc::Receiver<LearnedGroup>,
    transport: crate::replica::net::BorderSender,
    status: Arc<Mutex<GroupStatus>>,
    ctx: &impl commonware_runtime::Spawner,
) -> commonware_utils::channel::mpsc::Receiver<crate::replica::group::Neighbour> {
    let (tx, rx) = commonware_utils::channel::mpsc::channel(16);
    ctx.child("neighbours").spawn(move |_| async move {
        while let Some(g) = learned.recv().await {
            if let Err(e) = transport.add(g.region, &g.members) {
                warn!(region = %g.region, error = %e, "neighbour's group not usable");
                continue;
            }
            let ids: Vec<PlayerId> = g.members.iter().map(|(m, _)| *m).collect();
            if let Ok(mut s) = status.lock()
                && let Some(n) = s.neighbours.iter_mut().find(|n| n.region == g.region.0)
            {
                n.members = ids.iter().map(|m| metatopia_sim::hex(&m.0)).collect();
                n.source = "overlay";
            }
            let n = crate::replica::group::Neighbour {
                region: g.region,
                members: ids,
            };
            if tx.send(n).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn say(text: &str) -> InputKind {
        InputKind::Say {
            text: text.into(),
            radius: None,
        }
    }

    fn signer(key: &SigningKey, last_seq: u64, store: &Arc<Store>) -> Signer {
        Signer {
            key: key.clone(),
            region: metatopia_sim::RegionId(1),
            next_seq: last_seq + 1,
            reserved: 0,
            store: Some(store.clone()),
        }
    }

    /// A node killed after signing inputs that its state has not seen
    /// committed yet (they were in flight, or committed in ticks it had
    /// not caught up with) must not sign those numbers again.
    #[test]
    fn a_restarted_signer_never_reuses_a_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let store = Arc::new(Store::open(&dir.path().join("world.redb")).unwrap());
        let mut first = signer(&key, 3, &store);
        let mut used = BTreeSet::new();
        for i in 0..3 {
            let s = first.sign(say(&format!("line {i}"))).unwrap();
            assert!(used.insert(s.input.seq));
            first.next_seq += 1;
        }
        assert_eq!(used.iter().copied().collect::<Vec<_>>(), vec![4, 5, 6]);
        // The restart numbers from the state, which saw none of them.
        drop(first);
        let mut second = signer(&key, 3, &store);
        for i in 0..SEQ_BLOCK + 2 {
            let s = second.sign(say(&format!("again {i}"))).unwrap();
            assert!(used.insert(s.input.seq), "seq {} signed twice", s.input.seq);
            second.next_seq += 1;
        }
        // And across a second block.
        let mut third = signer(&key, 3, &store);
        let s = third.sign(say("third")).unwrap();
        assert!(used.insert(s.input.seq), "seq {} signed twice", s.input.seq);
    }

    /// A waiter is answered with its own input's receipt only: another
    /// input committed with the same number is `Superseded`.
    #[test]
    fn a_waiter_is_never_given_another_inputs_receipt() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let region = metatopia_sim::RegionId(1);
        let mine = SignedInput::sign(&key, region, 4, say("line 17"));
        let other = SignedInput::sign(&key, region, 4, say("line 5"));
        let player = mine.input.player;
        let waiting = Waiting::default();
        // Waits for `mine`, then says which input committed with its
        // number at `tick`.
        let answered = |committed: &SignedInput, tick: u64| {
            let (reply, mut rx) = oneshot::channel();
            waiting.wait(Submit {
                input: mine.clone(),
                reply,
            });
            waiting.answer(
                player,
                4,
                Some((committed.sig, tick)),
                Ok(Receipt { tick, seq: 4 }),
            );
            rx.try_recv().unwrap()
        };
        let answer = answered(&other, 96);
        assert!(
            matches!(answer, Err(SubmitError::Superseded { seq: 4, tick: 96 })),
            "{answer:?}"
        );
        assert_eq!(answered(&mine, 97).unwrap(), Receipt { tick: 97, seq: 4 });
    }
}
