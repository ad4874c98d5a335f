//! The driver of an observer: a node that follows a region hosted by a
//! replica group it is not a member of ([`crate::replica::observer`]).
//!
//! Its own thread runs a tokio runtime with the node's libp2p swarm, one
//! follow stream per member and the observer core. The world's [`Handle`]
//! exists once the observer has joined (a snapshot that f + 1 members
//! vouched for), so the HTTP side never shows a state the group did not
//! sign; [`start_observer`] waits for that.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use metatopia_sim::{PlayerId, RegionId, ScriptHost};

use super::{GroupStatus, Handle, Sink, Submit, connect, listing, unix_ms};
use crate::replica::core::{Output, To};
use crate::replica::observer::Observer;
use crate::replica::wire::player_of;
use crate::replica::{Message, SourceBook, net, simplex};
use crate::store::StoreError;

/// Inputs of this node's player waiting for the observer's driver.
const QUEUE_MAX: usize = 4096;

/// What an observer follows.
#[derive(Debug, Clone)]
pub struct Observing {
    /// The region.
    pub region: RegionId,
    /// Its replica group: every member with its libp2p address.
    pub members: Vec<(PlayerId, Multiaddr)>,
    /// Where this node's swarm listens (port 0 picks one).
    pub listen: Multiaddr,
    /// Checkpoint period of the group, in ticks.
    pub checkpoint_every: u64,
    /// How long to wait for a snapshot the group vouches for.
    pub join_timeout: Duration,
    /// The content store's peer side: served and fetched over the swarm.
    pub peers: Option<crate::content::peer::Peers>,
    /// Caps on the swarm's libp2p connections.
    pub caps: net::Caps,
}

/// Why an observer could not join.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The network could not start.
    #[error("{0}")]
    Net(#[from] net::NetError),
    /// A member key is not an ed25519 key.
    #[error("{0}")]
    Members(#[from] simplex::StartError),
    /// No vouched snapshot in time.
    #[error(
        "no snapshot that {need} of the {members} members vouch for arrived within {secs} s ({answered} member(s) answered); are they running, and is the group's address list right?"
    )]
    Timeout {
        /// Members needed (f + 1).
        need: usize,
        /// Members in the group.
        members: usize,
        /// Members heard from.
        answered: usize,
        /// The wait.
        secs: u64,
    },
    /// The thread could not start.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Starts an observer and waits until it has joined; the handle then
/// shows the followed region and forwards this node's player's inputs.
/// It runs until `stop` is set.
pub fn start_observer(
    key: SigningKey,
    observing: Observing,
    host: Arc<dyn ScriptHost + Send + Sync>,
    sources: Arc<dyn SourceBook>,
    stop: Arc<AtomicBool>,
) -> Result<(Handle, JoinHandle<Result<(), StoreError>>), ObserveError> {
    let ids: Vec<PlayerId> = observing.members.iter().map(|(m, _)| *m).collect();
    let check = simplex::proof_check(&ids)?;
    let core = Observer::new(
        player_of(&key),
        observing.region,
        ids.clone(),
        observing.checkpoint_every,
        host,
        sources,
        check,
    );
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<Handle, ObserveError>>(1);
    let answered = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let heard = answered.clone();
    let timeout = observing.join_timeout;
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("metatopia-observer".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| StoreError::Db(e.to_string()))?;
            runtime.block_on(drive(key, observing, core, heard, ready_tx, thread_stop))
        })?;
    match ready_rx.recv_timeout(timeout) {
        Ok(Ok(handle)) => Ok((handle, thread)),
        Ok(Err(e)) => {
            stop.store(true, Ordering::Relaxed);
            Err(e)
        }
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            let answered = answered.lock().map_or(0, |a| a.len());
            Err(ObserveError::Timeout {
                need: (ids.len().saturating_sub(1)) / 3 + 1,
                members: ids.len(),
                answered,
                secs: timeout.as_secs(),
            })
        }
    }
}

