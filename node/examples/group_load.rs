//! Sustained load on a replica group: many players' signed inputs sent at
//! a set rate over the members' follow protocol (as observers forward
//! their players' inputs), counted as the group finalizes them.
//!
//! ```text
//! cargo run --release -p metatopia-node --example group_load -- URL [PLAYERS] [RATE] [SECONDS]
//! ```
//!
//! `URL` is any member's HTTP address (its status lists the group). The
//! tool makes `PLAYERS` new players (default 50), joins them, then sends
//! `RATE` chat inputs a second (default 10,000) for `SECONDS` (default 10),
//! player p's to member p mod n (a player's node talks to one member). It follows the group as an
//! observer does, reads every finalized proposal and prints what the
//! group finalized each second, the rate over the whole window, and the
//! time from sending an input to seeing it finalized (p50, p99).
//!
//! Every input of the window is signed before the window starts (players
//! sign on their own machines; here the tool shares the members' cores, so
//! signing inside the window would measure the tool). The time is taken
//! when an input is sent.
//!
//! A measuring tool, not a test: it asserts nothing. It trusts the status
//! and does not check certificates (an observer does).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use rayon::prelude::*;

use metatopia_node::replica::{Message, SignedInput, net, simplex};
use metatopia_sim::input::InputKind;
use metatopia_sim::{PlayerId, RegionId};

/// A batch of the inputs due goes out every this many ms.
const BATCH_MS: u64 = 10;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: group_load URL [PLAYERS] [RATE] [SECONDS]";
    let url = args.first().context(usage)?;
    let arg = |i: usize, default: u64| -> Result<u64> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().with_context(|| format!("{usage}: {s:?}"))
        })
    };
    let players = arg(1, 50)? as usize;
    let rate = arg(2, 10_000)?;
    let seconds = arg(3, 10)?;
    if players == 0 || rate == 0 || seconds == 0 {
        bail!("{usage}: PLAYERS, RATE and SECONDS must be above 0");
    }
    let (addresses, region) = metatopia_node::cli::group_of(url)?;
    let members = metatopia_node::config::Group {
        members: addresses,
        ..metatopia_node::config::Group::default()
    }
    .members()
    .map_err(|e| anyhow::anyhow!(e))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run(
        members,
        RegionId(region),
        players,
        rate,
        Duration::from_secs(seconds),
    ))
}

/// Keys that differ from run to run, so every run's players are new.
fn key(nonce: &[u8; 32], what: &str, i: usize) -> SigningKey {
    let mut h = blake3::Hasher::new();
    h.update(b"metatopia group_load\0");
    h.update(nonce);
    h.update(what.as_bytes());
    h.update(&(i as u64).to_le_bytes());
    SigningKey::from_bytes(h.finalize().as_bytes())
}

/// What the tool has seen finalized.
#[derive(Default)]
struct Seen {
    ticks: BTreeSet<u64>,
    /// Our inputs finalized: (player, seq) → when we saw it.
    finalized: BTreeMap<(PlayerId, u64), Instant>,
}

impl Seen {
    fn take(&mut self, bytes: &[u8], ours: &BTreeSet<PlayerId>) {
        let Ok(Message::Finalized { proposal, .. }) = Message::decode(bytes) else {
            return;
        };
        if !self.ticks.insert(proposal.tick) {
            return;
        }
        let now = Instant::now();
        for s in &proposal.inputs {
            if ours.contains(&s.input.player) {
                self.finalized
                    .entry((s.input.player, s.input.seq))
                    .or_insert(now);
            }
        }
    }
}

