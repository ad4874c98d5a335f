//! The deterministic simulation harness for replication: 4 to 7 replica
//! cores (`metatopia_node::replica::Replica`) in one process, over a
//! simulated clock and network, everything drawn from one `u64` seed.
//!
//! The network carries the members' messages (forwarded inputs, proposals,
//! fetches, checkpoints, snapshots) with delay, loss, duplication, reorder
//! (from the delay spread) and partitions. Replicas crash (their memory is
//! lost, their log is kept) and restart from their log. One member may be
//! byzantine: as primary it proposes invalid batches, or equivocates (a
//! different valid batch to each half of the group).
//!
//! Ordering is done by [`Oracle`], an idealised BFT engine: each view's
//! leader is asked to propose, every member it can reach is asked to
//! verify, and a quorum of 2f + 1 valid votes notarizes and finalizes the
//! proposal; otherwise the view is nullified and the next member leads. It
//! stands in for the real engine the way commonware's own mocks do: the
//! harness tests the replica core (speculation, rollback, fetching,
//! catch-up, checkpoints, acknowledgements), not the engine's voting.
//!
//! Checks: every replica commits the same proposals with the same region
//! hashes (safety, under faults); no acknowledged input is lost or applied
//! twice; after the faults stop, every live replica converges to the same
//! finalized tick and hash (liveness).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use metatopia_node::replica::core::{Output, To};
use metatopia_node::replica::wire::player_of;
use metatopia_node::replica::{
    Answer, Config, Digest, Manifest, MemSources, Message, Order, Proposal, Replica, SignedInput,
};
use metatopia_physics::Region;
use metatopia_sim::input::InputKind;
use metatopia_sim::state::Settings;
use metatopia_sim::{NoScripts, PlayerId, RegionId};

/// What can go wrong in a run.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// One-way delay, milliseconds (uniform; the spread reorders).
    pub delay_ms: (u64, u64),
    /// Crash and restart replicas.
    pub crashes: bool,
    /// Cut the group in two for a while.
    pub partitions: bool,
    /// The byzantine member, if any (a member index).
    pub byzantine: Option<usize>,
    /// Faults stop at this time; the run then heals.
    pub heal_at_ms: u64,
}

/// What a byzantine primary does when asked to propose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lie {
    Invalid,
    Equivocate,
}

/// A member of the simulated group.
struct Node {
    key: SigningKey,
    core: Option<Replica>,
    /// The durable log: finalized proposals and hashes, by tick.
    log: BTreeMap<u64, (Digest, Digest, Arc<Proposal>)>,
    sources: Arc<MemSources>,
    /// Time until which it is down.
    down_until: u64,
}

/// A message in flight.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Flight {
    at: u64,
    seq: u64,
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// The idealised ordering engine.
#[derive(Debug)]
pub struct Oracle {
    view: u64,
    tip: Digest,
    /// Per view: the leader, its proposal, votes.
    pending: Option<ViewState>,
    view_timeout_ms: u64,
    /// Nullified views.
    pub nullified: u64,
    /// Start no new views.
    quiet: bool,
}

#[derive(Debug)]
struct ViewState {
    leader: usize,
    started: u64,
    digest: Option<Digest>,
    asked: BTreeSet<usize>,
    valid: BTreeSet<usize>,
    invalid: BTreeSet<usize>,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Members.
    pub members: usize,
    /// Highest tick finalized by every live replica.
    pub finalized_tick: u64,
    /// Its region hash.
    pub hash: Digest,
    /// Inputs acknowledged.
    pub acked: usize,
    /// Views nullified.
    pub nullified: u64,
    /// Rollbacks over all replicas.
    pub rollbacks: u64,
    /// Desyncs detected and resynced.
    pub resyncs: u64,
}

