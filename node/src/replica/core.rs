//! The replica core: one member of a region's replica group, as a sans-IO
//! state machine.
//!
//! Inputs go in through [`Replica::submit`] (a player's signed input),
//! [`Replica::handle`] (a message from another member), [`Replica::order`]
//! (what the ordering engine asks or tells) and [`Replica::tick`] (time
//! passes); everything the core wants done comes out of
//! [`Replica::poll_output`], and [`Replica::next_deadline`] says when to
//! call [`Replica::tick`] again. `now` is milliseconds on the caller's
//! clock (Unix time in a node, simulated time in the harness). The core
//! never reads a clock, a socket or a file, except through the script host
//! and the [`SourceBook`] it is given.
//!
//! The chain: the core keeps the region at its *head* (the last batch it
//! executed) and the links (executed proposals) between the last finalized
//! tick and the head. A proposal is executed speculatively when the engine
//! asks to verify it, shown to players at notarization and committed
//! (logged, acknowledged) at finalization. When the engine builds on a
//! parent that is not the head (a view was nullified after the core had
//! executed its proposal), the head is rebuilt from the last finalized
//! snapshot by re-executing the chain to that parent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use tracing::{debug, info, warn};

use metatopia_physics::Region;
use metatopia_sim::input::{Event, InputKind, Rejection};
use metatopia_sim::physics::Envelope;
use metatopia_sim::{PlayerId, RegionId, ScriptHost, Sim};

use super::group::{Manifest, Neighbour};
use super::verify;
use super::wire::{
    BorderCert, BorderSet, BorderSetError, BorderSig, Checkpoint, Digest, FOLLOW_LEASE_MS, Message,
    PROPOSAL_BYTES_MAX, Proposal, Sig, SignedInput, player_of,
};
use super::{Answer, Order};

/// Finalized proposals kept in memory to answer [`Message::Fetch`].
const RECENT_MAX: usize = 1024;

/// Most observers a member sends to at once.
pub const FOLLOWERS_MAX: usize = 64;

/// Finalized inputs remembered to refuse their replay.
const DONE_MAX: usize = 65_536;

/// How many ticks ahead of the head a neighbour's border set is kept (a
/// group that fell behind its neighbour catches up with them in hand).
pub const BORDER_AHEAD_MAX: u64 = 256;

/// A neighbour whose signed border set (in time or late) arrived within
/// this long is live: the primary waits `border_wait_live_ms` for its
/// sets, not `border_wait_ms`.
pub const BORDER_LIVE_MS: u64 = 1_000;

/// Script sources by hash: where the core finds the sources it must carry
/// in a proposal, and where it puts the sources a proposal carries before
/// executing it.
pub trait SourceBook: Send + Sync {
    /// The source with this hash, if held.
    fn get(&self, hash: &[u8; 32]) -> Option<Arc<str>>;
    /// Stores a source (idempotent); returns its hash.
    fn put(&self, text: &str) -> std::io::Result<[u8; 32]>;
}

/// Script sources in memory (tests, benches, and members that keep no
/// files).
#[derive(Debug, Default)]
pub struct MemSources(std::sync::Mutex<BTreeMap<[u8; 32], Arc<str>>>);

impl SourceBook for MemSources {
    fn get(&self, hash: &[u8; 32]) -> Option<Arc<str>> {
        self.0.lock().ok()?.get(hash).cloned()
    }

    fn put(&self, text: &str) -> std::io::Result<[u8; 32]> {
        let hash = metatopia_scripts::hash_source(text);
        if let Ok(mut m) = self.0.lock() {
            m.insert(hash, Arc::from(text));
        }
        Ok(hash)
    }
}

/// How a replica runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Milliseconds between ticks (the primary's pacing).
    pub tick_ms: u64,
    /// Most inputs in one proposal.
    pub inputs_per_tick_max: usize,
    /// Most inputs waiting in the mempool.
    pub mempool_max: usize,
    /// Most inputs of one player waiting in the mempool: a player who
    /// floods fills its own share, never the others' room.
    pub player_pending_max: usize,
    /// New inputs one player may queue per second, on average ...
    pub player_inputs_per_sec: u32,
    /// ... and at once after a quiet spell (a token bucket).
    pub player_inputs_burst: u32,
    /// How far a proposal's time may be from the verifier's clock.
    pub clock_skew_max_ms: u64,
    /// Replicas exchange signed checkpoints after every tick `t` with
    /// `(t + 1) % checkpoint_every == 0`.
    pub checkpoint_every: u64,
    /// A snapshot of the head is kept every this many ticks, so a rollback
    /// re-executes at most about this many finalized ticks.
    pub rollback_every: u64,
    /// The store gets a snapshot every this many ticks.
    pub store_snapshot_every: u64,
    /// Most proposals held that are not (yet) on the chain.
    pub proposals_max: usize,
    /// A verify waiting this long for its proposal asks the group for it.
    pub fetch_after_ms: u64,
    /// A proposal asked for and still missing is asked for again after
    /// this long.
    pub fetch_retry_ms: u64,
    /// Inputs submitted to this replica and not finalized are forwarded
    /// to the group again after this long.
    pub forward_retry_ms: u64,
    /// Neighbour regions (hosted by other groups) this region trades
    /// border envelopes with: each is sent this region's certified
    /// outbox after every finalized tick, and its own certified sets go in
    /// this group's proposals (ADR 0013).
    pub neighbours: Vec<Neighbour>,
    /// The primary waits at most this long past a tick's due time for a
    /// silent neighbour's border set of the tick before (none came for
    /// [`BORDER_LIVE_MS`]), then proposes without it.
    pub border_wait_ms: u64,
    /// ... and at most this long for a live neighbour's: one that is
    /// behind (a loaded machine, slower finality) is waited for, rather
    /// than every set it sends arriving after its tick.
    pub border_wait_live_ms: u64,
    /// The world's tick schedule: tick `t` is due at `epoch_ms + t ·
    /// tick_ms` on every group that sets it, so neighbour regions tick
    /// together and a group that fell behind (a failover) catches up.
    /// Without it a tick is due one period after the last one's time.
    pub epoch_ms: Option<u64>,
    /// Test only: this replica executes this tick wrongly (it lets in a
    /// player nobody sent), as a replica with a determinism bug would.
    #[doc(hidden)]
    pub diverge_at: Option<u64>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            tick_ms: 50,
            inputs_per_tick_max: 1000,
            mempool_max: 16_384,
            player_pending_max: 256,
            player_inputs_per_sec: 1000,
            player_inputs_burst: 2000,
            clock_skew_max_ms: 2_000,
            checkpoint_every: 20,
            rollback_every: 20,
            store_snapshot_every: 200,
            proposals_max: 1024,
            fetch_after_ms: 100,
            fetch_retry_ms: 250,
            forward_retry_ms: 1000,
            neighbours: Vec::new(),
            border_wait_ms: 20,
            border_wait_live_ms: 100,
            epoch_ms: None,
            diverge_at: None,
        }
    }
}

/// The world as of a notarized (or finalized) tick.
#[derive(Debug, Clone)]
pub struct Published {
    /// The tick executed last.
    pub tick: u64,
    /// The main sim after it.
    pub sim: Sim,
    /// The region hash after it (main sim and physics).
    pub hash: [u8; 32],
    /// The events of that tick.
    pub events: Arc<Vec<Event>>,
    /// The border protocol's counters after it (hand-offs, refusals,
    /// aborts), for `/metrics`.
    pub border: metatopia_physics::BorderCounts,
    /// The region's box, its neighbours' and the ghosts of their bodies it
    /// holds after that tick (empty without neighbours).
    pub ghosts: Arc<Ghosts>,
    /// This member's border sets with each neighbour as of executing the
    /// tick (node-local counters, not state; empty on observers).
    pub sets: Arc<BTreeMap<RegionId, SetCounts>>,
}

/// What a region shows of its neighbours after a tick: where they are and
/// the ghosts of their bodies near the border.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ghosts {
    /// This region's box, world coordinates.
    pub bounds: Option<metatopia_physics::Aabb>,
    /// The neighbours' boxes, by region id.
    pub neighbours: Vec<(RegionId, metatopia_physics::Aabb)>,
    /// The ghosts held, by owner then id, world coordinates.
    pub held: Vec<(RegionId, metatopia_sim::physics::Ghost)>,
}

impl Ghosts {
    /// What `region` holds now.
    pub fn of(region: &Region) -> Ghosts {
        let cfg = region.config();
        if cfg.neighbours.is_empty() {
            return Ghosts::default();
        }
        Ghosts {
            bounds: Some(cfg.bounds),
            neighbours: cfg.neighbours.clone(),
            held: region.space().ghosts(),
        }
    }
}

/// A member's border sets with one neighbour since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SetCounts {
    /// Sets this member signed and sent it (one per finalized tick).
    pub sent: u64,
    /// Its certified sets in finalized proposals (delivered).
    pub included: u64,
    /// Its sets that came after the tick that would carry them was
    /// finalized (dropped).
    pub late: u64,
    /// Its sets certified here too late for their tick.
    pub missed: u64,
    /// Its sets too far ahead of this replica (dropped).
    pub ahead: u64,
    /// Its sets refused (bad signature, not a member, invalid).
    pub refused: u64,
}

impl Published {
    /// What `region` shows after executing `tick` (`hash`, `events`),
    /// with this member's border set counters `sets`.
    pub fn new(
        tick: u64,
        region: &Region,
        hash: [u8; 32],
        events: Vec<Event>,
        sets: Arc<BTreeMap<RegionId, SetCounts>>,
    ) -> Published {
        Published {
            tick,
            sim: region.sim().clone(),
            hash,
            events: Arc::new(events),
            border: region.border_counts(),
            ghosts: Arc::new(Ghosts::of(region)),
            sets,
        }
    }
}

/// A finalized tick, for the log.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The proposal.
    pub proposal: Arc<Proposal>,
    /// The region hash after it.
    pub hash: Digest,
    /// The engine's finalization certificate (empty when the finalization
    /// of a later tick implies this one, and in a group of one).
    pub proof: Vec<u8>,
    /// A snapshot of the region after it, when one is due for the store.
    pub snapshot: Option<Arc<Vec<u8>>>,
}

/// A replica that found its region hash differs from the group's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desync {
    /// The tick whose checkpoint differs.
    pub tick: u64,
    /// This replica's hash.
    pub mine: Digest,
    /// The hash at least f + 1 other members signed.
    pub theirs: Digest,
}

/// Most field differences a desync report keeps.
pub const DESYNC_DIFFERENCES_MAX: usize = 20;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// Every other member.
    All,
    /// One member (or observer).
    One(PlayerId),
    /// Every member of the group hosting this neighbour region.
    Region(RegionId),
    /// These (observers).
    Some(Vec<PlayerId>),
}

/// What the core wants done.
#[derive(Debug, Clone)]
pub enum Output {
    /// An answer for the ordering engine.
    Answer(Answer),
    /// A message for other members.
    Send {
        /// Recipients.
        to: To,
        /// The message.
        msg: Message,
    },
    /// A newer notarized state to show.
    Visible(Arc<Published>),
    /// A finalized tick to make durable.
    Commit(Commit),
    /// An input's fate, at finalization.
    Committed {
        /// Its player.
        player: PlayerId,
        /// Its sequence number.
        seq: u64,
        /// The tick that held it.
        tick: u64,
        /// Its signature: which input held this sequence number (a
        /// waiter checks it is the one it sent, not another input of the
        /// same player with the same number).
        sig: Sig,
        /// Why the sim refused it, if it did.
        rejection: Option<Rejection>,
    },
    /// This replica diverged from the group and stopped serving.
    Desync(Desync),
    /// This replica restored the group's snapshot and serves again (an
    /// observer: joined from it).
    Resynced {
        /// The tick of the snapshot (the last tick it holds).
        tick: u64,
        /// The region hash after it, as the group signed it.
        hash: Digest,
        /// The snapshot, for the log: recovery starts from it.
        snapshot: Arc<Vec<u8>>,
        /// What differed between this replica's state and the group's at
        /// the diverged tick, field by field (`element 1.3 pos: A != B`,
        /// this replica's value first); empty for an observer's join.
        differences: Vec<String>,
    },
    /// A signed checkpoint was recorded (this replica's or a member's).
    Checkpoint {
        /// The tick.
        tick: u64,
        /// The member.
        member: PlayerId,
        /// Its region hash after the tick.
        hash: Digest,
    },
    /// A submission the core refused (emitted by drivers that hand inputs
    /// over without waiting for [`Replica::submit`]'s result).
    Refused {
        /// The player.
        player: PlayerId,
        /// The input's sequence number.
        seq: u64,
        /// Why.
        refusal: Refusal,
    },
}

