//! Chat lines and script messages between regions, the sim's part: what a
//! tick hands its region to route (`TickReport::remote`) and what it does
//! with what neighbours sent (`PhysicsInbox::remote`): chat heard within
//! radius as if said here, a message delivered once to its script, an
//! address that does not resolve refused and counted with nothing else
//! changed, and the per-call cap on sends counting remote ones.

#![allow(clippy::unwrap_used)]

use metatopia_sim::input::{Batch, Event, InputKind};
use metatopia_sim::physics::PhysicsInbox;
use metatopia_sim::remote::{Outbound, Remote};
use metatopia_sim::state::{Settings, Speaker, State};
use metatopia_sim::testing::{Driver, Rule, RuleHost};
use metatopia_sim::{ElementId, Fx, PlayerId, RegionId, ScriptHost, TickReport, Vec3};

const ALICE: PlayerId = PlayerId::from_byte(1);
const BOB: PlayerId = PlayerId::from_byte(2);

/// Region `r` with Alice and Bob online, Bob's avatar at `bob_at`, and
/// Alice's objects at the given positions (ids `r.3 ..`).
fn world(r: u32, bob_at: Vec3, objects: &[Vec3]) -> Driver {
    let mut d = Driver::new(State::new(RegionId(r), Settings::default(), &[ALICE]));
    let host = RuleHost::new();
    d.tick(
        &host,
        vec![
            (
                ALICE,
                InputKind::Join {
                    name: "Alice".into(),
                },
            ),
            (BOB, InputKind::Join { name: "Bob".into() }),
        ],
    );
    let bob = avatar(&d, BOB);
    let mut inputs = vec![(
        BOB,
        InputKind::Move {
            element: bob,
            to: bob_at,
        },
    )];
    for (i, pos) in objects.iter().enumerate() {
        inputs.push((
            ALICE,
            InputKind::Create {
                parent: None,
                name: format!("obj{i}"),
                pos: *pos,
            },
        ));
    }
    let rep = d.tick(&host, inputs);
    assert_eq!(rep.rejected, 0, "{:?}", rep.events);
    d
}

fn avatar(d: &Driver, p: PlayerId) -> ElementId {
    d.sim.state().players.get(&p).unwrap().avatar.unwrap()
}

fn obj(r: u32, i: u64) -> ElementId {
    ElementId::new(r, 3 + i)
}

fn attach(d: &mut Driver, host: &RuleHost, element: ElementId, source: [u8; 32]) {
    let r = d.tick(
        host,
        vec![(ALICE, InputKind::AttachScript { element, source })],
    );
    assert_eq!(r.accepted, 1, "{:?}", r.events);
}

/// One tick with no inputs and these items from neighbours.
fn tick_remote(
    d: &mut Driver,
    host: &dyn ScriptHost,
    remote: Vec<(RegionId, Remote)>,
) -> TickReport {
    let batch = Batch {
        tick: d.sim.tick(),
        time_ms: d.time_ms,
        inputs: Vec::new(),
    };
    d.time_ms += d.tick_ms;
    let inbox = PhysicsInbox {
        remote,
        ..PhysicsInbox::default()
    };
    d.sim.step_with_physics(&batch, host, &inbox).unwrap()
}