/// The harness.
pub struct Harness {
    seed: u64,
    rng: ChaCha8Rng,
    now: u64,
    manifest: Manifest,
    cfg: Config,
    nodes: Vec<Node>,
    net: BinaryHeap<Reverse<Flight>>,
    net_seq: u64,
    faults: Faults,
    partition: Option<(BTreeSet<usize>, u64)>,
    oracle: Oracle,
    clients: Vec<(SigningKey, u64)>,
    /// Acknowledgements: (player, seq) → tick.
    acks: BTreeMap<(PlayerId, u64), u64>,
    /// Inputs accepted by a replica (which one), not yet acked.
    submitted: BTreeMap<(PlayerId, u64), usize>,
    resyncs: u64,
    /// A replica told to diverge at this checkpoint tick (tests).
    diverge: Option<(usize, u64)>,
    region_hash_at: BTreeMap<u64, Digest>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(what()) }
}

impl Harness {
    /// A group of `n` members and 3 players, faults as given.
    pub fn new(seed: u64, n: usize, faults: Faults) -> Harness {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys: Vec<SigningKey> = (0..n)
            .map(|_| SigningKey::from_bytes(&rng.random()))
            .collect();
        let clients: Vec<(SigningKey, u64)> = (0..3)
            .map(|_| (SigningKey::from_bytes(&rng.random()), 1))
            .collect();
        let settings = Settings {
            name: "Harness".into(),
            ..Settings::default()
        };
        let manifest = Manifest {
            region: RegionId(7),
            settings,
            founders: vec![player_of(&clients[0].0)],
            members: keys.iter().map(player_of).collect(),
        };
        let cfg = Config {
            checkpoint_every: 10,
            rollback_every: 10,
            ..Config::default()
        };
        let genesis = manifest.genesis_digest();
        let mut h = Harness {
            seed,
            rng,
            now: 1_000_000,
            manifest,
            cfg,
            nodes: Vec::new(),
            net: BinaryHeap::new(),
            net_seq: 0,
            faults,
            partition: None,
            oracle: Oracle {
                view: 0,
                tip: genesis,
                pending: None,
                view_timeout_ms: 300,
                nullified: 0,
                quiet: false,
            },
            clients,
            acks: BTreeMap::new(),
            submitted: BTreeMap::new(),
            resyncs: 0,
            diverge: None,
            region_hash_at: BTreeMap::new(),
        };
        for key in keys {
            let mut node = Node {
                key,
                core: None,
                log: BTreeMap::new(),
                sources: Arc::new(MemSources::default()),
                down_until: 0,
            };
            node.core = Some(h.boot(&node));
            h.nodes.push(node);
        }
        h
    }

    /// Makes member `i` diverge at the checkpoint of `tick` (a corrupted
    /// hash), to exercise desync detection and resync.
    pub fn diverge(&mut self, i: usize, tick: u64) {
        self.diverge = Some((i, tick));
    }

    /// A core recovered from a node's log: genesis, then every logged
    /// proposal re-executed.
    fn boot(&self, node: &Node) -> Replica {
        let mut region: Region = self.manifest.genesis();
        let mut digest = self.manifest.genesis_digest();
        for (d, _, p) in node.log.values() {
            region
                .tick(&p.batch(), &NoScripts, &p.inbox())
                .expect("a logged proposal executes again");
            digest = *d;
        }
        Replica::new(
            self.cfg.clone(),
            self.manifest.clone(),
            node.key.clone(),
            Arc::new(NoScripts),
            node.sources.clone(),
            region,
            digest,
        )
    }

