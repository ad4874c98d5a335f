//! Physics benchmarks as named scenes, timed tick by tick.
//!
//! Criterion's repeated-iteration model does not fit a scene that evolves:
//! each sample would step a different state. Instead each scene runs a
//! fixed number of ticks from the same start, and we report the median and
//! p90 tick time. The bare-rapier baseline steps a byte-for-byte copy of the
//! same rapier world (taken from our world's snapshot), so both follow the
//! same trajectory; the two alternate which steps first each tick.
//!
//! Run: `cargo bench -p metatopia-physics --bench physics -- [TICKS]`
//! (default 200 ticks per scene).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use metatopia_physics::Space;
use metatopia_physics::scene;
use metatopia_sim::NoScripts;
use rapier3d_f64::prelude::PhysicsWorld;

fn median(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(v[v.len() / 2]), ms(v[v.len() * 9 / 10]))
}

/// Long on purpose: the numbered measurements run in order and print one report.
fn main() {
    let ticks: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);

    // 1. 1,000 active bodies in one region: full region tick vs bare rapier.
    let mut s = scene::active_bodies(1000, 7).unwrap();
    let region = s.cluster.region(metatopia_sim::RegionId(1)).unwrap();
    let world_bytes = region.space().snapshot();
    let mut bare: PhysicsWorld = {
        let w = Space::restore(&world_bytes).unwrap();
        let bytes = postcard::to_stdvec(w.rapier()).unwrap();
        postcard::from_bytes(&bytes).unwrap()
    };
    let mut ours = Space::restore(&world_bytes).unwrap();
    let mut region_t = Vec::new();
    let mut world_t = Vec::new();
    let mut bare_t = Vec::new();
    let mut digest_t = Vec::new();
    let awake = |w: &PhysicsWorld| w.bodies.iter().filter(|(_, b)| !b.is_sleeping()).count();
    for tick in 0..ticks {
        let t = Instant::now();
        s.step(&NoScripts).unwrap();
        region_t.push(t.elapsed());
        let mut ours_tick = || {
            let t = Instant::now();
            ours.step(&[]);
            let stepped = t.elapsed();
            let _ = ours.tick_digest();
            (t.elapsed(), t.elapsed() - stepped)
        };
        let mut bare_tick = || {
            let t = Instant::now();
            bare.step();
            t.elapsed()
        };
        // Whichever world steps right after the region tick finds colder
        // caches (about 5% here), so the order alternates tick by tick.
        let ((o, d), b) = if tick % 2 == 0 {
            let o = ours_tick();
            (o, bare_tick())
        } else {
            let b = bare_tick();
            (ours_tick(), b)
        };
        world_t.push(o);
        digest_t.push(d);
        bare_t.push(b);
    }
    let awake_end = awake(&bare);
    let (r50, r90) = median(region_t);
    let (w50, w90) = median(world_t);
    let (b50, b90) = median(bare_t);
    let (d50, _) = median(digest_t);
    println!(
        "scene active-bodies: 1000 balls + 6 walls, {ticks} ticks, {awake_end} bodies awake at the end"
    );
    println!("  bare rapier step            median {b50:.3} ms  p90 {b90:.3} ms");
    println!(
        "  physics::Space step+digest  median {w50:.3} ms  p90 {w90:.3} ms  ratio {:.3}x",
        w50 / b50
    );
    println!("    of which the digest       median {d50:.3} ms");
    println!(
        "  full region tick            median {r50:.3} ms  p90 {r90:.3} ms  ratio {:.3}x",
        r50 / b50
    );

    // 2. Border storm: 1,000 balls crossing between two regions.
    let mut storm = scene::border_storm(1000, 11).unwrap();
    let mut tick_t = Vec::new();
    let start_out: u64 = storm
        .cluster
        .regions()
        .values()
        .map(|r| r.border_counts().handoffs_out)
        .sum();
    let mut max_pending_ticks = 0u64;
    let mut offered_at = std::collections::BTreeMap::new();
    let t0 = Instant::now();
    for _ in 0..ticks {
        let t = Instant::now();
        let rep = storm.step(&NoScripts).unwrap();
        tick_t.push(t.elapsed());
        for r in rep.regions.values() {
            for root in &r.offers {
                offered_at.insert(*root, r.tick);
            }
            for e in &r.events {
                if let metatopia_sim::physics::PhysicsEvent::LeftRegion { id, .. } = e
                    && let Some(at) = offered_at.remove(id)
                {
                    max_pending_ticks = max_pending_ticks.max(r.tick - at);
                }
            }
        }
    }
    let wall = t0.elapsed();
    let mut base = scene::border_storm_baseline(1000, 11).unwrap();
    let mut base_t = Vec::new();
    for _ in 0..ticks {
        let t = Instant::now();
        base.step(&NoScripts).unwrap();
        base_t.push(t.elapsed());
    }
    let (base50, _) = median(base_t);
    let handoffs: u64 = storm
        .cluster
        .regions()
        .values()
        .map(|r| r.border_counts().handoffs_out)
        .sum::<u64>()
        - start_out;
    let (s50, s90) = median(tick_t);
    println!(
        "scene border-storm baseline: same balls and walls in one 128 m region, median {base50:.3} ms"
    );
    println!("scene border-storm: 1000 balls, 2 regions, {ticks} ticks");
    println!(
        "  cluster tick (both regions)  median {s50:.3} ms  p90 {s90:.3} ms; {handoffs} handoffs, {:.1} per tick, {:.0} per wall-clock second; longest offer-to-switch {max_pending_ticks} ticks; {} envelope bytes",
        handoffs as f64 / ticks as f64,
        handoffs as f64 / wall.as_secs_f64(),
        storm.cluster.bytes_sent
    );
}
