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
//! A measuring tool, not a test: it asserts nothing (see `common`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use rayon::prelude::*;

use metatopia_node::replica::SignedInput;
use metatopia_sim::input::InputKind;

mod common;

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
    let (members, region) = common::group(url)?;
    common::runtime()?.block_on(async {
        let keys = common::Keys::new();
        let players: Vec<SigningKey> = (0..players).map(|i| keys.key("player", i)).collect();
        let mut group = common::Follower::start(&keys, members, region, &players).await?;
        group.join_all(&players, Duration::from_secs(30)).await?;
        // Sign the window's inputs now, round-robin over the players:
        // input j is player j mod PLAYERS's, sequence number
        // 2 + j / PLAYERS, due at j / RATE s.
        let window = Duration::from_secs(seconds);
        let total = usize::try_from(rate.saturating_mul(seconds))?;
        let signing = Instant::now();
        let n = players.len();
        let schedule: Vec<(Duration, usize, SignedInput)> = (0..total)
            .into_par_iter()
            .map(|j| {
                let (p, seq) = (j % n, 2 + (j / n) as u64);
                let due = Duration::from_micros((j as u64).saturating_mul(1_000_000) / rate);
                let kind = InputKind::Say {
                    text: format!("load {seq}"),
                    radius: None,
                };
                (due, p, SignedInput::sign(&players[p], region, seq, kind))
            })
            .collect();
        println!(
            "{n} players joined; {total} inputs signed in {:.1} s; sending {rate} inputs/s for {seconds} s",
            signing.elapsed().as_secs_f64(),
        );
        let (start, sent_at) = group.send(schedule, window).await?;
        common::report(&group.seen, &sent_at, start, window, true);
        Ok(())
    })
}
