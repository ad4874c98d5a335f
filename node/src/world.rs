//! The local world: a single-replica region ticking in real time.
//!
//! One OS thread owns the [`Region`] (main sim and physics world) and the
//! [`Store`]. Every tick it takes the
//! waiting inputs (bounded), closes the batch with the wall-clock sim time
//! (never earlier than the last tick's), executes it (main sim, then the
//! physics step of the commands it issued; the physics events come back as
//! inputs of the next tick), commits it to the
//! store, and only then publishes the new state and answers the players
//! whose inputs were in it. A player who got an answer has a committed
//! input: it survives `kill -9`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, info_span, warn};

use metatopia_physics::Region;
use metatopia_sim::input::{Event, Input, InputKind, Rejection};
use metatopia_sim::state::State;
use metatopia_sim::{Batch, PlayerId, ScriptHost, Sim};

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

/// The world as of the last committed tick.
#[derive(Debug, Clone)]
pub struct Published {
    /// The main sim after the last committed tick.
    pub sim: Sim,
    /// The region hash after it (main sim and physics): the state hash of
    /// the log, the views and the ETag.
    pub hash: [u8; 32],
    /// The events of that tick.
    pub events: Arc<Vec<Event>>,
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
    /// Too many inputs are waiting.
    #[error("the node is busy: input queue full")]
    Busy,
    /// The world has stopped.
    #[error("the world has stopped")]
    Stopped,
}

struct Submit {
    player: PlayerId,
    kind: InputKind,
    reply: oneshot::Sender<Result<Receipt, SubmitError>>,
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
    published: watch::Receiver<Arc<Published>>,
    events: broadcast::Sender<Arc<Published>>,
    /// Counters.
    pub counters: Arc<Counters>,
}

impl Handle {
    /// The latest committed world.
    pub fn latest(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    /// A stream of committed ticks (lagging receivers skip ahead).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Published>> {
        self.events.subscribe()
    }

    /// Submits an input and waits until it is committed or refused.
    pub async fn submit(&self, player: PlayerId, kind: InputKind) -> Result<Receipt, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Submit {
                player,
                kind,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.counters.busy.fetch_add(1, Ordering::Relaxed);
                    warn!("input queue full: input refused");
                    SubmitError::Busy
                }
                mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
            })?;
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

/// Starts the tick thread. It runs until `stop` is set, then returns.
pub fn start(
    store: Store,
    region: Region,
    host: Arc<dyn ScriptHost + Send>,
    config: Config,
    stop: Arc<AtomicBool>,
) -> std::io::Result<(Handle, JoinHandle<Result<(), StoreError>>)> {
    let (tx, rx) = mpsc::channel(config.queue_max.max(1));
    let published = Arc::new(Published {
        sim: region.sim().clone(),
        hash: region.hash(),
        events: Arc::new(Vec::new()),
    });
    let (pub_tx, pub_rx) = watch::channel(published);
    let (events, _) = broadcast::channel(64);
    let counters = Arc::new(Counters::default());
    let handle = Handle {
        tx,
        published: pub_rx,
        events: events.clone(),
        counters: counters.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("metatopia-tick".into())
        .spawn(move || {
            run(
                store, region, host, config, stop, rx, pub_tx, events, counters,
            )
        })?;
    Ok((handle, thread))
}

#[allow(clippy::too_many_arguments)]
fn run(
    store: Store,
    mut region: Region,
    host: Arc<dyn ScriptHost + Send>,
    config: Config,
    stop: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<Submit>,
    pub_tx: watch::Sender<Arc<Published>>,
    events: broadcast::Sender<Arc<Published>>,
    counters: Arc<Counters>,
) -> Result<(), StoreError> {
    let hz = u64::from(region.sim().state().settings.tick_rate_hz.clamp(1, 1000));
    let period = Duration::from_micros(1_000_000 / hz);
    let mut next = Instant::now();
    // Per-player sequence numbers handed out by this node.
    let mut seqs: std::collections::BTreeMap<PlayerId, u64> = std::collections::BTreeMap::new();
    info!(tick = region.tick_number(), hz, "world ticking");
    while !stop.load(Ordering::Relaxed) {
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            // Far behind (suspended, overloaded): skip ticks, not catch up.
            next = now;
        }
        let sim = region.sim();
        let tick = sim.tick();
        let _span = info_span!("tick", tick).entered();
        let mut waiting = Vec::new();
        let mut inputs = Vec::new();
        while inputs.len() < config.inputs_per_tick_max {
            let Ok(s) = rx.try_recv() else { break };
            let last = sim.state().players.get(&s.player).map_or(0, |p| p.last_seq);
            let seq = seqs.entry(s.player).or_insert(0);
            *seq = (*seq).max(last) + 1;
            inputs.push(Input {
                player: s.player,
                seq: *seq,
                kind: s.kind,
            });
            waiting.push((s.player, *seq, s.reply));
        }
        let batch = Batch {
            tick,
            time_ms: unix_ms().max(sim.state().time_ms),
            inputs,
        };
        let started = Instant::now();
        let report = match region.tick(&batch, &*host, &[]) {
            Ok(r) => r,
            Err(e) => {
                // Cannot happen: the batch is built for the next tick at a
                // time no earlier than the last. Refuse the inputs and go on.
                warn!(error = %e, "batch refused by the sim");
                for (_, _, reply) in waiting {
                    let _ = reply.send(Err(SubmitError::Stopped));
                }
                continue;
            }
        };
        let snapshot = region
            .tick_number()
            .is_multiple_of(config.snapshot_every.max(1))
            .then_some(&region);
        if let Err(e) = store.append(
            &LogRecord {
                batch,
                hash: report.hash,
            },
            snapshot,
        ) {
            warn!(error = %e, "commit failed: stopping the world");
            for (_, _, reply) in waiting {
                let _ = reply.send(Err(SubmitError::Stopped));
            }
            return Err(e);
        }
        let elapsed = started.elapsed().as_micros() as u64;
        counters.ticks.fetch_add(1, Ordering::Relaxed);
        counters.tick_us_total.fetch_add(elapsed, Ordering::Relaxed);
        counters.tick_us_last.store(elapsed, Ordering::Relaxed);
        let sim_report = report.sim;
        counters
            .accepted
            .fetch_add(u64::from(sim_report.accepted), Ordering::Relaxed);
        counters
            .rejected
            .fetch_add(u64::from(sim_report.rejected), Ordering::Relaxed);
        if sim_report.accepted + sim_report.rejected > 0 {
            debug!(
                accepted = sim_report.accepted,
                rejected = sim_report.rejected,
                "tick committed"
            );
        }
        let published = Arc::new(Published {
            sim: region.sim().clone(),
            hash: region.hash(),
            events: Arc::new(sim_report.events),
        });
        pub_tx.send_replace(published.clone());
        let _ = events.send(published.clone());
        for (player, seq, reply) in waiting {
            let rejection = published.events.iter().find_map(|e| match e {
                Event::Rejected {
                    player: p,
                    seq: s,
                    reason,
                } if *p == player && *s == seq => Some(reason.clone()),
                _ => None,
            });
            let _ = reply.send(match rejection {
                Some(reason) => Err(SubmitError::Rejected(reason)),
                None => Ok(Receipt { tick, seq }),
            });
        }
    }
    info!(tick = region.tick_number(), "world stopped");
    Ok(())
}