async fn run(
    members: Vec<(PlayerId, libp2p::Multiaddr)>,
    region: RegionId,
    players: usize,
    rate: u64,
    window: Duration,
) -> Result<()> {
    let nonce = *blake3::hash(format!("{:?} {}", SystemTime::now(), std::process::id()).as_bytes())
        .as_bytes();
    let me = key(&nonce, "node", 0);
    let mesh = net::listen(&me, "/ip4/127.0.0.1/tcp/0".parse()?, net::Caps::default()).await?;
    let (out, mut inbound) = net::follow(&mesh, &members, simplex::CHANNEL_MEMBERS)?;
    let follow = Bytes::from(Message::Follow { snapshot: false }.encode());
    out.send((None, follow.clone())).await?;
    let keys: Vec<SigningKey> = (0..players).map(|i| key(&nonce, "player", i)).collect();
    let ours: BTreeSet<PlayerId> = keys
        .iter()
        .map(metatopia_node::replica::wire::player_of)
        .collect();
    let mut seen = Seen::default();

    // Join every player (sequence number 1) and wait until all joins are
    // finalized.
    let joins: Vec<SignedInput> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            SignedInput::sign(
                k,
                region,
                1,
                InputKind::Join {
                    name: format!("load{i}"),
                },
            )
        })
        .collect();
    out.send((
        Some(members[0].0),
        Bytes::from(Message::Inputs(joins).encode()),
    ))
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.finalized.len() < players {
        if Instant::now() > deadline {
            bail!(
                "only {} of {players} joins finalized within 30 s (players_online_max is 100 by default)",
                seen.finalized.len()
            );
        }
        if let Ok(Some((_, bytes))) =
            tokio::time::timeout(Duration::from_millis(100), inbound.recv()).await
        {
            seen.take(&bytes, &ours);
        }
    }
    // Sign the window's inputs now, round-robin over the players: input j
    // is player j mod PLAYERS's, sequence number 2 + j / PLAYERS.
    let total = usize::try_from(rate.saturating_mul(window.as_secs()))?;
    let signing = Instant::now();
    let signed: Vec<SignedInput> = (0..total)
        .into_par_iter()
        .map(|j| {
            let (p, seq) = (j % players, 2 + (j / players) as u64);
            SignedInput::sign(
                &keys[p],
                region,
                seq,
                InputKind::Say {
                    text: format!("load {seq}"),
                    radius: None,
                },
            )
        })
        .collect();
    println!(
        "{players} players joined; {total} inputs signed in {:.1} s; sending {rate} inputs/s for {} s",
        signing.elapsed().as_secs_f64(),
        window.as_secs()
    );

    // Load: every BATCH_MS, the inputs due by now, in order, to the
    // members (player p's to member p mod n).
    let mut signed = signed.into_iter();
    let mut sent_at: BTreeMap<(PlayerId, u64), Instant> = BTreeMap::new();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut renew = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(BATCH_MS));
    let before = seen.finalized.len();
    while start.elapsed() < window {
        tokio::select! {
            _ = tick.tick() => {
                let due = (start.elapsed().as_micros() as u64).saturating_mul(rate) / 1_000_000;
                let n = due.saturating_sub(sent) as usize;
                if n == 0 {
                    continue;
                }
                let now = Instant::now();
                // Player p talks to member p mod n only, so each player's
                // inputs reach the group in order, on one stream.
                let mut batches: Vec<Vec<SignedInput>> = vec![Vec::new(); members.len()];
                for (j, s) in signed.by_ref().take(n).enumerate() {
                    let p = (sent as usize + j) % players;
                    sent_at.insert((s.input.player, s.input.seq), now);
                    batches[p % members.len()].push(s);
                }
                sent = sent_at.len() as u64;
                for (m, batch) in batches.into_iter().enumerate() {
                    if batch.is_empty() {
                        continue;
                    }
                    let bytes = Bytes::from(Message::Inputs(batch).encode());
                    if out.try_send((Some(members[m].0), bytes)).is_err() {
                        println!("send queue full: a batch was dropped");
                    }
                }
                if renew.elapsed() > Duration::from_millis(2_500) {
                    renew = Instant::now();
                    let _ = out.try_send((None, follow.clone()));
                }
            }
            msg = inbound.recv() => {
                let Some((_, bytes)) = msg else { bail!("the follow streams closed") };
                seen.take(&bytes, &ours);
            }
        }
    }
    let sent_done = Instant::now();
    // Drain: up to 5 s for what is still in flight.
    while seen.finalized.len() - before < sent as usize
        && sent_done.elapsed() < Duration::from_secs(5)
    {
        if let Ok(Some((_, bytes))) =
            tokio::time::timeout(Duration::from_millis(100), inbound.recv()).await
        {
            seen.take(&bytes, &ours);
        }
    }
    report(&seen, &sent_at, start, window, sent);
    Ok(())
}

fn report(
    seen: &Seen,
    sent_at: &BTreeMap<(PlayerId, u64), Instant>,
    start: Instant,
    window: Duration,
    sent: u64,
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
    for (s, n) in &per_second {
        println!("  second {s}: {n} inputs finalized");
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