/// Why a submission was refused before ordering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The signature does not verify.
    #[error("input refused: {0}")]
    Signature(#[from] super::wire::SignatureError),
    /// The sequence number was used already.
    #[error("input refused: replayed sequence number {seq} (the last accepted is {last})")]
    Replayed {
        /// The input's number.
        seq: u64,
        /// The player's last accepted number.
        last: u64,
    },
    /// The input attaches a script whose source this replica does not hold.
    #[error("input refused: unknown script source {0} (upload it first)")]
    UnknownSource(String),
    /// Too many inputs are waiting.
    #[error("the node is busy: input queue full")]
    Busy,
    /// Too many of this player's inputs are waiting.
    #[error("too many of your inputs are waiting ({0}); send more once they commit")]
    PlayerBusy(usize),
    /// This player sent inputs faster than its allowance.
    #[error(
        "too many inputs from you: at most {0} a second on average ([limits] inputs_per_player_per_sec); slow down"
    )]
    PlayerRate(u32),
    /// The replica has diverged and does not serve until it resyncs.
    #[error("this replica has diverged from its group and is resyncing")]
    NotServing,
}

/// Players' allowances kept before the full ones are forgotten.
const ALLOWANCES_KEPT: usize = 4096;

/// A token bucket of new inputs, in thousandths of an input.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    milli: u64,
    at_ms: u64,
}

impl Allowance {
    fn full_at(now: u64, burst: u64) -> Allowance {
        Allowance {
            milli: burst * 1000,
            at_ms: now,
        }
    }

    /// The allowance at `now`: `rate` inputs a second (one thousandth a
    /// millisecond per input a second), at most `burst`.
    fn at(&self, now: u64, rate: u64, burst: u64) -> u64 {
        let grown = now.saturating_sub(self.at_ms).saturating_mul(rate);
        self.milli.saturating_add(grown).min(burst * 1000)
    }

    fn full(&self, now: u64, rate: u64, burst: u64) -> bool {
        self.at(now, rate, burst) == burst * 1000
    }

    fn take(&mut self, now: u64, rate: u64, burst: u64) -> bool {
        let milli = self.at(now, rate, burst);
        self.at_ms = self.at_ms.max(now);
        match milli.checked_sub(1000) {
            Some(left) => {
                self.milli = left;
                true
            }
            None => {
                self.milli = milli;
                false
            }
        }
    }
}

/// The clocks of a live verify: a proposal's time may be at most
/// `clock_skew_max_ms` ahead of `now` and at most that far behind
/// `asked`, the clock when the engine asked about it. Measuring the lower
/// bound at the ask, not at the check, keeps a verifier that had to fetch
/// the proposal or its ancestors (or was slow to get to it) from refusing
/// a proposal that was on time when it came, view after view.
#[derive(Debug, Clone, Copy)]
struct Live {
    now: u64,
    asked: u64,
}

/// Why the core refused a proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Another region's.
    #[error("proposal for region {0}")]
    Region(u32),
    /// The tick does not follow the parent.
    #[error("proposal for tick {got}, expected {expected}")]
    Tick {
        /// The parent's next tick.
        expected: u64,
        /// The proposal's.
        got: u64,
    },
    /// The parent digest does not match.
    #[error("proposal's parent does not match the chain")]
    Parent,
    /// The time goes back or is far from the verifier's clock.
    #[error("proposal time {got} ms: {why}")]
    Time {
        /// The proposal's time.
        got: u64,
        /// What is wrong.
        why: String,
    },
    /// The verifier was asked about the proposal long after its time: a
    /// member catching up after a restart is asked about the views it
    /// missed (they were decided without it). It cannot vouch that such a
    /// proposal was on time, so it does not vote for it; nothing is wrong
    /// with the proposal or the group.
    #[error(
        "proposal time {got} ms: more than {skew} ms behind this replica's clock when it was asked to verify ({asked} ms)"
    )]
    Stale {
        /// The proposal's time.
        got: u64,
        /// `clock_skew_max_ms`.
        skew: u64,
        /// The clock when the engine asked.
        asked: u64,
    },
    /// Too many inputs or bytes.
    #[error("proposal too large: {0}")]
    TooLarge(String),
    /// An input's signature does not verify.
    #[error("input {index}: {error}")]
    Input {
        /// Its index.
        index: usize,
        /// The signature error.
        error: super::wire::SignatureError,
    },
    /// A player's inputs are not in strictly increasing order.
    #[error("input {0}: sequence numbers of a player must increase")]
    SeqOrder(usize),
    /// The sources do not match the attached scripts.
    #[error("sources: {0}")]
    Sources(String),
    /// A neighbour's border certificate does not verify, is for another
    /// tick, or is not one per neighbour in region order.
    #[error("border: {0}")]
    Border(#[from] BorderSetError),
    /// The sim refused the batch.
    #[error("the sim refused the batch: {0}")]
    Sim(String),
}

/// One executed proposal above the finalized tick.
#[derive(Debug, Clone)]
struct Link {
    digest: Digest,
    proposal: Arc<Proposal>,
    published: Arc<Published>,
    /// The border envelopes its execution sent to neighbours.
    outbox: Arc<Vec<Envelope>>,
    notarized: bool,
}

/// A neighbour's border set of one tick, as its members' signatures come
/// in.
#[derive(Debug, Default)]
struct BorderIn {
    /// Candidate sets by envelopes hash, with the signatures for each.
    sets: BTreeMap<Digest, (BorderSet, BTreeMap<PlayerId, Sig>)>,
    /// Members who signed (one set each).
    signers: BTreeSet<PlayerId>,
    /// The set once f + 1 members signed it.
    cert: Option<Arc<BorderCert>>,
}

/// A snapshot of a finalized state, from which the head is rebuilt.
#[derive(Debug, Clone)]
struct Base {
    bytes: Arc<Vec<u8>>,
}

/// Counters, for metrics and status.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Proposals verified valid.
    pub verified: u64,
    /// Proposals refused.
    pub invalid: u64,
    /// Of those, proposals asked about too long after their time (a
    /// member catching up on views decided without it), [`Invalid::Stale`].
    pub stale: u64,
    /// Head rebuilds (rollbacks).
    pub rollbacks: u64,
    /// Proposals of timed-out views proposed again on the same parent
    /// instead of built anew.
    pub reproposed: u64,
    /// Ticks re-executed by rollbacks.
    pub reexecuted: u64,
    /// Ticks finalized.
    pub finalized: u64,
    /// Messages refused (bad signature, wrong region, not a member).
    pub refused_messages: u64,
    /// Submissions refused.
    pub refused_inputs: u64,
    /// Border sets this member signed and sent to neighbours.
    pub border_sent: u64,
    /// Neighbours' border certificates in finalized proposals.
    pub border_included: u64,
    /// Neighbours' border messages refused (not a neighbour or member,
    /// misrouted or invalid envelopes, bad signature).
    pub border_refused: u64,
    /// Neighbours' border sets that came after the tick that would carry
    /// them was finalized, dropped.
    pub border_late: u64,
    /// Neighbours' border sets certified here whose tick was finalized
    /// without them (they came after the primary proposed).
    pub border_missed: u64,
    /// Neighbours' border sets too far ahead of this replica, dropped.
    pub border_ahead: u64,
    /// The border sets, per neighbour (the `border_*` counters above
    /// split by region; refusals of regions that are no neighbour only
    /// there).
    pub neighbours: BTreeMap<RegionId, SetCounts>,
}

impl Stats {
    fn sets(&mut self, region: RegionId) -> &mut SetCounts {
        self.neighbours.entry(region).or_default()
    }
}

/// The batch this replica executes for `p` (its own, unless a test made it
/// diverge at this tick).
fn batch_of(cfg: &Config, p: &Proposal) -> metatopia_sim::Batch {
    let mut batch = p.batch();
    if cfg.diverge_at == Some(p.tick) {
        // A player only this replica lets in: a lasting difference.
        batch.inputs.push(metatopia_sim::input::Input {
            player: PlayerId([0xd5; 32]),
            seq: 1,
            kind: InputKind::Join {
                name: "diverged".into(),
            },
        });
    }
    batch
}

