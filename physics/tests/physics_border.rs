//! Borders: ghosts, collisions across borders, and ownership handoff.
//!
//! Every scene checks, at every tick, that every body has exactly one
//! owner (none lost, none duplicated), that only owners report events, and
//! that every handoff switches exactly two ticks after its offer.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use metatopia_physics::Cluster;
use metatopia_physics::cluster::ClusterReport;
use metatopia_physics::scene::{self, Rng, Scene};
use metatopia_sim::input::InputKind;
use metatopia_sim::physics::{
    self, BodyKind, BodySpec, BorderMessage, Material, PhysicsEvent, Shape,
};
use metatopia_sim::testing::{Rule, RuleHost};
use metatopia_sim::{ElementId, Fx, NoScripts, RegionId, ScriptHost, Vec3};

fn seed(default: u64) -> u64 {
    let s = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {s} (reproduce with SIM_SEED={s})");
    s
}

fn v(x: i64, y: i64, z: i64) -> Vec3 {
    Vec3::new(Fx::from_milli(x), Fx::from_milli(y), Fx::from_milli(z))
}

/// Checks run after every tick.
#[derive(Default)]
struct Audit {
    bodies: BTreeSet<ElementId>,
    offered: BTreeMap<ElementId, (u64, RegionId)>,
    handoffs: u64,
    collisions: Vec<(u64, RegionId, ElementId, ElementId)>,
    cross_border_collisions: u64,
}

impl Audit {
    fn track_all(&mut self, s: &Scene) {
        self.bodies = s.owners().into_iter().map(|(id, _)| id).collect();
    }

    /// Long on purpose: one assertion block per invariant of the border protocol, each with its message.
    fn check(&mut self, s: &Scene, rep: &ClusterReport, seed: u64) {
        let owners = s.owners();
        let ids: Vec<ElementId> = owners.iter().map(|(id, _)| *id).collect();
        let unique: BTreeSet<ElementId> = ids.iter().copied().collect();
        assert_eq!(
            ids.len(),
            unique.len(),
            "a body has two owners at tick {}: reproduce with SIM_SEED={seed}",
            rep.regions.values().next().unwrap().tick
        );
        assert_eq!(
            unique, self.bodies,
            "bodies lost or created: reproduce with SIM_SEED={seed}"
        );
        let owner: BTreeMap<ElementId, RegionId> = owners.into_iter().collect();
        // Sim ownership agrees with physics ownership.
        for (id, r) in &owner {
            let region = s.cluster.region(*r).unwrap();
            let e = region.sim().state().elements.get(id);
            assert!(
                e.is_some_and(|e| e.owner_region == *r),
                "element {id} missing from its owner's sim: SIM_SEED={seed}"
            );
            for other in s.cluster.regions().values() {
                if other.id() != *r {
                    assert!(
                        !other.sim().state().elements.contains_key(id),
                        "element {id} in two sims: SIM_SEED={seed}"
                    );
                }
            }
        }
        assert!(rep.undecodable.is_empty(), "{:?}", rep.undecodable);
        let mut seen = BTreeSet::new();
        for (rid, r) in &rep.regions {
            assert!(r.refused.is_empty(), "refused envelopes: {:?}", r.refused);
            for root in &r.offers {
                self.offered.insert(*root, (r.tick, *rid));
            }
            for e in &r.events {
                match e {
                    PhysicsEvent::LeftRegion { id, to } => {
                        if let Some((at, from)) = self.offered.remove(id) {
                            assert_eq!(from, *rid);
                            assert_eq!(r.tick, at + 2, "handoff of {id} took more than 2 ticks");
                            self.handoffs += 1;
                        }
                        assert_eq!(
                            owner.get(id),
                            Some(to),
                            "{id} left for {to} but is not there"
                        );
                    }
                    PhysicsEvent::Collided { id, other } => {
                        assert_eq!(
                            owner.get(id),
                            Some(rid),
                            "region {rid} reported a collision of {id}, which it does not own: SIM_SEED={seed}"
                        );
                        assert!(
                            seen.insert((*id, *other)),
                            "collision {id}/{other} reported twice in one tick: SIM_SEED={seed}"
                        );
                        if owner.get(other) != Some(rid) {
                            self.cross_border_collisions += 1;
                        }
                        self.collisions.push((r.tick, *rid, *id, *other));
                    }
                    PhysicsEvent::Moved { id, .. } | PhysicsEvent::AtRest { id } => {
                        assert_eq!(owner.get(id), Some(rid), "event for a body not owned");
                    }
                }
            }
        }
        // Offers either switched (above) or were refused / are pending.
        let now = rep.regions.values().next().unwrap().tick;
        self.offered.retain(|_, (at, _)| *at + 2 > now);
    }
}

