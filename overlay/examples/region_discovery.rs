//! How fast a region's group is found through the overlay after the group
//! starts announcing, on the simulator (the real sans-IO core, the
//! simulated network of `simnet`: one-way latency 5-40 ms).
//!
//! ```text
//! cargo run --release -p metatopia-overlay --example region_discovery -- \
//!     --regions 100 --players 200 --seed 1
//! ```
//!
//! The world is a square grid of 256 m regions, each hosted by a group of 4
//! peers sitting near its centre (each at its own offset under a metre, as
//! the node places them), plus `players` peers anywhere. Once the overlay
//! has settled, every member of every group announces its signed record at
//! once; then every 50 ms of simulated time a random player locates a
//! random point of each region not found yet. Prints, per region, the
//! simulated time from the announcement to the first locate that returned
//! the record with a verified signature (median, 95th percentile, max),
//! and the wall-clock cost of verifying one record's signature.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use libp2p::identity::Keypair;
use metatopia_overlay::simnet::{SimConfig, SimNet};
use metatopia_overlay::{Config, Event, NodeId, Point, Rect, RegionId, RegionInfo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const M: i64 = 1000; // millimetres per metre
const REGION: i64 = 256 * M;
const MEMBERS: usize = 4;

fn main() -> Result<()> {
    let (mut regions, mut players, mut seed) = (100usize, 200usize, 1u64);
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().context("missing value")?;
        match k.as_str() {
            "--regions" => regions = v.parse()?,
            "--players" => players = v.parse()?,
            "--seed" => seed = v.parse()?,
            _ => bail!("unknown argument {k}"),
        }
    }
    let side = (regions as f64).sqrt().ceil() as i64;
    let world = Rect {
        min: Point::new(0, 0),
        max: Point::new(side * REGION, side * REGION),
    };
    let cfg = Config {
        world,
        ..Config::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    // Sites: the groups' members near their regions' centres, then players.
    let mut net = SimNet::new(SimConfig::default(), seed);
    let mut groups: Vec<(RegionInfo, Vec<NodeId>, Vec<Keypair>)> = Vec::new();
    let mut order: Vec<(Point, Option<usize>)> = Vec::new();
    for r in 0..regions {
        let (gx, gy) = (r as i64 % side, r as i64 / side);
        let bounds = Rect {
            min: Point::new(gx * REGION, gy * REGION),
            max: Point::new((gx + 1) * REGION, (gy + 1) * REGION),
        };
        let centre = Point::new(bounds.min.x + REGION / 2, bounds.min.y + REGION / 2);
        let keys: Vec<Keypair> = (0..MEMBERS)
            .map(|m| {
                let mut secret = [0u8; 32];
                secret[..8].copy_from_slice(&(r as u64).to_le_bytes());
                secret[8] = m as u8 + 1;
                Keypair::ed25519_from_bytes(secret).expect("32 bytes")
            })
            .collect();
        let mut record =
            RegionInfo::signed_by_all(RegionId(r as u32), bounds, [r as u8; 32], &keys, 1);
        record.sigs.clear();
        groups.push((record, Vec::new(), keys));
        for _ in 0..MEMBERS {
            let jitter = Point::new(
                centre.x + rng.random_range(0..1000),
                centre.y + rng.random_range(0..1000),
            );
            order.push((jitter, Some(r)));
        }
    }
    for _ in 0..players {
        let p = Point::new(
            rng.random_range(0..world.max.x),
            rng.random_range(0..world.max.y),
        );
        order.push((p, None));
    }
    // Join in a random order, each through a random earlier peer.
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut player_ids = Vec::new();
    let started = Instant::now();
    for (i, (p, group)) in order.iter().enumerate() {
        let id = net.add(cfg.clone(), *p, seed.wrapping_add(i as u64));
        if i == 0 {
            net.start_alone(id);
        } else {
            net.join(id, NodeId(rng.random_range(0..i as u64)));
            net.step(50);
        }
        match group {
            Some(r) => groups[*r].1.push(id),
            None => player_ids.push(id),
        }
    }
    let end = net.now + 10_000;
    while net.now < end {
        net.step(100);
    }
    eprintln!(
        "built {} peers in {:.1} s wall",
        order.len(),
        started.elapsed().as_secs_f64()
    );

    // Every member announces its own signed record at once.
    let t0 = net.now;
    for (record, ids, keys) in &groups {
        for (m, id) in ids.iter().enumerate() {
            let mut mine = record.clone();
            mine.seq = t0 + m as u64;
            mine.sign(m as u16, &keys[m])?;
            net.with_peer(*id, |p, now| p.announce(now, mine))
                .context("member alive")?
                .context("member joined")?;
        }
    }
    // Locate each region not found yet from a random player every 50 ms.
    let mut found: Vec<Option<u64>> = vec![None; regions];
    let mut asked: Vec<(NodeId, u64, usize)> = Vec::new();
    while found.iter().any(Option::is_none) && net.now < t0 + 30_000 {
        for (r, f) in found.iter().enumerate() {
            if f.is_some() {
                continue;
            }
            let b = groups[r].0.bounds;
            let t = Point::new(
                rng.random_range(b.min.x..b.max.x),
                rng.random_range(b.min.y..b.max.y),
            );
            let from = player_ids[rng.random_range(0..player_ids.len())];
            if let Some(Ok(q)) = net.with_peer(from, |p, now| p.locate(now, t)) {
                asked.push((from, q, r));
            }
        }
        net.step(50);
        for (who, e) in net.take_events() {
            if let Event::Located { query, regions, .. } = e
                && let Some(pos) = asked.iter().position(|(w, q, _)| *w == who && *q == query)
            {
                let (_, _, r) = asked.swap_remove(pos);
                let ok = regions.iter().any(|g| {
                    g.id == RegionId(r as u32)
                        && g.group == groups[r].0.group
                        && g.signers().is_ok()
                });
                if ok && found[r].is_none() {
                    found[r] = Some(net.now - t0);
                }
            }
        }
    }
    let mut times: Vec<u64> = found.iter().flatten().copied().collect();
    times.sort_unstable();
    let mut histogram = std::collections::BTreeMap::new();
    for t in &times {
        *histogram.entry(*t).or_insert(0u32) += 1;
    }
    eprintln!("found after (ms: regions): {histogram:?}");
    let pct = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    if times.is_empty() {
        bail!("no region was found");
    }
    let refused: u64 = net
        .alive()
        .iter()
        .filter_map(|id| net.peer(*id))
        .map(|p| p.stats().regions_refused)
        .sum();

    // Signature verification cost, wall clock.
    let mut sample = groups[0].0.clone();
    sample.sign(0, &groups[0].2[0])?;
    let n = 2_000;
    let t = Instant::now();
    for _ in 0..n {
        sample.signers().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);

    println!(
        "| regions | groups of | players | found | median | p95 | max | refused | verify one record |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {regions} | {MEMBERS} | {players} | {}/{regions} | {} ms | {} ms | {} ms | {refused} | {verify_us:.0} µs |",
        times.len(),
        pct(0.5),
        pct(0.95),
        pct(1.0),
    );
    Ok(())
}
