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
use crate::replica::wire::player_of;
use crate::replica::{Digest, Engine, Manifest, Replica, SignedInput, Solo, SourceBook};
use crate::store::{LogRecord, Store, StoreError};

/// How the world runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// A snapshot every this many ticks.
    pub snapshot_every: u64,
    /// Most inputs in one tick's batch; the rest wait for the next tick.
    pub inputs_per_tick_max: usize,
    /// Most inputs waiting; beyond that submissions are refused as busy.
    pub queue_max: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            snapshot_every: 200,
            inputs_per_tick_max: 1000,
            queue_max: 4096,
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
}

/// What the tick thread is handed.
struct Submit {
    input: SignedInput,
    reply: oneshot::Sender<Result<Receipt, SubmitError>>,
}

/// The node's key and the next sequence number of its player; one lock so
/// that inputs enter the queue in the order of their numbers.
#[derive(Debug)]
struct Signer {
    key: SigningKey,
    region: metatopia_sim::RegionId,
    next_seq: u64,
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
}

impl Handle {
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
            let input = SignedInput::sign(&signer.key, signer.region, signer.next_seq, kind);
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

/// Starts the tick thread. It runs until `stop` is set, then returns.
pub fn start(
    hosted: Hosted,
    config: Config,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(Handle, JoinHandle<Result<(), StoreError>>)> {
    let Hosted {
        store,
        manifest,
        key,
        region,
        head,
        host,
        sources,
    } = hosted;
    let (tx, rx) = mpsc::channel(config.queue_max.max(1));
    let state = region.sim().state();
    let me = player_of(&key);
    let signer = Signer {
        key: key.clone(),
        region: manifest.region,
        next_seq: state.players.get(&me).map_or(0, |p| p.last_seq) + 1,
    };
    let published = Arc::new(Published {
        tick: region.tick_number().saturating_sub(1),
        sim: region.sim().clone(),
        hash: region.hash(),
        events: Arc::new(Vec::new()),
    });
    let hz = u64::from(state.settings.tick_rate_hz.clamp(1, 1000));
    let replica_config = crate::replica::Config {
        tick_ms: 1000 / hz,
        inputs_per_tick_max: config.inputs_per_tick_max,
        mempool_max: config.queue_max.max(1),
        store_snapshot_every: config.snapshot_every.max(1),
        ..crate::replica::Config::default()
    };
    let core = Replica::new(replica_config, manifest, key, host, sources, region, head);
    let engine = Solo::new(head);
    let (pub_tx, pub_rx) = watch::channel(published);
    let (events, _) = broadcast::channel(64);
    let counters = Arc::new(Counters::default());
    let handle = Handle {
        tx,
        signer: Arc::new(Mutex::new(signer)),
        published: pub_rx,
        events: events.clone(),
        counters: counters.clone(),
    };
    let driver = Driver {
        core,
        engine,
        store,
        stop,
        rx,
        pub_tx,
        events,
        counters,
        waiting: BTreeMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("metatopia-tick".into())
        .spawn(move || driver.run())?;
    Ok((handle, thread))
}

/// The tick thread: the replica core's driver in a group of one.
struct Driver {
    core: Replica,
    engine: Solo,
    store: Store,
    stop: Arc<AtomicBool>,
    rx: mpsc::Receiver<Submit>,
    pub_tx: watch::Sender<Arc<Published>>,
    events: broadcast::Sender<Arc<Published>>,
    counters: Arc<Counters>,
    waiting: BTreeMap<(PlayerId, u64), oneshot::Sender<Result<Receipt, SubmitError>>>,
}

impl Driver {
    fn run(mut self) -> Result<(), StoreError> {
        info!(tick = self.core.head().tick_number(), "world ticking");
        while !self.stop.load(Ordering::Relaxed) {
            let now = unix_ms();
            while let Ok(s) = self.rx.try_recv() {
                let key = (s.input.input.player, s.input.input.seq);
                match self.core.submit(s.input) {
                    Ok(()) => {
                        self.waiting.insert(key, s.reply);
                    }
                    Err(e) => {
                        let _ = s.reply.send(Err(SubmitError::Refused(e)));
                    }
                }
            }
            let started = Instant::now();
            let mut worked = false;
            while let Some(order) = self.engine.poll_order() {
                let _span = info_span!("tick", tick = self.core.head().tick_number()).entered();
                self.core.order(now, order);
                worked = true;
            }
            self.core.tick(now);
            while let Some(out) = self.core.poll_output() {
                worked |= self.output(out, started)?;
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
        for (_, reply) in std::mem::take(&mut self.waiting) {
            let _ = reply.send(Err(SubmitError::Stopped));
        }
        Ok(())
    }

    /// Carries out one output of the core; true if the engine got an answer.
    fn output(&mut self, out: Output, started: Instant) -> Result<bool, StoreError> {
        match out {
            Output::Answer(a) => {
                self.engine.answer(a);
                return Ok(true);
            }
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
                if let Err(e) = self
                    .store
                    .append(&record, c.snapshot.as_deref().map(|b| &b[..]))
                {
                    warn!(error = %e, "commit failed: stopping the world");
                    for (_, reply) in std::mem::take(&mut self.waiting) {
                        let _ = reply.send(Err(SubmitError::Stopped));
                    }
                    return Err(e);
                }
                let elapsed = started.elapsed().as_micros() as u64;
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
                rejection,
            } => {
                let counter = match rejection {
                    Some(_) => &self.counters.rejected,
                    None => &self.counters.accepted,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some(reply) = self.waiting.remove(&(player, seq)) {
                    let _ = reply.send(match rejection {
                        Some(reason) => Err(SubmitError::Rejected(reason)),
                        None => Ok(Receipt { tick, seq }),
                    });
                }
            }
            // A group of one has nobody to talk to.
            Output::Send { .. } => {}
            Output::Desync(d) => warn!(tick = d.tick, "desync reported in a group of one"),
            Output::Resynced { tick } => info!(tick, "resynced"),
        }
        Ok(false)
    }
}
