//! Avatars crossing between two regions (`Cluster::grid`: region 1 is
//! x in [0, 64), region 2 x in [64, 128); docs/adr/0018): an avatar moved
//! more than the hysteresis into the neighbour is handed over with what
//! it carries (an attached scripted part and its state) at offer + 2, its
//! player follows (offline in 1 with "moved to 2", online in 2), it
//! chats from the other side and is heard back across the border; a
//! region that bans the player refuses it and the player is told; a lost
//! `Final` gives the avatar back to its region. At every tick the avatar
//! is in exactly one region's state, or kept by its source while a
//! verdict is missing.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use metatopia_physics::Cluster;
use metatopia_physics::cluster::ClusterReport;
use metatopia_sim::input::{AdminAction, Event, Input, InputKind, Rejection};
use metatopia_sim::physics::{BorderMessage, Refusal};
use metatopia_sim::state::Settings;
use metatopia_sim::testing::{Rule, RuleHost};
use metatopia_sim::{ElementId, Fx, PlayerId, RegionId, Vec3};

const ALICE: PlayerId = PlayerId::from_byte(1);
const BOB: PlayerId = PlayerId::from_byte(2);
const R1: RegionId = RegionId(1);
const R2: RegionId = RegionId(2);

fn mm(x: i64, y: i64) -> Vec3 {
    Vec3::new(Fx::from_milli(x), Fx::from_milli(y), Fx::ZERO)
}

fn mv(element: ElementId, to: Vec3) -> InputKind {
    InputKind::Move { element, to }
}

struct World {
    cluster: Cluster,
    host: RuleHost,
    /// One counter per player across regions (as a client keeps it).
    seqs: BTreeMap<PlayerId, u64>,
    /// Where the avatar was seen at each tick: (in 1, in 2, kept by 1).
    trail: Vec<(bool, bool, bool)>,
    watched: Option<ElementId>,
}

impl World {
    /// Alice (a founder, admin in both) online in region 1 only; Bob
    /// online in region 2 at world x = 66; a journal script in region 1
    /// at x = 60 (it keeps what it hears).
    fn new() -> World {
        let cluster = Cluster::grid(2, 1, 64, 256, &Settings::default(), &[ALICE], |_| {});
        let mut w = World {
            cluster,
            host: RuleHost::new(),
            seqs: BTreeMap::new(),
            trail: Vec::new(),
            watched: None,
        };
        let join = |name: &str| InputKind::Join { name: name.into() };
        w.tick(vec![(R1, ALICE, join("Alice")), (R2, BOB, join("Bob"))]);
        let b = w.avatar(R2, BOB).unwrap();
        w.tick(vec![(R2, BOB, mv(b, mm(2_000, 10_000)))]);
        let journal = w.host.add("journal", Rule::Journal);
        w.tick(vec![(
            R1,
            ALICE,
            InputKind::Create {
                parent: None,
                name: "journal".into(),
                pos: mm(60_000, 10_000),
            },
        )]);
        let j = w.find(R1, "journal").unwrap();
        w.tick(vec![(
            R1,
            ALICE,
            InputKind::AttachScript {
                element: j,
                source: journal,
            },
        )]);
        w
    }

    fn state(&self, r: RegionId) -> &metatopia_sim::state::State {
        self.cluster.region(r).unwrap().sim().state()
    }

    fn avatar(&self, r: RegionId, p: PlayerId) -> Option<ElementId> {
        self.state(r).players.get(&p).and_then(|p| p.avatar)
    }

    fn find(&self, r: RegionId, name: &str) -> Option<ElementId> {
        self.state(r)
            .elements
            .iter()
            .find(|(_, e)| e.name == name)
            .map(|(id, _)| *id)
    }

    fn script_state(&self, r: RegionId, id: ElementId) -> String {
        let e = self.state(r).elements.get(&id).unwrap();
        String::from_utf8_lossy(&e.script.as_ref().unwrap().state).into_owned()
    }

