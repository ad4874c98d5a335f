//! An observer of a replica group, sans IO: a node that is not a member
//! follows the region and runs the same sim, so it sees the world without
//! state being streamed to it.
//!
//! It joins from a snapshot that it adopts only when at least f + 1
//! members signed a checkpoint with that snapshot's region hash (one of
//! them is honest), then executes the finalized proposals after it. A
//! proposal is executed only when it chains onto the head and it or a
//! descendant carries a finalization certificate that verifies against
//! the group (2f + 1 signatures); a member can delay an observer but not
//! feed it a tick the group did not finalize. Its own hash at every
//! checkpoint tick is compared with the members' signed checkpoints, as a
//! member's is; on a divergence it drops its state and joins again.
//!
//! Inputs of players on the observer's node are forwarded to every member
//! and answered when a finalized proposal holding them is executed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use metatopia_physics::Region;
use metatopia_sim::{PlayerId, RegionId, ScriptHost};
use tracing::{debug, info, warn};

use super::core::{Desync, Output, Published, SourceBook, To, note_checkpoint, rejection, vouched};
use super::wire::{Digest, FOLLOW_LEASE_MS, Message, Proposal, SignedInput};

/// Finalized proposals held ahead of the head.
pub const PENDING_MAX: usize = 4096;

/// A [`Message::Follow`] is sent again this often (well inside the lease).
pub const FOLLOW_EVERY_MS: u64 = FOLLOW_LEASE_MS / 4;

/// Finalized proposals waiting this long without the head moving (one
/// that chains them to the head never came: every member's copy was lost)
/// make the observer join again from a snapshot.
pub const STALL_REJOIN_MS: u64 = 3_000;

/// Checks a finalization certificate for a proposal digest.
pub type ProofCheck = Box<dyn Fn(&Digest, &[u8]) -> bool + Send>;

/// Counters of an observer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ObserverStats {
    /// Finalized proposals executed.
    pub executed: u64,
    /// Snapshots adopted (the join, and any rejoin after a divergence).
    pub joins: u64,
    /// Messages refused: not from a member, bad signature or certificate,
    /// a snapshot that does not restore.
    pub refused: u64,
}

struct Pending {
    proposal: Arc<Proposal>,
    certified: bool,
}

