//! Walking avatars (ADR 0017): a `Walk` input sets the sender's avatar's
//! velocity and every tick moves it by `vel / tick_rate_hz`; it stops at
//! the region's bounds, on a `Move`, on leaving or being kicked, on a zero
//! velocity and under a lowered speed limit. Too fast is refused.

#![allow(clippy::unwrap_used)]

use metatopia_sim::input::{AdminAction, InputKind, Rejection, SettingsPatch};
use metatopia_sim::state::{Settings, State};
use metatopia_sim::testing::{Driver, rejections};
use metatopia_sim::{ElementId, Fx, NoScripts, PlayerId, RegionId, Vec3, snapshot};

const ALICE: PlayerId = PlayerId::from_byte(1);
const BOB: PlayerId = PlayerId::from_byte(2);

/// Alice (the founding admin) and Bob online at the spawn, (128, 128, 0).
fn world() -> Driver {
    let mut d = Driver::new(State::new(RegionId(1), Settings::default(), &[ALICE]));
    let join = |name: &str| InputKind::Join { name: name.into() };
    let r = d.tick(&NoScripts, vec![(ALICE, join("Alice")), (BOB, join("Bob"))]);
    assert_eq!(r.accepted, 2);
    d
}

fn fx(text: &str) -> Fx {
    text.parse().unwrap()
}

fn v(x: &str, y: &str, z: &str) -> Vec3 {
    Vec3::new(fx(x), fx(y), fx(z))
}

fn walk(vel: Vec3) -> InputKind {
    InputKind::Walk { vel }
}

fn avatar(d: &Driver, p: PlayerId) -> ElementId {
    d.sim.state().players[&p].avatar.expect("online")
}

fn pos(d: &Driver, p: PlayerId) -> Vec3 {
    d.sim.state().elements[&avatar(d, p)].pos
}

fn idle(d: &mut Driver, ticks: usize) {
    for _ in 0..ticks {
        d.tick(&NoScripts, vec![]);
    }
}

#[test]
fn a_walker_covers_its_speed_times_the_time_and_stops_at_zero() {
    let mut d = world();
    // 2.5 m/s east and 1.25 m/s south at 20 Hz: (0.125, -0.0625) a tick,
    // exact in fixed point. The tick of the input is the first stride.
    d.tick(&NoScripts, vec![(ALICE, walk(v("2.5", "-1.25", "0")))]);
    idle(&mut d, 9);
    assert_eq!(pos(&d, ALICE), v("129.25", "127.375", "0"), "10 strides");
    assert_eq!(pos(&d, BOB), Vec3::from_ints(128, 128, 0), "Bob stands");
    let a = avatar(&d, ALICE);
    assert_eq!(d.sim.state().walking.get(&a), Some(&v("2.5", "-1.25", "0")));
    // A new heading replaces the old one.
    d.tick(&NoScripts, vec![(ALICE, walk(v("0", "0", "2.5")))]);
    assert_eq!(pos(&d, ALICE), v("129.25", "127.375", "0.125"));
    // Zero stops it where it is.
    d.tick(&NoScripts, vec![(ALICE, walk(Vec3::ZERO))]);
    idle(&mut d, 5);
    assert_eq!(pos(&d, ALICE), v("129.25", "127.375", "0.125"));
    assert!(d.sim.state().walking.is_empty());
}

