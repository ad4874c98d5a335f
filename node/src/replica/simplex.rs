//! The BFT ordering engine of a replica group: commonware Simplex
//! (`=2026.10.0`) behind the core's [`Engine`] trait (ADR 0010).
//!
//! Simplex orders proposal digests; the proposals travel beside it on the
//! members' channel, shipped by the core itself. The engine's application
//! callbacks become [`Order`]s on a bounded queue that the core's driver
//! drains; the core's [`Answer`]s resolve the engine's pending requests:
//! - `Automaton::propose(ctx)` → [`Order::Propose`] with the parent digest
//!   the engine chose (ticks are `parent.tick + 1`, never views);
//! - `Automaton::verify(ctx, digest)` → [`Order::Verify`]; the core keeps it
//!   pending while the proposal or its parent is missing, and answers
//!   `false` only for a proposal that can never be valid;
//! - `Reporter::report`: a notarization → [`Order::Notarized`], a
//!   finalization → [`Order::Finalized`] with the encoded certificate (239
//!   bytes for 4 members) for the log, a nullification →
//!   [`Order::Nullified`];
//! - `Relay::broadcast` does nothing: the core sent the proposal when it
//!   built it, and answers fetches by digest.
//!
//! The primary is the leader of a stable-leader term (`RoundRobin` with a
//! term of [`Timing::term_views`] views); a silent or faulty primary costs
//! one nullification and the next term's leader takes over.

use std::collections::BTreeMap;
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commonware_actor::Feedback;
use commonware_codec::{Decode as _, DecodeExt, Encode};
use commonware_consensus::simplex::elector::RoundRobin;
use commonware_consensus::simplex::types::{Activity, Context, Finalization};
use commonware_consensus::simplex::{
    self, Engine as SimplexEngine, Floor, ForwardPolicy, Plan, SkipBudget, SkipPolicy,
};
use commonware_consensus::types::{Epoch, TermLength, ViewDelta};
use commonware_consensus::{Automaton, CertifiableAutomaton, Relay, Viewable};
use commonware_cryptography::ed25519::{PrivateKey, PublicKey};
use commonware_cryptography::sha256;
use commonware_p2p::{Blocker, Receiver, Sender};
use commonware_parallel::Sequential;
use commonware_runtime::buffer::paged::CacheRef;
use commonware_runtime::{Clock, Handle, Metrics, Spawner, Storage};
use commonware_utils::channel::{mpsc, oneshot};
use commonware_utils::ordered::Set;
use ed25519_dalek::SigningKey;
use rand_core_010::CryptoRng;
use tracing::warn;

use metatopia_sim::PlayerId;

use super::verify::Coefficients;
use super::wire::Digest;
use super::{Answer, Engine, Order};

/// The signing scheme: ed25519, one key per member (the node's key, which
/// is also its libp2p identity and its player id).
pub type Scheme = simplex::scheme::ed25519::Scheme;

/// The digest type the engine orders (our blake3 proposal digests, carried
/// as 32 opaque bytes).
pub type EngineDigest = sha256::Digest;

/// Domain of every consensus signature (distinct from libp2p's).
pub const NAMESPACE: &[u8] = b"metatopia-replica-v1";

/// The engine's vote channel.
pub const CHANNEL_VOTES: u64 = 0;
/// The engine's certificate channel.
pub const CHANNEL_CERTIFICATES: u64 = 1;
/// The engine's resolver channel (fetching missed certificates).
pub const CHANNEL_RESOLVER: u64 = 2;
/// The members' own messages ([`super::Message`]).
pub const CHANNEL_MEMBERS: u64 = 3;

/// Every channel a member uses, in the order [`crate::replica::net::Mesh::connect`]
/// is asked for them: votes, certificates, resolver, members.
pub const CHANNELS: [u64; 4] = [
    CHANNEL_VOTES,
    CHANNEL_CERTIFICATES,
    CHANNEL_RESOLVER,
    CHANNEL_MEMBERS,
];

/// Most orders queued between the engine and the core's driver.
pub const ORDERS_MAX: usize = 4096;

/// Timeouts and terms (ADR 0010 gives the measurements behind them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// A leader silent this long is nullified.
    pub leader_timeout_ms: u64,
    /// A proposal not certified this long is nullified (> leader timeout).
    pub certification_timeout_ms: u64,
    /// Retry period of nullify votes.
    pub timeout_retry_ms: u64,
    /// A stable leader that stalls this long loses its term (> the
    /// certification timeout).
    pub stall_timeout_ms: u64,
    /// Views per stable-leader term.
    pub term_views: u32,
    /// Views a leader may run ahead of finalization (pipelining).
    pub optimistic_views: u64,
    /// Inactive leaders are skipped after this long (> the certification
    /// timeout and the retry).
    pub skip_timeout_ms: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            leader_timeout_ms: 150,
            certification_timeout_ms: 300,
            timeout_retry_ms: 500,
            stall_timeout_ms: 400,
            term_views: 1000,
            optimistic_views: 4,
            skip_timeout_ms: 2_000,
        }
    }
}