/// One observer.
pub struct Observer {
    me: PlayerId,
    region: RegionId,
    members: Vec<PlayerId>,
    checkpoint_every: u64,
    host: Arc<dyn ScriptHost + Send + Sync>,
    sources: Arc<dyn SourceBook>,
    proof_ok: ProofCheck,
    head: Option<Region>,
    head_digest: Digest,
    /// Snapshots offered, one per member: (tick, digest, bytes).
    offers: BTreeMap<PlayerId, (u64, Digest, Arc<Vec<u8>>)>,
    checkpoints: BTreeMap<u64, BTreeMap<PlayerId, Digest>>,
    hashes: BTreeMap<u64, Digest>,
    pending: BTreeMap<Digest, Pending>,
    /// Inputs forwarded and not answered yet.
    own: BTreeSet<(PlayerId, u64)>,
    next_follow: u64,
    /// The clock as of the last [`Observer::tick`].
    now: u64,
    /// When the head last moved (joined or executed).
    moved: u64,
    out: VecDeque<Output>,
    stats: ObserverStats,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("region", &self.region)
            .field("head_tick", &self.head.as_ref().map(|h| h.tick_number()))
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Observer {
    /// An observer `me` of `region` hosted by `members`, with no state yet.
    pub fn new(
        me: PlayerId,
        region: RegionId,
        members: Vec<PlayerId>,
        checkpoint_every: u64,
        host: Arc<dyn ScriptHost + Send + Sync>,
        sources: Arc<dyn SourceBook>,
        proof_ok: ProofCheck,
    ) -> Observer {
        Observer {
            me,
            region,
            members,
            checkpoint_every: checkpoint_every.max(1),
            host,
            sources,
            proof_ok,
            head: None,
            head_digest: [0; 32],
            offers: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            hashes: BTreeMap::new(),
            pending: BTreeMap::new(),
            own: BTreeSet::new(),
            next_follow: 0,
            now: 0,
            moved: 0,
            out: VecDeque::new(),
            stats: ObserverStats::default(),
        }
    }

    /// The region as of the last executed tick, once joined.
    pub fn head(&self) -> Option<&Region> {
        self.head.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> &ObserverStats {
        &self.stats
    }

    fn need(&self) -> usize {
        (self.members.len().saturating_sub(1)) / 3 + 1
    }

    fn is_member(&self, p: PlayerId) -> bool {
        self.members.contains(&p)
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Observer::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let stall = (self.head.is_some() && !self.pending.is_empty())
            .then(|| self.moved.saturating_add(STALL_REJOIN_MS));
        Some(stall.map_or(self.next_follow, |s| s.min(self.next_follow)))
    }

    /// Time passes: the follow lease is renewed; a stalled head joins
    /// again.
    pub fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        if self.head.is_some()
            && !self.pending.is_empty()
            && now >= self.moved.saturating_add(STALL_REJOIN_MS)
        {
            warn!(
                pending = self.pending.len(),
                "finalized proposals do not chain onto the head; joining again"
            );
            self.rejoin();
        }
        if now < self.next_follow {
            return;
        }
        self.next_follow = now.saturating_add(FOLLOW_EVERY_MS);
        self.out.push_back(Output::Send {
            to: To::All,
            msg: Message::Follow {
                snapshot: self.head.is_none(),
            },
        });
    }

    /// A player's signed input, forwarded to every member; its fate comes
    /// out as [`Output::Committed`] when a finalized tick holds it.
    pub fn submit(&mut self, input: SignedInput) {
        self.own.insert((input.input.player, input.input.seq));
        self.out.push_back(Output::Send {
            to: To::All,
            msg: Message::Inputs(vec![input]),
        });
    }

    /// A message from a member.
    pub fn handle(&mut self, from: PlayerId, msg: Message) {
        if !self.is_member(from) {
            self.stats.refused += 1;
            return;
        }
        match msg {
            Message::Snapshot {
                tick,
                digest,
                bytes,
            } if self.head.is_none() => {
                self.offers.insert(from, (tick, digest, Arc::new(bytes)));
                self.try_join();
            }
            Message::Checkpoint(c) => {
                if c.region != self.region || c.member != from || c.verify().is_err() {
                    self.stats.refused += 1;
                    return;
                }
                let out = note_checkpoint(&mut self.checkpoints, 64, &c);
                self.out.push_back(out);
                if self.head.is_none() {
                    self.try_join();
                } else {
                    self.compare(c.tick);
                }
            }
            Message::Finalized { proposal, proof } => self.finalized(proposal, &proof),
            // Members' business.
            _ => {}
        }
    }

    /// A hash at `tick` that at least f + 1 members signed.
    fn vouched(&self, tick: u64) -> Option<Digest> {
        vouched(self.checkpoints.get(&tick)?, None, self.need()).next()
    }

    /// Adopts an offered snapshot whose hash f + 1 members signed.
    fn try_join(&mut self) {
        let offers: Vec<(PlayerId, u64, Digest, Arc<Vec<u8>>)> = self
            .offers
            .iter()
            .map(|(m, (t, d, b))| (*m, *t, *d, b.clone()))
            .collect();
        for (member, tick, digest, bytes) in offers {
            let Some(hash) = self.vouched(tick) else {
                continue;
            };
            let region = match Region::restore(&bytes) {
                Ok(r) if r.id() == self.region && r.tick_number() == tick + 1 => r,
                _ => {
                    self.stats.refused += 1;
                    self.offers.remove(&member);
                    continue;
                }
            };
            if region.hash() != hash {
                debug!(tick, "an offered snapshot is not the one the group signed");
                self.stats.refused += 1;
                self.offers.remove(&member);
                continue;
            }
            info!(
                tick,
                "observer joined from a snapshot f + 1 members vouched for"
            );
            self.out.push_back(Output::Visible(Arc::new(Published::new(
                tick,
                &region,
                hash,
                Vec::new(),
                Arc::default(),
            ))));
            self.out.push_back(Output::Resynced {
                tick,
                hash,
                snapshot: bytes.clone(),
                differences: Vec::new(),
            });
            self.hashes.insert(tick, hash);
            self.head = Some(region);
            self.head_digest = digest;
            self.offers.clear();
            self.stats.joins += 1;
            self.moved = self.now;
            self.advance();
            return;
        }
    }

    fn finalized(&mut self, proposal: Proposal, proof: &[u8]) {
        if proposal.region != self.region {
            self.stats.refused += 1;
            return;
        }
        let next = self.head.as_ref().map_or(0, |h| h.tick_number());
        if proposal.tick < next {
            return;
        }
        let digest = proposal.digest();
        let certified = !proof.is_empty() && (self.proof_ok)(&digest, proof);
        if !proof.is_empty() && !certified {
            warn!(
                tick = proposal.tick,
                "a finalization certificate does not verify"
            );
            self.stats.refused += 1;
            return;
        }
        if self.pending.len() >= PENDING_MAX && !self.pending.contains_key(&digest) {
            // Keep those nearest the head.
            if let Some((&far, _)) = self.pending.iter().max_by_key(|(_, p)| p.proposal.tick) {
                self.pending.remove(&far);
            }
        }
        let entry = self.pending.entry(digest).or_insert(Pending {
            proposal: Arc::new(proposal),
            certified: false,
        });
        entry.certified |= certified;
        if self.head.is_some() {
            self.advance();
        }
    }

    /// Executes pending proposals from the head up to the newest one that
    /// a certificate covers.
    fn advance(&mut self) {
        loop {
            let path = self.certified_path();
            if path.is_empty() {
                break;
            }
            for digest in path {
                let Some(p) = self.pending.remove(&digest) else {
                    return;
                };
                if let Err(e) = self.execute(digest, &p.proposal) {
                    warn!(error = %e, tick = p.proposal.tick, "a finalized proposal does not execute here; joining again");
                    self.rejoin();
                    return;
                }
            }
        }
        let next = self.head.as_ref().map_or(0, |h| h.tick_number());
        self.pending.retain(|_, p| p.proposal.tick >= next);
    }

    /// The chain of pending digests from the head to the furthest certified
    /// one (empty if no certified one descends from the head).
    fn certified_path(&self) -> Vec<Digest> {
        let mut children: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
        for (d, p) in &self.pending {
            children.entry(p.proposal.parent).or_default().push(*d);
        }
        // Depth-first from the head; finalized proposals form one chain, so
        // a branch without a certificate (a member's invention) dead-ends.
        let mut best: Vec<Digest> = Vec::new();
        let mut stack: Vec<(Digest, Vec<Digest>)> = vec![(self.head_digest, Vec::new())];
        while let Some((at, path)) = stack.pop() {
            for c in children.get(&at).into_iter().flatten() {
                let mut next = path.clone();
                next.push(*c);
                if self.pending.get(c).is_some_and(|p| p.certified) && next.len() > best.len() {
                    best = next.clone();
                }
                stack.push((*c, next));
            }
        }
        best
    }

    fn execute(&mut self, digest: Digest, p: &Proposal) -> Result<(), String> {
        let head = self.head.as_mut().ok_or("no state")?;
        if p.tick != head.tick_number() || p.parent != self.head_digest {
            return Err(format!("tick {} does not follow the head", p.tick));
        }
        for text in &p.sources {
            self.sources
                .put(text)
                .map_err(|e| format!("cannot store a source: {e}"))?;
        }
        let report = head
            .tick(&p.batch(), &*self.host, &p.inbox())
            .map_err(|e| e.to_string())?;
        self.head_digest = digest;
        self.stats.executed += 1;
        self.moved = self.now;
        let published = Arc::new(Published::new(
            p.tick,
            head,
            report.hash,
            report.sim.events,
            Arc::default(),
        ));
        for s in &p.inputs {
            let key = (s.input.player, s.input.seq);
            if self.own.remove(&key) {
                self.out.push_back(Output::Committed {
                    player: key.0,
                    seq: key.1,
                    tick: p.tick,
                    sig: s.sig,
                    rejection: rejection(&published.events, key.0, key.1),
                });
            }
        }
        self.out.push_back(Output::Visible(published));
        if (p.tick + 1).is_multiple_of(self.checkpoint_every) {
            self.hashes.insert(p.tick, report.hash);
            while self.hashes.len() > 64 {
                self.hashes.pop_first();
            }
            self.out.push_back(Output::Checkpoint {
                tick: p.tick,
                member: self.me,
                hash: report.hash,
            });
            self.compare(p.tick);
        }
        Ok(())
    }

    /// Compares this observer's hash at `tick` with the group's.
    fn compare(&mut self, tick: u64) {
        let (Some(mine), Some(theirs)) = (self.hashes.get(&tick).copied(), self.vouched(tick))
        else {
            return;
        };
        if mine != theirs {
            warn!(tick, "observer diverged from the group; joining again");
            self.out
                .push_back(Output::Desync(Desync { tick, mine, theirs }));
            self.rejoin();
        }
    }

    /// Drops the state and asks for a snapshot again.
    fn rejoin(&mut self) {
        self.head = None;
        self.pending.clear();
        self.offers.clear();
        self.next_follow = 0;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ed25519_dalek::SigningKey;
    use metatopia_sim::NoScripts;

    use super::*;
    use crate::replica::core::MemSources;
    use crate::replica::group::Manifest;
    use crate::replica::wire::Checkpoint;

    struct World {
        keys: Vec<SigningKey>,
        manifest: Manifest,
        /// Proposals 0..3, their digests, the hash after each.
        chain: Vec<(Proposal, Digest, Digest)>,
        /// The snapshot after tick 0.
        snap0: Vec<u8>,
    }

    fn world() -> World {
        let (keys, manifest) = crate::replica::group::test_group();
        let mut region = manifest.genesis();
        let mut parent = manifest.genesis_digest();
        let mut chain = Vec::new();
        let mut snap0 = Vec::new();
        for tick in 0..3 {
            let p = Proposal {
                region: manifest.region,
                tick,
                parent,
                time_ms: 1000 + 50 * tick,
                inputs: Vec::new(),
                sources: Vec::new(),
                border: Vec::new(),
            };
            let report = region.tick(&p.batch(), &NoScripts, &[]).unwrap();
            parent = p.digest();
            chain.push((p, parent, report.hash));
            if tick == 0 {
                snap0 = region.snapshot();
            }
        }
        World {
            keys,
            manifest,
            chain,
            snap0,
        }
    }

    /// A certificate is accepted when it is the digest itself (the real
    /// check is the engine's; the node tests use it).
    fn observer(w: &World) -> Observer {
        Observer::new(
            PlayerId([9; 32]),
            w.manifest.region,
            w.manifest.members.clone(),
            1000,
            Arc::new(NoScripts),
            Arc::new(MemSources::default()),
            Box::new(|d: &Digest, proof: &[u8]| proof == d),
        )
    }

    /// Members 0 and 1 sign `vouched` as the hash of tick 0; member 2
    /// offers the snapshot after tick 0.
    fn offer_snapshot(o: &mut Observer, w: &World, vouched: Digest) {
        let m = &w.manifest.members;
        o.handle(m[0], checkpoint(w, 0, 0, vouched));
        o.handle(m[1], checkpoint(w, 1, 0, vouched));
        o.handle(
            m[2],
            Message::Snapshot {
                tick: 0,
                digest: w.chain[0].1,
                bytes: w.snap0.clone(),
            },
        );
    }

    fn checkpoint(w: &World, member: usize, tick: u64, hash: Digest) -> Message {
        Message::Checkpoint(Checkpoint::sign(
            &w.keys[member],
            w.manifest.region,
            tick,
            hash,
        ))
    }

    fn finalized(w: &World, tick: usize, proof: Vec<u8>) -> Message {
        Message::Finalized {
            proposal: w.chain[tick].0.clone(),
            proof,
        }
    }

    fn head_tick(o: &Observer) -> Option<u64> {
        o.head().map(|h| h.tick_number())
    }

    #[test]
    fn joins_only_from_a_snapshot_f_plus_one_members_vouch_for() {
        let w = world();
        let mut o = observer(&w);
        let m = &w.manifest.members;
        let (_, d0, h0) = w.chain[0];
        o.handle(
            m[0],
            Message::Snapshot {
                tick: 0,
                digest: d0,
                bytes: w.snap0.clone(),
            },
        );
        assert_eq!(head_tick(&o), None, "no checkpoint yet");
        o.handle(m[0], checkpoint(&w, 0, 0, h0));
        assert_eq!(head_tick(&o), None, "one member is not f + 1");
        // A checkpoint signed by another key than the sender's is refused.
        o.handle(m[1], checkpoint(&w, 2, 0, h0));
        assert_eq!((head_tick(&o), o.stats().refused), (None, 1));
        // Someone outside the group is not heard.
        o.handle(PlayerId([7; 32]), checkpoint(&w, 1, 0, h0));
        assert_eq!((head_tick(&o), o.stats().refused), (None, 2));
        // Two members (f + 1 of 4) vouch: joined.
        o.handle(m[1], checkpoint(&w, 1, 0, h0));
        assert_eq!(head_tick(&o), Some(1));
        assert!(
            std::iter::from_fn(|| o.poll_output())
                .any(|out| matches!(out, Output::Resynced { tick: 0, .. }))
        );
    }

    #[test]
    fn a_snapshot_the_group_did_not_sign_is_refused() {
        let w = world();
        let mut o = observer(&w);
        let wrong = [0x55; 32];
        offer_snapshot(&mut o, &w, wrong);
        assert_eq!(head_tick(&o), None);
        assert_eq!(o.stats().refused, 1);
    }

    #[test]
    fn executes_finalized_proposals_only_under_a_valid_certificate() {
        let w = world();
        let mut o = observer(&w);
        let m = &w.manifest.members;
        let (_, _, h0) = w.chain[0];
        let (_, d2, h2) = w.chain[2];
        // Proposals may arrive before the snapshot.
        o.handle(m[3], finalized(&w, 1, Vec::new()));
        offer_snapshot(&mut o, &w, h0);
        assert_eq!(head_tick(&o), Some(1), "tick 1 has no certificate yet");
        o.handle(m[3], finalized(&w, 2, vec![1, 2, 3]));
        assert_eq!(head_tick(&o), Some(1), "a bad certificate is refused");
        assert_eq!(o.stats().refused, 1);
        o.handle(m[3], finalized(&w, 2, d2.to_vec()));
        assert_eq!(head_tick(&o), Some(3), "tick 2's certificate covers tick 1");
        assert_eq!(o.head().unwrap().hash(), h2);
        assert_eq!(o.stats().executed, 2);
    }

    #[test]
    fn a_missing_link_makes_the_observer_join_again() {
        let w = world();
        let mut o = observer(&w);
        let m = &w.manifest.members;
        let (_, _, h0) = w.chain[0];
        let (_, d2, _) = w.chain[2];
        o.tick(1_000);
        offer_snapshot(&mut o, &w, h0);
        assert_eq!(head_tick(&o), Some(1));
        // Tick 2 arrives certified, tick 1 never does.
        o.handle(m[3], finalized(&w, 2, d2.to_vec()));
        o.tick(1_000 + STALL_REJOIN_MS - 1);
        assert_eq!(head_tick(&o), Some(1), "not stalled long enough yet");
        while o.poll_output().is_some() {}
        o.tick(1_000 + STALL_REJOIN_MS);
        assert_eq!(head_tick(&o), None, "dropped its state to join again");
        let asks = std::iter::from_fn(|| o.poll_output()).any(|out| {
            matches!(
                out,
                Output::Send {
                    msg: Message::Follow { snapshot: true },
                    ..
                }
            )
        });
        assert!(asks, "it asks the members for a snapshot");
    }
}