#[test]
fn a_walker_stops_inside_at_the_bound() {
    let mut d = world();
    let a = avatar(&d, ALICE);
    let to = v("255.5", "128", "0");
    d.tick(
        &NoScripts,
        vec![(ALICE, InputKind::Move { element: a, to })],
    );
    // 4 m/s east: 0.2 m a tick; 255.7, 255.9, then 256.1 is outside.
    d.tick(&NoScripts, vec![(ALICE, walk(v("4", "0", "0")))]);
    d.tick(&NoScripts, vec![]);
    assert_eq!(d.sim.state().walking.len(), 1, "still inside: walks on");
    d.tick(&NoScripts, vec![]);
    let edge = Fx::from_int(256).checked_sub(Fx::DELTA).unwrap();
    assert_eq!(pos(&d, ALICE).x, edge, "clamped to the last point inside");
    assert!(d.sim.state().in_bounds(pos(&d, ALICE)));
    assert!(d.sim.state().walking.is_empty(), "stopped at the bound");
    idle(&mut d, 3);
    assert_eq!(pos(&d, ALICE).x, edge);
    // Walking west again is allowed.
    d.tick(&NoScripts, vec![(ALICE, walk(v("-4", "0", "0")))]);
    assert!(pos(&d, ALICE).x < edge);
}

#[test]
fn a_walker_carries_its_attachments() {
    let mut d = world();
    let a = avatar(&d, ALICE);
    let r = d.tick(
        &NoScripts,
        vec![(
            ALICE,
            InputKind::Create {
                parent: Some(a),
                name: "hat".into(),
                pos: Vec3::from_ints(128, 128, 2),
            },
        )],
    );
    assert_eq!(r.accepted, 1);
    let hat = d.sim.state().elements[&a].children[0];
    d.tick(&NoScripts, vec![(ALICE, walk(v("2.5", "0", "0")))]);
    idle(&mut d, 9);
    assert_eq!(d.sim.state().elements[&hat].pos, v("129.25", "128", "2"));
}

#[test]
fn moving_leaving_and_kicks_stop_walkers() {
    let mut d = world();
    let east = walk(v("1", "0", "0"));
    d.tick(&NoScripts, vec![(ALICE, east.clone()), (BOB, east.clone())]);
    assert_eq!(d.sim.state().walking.len(), 2);
    // A Move of the avatar places it and stops it.
    let a = avatar(&d, ALICE);
    let to = Vec3::from_ints(10, 10, 0);
    d.tick(
        &NoScripts,
        vec![(ALICE, InputKind::Move { element: a, to })],
    );
    idle(&mut d, 3);
    assert_eq!(pos(&d, ALICE), to);
    assert!(!d.sim.state().walking.contains_key(&a));
    // A refused Move (outside the region) changes nothing: Bob walks on.
    let b = avatar(&d, BOB);
    let out = Vec3::from_ints(300, 0, 0);
    let r = d.tick(
        &NoScripts,
        vec![(
            BOB,
            InputKind::Move {
                element: b,
                to: out,
            },
        )],
    );
    assert!(matches!(
        rejections(&r.events)[..],
        [Rejection::OutOfBounds(_)]
    ));
    assert!(d.sim.state().walking.contains_key(&b));
    // Leaving stops it; joining again stands still.
    d.tick(&NoScripts, vec![(BOB, InputKind::Leave)]);
    assert!(d.sim.state().walking.is_empty());
    d.tick(
        &NoScripts,
        vec![(BOB, InputKind::Join { name: "Bob".into() })],
    );
    let spawn = d.sim.state().settings.spawn;
    idle(&mut d, 2);
    assert_eq!(pos(&d, BOB), spawn);
    // A kick stops it.
    d.tick(&NoScripts, vec![(BOB, east)]);
    assert_eq!(d.sim.state().walking.len(), 1);
    d.tick(
        &NoScripts,
        vec![(ALICE, InputKind::Admin(AdminAction::Kick { player: BOB }))],
    );
    assert!(d.sim.state().walking.is_empty());
}