fn run(s: &mut Scene, audit: &mut Audit, ticks: usize, seed: u64, host: &dyn ScriptHost) {
    for _ in 0..ticks {
        let rep = s.step(host).unwrap();
        audit.check(s, &rep, seed);
    }
}

#[test]
fn storm_across_one_border_keeps_one_owner_per_body() {
    let seed = seed(11);
    let mut s = scene::border_storm(64, seed).unwrap();
    let mut audit = Audit::default();
    audit.track_all(&s);
    assert_eq!(audit.bodies.len(), 66);
    run(&mut s, &mut audit, 2000, seed, &NoScripts);
    println!("{} handoffs", audit.handoffs);
    // 64 balls cross about every 30 ticks for 2000 ticks.
    assert!(
        audit.handoffs > 64 * 2000 / 60,
        "too few handoffs: {}",
        audit.handoffs
    );
    // Balls collide only with the walls, each owned by one side.
    assert!(!audit.collisions.is_empty());
}

/// Bodies thrown at the point where four regions meet, re-aimed at it
/// every 40 ticks through their current owner, colliding with each other
/// across borders and corners.
#[test]
fn storm_at_the_corner_of_four_regions() {
    let seed = seed(5);
    let mut rng = Rng(seed);
    let mut s = Scene::grid(2, 2, 32, |c| {
        c.space.gravity = Vec3::ZERO;
    });
    s.step(&NoScripts).unwrap();
    let n = 72;
    for i in 0..n {
        let pos = Vec3::new(
            rng.milli(24_000, 40_000),
            rng.milli(24_000, 40_000),
            Fx::from_milli(10_000 + (i % 4) * 1_000),
        );
        let mut spec = scene::ball(400);
        spec.material = scene::bouncy();
        let vel = Vec3::new(rng.milli(-3_000, 3_000), rng.milli(-3_000, 3_000), Fx::ZERO);
        s.spawn(None, pos, spec, vel);
    }
    s.step(&NoScripts).unwrap();
    let mut audit = Audit::default();
    audit.track_all(&s);
    assert_eq!(audit.bodies.len(), n as usize);
    for round in 0..50 {
        // Aim every body back at the corner, through its owner.
        for (id, owner) in s.owners() {
            let r = s.cluster.region(owner).unwrap();
            let Some(p) = r.space().position(id) else {
                continue;
            };
            let corner = v(32_000, 32_000, 11_500);
            let d = corner.saturating_sub(p);
            let k = Fx::from_milli(250);
            let vel = Vec3::new(
                d.x.saturating_mul(k).saturating_add(rng.milli(-500, 500)),
                d.y.saturating_mul(k).saturating_add(rng.milli(-500, 500)),
                d.z.saturating_mul(k),
            );
            s.queue(owner, InputKind::SetVelocity { element: id, vel });
        }
        run(&mut s, &mut audit, 40, seed, &NoScripts);
        let _ = round;
    }
    println!(
        "{} handoffs, {} collisions, {} across borders",
        audit.handoffs,
        audit.collisions.len(),
        audit.cross_border_collisions
    );
    assert!(audit.handoffs > 60, "too few handoffs: {}", audit.handoffs);
    assert!(
        audit.cross_border_collisions > 10,
        "too few collisions across borders"
    );
}

/// Two balls meet head-on exactly on the border: each owner reports its
/// own ball's collision exactly once.
#[test]
fn collision_across_a_border_is_reported_once_by_each_owner() {
    let seed = seed(1);
    let mut s = Scene::grid(2, 1, 64, |c| {
        c.space.gravity = Vec3::ZERO;
    });
    s.step(&NoScripts).unwrap();
    s.spawn(
        None,
        v(61_000, 10_000, 10_000),
        scene::ball(500),
        v(2_000, 0, 0),
    );
    s.spawn(
        None,
        v(67_000, 10_000, 10_000),
        scene::ball(500),
        v(-2_000, 0, 0),
    );
    s.step(&NoScripts).unwrap();
    let mut audit = Audit::default();
    audit.track_all(&s);
    let ids: Vec<ElementId> = audit.bodies.iter().copied().collect();
    run(&mut s, &mut audit, 100, seed, &NoScripts);
    let (a, b) = (ids[0], ids[1]);
    let by = |r: u32, x: ElementId, y: ElementId| {
        audit
            .collisions
            .iter()
            .filter(|(_, rid, i, o)| *rid == RegionId(r) && *i == x && *o == y)
            .count()
    };
    assert_eq!(by(1, a, b), 1, "{:?}", audit.collisions);
    assert_eq!(by(2, b, a), 1, "{:?}", audit.collisions);
    assert_eq!(audit.collisions.len(), 2, "{:?}", audit.collisions);
    // They bounced back: each still on its own side.
    assert_eq!(s.owners(), vec![(a, RegionId(1)), (b, RegionId(2))]);
}

