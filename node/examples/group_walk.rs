//! The issue-12 scene: many avatars moving at once in one region hosted by
//! a replica group, and what replication costs each member.
//!
//! ```text
//! cargo run --release -p metatopia-node --example group_walk -- URL [PLAYERS] [SECONDS] [MODE] [PIDS]
//! ```
//!
//! `URL` is any member's HTTP address. The tool joins `PLAYERS` new
//! players (default 1,000; raise the region's `players_online_max` first,
//! with the settings action signed by an admin), then for `SECONDS`
//! (default 60) moves every avatar, by `MODE`:
//! - `walk` (default): each player sends a `Walk` with a new heading and
//!   speed (1 to 3.9 m/s) every 2 s, players spread evenly over the 2 s
//!   (so PLAYERS / 2 inputs a second); the sim moves the avatars every tick.
//! - `move`: each player sends a `Move` every 50 ms (one a tick at 20 Hz),
//!   walking a circle of 20 m around the spawn: PLAYERS × 20 inputs a second.
//!
//! It prints the ticks the group finalized a second (against 20 Hz), the
//! CPU each process in `PIDS` (comma-separated, e.g. the members') and the
//! tool itself used over the window (utime + stime from `/proc/PID/stat`,
//! as % of one core), and the time from sending an input to seeing it
//! finalized (p50, p99). Every input is signed before the window starts.
//!
//! A measuring tool, not a test: it asserts nothing (see `common`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::SigningKey;
use rayon::prelude::*;

use metatopia_node::replica::SignedInput;
use metatopia_sim::input::InputKind;
use metatopia_sim::{ElementId, Fx, PlayerId, Vec3};

mod common;

/// A walker picks a new heading this often.
const HEADING_MS: u64 = 2_000;
/// In `move` mode, a Move this often (one tick at 20 Hz).
const MOVE_MS: u64 = 50;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: group_walk URL [PLAYERS] [SECONDS] [walk|move] [PID,PID,...]";
    let url = args.first().context(usage)?;
    let arg = |i: usize, default: u64| -> Result<u64> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().with_context(|| format!("{usage}: {s:?}"))
        })
    };
    let players = arg(1, 1_000)? as usize;
    let seconds = arg(2, 60)?;
    let mode = args.get(3).map_or("walk", String::as_str);
    if players == 0 || seconds == 0 {
        bail!("{usage}: PLAYERS and SECONDS must be above 0");
    }
    if !matches!(mode, "walk" | "move") {
        bail!("{usage}: MODE must be walk or move, got {mode:?}");
    }
    let pids: Vec<u32> = match args.get(4) {
        Some(list) => list
            .split(',')
            .map(|p| p.parse().with_context(|| format!("{usage}: pid {p:?}")))
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let (members, region) = common::group(url)?;
    let hz = clock_ticks_per_second()?;
    common::runtime()?.block_on(async {
        let keys = common::Keys::new();
        let players: Vec<SigningKey> = (0..players).map(|i| keys.key("player", i)).collect();
        let mut group = common::Follower::start(&keys, members, region, &players).await?;
        group.join_all(&players, Duration::from_secs(120)).await?;
        let window = Duration::from_secs(seconds);
        let signing = Instant::now();
        let schedule = if mode == "walk" {
            walks(players.len(), window)
        } else {
            let (url, region, keys) = (url.clone(), region.0, players.clone());
            let avatars =
                tokio::task::spawn_blocking(move || avatars(&url, region, &keys)).await??;
            moves(&avatars, window)
        };
        let schedule: Vec<(Duration, usize, SignedInput)> = schedule
            .into_par_iter()
            .map(|(due, p, seq, kind)| (due, p, SignedInput::sign(&players[p], region, seq, kind)))
            .collect();
        println!(
            "{} players joined; {} {mode} inputs signed in {:.1} s; moving them for {seconds} s; load average {}",
            players.len(),
            schedule.len(),
            signing.elapsed().as_secs_f64(),
            loadavg(),
        );
        let cpu_before = cpu(&pids)?;
        let self_before = cpu_of("self")?;
        let (start, sent_at) = group.send(schedule, window).await?;
        // `send` drains for up to 5 s after the window: CPU is read at its
        // end, over its whole span.
        let span = start.elapsed().as_secs_f64();
        let cpu_after = cpu(&pids)?;
        let self_after = cpu_of("self")?;
        let ticks: Vec<Instant> = group
            .seen
            .ticks
            .values()
            .copied()
            .filter(|at| *at >= start && at.duration_since(start) < window)
            .collect();
        let mut per_second = vec![0u32; window.as_secs() as usize];
        for at in &ticks {
            per_second[at.duration_since(start).as_secs() as usize] += 1;
        }
        let low = per_second.iter().min().copied().unwrap_or(0);
        let rate = ticks.len() as f64 / window.as_secs_f64();
        println!(
            "ticks finalized: {rate:.2} a second over {seconds} s (target 20; slowest second {low}); {}",
            if rate >= 19.5 { "20 Hz holds" } else { "20 Hz does NOT hold" }
        );
        let pct = |a: u64, b: u64| 100.0 * (b.saturating_sub(a)) as f64 / hz / span;
        for ((pid, a), b) in pids.iter().zip(&cpu_before).zip(&cpu_after) {
            println!("cpu pid {pid}: {:.1}% of a core", pct(*a, *b));
        }
        let total: f64 = cpu_before.iter().zip(&cpu_after).map(|(a, b)| pct(*a, *b)).sum();
        println!(
            "cpu of the {} pids: {total:.1}% (of 200% on 2 cores); this tool: {:.1}%; over {span:.1} s; load average {}",
            pids.len(),
            pct(self_before, self_after),
            loadavg()
        );
        common::report(&group.seen, &sent_at, start, window, false);
        Ok(())
    })
}

