//! AOI queries return exactly the peers in the disc; announced regions are
//! found by routing to any point inside them.

mod common;

use common::{WORLD, build, random_points, settle};
use metatopia_overlay::{Event, NodeId, Point, Rect, RegionId, RegionInfo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn aoi_returns_every_peer_in_the_disc() {
    let seed = 21;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let mut net = build(seed, &random_points(seed, 80));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sites = net.sites();
    for k in 0..20 {
        let c = Point::new(rng.random_range(0..=WORLD), rng.random_range(0..=WORLD));
        let r: u64 = rng.random_range(10_000..250_000);
        let want: Vec<NodeId> = sites
            .iter()
            .filter(|(_, p)| p.dist2(c) <= u128::from(r) * u128::from(r))
            .map(|(id, _)| *id)
            .collect();
        let from = sites[k * 7 % sites.len()].0;
        let q = net
            .with_peer(from, |p, now| p.aoi(now, c, r))
            .expect("alive")
            .expect("joined");
        net.drain(60_000);
        let got = net.take_events().into_iter().find_map(|(who, e)| match e {
            Event::AoiDone {
                query,
                peers,
                complete,
                ..
            } if who == from && query == q => {
                assert!(complete);
                let mut ids: Vec<NodeId> = peers.iter().map(|c| c.id).collect();
                ids.sort();
                Some(ids)
            }
            _ => None,
        });
        assert_eq!(got, Some(want), "aoi {c:?} r={r}");
    }
}

#[test]
fn announced_region_is_located_from_anywhere_inside() {
    let seed = 33;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let mut net = build(seed, &random_points(seed, 80));
    let bounds = Rect {
        min: Point::new(200_000, 300_000),
        max: Point::new(456_000, 556_000),
    };
    let group = keys(1..=4);
    let region = RegionInfo::signed_by_all(RegionId(9), bounds, [1; 32], &group[..1], 1);
    let host = NodeId(4);
    net.with_peer(host, |p, now| p.announce(now, region.clone()))
        .expect("alive")
        .expect("joined");
    net.drain(60_000);
    let announced = net
        .take_events()
        .into_iter()
        .any(|(w, e)| w == host && matches!(e, Event::Announced { visited, .. } if visited > 0));
    assert!(announced);

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let alive = net.alive();
    for k in 0..30 {
        let inside = k % 3 != 0;
        let t = if inside {
            Point::new(
                rng.random_range(200_000..=456_000),
                rng.random_range(300_000..=556_000),
            )
        } else {
            Point::new(
                rng.random_range(600_000..=WORLD),
                rng.random_range(0..=WORLD),
            )
        };
        let from = alive[k * 11 % alive.len()];
        let q = net
            .with_peer(from, |p, now| p.locate(now, t))
            .expect("alive")
            .expect("joined");
        net.drain(60_000);
        let found = net.take_events().into_iter().find_map(|(who, e)| match e {
            Event::Located { query, regions, .. } if who == from && query == q => Some(regions),
            _ => None,
        });
        let regions = found.expect("locate answered");
        if inside {
            assert_eq!(regions, vec![region.clone()], "point {t:?}");
        } else {
            assert!(regions.is_empty(), "point {t:?} found {regions:?}");
        }
    }

    // A peer joining inside the region learns the record from its acceptor.
    let id = net.add(common::config(), Point::new(300_001, 400_003), 999);
    net.join(id, NodeId(0));
    settle(&mut net, 3_000);
    let joined = net.peer(id).expect("alive");
    assert!(joined.is_joined());
    assert!(joined.regions().any(|r| r.id == RegionId(9)));

    // Outsiders announcing their own group for region 9 are refused
    // everywhere the record lives; a forged signature too. The group's
    // record stays.
    let outsiders = keys(11..=14);
    let takeover = RegionInfo::signed_by_all(RegionId(9), bounds, [2; 32], &outsiders, 99);
    let mut forged = region.clone();
    forged.seq = 2;
    let refused_before: u64 = net
        .alive()
        .iter()
        .map(|id| net.peer(*id).expect("alive").stats().regions_refused)
        .sum();
    let rogue = alive[5];
    net.with_peer(rogue, |p, now| p.announce(now, takeover.clone()))
        .expect("alive")
        .expect("joined");
    assert_eq!(
        net.with_peer(rogue, |p, now| p.announce(now, forged.clone()))
            .expect("alive"),
        Err(metatopia_overlay::CommandError::Unsigned)
    );
    net.drain(60_000);
    let refused_after: u64 = net
        .alive()
        .iter()
        .map(|id| net.peer(*id).expect("alive").stats().regions_refused)
        .sum();
    assert!(refused_after > refused_before, "the takeover was refused");
    let inside = Point::new(300_000, 400_000);
    let q = net
        .with_peer(alive[1], |p, now| p.locate(now, inside))
        .expect("alive")
        .expect("joined");
    net.drain(60_000);
    let found = net.take_events().into_iter().find_map(|(who, e)| match e {
        Event::Located { query, regions, .. } if who == alive[1] && query == q => Some(regions),
        _ => None,
    });
    assert_eq!(found, Some(vec![region]));
}

/// ed25519 identities numbered `ids`.
fn keys(ids: std::ops::RangeInclusive<u8>) -> Vec<libp2p::identity::Keypair> {
    ids.map(|i| libp2p::identity::Keypair::ed25519_from_bytes([i; 32]).expect("32 bytes"))
        .collect()
}

#[test]
fn long_links_follow_the_harmonic_law_and_back_links_match() {
    let seed = 5;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let net = build(seed, &random_points(seed, 80));
    let mut linked = 0;
    for id in net.alive() {
        let p = net.peer(id).expect("alive");
        if let Some((target, Some(owner))) = p.long_link() {
            linked += 1;
            // The owner holds the back-link and owns the target.
            let o = net.peer(owner).expect("owner alive");
            assert_eq!(o.back_links().get(&id), Some(&target), "{id} -> {owner}");
            assert!(o.owns(target));
        }
    }
    assert!(linked > 55, "only {linked} long links established");
}