    fn quorum(&self) -> usize {
        2 * self.manifest.faults_max() + 1
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        match &self.partition {
            Some((side, _)) => side.contains(&a) == side.contains(&b),
            None => true,
        }
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn send(&mut self, from: usize, to: usize, msg: &Message) {
        if from == to || !self.connected(from, to) {
            return;
        }
        let faulty = self.now < self.faults.heal_at_ms;
        if faulty && self.rng.random_bool(self.faults.loss) {
            return;
        }
        let copies = if faulty && self.rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        let bytes = msg.encode();
        for _ in 0..copies {
            let (lo, hi) = self.faults.delay_ms;
            let at = self.now + self.rng.random_range(lo..=hi.max(lo));
            self.net_seq += 1;
            self.net.push(Reverse(Flight {
                at,
                seq: self.net_seq,
                from,
                to,
                bytes: bytes.clone(),
            }));
        }
    }

    /// Carries out the outputs of member `i`.
    fn drain(&mut self, i: usize) -> Result<(), String> {
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return Ok(());
            };
            let Some(out) = core.poll_output() else {
                return Ok(());
            };
            match out {
                Output::Answer(a) => self.answer(i, a),
                Output::Send { to, msg } => match to {
                    To::All => {
                        for j in 0..self.nodes.len() {
                            self.send(i, j, &msg);
                        }
                    }
                    To::One(p) => {
                        if let Some(j) = self.manifest.index_of(p) {
                            self.send(i, j, &msg);
                        }
                    }
                    // The harness has no observers nor neighbours.
                    To::Some(_) | To::Region(_) => {}
                },
                Output::Visible(_) => {}
                Output::Commit(c) => {
                    let tick = c.proposal.tick;
                    let digest = c.proposal.digest();
                    if self.nodes[i].log.contains_key(&tick) {
                        return Err(format!("replica {i} committed tick {tick} twice"));
                    }
                    if let Some(h) = self.region_hash_at.get(&tick) {
                        if self.byzantine() != Some(i) {
                            ensure(*h == c.hash, || {
                                format!("replica {i} committed tick {tick} with another hash")
                            })?;
                        }
                    } else {
                        self.region_hash_at.insert(tick, c.hash);
                    }
                    self.nodes[i].log.insert(tick, (digest, c.hash, c.proposal));
                }
                Output::Committed {
                    player, seq, tick, ..
                } => {
                    if let Some(t) = self.acks.insert((player, seq), tick) {
                        ensure(t == tick, || {
                            format!("input ({player}, {seq}) acked at ticks {t} and {tick}")
                        })?;
                    }
                    self.submitted.remove(&(player, seq));
                }
                Output::Desync(_) | Output::Checkpoint { .. } | Output::Refused { .. } => {}
                Output::Resynced { .. } => self.resyncs += 1,
            }
        }
    }

    fn byzantine(&self) -> Option<usize> {
        self.faults.byzantine
    }

    /// An answer of member `i` to the oracle.
    fn answer(&mut self, i: usize, a: Answer) {
        let Some(v) = self.oracle.pending.as_mut() else {
            return;
        };
        match a {
            Answer::Proposed { req, digest } if req == self.oracle.view && v.leader == i => {
                let Some(d) = digest else { return };
                let lie =
                    (self.byzantine() == Some(i) && self.now < self.faults.heal_at_ms).then(|| {
                        if self.rng.random_bool(0.5) {
                            Lie::Invalid
                        } else {
                            Lie::Equivocate
                        }
                    });
                let d = match lie {
                    Some(lie) => self.lie(i, d, lie),
                    None => d,
                };
                let v = self.oracle.pending.as_mut().expect("checked above");
                v.digest = Some(d);
                v.valid.insert(i);
            }
            Answer::Verified { req, valid } if req == self.oracle.view => {
                if valid {
                    v.valid.insert(i);
                } else {
                    v.invalid.insert(i);
                }
            }
            _ => {}
        }
    }

    /// A byzantine primary replaces its honest proposal `d`: sends a bad
    /// or a second proposal and returns the digest it puts to the vote.
    fn lie(&mut self, i: usize, d: Digest, lie: Lie) -> Digest {
        let Some(core) = self.nodes[i].core.as_ref() else {
            return d;
        };
        let head = core.head();
        let parent = self.oracle.tip;
        let n = self.nodes.len();
        let time_ms = head.sim().state().time_ms.max(self.now);
        let client = &self.clients[2].0;
        let kind = InputKind::Say {
            text: format!("forged {}", self.now),
            radius: None,
        };
        match lie {
            Lie::Invalid => {
                // The tick skips one: every honest verifier refuses it.
                let p = Proposal {
                    region: self.manifest.region,
                    tick: head.tick_number() + 1,
                    parent,
                    time_ms,
                    inputs: Vec::new(),
                    sources: Vec::new(),
                    border: Vec::new(),
                };
                let msg = Message::Proposal(p.clone());
                for j in 0..n {
                    self.send(i, j, &msg);
                }
                p.digest()
            }
            Lie::Equivocate => {
                // A second valid proposal with an input signed by a real
                // player (at a sequence number nobody used yet) to half the
                // group; the honest one went to everyone already.
                let seq = 1_000_000 + self.now;
                let p = Proposal {
                    region: self.manifest.region,
                    tick: head.tick_number(),
                    parent,
                    time_ms,
                    inputs: vec![SignedInput::sign(client, self.manifest.region, seq, kind)],
                    sources: Vec::new(),
                    border: Vec::new(),
                };
                let msg = Message::Proposal(p.clone());
                for j in 0..n / 2 {
                    self.send(i, j, &msg);
                }
                if self.rng.random_bool(0.5) {
                    p.digest()
                } else {
                    d
                }
            }
        }
    }

    /// Advances the oracle: start a view, collect votes, decide.
    ///
    /// Long on purpose: the oracle's view, vote and decision steps share the view's state; it is test harness code read as one sequence.
    fn oracle_step(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        if self.oracle.pending.is_none() && self.oracle.quiet {
            return Ok(());
        }
        if self.oracle.pending.is_none() {
            let leader = (self.oracle.view as usize) % n;
            self.oracle.pending = Some(ViewState {
                leader,
                started: self.now,
                digest: None,
                asked: BTreeSet::new(),
                valid: BTreeSet::new(),
                invalid: BTreeSet::new(),
            });
            if self.up(leader) {
                let order = Order::Propose {
                    req: self.oracle.view,
                    parent: self.oracle.tip,
                };
                self.order(leader, order)?;
            }
        }
        let Some(v) = self.oracle.pending.as_ref() else {
            return Ok(());
        };
        let (leader, started) = (v.leader, v.started);
        if let Some(d) = v.digest {
            let ask: Vec<usize> = (0..n)
                .filter(|j| !v.asked.contains(j) && *j != leader)
                .filter(|j| self.up(*j) && self.connected(leader, *j))
                .collect();
            for j in ask {
                if let Some(v) = self.oracle.pending.as_mut() {
                    v.asked.insert(j);
                }
                let order = Order::Verify {
                    req: self.oracle.view,
                    parent: self.oracle.tip,
                    digest: d,
                };
                self.order(j, order)?;
            }
        }
        let Some(v) = self.oracle.pending.as_ref() else {
            return Ok(());
        };
        if let Some(d) = v.digest
            && v.valid.len() >= self.quorum()
        {
            self.oracle.tip = d;
            self.oracle.pending = None;
            self.oracle.view += 1;
            let proof = self.oracle.view.to_le_bytes().to_vec();
            for j in 0..n {
                if self.up(j) {
                    self.order(j, Order::Notarized { digest: d })?;
                    self.order(
                        j,
                        Order::Finalized {
                            digest: d,
                            proof: proof.clone(),
                        },
                    )?;
                }
            }
        } else if self.now >= started + self.oracle.view_timeout_ms {
            self.oracle.nullified += 1;
            for j in 0..n {
                if self.up(j) {
                    self.order(
                        j,
                        Order::Nullified {
                            view: self.oracle.view,
                        },
                    )?;
                }
            }
            self.oracle.pending = None;
            // Stable leader: the view after a nullified one goes to the
            // next member.
            self.oracle.view += 1;
        }
        Ok(())
    }

    fn order(&mut self, i: usize, order: Order) -> Result<(), String> {
        let now = self.now;
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.order(now, order);
        }
        self.drain(i)
    }

    /// One millisecond of simulated time.
    ///
    /// Long on purpose: one simulated millisecond, deliveries, timers and faults in order; test harness code read as one sequence.
    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        let n = self.nodes.len();
        let faulty = self.now < self.faults.heal_at_ms;
        // Crashes and restarts.
        for i in 0..n {
            let node = &self.nodes[i];
            if node.core.is_none() && self.now >= node.down_until {
                let core = self.boot(node);
                self.nodes[i].core = Some(core);
            }
        }
        if faulty && self.faults.crashes && self.rng.random_bool(0.0005) {
            let i = self.rng.random_range(0..n);
            let down = (0..n).filter(|j| !self.up(*j)).count();
            if self.up(i) && down < self.manifest.faults_max() {
                // What it held and had not ordered yet may be gone: its
                // clients were never told it committed.
                self.submitted.retain(|_, j| *j != i);
                self.nodes[i].core = None;
                self.nodes[i].down_until = self.now + self.rng.random_range(100..2000);
            }
        }
        if faulty
            && self.faults.partitions
            && self.partition.is_none()
            && self.rng.random_bool(0.0003)
        {
            let side: BTreeSet<usize> = (0..n).filter(|_| self.rng.random_bool(0.5)).collect();
            let until = self.now + self.rng.random_range(200..1500);
            self.partition = Some((side, until));
        }
        if self
            .partition
            .as_ref()
            .is_some_and(|(_, until)| self.now >= *until || !faulty)
        {
            self.partition = None;
        }
        // Deliveries.
        while self.net.peek().is_some_and(|f| f.0.at <= self.now) {
            let Reverse(f) = self.net.pop().expect("peeked");
            if !self.up(f.to) {
                continue;
            }
            let msg = Message::decode(&f.bytes).map_err(|e| format!("undecodable message: {e}"))?;
            let from = self.manifest.members[f.from];
            let now = self.now;
            if let Some(core) = self.nodes[f.to].core.as_mut() {
                core.handle(now, from, msg);
            }
            self.drain(f.to)?;
        }
        // Clients submit to a random live replica.
        if self.now < self.faults.heal_at_ms && self.rng.random_bool(0.02) {
            let c = self.rng.random_range(0..2);
            let j = self.rng.random_range(0..n);
            let (key, seq) = &mut self.clients[c];
            let kind = if *seq == 1 {
                InputKind::Join {
                    name: format!("p{c}"),
                }
            } else {
                InputKind::Say {
                    text: format!("line {seq}"),
                    radius: None,
                }
            };
            let input = SignedInput::sign(key, self.manifest.region, *seq, kind);
            let id = (input.input.player, *seq);
            if let Some(core) = self.nodes[j].core.as_mut()
                && core.submit(input).is_ok()
            {
                *seq += 1;
                self.submitted.insert(id, j);
            }
            self.drain(j)?;
        }
        // Time passes for every replica.
        for i in 0..n {
            let now = self.now;
            if let Some(core) = self.nodes[i].core.as_mut()
                && core.next_deadline().is_some_and(|d| d <= now)
            {
                core.tick(now);
            }
            if let Some((d, tick)) = self.diverge
                && d == i
                && self.nodes[i].log.contains_key(&tick)
            {
                self.diverge = None;
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.diverge_for_test(tick);
                }
            }
            self.drain(i)?;
        }
        self.oracle_step()
    }

    /// Runs for `ms` of simulated time, checking safety all along; at the
    /// end, with `converge`, also that every live honest replica finalized
    /// the same tick with the same hash.
    pub fn run(&mut self, ms: u64, converge: bool) -> Result<Outcome, String> {
        let end = self.now + ms;
        while self.now < end {
            self.step()?;
        }
        if converge {
            // No new views: let the replicas that lag catch up before
            // comparing them.
            self.oracle.quiet = true;
            let end = self.now + 2_000;
            while self.now < end {
                self.step()?;
            }
            self.oracle.quiet = false;
        }
        self.check(converge)
    }

    /// Long on purpose: one assertion block per safety and liveness property, each with its message.
    fn check(&self, converge: bool) -> Result<Outcome, String> {
        let honest: Vec<usize> = (0..self.nodes.len())
            .filter(|i| Some(*i) != self.byzantine())
            .collect();
        // Safety: logs agree on every tick both have.
        for &i in &honest {
            for (tick, (d, h, _)) in &self.nodes[i].log {
                for &j in &honest {
                    if let Some((d2, h2, _)) = self.nodes[j].log.get(tick) {
                        ensure(d == d2 && h == h2, || {
                            format!("replicas {i} and {j} differ at tick {tick}")
                        })?;
                    }
                }
            }
        }
        // Liveness: every live honest replica at the same finalized tick.
        let live: Vec<usize> = honest.iter().copied().filter(|i| self.up(*i)).collect();
        let mut tip: Option<(u64, Digest)> = None;
        for &i in &live {
            let core = self.nodes[i].core.as_ref().expect("live");
            let (_, next, hash) = core.finalized();
            match tip {
                Some(t) if converge => ensure(t == (next, hash), || {
                    format!(
                        "replica {i} finalized {next} while another finalized {}: {core:?} {:?} desync {:?}",
                        t.0,
                        core.stats(),
                        core.desync()
                    )
                })?,
                Some(t) if t.0 <= next => {}
                _ => tip = Some((next, hash)),
            }
        }
        let (next, hash) = tip.ok_or("no live replica")?;
        // Acknowledged inputs: each in exactly one logged proposal, at the
        // acknowledged tick.
        let log = &self.nodes[live[0]].log;
        let mut seen = BTreeMap::new();
        for (tick, (_, _, p)) in log {
            for s in &p.inputs {
                if let Some(t) = seen.insert((s.input.player, s.input.seq), *tick) {
                    return Err(format!(
                        "input ({}, {}) is in ticks {t} and {tick}",
                        s.input.player, s.input.seq
                    ));
                }
            }
        }
        for ((player, seq), tick) in &self.acks {
            if *tick < next {
                ensure(seen.get(&(*player, *seq)) == Some(tick), || {
                    format!("acknowledged input ({player}, {seq}) of tick {tick} is not in the log")
                })?;
            }
        }
        let rollbacks = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.stats().rollbacks)
            .sum();
        Ok(Outcome {
            seed: self.seed,
            members: self.nodes.len(),
            finalized_tick: next,
            hash,
            acked: self.acks.len(),
            nullified: self.oracle.nullified,
            rollbacks,
            resyncs: self.resyncs,
        })
    }

    /// Inputs accepted by a replica that stayed up, never acknowledged,
    /// and not superseded by a later acknowledged input of the same player
    /// (a later sequence number ordered first makes an earlier one a
    /// replay).
    pub fn unacknowledged(&self) -> Vec<(PlayerId, u64)> {
        self.submitted
            .keys()
            .filter(|(p, seq)| {
                self.acks
                    .range((*p, seq + 1)..=(*p, u64::MAX))
                    .next()
                    .is_none()
            })
            .copied()
            .collect()
    }
}

