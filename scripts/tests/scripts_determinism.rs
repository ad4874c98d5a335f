//! Determinism: the same inputs give the same state hash with fresh hosts,
//! with 1 and 2 threads, and after a restart from a snapshot with cold
//! caches (a cached Lua state computes exactly what a fresh one would).
//! The two-process check runs the real binary: node/tests/node_scripts.rs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{World, faults};
use metatopia_scripts::Host;
use metatopia_sim::ElementId;
use metatopia_sim::input::InputKind;
use metatopia_sim::testing::Driver;

/// The shipped example: iterates string keys and integer keys, draws random
/// numbers, does fx maths and sets timers; the state records all of it.
pub const MIXER: &str = include_str!("../../examples/scripts/mixer.lua");

/// `state.table_keys` of the first mixer after the run below.
const TABLE_KEY_ORDER: &str = "11,12,-1,-2,-3,2,3,4,5,6,7,8,9,10,-4";

fn run(world: &mut World, scripts: &[ElementId], ticks: u32) {
    for t in 0..ticks {
        let touch: Vec<ElementId> = scripts
            .iter()
            .copied()
            .filter(|e| (e.counter + u64::from(t)) % 3 != 0)
            .collect();
        let r = world.touch(&touch);
        assert!(faults(&r).is_empty(), "{:?}", faults(&r));
    }
}

fn build() -> (World, Vec<ElementId>) {
    let mut w = World::new();
    let ids = (0..6)
        .map(|i| w.scripted(&format!("m{i}"), MIXER))
        .collect();
    (w, ids)
}

#[test]
fn fresh_hosts_and_thread_counts_agree() {
    let hash_with = |threads: usize| {
        metatopia_sim::testing::on_threads(threads, || {
            let (mut w, ids) = build();
            run(&mut w, &ids, 30);
            (
                w.driver.sim.hash(),
                w.text(ids[0], "order"),
                w.text(ids[0], "fx"),
                w.text(ids[0], "table_keys"),
            )
        })
    };
    let one = hash_with(1);
    let two = hash_with(2);
    let again = hash_with(2);
    assert_eq!(one, two);
    assert_eq!(two, again);
    assert!(one.1.unwrap().contains("alpha"));
    assert!(one.2.is_some());
    // Table and function keys: eleven tables and four functions, in the
    // order the patched Lua gives (address hashing would give another
    // order in nearly every process).
    let keys = one.3.unwrap();
    assert_eq!(keys.split(',').count(), 15, "{keys}");
    assert_eq!(keys, TABLE_KEY_ORDER);
}

#[test]
fn restart_with_cold_caches_gives_the_same_hash() {
    let (mut warm, ids) = build();
    run(&mut warm, &ids, 10);
    // A replica restarting here: the state only, a brand-new host.
    let snapshot = warm.driver.sim.state().clone();
    let mut driver: Driver = warm.driver.clone();
    driver.sim = metatopia_sim::Sim::new(snapshot);
    let mut cold = World {
        driver,
        host: Host::new(warm.sources.clone()).unwrap(),
        sources: warm.sources.clone(),
    };
    run(&mut warm, &ids, 20);
    run(&mut cold, &ids, 20);
    assert_eq!(warm.driver.sim.hash(), cold.driver.sim.hash());
    assert!(warm.int(ids[1], "timers").unwrap() > 0);
}

#[test]
fn hot_reload_keeps_state() {
    let mut w = World::new();
    let e = w.scripted("c", common::COUNTER);
    for _ in 0..3 {
        w.touch(&[e]);
    }
    assert_eq!(w.int(e, "n"), Some(3));
    w.attach(
        e,
        "function on_touch() state.n = state.n + 100; state.v = 2 end",
    );
    let r = w.touch(&[e]);
    assert!(faults(&r).is_empty());
    assert_eq!(w.int(e, "n"), Some(103));
    assert_eq!(w.int(e, "v"), Some(2));
}

#[test]
fn state_survives_between_ticks_and_rejects_bad_values() {
    let mut w = World::new();
    let e = w.scripted(
        "s",
        r#"
function on_touch()
  state.list = state.list or {}
  state.list[#state.list + 1] = fx("0.5") * #state.list
  state.nested = { deep = { deeper = { true, false, "x" } } }
end
"#,
    );
    for _ in 0..3 {
        let r = w.touch(&[e]);
        assert!(faults(&r).is_empty(), "{:?}", faults(&r));
    }
    let f = w.field(e, "list").unwrap();
    match f {
        metatopia_scripts::codec::Data::Table(v) => assert_eq!(v.len(), 3),
        other => panic!("{other:?}"),
    }
    // A function in state is refused with a clear error; state unchanged.
    let before = w.state_of(e);
    w.attach(e, "function on_touch() state.f = on_touch end");
    let r = w.touch(&[e]);
    assert!(faults(&r)[0].1.contains("state.f is a function"));
    assert_eq!(w.state_of(e), before);
}

#[test]
fn handlers_get_their_events() {
    let mut w = World::new();
    let a = w.scripted(
        "a",
        r#"
function on_touch(by, element) state.by = by; state.el = element; send(world.me(), "ping") ; say("hello") end
function on_message(from, body) state.msg = from .. ":" .. body end
function on_enter(p) state.entered = p end
function on_leave(p) state.left = p end
"#,
    );
    let b = w.scripted(
        "b",
        "function on_heard(from, text) state.heard = from .. ':' .. text end",
    );
    w.touch(&[a]);
    assert_eq!(w.text(a, "by").unwrap(), common::OWNER.to_string());
    assert_eq!(w.text(a, "el").unwrap(), a.to_string());
    w.tick(vec![]);
    assert_eq!(w.text(a, "msg").unwrap(), format!("{a}:ping"));
    assert_eq!(w.text(b, "heard").unwrap(), format!("{a}:hello"));
    w.tick(vec![InputKind::Leave]);
    assert_eq!(w.text(a, "left").unwrap(), common::OWNER.to_string());
}
