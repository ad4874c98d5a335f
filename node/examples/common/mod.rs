//! What the group load tools share (`group_load`, `group_walk`): players'
//! keys, following a group as an observer does, joining the players, a
//! schedule of pre-signed inputs sent on time, and the finalized counts
//! and latencies.
//!
//! Measuring tools, not tests: they assert nothing. They trust the status
//! and do not check certificates (an observer does).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};
use bytes::Bytes;
use ed25519_dalek::SigningKey;

use metatopia_node::replica::{Message, SignedInput, net, simplex};
use metatopia_sim::input::InputKind;
use metatopia_sim::{PlayerId, RegionId};

/// A batch of the inputs due goes out every this many ms.
const BATCH_MS: u64 = 10;

/// Joins go out in messages of this many.
const JOIN_CHUNK: usize = 100;

/// A member's peer id and address.
pub type Member = (PlayerId, libp2p::Multiaddr);

/// The group behind `url` (any member's HTTP address) and its region.
pub fn group(url: &str) -> Result<(Vec<Member>, RegionId)> {
    let (addresses, region) = metatopia_node::cli::group_of(url)?;
    let members = metatopia_node::config::Group {
        members: addresses,
        ..metatopia_node::config::Group::default()
    }
    .members()
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok((members, RegionId(region)))
}

/// The two-thread runtime the tools run on.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Keys that differ from run to run, so every run's players are new.
pub struct Keys {
    nonce: [u8; 32],
}

impl Keys {
    /// A new run's keys.
    pub fn new() -> Keys {
        let seed = format!("{:?} {}", SystemTime::now(), std::process::id());
        Keys {
            nonce: *blake3::hash(seed.as_bytes()).as_bytes(),
        }
    }

    /// The `i`th key of kind `what`.
    pub fn key(&self, what: &str, i: usize) -> SigningKey {
        let mut h = blake3::Hasher::new();
        h.update(b"metatopia group_load\0");
        h.update(&self.nonce);
        h.update(what.as_bytes());
        h.update(&(i as u64).to_le_bytes());
        SigningKey::from_bytes(h.finalize().as_bytes())
    }
}

/// What the tool has seen finalized.
#[derive(Default)]
pub struct Seen {
    /// Finalized ticks, with when the tool saw each.
    pub ticks: BTreeMap<u64, Instant>,
    /// Our inputs finalized: (player, seq) → when we saw it.
    pub finalized: BTreeMap<(PlayerId, u64), Instant>,
}

impl Seen {
    fn take(&mut self, bytes: &[u8], ours: &BTreeSet<PlayerId>) {
        let Ok(Message::Finalized { proposal, .. }) = Message::decode(bytes) else {
            return;
        };
        let now = Instant::now();
        if self.ticks.insert(proposal.tick, now).is_some() {
            return;
        }
        for s in &proposal.inputs {
            if ours.contains(&s.input.player) {
                self.finalized
                    .entry((s.input.player, s.input.seq))
                    .or_insert(now);
            }
        }
    }
}

/// A follower of a group: sends inputs to its members and reads what they
/// finalize.
pub struct Follower {
    /// The group.
    pub members: Vec<Member>,
    /// The region.
    pub region: RegionId,
    out: net::FollowSender,
    inbound: net::FollowReceiver,
    /// Kept for as long as the follow streams are used.
    _mesh: net::Mesh,
    follow: Bytes,
    ours: BTreeSet<PlayerId>,
    /// What it saw finalized.
    pub seen: Seen,
}

impl Follower {
    /// Follows the group as an observer does; `players` are the keys
    /// whose inputs it counts.
    pub async fn start(
        keys: &Keys,
        members: Vec<Member>,
        region: RegionId,
        players: &[SigningKey],
    ) -> Result<Follower> {
        let me = keys.key("node", 0);
        let mesh = net::listen(&me, "/ip4/127.0.0.1/tcp/0".parse()?, net::Caps::default()).await?;
        let (out, inbound) = net::follow(&mesh, &members, simplex::CHANNEL_MEMBERS)?;
        let follow = Bytes::from(Message::Follow { snapshot: false }.encode());
        out.send((None, follow.clone())).await?;
        let ours = players
            .iter()
            .map(metatopia_node::replica::wire::player_of)
            .collect();
        Ok(Follower {
            members,
            region,
            out,
            inbound,
            follow,
            ours,
            _mesh: mesh,
            seen: Seen::default(),
        })
    }

    /// Reads for up to `wait`.
    async fn read(&mut self, wait: Duration) {
        if let Ok(Some((_, bytes))) = tokio::time::timeout(wait, self.inbound.recv()).await {
            self.seen.take(&bytes, &self.ours);
        }
    }

