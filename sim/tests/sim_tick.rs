//! The tick as players see it: joining, moving, chatting, building, and
//! every kind of refused input changing nothing.

#![allow(clippy::unwrap_used)]

use metatopia_sim::input::{AdminAction, Batch, Event, InputKind, Rejection};
use metatopia_sim::state::{ElementKind, Settings, State};
use metatopia_sim::testing::{Driver, rejections};
use metatopia_sim::{ElementId, Fx, NoScripts, PlayerId, RegionId, StepError, Vec3, snapshot};

const ALICE: PlayerId = PlayerId::from_byte(1);
const BOB: PlayerId = PlayerId::from_byte(2);

fn world() -> Driver {
    Driver::new(State::new(RegionId(1), Settings::default(), &[ALICE]))
}

fn join(name: &str) -> InputKind {
    InputKind::Join { name: name.into() }
}

fn avatar(d: &Driver, p: PlayerId) -> ElementId {
    d.sim.state().players[&p].avatar.expect("online")
}

#[test]
fn join_creates_avatar_and_leave_removes_it() {
    let mut d = world();
    let r = d.tick(&NoScripts, vec![(ALICE, join("Alice")), (BOB, join("Bob"))]);
    assert_eq!(r.accepted, 2);
    let s = d.sim.state();
    let a = avatar(&d, ALICE);
    assert_eq!(s.elements[&a].kind, ElementKind::Avatar);
    assert_eq!(s.elements[&a].pos, s.settings.spawn);
    assert_eq!(s.online().count(), 2);
    d.tick(&NoScripts, vec![(BOB, InputKind::Leave)]);
    let s = d.sim.state();
    assert!(!s.players[&BOB].online);
    assert_eq!(s.elements.len(), 2, "root and Alice's avatar remain");
}

#[test]
fn move_say_and_chat_radius() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice")), (BOB, join("Bob"))]);
    let a = avatar(&d, ALICE);
    d.tick(
        &NoScripts,
        vec![(
            ALICE,
            InputKind::Move {
                element: a,
                to: Vec3::from_ints(10, 10, 0),
            },
        )],
    );
    assert_eq!(d.sim.state().elements[&a].pos, Vec3::from_ints(10, 10, 0));
    let r = d.tick(
        &NoScripts,
        vec![
            (
                ALICE,
                InputKind::Say {
                    text: "near".into(),
                    radius: Some(Fx::from_int(20)),
                },
            ),
            (
                ALICE,
                InputKind::Say {
                    text: "all".into(),
                    radius: None,
                },
            ),
        ],
    );
    let heard: Vec<(String, Vec<PlayerId>)> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Chat { line, listeners } => Some((line.text.clone(), listeners.clone())),
            _ => None,
        })
        .collect();
    // Bob is at the spawn (128,128), far from Alice at (10,10).
    assert_eq!(
        heard,
        vec![
            ("near".into(), vec![ALICE]),
            ("all".into(), vec![ALICE, BOB])
        ]
    );
    let chat: Vec<String> = d.sim.state().chat.iter().map(|l| l.text.clone()).collect();
    assert_eq!(chat, vec!["near", "all"]);
}

#[test]
fn chat_history_is_bounded() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice"))]);
    let max = d.sim.state().settings.chat_history_max as usize;
    for i in 0..(max + 25) {
        d.tick(
            &NoScripts,
            vec![(
                ALICE,
                InputKind::Say {
                    text: format!("line {i}"),
                    radius: None,
                },
            )],
        );
    }
    let chat = &d.sim.state().chat;
    assert_eq!(chat.len(), max);
    assert_eq!(chat.back().unwrap().text, format!("line {}", max + 24));
    assert_eq!(chat.front().unwrap().text, "line 25");
}