    /// One tick; returns the report. Records where the watched avatar is.
    fn tick(&mut self, inputs: Vec<(RegionId, PlayerId, InputKind)>) -> ClusterReport {
        let mut by: BTreeMap<RegionId, Vec<Input>> = BTreeMap::new();
        for (r, player, kind) in inputs {
            let seq = self.seqs.entry(player).or_insert(0);
            *seq += 1;
            by.entry(r).or_default().push(Input {
                player,
                seq: *seq,
                kind,
            });
        }
        let rep = self.cluster.tick(&by, &self.host).unwrap();
        for r in rep.regions.values() {
            assert!(r.refused.is_empty(), "{:?}", r.refused);
        }
        assert!(rep.undecodable.is_empty(), "{:?}", rep.undecodable);
        if let Some(a) = self.watched {
            let kept = self.cluster.region(R1).unwrap().border_counts().kept > 0;
            let at = (
                self.state(R1).elements.contains_key(&a),
                self.state(R2).elements.contains_key(&a),
                kept,
            );
            // Never in both; never in neither unless its source keeps it.
            assert!(
                !(at.0 && at.1),
                "avatar in both regions at {}",
                rep.regions[&R1].tick
            );
            assert!(
                at.0 || at.1 || at.2,
                "avatar lost at {}",
                rep.regions[&R1].tick
            );
            self.trail.push(at);
        }
        rep
    }

    fn events(rep: &ClusterReport, r: RegionId) -> Vec<Event> {
        rep.regions[&r].sim.events.clone()
    }

    /// Alice's avatar with a scripted part attached (a counter: it counts
    /// the events it gets), placed at x = 60 in region 1.
    fn equip_alice(&mut self) -> (ElementId, ElementId) {
        let a = self.avatar(R1, ALICE).unwrap();
        self.tick(vec![(R1, ALICE, mv(a, mm(60_000, 10_000)))]);
        let counter = self.host.add("counter", Rule::Counter);
        self.tick(vec![(
            R1,
            ALICE,
            InputKind::Create {
                parent: Some(a),
                name: "charm".into(),
                pos: mm(60_000, 11_000),
            },
        )]);
        let charm = self.find(R1, "charm").unwrap();
        self.tick(vec![(
            R1,
            ALICE,
            InputKind::AttachScript {
                element: charm,
                source: counter,
            },
        )]);
        // Bob's join in region 2 is over; a touch gives the charm a count.
        self.tick(vec![(R1, ALICE, InputKind::Touch { element: charm })]);
        self.tick(vec![]);
        self.watched = Some(a);
        (a, charm)
    }
}