    /// Joins every player (sequence number 1; player p's join to member p
    /// mod n, the member its later inputs go to) and waits until all joins
    /// are finalized, for up to `wait`.
    pub async fn join_all(&mut self, players: &[SigningKey], wait: Duration) -> Result<()> {
        let n = self.members.len();
        let mut per_member: Vec<Vec<SignedInput>> = vec![Vec::new(); n];
        for (i, k) in players.iter().enumerate() {
            let name = format!("load{i}");
            per_member[i % n].push(SignedInput::sign(
                k,
                self.region,
                1,
                InputKind::Join { name },
            ));
        }
        for (m, joins) in per_member.into_iter().enumerate() {
            for chunk in joins.chunks(JOIN_CHUNK) {
                let bytes = Bytes::from(Message::Inputs(chunk.to_vec()).encode());
                self.out.send((Some(self.members[m].0), bytes)).await?;
            }
        }
        let want = self.seen.finalized.len() + players.len();
        let deadline = Instant::now() + wait;
        while self.seen.finalized.len() < want {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} joins finalized within {} s (players_online_max is 100 by default: raise it with the settings action)",
                    self.seen.finalized.len() + players.len() - want,
                    players.len(),
                    wait.as_secs()
                );
            }
            self.read(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Sends `schedule` (inputs with when each is due after the start, in
    /// order of due time; player p's to member p mod n, so each player's
    /// inputs reach the group in order, on one stream) for `window`, then
    /// waits up to 5 s for what is in flight. Returns the start and when
    /// each input was sent.
    pub async fn send(
        &mut self,
        schedule: Vec<(Duration, usize, SignedInput)>,
        window: Duration,
    ) -> Result<(Instant, BTreeMap<(PlayerId, u64), Instant>)> {
        let n = self.members.len();
        let mut schedule = schedule.into_iter().peekable();
        let mut sent_at: BTreeMap<(PlayerId, u64), Instant> = BTreeMap::new();
        let start = Instant::now();
        let mut renew = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(BATCH_MS));
        let before = self.seen.finalized.len();
        while start.elapsed() < window {
            tokio::select! {
                _ = tick.tick() => {
                    let elapsed = start.elapsed();
                    let now = Instant::now();
                    let mut batches: Vec<Vec<SignedInput>> = vec![Vec::new(); n];
                    while let Some((_, p, s)) = schedule.next_if(|(due, _, _)| *due <= elapsed) {
                        sent_at.insert((s.input.player, s.input.seq), now);
                        batches[p % n].push(s);
                    }
                    for (m, batch) in batches.into_iter().enumerate() {
                        if batch.is_empty() {
                            continue;
                        }
                        let bytes = Bytes::from(Message::Inputs(batch).encode());
                        if self.out.try_send((Some(self.members[m].0), bytes)).is_err() {
                            println!("send queue full: a batch was dropped");
                        }
                    }
                    if renew.elapsed() > Duration::from_millis(2_500) {
                        renew = Instant::now();
                        let _ = self.out.try_send((None, self.follow.clone()));
                    }
                }
                msg = self.inbound.recv() => {
                    let Some((_, bytes)) = msg else { bail!("the follow streams closed") };
                    self.seen.take(&bytes, &self.ours);
                }
            }
        }
        let sent_done = Instant::now();
        while self.seen.finalized.len() - before < sent_at.len()
            && sent_done.elapsed() < Duration::from_secs(5)
        {
            self.read(Duration::from_millis(100)).await;
        }
        Ok((start, sent_at))
    }
}

/// Prints what was finalized each second, the rate over the window and
/// the send-to-finalized latency (p50, p99).
pub fn report(
    seen: &Seen,
    sent_at: &BTreeMap<(PlayerId, u64), Instant>,
    start: Instant,
    window: Duration,
    verbose: bool,
) {
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    let mut latency_ms: Vec<f64> = Vec::new();
    for (key, at) in sent_at {
        if let Some(done) = seen.finalized.get(key) {
            latency_ms.push(done.duration_since(*at).as_secs_f64() * 1000.0);
            *per_second
                .entry(done.duration_since(start).as_secs())
                .or_default() += 1;
        }
    }
    if verbose {
        for (s, n) in &per_second {
            println!("  second {s}: {n} inputs finalized");
        }
    }
    let in_window: u64 = per_second
        .iter()
        .filter(|(s, _)| **s < window.as_secs())
        .map(|(_, n)| n)
        .sum();
    latency_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        latency_ms
            .get(((latency_ms.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let sent = sent_at.len();
    println!(
        "sent {sent}, finalized {} ({:.1}%); {:.0} inputs/s finalized over the {} s window",
        latency_ms.len(),
        100.0 * latency_ms.len() as f64 / sent.max(1) as f64,
        in_window as f64 / window.as_secs_f64(),
        window.as_secs()
    );
    println!(
        "send to finalized: p50 {:.0} ms, p99 {:.0} ms",
        pct(0.5),
        pct(0.99)
    );
}