/// Long on purpose: one case per refused input, each followed by the same check.
#[test]
fn refused_inputs_change_nothing_but_the_sequence_number() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice")), (BOB, join("Bob"))]);
    let a = avatar(&d, ALICE);
    let b = avatar(&d, BOB);
    let stranger = PlayerId::from_byte(9);
    let cases: Vec<(PlayerId, InputKind, &str)> = vec![
        (
            BOB,
            InputKind::Move {
                element: a,
                to: Vec3::from_ints(1, 1, 0),
            },
            "permission",
        ),
        (
            BOB,
            InputKind::Move {
                element: b,
                to: Vec3::from_ints(-1, 1, 0),
            },
            "outside",
        ),
        (
            BOB,
            InputKind::Move {
                element: b,
                to: Vec3::from_ints(1, 1, 999_999),
            },
            "outside",
        ),
        (
            BOB,
            InputKind::Touch {
                element: ElementId::new(1, 999),
            },
            "unknown element",
        ),
        (
            BOB,
            InputKind::Say {
                text: String::new(),
                radius: None,
            },
            "empty",
        ),
        (
            BOB,
            InputKind::Say {
                text: "x".repeat(5000),
                radius: None,
            },
            "limit",
        ),
        (
            BOB,
            InputKind::Say {
                text: "bell\u{7}".into(),
                radius: None,
            },
            "control",
        ),
        (
            BOB,
            InputKind::Admin(AdminAction::Kick { player: ALICE }),
            "admins only",
        ),
        (
            BOB,
            InputKind::Delete {
                element: ElementId::new(1, 0),
            },
            "root",
        ),
        (
            BOB,
            InputKind::Join {
                name: "again".into(),
            },
            "already",
        ),
        (
            stranger,
            InputKind::Say {
                text: "hi".into(),
                radius: None,
            },
            "not joined",
        ),
        (
            BOB,
            InputKind::Create {
                parent: None,
                name: "x".into(),
                pos: Vec3::from_ints(300, 0, 0),
            },
            "outside",
        ),
    ];
    for (who, kind, expect) in cases {
        let before = d.sim.state().clone();
        let r = d.tick(&NoScripts, vec![(who, kind.clone())]);
        let reasons = rejections(&r.events);
        assert_eq!(reasons.len(), 1, "{kind:?} should be refused");
        let msg = reasons[0].to_string();
        assert!(
            msg.contains(expect),
            "{kind:?}: {msg:?} should mention {expect:?}"
        );
        let mut after = d.sim.state().clone();
        // Only the clock, the tick and the sender's sequence number move.
        after.tick = before.tick;
        after.time_ms = before.time_ms;
        if let Some(q) = before.players.get(&who) {
            let seq = q.last_seq;
            after.players.update(&who, |p| p.last_seq = seq);
        }
        assert_eq!(after, before, "{kind:?} changed the state");
    }
}

#[test]
fn duplicates_and_replays_are_dropped() {
    let mut d = world();
    let join = d.input(ALICE, join("Alice"));
    let say = d.input(
        ALICE,
        InputKind::Say {
            text: "once".into(),
            radius: None,
        },
    );
    let r = d.tick_raw(&NoScripts, vec![join.clone(), say.clone(), say.clone()]);
    assert_eq!((r.accepted, r.duplicates), (2, 1));
    let r = d.tick_raw(&NoScripts, vec![say.clone(), join]);
    assert_eq!((r.accepted, r.duplicates), (0, 2));
    assert_eq!(d.sim.state().chat.len(), 1);
}

#[test]
fn per_player_rate_limit() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice"))]);
    let max = d.sim.state().settings.inputs_per_player_per_tick_max as usize;
    let inputs = (0..max + 3)
        .map(|i| {
            (
                ALICE,
                InputKind::Say {
                    text: format!("{i}"),
                    radius: None,
                },
            )
        })
        .collect();
    let r = d.tick(&NoScripts, inputs);
    assert_eq!(r.accepted as usize, max);
    assert_eq!(
        rejections(&r.events),
        vec![Rejection::RateLimited(max as u32); 3]
    );
}