#[test]
fn an_avatar_walks_over_the_border_with_its_inventory_and_chats_back() {
    let mut w = World::new();
    let (a, charm) = w.equip_alice();
    let count_before = w.script_state(R1, charm);
    assert!(!count_before.is_empty(), "the charm counted the touch");
    // Steps of 1 m to the border: inside, then 0.2 m past it (within
    // the hysteresis: it may stand there, nothing is offered).
    for x in [61_000, 62_000, 63_000, 64_200] {
        let rep = w.tick(vec![(R1, ALICE, mv(a, mm(x, 10_000)))]);
        assert_eq!(
            rep.regions[&R1].sim.rejected,
            0,
            "{:?}",
            W::events(&rep, R1)
        );
        assert!(rep.regions[&R1].offers.is_empty(), "offered at x = {x}");
    }
    assert_eq!(
        w.state(R1).elements.get(&a).unwrap().pos,
        mm(64_200, 10_000)
    );
    // 1 m past: offered now, switch at + 2.
    let rep = w.tick(vec![(R1, ALICE, mv(a, mm(65_000, 10_000)))]);
    let offered_at = rep.regions[&R1].tick;
    assert_eq!(rep.regions[&R1].offers, vec![a]);
    let offer = rep.regions[&R1]
        .outbox
        .iter()
        .find_map(|e| match &e.msg {
            BorderMessage::Offer { player, bodies, .. } => Some((*player, *bodies)),
            _ => None,
        })
        .unwrap();
    assert_eq!(offer, (Some(ALICE), 0), "an avatar without a body");
    // While the crossing is under way: a move back is refused, one that
    // keeps it in region 2 is taken.
    let rep = w.tick(vec![
        (R1, ALICE, mv(a, mm(62_000, 10_000))),
        (R1, ALICE, mv(a, mm(65_500, 10_000))),
    ]);
    let ev = W::events(&rep, R1);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::Rejected {
                reason: Rejection::Crossing(R2),
                ..
            }
        )),
        "{ev:?}"
    );
    assert_eq!(rep.regions[&R1].sim.accepted, 1, "{ev:?}");
    assert!(w.state(R1).players.get(&ALICE).unwrap().online);
    // The switch.
    let rep = w.tick(vec![]);
    assert_eq!(rep.regions[&R1].tick, offered_at + 2);
    let crossed = Event::Crossed {
        player: ALICE,
        from: R1,
        to: R2,
    };
    assert!(
        W::events(&rep, R1).contains(&crossed),
        "{:?}",
        W::events(&rep, R1)
    );
    assert!(
        W::events(&rep, R2).contains(&crossed),
        "{:?}",
        W::events(&rep, R2)
    );
    let p1 = w.state(R1).players.get(&ALICE).unwrap().clone();
    assert!(!p1.online);
    assert_eq!((p1.avatar, p1.moved_to), (None, Some(R2)));
    assert!(!w.state(R1).elements.contains_key(&charm));
    let p2 = w.state(R2).players.get(&ALICE).unwrap().clone();
    assert!(p2.online);
    assert_eq!(p2.avatar, Some(a));
    assert_eq!(p2.name, "Alice");
    assert!(p2.first_join_ms.is_some(), "first join here: the arrival");
    assert_eq!(p2.last_seq, p1.last_seq, "the sequence continues");
    // Region coordinates of region 2: 65.5 - 64 = 1.5 m; the charm 1 m
    // beside it, with its script and state.
    assert_eq!(w.state(R2).elements.get(&a).unwrap().pos, mm(1_500, 10_000));
    assert_eq!(
        w.state(R2).elements.get(&charm).unwrap().pos,
        mm(1_500, 11_000)
    );
    // The charm's count came along, and it counted its player's arrival
    // (`on_enter` in region 2 at the switch).
    let count: u64 = count_before.parse().unwrap();
    assert_eq!(w.script_state(R2, charm), (count + 1).to_string());
    // An input to the old region: refused, saying where the avatar went.
    let rep = w.tick(vec![(
        R1,
        ALICE,
        InputKind::Say {
            text: "still here?".into(),
            radius: None,
        },
    )]);
    let ev = W::events(&rep, R1);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::Rejected {
                player: ALICE,
                reason: Rejection::Moved(R2),
                ..
            }
        )),
        "{ev:?}"
    );
    // From the other side: Alice talks, 5.5 m from the journal over the
    // border; the charm on her hears it too, and Bob.
    let rep = w.tick(vec![(
        R2,
        ALICE,
        InputKind::Say {
            text: "hello from two".into(),
            radius: Some(Fx::from_int(10)),
        },
    )]);
    assert_eq!(
        rep.regions[&R2].sim.rejected,
        0,
        "{:?}",
        W::events(&rep, R2)
    );
    let heard: Vec<PlayerId> = W::events(&rep, R2)
        .iter()
        .filter_map(|e| match e {
            Event::Chat { listeners, .. } => Some(listeners.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(heard.contains(&BOB), "{heard:?}");
    w.tick(vec![]);
    w.tick(vec![]);
    let journal = w.find(R1, "journal").unwrap();
    let lines = w.script_state(R1, journal);
    assert!(lines.contains("hello from two"), "{lines}");
    assert!(
        w.script_state(R2, charm).parse::<u64>().unwrap() > count + 1,
        "the charm runs in 2 and heard her"
    );
    // An input not above the sequence region 1 took is a duplicate in 2.
    let last = w.state(R2).players.get(&ALICE).unwrap().last_seq;
    let dup = Input {
        player: ALICE,
        seq: p1.last_seq,
        kind: InputKind::Say {
            text: "replayed".into(),
            radius: None,
        },
    };
    let rep = w
        .cluster
        .tick(&BTreeMap::from([(R2, vec![dup])]), &w.host)
        .unwrap();
    assert_eq!(rep.regions[&R2].sim.duplicates, 1);
    assert_eq!(w.state(R2).players.get(&ALICE).unwrap().last_seq, last);
    // And back: 1 m into region 1.
    let rep = w.tick(vec![(R2, ALICE, mv(a, mm(-1_000, 10_000)))]);
    assert_eq!(rep.regions[&R2].offers, vec![a]);
    w.tick(vec![]);
    let rep = w.tick(vec![]);
    assert!(W::events(&rep, R1).contains(&Event::Crossed {
        player: ALICE,
        from: R2,
        to: R1
    }));
    assert!(w.state(R1).players.get(&ALICE).unwrap().online);
    assert_eq!(
        w.state(R1).elements.get(&a).unwrap().pos,
        mm(63_000, 10_000)
    );
    assert_eq!(w.state(R2).players.get(&ALICE).unwrap().moved_to, Some(R1));
    assert!(
        w.trail.iter().all(|(one, two, _)| one ^ two),
        "{:?}",
        w.trail
    );
}

type W = World;

#[test]
fn a_region_that_bans_the_player_refuses_the_avatar_and_the_player_is_told() {
    let mut w = World::new();
    // Bob in region 1 too; Alice (admin of region 2) bans him there.
    w.tick(vec![
        (R1, BOB, InputKind::Join { name: "Bob".into() }),
        (
            R2,
            ALICE,
            InputKind::Join {
                name: "Alice".into(),
            },
        ),
    ]);
    let rep = w.tick(vec![(
        R2,
        ALICE,
        InputKind::Admin(AdminAction::Ban { player: BOB }),
    )]);
    assert_eq!(
        rep.regions[&R2].sim.rejected,
        0,
        "{:?}",
        W::events(&rep, R2)
    );
    let b = w.avatar(R1, BOB).unwrap();
    w.watched = Some(b);
    w.tick(vec![(R1, BOB, mv(b, mm(63_000, 10_000)))]);
    let rep = w.tick(vec![(R1, BOB, mv(b, mm(65_000, 10_000)))]);
    assert_eq!(rep.regions[&R1].offers, vec![b]);
    // Region 2 refuses at offer + 1; region 1 hears it at offer + 2.
    w.tick(vec![]);
    let rep = w.tick(vec![]);
    let told = Event::CrossRefused {
        player: BOB,
        to: R2,
        reason: Refusal::Banned,
    };
    assert!(
        W::events(&rep, R1).contains(&told),
        "{:?}",
        W::events(&rep, R1)
    );
    // Pushed back inside, still online in 1, nothing in 2.
    let pos = w.state(R1).elements.get(&b).unwrap().pos;
    assert!(
        pos.x < Fx::from_int(64) && pos.x > Fx::from_int(63),
        "{pos}"
    );
    assert!(w.state(R1).players.get(&BOB).unwrap().online);
    for _ in 0..3 {
        w.tick(vec![]);
    }
    assert!(!w.state(R2).elements.contains_key(&b));
    assert!(!w.state(R2).players.get(&BOB).is_some_and(|p| p.online));
    assert!(
        w.trail.iter().all(|(one, two, _)| *one && !*two),
        "{:?}",
        w.trail
    );
}

#[test]
fn a_lost_final_gives_the_avatar_back_and_the_player_is_told() {
    let mut w = World::new();
    let (a, charm) = w.equip_alice();
    w.tick(vec![(R1, ALICE, mv(a, mm(63_000, 10_000)))]);
    w.tick(vec![(R1, ALICE, mv(a, mm(65_000, 10_000)))]);
    w.tick(vec![]);
    // The Final (sent at the end of offer + 1) is lost.
    let dropped = w
        .cluster
        .retain_mail(|e| !matches!(e.msg, BorderMessage::Final { .. }));
    assert_eq!(dropped, 1);
    let rep = w.tick(vec![]);
    // Released into region 1's keeping (no owner) at the switch...
    assert!(
        W::events(&rep, R1)
            .iter()
            .any(|e| matches!(e, Event::Crossed { .. }))
    );
    assert!(!w.state(R2).elements.contains_key(&a));
    // ...and taken back on region 2's verdict.
    let rep = w.tick(vec![]);
    let told = Event::CrossRefused {
        player: ALICE,
        to: R2,
        reason: Refusal::NotAdopted,
    };
    assert!(
        W::events(&rep, R1).contains(&told),
        "{:?}",
        W::events(&rep, R1)
    );
    let p = w.state(R1).players.get(&ALICE).unwrap();
    assert!(p.online);
    assert_eq!((p.avatar, p.moved_to), (Some(a), None));
    assert!(w.state(R1).elements.contains_key(&charm));
    assert!(w.state(R1).elements.get(&a).unwrap().pos.x < Fx::from_int(64));
    assert!(!w.state(R2).players.get(&ALICE).is_some_and(|p| p.online));
    // One tick without an owner (kept by region 1), never two.
    let kept = w.trail.iter().filter(|(one, two, _)| !one && !two).count();
    assert_eq!(kept, 1, "{:?}", w.trail);
}

#[test]
fn an_avatar_cannot_leave_where_there_is_no_neighbour() {
    let mut w = World::new();
    let a = w.avatar(R1, ALICE).unwrap();
    let rep = w.tick(vec![(R1, ALICE, mv(a, mm(-1_000, 10_000)))]);
    let ev = W::events(&rep, R1);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            Event::Rejected {
                reason: Rejection::OutOfBounds(_),
                ..
            }
        )),
        "{ev:?}"
    );
    assert!(w.state(R1).elements.get(&a).unwrap().pos.x >= Fx::ZERO);
}