/// The engine's public key of a member.
pub fn public_key(member: PlayerId) -> Option<PublicKey> {
    PublicKey::decode(bytes::Bytes::copy_from_slice(&member.0)).ok()
}

/// The member of an engine public key.
pub fn member(key: &PublicKey) -> PlayerId {
    let bytes = key.encode();
    let mut out = [0; 32];
    out.copy_from_slice(&bytes[..32]);
    PlayerId(out)
}

/// A check of finalization certificates by `members` (for observers): true
/// when the certificate verifies and finalizes `digest`.
pub fn proof_check(members: &[PlayerId]) -> Result<super::observer::ProofCheck, StartError> {
    let keys = members
        .iter()
        .map(|m| public_key(*m).ok_or(StartError::BadMember(*m)))
        .collect::<Result<Vec<_>, _>>()?;
    let participants = Set::from_iter_dedup(keys);
    let max = participants.len();
    let scheme = Scheme::verifier(NAMESPACE, participants);
    Ok(Box::new(move |digest: &Digest, proof: &[u8]| {
        let bytes = bytes::Bytes::copy_from_slice(proof);
        let Ok(f) = Finalization::<Scheme, EngineDigest>::decode_cfg(bytes, &max) else {
            return false;
        };
        f.proposal.payload.0 == *digest && f.verify(&mut Coefficients::new(), &scheme, &Sequential)
    }))
}

/// The engine's private key for a node key (the same ed25519 seed).
pub fn private_key(key: &SigningKey) -> Option<PrivateKey> {
    PrivateKey::decode(bytes::Bytes::copy_from_slice(&key.to_bytes())).ok()
}

#[derive(Debug, Default)]
struct Pending {
    next: u64,
    propose: BTreeMap<u64, oneshot::Sender<EngineDigest>>,
    verify: BTreeMap<u64, oneshot::Sender<bool>>,
}

/// The engine's side of the bridge: its `Automaton`, `Relay` and
/// `Reporter`.
#[derive(Debug, Clone)]
pub struct App {
    orders: mpsc::Sender<Order>,
    pending: Arc<Mutex<Pending>>,
    dropped: Arc<AtomicU64>,
    primary: Primary,
}

/// The primary as the engine last named it: the leader of the newest view
/// this member was asked to propose or verify in. Shared between the
/// engine's side and whoever shows the group's status.
#[derive(Debug, Clone, Default)]
pub struct Primary(Arc<Mutex<Option<(u64, PlayerId)>>>);

impl Primary {
    /// The newest view seen and its leader.
    pub fn get(&self) -> Option<(u64, PlayerId)> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn saw(&self, view: u64, leader: PlayerId) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none_or(|(v, _)| view >= v) {
            *p = Some((view, leader));
        }
    }
}

/// The core's side of the bridge: the [`Engine`] its driver talks to.
#[derive(Debug)]
pub struct Simplex {
    orders: mpsc::Receiver<Order>,
    pending: Arc<Mutex<Pending>>,
    dropped: Arc<AtomicU64>,
    primary: Primary,
}

/// A connected pair.
pub fn bridge() -> (App, Simplex) {
    let (tx, rx) = mpsc::channel(ORDERS_MAX);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let dropped = Arc::new(AtomicU64::new(0));
    let primary = Primary::default();
    (
        App {
            orders: tx,
            pending: pending.clone(),
            dropped: dropped.clone(),
            primary: primary.clone(),
        },
        Simplex {
            orders: rx,
            pending,
            dropped,
            primary,
        },
    )
}

impl App {
    fn request<T>(
        &self,
        slot: impl FnOnce(&mut Pending) -> &mut BTreeMap<u64, oneshot::Sender<T>>,
        tx: oneshot::Sender<T>,
    ) -> u64 {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let req = p.next;
        p.next += 1;
        slot(&mut p).insert(req, tx);
        req
    }

    fn tell(&self, order: Order) {
        if self.orders.try_send(order).is_err() {
            // A lost notarization is shown at the next one; a lost
            // finalization is implied by the next one.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            warn!("order queue full: engine report dropped");
        }
    }
}

impl Automaton for App {
    type Context = Context<EngineDigest, PublicKey>;
    type Digest = EngineDigest;