/// Long on purpose: one scenario told step by step; its assertions read the state the steps before them built.
#[test]
fn hierarchy_create_reparent_delete() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice")), (BOB, join("Bob"))]);
    let pos = Vec3::from_ints(5, 5, 0);
    d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Create {
                parent: None,
                name: "car".into(),
                pos,
            },
        )],
    );
    let car = ElementId::new(1, 3);
    assert_eq!(d.sim.state().elements[&car].kind, ElementKind::Object);
    d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Create {
                parent: Some(car),
                name: "wheel".into(),
                pos,
            },
        )],
    );
    let wheel = ElementId::new(1, 4);
    assert_eq!(d.sim.state().elements[&wheel].kind, ElementKind::Part);
    assert_eq!(d.sim.state().elements[&car].children, vec![wheel]);
    // A cycle is refused.
    let r = d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Reparent {
                element: car,
                parent: wheel,
            },
        )],
    );
    assert!(rejections(&r.events)[0].to_string().contains("cycle"));
    // Moving the car moves the wheel with it.
    d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Move {
                element: car,
                to: Vec3::from_ints(7, 5, 0),
            },
        )],
    );
    assert_eq!(d.sim.state().elements[&wheel].pos, Vec3::from_ints(7, 5, 0));
    // Alice (permanent admin) can reparent Bob's wheel to the root.
    let root = d.sim.state().root();
    d.tick(
        &NoScripts,
        vec![(
            ALICE,
            InputKind::Reparent {
                element: wheel,
                parent: root,
            },
        )],
    );
    assert_eq!(d.sim.state().elements[&wheel].kind, ElementKind::Object);
    assert!(d.sim.state().elements[&car].children.is_empty());
    // Deleting removes the subtree.
    d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Reparent {
                element: wheel,
                parent: car,
            },
        )],
    );
    d.tick(&NoScripts, vec![(BOB, InputKind::Delete { element: car })]);
    assert!(!d.sim.state().elements.contains_key(&car));
    assert!(!d.sim.state().elements.contains_key(&wheel));
}

#[test]
fn depth_and_element_limits() {
    let settings = Settings {
        depth_max: 2,
        elements_max: 6,
        ..Settings::default()
    };
    let mut d = Driver::new(State::new(RegionId(1), settings, &[]));
    d.tick(&NoScripts, vec![(BOB, join("Bob"))]);
    let pos = Vec3::from_ints(1, 1, 1);
    let mut parent = None;
    for i in 0..3 {
        let r = d.tick(
            &NoScripts,
            vec![(
                BOB,
                InputKind::Create {
                    parent,
                    name: format!("n{i}"),
                    pos,
                },
            )],
        );
        if i < 2 {
            assert_eq!(r.accepted, 1, "level {i}");
            parent = Some(ElementId::new(1, 2 + i));
        } else {
            assert!(rejections(&r.events)[0].to_string().contains("deeper"));
        }
    }
    d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Create {
                parent: None,
                name: "a".into(),
                pos,
            },
        )],
    );
    d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Create {
                parent: None,
                name: "b".into(),
                pos,
            },
        )],
    );
    let r = d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Create {
                parent: None,
                name: "c".into(),
                pos,
            },
        )],
    );
    assert!(
        rejections(&r.events)[0]
            .to_string()
            .contains("maximum of 6")
    );
}

#[test]
fn ban_kick_and_banned_join() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice")), (BOB, join("Bob"))]);
    d.tick(
        &NoScripts,
        vec![(ALICE, InputKind::Admin(AdminAction::Ban { player: BOB }))],
    );
    assert!(!d.sim.state().players[&BOB].online);
    let r = d.tick(&NoScripts, vec![(BOB, join("Bob"))]);
    assert_eq!(rejections(&r.events), vec![Rejection::Banned]);
    d.tick(
        &NoScripts,
        vec![(ALICE, InputKind::Admin(AdminAction::Unban { player: BOB }))],
    );
    let r = d.tick(&NoScripts, vec![(BOB, join("Bob"))]);
    assert_eq!(r.accepted, 1);
    d.tick(
        &NoScripts,
        vec![(ALICE, InputKind::Admin(AdminAction::Kick { player: BOB }))],
    );
    assert!(!d.sim.state().players[&BOB].online);
}