#[test]
fn a_walking_avatar_walks_over_the_border_and_crosses() {
    let mut w = World::new();
    let a = w.avatar(R1, ALICE).unwrap();
    w.watched = Some(a);
    w.tick(vec![(R1, ALICE, mv(a, mm(63_000, 10_000)))]);
    // 4 m/s east: 0.2 m a tick at 20 Hz; no further input.
    let walk = InputKind::Walk {
        vel: Vec3::new(Fx::from_int(4), Fx::ZERO, Fx::ZERO),
    };
    w.tick(vec![(R1, ALICE, walk)]);
    let mut offered = None;
    for _ in 0..40 {
        let rep = w.tick(Vec::new());
        if !rep.regions[&R1].offers.is_empty() {
            assert_eq!(rep.regions[&R1].offers, vec![a]);
            assert!(offered.is_none(), "offered twice");
            offered = Some(rep.regions[&R1].tick);
        }
        if w.state(R2).elements.contains_key(&a) {
            break;
        }
    }
    let offered = offered.expect("the walking avatar was offered to region 2");
    // It walked on past the border into region 2 and is Alice's there.
    assert!(w.state(R2).elements.contains_key(&a));
    assert!(!w.state(R1).elements.contains_key(&a));
    assert_eq!(w.avatar(R2, ALICE), Some(a));
    assert!(!w.state(R1).players[&ALICE].online);
    assert!(
        w.state(R1)
            .elements
            .values()
            .all(|e| e.owner != Some(ALICE) || e.kind != metatopia_sim::state::ElementKind::Avatar)
    );
    // In exactly one region at every tick (or kept while the verdict is
    // missing), and it crossed at offer + 2.
    assert!(
        w.trail
            .iter()
            .all(|(one, two, kept)| one ^ two || (!one && !two && *kept))
    );
    assert!(w.state(R2).tick >= offered + 2);
}