    async fn propose(&mut self, context: Self::Context) -> oneshot::Receiver<EngineDigest> {
        let (tx, rx) = oneshot::channel();
        let req = self.request(|p| &mut p.propose, tx);
        self.primary
            .saw(context.round.view().get(), member(&context.leader));
        let parent = context.parent.1.0;
        // Closed only when the driver has stopped; the request then closes.
        let _ = self.orders.send(Order::Propose { req, parent }).await;
        rx
    }

    async fn verify(
        &mut self,
        context: Self::Context,
        payload: EngineDigest,
    ) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        let req = self.request(|p| &mut p.verify, tx);
        self.primary
            .saw(context.round.view().get(), member(&context.leader));
        let order = Order::Verify {
            req,
            parent: context.parent.1.0,
            digest: payload.0,
        };
        let _ = self.orders.send(order).await;
        rx
    }
}

impl CertifiableAutomaton for App {}

impl Relay for App {
    type Digest = EngineDigest;
    type PublicKey = PublicKey;
    type Plan = Plan<PublicKey>;

    fn broadcast(&mut self, _payload: EngineDigest, _plan: Plan<PublicKey>) -> Feedback {
        // The core shipped the proposal when it built it.
        Feedback::Ok
    }
}

impl commonware_consensus::Reporter for App {
    type Activity = Activity<Scheme, EngineDigest>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        match activity {
            Activity::Notarization(n) => self.tell(Order::Notarized {
                digest: n.proposal.payload.0,
            }),
            Activity::Finalization(f) => self.tell(Order::Finalized {
                digest: f.proposal.payload.0,
                proof: f.encode().to_vec(),
            }),
            Activity::Nullification(n) => self.tell(Order::Nullified {
                view: n.view().get(),
            }),
            Activity::ConflictingNotarize(_)
            | Activity::ConflictingFinalize(_)
            | Activity::NullifyFinalize(_) => warn!("evidence of a byzantine member"),
            _ => {}
        }
        Feedback::Ok
    }
}

impl Simplex {
    /// The next order, waiting for one (none once the engine has stopped).
    pub async fn next_order(&mut self) -> Option<Order> {
        self.orders.recv().await
    }

    /// The primary as the engine last named it.
    pub fn primary(&self) -> Primary {
        self.primary.clone()
    }

    /// Engine reports dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Engine for Simplex {
    fn answer(&mut self, answer: Answer) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Answer::Proposed { req, digest } => {
                if let (Some(tx), Some(d)) = (p.propose.remove(&req), digest) {
                    let _ = tx.send(sha256::Digest(d));
                }
            }
            Answer::Verified { req, valid } => {
                if let Some(tx) = p.verify.remove(&req) {
                    let _ = tx.send(valid);
                }
            }
            // Dropping the request's sender: the voter logs it at debug
            // level and times the view out as an ignored proposal.
            Answer::Abstained { req } => {
                p.verify.remove(&req);
            }
        }
    }

    fn poll_order(&mut self) -> Option<Order> {
        self.orders.try_recv().ok()
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn nz_usize(v: usize) -> NonZeroUsize {
    NonZeroUsize::new(v).unwrap_or(NonZeroUsize::MIN)
}

/// Why the engine cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// A member id is not an ed25519 key.
    #[error("member {0} is not an ed25519 public key")]
    BadMember(PlayerId),
    /// This node's key is not in the group.
    #[error("this node is not a member of the replica group")]
    NotMember,
    /// The timing breaks one of the engine's rules.
    #[error("timing: {0}")]
    Timing(String),
}

impl Timing {
    /// The timing for a primary that may wait up to `border_wait_ms` for
    /// a neighbour's border set before it proposes (ADR 0013): the leader,
    /// certification and stall timeouts grow by the wait, so a primary
    /// waiting as configured is not taken for a silent one. With the
    /// default timeouts a wait above the leader timeout (150 ms) had every
    /// waiting primary nullified, and the next one waited again: two
    /// groups each missing the other's set never proposed again.
    pub fn with_border_wait(mut self, border_wait_ms: u64) -> Timing {
        self.leader_timeout_ms = self.leader_timeout_ms.saturating_add(border_wait_ms);
        self.certification_timeout_ms =
            self.certification_timeout_ms.saturating_add(border_wait_ms);
        self.stall_timeout_ms = self.stall_timeout_ms.saturating_add(border_wait_ms);
        self.skip_timeout_ms = self
            .skip_timeout_ms
            .max(self.certification_timeout_ms.saturating_add(1));
        self
    }