/// One seeded run: faults for `faulty_ms`, then `heal_ms` without; fails
/// on any safety violation, or if the group did not converge and make
/// progress after healing.
pub fn run_seed(seed: u64, faulty_ms: u64, heal_ms: u64) -> Result<Outcome, String> {
    let mut pick = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let n = pick.random_range(4..=7);
    let faults = Faults {
        loss: pick.random_range(0.0..0.2),
        duplicate: pick.random_range(0.0..0.1),
        delay_ms: (pick.random_range(1..10), pick.random_range(10..40)),
        crashes: pick.random_bool(0.5),
        partitions: pick.random_bool(0.5),
        byzantine: pick.random_bool(0.5).then(|| pick.random_range(0..n)),
        heal_at_ms: 1_000_000 + faulty_ms,
    };
    let mut h = Harness::new(seed, n, faults);
    let mid = h.run(faulty_ms, false)?;
    let end = h.run(heal_ms, true)?;
    ensure(end.finalized_tick > mid.finalized_tick, || {
        format!(
            "no progress after healing (finalized tick {} then {})",
            mid.finalized_tick, end.finalized_tick
        )
    })?;
    let lost = h.unacknowledged();
    ensure(lost.is_empty(), || {
        format!("accepted inputs never acknowledged: {lost:?}")
    })?;
    Ok(end)
}
