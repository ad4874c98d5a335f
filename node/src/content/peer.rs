//! Blobs between peers over `/metatopia/content/1` ([`super::wire`]):
//! serving from the store to any peer that asks, and fetching a missing
//! blob from the region's group members first, then any other connected
//! peer, each answer checked against the hash before it is stored.
//!
//! The protocol is registered on the group's swarm by
//! [`crate::replica::net::Mesh::serve_content`], which also hands this
//! module the swarm's stream control ([`Peers::attach`]). Until then (a
//! private world, or before the swarm listens) [`Peers::fetch`] finds no
//! peers.
//!
//! Bounds: [`SERVES_MAX`] answers at once (the next asker gets `BUSY`,
//! counted), [`FETCHES_MAX`] fetches at once, one fetch per hash at a time,
//! a blob no peer gave is not asked for again for [`NEGATIVE_MS`], every
//! read under a timeout, sizes under `content_blob_bytes_max`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use metatopia_sim::hex;

use super::wire::{self, Frame, Step, Transfer, WireError};
use super::{Hash, PutError, Store, lock};

/// The protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/metatopia/content/1");

/// Answers served at once; the next asker gets `BUSY`.
pub const SERVES_MAX: usize = 8;

/// `BUSY` answers being written at once; past it a request's stream is
/// closed unanswered (counted as busy too), so a flood of requests holds
/// at most this many tasks beyond the answers.
pub const BUSY_REPLIES_MAX: usize = 64;

/// Fetches from peers at once (the others wait).
pub const FETCHES_MAX: usize = 4;

/// How long a blob no peer gave is answered "not found" without asking
/// again (a negative cache, so repeated requests for a missing blob do not
/// become repeated rounds of requests to every peer). Shorter than the
/// follower's retry (`follow::RETRY_MS`), so its retries do ask.
pub const NEGATIVE_MS: u64 = 4_000;

/// Most blobs in the negative cache; past it the one that expires soonest
/// goes.
pub const NEGATIVE_MAX: usize = 4096;

/// Longest wait for one read or write of a frame.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Peer-to-peer counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests received from peers.
    pub requests: AtomicU64,
    /// Requests answered with the blob.
    pub served: AtomicU64,
    /// Requests for a blob this node lacks.
    pub not_here: AtomicU64,
    /// Requests refused because [`SERVES_MAX`] were being served.
    pub busy: AtomicU64,
    /// Requests that were not a hash, or broke off.
    pub bad_requests: AtomicU64,
    /// Blobs fetched from a peer, checked and stored.
    pub fetched: AtomicU64,
    /// Bytes of those blobs.
    pub fetched_bytes: AtomicU64,
    /// Answers whose bytes did not hash to the blob's name (refused).
    pub mismatches: AtomicU64,
    /// Answers that broke the protocol (refused).
    pub bad_answers: AtomicU64,
    /// Fetches that no peer could answer.
    pub failed: AtomicU64,
    /// Fetches answered from the negative cache, without asking peers.
    pub negative_hits: AtomicU64,
}

/// How a node reaches peers: the swarm's control and whom to ask.
#[derive(Clone)]
pub struct Net {
    /// The swarm's stream control.
    pub control: libp2p_stream::Control,
    /// The group's members, in the group's order (this node left out).
    pub members: Vec<PeerId>,
    /// Peers connected now (members, observers).
    pub connected: Arc<Mutex<BTreeSet<PeerId>>>,
    /// This node.
    pub me: PeerId,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Whom to ask, in order: the members, then other connected peers
    /// (connected ones only: see `replica::net::open` for why a stream is
    /// never opened to a peer the swarm has no connection with).
    pub fn candidates(&self) -> Vec<PeerId> {
        let connected = lock(&self.connected).clone();
        let mut out: Vec<PeerId> = self
            .members
            .iter()
            .filter(|m| connected.contains(m))
            .copied()
            .collect();
        out.extend(
            connected
                .into_iter()
                .filter(|p| *p != self.me && !self.members.contains(p)),
        );
        out
    }
}

