//! Joins, leaves and failures converge to the exact Delaunay neighbours.

mod common;

use common::{build, mismatches, random_points, settle};
use metatopia_overlay::NodeId;

#[test]
fn joins_converge_to_oracle() {
    let seed = 7;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let net = build(seed, &random_points(seed, 100));
    let bad = mismatches(&net);
    assert!(
        bad.is_empty(),
        "{} peers disagree with the oracle: {:?}",
        bad.len(),
        bad.first()
    );
}

#[test]
fn crashes_and_leaves_are_repaired() {
    let seed = 11;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let mut net = build(seed, &random_points(seed, 80));
    for i in 0..8 {
        net.kill(NodeId(i * 7 + 3));
        net.leave(NodeId(i * 7 + 5));
    }
    settle(&mut net, 15_000);
    let bad = mismatches(&net);
    assert!(
        bad.is_empty(),
        "{} peers disagree with the oracle: {:?}",
        bad.len(),
        bad.first()
    );
}

#[test]
fn moving_peers_keep_exact_neighbours_and_aoi() {
    use metatopia_overlay::Point;
    use rand::{Rng, SeedableRng};
    let seed = 13;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let mut net = build(seed, &random_points(seed, 40));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let cfg = common::config();
    // 20 steps of 100 ms, every peer moves up to 5 m per step.
    for _ in 0..20 {
        for id in net.alive() {
            let p = net.peer(id).expect("alive").me().pos;
            let to = Point::new(
                (p.x + rng.random_range(-5_000..=5_000)).clamp(0, common::WORLD),
                (p.y + rng.random_range(-5_000..=5_000)).clamp(0, common::WORLD),
            );
            net.move_to(id, to);
        }
        net.step(100);
    }
    settle(&mut net, 4_000);
    let bad = mismatches(&net);
    assert!(
        bad.is_empty(),
        "{} peers disagree with the oracle: {:?}",
        bad.len(),
        bad.first()
    );
    // Topology consistency once quiet: everyone knows every peer in its AOI.
    let sites = net.sites();
    let r = u128::from(cfg.aoi_radius_mm);
    for &(id, p) in &sites {
        let peer = net.peer(id).expect("alive");
        for &(q, qp) in &sites {
            if q != id && qp.dist2(p) <= r * r {
                let known = peer.contact(q).map(|c| c.pos);
                assert_eq!(known, Some(qp), "{id} does not know {q} in its AOI");
            }
        }
    }
}

/// A joiner only counts as joined once every one of its Voronoi neighbours
/// has confirmed it knows it: at that moment no neighbour still claims a
/// piece of the joiner's cell, so every point routes to its true owner.
#[test]
fn a_joiner_is_joined_only_once_its_neighbours_know_it() {
    use metatopia_overlay::Event;
    let seed = 17;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let mut net = build(seed, &random_points(seed, 60));
    net.take_events();
    let fresh = random_points(seed ^ 0xface, 20);
    let mut checked = 0;
    for p in fresh {
        let id = net.add(common::config(), p, seed ^ p.x as u64);
        net.join(id, NodeId(0));
        let mut joined = false;
        for _ in 0..400 {
            net.run_until(net.now + 1);
            if net
                .take_events()
                .iter()
                .any(|(w, e)| *w == id && *e == Event::Joined)
            {
                joined = true;
                break;
            }
        }
        assert!(joined, "{id} did not join");
        let me = net.peer(id).expect("alive");
        assert!(!me.voronoi_neighbours().is_empty());
        for n in me.voronoi_neighbours() {
            let other = net.peer(*n).expect("neighbour alive");
            assert!(
                other.contact(id).is_some(),
                "{n} does not know the joiner {id} when it joined"
            );
            checked += 1;
        }
        settle(&mut net, 500);
    }
    assert!(checked >= 20 * 3);
}

/// A locate whose routed message is lost (its sender and next hop crashed
/// while it was in flight) is routed again after `query_retry_ms`.
#[test]
fn a_lost_locate_is_routed_again() {
    use metatopia_overlay::{Contact, Message, Output, Peer, Point};
    let cfg = common::config();
    let retry = cfg.query_retry_ms;
    assert!(retry > 0 && retry < cfg.query_timeout_ms);
    let mut p = Peer::new(
        cfg,
        Contact {
            id: NodeId(1),
            pos: Point::new(0, 0),
            seq: 0,
            addr: Vec::new(),
        },
        1,
    );
    p.start_alone(0);
    // A neighbour far to the east, so a locate there leaves this peer.
    let other = Contact {
        id: NodeId(2),
        pos: Point::new(500_000, 0),
        seq: 0,
        addr: Vec::new(),
    };
    p.handle(
        0,
        Message::Hello {
            from: other,
            vn: Vec::new(),
            known: Vec::new(),
        },
    );
    while p.poll_output().is_some() {}
    let target = Point::new(900_000, 0);
    let q = p.locate(10, target).expect("joined");
    let routes = |p: &mut Peer| {
        let mut n = 0;
        while let Some(o) = p.poll_output() {
            if let Output::Send {
                msg: Message::Route(r),
                ..
            } = o
            {
                assert_eq!(r.target, target);
                n += 1;
            }
        }
        n
    };
    assert_eq!(routes(&mut p), 1);
    // The message is dropped; nothing more until the retry is due.
    p.tick(10 + retry - 1);
    assert_eq!(routes(&mut p), 0);
    assert!(p.next_deadline().is_some_and(|d| d <= 10 + retry));
    p.tick(10 + retry);
    assert_eq!(routes(&mut p), 1, "query {q} was not routed again");
}