/// A schedule entry before signing: due after the start, player index,
/// sequence number, input.
type Planned = (Duration, usize, u64, InputKind);

/// A number in `[0, 1)` from `(p, k)`, the same every run.
fn unit(p: usize, k: u64) -> f64 {
    let h = blake3::hash(format!("{p} {k}").as_bytes());
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64 / (u32::MAX as f64 + 1.0)
}

fn fx(v: f64) -> Fx {
    Fx::from_milli((v * 1000.0).round() as i64)
}

/// Player p's leg k starts at `p * period / n + k * period`: a `Walk` with
/// a new heading and a speed of 1 to 3.9 m/s (under the default 4 m/s
/// limit after rounding), sequence number 2 + k.
fn walks(players: usize, window: Duration) -> Vec<Planned> {
    let n = players as u64;
    let mut out = Vec::new();
    for k in 0.. {
        let leg = Duration::from_millis(k * HEADING_MS);
        if leg >= window {
            break;
        }
        for p in 0..players {
            let due = leg + Duration::from_millis(p as u64 * HEADING_MS / n);
            let angle = unit(p, k) * std::f64::consts::TAU;
            let speed = 1.0 + 2.9 * unit(p, k + 1_000_000);
            let vel = Vec3::new(fx(speed * angle.cos()), fx(speed * angle.sin()), Fx::ZERO);
            out.push((due, p, 2 + k, InputKind::Walk { vel }));
        }
    }
    out.sort_by_key(|(due, p, _, _)| (*due, *p));
    out
}

/// Player p's k-th Move is due at `p * MOVE_MS / n + k * MOVE_MS`: its
/// avatar to a point of a 20 m circle around (128, 128, 0), 1 m/s,
/// sequence number 2 + k.
fn moves(avatars: &[ElementId], window: Duration) -> Vec<Planned> {
    let n = avatars.len() as u64;
    let mut out = Vec::new();
    for k in 0.. {
        let at = Duration::from_millis(k * MOVE_MS);
        if at >= window {
            break;
        }
        for (p, &element) in avatars.iter().enumerate() {
            let due = at + Duration::from_millis(p as u64 * MOVE_MS / n);
            let angle = unit(p, 0) * std::f64::consts::TAU + k as f64 * 0.05;
            let to = Vec3::new(
                fx(128.0 + 20.0 * angle.cos()),
                fx(128.0 + 20.0 * angle.sin()),
                Fx::ZERO,
            );
            out.push((due, p, 2 + k, InputKind::Move { element, to }));
        }
    }
    out.sort_by_key(|(due, p, _, _)| (*due, *p));
    out
}

/// The avatars of `players`, from the region's state view at `url`.
fn avatars(url: &str, region: u32, players: &[SigningKey]) -> Result<Vec<ElementId>> {
    let url = url.trim_end_matches('/');
    let path = format!("/api/regions/{region}/state");
    let r = metatopia_node::client::request(url, "GET", &path, &[], None)?;
    if r.status != 200 {
        bail!("{url}{path} answered {}: {}", r.status, r.text());
    }
    let v = r.json()?;
    let mut of: BTreeMap<PlayerId, ElementId> = BTreeMap::new();
    for p in v["players"]
        .as_array()
        .context("no players in the state view")?
    {
        let (Some(id), Some(avatar)) = (p["id"].as_str(), p["avatar"].as_str()) else {
            continue;
        };
        of.insert(id.parse()?, avatar.parse()?);
    }
    players
        .iter()
        .map(|k| {
            let id = metatopia_node::replica::wire::player_of(k);
            of.get(&id)
                .copied()
                .with_context(|| format!("player {id} has no avatar"))
        })
        .collect()
}

/// utime + stime of each pid, in clock ticks.
fn cpu(pids: &[u32]) -> Result<Vec<u64>> {
    pids.iter().map(|p| cpu_of(&p.to_string())).collect()
}

/// utime + stime of `/proc/WHO/stat`, in clock ticks.
fn cpu_of(who: &str) -> Result<u64> {
    let path = format!("/proc/{who}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces) in parentheses:
    // state is field 3, utime 14, stime 15.
    let rest = text.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("short stat")?
            .parse()
            .context("stat field")
    };
    Ok(num(11)? + num(12)?)
}

fn clock_ticks_per_second() -> Result<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("running getconf CLK_TCK")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