/// Builds the scene of the handoff tests: a ball (with a counting script)
/// flying from region 1 into region 2; returns the ball's id.
fn flying_ball(capacity: u32, host: &mut RuleHost) -> (Scene, ElementId, [u8; 32]) {
    let mut s = Scene::grid(2, 1, 64, |c| {
        c.space.gravity = Vec3::ZERO;
        if c.id == RegionId(2) {
            c.bodies_max = capacity;
        }
    });
    let src = host.add("counter", Rule::Counter);
    s.step(host).unwrap();
    s.spawn(
        None,
        v(60_000, 10_000, 10_000),
        scene::ball(500),
        v(4_000, 0, 0),
    );
    s.step(host).unwrap();
    let ball = s.owners()[0].0;
    s.queue(
        RegionId(1),
        InputKind::AttachScript {
            element: ball,
            source: src,
        },
    );
    (s, ball, src)
}

/// Runs until the ball is offered; queues a push for the pending window.
fn until_offer(s: &mut Scene, audit: &mut Audit, ball: ElementId, host: &dyn ScriptHost) -> u64 {
    for _ in 0..200 {
        let rep = s.step(host).unwrap();
        audit.check(s, &rep, 0);
        if let Some(r) = rep.regions.values().find(|r| r.offers.contains(&ball)) {
            return r.tick;
        }
    }
    panic!("the ball was never offered");
}

fn mass_of_ball(radius: f64) -> f64 {
    4.0 / 3.0 * std::f64::consts::PI * radius * radius * radius
}

#[test]
fn accepted_handoff_moves_body_script_and_influences() {
    let mut host = RuleHost::new();
    let (mut s, ball, src) = flying_ball(10, &mut host);
    let mut audit = Audit::default();
    audit.track_all(&s);
    let offer = until_offer(&mut s, &mut audit, ball, &host);
    // A push arriving while the handoff is pending is numbered, held and
    // forwarded with the final data: applied once, by the new owner.
    s.queue(
        RegionId(1),
        InputKind::Push {
            element: ball,
            impulse: v(0, 1_000, 0),
        },
    );
    let before = s
        .cluster
        .region(RegionId(1))
        .unwrap()
        .sim()
        .state()
        .elements[&ball]
        .clone();
    run(&mut s, &mut audit, 2, 0, &host);
    assert_eq!(audit.handoffs, 1);
    assert_eq!(s.owners(), vec![(ball, RegionId(2))]);
    let r2 = s.cluster.region(RegionId(2)).unwrap();
    let e = &r2.sim().state().elements[&ball];
    assert_eq!(e.owner_region, RegionId(2));
    assert_eq!(e.parent, Some(r2.sim().state().root()));
    assert_eq!(e.script.as_ref().unwrap().source, src);
    assert!(r2.sim().state().scripted.contains(&ball));
    // The script's state travelled (it counted its events in region 1).
    assert_eq!(
        e.script.as_ref().unwrap().state,
        before.script.as_ref().unwrap().state
    );
    assert!(
        !s.cluster
            .region(RegionId(1))
            .unwrap()
            .sim()
            .state()
            .scripted
            .contains(&ball)
    );
    // Applied once in region 2 at the switch tick: dv = J / m.
    run(&mut s, &mut audit, 1, 0, &host);
    let vel = s
        .cluster
        .region(RegionId(2))
        .unwrap()
        .space()
        .motion(ball)
        .unwrap()
        .vel;
    let dv = metatopia_physics::convert::f64(vel.y);
    let want = 1.0 / mass_of_ball(0.5);
    assert!((dv - want).abs() < 1e-6, "push applied {dv}, want {want}");
    let _ = offer;
    // And the ball goes on into region 2.
    run(&mut s, &mut audit, 40, 0, &host);
    assert_eq!(s.owners(), vec![(ball, RegionId(2))]);
}