/// The world's parts, made at the join.
struct Joined {
    rx: mpsc::Receiver<Submit>,
    sink: Sink,
}

async fn drive(
    key: SigningKey,
    observing: Observing,
    mut core: Observer,
    heard: Arc<Mutex<std::collections::BTreeSet<PlayerId>>>,
    ready: std::sync::mpsc::SyncSender<Result<Handle, ObserveError>>,
    stop: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    let mut mesh = match net::listen(&key, observing.listen.clone(), observing.caps).await {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return Ok(());
        }
    };
    if let Some(p) = &observing.peers
        && let Err(e) = mesh.serve_content(p, &observing.members)
    {
        let _ = ready.send(Err(e.into()));
        return Ok(());
    }
    info!(addr = %mesh.addr, "observer listening");
    let (out, mut inbound) = match net::follow(&mesh, &observing.members, simplex::CHANNEL_MEMBERS)
    {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return Ok(());
        }
    };
    let me = player_of(&key);
    let members: Vec<PlayerId> = observing.members.iter().map(|(m, _)| *m).collect();
    let mut joined: Option<Joined> = None;
    let links = mesh.links();
    let mut links_shown = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(j) = &joined
            && links_shown.elapsed() >= Duration::from_millis(100)
        {
            links_shown = Instant::now();
            if let Ok(mut g) = j.sink.group.lock() {
                g.links = links.snapshot();
            }
        }
        let wait = core
            .next_deadline()
            .map_or(100, |d| d.saturating_sub(unix_ms()).clamp(1, 100));
        tokio::select! {
            msg = inbound.recv() => {
                let Some((from, bytes)) = msg else { break };
                if let Ok(mut h) = heard.lock() {
                    h.insert(from);
                }
                match Message::decode(&bytes) {
                    Ok(m) => core.handle(from, m),
                    Err(e) => debug!(error = %e, "member message refused"),
                }
            }
            s = async {
                match joined.as_mut() {
                    Some(j) => j.rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let (Some(s), Some(j)) = (s, joined.as_mut()) {
                    let input = j.sink.wait(s);
                    core.submit(input);
                }
            }
            // At most 100 ms: the stop flag is read once a loop.
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
        core.tick(unix_ms());
        while let Some(o) = core.poll_output() {
            match o {
                Output::Send { to, msg } => {
                    let bytes = Bytes::from(msg.encode());
                    let targets: Vec<Option<PlayerId>> = match to {
                        To::All => vec![None],
                        To::One(p) => vec![Some(p)],
                        To::Some(ps) => ps.into_iter().map(Some).collect(),
                        // An observer sends nothing to neighbour groups.
                        To::Region(_) => Vec::new(),
                    };
                    for t in targets {
                        if out.try_send((t, bytes.clone())).is_err() {
                            warn!("observer send queue full: message dropped");
                        }
                    }
                }
                Output::Visible(p) if joined.is_none() => {
                    let (handle, j) = join(&key, me, &members, &observing, p);
                    joined = Some(j);
                    let _ = ready.send(Ok(handle));
                }
                other => {
                    if let Some(j) = joined.as_mut() {
                        j.sink.started = Instant::now();
                        j.sink.output(other)?;
                    }
                }
            }
        }
    }
    if let Some(mut j) = joined {
        j.sink.stop_all();
    }
    Ok(())
}

/// The handle and sink of an observer that just joined at `published`.
fn join(
    key: &SigningKey,
    me: PlayerId,
    members: &[PlayerId],
    observing: &Observing,
    published: Arc<crate::replica::Published>,
) -> (Handle, Joined) {
    let group = GroupStatus {
        members: members.to_vec(),
        me: Some(me),
        observer: true,
        addresses: listing(&observing.members),
        ..GroupStatus::default()
    };
    let (handle, rx, sink) = connect(key, observing.region, published, group, None, QUEUE_MAX);
    (handle, Joined { rx, sink })
}