#[test]
fn bad_batches_change_nothing() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice"))]);
    let before = (d.sim.state().clone(), d.sim.hash());
    let wrong_tick = Batch {
        tick: 5,
        time_ms: 10_000,
        inputs: vec![],
    };
    assert_eq!(
        d.sim.step(&wrong_tick, &NoScripts),
        Err(StepError::WrongTick {
            expected: 1,
            got: 5
        })
    );
    let back = Batch {
        tick: 1,
        time_ms: 0,
        inputs: vec![],
    };
    d.sim
        .step(
            &Batch {
                tick: 1,
                time_ms: 100,
                inputs: vec![],
            },
            &NoScripts,
        )
        .unwrap();
    let back = Batch { tick: 2, ..back };
    assert!(matches!(
        d.sim.step(&back, &NoScripts),
        Err(StepError::TimeWentBack { .. })
    ));
    assert_ne!(before.1, d.sim.hash());
}

#[test]
fn rollback_is_a_pointer_swap() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice"))]);
    let saved = d.sim.clone();
    let hash = d.sim.hash();
    for i in 0..10 {
        d.tick(
            &NoScripts,
            vec![(
                ALICE,
                InputKind::Say {
                    text: format!("{i}"),
                    radius: None,
                },
            )],
        );
    }
    assert_ne!(d.sim.hash(), hash);
    d.sim = saved;
    assert_eq!(d.sim.hash(), hash);
    assert_eq!(snapshot::state_hash(d.sim.state()), hash);
}

#[test]
fn assets_are_set_by_the_owner_and_hashed_into_the_state() {
    let mut d = world();
    d.tick(&NoScripts, vec![(ALICE, join("Alice")), (BOB, join("Bob"))]);
    d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Create {
                parent: None,
                name: "statue".into(),
                pos: Vec3::from_ints(5, 5, 0),
            },
        )],
    );
    let statue = d.sim.state().elements[&d.sim.state().root()].children[2];
    assert_eq!(d.sim.state().elements[&statue].name, "statue");
    let set = |mesh: Option<[u8; 32]>, element| InputKind::SetAssets {
        element,
        mesh,
        texture: Some([7; 32]),
    };
    let before = d.sim.hash();
    let r = d.tick(&NoScripts, vec![(BOB, set(Some([1; 32]), statue))]);
    assert_eq!(r.accepted, 1);
    let assets = d.sim.state().elements[&statue].assets;
    assert_eq!(assets.mesh, Some([1; 32]));
    assert_eq!(assets.texture, Some([7; 32]));
    assert_ne!(d.sim.hash(), before, "the references are state");
    // Alice's avatar is not Bob's; the root shows nothing; both refused.
    let alice = avatar(&d, ALICE);
    let root = d.sim.state().root();
    let r = d.tick(
        &NoScripts,
        vec![(BOB, set(None, alice)), (BOB, set(None, root))],
    );
    assert_eq!(r.accepted, 0);
    let why = rejections(&r.events);
    assert!(matches!(why[0], Rejection::Permission(_)), "{why:?}");
    assert!(matches!(why[1], Rejection::Invalid(_)), "{why:?}");
    // An admin may; None clears the mesh.
    d.tick(&NoScripts, vec![(ALICE, set(None, statue))]);
    assert_eq!(d.sim.state().elements[&statue].assets.mesh, None);
    // The snapshot round-trips the references.
    let bytes = snapshot::encode_state(d.sim.state());
    let back = snapshot::decode_state(&bytes).unwrap();
    assert_eq!(back.elements[&statue].assets.texture, Some([7; 32]));
}