/// Long on purpose: one scenario told step by step; its assertions read the state the steps before them built.
#[test]
fn influences_after_the_switch_are_forwarded_to_the_new_owner() {
    let mut host = RuleHost::new();
    let (mut s, ball, _) = flying_ball(10, &mut host);
    let mut audit = Audit::default();
    audit.track_all(&s);
    until_offer(&mut s, &mut audit, ball, &host);
    run(&mut s, &mut audit, 2, 0, &host);
    assert_eq!(s.owners(), vec![(ball, RegionId(2))]);
    let vel = |s: &Scene| {
        s.cluster
            .region(RegionId(2))
            .unwrap()
            .space()
            .motion(ball)
            .unwrap()
            .vel
    };
    let before = vel(&s);
    // Region 1 no longer has the ball. A push sent there now is accepted
    // (no rejection) and forwarded, numbered, to region 2.
    s.queue(
        RegionId(1),
        InputKind::Push {
            element: ball,
            impulse: v(0, 1_000, 0),
        },
    );
    let rep = s.step(&host).unwrap();
    audit.check(&s, &rep, 0);
    let r1 = &rep.regions[&RegionId(1)];
    assert_eq!(r1.sim.rejected, 0, "{:?}", r1.sim.events);
    let forwarded: Vec<_> = r1
        .outbox
        .iter()
        .filter_map(|e| match &e.msg {
            BorderMessage::Influences { influences } => Some((e.to, influences.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        forwarded,
        vec![(
            RegionId(2),
            vec![(
                1,
                physics::Command::Impulse {
                    id: ball,
                    impulse: v(0, 1_000, 0)
                }
            )]
        )]
    );
    assert_eq!(vel(&s), before, "not applied before it arrives");
    // Region 2 applies it at its next tick, once: dv = J / m.
    run(&mut s, &mut audit, 1, 0, &host);
    let counts = s.cluster.region(RegionId(2)).unwrap().border_counts();
    assert_eq!(counts.influences_applied, 1);
    let dv = metatopia_physics::convert::f64(vel(&s).y) - metatopia_physics::convert::f64(before.y);
    let want = 1.0 / mass_of_ball(0.5);
    assert!((dv - want).abs() < 1e-6, "push applied {dv}, want {want}");
    let after = vel(&s);
    run(&mut s, &mut audit, 5, 0, &host);
    assert_eq!(vel(&s).y, after.y, "applied exactly once");
    let r1 = s.cluster.region(RegionId(1)).unwrap().border_counts();
    assert_eq!((r1.influences_forwarded, r1.influences_dropped), (1, 0));
    // Past the forwarding window, region 1 refuses pushes for the ball.
    let window = s
        .cluster
        .region(RegionId(1))
        .unwrap()
        .config()
        .forward_ticks;
    run(&mut s, &mut audit, window as usize, 0, &host);
    assert_eq!(s.owners(), vec![(ball, RegionId(2))]);
    s.queue(
        RegionId(1),
        InputKind::Push {
            element: ball,
            impulse: v(0, 1_000, 0),
        },
    );
    let rep = s.step(&host).unwrap();
    audit.check(&s, &rep, 0);
    assert_eq!(rep.regions[&RegionId(1)].sim.rejected, 1);
}

fn verdicts_sent(
    rep: &ClusterReport,
    from: RegionId,
    to: RegionId,
    root: ElementId,
    adopted: bool,
) -> usize {
    rep.regions[&from]
        .outbox
        .iter()
        .filter(|e| {
            e.to == to
                && matches!(e.msg, BorderMessage::Verdict { root: r, adopted: a, .. } if r == root && a == adopted)
        })
        .count()
}

fn asks_sent(rep: &ClusterReport, from: RegionId, root: ElementId) -> usize {
    rep.regions[&from]
        .outbox
        .iter()
        .filter(|e| matches!(e.msg, BorderMessage::Ask { root: r, .. } if r == root))
        .count()
}

/// The final data is lost (or arrives after the switch tick, which is the
/// same): the target's verdict is "not adopted", and the source takes back
/// the group it had released, script and all. For the switch tick itself
/// the group exists only as the source's kept copy.
#[test]
fn late_final_aborts_and_the_source_takes_the_group_back() {
    let mut host = RuleHost::new();
    let (mut s, ball, src) = flying_ball(10, &mut host);
    let mut audit = Audit::default();
    audit.track_all(&s);
    until_offer(&mut s, &mut audit, ball, &host);
    run(&mut s, &mut audit, 1, 0, &host);
    let script = s
        .cluster
        .region(RegionId(1))
        .unwrap()
        .sim()
        .state()
        .elements[&ball]
        .script
        .clone();
    let dropped = s
        .cluster
        .retain_mail(|e| !matches!(e.msg, BorderMessage::Final { .. }));
    assert_eq!(dropped, 1);
    // Switch tick: region 1 got the Accept and releases the ball; region 2
    // has no final data, adopts nothing and says so.
    let rep = s.step(&host).unwrap();
    assert_eq!(s.owners(), vec![]);
    assert_eq!(
        verdicts_sent(&rep, RegionId(2), RegionId(1), ball, false),
        1
    );
    // Next tick: region 1 takes it back, with its script and its state.
    let rep = s.step(&host).unwrap();
    assert_eq!(s.owners(), vec![(ball, RegionId(1))]);
    let r1 = s.cluster.region(RegionId(1)).unwrap();
    assert_eq!(r1.sim().state().elements[&ball].script, script);
    assert_eq!(script.unwrap().source, src);
    assert!(r1.sim().state().scripted.contains(&ball));
    assert!(r1.sim().state().bodies.contains_key(&ball));
    let r2 = s.cluster.region(RegionId(2)).unwrap();
    assert!(!r2.sim().state().elements.contains_key(&ball));
    assert_eq!(r1.border_counts().aborted, 1);
    assert_eq!(r2.border_counts().aborted, 1);
    assert_eq!(r1.border_counts().handoffs_out, 0);
    assert_eq!(r1.border_counts().kept, 0);
    // From here on, one owner at every tick; the ball is offered again and
    // this time crosses.
    let mut audit = Audit::default();
    audit.track_all(&s);
    audit.check(&s, &rep, 0);
    run(&mut s, &mut audit, 40, 0, &host);
    assert_eq!(s.owners(), vec![(ball, RegionId(2))]);
    assert_eq!(audit.handoffs, 1);
}

/// The acceptance is lost: the source, with no answer by the switch tick,
/// releases the group into its keeping (the target may have adopted it);
/// the target did adopt it from the final data, and its verdict lets the
/// source drop its copy. The ball crosses at the switch tick anyway, with
/// one owner.
#[test]
fn late_accept_still_switches_once_the_verdict_comes() {
    let mut host = RuleHost::new();
    let (mut s, ball, _) = flying_ball(10, &mut host);
    let mut audit = Audit::default();
    audit.track_all(&s);
    until_offer(&mut s, &mut audit, ball, &host);
    run(&mut s, &mut audit, 1, 0, &host);
    let dropped = s
        .cluster
        .retain_mail(|e| !matches!(e.msg, BorderMessage::Accept { .. }));
    assert_eq!(dropped, 1);
    let rep = s.step(&host).unwrap();
    assert_eq!(s.owners(), vec![(ball, RegionId(2))]);
    assert_eq!(verdicts_sent(&rep, RegionId(2), RegionId(1), ball, true), 1);
    assert_eq!(
        s.cluster.region(RegionId(1)).unwrap().border_counts().kept,
        1
    );
    s.step(&host).unwrap();
    assert_eq!(s.owners(), vec![(ball, RegionId(2))]);
    let r1 = s.cluster.region(RegionId(1)).unwrap();
    assert_eq!(r1.border_counts().kept, 0);
    assert_eq!(r1.border_counts().handoffs_out, 1);
    assert!(!r1.sim().state().elements.contains_key(&ball));
}

/// The verdict is lost too, again and again (a link down for a while):
/// the source keeps the group and asks every tick; when the link comes
/// back the target answers from its memory and the group has one owner.
/// Nothing is lost and nothing is owned twice meanwhile.
#[test]
fn lost_verdicts_are_asked_for_until_one_comes() {
    let mut host = RuleHost::new();
    let (mut s, ball, _) = flying_ball(10, &mut host);
    let mut audit = Audit::default();
    audit.track_all(&s);
    until_offer(&mut s, &mut audit, ball, &host);
    run(&mut s, &mut audit, 1, 0, &host);
    // The Final is lost, then every verdict for 5 ticks.
    s.cluster
        .retain_mail(|e| !matches!(e.msg, BorderMessage::Final { .. }));
    for k in 0..6 {
        let rep = s.step(&host).unwrap();
        if k > 0 {
            assert_eq!(asks_sent(&rep, RegionId(1), ball), 1, "tick {k}");
        }
        assert_eq!(s.owners(), vec![], "kept by region 1 only, tick {k}");
        s.cluster
            .retain_mail(|e| !matches!(e.msg, BorderMessage::Verdict { .. }));
    }
    // The link is back: the ask is answered, the ball taken back.
    s.step(&host).unwrap();
    s.step(&host).unwrap();
    assert_eq!(s.owners(), vec![(ball, RegionId(1))]);
    assert_eq!(
        s.cluster.region(RegionId(1)).unwrap().border_counts().kept,
        0
    );
}

#[test]
fn refused_handoff_keeps_the_body_on_its_side() {
    let mut host = RuleHost::new();
    let (mut s, ball, _) = flying_ball(0, &mut host);
    let mut audit = Audit::default();
    audit.track_all(&s);
    until_offer(&mut s, &mut audit, ball, &host);
    s.queue(
        RegionId(1),
        InputKind::Push {
            element: ball,
            impulse: v(0, 1_000, 0),
        },
    );
    run(&mut s, &mut audit, 3, 0, &host);
    let r1 = s.cluster.region(RegionId(1)).unwrap();
    assert_eq!(r1.border_counts().refused, 1);
    assert_eq!(s.owners(), vec![(ball, RegionId(1))]);
    // The held push was applied once, by the old owner.
    let m = r1.space().motion(ball).unwrap();
    let dv = metatopia_physics::convert::f64(m.vel.y);
    let want = 1.0 / mass_of_ball(0.5);
    assert!((dv - want).abs() < 1e-6, "push applied {dv}, want {want}");
    // Pushed back inside and stopped along x.
    assert!(m.pos.x < Fx::from_int(64));
    assert_eq!(m.vel.x, Fx::ZERO);
    run(&mut s, &mut audit, 100, 0, &host);
    assert_eq!(s.owners(), vec![(ball, RegionId(1))]);
    assert_eq!(audit.handoffs, 0);
}

/// A ball runs into a ball of region 2 while it is being handed over: the
/// contact is reported once for each ball, by its owner at the time.
#[test]
fn handoff_during_a_collision() {
    let seed = seed(3);
    let mut rng = Rng(seed);
    for _case in 0..6 {
        let mut s = Scene::grid(2, 1, 64, |c| {
            c.space.gravity = Vec3::ZERO;
        });
        s.step(&NoScripts).unwrap();
        // The target sits just past the hysteresis band; vary it so the
        // contact starts at different ticks of the handoff.
        let target_x = rng.milli(65_400, 66_600);
        s.spawn(
            None,
            v(61_000, 10_000, 10_000),
            scene::ball(500),
            v(5_000, 0, 0),
        );
        s.spawn(
            None,
            Vec3::new(target_x, Fx::from_int(10), Fx::from_int(10)),
            scene::ball(500),
            Vec3::ZERO,
        );
        s.step(&NoScripts).unwrap();
        let mut audit = Audit::default();
        audit.track_all(&s);
        let ids: Vec<ElementId> = audit.bodies.iter().copied().collect();
        run(&mut s, &mut audit, 60, seed, &NoScripts);
        let (a, b) = (ids[0], ids[1]);
        let count = |x: ElementId, y: ElementId| {
            audit
                .collisions
                .iter()
                .filter(|(_, _, i, o)| *i == x && *o == y)
                .count()
        };
        assert_eq!(count(a, b), 1, "target {target_x}: {:?}", audit.collisions);
        assert_eq!(count(b, a), 1, "target {target_x}: {:?}", audit.collisions);
        assert!(audit.handoffs >= 1);
    }
}

/// A ball moving back and forth across the border by less than the
/// hysteresis is never handed over; by more, it is handed over once per
/// crossing, not every tick.
#[test]
fn oscillation_on_the_border_does_not_ping_pong() {
    // (speed, start x, most handoffs, fewest handoffs): the narrow swing
    // goes 15 cm past the border (hysteresis 50 cm), the wide one 1 m to
    // either side, for 24 half-periods.
    for (speed_milli, start, max_handoffs, min_handoffs) in
        [(700, 63_800, 0u64, 0u64), (4_000, 63_000, 24, 12)]
    {
        let mut s = Scene::grid(2, 1, 64, |c| {
            c.space.gravity = Vec3::ZERO;
        });
        s.step(&NoScripts).unwrap();
        s.spawn(None, v(start, 10_000, 10_000), scene::ball(300), Vec3::ZERO);
        s.step(&NoScripts).unwrap();
        let mut audit = Audit::default();
        audit.track_all(&s);
        let ball = s.owners()[0].0;
        // Half-periods of 10 ticks (0.5 s): amplitude speed * 0.5 s.
        for half in 0..24 {
            let owner = s.owners()[0].1;
            let sign = if half % 2 == 0 { 1 } else { -1 };
            s.queue(
                owner,
                InputKind::SetVelocity {
                    element: ball,
                    vel: v(sign * speed_milli, 0, 0),
                },
            );
            run(&mut s, &mut audit, 10, 0, &NoScripts);
        }
        println!("speed {speed_milli} mm/s: {} handoffs", audit.handoffs);
        assert!(
            audit.handoffs <= max_handoffs,
            "speed {speed_milli}: {} handoffs",
            audit.handoffs
        );
        assert!(
            audit.handoffs >= min_handoffs,
            "speed {speed_milli}: only {} handoffs",
            audit.handoffs
        );
    }
}

fn vehicle(s: &mut Scene, host: &mut RuleHost) -> (ElementId, Vec<ElementId>) {
    let src = host.add("counter", Rule::Counter);
    let car = BodySpec {
        kind: BodyKind::Dynamic,
        shape: Shape::Cuboid {
            half: v(1_500, 1_000, 500),
        },
        material: Material::default(),
    };
    s.spawn(None, v(58_000, 10_000, 10_000), car, v(3_000, 0, 0));
    s.step(host).unwrap();
    let car_id = s.owners()[0].0;
    for dy in [-500, 500] {
        let seat = BodySpec {
            kind: BodyKind::Seated {
                offset: v(0, dy, 1_000),
            },
            shape: Shape::Ball {
                radius: Fx::from_milli(300),
            },
            material: Material::default(),
        };
        s.spawn(
            Some(car_id),
            v(58_000, 10_000 + dy, 11_000),
            seat,
            Vec3::ZERO,
        );
    }
    s.step(host).unwrap();
    let passengers: Vec<ElementId> = s
        .owners()
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| *id != car_id)
        .collect();
    for p in &passengers {
        s.queue(
            RegionId(1),
            InputKind::AttachScript {
                element: *p,
                source: src,
            },
        );
    }
    (car_id, passengers)
}

#[test]
fn vehicle_with_passengers_crosses_as_one() {
    let mut host = RuleHost::new();
    let mut s = Scene::grid(2, 1, 64, |c| {
        c.space.gravity = Vec3::ZERO;
    });
    s.step(&host).unwrap();
    let (car, passengers) = vehicle(&mut s, &mut host);
    assert_eq!(passengers.len(), 2);
    let mut audit = Audit::default();
    audit.track_all(&s);
    let mut switched_at = None;
    for _ in 0..150 {
        let rep = s.step(&host).unwrap();
        audit.check(&s, &rep, 0);
        let owners: BTreeMap<ElementId, RegionId> = s.owners().into_iter().collect();
        // Always all on one side.
        let sides: BTreeSet<RegionId> = owners.values().copied().collect();
        assert_eq!(sides.len(), 1, "the group is split: {owners:?}");
        if switched_at.is_none() && owners[&car] == RegionId(2) {
            switched_at = Some(rep.regions[&RegionId(2)].tick);
        }
    }
    assert!(switched_at.is_some(), "the vehicle never crossed");
    let r2 = s.cluster.region(RegionId(2)).unwrap();
    let st = r2.sim().state();
    for p in &passengers {
        let e = &st.elements[p];
        assert_eq!(e.parent, Some(car));
        assert!(e.script.is_some() && st.scripted.contains(p));
        // Seated: riding at the offset.
        let pp = r2.space().position(*p).unwrap();
        let cp = r2.space().position(car).unwrap();
        assert!(pp.within(cp, Fx::from_int(2)));
    }
    assert_eq!(st.elements[&car].children, passengers);
}

#[test]
fn vehicle_refused_for_capacity_stays_whole() {
    let mut host = RuleHost::new();
    // Region 2 has room for two bodies; the group is three.
    let mut s = Scene::grid(2, 1, 64, |c| {
        c.space.gravity = Vec3::ZERO;
        if c.id == RegionId(2) {
            c.bodies_max = 2;
        }
    });
    s.step(&host).unwrap();
    let (car, _) = vehicle(&mut s, &mut host);
    let mut audit = Audit::default();
    audit.track_all(&s);
    run(&mut s, &mut audit, 150, 0, &host);
    assert!(s.owners().iter().all(|(_, r)| *r == RegionId(1)));
    assert!(
        s.cluster
            .region(RegionId(1))
            .unwrap()
            .border_counts()
            .refused
            >= 1
    );
    let p = s
        .cluster
        .region(RegionId(1))
        .unwrap()
        .space()
        .position(car)
        .unwrap();
    assert!(p.x < Fx::from_int(65), "{p}");
}

/// A group too big for one handoff message (more elements than
/// `TRANSFER_ELEMENTS_MAX`) is offered, accepted, then cancelled by its
/// owner before the switch: it stays, whole, on its side.
#[test]
fn group_too_big_to_hand_over_stays_whole() {
    let mut s = Scene::grid(2, 1, 64, |c| {
        c.space.gravity = Vec3::ZERO;
    });
    s.step(&NoScripts).unwrap();
    s.spawn(
        None,
        v(62_000, 10_000, 10_000),
        scene::ball(500),
        v(4_000, 0, 0),
    );
    s.step(&NoScripts).unwrap();
    let ball = s.owners()[0].0;
    for i in 0..metatopia_sim::physics::TRANSFER_ELEMENTS_MAX {
        s.queue(
            RegionId(1),
            InputKind::Create {
                parent: Some(ball),
                name: format!("part{i}"),
                pos: v(62_000, 10_000, 10_000),
            },
        );
    }
    let mut audit = Audit::default();
    audit.track_all(&s);
    run(&mut s, &mut audit, 60, 0, &NoScripts);
    assert_eq!(s.owners(), vec![(ball, RegionId(1))]);
    assert_eq!(audit.handoffs, 0);
    let r1 = s.cluster.region(RegionId(1)).unwrap();
    assert!(r1.border_counts().refused >= 1);
    assert_eq!(
        r1.sim().state().elements[&ball].children.len(),
        metatopia_sim::physics::TRANSFER_ELEMENTS_MAX
    );
    assert!(r1.space().position(ball).unwrap().x < Fx::from_int(65));
    let r2 = s.cluster.region(RegionId(2)).unwrap();
    assert_eq!(
        r2.sim().state().elements.len(),
        2,
        "root and the driver's avatar only"
    );
}

fn storm_hashes(ticks: usize, seed: u64) -> Vec<[u8; 32]> {
    let mut s = scene::border_storm(60, seed).unwrap();
    (0..ticks)
        .map(|_| s.step(&NoScripts).unwrap().hash)
        .collect()
}

#[test]
fn storm_snapshot_restore_mid_run_gives_the_same_hashes() {
    let seed = seed(21);
    let straight = storm_hashes(200, seed);
    let mut s = scene::border_storm(60, seed).unwrap();
    let mut hashes: Vec<[u8; 32]> = (0..77).map(|_| s.step(&NoScripts).unwrap().hash).collect();
    let snap = s.cluster.snapshot();
    drop(s);
    let mut s = Scene::without_queue(Scene::new(Cluster::restore(&snap).unwrap()));
    hashes.extend((77..200).map(|_| s.step(&NoScripts).unwrap().hash));
    assert_eq!(hashes, straight, "reproduce with SIM_SEED={seed}");
}

/// The same scene in two processes gives the same hashes: the child is
/// this test binary, re-run with `PHYSICS_CHILD` set.
#[test]
fn storm_in_two_processes_gives_the_same_hashes() {
    let seed = seed(21);
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mine = storm_hashes(150, seed);
    let digest = hex(&mine[149]);
    if std::env::var("PHYSICS_CHILD").is_ok() {
        println!("CHILD-HASH {digest}");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "storm_in_two_processes_gives_the_same_hashes",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("PHYSICS_CHILD", "1")
        .env("SIM_SEED", seed.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let child = text
        .lines()
        .find_map(|l| l.strip_prefix("CHILD-HASH "))
        .unwrap_or_else(|| panic!("child printed no hash: {text}"));
    assert_eq!(child, digest, "reproduce with SIM_SEED={seed}");
}