#[test]
fn too_fast_and_not_joined_are_refused_and_change_nothing() {
    let mut d = world();
    // (3, 3, 0) is 4.24 m/s, over the default limit of 4.
    let before = d.sim.state().clone();
    let r = d.tick(&NoScripts, vec![(ALICE, walk(v("3", "3", "0")))]);
    assert_eq!(r.accepted, 0);
    match &rejections(&r.events)[..] {
        [Rejection::OutOfBounds(why)] => {
            assert!(why.contains("walk_speed_max of 4 m/s"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(d.sim.state().walking.is_empty());
    assert_eq!(d.sim.state().elements, before.elements);
    // Exactly the limit is allowed.
    let r = d.tick(&NoScripts, vec![(ALICE, walk(v("0", "4", "0")))]);
    assert_eq!(r.accepted, 1);
    // Carol never joined.
    let carol = PlayerId::from_byte(3);
    let r = d.tick(&NoScripts, vec![(carol, walk(v("1", "0", "0")))]);
    assert_eq!(rejections(&r.events), vec![Rejection::NotJoined]);
    assert_eq!(d.sim.state().walking.len(), 1);
}

#[test]
fn the_speed_limit_is_a_setting() {
    let mut d = world();
    let settings = |v: Fx| {
        InputKind::Admin(AdminAction::Settings(SettingsPatch {
            walk_speed_max: Some(v),
            ..SettingsPatch::default()
        }))
    };
    d.tick(
        &NoScripts,
        vec![
            (ALICE, walk(v("3", "0", "0"))),
            (BOB, walk(v("1", "0", "0"))),
        ],
    );
    // Out of range: refused, the limit stays.
    let r = d.tick(
        &NoScripts,
        vec![(ALICE, settings(fx("-1"))), (ALICE, settings(fx("101")))],
    );
    assert_eq!(r.rejected, 2);
    assert_eq!(d.sim.state().settings.walk_speed_max, Fx::from_int(4));
    // Bob may not change it.
    let r = d.tick(&NoScripts, vec![(BOB, settings(fx("10")))]);
    assert!(matches!(
        rejections(&r.events)[..],
        [Rejection::Permission(_)]
    ));
    // Lowered to 2: Alice (3 m/s) stops, Bob (1 m/s) walks on.
    d.tick(&NoScripts, vec![(ALICE, settings(fx("2")))]);
    let s = d.sim.state();
    assert_eq!(s.settings.walk_speed_max, Fx::from_int(2));
    assert!(!s.walking.contains_key(&avatar(&d, ALICE)));
    assert!(s.walking.contains_key(&avatar(&d, BOB)));
    // Raised to 10: 9 m/s is fine now.
    d.tick(&NoScripts, vec![(ALICE, settings(fx("10")))]);
    let r = d.tick(&NoScripts, vec![(ALICE, walk(v("9", "0", "0")))]);
    assert_eq!(r.accepted, 1);
}

#[test]
fn walking_is_in_the_hash_and_survives_a_snapshot() {
    let mut d = world();
    let mut still = world();
    assert_eq!(d.sim.hash(), still.sim.hash());
    // Walking at a speed so slow it moves nothing this tick (below the
    // fixed-point step): only the walking state differs, and the hash sees it.
    let crawl = Vec3::new(Fx::DELTA, Fx::ZERO, Fx::ZERO);
    d.tick(&NoScripts, vec![(ALICE, walk(crawl))]);
    still.tick(&NoScripts, vec![(ALICE, walk(Vec3::ZERO))]);
    assert_eq!(d.sim.state().elements, still.sim.state().elements);
    assert_ne!(d.sim.hash(), still.sim.hash(), "walking is state");
    // Mid-walk snapshot: decoded, it has the same hash and walks on the same.
    d.tick(&NoScripts, vec![(BOB, walk(v("-3", "1", "0")))]);
    let bytes = snapshot::encode_state(d.sim.state());
    let back = snapshot::decode_state(&bytes).unwrap();
    assert_eq!(&back, d.sim.state());
    let mut restored = Driver::new(back);
    restored.time_ms = d.time_ms;
    assert_eq!(restored.sim.hash(), d.sim.hash());
    for _ in 0..20 {
        let a = d.tick(&NoScripts, vec![]);
        let b = restored.tick(&NoScripts, vec![]);
        assert_eq!(a.hash, b.hash);
    }
    assert_eq!(pos(&restored, BOB), pos(&d, BOB));
    assert_ne!(pos(&d, BOB), Vec3::from_ints(128, 128, 0));
}