    /// Checks the rules the engine asserts (it panics otherwise).
    pub fn check(&self) -> Result<(), StartError> {
        let rule = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(StartError::Timing(what.into()))
            }
        };
        rule(
            self.leader_timeout_ms > 0,
            "leader_timeout_ms must be above 0",
        )?;
        rule(
            self.certification_timeout_ms > self.leader_timeout_ms,
            "certification_timeout_ms must exceed leader_timeout_ms",
        )?;
        rule(
            self.timeout_retry_ms > 0,
            "timeout_retry_ms must be above 0",
        )?;
        rule(
            self.stall_timeout_ms > self.certification_timeout_ms,
            "stall_timeout_ms must exceed certification_timeout_ms",
        )?;
        rule(
            self.skip_timeout_ms > self.certification_timeout_ms
                && self.skip_timeout_ms > self.timeout_retry_ms,
            "skip_timeout_ms must exceed certification_timeout_ms and timeout_retry_ms",
        )?;
        rule(self.term_views > 1, "term_views must be above 1")
    }
}

/// Starts the engine of one member in `context` on the three engine
/// channels; the member's messages go on [`CHANNEL_MEMBERS`], driven by
/// the caller. `partition` names its vote journal: a restarted member
/// passes the same one, replays its votes and never signs a conflicting
/// vote.
#[allow(clippy::too_many_arguments)]
pub fn start<E, B>(
    context: E,
    key: &SigningKey,
    members: &[PlayerId],
    genesis: Digest,
    partition: String,
    timing: &Timing,
    blocker: B,
    app: App,
    votes: (
        impl Sender<PublicKey = PublicKey>,
        impl Receiver<PublicKey = PublicKey>,
    ),
    certificates: (
        impl Sender<PublicKey = PublicKey>,
        impl Receiver<PublicKey = PublicKey>,
    ),
    resolver: (
        impl Sender<PublicKey = PublicKey>,
        impl Receiver<PublicKey = PublicKey>,
    ),
) -> Result<Handle<()>, StartError>
where
    E: Clock + CryptoRng + Spawner + Storage + Metrics,
    B: Blocker<PublicKey = PublicKey>,
{
    timing.check()?;
    let keys = members
        .iter()
        .map(|m| public_key(*m).ok_or(StartError::BadMember(*m)))
        .collect::<Result<Vec<_>, _>>()?;
    let participants = Set::from_iter_dedup(keys);
    let private = private_key(key).ok_or(StartError::NotMember)?;
    let scheme = Scheme::signer(NAMESPACE, participants, private).ok_or(StartError::NotMember)?;
    let elector = RoundRobin::<commonware_cryptography::Sha256>::default().with_term(
        TermLength::new(NonZeroU32::new(timing.term_views).unwrap_or(NonZeroU32::MIN)),
        ms(timing.stall_timeout_ms),
        ViewDelta::new(timing.optimistic_views),
    );
    let cfg = simplex::Config {
        scheme,
        elector,
        blocker,
        automaton: app.clone(),
        relay: app.clone(),
        reporter: app,
        strategy: Sequential,
        partition,
        mailbox_size: nz_usize(1024),
        epoch: Epoch::new(0),
        floor: Floor::Genesis(sha256::Digest(genesis)),
        leader_timeout: ms(timing.leader_timeout_ms),
        certification_timeout: ms(timing.certification_timeout_ms),
        timeout_retry: ms(timing.timeout_retry_ms),
        view_retention: ViewDelta::new(64),
        skip: SkipPolicy::Enabled {
            timeout: ms(timing.skip_timeout_ms),
            budget: SkipBudget::Participants,
        },
        fetch_timeout: commonware_utils::NonZeroDuration::new(ms(500)).expect("500 ms is not zero"),
        fetch_retry_delay: ms(50),
        forward: ForwardPolicy::Disabled,
        replay_buffer: nz_usize(1 << 20),
        write_buffer: nz_usize(1 << 20),
        page_cache: CacheRef::new(
            NonZeroU16::new(1024).unwrap_or(NonZeroU16::MIN),
            nz_usize(10),
        ),
        track_historical_votes: false,
    };
    let engine = SimplexEngine::new(context, cfg);
    Ok(engine.start(votes, certificates, resolver))
}

#[cfg(test)]
mod tests {
    use super::Timing;

    #[test]
    fn a_primary_waiting_for_border_sets_outlasts_no_timeout() {
        for wait in [0, 20, 250, 10_000] {
            let t = Timing::default().with_border_wait(wait);
            assert!(t.check().is_ok(), "{wait}: {t:?}");
            // The leader has the default's time to propose after its wait.
            assert_eq!(
                t.leader_timeout_ms,
                Timing::default().leader_timeout_ms + wait
            );
        }
    }
}