/// Progress of a transfer: the hash, bytes so far, the size.
pub type Progress = Arc<dyn Fn(&Hash, u64, u64) + Send + Sync>;

struct Inner {
    store: Store,
    net: OnceLock<Net>,
    counters: Counters,
    serves: Arc<tokio::sync::Semaphore>,
    busy_replies: Arc<tokio::sync::Semaphore>,
    fetches: tokio::sync::Semaphore,
    /// One fetch per hash: later askers wait for the first.
    inflight: Mutex<BTreeMap<Hash, Arc<tokio::sync::Mutex<()>>>>,
    /// Blobs no peer gave: until when to say so without asking, and what
    /// the peers answered.
    negative: Mutex<BTreeMap<Hash, (std::time::Instant, String)>>,
    progress: Option<Progress>,
    lie: bool,
}

/// The content store's peer side (cheap to clone).
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// Why one peer's answer was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No stream could be opened.
    #[error("cannot open a stream: {0}")]
    Open(String),
    /// The stream broke or timed out.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The answer broke the protocol.
    #[error("bad answer: {0}")]
    Wire(#[from] WireError),
    /// The peer lacks the blob.
    #[error("not here")]
    NotHere,
    /// The peer is serving too many.
    #[error("busy")]
    Busy,
    /// The bytes hash to something else.
    #[error("wrong bytes: they hash to {0}")]
    Mismatch(String),
    /// The store refused them.
    #[error("{0}")]
    Store(#[from] PutError),
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No peer to ask (a private world, or the swarm is not up yet).
    #[error("blob {0} is not here and there is no peer to ask")]
    NoPeers(String),
    /// Every peer was asked; none gave the right bytes (or they were
    /// asked less than [`NEGATIVE_MS`] ago, and the answers are theirs).
    #[error("blob {hash} is not here and no peer gave it ({answers})")]
    NotFound {
        /// The blob (hex).
        hash: String,
        /// Each peer's answer.
        answers: String,
    },
}

/// A debug-build switch for tests: `METATOPIA_TEST_CONTENT_LIE=1` makes
/// this node serve every blob with its first byte flipped, so that tests
/// can watch askers refuse wrong bytes. A release build ignores it.
fn lie_for_test() -> bool {
    if !cfg!(debug_assertions) || std::env::var_os("METATOPIA_TEST_CONTENT_LIE").is_none() {
        return false;
    }
    warn!("METATOPIA_TEST_CONTENT_LIE: this node serves wrong bytes to peers (test build)");
    true
}

fn timeout_io<T>(r: Result<std::io::Result<T>, tokio::time::error::Elapsed>) -> std::io::Result<T> {
    r.map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

impl Peers {
    /// The peer side of `store`; `progress` hears about transfers.
    pub fn new(store: Store, progress: Option<Progress>) -> Peers {
        Peers {
            inner: Arc::new(Inner {
                store,
                net: OnceLock::new(),
                counters: Counters::default(),
                serves: Arc::new(tokio::sync::Semaphore::new(SERVES_MAX)),
                busy_replies: Arc::new(tokio::sync::Semaphore::new(BUSY_REPLIES_MAX)),
                fetches: tokio::sync::Semaphore::new(FETCHES_MAX),
                inflight: Mutex::new(BTreeMap::new()),
                negative: Mutex::new(BTreeMap::new()),
                progress,
                lie: lie_for_test(),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Connects to the swarm (once; later calls are ignored).
    pub fn attach(&self, net: Net) {
        let _ = self.inner.net.set(net);
    }

    /// Serves every incoming stream of [`PROTOCOL`] until the swarm stops.
    pub async fn serve(self, mut incoming: libp2p_stream::IncomingStreams) {
        while let Some((peer, stream)) = incoming.next().await {
            let c = &self.inner.counters;
            c.requests.fetch_add(1, Ordering::Relaxed);
            let slot = match self.inner.serves.clone().try_acquire_owned() {
                Ok(s) => Ok(s),
                Err(_) => {
                    c.busy.fetch_add(1, Ordering::Relaxed);
                    warn!(peer = %peer, "content request refused: {SERVES_MAX} being served");
                    match self.inner.busy_replies.clone().try_acquire_owned() {
                        Ok(s) => Err(s),
                        // Dropped: the stream closes unanswered.
                        Err(_) => continue,
                    }
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let result = match slot {
                    Ok(_slot) => this.serve_one(stream).await,
                    Err(_slot) => send_only(stream, Frame::Busy).await,
                };
                if let Err(e) = result {
                    debug!(peer = %peer, error = %e, "content request broke off");
                }
            });
        }
    }

    async fn serve_one(&self, mut stream: libp2p::Stream) -> std::io::Result<()> {
        let c = &self.inner.counters;
        let mut h = [0u8; wire::REQUEST_BYTES];
        if let Err(e) =
            timeout_io(tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut h)).await)
        {
            c.bad_requests.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let store = self.inner.store.clone();
        let opened = tokio::task::spawn_blocking(move || store.open_verified(&h))
            .await
            .map_err(std::io::Error::other)?;
        let Ok(Some((file, len))) = opened else {
            c.not_here.fetch_add(1, Ordering::Relaxed);
            return send_only(stream, Frame::NotHere).await;
        };
        let mut out = Vec::with_capacity(wire::CHUNK_BYTES_MAX + 16);
        wire::encode_frame(&Frame::Size(len), &mut out);
        write_all(&mut stream, &out).await?;
        let mut file = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; wire::CHUNK_BYTES_MAX];
        let mut left = len;
        while left > 0 {
            let want = (left as usize).min(buf.len());
            file.read_exact(&mut buf[..want]).await?;
            if self.inner.lie && left == len {
                buf[0] ^= 0xff;
            }
            out.clear();
            wire::encode_frame(&Frame::Chunk(&buf[..want]), &mut out);
            write_all(&mut stream, &out).await?;
            left -= want as u64;
        }
        out.clear();
        wire::encode_frame(&Frame::End, &mut out);
        write_all(&mut stream, &out).await?;
        stream.close().await?;
        c.served.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the store holds `h` (intact). Blocking.
    fn have(&self, h: &Hash) -> bool {
        matches!(self.inner.store.open_verified(h), Ok(Some(_)))
    }

    /// Makes sure the store holds `h`: `Ok(false)` if it already did,
    /// `Ok(true)` once fetched from a peer, checked and stored.
    pub async fn fetch(&self, h: Hash) -> Result<bool, FetchError> {
        let gate = lock(&self.inner.inflight).entry(h).or_default().clone();
        let _one = gate.lock().await;
        let result = self.fetch_locked(h).await;
        {
            let mut inflight = lock(&self.inner.inflight);
            if inflight.get(&h).is_some_and(|g| Arc::strong_count(g) <= 2) {
                inflight.remove(&h);
            }
        }
        result
    }

    async fn fetch_locked(&self, h: Hash) -> Result<bool, FetchError> {
        let this = self.clone();
        if tokio::task::spawn_blocking(move || this.have(&h))
            .await
            .unwrap_or(false)
        {
            return Ok(false);
        }
        let Some(net) = self.inner.net.get().cloned() else {
            return Err(FetchError::NoPeers(hex(&h)));
        };
        if let Some(answers) = self.recently_missing(&h) {
            self.inner
                .counters
                .negative_hits
                .fetch_add(1, Ordering::Relaxed);
            return Err(FetchError::NotFound {
                hash: hex(&h),
                answers,
            });
        }
        let candidates = net.candidates();
        if candidates.is_empty() {
            return Err(FetchError::NoPeers(hex(&h)));
        }
        let _slot = self.inner.fetches.acquire().await;
        let mut answers = Vec::new();
        for peer in candidates {
            match self.fetch_from(&net, peer, h).await {
                Ok(bytes) => {
                    let c = &self.inner.counters;
                    c.fetched.fetch_add(1, Ordering::Relaxed);
                    c.fetched_bytes.fetch_add(bytes, Ordering::Relaxed);
                    info!(blob = %hex(&h), peer = %peer, bytes, "blob fetched from a peer");
                    return Ok(true);
                }
                Err(e) => {
                    let c = &self.inner.counters;
                    match &e {
                        PeerError::Mismatch(_) => {
                            c.mismatches.fetch_add(1, Ordering::Relaxed);
                            warn!(blob = %hex(&h), peer = %peer, error = %e, "peer served wrong bytes: refused");
                        }
                        PeerError::Wire(_) => {
                            c.bad_answers.fetch_add(1, Ordering::Relaxed);
                            warn!(blob = %hex(&h), peer = %peer, error = %e, "peer broke the content protocol: refused");
                        }
                        _ => {
                            debug!(blob = %hex(&h), peer = %peer, error = %e, "peer did not give the blob")
                        }
                    }
                    answers.push(format!("{peer}: {e}"));
                }
            }
        }
        self.inner.counters.failed.fetch_add(1, Ordering::Relaxed);
        let answers = answers.join("; ");
        self.remember_missing(h, &answers);
        Err(FetchError::NotFound {
            hash: hex(&h),
            answers,
        })
    }

    /// What the peers answered, if they were asked for `h` less than
    /// [`NEGATIVE_MS`] ago and none gave it.
    fn recently_missing(&self, h: &Hash) -> Option<String> {
        let mut negative = lock(&self.inner.negative);
        match negative.get(h) {
            Some((until, answers)) if *until > std::time::Instant::now() => Some(format!(
                "{answers}; asked less than {} s ago, not asked again yet",
                NEGATIVE_MS / 1000
            )),
            Some(_) => {
                negative.remove(h);
                None
            }
            None => None,
        }
    }

    fn remember_missing(&self, h: Hash, answers: &str) {
        let now = std::time::Instant::now();
        let mut negative = lock(&self.inner.negative);
        if negative.len() >= NEGATIVE_MAX {
            negative.retain(|_, (until, _)| *until > now);
        }
        if negative.len() >= NEGATIVE_MAX
            && let Some(soonest) = negative
                .iter()
                .min_by_key(|(_, (until, _))| *until)
                .map(|(k, _)| *k)
        {
            negative.remove(&soonest);
        }
        negative.insert(
            h,
            (
                now + Duration::from_millis(NEGATIVE_MS),
                answers.to_string(),
            ),
        );
    }

    /// Asks one peer; the answer goes to a temporary file while it is
    /// hashed, and into the store only if it hashes to `h`.
    async fn fetch_from(&self, net: &Net, peer: PeerId, h: Hash) -> Result<u64, PeerError> {
        let mut control = net.control.clone();
        let mut stream = tokio::time::timeout(IO_TIMEOUT, control.open_stream(peer, PROTOCOL))
            .await
            .map_err(|_| PeerError::Open("timed out".into()))?
            .map_err(|e| PeerError::Open(e.to_string()))?;
        write_all(&mut stream, &h).await?;
        let store = &self.inner.store;
        let tmp = store.temp_path();
        let result = self.receive(&mut stream, &tmp, h).await;
        match result {
            Ok(len) => {
                let (store, path) = (store.clone(), tmp.clone());
                let put =
                    tokio::task::spawn_blocking(move || store.commit_file(&path, h, len, None))
                        .await
                        .map_err(std::io::Error::other)?;
                put?;
                Ok(len)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    /// Refuses a fetched blob of `bytes` that would take the store past
    /// `content_store_bytes_max` (fetches are not charged to a player,
    /// but the store's cap holds).
    fn check_room(&self, bytes: u64) -> Result<(), PutError> {
        let max = self.inner.store.caps().store_bytes_max;
        let (_, used) = self.inner.store.size();
        if used.saturating_add(bytes) > max {
            return Err(PutError::StoreFull { used, bytes, max });
        }
        Ok(())
    }

    /// Reads one answer into `tmp` (fsynced) and checks its hash.
    async fn receive(
        &self,
        stream: &mut libp2p::Stream,
        tmp: &std::path::Path,
        h: Hash,
    ) -> Result<u64, PeerError> {
        let mut t = Transfer::new(self.inner.store.caps().blob_bytes_max);
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut hasher = blake3::Hasher::new();
        let mut payload = vec![0u8; wire::CHUNK_BYTES_MAX];
        let mut size = 0;
        loop {
            let mut head = [0u8; wire::HEADER_BYTES];
            timeout_io(tokio::time::timeout(IO_TIMEOUT, stream.read_exact(&mut head)).await)?;
            let (kind, len) = wire::decode_header(&head)?;
            let body = &mut payload[..len];
            timeout_io(tokio::time::timeout(IO_TIMEOUT, stream.read_exact(body)).await)?;
            let frame = wire::frame(kind, body)?;
            match t.accept(&frame)? {
                Step::Started(n) => {
                    self.check_room(n)?;
                    size = n;
                }
                Step::Bytes => {
                    if let Frame::Chunk(b) = frame {
                        hasher.update(b);
                        file.write_all(b).await?;
                        if let Some(p) = &self.inner.progress {
                            p(&h, t.progress().0, size);
                        }
                    }
                }
                Step::Done => break,
                Step::NotHere => return Err(PeerError::NotHere),
                Step::Busy => return Err(PeerError::Busy),
            }
        }
        let got = *hasher.finalize().as_bytes();
        if got != h {
            return Err(PeerError::Mismatch(hex(&got)));
        }
        file.sync_all().await?;
        Ok(size)
    }
}

async fn write_all(stream: &mut libp2p::Stream, bytes: &[u8]) -> std::io::Result<()> {
    timeout_io(tokio::time::timeout(IO_TIMEOUT, stream.write_all(bytes)).await)?;
    timeout_io(tokio::time::timeout(IO_TIMEOUT, stream.flush()).await)
}

async fn send_only(mut stream: libp2p::Stream, f: Frame<'_>) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(wire::HEADER_BYTES);
    wire::encode_frame(&f, &mut out);
    write_all(&mut stream, &out).await?;
    stream.close().await
}

/// The peer side's lines in `/metrics`.
pub fn register_metrics(reg: &mut prometheus_client::registry::Registry, peers: &Peers) {
    use prometheus_client::metrics::counter::ConstCounter;
    let c = peers.counters();
    let lines: [(&str, &str, &AtomicU64); 11] = [
        (
            "content_peer_requests",
            "Blob requests from peers",
            &c.requests,
        ),
        (
            "content_peer_served",
            "Blob requests answered with the blob",
            &c.served,
        ),
        (
            "content_peer_not_here",
            "Blob requests for a blob not here",
            &c.not_here,
        ),
        (
            "content_peer_busy",
            "Blob requests refused: too many being served",
            &c.busy,
        ),
        (
            "content_peer_bad_requests",
            "Blob requests that broke off or were not a hash",
            &c.bad_requests,
        ),
        (
            "content_peer_fetched",
            "Blobs fetched from peers, checked and stored",
            &c.fetched,
        ),
        (
            "content_peer_fetched_bytes",
            "Bytes of blobs fetched from peers",
            &c.fetched_bytes,
        ),
        (
            "content_peer_mismatches",
            "Answers from peers whose bytes did not hash to the blob's name (refused)",
            &c.mismatches,
        ),
        (
            "content_peer_bad_answers",
            "Answers from peers that broke the protocol (refused)",
            &c.bad_answers,
        ),
        (
            "content_peer_fetch_failed",
            "Fetches no peer could answer",
            &c.failed,
        ),
        (
            "content_peer_negative_hits",
            "Fetches answered from the negative cache (no peer gave the blob a moment ago)",
            &c.negative_hits,
        ),
    ];
    for (name, help, v) in lines {
        reg.register(name, help, ConstCounter::new(v.load(Ordering::Relaxed)));
    }
}