fn journal(d: &Driver, element: ElementId) -> Vec<String> {
    let slot = d.sim.state().elements[&element].script.as_ref().unwrap();
    String::from_utf8(slot.state.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn chat_listeners(r: &TickReport) -> Vec<(String, Vec<PlayerId>)> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::Chat { line, listeners } => Some((line.text.clone(), listeners.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_line_said_with_a_radius_is_handed_out_and_heard_within_radius_over_there() {
    // Region 1: Alice at the spawn point (128, 128) says a line with a 10 m
    // radius; the tick hands it out for the region to route.
    let mut one = world(1, Vec3::from_ints(10, 10, 0), &[]);
    let alice = avatar(&one, ALICE);
    let host = RuleHost::new();
    one.tick(
        &host,
        vec![(
            ALICE,
            InputKind::Move {
                element: alice,
                to: Vec3::from_ints(250, 100, 0),
            },
        )],
    );
    let r = one.tick(
        &host,
        vec![(
            ALICE,
            InputKind::Say {
                text: "hello over there".into(),
                radius: Some(Fx::from_int(10)),
            },
        )],
    );
    let line = Remote::Chat {
        from: Speaker::Player(ALICE),
        pos: Vec3::from_ints(250, 100, 0),
        radius: Fx::from_int(10),
        text: "hello over there".into(),
    };
    assert_eq!(
        r.remote,
        vec![Outbound {
            to: None,
            item: line.clone()
        }]
    );
    // A line for the whole region stays in the region.
    let r = one.tick(
        &host,
        vec![(
            ALICE,
            InputKind::Say {
                text: "everyone here".into(),
                radius: None,
            },
        )],
    );
    assert!(r.remote.is_empty());

    // Region 2 (east of region 1: its x = 0 is region 1's x = 256): Bob
    // 4 m past the border (10 m from Alice) hears it, a script 3 m past
    // it hears it this tick, one 20 m past it does not.
    let mut host = RuleHost::new();
    let journal_src = host.add("journal", Rule::Journal);
    let mut two = world(
        2,
        Vec3::from_ints(4, 100, 0),
        &[Vec3::from_ints(3, 100, 0), Vec3::from_ints(20, 100, 0)],
    );
    attach(&mut two, &host, obj(2, 0), journal_src);
    attach(&mut two, &host, obj(2, 1), journal_src);
    let here = line.shifted(Vec3::from_ints(-256, 0, 0));
    let r = tick_remote(&mut two, &host, vec![(RegionId(1), here)]);
    assert_eq!((r.remote_delivered, r.remote_refused), (1, 0));
    assert_eq!(
        chat_listeners(&r),
        vec![("hello over there".to_string(), vec![BOB])]
    );
    assert_eq!(journal(&two, obj(2, 0)), vec!["heard:hello over there"]);
    assert!(journal(&two, obj(2, 1)).is_empty());
    // In the history, from where it was said (outside this region's box).
    let last = two.sim.state().chat.back().unwrap().clone();
    assert_eq!(last.pos, Vec3::from_ints(-6, 100, 0));
    assert_eq!(last.from, Speaker::Player(ALICE));
    // Heard lines are not handed out again.
    assert!(r.remote.is_empty());
}

#[test]
fn a_script_message_to_another_region_is_handed_out_and_delivered_once() {
    let mut host = RuleHost::new();
    let journal_src = host.add("journal", Rule::Journal);
    let relay_src = host.add(
        "relay",
        Rule::RemoteRelay {
            region: RegionId(2),
            target: obj(2, 0),
        },
    );
    let mut one = world(
        1,
        Vec3::from_ints(10, 10, 0),
        &[Vec3::from_ints(250, 10, 0)],
    );
    attach(&mut one, &host, obj(1, 0), relay_src);
    let r = one.tick(
        &host,
        vec![(ALICE, InputKind::Touch { element: obj(1, 0) })],
    );
    let sent: Vec<&Outbound> = r.remote.iter().collect();
    assert_eq!(sent.len(), 1, "{:?}", r.remote);
    assert_eq!(sent[0].to, Some(RegionId(2)));
    let Remote::Message { from, to, body } = &sent[0].item else {
        panic!("{:?}", sent[0]);
    };
    assert_eq!((*from, *to), (obj(1, 0), obj(2, 0)));
    assert!(body.starts_with("touch:"), "{body}");
    // Not queued here.
    assert!(one.sim.state().mailbox.is_empty());

    let mut two = world(2, Vec3::from_ints(100, 100, 0), &[Vec3::from_ints(3, 3, 0)]);
    attach(&mut two, &host, obj(2, 0), journal_src);
    let r = tick_remote(&mut two, &host, vec![(RegionId(1), sent[0].item.clone())]);
    assert_eq!((r.remote_delivered, r.remote_refused), (1, 0));
    assert_eq!(
        journal(&two, obj(2, 0)),
        vec![format!("rmsg:1:{}:{body}", obj(1, 0))]
    );
    // The next tick brings nothing again.
    tick_remote(&mut two, &host, Vec::new());
    assert_eq!(journal(&two, obj(2, 0)).len(), 1);
}

#[test]
fn an_address_that_does_not_resolve_is_refused_and_counted_and_changes_nothing() {
    let mut host = RuleHost::new();
    let journal_src = host.add("journal", Rule::Journal);
    let mut two = world(
        2,
        Vec3::from_ints(100, 100, 0),
        &[Vec3::from_ints(3, 3, 0), Vec3::from_ints(4, 4, 0)],
    );
    attach(&mut two, &host, obj(2, 0), journal_src);
    let mut twin = two.clone();
    let msg = |to: ElementId, body: &str| {
        (
            RegionId(1),
            Remote::Message {
                from: obj(1, 0),
                to,
                body: body.into(),
            },
        )
    };
    let long = "x".repeat(Settings::default().text_bytes_max as usize + 1);
    let r = tick_remote(
        &mut two,
        &host,
        vec![
            // No such element; an element without a script; text over
            // this region's limit.
            msg(ElementId::new(2, 999), "hi"),
            msg(obj(2, 1), "hi"),
            msg(obj(2, 0), &long),
        ],
    );
    assert_eq!((r.remote_delivered, r.remote_refused), (0, 3));
    let t = tick_remote(&mut twin, &host, Vec::new());
    assert_eq!(r.hash, t.hash, "a refused item changes nothing");
    assert!(journal(&two, obj(2, 0)).is_empty());
}

#[test]
fn remote_sends_count_against_the_per_call_cap_and_to_this_region_stay_local() {
    let mut host = RuleHost::new();
    let journal_src = host.add("journal", Rule::Journal);
    let relay_here = host.add(
        "relay-here",
        Rule::RemoteRelay {
            region: RegionId(1),
            target: obj(1, 1),
        },
    );
    let mut one = world(
        1,
        Vec3::from_ints(10, 10, 0),
        &[Vec3::from_ints(20, 10, 0), Vec3::from_ints(30, 10, 0)],
    );
    attach(&mut one, &host, obj(1, 0), relay_here);
    attach(&mut one, &host, obj(1, 1), journal_src);
    // Addressed to its own region: an ordinary message, next tick.
    let r = one.tick(
        &host,
        vec![(ALICE, InputKind::Touch { element: obj(1, 0) })],
    );
    assert!(r.remote.is_empty());
    one.tick(&host, Vec::new());
    let j = journal(&one, obj(1, 1));
    assert_eq!(j.len(), 1);
    assert!(
        j[0].starts_with(&format!("msg:{}:touch:", obj(1, 0))),
        "{j:?}"
    );

    // More sends than `script_sends_per_tick_max` in one call: the whole
    // output is refused (a fault), nothing handed out.
    let relay_away = host.add(
        "relay-away",
        Rule::RemoteRelay {
            region: RegionId(2),
            target: obj(2, 0),
        },
    );
    attach(&mut one, &host, obj(1, 0), relay_away);
    let max = one.sim.state().settings.script_sends_per_tick_max as usize;
    let touches = (0..=max)
        .map(|_| (ALICE, InputKind::Touch { element: obj(1, 0) }))
        .collect();
    let r = one.tick(&host, touches);
    assert!(r.remote.is_empty(), "{:?}", r.remote);
    assert!(
        r.events
            .iter()
            .any(|e| matches!(e, Event::ScriptFault { error, .. } if error.contains("messages in one tick"))),
        "{:?}",
        r.events
    );
}