/// The hashes at least `need` members other than `except` signed in
/// `seen` (member → hash of one checkpoint tick).
pub(super) fn vouched(
    seen: &BTreeMap<PlayerId, Digest>,
    except: Option<PlayerId>,
    need: usize,
) -> impl Iterator<Item = Digest> {
    let mut votes: BTreeMap<Digest, usize> = BTreeMap::new();
    for (m, h) in seen {
        if Some(*m) != except {
            *votes.entry(*h).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .filter(move |(_, n)| *n >= need)
        .map(|(h, _)| h)
}

/// Records a verified checkpoint in `seen` (tick → member → hash, the
/// newest `keep` ticks) and gives the output that reports it.
pub(super) fn note_checkpoint(
    seen: &mut BTreeMap<u64, BTreeMap<PlayerId, Digest>>,
    keep: usize,
    c: &Checkpoint,
) -> Output {
    seen.entry(c.tick).or_default().insert(c.member, c.hash);
    while seen.len() > keep {
        seen.pop_first();
    }
    Output::Checkpoint {
        tick: c.tick,
        member: c.member,
        hash: c.hash,
    }
}

/// Why the sim refused `player`'s input `seq` in a tick's events, if it did.
pub(super) fn rejection(events: &[Event], player: PlayerId, seq: u64) -> Option<Rejection> {
    events.iter().find_map(|e| match e {
        Event::Rejected {
            player: p,
            seq: s,
            reason,
        } if *p == player && *s == seq => Some(reason.clone()),
        _ => None,
    })
}

/// One member of a replica group, sans IO.
pub struct Replica {
    cfg: Config,
    manifest: Manifest,
    genesis: Digest,
    key: SigningKey,
    me: PlayerId,
    host: Arc<dyn ScriptHost + Send + Sync>,
    sources: Arc<dyn SourceBook>,
    head: Region,
    head_digest: Digest,
    chain: Vec<Link>,
    finalized: Digest,
    finalized_next: u64,
    finalized_hash: Digest,
    base: Base,
    since_base: Vec<Arc<Proposal>>,
    /// Finalized proposals, oldest first, with their certificates (empty
    /// when a later one's implies it).
    recent: VecDeque<(Digest, Arc<Proposal>, Arc<Vec<u8>>)>,
    /// The snapshot of the newest checkpoint tick: (tick, digest, bytes).
    checkpoint_snap: Option<(u64, Digest, Arc<Vec<u8>>)>,
    /// This replica's own snapshot at the tick it found diverged, kept
    /// until the resync to say which fields differ.
    desync_snap: Option<(u64, Arc<Vec<u8>>)>,
    /// This member's newest signed checkpoints, for observers.
    own_signed: BTreeMap<u64, Checkpoint>,
    /// Observers and when their lease ends.
    followers: BTreeMap<PlayerId, u64>,
    spec_snaps: BTreeMap<Digest, Arc<Vec<u8>>>,
    known: BTreeMap<Digest, Arc<Proposal>>,
    propose_wait: Option<(u64, Digest)>,
    /// When the engine asked for the waiting proposal.
    propose_asked: u64,
    verify_wait: Vec<(u64, Digest, Digest, u64)>,
    early: Vec<(u64, Digest, Digest, u64)>,
    wait_notarized: Option<Digest>,
    wait_finalized: Option<(Digest, Vec<u8>)>,
    /// Proposals asked for, and when they were last asked for.
    wanted: BTreeMap<Digest, (u64, u64)>,
    now: u64,
    mempool: BTreeMap<PlayerId, BTreeMap<u64, SignedInput>>,
    mempool_len: usize,
    /// Each sending player's allowance of new inputs.
    allowances: BTreeMap<PlayerId, Allowance>,
    forward: Vec<SignedInput>,
    /// Inputs submitted here and not finalized yet, with when they were
    /// last forwarded: forwarded again every `forward_retry_ms` (a
    /// forward may be lost, and the primary may change).
    own: BTreeMap<(PlayerId, u64), u64>,
    /// Recently finalized inputs (oldest first), and the same as a set: the
    /// sim records sequence numbers only for players it knows, so an input
    /// of a player it refused to know (a refused join, an input before
    /// joining) would otherwise be admitted again.
    done_order: VecDeque<(PlayerId, u64)>,
    done: BTreeSet<(PlayerId, u64)>,
    hashes: BTreeMap<u64, Digest>,
    checkpoints: BTreeMap<u64, BTreeMap<PlayerId, Digest>>,
    desync: Option<Desync>,
    /// When the group was last asked for a snapshot (while desynced).
    snapshot_asked: u64,
    published_tick: Option<u64>,
    /// Neighbours' border sets by (region, tick sent).
    border_in: BTreeMap<(RegionId, u64), BorderIn>,
    /// When a neighbour's signed set last arrived (in time or late).
    border_heard: BTreeMap<RegionId, u64>,
    out: VecDeque<Output>,
    stats: Stats,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("region", &self.manifest.region)
            .field("me", &self.me)
            .field("head_tick", &self.head.tick_number())
            .field("finalized_next", &self.finalized_next)
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica whose region is `region`, the state after the proposal
    /// `digest` (the genesis digest for genesis), which is finalized.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Config,
        manifest: Manifest,
        key: SigningKey,
        host: Arc<dyn ScriptHost + Send + Sync>,
        sources: Arc<dyn SourceBook>,
        region: Region,
        digest: Digest,
    ) -> Replica {
        let genesis = manifest.genesis_digest();
        let bytes = Arc::new(region.snapshot());
        let next = region.tick_number();
        let hash = region.hash();
        let me = player_of(&key);
        Replica {
            cfg,
            manifest,
            genesis,
            key,
            me,
            host,
            sources,
            head: region,
            head_digest: digest,
            chain: Vec::new(),
            finalized: digest,
            finalized_next: next,
            finalized_hash: hash,
            base: Base { bytes },
            since_base: Vec::new(),
            recent: VecDeque::new(),
            checkpoint_snap: None,
            desync_snap: None,
            own_signed: BTreeMap::new(),
            followers: BTreeMap::new(),
            spec_snaps: BTreeMap::new(),
            known: BTreeMap::new(),
            propose_wait: None,
            propose_asked: 0,
            verify_wait: Vec::new(),
            early: Vec::new(),
            wait_notarized: None,
            wait_finalized: None,
            wanted: BTreeMap::new(),
            now: 0,
            mempool: BTreeMap::new(),
            mempool_len: 0,
            allowances: BTreeMap::new(),
            forward: Vec::new(),
            own: BTreeMap::new(),
            done_order: VecDeque::new(),
            done: BTreeSet::new(),
            hashes: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            desync: None,
            snapshot_asked: 0,
            published_tick: None,
            border_in: BTreeMap::new(),
            border_heard: BTreeMap::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The genesis digest.
    pub fn genesis_digest(&self) -> Digest {
        self.genesis
    }

    /// This replica's key's player id.
    pub fn me(&self) -> PlayerId {
        self.me
    }

    /// The region at the head (speculative).
    pub fn head(&self) -> &Region {
        &self.head
    }

    /// The parent of the head's proposal (the finalized digest when the
    /// head is the finalized state).
    pub fn head_parent(&self) -> Digest {
        self.chain
            .last()
            .map_or(self.finalized, |l| l.proposal.parent)
    }

    /// Digest of the last finalized proposal, and the next tick after it.
    pub fn finalized(&self) -> (Digest, u64, Digest) {
        (self.finalized, self.finalized_next, self.finalized_hash)
    }

    /// Whether this replica has diverged and waits for a resync.
    pub fn desync(&self) -> Option<&Desync> {
        self.desync.as_ref()
    }

    /// The neighbours this group trades border traffic with, and the
    /// members of the group hosting each (empty: not known yet).
    pub fn neighbours(&self) -> &[Neighbour] {
        &self.cfg.neighbours
    }

    /// The group hosting a configured neighbour region, learned after the
    /// start (from the overlay's signed region record, ADR 0013 decision 2).
    /// Border sets and certificates of that region are checked against
    /// these members from now on; sets kept under the old members are
    /// dropped. A region that is not a configured neighbour changes
    /// nothing (the layout of the world is fixed when it is created) and is
    /// refused with the reason.
    pub fn set_neighbour(&mut self, neighbour: Neighbour) -> Result<(), String> {
        let Some(n) = self
            .cfg
            .neighbours
            .iter_mut()
            .find(|n| n.region == neighbour.region)
        else {
            return Err(format!(
                "region {} is not a neighbour of region {}",
                neighbour.region, self.manifest.region
            ));
        };
        if neighbour.members.is_empty() {
            return Err(format!(
                "the group of region {} has no members",
                neighbour.region
            ));
        }
        if n.members == neighbour.members {
            return Ok(());
        }
        info!(region = %neighbour.region, members = neighbour.members.len(), "neighbour's group set");
        n.members = neighbour.members;
        let region = n.region;
        self.border_in
            .retain(|(from, _), b| *from != region || b.cert.is_some());
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Signed checkpoints seen for recent ticks: tick → member → hash.
    pub fn checkpoints(&self) -> &BTreeMap<u64, BTreeMap<PlayerId, Digest>> {
        &self.checkpoints
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        if !self.forward.is_empty() && self.manifest.members.len() > 1 {
            let inputs = std::mem::take(&mut self.forward);
            self.out.push_back(Output::Send {
                to: To::All,
                msg: Message::Inputs(inputs),
            });
        }
        self.forward.clear();
        self.out.pop_front()
    }

    /// When [`Replica::tick`] has something to do, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        // A proposal is due at the head's time + the tick period, once the
        // head is its parent (until then the fetch retries are the deadline).
        let propose = self
            .propose_wait
            .filter(|(_, parent)| *parent == self.head_digest)
            .map(|_| self.propose_at());
        let fetch = self
            .verify_wait
            .iter()
            .filter(|w| !self.wanted.contains_key(&w.2) && !self.known.contains_key(&w.2))
            .map(|w| w.3.saturating_add(self.cfg.fetch_after_ms))
            .chain(
                self.wanted
                    .values()
                    .map(|(_, t)| t.saturating_add(self.cfg.fetch_retry_ms)),
            )
            .min();
        let early = self
            .early
            .iter()
            .filter_map(|w| self.known.get(&w.2))
            .map(|p| p.time_ms.saturating_sub(self.cfg.clock_skew_max_ms))
            .min();
        let forward = self
            .own
            .values()
            .min()
            .map(|t| t.saturating_add(self.cfg.forward_retry_ms));
        let resync = self.desync.as_ref().map(|_| {
            self.snapshot_asked
                .saturating_add(self.cfg.fetch_retry_ms * 4)
        });
        [propose, fetch, early, forward, resync]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passes: a due proposal is built, late proposals are asked for.
    pub fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        if self.desync.is_some()
            && now
                >= self
                    .snapshot_asked
                    .saturating_add(self.cfg.fetch_retry_ms * 4)
        {
            self.ask_snapshot();
        }
        if let Some((req, parent)) = self.propose_wait
            && let Some(digest) = self.reusable(now, parent)
        {
            // A view that timed out (its proposal was not notarized in
            // time) is asked again on the same parent: the batch already
            // built and executed on it is proposed again, rather than the
            // head rolled back and the batch executed anew. Otherwise a
            // primary whose tick takes longer than the view's timeout (a
            // big batch on a starved CPU) pays a rollback and a longer
            // build every view and never catches up.
            self.propose_wait = None;
            self.stats.reproposed += 1;
            debug!(digest = %metatopia_sim::hex(&digest[..4]), "proposal of a timed-out view proposed again");
            if self.manifest.members.len() > 1
                && let Some(l) = self.chain.iter().find(|l| l.digest == digest)
            {
                self.out.push_back(Output::Send {
                    to: To::All,
                    msg: Message::Proposal((*l.proposal).clone()),
                });
            }
            self.out.push_back(Output::Answer(Answer::Proposed {
                req,
                digest: Some(digest),
            }));
        }
        if let Some((req, parent)) = self.propose_wait {
            let ready = self.desync.is_none()
                && match self.rebuild(parent) {
                    Ok(()) => true,
                    Err(missing) => {
                        // Keep the request: the parent may still arrive.
                        self.fetch(missing);
                        false
                    }
                };
            let deadline = self.due();
            if ready && now >= self.propose_at() {
                self.propose_wait = None;
                let digest = self.build(now, deadline);
                self.out
                    .push_back(Output::Answer(Answer::Proposed { req, digest }));
            }
        }
        if !self.early.is_empty() {
            let early = std::mem::take(&mut self.early);
            for (req, parent, digest, since) in early {
                self.verify(now, req, parent, digest, since);
            }
        }
        // Proposals still missing: those verifies wait for (not those held
        // that wait for an ancestor, which is asked for by itself), and
        // those asked for before.
        let late: Vec<Digest> = self
            .verify_wait
            .iter()
            .filter(|w| now >= w.3.saturating_add(self.cfg.fetch_after_ms))
            .map(|w| w.2)
            .filter(|d| !self.known.contains_key(d))
            .chain(
                self.wanted
                    .iter()
                    .filter(|(_, (_, t))| now >= t.saturating_add(self.cfg.fetch_retry_ms))
                    .map(|(d, _)| *d),
            )
            .collect();
        // A proposal nobody has sent for a while is no longer asked for (a
        // fork that was abandoned); a later order asks again if needed.
        let give_up = self.cfg.fetch_retry_ms.saturating_mul(20);
        self.wanted
            .retain(|_, (first, _)| now < first.saturating_add(give_up));
        for d in late {
            self.fetch(d);
        }
        let retry = self.cfg.forward_retry_ms;
        let due: Vec<(PlayerId, u64)> = self
            .own
            .iter()
            .filter(|(_, t)| now >= t.saturating_add(retry))
            .map(|(k, _)| *k)
            .collect();
        for (player, seq) in due {
            let last = self.last_seq(player);
            let queued = self.mempool.get(&player).and_then(|q| q.get(&seq)).cloned();
            match queued {
                Some(input) if seq > last => {
                    self.own.insert((player, seq), now);
                    self.forward.push(input);
                }
                _ => {
                    self.own.remove(&(player, seq));
                }
            }
        }
    }

    /// When the head's next tick is due (module doc of [`Config::epoch_ms`]).
    fn due(&self) -> u64 {
        match self.cfg.epoch_ms {
            Some(epoch) => {
                epoch.saturating_add(self.head.tick_number().saturating_mul(self.cfg.tick_ms))
            }
            None => self
                .head
                .sim()
                .state()
                .time_ms
                .saturating_add(self.cfg.tick_ms),
        }
    }

    /// When the primary proposes the head's next tick: when it is due, or
    /// while a neighbour's certified border set of the tick before is
    /// missing, up to `border_wait_ms` (`border_wait_live_ms` for a live
    /// neighbour) after the later of the due time and the engine's
    /// request. A group behind schedule (due in the past) waits too:
    /// without it two groups that both fell behind (an overloaded machine)
    /// propose back to back each on its own, drift apart, and every border
    /// set is late. The longer wait for a live neighbour keeps a region
    /// from running ahead of one that is slower: with the short one alone,
    /// two groups of one on a loaded machine settled a few ticks apart and
    /// every set from the one behind came late, for good (session 13).
    fn propose_at(&self) -> u64 {
        let due = self.due();
        let Some(prev) = self.head.tick_number().checked_sub(1) else {
            return due;
        };
        let wait = self
            .cfg
            .neighbours
            .iter()
            .filter(|n| {
                // A neighbour whose group is not known yet sends nothing
                // that could be certified: not waited for.
                !n.members.is_empty()
                    && self
                        .border_in
                        .get(&(n.region, prev))
                        .is_none_or(|b| b.cert.is_none())
            })
            .map(|n| {
                let live = self
                    .border_heard
                    .get(&n.region)
                    .is_some_and(|t| self.now < t.saturating_add(BORDER_LIVE_MS));
                if live {
                    self.cfg.border_wait_live_ms.max(self.cfg.border_wait_ms)
                } else {
                    self.cfg.border_wait_ms
                }
            })
            .max();
        match wait {
            None => due,
            Some(wait) => due.max(self.propose_asked).saturating_add(wait),
        }
    }

    // ----- submissions -----

    /// A player's signed input, sent to this replica. It is checked,
    /// queued and forwarded to the other members; its fate comes out as
    /// [`Output::Committed`] when its tick is finalized.
    pub fn submit(&mut self, input: SignedInput) -> Result<(), Refusal> {
        if self.desync.is_some() {
            return Err(Refusal::NotServing);
        }
        let fresh = self.admit(input.clone()).inspect_err(|_| {
            self.stats.refused_inputs += 1;
        })?;
        if fresh {
            self.own
                .insert((input.input.player, input.input.seq), self.now);
            self.forward.push(input);
        }
        Ok(())
    }

    /// Checks and queues an input; true if it was not queued before.
    fn admit(&mut self, input: SignedInput) -> Result<bool, Refusal> {
        input.verify(self.manifest.region)?;
        self.queue(input)
    }

    /// Queues an input whose signature was checked; true if it was not
    /// queued before.
    fn queue(&mut self, input: SignedInput) -> Result<bool, Refusal> {
        let player = input.input.player;
        let seq = input.input.seq;
        let last = self.last_seq(player);
        if seq <= last || self.done.contains(&(player, seq)) {
            return Err(Refusal::Replayed { seq, last });
        }
        if let InputKind::AttachScript { source, .. } = &input.input.kind
            && self.sources.get(source).is_none()
        {
            return Err(Refusal::UnknownSource(metatopia_sim::hex(source)));
        }
        let queue = self.mempool.entry(player).or_default();
        if queue.contains_key(&seq) {
            return Ok(false);
        }
        if queue.len() >= self.cfg.player_pending_max {
            return Err(Refusal::PlayerBusy(self.cfg.player_pending_max));
        }
        if self.mempool_len >= self.cfg.mempool_max {
            return Err(Refusal::Busy);
        }
        if !self.allow(player) {
            return Err(Refusal::PlayerRate(self.cfg.player_inputs_per_sec));
        }
        let queue = self.mempool.entry(player).or_default();
        queue.insert(seq, input);
        self.mempool_len += 1;
        debug!(player = %player, seq, "input queued");
        Ok(true)
    }

    /// Whether [`Replica::queue`] refuses `input` (or takes it as a copy of
    /// one queued) whatever its signature: its sequence number is queued,
    /// executed or finalized already.
    fn settled(&self, input: &SignedInput) -> bool {
        let (player, seq) = (input.input.player, input.input.seq);
        seq <= self.last_seq(player)
            || self.done.contains(&(player, seq))
            || self
                .mempool
                .get(&player)
                .is_some_and(|q| q.contains_key(&seq))
    }

    /// Takes one of `player`'s allowance of new inputs, if it has one.
    /// Node-local admission (never part of the agreed state).
    fn allow(&mut self, player: PlayerId) -> bool {
        let (rate, burst) = (
            u64::from(self.cfg.player_inputs_per_sec),
            u64::from(self.cfg.player_inputs_burst),
        );
        let now = self.now;
        if self.allowances.len() >= ALLOWANCES_KEPT {
            // Forget players whose allowance has refilled: same as new.
            self.allowances.retain(|_, a| !a.full(now, rate, burst));
        }
        self.allowances
            .entry(player)
            .or_insert(Allowance::full_at(now, burst))
            .take(now, rate, burst)
    }

    fn last_seq(&self, player: PlayerId) -> u64 {
        self.head
            .sim()
            .state()
            .players
            .get(&player)
            .map_or(0, |p| p.last_seq)
    }

    // ----- messages from members -----

    /// A message from another member (or a player's node).
    pub fn handle(&mut self, now: u64, from: PlayerId, msg: Message) {
        self.now = self.now.max(now);
        let member = self.manifest.index_of(from).is_some();
        if !member
            && !matches!(
                msg,
                Message::Inputs(_)
                    | Message::Fetch(_)
                    | Message::Follow { .. }
                    | Message::Border { .. }
            )
        {
            // Observers send inputs, fetches and follows, neighbours'
            // members border sets; nothing else.
            self.stats.refused_messages += 1;
            return;
        }
        match msg {
            Message::Inputs(inputs) => {
                // Signatures are checked in batches on the rayon pool
                // (ADR 0015), except those of inputs the queue refuses
                // whatever their signature: already queued (a member's
                // forward of an input this member has) or already
                // executed. Queueing is this member's own business; the
                // group decides validity in `check`.
                let region = self.manifest.region;
                let fresh: Vec<bool> = inputs.iter().map(|s| !self.settled(s)).collect();
                let unchecked: Vec<&SignedInput> = inputs
                    .iter()
                    .zip(&fresh)
                    .filter_map(|(s, f)| f.then_some(s))
                    .collect();
                let mut checked = verify::verify_inputs(region, &unchecked).into_iter();
                for (input, fresh) in inputs.into_iter().zip(fresh) {
                    let check = if fresh {
                        checked.next().expect("one result for every input checked")
                    } else {
                        Ok(())
                    };
                    // A player's node (not a member) sent it to this member
                    // only: the others must see it too, or it waits until
                    // this member is primary. Inputs from members are not
                    // forwarded again (and not copied for it).
                    let copy = (!member).then(|| input.clone());
                    let result = check
                        .map_err(Refusal::from)
                        .and_then(|()| self.queue(input));
                    match (result, copy) {
                        (Ok(true), Some(copy)) => self.forward.push(copy),
                        (Ok(_), _) => {}
                        (Err(e), _) => {
                            self.stats.refused_messages += 1;
                            debug!(from = %from, error = %e, "forwarded input refused");
                        }
                    }
                }
            }
            Message::Proposal(p) => self.received(now, p),
            Message::Fetch(digest) => {
                let found = self
                    .known
                    .get(&digest)
                    .cloned()
                    .or_else(|| {
                        self.chain
                            .iter()
                            .find(|l| l.digest == digest)
                            .map(|l| l.proposal.clone())
                    })
                    .or_else(|| {
                        self.recent
                            .iter()
                            .find(|(d, _, _)| *d == digest)
                            .map(|(_, p, _)| p.clone())
                    });
                if let Some(p) = found {
                    self.out.push_back(Output::Send {
                        to: To::One(from),
                        msg: Message::Proposal((*p).clone()),
                    });
                }
            }
            Message::Checkpoint(c) => self.checkpoint(from, c),
            Message::SnapshotRequest => {
                if let (None, Some((tick, digest, bytes))) = (&self.desync, &self.checkpoint_snap) {
                    self.out.push_back(Output::Send {
                        to: To::One(from),
                        msg: Message::Snapshot {
                            tick: *tick,
                            digest: *digest,
                            bytes: (**bytes).clone(),
                        },
                    });
                }
            }
            Message::Snapshot { digest, bytes, .. } => self.resync(now, from, digest, &bytes),
            Message::Follow { snapshot } => self.follow(now, from, snapshot),
            Message::Border { set, sig } => self.border_received(set, sig),
            // Observers' business, not a member's.
            Message::Finalized { .. } => self.stats.refused_messages += 1,
        }
    }

    /// A member of a neighbour's group sends its signed border set. Kept
    /// (bounded: ticks from the one the next proposal needs to
    /// [`BORDER_AHEAD_MAX`] ahead, one set per signer) until f + 1 members
    /// signed the same envelopes; anything that does not verify is refused
    /// and counted, and changes nothing.
    fn border_received(&mut self, set: BorderSet, sig: BorderSig) {
        let Some(n) = self.cfg.neighbours.iter().find(|n| n.region == set.from) else {
            self.stats.border_refused += 1;
            debug!(from = %set.from, "border set from a region that is not a neighbour");
            return;
        };
        if !n.members.contains(&sig.member) {
            self.stats.border_refused += 1;
            self.stats.sets(set.from).refused += 1;
            debug!(from = %set.from, member = %sig.member, "border set signed by a non-member");
            return;
        }
        let need = n.quorum();
        if set.tick.saturating_add(1) < self.finalized_next {
            // Late, yet it says the neighbour is live (behind this region):
            // its next sets are waited for longer.
            if sig.verify(&set).is_ok() {
                self.border_heard.insert(set.from, self.now);
            }
            self.stats.border_late += 1;
            self.stats.sets(set.from).late += 1;
            debug!(from = %set.from, tick = set.tick, "late border set dropped");
            return;
        }
        if set.tick > self.head.tick_number().saturating_add(BORDER_AHEAD_MAX) {
            self.stats.border_ahead += 1;
            self.stats.sets(set.from).ahead += 1;
            return;
        }
        let key = (set.from, set.tick);
        if self
            .border_in
            .get(&key)
            .is_some_and(|b| b.cert.is_some() || b.signers.contains(&sig.member))
        {
            return;
        }
        if let Err(e) = set
            .check(self.manifest.region)
            .and_then(|()| sig.verify(&set).map_err(BorderSetError::from))
        {
            self.stats.border_refused += 1;
            self.stats.sets(set.from).refused += 1;
            debug!(from = %set.from, tick = set.tick, error = %e, "border set refused");
            return;
        }
        self.border_heard.insert(set.from, self.now);
        let entry = self.border_in.entry(key).or_default();
        entry.signers.insert(sig.member);
        let (set, sigs) = entry
            .sets
            .entry(set.envelopes_hash())
            .or_insert_with(|| (set, BTreeMap::new()));
        sigs.insert(sig.member, sig.sig);
        if sigs.len() >= need {
            let cert = BorderCert {
                set: set.clone(),
                sigs: sigs
                    .iter()
                    .take(need)
                    .map(|(member, sig)| BorderSig {
                        member: *member,
                        sig: *sig,
                    })
                    .collect(),
            };
            entry.sets.clear();
            entry.cert = Some(Arc::new(cert));
        }
    }

    /// Signs this region's border outbox of the finalized `tick` and sends
    /// each neighbour its part (an empty one too).
    fn send_border(&mut self, tick: u64, outbox: &[Envelope]) {
        if self.desync.is_some() {
            return;
        }
        // A neighbour whose group is not known yet cannot be reached.
        for n in self.cfg.neighbours.iter().filter(|n| !n.members.is_empty()) {
            let set = BorderSet {
                from: self.manifest.region,
                to: n.region,
                tick,
                envelopes: outbox
                    .iter()
                    .filter(|e| e.to == n.region)
                    .cloned()
                    .collect(),
            };
            let sig = set.sign(&self.key);
            self.stats.border_sent += 1;
            self.stats.sets(n.region).sent += 1;
            self.out.push_back(Output::Send {
                to: To::Region(n.region),
                msg: Message::Border { set, sig },
            });
        }
    }

    /// The certified border sets a proposal for `tick` carries: each
    /// neighbour's of `tick - 1`, if it is here, in region order.
    fn border_for(&self, tick: u64) -> Vec<BorderCert> {
        let Some(prev) = tick.checked_sub(1) else {
            return Vec::new();
        };
        let mut certs: Vec<BorderCert> = self
            .cfg
            .neighbours
            .iter()
            .filter_map(|n| self.border_in.get(&(n.region, prev)))
            .filter_map(|b| b.cert.as_deref().cloned())
            .collect();
        certs.sort_by_key(|c| c.set.from);
        certs
    }

    /// Why the border certificates of `p` cannot be delivered, if they
    /// cannot: one per neighbour at most, in region order, each of tick
    /// `p.tick - 1`, each signed by f + 1 of its group.
    fn check_border(&self, p: &Proposal) -> Result<(), BorderSetError> {
        let mut last: Option<RegionId> = None;
        for c in &p.border {
            if last.is_some_and(|l| l >= c.set.from) {
                return Err(BorderSetError::Certificate(
                    "certificates not one per neighbour in region order".into(),
                ));
            }
            last = Some(c.set.from);
            let n = self
                .cfg
                .neighbours
                .iter()
                .find(|n| n.region == c.set.from)
                .ok_or(BorderSetError::NotNeighbour(c.set.from))?;
            if c.set.tick.saturating_add(1) != p.tick {
                return Err(BorderSetError::Tick {
                    got: c.set.tick,
                    tick: p.tick,
                });
            }
            c.verify(self.manifest.region, &n.members)?;
        }
        Ok(())
    }

    /// An observer asks to follow (or renews its lease).
    fn follow(&mut self, now: u64, from: PlayerId, snapshot: bool) {
        if self.manifest.index_of(from).is_some() || self.desync.is_some() {
            return;
        }
        self.followers.retain(|_, until| *until > now);
        if !self.followers.contains_key(&from) && self.followers.len() >= FOLLOWERS_MAX {
            self.stats.refused_messages += 1;
            return;
        }
        self.followers
            .insert(from, now.saturating_add(FOLLOW_LEASE_MS));
        if !snapshot {
            return;
        }
        let Some((tick, digest, bytes)) = self.checkpoint_snap.clone() else {
            return;
        };
        let to = To::One(from);
        self.out.push_back(Output::Send {
            to: to.clone(),
            msg: Message::Snapshot {
                tick,
                digest,
                bytes: (*bytes).clone(),
            },
        });
        if let Some(c) = self.own_signed.get(&tick) {
            self.out.push_back(Output::Send {
                to: to.clone(),
                msg: Message::Checkpoint(c.clone()),
            });
        }
        // The finalized proposals since, the last of which carries a
        // certificate.
        let since: Vec<Message> = self
            .recent
            .iter()
            .filter(|(_, p, _)| p.tick > tick)
            .map(|(_, p, proof)| Message::Finalized {
                proposal: (**p).clone(),
                proof: (**proof).clone(),
            })
            .collect();
        for msg in since {
            self.out.push_back(Output::Send {
                to: to.clone(),
                msg,
            });
        }
    }

    /// Sends to every observer whose lease runs.
    fn tell_followers(&mut self, msg: Message) {
        let now = self.now;
        self.followers.retain(|_, until| *until > now);
        if self.followers.is_empty() {
            return;
        }
        self.out.push_back(Output::Send {
            to: To::Some(self.followers.keys().copied().collect()),
            msg,
        });
    }

    fn received(&mut self, now: u64, p: Proposal) {
        if p.region != self.manifest.region {
            self.stats.refused_messages += 1;
            return;
        }
        if p.tick < self.finalized_next {
            return;
        }
        let digest = p.digest();
        self.wanted.remove(&digest);
        if self.known.contains_key(&digest) || self.chain.iter().any(|l| l.digest == digest) {
            return;
        }
        self.hold(digest, Arc::new(p));
        self.retry(now);
    }

    /// Keeps a proposal that is not on the chain (bounded by
    /// `proposals_max`), for the verifies and orders that may need it.
    fn hold(&mut self, digest: Digest, p: Arc<Proposal>) {
        if self.known.len() >= self.cfg.proposals_max {
            // Drop the proposal furthest ahead: the ones near the head are
            // the ones the engine asks about next.
            if let Some((&d, _)) = self.known.iter().max_by_key(|(_, p)| p.tick) {
                self.known.remove(&d);
            }
        }
        self.known.insert(digest, p);
    }

    /// Retries orders that waited for a proposal.
    fn retry(&mut self, now: u64) {
        let waits = std::mem::take(&mut self.verify_wait);
        for (req, parent, digest, since) in waits {
            self.verify(now, req, parent, digest, since);
        }
        if let Some(digest) = self.wait_notarized.take() {
            self.order(now, Order::Notarized { digest });
        }
        if let Some((digest, proof)) = self.wait_finalized.take() {
            self.order(now, Order::Finalized { digest, proof });
        }
    }

    /// Asks the group for a proposal; again after `fetch_retry_ms` while it
    /// is still missing (messages get lost).
    fn fetch(&mut self, digest: Digest) {
        let now = self.now;
        let first = match self.wanted.get(&digest) {
            Some((_, last)) if now < last.saturating_add(self.cfg.fetch_retry_ms) => return,
            Some((first, _)) => *first,
            None => now,
        };
        if self.wanted.len() >= self.cfg.proposals_max {
            self.wanted.pop_first();
        }
        self.wanted.insert(digest, (first, now));
        self.out.push_back(Output::Send {
            to: To::All,
            msg: Message::Fetch(digest),
        });
    }

    // ----- orders from the engine -----

    /// What the ordering engine asks or tells.
    pub fn order(&mut self, now: u64, order: Order) {
        self.now = self.now.max(now);
        match order {
            Order::Propose { req, parent } => {
                // A newer request replaces an older one, which is declined.
                self.propose_asked = now;
                if let Some((old, _)) = self.propose_wait.replace((req, parent)) {
                    self.out.push_back(Output::Answer(Answer::Proposed {
                        req: old,
                        digest: None,
                    }));
                }
                self.tick(now);
            }
            Order::Verify {
                req,
                parent,
                digest,
            } => self.verify(now, req, parent, digest, now),
            Order::Notarized { digest } => {
                if digest == self.finalized || self.is_final_ancestor(&digest) {
                    return;
                }
                if self.execute_to(digest).is_err() {
                    self.wait_notarized = Some(digest);
                    return;
                }
                if let Some(i) = self.chain.iter().position(|l| l.digest == digest) {
                    for l in &mut self.chain[..=i] {
                        l.notarized = true;
                    }
                    self.publish(self.chain[i].published.clone());
                }
            }
            Order::Finalized { digest, proof } => {
                if digest == self.finalized || self.is_final_ancestor(&digest) {
                    return;
                }
                if self.execute_to(digest).is_err() {
                    self.wait_finalized = Some((digest, proof));
                    return;
                }
                self.finalize(digest, proof);
            }
            Order::Nullified { view } => debug!(view, "view nullified"),
        }
    }

    fn is_final_ancestor(&self, digest: &Digest) -> bool {
        self.recent.iter().any(|(d, _, _)| d == digest)
    }

    fn verify(&mut self, now: u64, req: u64, parent: Digest, digest: Digest, since: u64) {
        if self.desync.is_some() {
            self.out
                .push_back(Output::Answer(Answer::Verified { req, valid: false }));
            return;
        }
        if let Some(l) = self.chain.iter().find(|l| l.digest == digest) {
            let valid = l.proposal.parent == parent;
            self.out
                .push_back(Output::Answer(Answer::Verified { req, valid }));
            return;
        }
        let Some(p) = self.known.get(&digest).cloned() else {
            self.verify_wait.push((req, parent, digest, since));
            return;
        };
        if p.parent != parent {
            self.invalid(req, &Invalid::Parent);
            return;
        }
        if let Err(missing) = self.rebuild(parent) {
            self.fetch(missing);
            self.verify_wait.push((req, parent, digest, since));
            return;
        }
        if p.time_ms > now.saturating_add(self.cfg.clock_skew_max_ms) {
            // Ahead of this replica's clock: not invalid yet (an honest
            // replica whose clock is behind must not vote against it for
            // good); decided when the clock catches up.
            self.early.push((req, parent, digest, since));
            return;
        }
        if let Err(e) = self.check(&p, Some(Live { now, asked: since })) {
            self.invalid(req, &e);
            return;
        }
        match self.execute(p, digest) {
            Ok(()) => {
                self.stats.verified += 1;
                self.out
                    .push_back(Output::Answer(Answer::Verified { req, valid: true }));
            }
            Err(e) => self.invalid(req, &e),
        }
    }

    fn invalid(&mut self, req: u64, e: &Invalid) {
        self.stats.invalid += 1;
        if let Invalid::Stale { .. } = e {
            // Expected while catching up after a restart (one per missed
            // view): no vote either way, counted, not a warning.
            self.stats.stale += 1;
            debug!(error = %e, "proposal not voted on");
            self.out
                .push_back(Output::Answer(Answer::Abstained { req }));
            return;
        }
        warn!(error = %e, "proposal refused");
        self.out
            .push_back(Output::Answer(Answer::Verified { req, valid: false }));
    }

    // ----- the chain -----

    /// Makes `parent` the head: nothing if it is, a rollback if it is an
    /// earlier link, catch-up through held proposals otherwise. Err names
    /// a proposal that is missing.
    fn rebuild(&mut self, parent: Digest) -> Result<(), Digest> {
        if parent == self.head_digest {
            return Ok(());
        }
        if parent == self.finalized || self.chain.iter().any(|l| l.digest == parent) {
            let keep = self
                .chain
                .iter()
                .position(|l| l.digest == parent)
                .map_or(0, |i| i + 1);
            let links: Vec<Arc<Proposal>> = self.chain[..keep]
                .iter()
                .map(|l| l.proposal.clone())
                .collect();
            self.rollback_to(&links);
            return Ok(());
        }
        // Not on the chain: follow held proposals back to it.
        let mut path = Vec::new();
        let mut at = parent;
        loop {
            if at == self.finalized || self.chain.iter().any(|l| l.digest == at) {
                break;
            }
            let Some(p) = self.known.get(&at).cloned() else {
                return Err(at);
            };
            if p.tick < self.finalized_next {
                return Err(at);
            }
            let next = p.parent;
            path.push((at, p));
            at = next;
        }
        self.rebuild(at)?;
        for (digest, p) in path.into_iter().rev() {
            if let Err(e) = self
                .check(&p, None)
                .and_then(|()| self.execute(p.clone(), digest))
            {
                // Consensus notarized a proposal this replica cannot execute:
                // a bug or a divergence, reported by the checkpoints.
                warn!(error = %e, tick = p.tick, "a notarized proposal does not execute here");
                return Err(digest);
            }
        }
        Ok(())
    }

    /// Executes up to and including `digest` (a proposal the engine says is
    /// notarized or finalized).
    fn execute_to(&mut self, digest: Digest) -> Result<(), Digest> {
        if self.chain.iter().any(|l| l.digest == digest) {
            return Ok(());
        }
        let Some(p) = self.known.get(&digest).cloned() else {
            self.fetch(digest);
            return Err(digest);
        };
        if let Err(missing) = self.rebuild(p.parent) {
            self.fetch(missing);
            return Err(missing);
        }
        self.check(&p, None)
            .and_then(|()| self.execute(p, digest))
            .map_err(|e| {
                warn!(error = %e, "a notarized proposal does not execute here");
                digest
            })
    }

    /// Restores the base and re-executes the finalized proposals since it
    /// and then `links`.
    fn rollback_to(&mut self, links: &[Arc<Proposal>]) {
        self.stats.rollbacks += 1;
        let mut region = Region::restore(&self.base.bytes)
            .expect("the base snapshot was made by this process and restores");
        let replay: Vec<Arc<Proposal>> = self
            .since_base
            .iter()
            .chain(links.iter())
            .cloned()
            .collect();
        let mut chain = Vec::new();
        for p in &replay {
            let report = region
                .tick(&batch_of(&self.cfg, p), &*self.host, &p.inbox())
                .expect("a proposal executed before executes again");
            self.stats.reexecuted += 1;
            if p.tick >= self.finalized_next {
                chain.push(Link {
                    digest: p.digest(),
                    proposal: p.clone(),
                    published: Arc::new(Published::new(
                        p.tick,
                        &region,
                        report.hash,
                        report.sim.events,
                        Arc::new(self.stats.neighbours.clone()),
                    )),
                    outbox: Arc::new(report.outbox),
                    notarized: false,
                });
            }
        }
        // Notarization marks survive on the links that stay.
        for (new, old) in chain.iter_mut().zip(self.chain.iter()) {
            new.notarized = old.notarized && old.digest == new.digest;
        }
        self.head_digest = chain.last().map_or(self.finalized, |l| l.digest);
        // The links rolled back stay held: the engine may still build on
        // them (they may be notarized, or become so), and a group of one
        // has nobody to fetch them from. Dropped, a primary that rolled
        // back to re-propose a timed-out view's batch was asked next for
        // a child of a link it no longer had, and never proposed again.
        let dropped: Vec<Link> = self
            .chain
            .drain(..)
            .filter(|old| !chain.iter().any(|l| l.digest == old.digest))
            .collect();
        for l in dropped {
            self.hold(l.digest, l.proposal);
        }
        self.chain = chain;
        self.head = region;
        let keep: BTreeSet<Digest> = self.chain.iter().map(|l| l.digest).collect();
        self.spec_snaps.retain(|d, _| keep.contains(d));
        info!(head = self.head.tick_number(), "head rebuilt");
    }

    /// Why `p` cannot follow the head, if it cannot. `live` holds the
    /// clocks of a live verify (none when catching up on notarized
    /// proposals).
    fn check(&self, p: &Proposal, live: Option<Live>) -> Result<(), Invalid> {
        if p.region != self.manifest.region {
            return Err(Invalid::Region(p.region.0));
        }
        let expected = self.head.tick_number();
        if p.tick != expected {
            return Err(Invalid::Tick {
                expected,
                got: p.tick,
            });
        }
        if p.parent != self.head_digest {
            return Err(Invalid::Parent);
        }
        let last = self.head.sim().state().time_ms;
        if p.time_ms < last {
            return Err(Invalid::Time {
                got: p.time_ms,
                why: format!("before the last tick's {last} ms"),
            });
        }
        if let Some(Live { now, asked }) = live {
            let skew = self.cfg.clock_skew_max_ms;
            if p.time_ms > now.saturating_add(skew) {
                return Err(Invalid::Time {
                    got: p.time_ms,
                    why: format!("more than {skew} ms ahead of this replica's clock ({now} ms)"),
                });
            }
            if p.time_ms.saturating_add(skew) < asked {
                return Err(Invalid::Stale {
                    got: p.time_ms,
                    skew,
                    asked,
                });
            }
        }
        if p.inputs.len() > self.cfg.inputs_per_tick_max {
            return Err(Invalid::TooLarge(format!(
                "{} inputs (limit {})",
                p.inputs.len(),
                self.cfg.inputs_per_tick_max
            )));
        }
        let bytes = p.encode().len();
        if bytes > PROPOSAL_BYTES_MAX {
            return Err(Invalid::TooLarge(format!(
                "{bytes} bytes (limit {PROPOSAL_BYTES_MAX})"
            )));
        }
        let mut last_seq: BTreeMap<PlayerId, u64> = BTreeMap::new();
        let mut attached = BTreeSet::new();
        // Signatures in batches on the rayon pool (ADR 0015: the batches
        // decide exactly as single checks do); an input this replica
        // queued (and so checked) with the same signature is not checked
        // again. The first bad one by index is the error.
        let region = self.manifest.region;
        let unchecked: Vec<(usize, &SignedInput)> = p
            .inputs
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                self.mempool
                    .get(&s.input.player)
                    .and_then(|q| q.get(&s.input.seq))
                    .is_none_or(|m| m != *s)
            })
            .collect();
        let inputs: Vec<&SignedInput> = unchecked.iter().map(|(_, s)| *s).collect();
        let bad = unchecked
            .iter()
            .zip(verify::verify_inputs(region, &inputs))
            .find_map(|((index, _), r)| {
                r.err().map(|error| Invalid::Input {
                    index: *index,
                    error,
                })
            });
        if let Some(e) = bad {
            return Err(e);
        }
        for (index, s) in p.inputs.iter().enumerate() {
            let prev = last_seq.insert(s.input.player, s.input.seq);
            if prev.is_some_and(|prev| prev >= s.input.seq) {
                return Err(Invalid::SeqOrder(index));
            }
            if let InputKind::AttachScript { source, .. } = &s.input.kind {
                attached.insert(*source);
            }
        }
        let carried: Vec<[u8; 32]> = p
            .sources
            .iter()
            .map(|s| metatopia_scripts::hash_source(s))
            .collect();
        if !carried.windows(2).all(|w| w[0] < w[1]) {
            return Err(Invalid::Sources("not sorted by hash, or repeated".into()));
        }
        let carried: BTreeSet<[u8; 32]> = carried.into_iter().collect();
        if carried != attached {
            return Err(Invalid::Sources(
                "the sources carried differ from the scripts attached".into(),
            ));
        }
        self.check_border(p)?;
        Ok(())
    }

    /// Executes `p`, whose digest is `digest`, on the head (it passed
    /// [`Replica::check`]; the digest is the caller's, not encoded again).
    fn execute(&mut self, p: Arc<Proposal>, digest: Digest) -> Result<(), Invalid> {
        for text in &p.sources {
            if let Err(e) = self.sources.put(text) {
                return Err(Invalid::Sources(format!("cannot store a source: {e}")));
            }
        }
        let report = self
            .head
            .tick(&batch_of(&self.cfg, &p), &*self.host, &p.inbox())
            .map_err(|e| Invalid::Sim(e.to_string()))?;
        if !report.refused.is_empty() {
            debug!(tick = p.tick, refused = ?report.refused, "border envelopes refused by the region");
        }
        self.known.remove(&digest);
        self.head_digest = digest;
        let next = self.head.tick_number();
        if next.is_multiple_of(self.cfg.rollback_every.max(1))
            || next.is_multiple_of(self.cfg.checkpoint_every.max(1))
            || next.is_multiple_of(self.cfg.store_snapshot_every.max(1))
        {
            self.spec_snaps
                .insert(digest, Arc::new(self.head.snapshot()));
        }
        self.chain.push(Link {
            digest,
            proposal: p.clone(),
            published: Arc::new(Published::new(
                p.tick,
                &self.head,
                report.hash,
                report.sim.events,
                Arc::new(self.stats.neighbours.clone()),
            )),
            outbox: Arc::new(report.outbox),
            notarized: false,
        });
        Ok(())
    }

    /// An executed proposal on `parent` that can be proposed again (see
    /// [`Replica::tick`]): in the chain, recent enough that verifiers
    /// asked about it now take it as on time (within half the clock skew
    /// allowed), and made the head (rolling back only its children).
    fn reusable(&mut self, now: u64, parent: Digest) -> Option<Digest> {
        if self.desync.is_some() {
            return None;
        }
        let fresh = self.cfg.clock_skew_max_ms / 2;
        let digest = self
            .chain
            .iter()
            .find(|l| {
                l.proposal.parent == parent && now.saturating_sub(l.proposal.time_ms) < fresh
            })?
            .digest;
        self.rebuild(digest).ok()?;
        Some(digest)
    }

    /// Builds, executes and broadcasts the proposal for the next tick.
    fn build(&mut self, now: u64, deadline: u64) -> Option<Digest> {
        let last = self.head.sim().state().time_ms;
        // On time (or a little late): the scheduled time, so pacing does not
        // drift. Far behind (after a failover): the clock.
        let time_ms = if now.saturating_sub(deadline) < self.cfg.tick_ms {
            deadline
        } else {
            now
        }
        .max(last);
        let mut inputs = Vec::new();
        let mut sources = BTreeMap::new();
        // One input per player per round, so a flood from one player does
        // not crowd out the others.
        let mut queues: Vec<Vec<&SignedInput>> = self
            .mempool
            .iter()
            .map(|(player, q)| {
                let last = self.last_seq(*player);
                q.range(last + 1..)
                    .filter(|(seq, _)| !self.done.contains(&(*player, **seq)))
                    .map(|(_, s)| s)
                    .collect()
            })
            .collect();
        let mut round = 0;
        'fill: loop {
            let mut any = false;
            for q in &mut queues {
                let Some(s) = q.get(round) else { continue };
                any = true;
                if inputs.len() >= self.cfg.inputs_per_tick_max {
                    break 'fill;
                }
                if let InputKind::AttachScript { source, .. } = &s.input.kind {
                    match self.sources.get(source) {
                        Some(text) => {
                            sources.insert(*source, text.to_string());
                        }
                        // The source went away: leave the rest of this
                        // player's inputs for later.
                        None => {
                            q.truncate(round);
                            continue;
                        }
                    }
                }
                inputs.push((*s).clone());
            }
            if !any {
                break;
            }
            round += 1;
        }
        let tick = self.head.tick_number();
        let p = Proposal {
            region: self.manifest.region,
            tick,
            parent: self.head_digest,
            time_ms,
            inputs,
            sources: sources.into_values().collect(),
            border: self.border_for(tick),
        };
        let p = Arc::new(p);
        debug!(
            tick = p.tick,
            inputs = p.inputs.len(),
            mempool = self.mempool_len,
            "proposal built"
        );
        let digest = p.digest();
        if let Err(e) = self
            .check(&p, None)
            .and_then(|()| self.execute(p.clone(), digest))
        {
            warn!(error = %e, "own proposal does not execute");
            return None;
        }
        if self.manifest.members.len() > 1 {
            self.out.push_back(Output::Send {
                to: To::All,
                msg: Message::Proposal((*p).clone()),
            });
        }
        Some(digest)
    }

    fn publish(&mut self, p: Arc<Published>) {
        if self.published_tick.is_some_and(|t| t >= p.tick) {
            return;
        }
        self.published_tick = Some(p.tick);
        self.out.push_back(Output::Visible(p));
    }

    /// Finalizes the chain up to `digest` (on the chain).
    fn finalize(&mut self, digest: Digest, proof: Vec<u8>) {
        let Some(i) = self.chain.iter().position(|l| l.digest == digest) else {
            return;
        };
        let done: Vec<Link> = self.chain.drain(..=i).collect();
        let count = done.len();
        for (k, link) in done.into_iter().enumerate() {
            let p = link.proposal.clone();
            self.finalized = link.digest;
            self.finalized_next = p.tick + 1;
            self.finalized_hash = link.published.hash;
            self.stats.finalized += 1;
            // The base moves to a snapshot of this state when there is one.
            let snap = self.spec_snaps.remove(&link.digest);
            if let Some(bytes) = &snap {
                self.base = Base {
                    bytes: bytes.clone(),
                };
                self.since_base.clear();
            } else {
                self.since_base.push(p.clone());
            }
            let link_proof = Arc::new(if k + 1 == count {
                proof.clone()
            } else {
                Vec::new()
            });
            self.recent
                .push_back((link.digest, p.clone(), link_proof.clone()));
            self.tell_followers(Message::Finalized {
                proposal: (*p).clone(),
                proof: (*link_proof).clone(),
            });
            while self.recent.len() > RECENT_MAX {
                self.recent.pop_front();
            }
            self.stats.border_included += p.border.len() as u64;
            for c in &p.border {
                self.stats.sets(c.set.from).included += 1;
                self.border_in.remove(&(c.set.from, c.set.tick));
            }
            self.send_border(p.tick, &link.outbox);
            let next = p.tick + 1;
            if next.is_multiple_of(self.cfg.checkpoint_every.max(1))
                && let Some(bytes) = &snap
            {
                self.checkpoint_snap = Some((p.tick, link.digest, bytes.clone()));
            }
            let store_snap =
                snap.filter(|_| next.is_multiple_of(self.cfg.store_snapshot_every.max(1)));
            self.publish(link.published.clone());
            self.out.push_back(Output::Commit(Commit {
                proposal: p.clone(),
                hash: link.published.hash,
                proof: (*link_proof).clone(),
                snapshot: store_snap,
            }));
            for s in &p.inputs {
                let (player, seq) = (s.input.player, s.input.seq);
                // Gone from the queue: this input, and those the sim now
                // counts as replays (at or below the player's last sequence
                // number after this tick; a player the sim does not know
                // has none, so its earlier inputs stay).
                let last = link
                    .published
                    .sim
                    .state()
                    .players
                    .get(&player)
                    .map_or(0, |p| p.last_seq);
                if let Some(q) = self.mempool.get_mut(&player) {
                    let before = q.len();
                    q.retain(|k, _| *k != seq && *k > last);
                    self.mempool_len -= before - q.len();
                    if q.is_empty() {
                        self.mempool.remove(&player);
                    }
                }
                self.own.remove(&(player, seq));
                if self.done.insert((player, seq)) {
                    self.done_order.push_back((player, seq));
                    if self.done_order.len() > DONE_MAX
                        && let Some(old) = self.done_order.pop_front()
                    {
                        self.done.remove(&old);
                    }
                }
                self.out.push_back(Output::Committed {
                    player,
                    seq,
                    tick: p.tick,
                    sig: s.sig,
                    rejection: rejection(&link.published.events, player, seq),
                });
            }
            if next.is_multiple_of(self.cfg.checkpoint_every.max(1)) {
                self.own_checkpoint(p.tick, link.published.hash);
            }
        }
        self.spec_snaps
            .retain(|d, _| self.chain.iter().any(|l| l.digest == *d));
        self.forget_border();
        let floor = self.finalized_next;
        self.known.retain(|_, p| p.tick >= floor);
        let known = &self.known;
        self.wanted.retain(|d, _| !known.contains_key(d));
    }

    /// Drops neighbours' border sets whose carrying tick is finalized
    /// (those it carried are gone already), counting the certified ones
    /// it went without.
    fn forget_border(&mut self) {
        let floor = self.finalized_next;
        let stale: Vec<(RegionId, u64)> = self
            .border_in
            .keys()
            .filter(|(_, tick)| tick.saturating_add(1) < floor)
            .copied()
            .collect();
        for key in stale {
            if let Some(b) = self.border_in.remove(&key)
                && b.cert.is_some()
            {
                self.stats.border_missed += 1;
                self.stats.sets(key.0).missed += 1;
                debug!(from = %key.0, tick = key.1, "border set certified too late for its tick");
            }
        }
    }

    // ----- checkpoints and resync -----

    fn own_checkpoint(&mut self, tick: u64, hash: Digest) {
        self.hashes.insert(tick, hash);
        while self.hashes.len() > 64 {
            self.hashes.pop_first();
        }
        let c = Checkpoint::sign(&self.key, self.manifest.region, tick, hash);
        self.own_signed.insert(tick, c.clone());
        while self.own_signed.len() > 4 {
            self.own_signed.pop_first();
        }
        self.tell_followers(Message::Checkpoint(c.clone()));
        self.checkpoints
            .entry(tick)
            .or_default()
            .insert(self.me, hash);
        self.out.push_back(Output::Checkpoint {
            tick,
            member: self.me,
            hash,
        });
        if self.manifest.members.len() > 1 {
            self.out.push_back(Output::Send {
                to: To::All,
                msg: Message::Checkpoint(c),
            });
        }
        self.compare(tick);
    }

    fn checkpoint(&mut self, from: PlayerId, c: Checkpoint) {
        if c.region != self.manifest.region
            || c.member != from
            || self.manifest.index_of(c.member).is_none()
            || c.verify().is_err()
        {
            self.stats.refused_messages += 1;
            return;
        }
        let every = self.cfg.checkpoint_every.max(1);
        let window = every.saturating_mul(64);
        if c.tick.saturating_add(window) < self.finalized_next
            || c.tick > self.finalized_next.saturating_add(window)
        {
            return;
        }
        let out = note_checkpoint(&mut self.checkpoints, 128, &c);
        self.out.push_back(out);
        self.compare(c.tick);
    }

    /// Compares this replica's hash at `tick` with the group's.
    fn compare(&mut self, tick: u64) {
        if self.desync.is_some() {
            return;
        }
        let Some(mine) = self.hashes.get(&tick).copied() else {
            return;
        };
        let Some(seen) = self.checkpoints.get(&tick) else {
            return;
        };
        let need = self.manifest.faults_max() + 1;
        let Some(theirs) = vouched(seen, Some(self.me), need).find(|h| *h != mine) else {
            return;
        };
        let d = Desync { tick, mine, theirs };
        warn!(tick, mine = %metatopia_sim::hex(&mine), theirs = %metatopia_sim::hex(&theirs), "desync: this replica's region hash differs from the group's");
        self.desync_snap = self
            .checkpoint_snap
            .as_ref()
            .filter(|(t, _, _)| *t == tick)
            .map(|(t, _, bytes)| (*t, bytes.clone()));
        self.desync = Some(d.clone());
        self.out.push_back(Output::Desync(d));
        self.ask_snapshot();
    }

    /// Asks the group for its snapshot (again every `fetch_retry_ms` × 4
    /// while desynced: a member may answer with one older than the
    /// divergence, which is not taken).
    fn ask_snapshot(&mut self) {
        self.snapshot_asked = self.now;
        self.out.push_back(Output::Send {
            to: To::All,
            msg: Message::SnapshotRequest,
        });
    }

    /// What differs between this replica's own state at the diverged tick
    /// and the group's (`region`), field by field (at most
    /// [`DESYNC_DIFFERENCES_MAX`] lines). Empty when the own snapshot of
    /// that tick is gone or the group's snapshot is of a later tick.
    fn desync_differences(&mut self, tick: u64, region: &Region) -> Vec<String> {
        let Some((own_tick, bytes)) = self.desync_snap.take() else {
            return Vec::new();
        };
        if own_tick != tick {
            return vec![format!(
                "no field comparison: the group's snapshot is of tick {tick}, this replica's of tick {own_tick}"
            )];
        }
        let Ok(own) = Region::restore(&bytes) else {
            return Vec::new();
        };
        let (diffs, more) = crate::desync::diff_states(own.sim().state(), region.sim().state());
        let mut lines: Vec<String> = diffs
            .iter()
            .take(DESYNC_DIFFERENCES_MAX)
            .map(ToString::to_string)
            .collect();
        let left = diffs.len().saturating_sub(DESYNC_DIFFERENCES_MAX) + more;
        if left > 0 {
            lines.push(format!("... and {left} more differences"));
        }
        if lines.is_empty() {
            lines.push("the sim states are equal: the physics state differs".into());
        }
        lines
    }

    /// A snapshot from `from` while desynced: adopted if its region hash is
    /// one that at least f + 1 members other than this one signed.
    fn resync(&mut self, now: u64, from: PlayerId, digest: Digest, bytes: &[u8]) {
        if self.desync.is_none() || self.manifest.index_of(from).is_none() {
            return;
        }
        let Ok(region) = Region::restore(bytes) else {
            self.stats.refused_messages += 1;
            return;
        };
        let hash = region.hash();
        let tick = region.tick_number().saturating_sub(1);
        if self.desync.as_ref().is_some_and(|d| tick < d.tick) {
            debug!(tick, "snapshot older than the divergence: not taken");
            return;
        }
        let need = self.manifest.faults_max() + 1;
        let signed = self
            .checkpoints
            .get(&tick)
            .is_some_and(|seen| vouched(seen, Some(self.me), need).any(|h| h == hash));
        if !signed || region.id() != self.manifest.region {
            debug!(tick, "snapshot not vouched for by enough checkpoints");
            return;
        }
        info!(tick, "resynced from the group's snapshot");
        let differences = self.desync_differences(tick, &region);
        for d in &differences {
            warn!(tick, "desync: {d} (this replica != the group)");
        }
        let next = region.tick_number();
        self.base = Base {
            bytes: Arc::new(bytes.to_vec()),
        };
        self.since_base.clear();
        self.head = region;
        self.head_digest = digest;
        self.chain.clear();
        self.spec_snaps.clear();
        self.finalized = digest;
        self.finalized_next = next;
        self.finalized_hash = hash;
        self.hashes.insert(tick, hash);
        self.desync = None;
        self.published_tick = None;
        self.out.push_back(Output::Resynced {
            tick,
            hash,
            snapshot: self.base.bytes.clone(),
            differences,
        });
        self.retry(now);
    }

    /// Corrupts the head's hash record for a checkpoint, as a diverged
    /// replica would (tests of the desync path only).
    #[doc(hidden)]
    pub fn diverge_for_test(&mut self, tick: u64) {
        self.hashes.insert(tick, [0xd5; 32]);
        self.compare(tick);
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use metatopia_sim::NoScripts;
    use metatopia_sim::input::InputKind;

    use super::*;

    /// Member 1 of four (not the first view's primary) at genesis, and
    /// the proposal for tick 0 made at `time_ms`.
    fn verifier(time_ms: u64) -> (Replica, Proposal, PlayerId) {
        let (keys, manifest) = crate::replica::group::test_group();
        let genesis = manifest.genesis_digest();
        let p = Proposal {
            region: manifest.region,
            tick: 0,
            parent: genesis,
            time_ms,
            inputs: Vec::new(),
            sources: Vec::new(),
            border: Vec::new(),
        };
        let primary = manifest.members[0];
        let core = Replica::new(
            Config::default(),
            manifest.clone(),
            keys[1].clone(),
            Arc::new(NoScripts),
            Arc::new(MemSources::default()),
            manifest.genesis(),
            genesis,
        );
        (core, p, primary)
    }

    /// A verifier of region 3 whose neighbour, region 4, is hosted by the
    /// four keys `[5; 32]` .. `[8; 32]`; and those keys.
    fn border_verifier() -> (Replica, Vec<SigningKey>, Proposal, PlayerId) {
        let (keys, manifest) = crate::replica::group::test_group();
        let theirs: Vec<SigningKey> = (5..=8u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let cfg = Config {
            neighbours: vec![Neighbour {
                region: metatopia_sim::RegionId(4),
                members: theirs.iter().map(player_of).collect(),
            }],
            ..Config::default()
        };
        let genesis = manifest.genesis_digest();
        let p = Proposal {
            region: manifest.region,
            tick: 1,
            parent: genesis,
            time_ms: 10_000,
            inputs: Vec::new(),
            sources: Vec::new(),
            border: Vec::new(),
        };
        let core = Replica::new(
            cfg,
            manifest.clone(),
            keys[1].clone(),
            Arc::new(NoScripts),
            Arc::new(MemSources::default()),
            manifest.genesis(),
            genesis,
        );
        (core, theirs, p, manifest.members[0])
    }

    fn set(tick: u64) -> BorderSet {
        BorderSet {
            from: metatopia_sim::RegionId(4),
            to: metatopia_sim::RegionId(3),
            tick,
            envelopes: Vec::new(),
        }
    }

    #[test]
    fn a_live_neighbour_is_waited_for_longer_than_a_silent_one() {
        let (mut core, theirs, _, _) = border_verifier();
        let cfg = Config::default();
        // Tick 0 built and executed: the next proposal wants region 4's
        // set of tick 0.
        let parent = core.head_digest;
        core.order(1_000_000, Order::Propose { req: 1, parent });
        assert!(matches!(proposed(&mut core)[..], [Some(_)]));
        let prev = core.head.tick_number() - 1;
        assert_eq!(prev, 0);
        let due = core.due();
        core.propose_asked = due;
        core.now = due;
        // Nothing heard from region 4: its set is waited for briefly.
        assert_eq!(core.propose_at(), due + cfg.border_wait_ms);
        // A set of a later tick from one of its members: region 4 is
        // live, its set of the tick before is waited for longer.
        let ahead = set(prev + 1);
        let sig = ahead.sign(&theirs[0]);
        core.handle(
            due,
            player_of(&theirs[0]),
            Message::Border { set: ahead, sig },
        );
        assert_eq!(core.propose_at(), due + cfg.border_wait_live_ms);
        // Silent for a second: the short wait again.
        core.now = due + BORDER_LIVE_MS;
        assert_eq!(core.propose_at(), due + cfg.border_wait_ms);
        // Its set of the tick before, certified (f + 1 signatures): no
        // wait at all.
        for k in &theirs[..2] {
            let s = set(prev);
            let sig = s.sign(k);
            core.handle(due, player_of(k), Message::Border { set: s, sig });
        }
        assert_eq!(core.propose_at(), due);
    }

    #[test]
    fn border_sets_that_do_not_verify_are_refused_and_counted() {
        let (mut core, theirs, _, _) = border_verifier();
        let s = set(0);
        let outsider = SigningKey::from_bytes(&[9; 32]);
        // Signed by someone outside the neighbour's group.
        core.handle(
            1,
            player_of(&outsider),
            Message::Border {
                set: s.clone(),
                sig: s.sign(&outsider),
            },
        );
        // A member's signature over other envelopes.
        let mut other = s.clone();
        other.tick = 1;
        core.handle(
            1,
            player_of(&theirs[0]),
            Message::Border {
                set: s.clone(),
                sig: other.sign(&theirs[0]),
            },
        );
        // From a region that is not a neighbour.
        let mut stranger = s.clone();
        stranger.from = metatopia_sim::RegionId(9);
        core.handle(
            1,
            player_of(&theirs[0]),
            Message::Border {
                sig: stranger.sign(&theirs[0]),
                set: stranger,
            },
        );
        assert_eq!(core.stats().border_refused, 3);
        // Two members (f + 1 of four) certify it; a third adds nothing.
        for k in &theirs[..3] {
            core.handle(
                1,
                player_of(k),
                Message::Border {
                    set: s.clone(),
                    sig: s.sign(k),
                },
            );
        }
        assert_eq!(core.stats().border_refused, 3);
        let cert = core.border_for(1);
        assert_eq!(cert.len(), 1);
        assert_eq!(cert[0].sigs.len(), 2);
        assert_eq!(
            cert[0].verify(metatopia_sim::RegionId(3), &core.cfg.neighbours[0].members),
            Ok(())
        );
    }

    #[test]
    fn a_neighbours_group_learned_later_is_used_from_then_on() {
        let (mut core, theirs, _, _) = border_verifier();
        let members = core.cfg.neighbours[0].members.clone();
        core.cfg.neighbours[0].members.clear();
        let s = set(0);
        let send = |core: &mut Replica, k: &SigningKey| {
            core.handle(
                1,
                player_of(k),
                Message::Border {
                    set: s.clone(),
                    sig: s.sign(k),
                },
            );
        };
        // Unknown group: its members' sets are refused, nothing certified.
        send(&mut core, &theirs[0]);
        send(&mut core, &theirs[1]);
        assert_eq!(core.stats().border_refused, 2);
        assert!(core.border_for(1).is_empty());
        // Not a neighbour, or no members: refused, nothing changes.
        let stranger = Neighbour {
            region: metatopia_sim::RegionId(9),
            members: members.clone(),
        };
        assert!(
            core.set_neighbour(stranger)
                .unwrap_err()
                .contains("not a neighbour")
        );
        let empty = Neighbour {
            region: metatopia_sim::RegionId(4),
            members: Vec::new(),
        };
        assert!(
            core.set_neighbour(empty)
                .unwrap_err()
                .contains("no members")
        );
        assert!(core.neighbours()[0].members.is_empty());
        // Learned: the same two signatures now certify the set.
        let learned = Neighbour {
            region: metatopia_sim::RegionId(4),
            members,
        };
        core.set_neighbour(learned.clone()).unwrap();
        assert_eq!(core.neighbours(), &[learned]);
        send(&mut core, &theirs[0]);
        send(&mut core, &theirs[1]);
        assert_eq!(core.stats().border_refused, 2);
        assert_eq!(core.border_for(1).len(), 1);
    }

    #[test]
    fn a_proposal_with_a_border_set_signed_by_too_few_is_refused() {
        let (mut core, theirs, mut p, primary) = border_verifier();
        // Tick 0 first (nothing to carry), then tick 1 with a certificate
        // of tick 0 carrying a single signature.
        let mut p0 = p.clone();
        p0.tick = 0;
        p0.time_ms = 9_950;
        core.handle(10_000, primary, Message::Proposal(p0.clone()));
        core.order(
            10_000,
            Order::Verify {
                req: 0,
                parent: p0.parent,
                digest: p0.digest(),
            },
        );
        assert_eq!(verdicts(&mut core), vec![true]);
        let s = set(0);
        p.parent = p0.digest();
        p.border = vec![BorderCert {
            sigs: vec![s.sign(&theirs[0])],
            set: s.clone(),
        }];
        core.handle(10_000, primary, Message::Proposal(p.clone()));
        core.order(
            10_001,
            Order::Verify {
                req: 1,
                parent: p.parent,
                digest: p.digest(),
            },
        );
        assert_eq!(verdicts(&mut core), vec![false]);
        // With f + 1 it is valid.
        let mut sigs = vec![s.sign(&theirs[0]), s.sign(&theirs[1])];
        sigs.sort_by_key(|x| x.member);
        p.border = vec![BorderCert { sigs, set: s }];
        core.handle(10_000, primary, Message::Proposal(p.clone()));
        core.order(
            10_002,
            Order::Verify {
                req: 2,
                parent: p.parent,
                digest: p.digest(),
            },
        );
        assert_eq!(verdicts(&mut core), vec![true]);
    }

    fn verdicts(core: &mut Replica) -> Vec<bool> {
        std::iter::from_fn(|| core.poll_output())
            .filter_map(|o| match o {
                Output::Answer(Answer::Verified { valid, .. }) => Some(valid),
                _ => None,
            })
            .collect()
    }

    /// Inputs forwarded to all members by `core`'s outputs.
    fn forwarded(core: &mut Replica) -> usize {
        std::iter::from_fn(|| core.poll_output())
            .map(|o| match o {
                Output::Send {
                    to: To::All,
                    msg: Message::Inputs(v),
                } => v.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn a_players_inputs_sent_to_one_member_reach_the_others() {
        let (mut core, p, primary) = verifier(10_000);
        let player = SigningKey::from_bytes(&[7; 32]);
        let join = |seq| {
            SignedInput::sign(
                &player,
                p.region,
                seq,
                InputKind::Join {
                    name: "seven".into(),
                },
            )
        };
        // From the player's node (not a member): queued and forwarded, once.
        let from_node = crate::replica::wire::player_of(&player);
        core.handle(10_000, from_node, Message::Inputs(vec![join(1)]));
        assert_eq!(forwarded(&mut core), 1);
        core.handle(10_001, from_node, Message::Inputs(vec![join(1)]));
        assert_eq!(forwarded(&mut core), 0, "a duplicate is not forwarded");
        // From a member: queued, not forwarded again.
        core.handle(10_002, primary, Message::Inputs(vec![join(2)]));
        assert_eq!(forwarded(&mut core), 0);
    }

    /// A player's signed `Say "x"` in `region`.
    fn say_x(key: &SigningKey, region: metatopia_sim::RegionId, seq: u64) -> SignedInput {
        SignedInput::sign(
            key,
            region,
            seq,
            InputKind::Say {
                text: "x".into(),
                radius: None,
            },
        )
    }

    #[test]
    fn a_player_sending_faster_than_its_allowance_is_refused_until_it_refills() {
        let (mut core, p, _) = verifier(10_000);
        core.cfg.player_inputs_per_sec = 10;
        core.cfg.player_inputs_burst = 20;
        core.tick(10_000);
        let say = |key: &SigningKey, seq| say_x(key, p.region, seq);
        let fast = SigningKey::from_bytes(&[8; 32]);
        for seq in 1..=20 {
            core.submit(say(&fast, seq)).expect("within the burst");
        }
        assert_eq!(core.submit(say(&fast, 21)), Err(Refusal::PlayerRate(10)));
        // The same input again after a refusal is not a duplicate: it is
        // refused again, and refusals cost nothing.
        assert_eq!(core.submit(say(&fast, 21)), Err(Refusal::PlayerRate(10)));
        // Another player has its own allowance.
        let other = SigningKey::from_bytes(&[9; 32]);
        assert_eq!(core.submit(say(&other, 1)), Ok(()));
        // 250 ms later: 2.5 inputs' worth came back, so two get in.
        core.tick(10_250);
        assert_eq!(core.submit(say(&fast, 21)), Ok(()));
        assert_eq!(core.submit(say(&fast, 22)), Ok(()));
        assert_eq!(core.submit(say(&fast, 23)), Err(Refusal::PlayerRate(10)));
        // Its inputs relayed by its node to another member count the same.
        let node = crate::replica::wire::player_of(&fast);
        let refused = core.stats.refused_messages;
        core.handle(10_250, node, Message::Inputs(vec![say(&fast, 23)]));
        assert_eq!(core.stats.refused_messages, refused + 1);
    }

    #[test]
    fn a_flooding_player_fills_only_its_own_share_of_the_mempool() {
        let (mut core, p, _) = verifier(10_000);
        let say = |key: &SigningKey, seq| say_x(key, p.region, seq);
        let flooder = SigningKey::from_bytes(&[8; 32]);
        let max = Config::default().player_pending_max as u64;
        for seq in 1..=max {
            core.submit(say(&flooder, seq))
                .expect("within the player's share");
        }
        assert_eq!(
            core.submit(say(&flooder, max + 1)),
            Err(Refusal::PlayerBusy(max as usize))
        );
        // Its inputs forwarded by its node to another member: refused too.
        let node = crate::replica::wire::player_of(&flooder);
        let refused = core.stats.refused_messages;
        core.handle(10_001, node, Message::Inputs(vec![say(&flooder, max + 2)]));
        assert_eq!(core.stats.refused_messages, refused + 1);
        // Another player still gets in.
        let other = SigningKey::from_bytes(&[9; 32]);
        assert_eq!(core.submit(say(&other, 1)), Ok(()));
    }

    /// The digests `core` proposed, from its outputs.
    fn proposed(core: &mut Replica) -> Vec<Option<Digest>> {
        std::iter::from_fn(|| core.poll_output())
            .filter_map(|o| match o {
                Output::Answer(Answer::Proposed { digest, .. }) => Some(digest),
                _ => None,
            })
            .collect()
    }

    /// Member 0 of four (the first view's primary) at genesis, and the
    /// genesis digest.
    fn primary() -> (Replica, Digest) {
        let (keys, manifest) = crate::replica::group::test_group();
        let genesis = manifest.genesis_digest();
        let core = Replica::new(
            Config::default(),
            manifest.clone(),
            keys[0].clone(),
            Arc::new(NoScripts),
            Arc::new(MemSources::default()),
            manifest.genesis(),
            genesis,
        );
        (core, genesis)
    }

    #[test]
    fn a_timed_out_views_batch_is_proposed_again_while_fresh() {
        let (mut core, genesis) = primary();
        let t = 10_000;
        let ask = |core: &mut Replica, now: u64, req: u64| {
            core.order(
                now,
                Order::Propose {
                    req,
                    parent: genesis,
                },
            );
            proposed(core)
        };
        let first = ask(&mut core, t, 1);
        assert!(matches!(first[..], [Some(_)]), "{first:?}");
        // The view timed out; the next asks on the same parent: the same
        // batch, not rebuilt.
        assert_eq!(ask(&mut core, t + 200, 2), first);
        assert_eq!(core.stats().reproposed, 1);
        assert_eq!(core.stats().rollbacks, 0);
        // Too old for verifiers to take as on time: built anew.
        let skew = Config::default().clock_skew_max_ms;
        let later = ask(&mut core, t + skew, 3);
        assert!(
            matches!(later[..], [Some(d)] if Some(d) != first[0]),
            "{later:?}"
        );
        assert_eq!(core.stats().reproposed, 1);
    }

    #[test]
    fn links_rolled_back_to_propose_again_can_still_be_built_on() {
        // Seen on a group of one under load (session 13): ticks 382-384
        // notarized, the term nullified at 377, the next term asked on 380
        // and got 381 again (rolling back 382-384), then asked on 384,
        // which the primary no longer held: it never proposed again.
        let (mut core, genesis) = primary();
        let t = 10_000;
        let ask = |core: &mut Replica, now: u64, req: u64, parent: Digest| {
            core.order(now, Order::Propose { req, parent });
            let outputs: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
            let fetched = outputs.iter().any(|o| {
                matches!(
                    o,
                    Output::Send {
                        msg: Message::Fetch(_),
                        ..
                    }
                )
            });
            let proposed = outputs.into_iter().find_map(|o| match o {
                Output::Answer(Answer::Proposed { digest, .. }) => digest,
                _ => None,
            });
            (proposed, fetched)
        };
        let (a, _) = ask(&mut core, t, 1, genesis);
        let a = a.expect("tick 1 proposed");
        let (b, _) = ask(&mut core, t + 50, 2, a);
        let b = b.expect("tick 2 proposed");
        // A later view asks on genesis again: tick 1's batch once more,
        // tick 2 rolled back.
        assert_eq!(ask(&mut core, t + 200, 3, genesis), (Some(a), false));
        assert_eq!(core.stats().rollbacks, 1);
        // Then on tick 2: rebuilt from what the primary holds, nothing
        // fetched, and tick 3 proposed.
        let (c, fetched) = ask(&mut core, t + 250, 4, b);
        assert!(!fetched, "asked the group for its own proposal");
        assert!(c.is_some_and(|c| c != a && c != b), "{c:?}");
        assert_eq!(core.head.tick_number(), 3);
    }

    #[test]
    fn a_proposal_on_time_when_asked_is_valid_however_late_it_arrives() {
        let (mut core, p, primary) = verifier(10_000);
        let skew = Config::default().clock_skew_max_ms;
        // Asked on time; the proposal itself comes (fetched) much later.
        core.order(
            10_010,
            Order::Verify {
                req: 1,
                parent: p.parent,
                digest: p.digest(),
            },
        );
        assert_eq!(verdicts(&mut core), Vec::<bool>::new());
        core.handle(10_020 + 3 * skew, primary, Message::Proposal(p));
        assert_eq!(verdicts(&mut core), vec![true]);
    }

    #[test]
    fn a_proposal_already_stale_when_asked_is_refused() {
        let (mut core, p, primary) = verifier(10_000);
        let skew = Config::default().clock_skew_max_ms;
        let late = 10_001 + skew;
        core.handle(late, primary, Message::Proposal(p.clone()));
        core.order(
            late,
            Order::Verify {
                req: 1,
                parent: p.parent,
                digest: p.digest(),
            },
        );
        // No vote either way (a catching-up member's), counted as stale.
        let answers: Vec<Output> = std::iter::from_fn(|| core.poll_output()).collect();
        assert!(
            answers
                .iter()
                .any(|o| matches!(o, Output::Answer(Answer::Abstained { req: 1 }))),
            "{answers:?}"
        );
        assert!(
            !answers
                .iter()
                .any(|o| matches!(o, Output::Answer(Answer::Verified { .. })))
        );
        assert_eq!((core.stats().invalid, core.stats().stale), (1, 1));
    }

    #[test]
    fn a_proposal_from_the_future_waits_for_the_clock() {
        let (mut core, p, primary) = verifier(10_000);
        let skew = Config::default().clock_skew_max_ms;
        let early = 10_000 - skew - 500;
        core.handle(early, primary, Message::Proposal(p.clone()));
        core.order(
            early,
            Order::Verify {
                req: 1,
                parent: p.parent,
                digest: p.digest(),
            },
        );
        assert_eq!(verdicts(&mut core), Vec::<bool>::new());
        core.tick(early + 600);
        assert_eq!(verdicts(&mut core), vec![true]);
    }
}
