//! The script host contract, with the Rust rule host: canonical inbox
//! order, transactional outputs, suspension, messages and timers, and
//! results that do not depend on the number of threads.

#![allow(clippy::unwrap_used)]

use metatopia_sim::input::{Event, InputKind};
use metatopia_sim::state::{Settings, State};
use metatopia_sim::testing::{Driver, Rule, RuleHost};
use metatopia_sim::{ElementId, PlayerId, RegionId, Vec3, snapshot};

const ALICE: PlayerId = PlayerId::from_byte(1);
const BOB: PlayerId = PlayerId::from_byte(2);

/// Alice and Bob online; Alice owns `n` objects (ids 1.3 ..).
fn world(n: u64) -> Driver {
    let mut d = Driver::new(State::new(RegionId(1), Settings::default(), &[ALICE]));
    d.tick(
        &RuleHost::new(),
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
    let creates = (0..n)
        .map(|i| {
            (
                ALICE,
                InputKind::Create {
                    parent: None,
                    name: format!("obj{i}"),
                    pos: Vec3::from_ints(10 + i as i32 % 200, 10, 0),
                },
            )
        })
        .collect();
    d.tick(&RuleHost::new(), creates);
    d
}

fn obj(i: u64) -> ElementId {
    ElementId::new(1, 3 + i)
}

fn attach(d: &mut Driver, host: &RuleHost, element: ElementId, source: [u8; 32]) {
    let r = d.tick(
        host,
        vec![(ALICE, InputKind::AttachScript { element, source })],
    );
    assert_eq!(r.accepted, 1, "{:?}", r.events);
}

/// Attaches `sources` in turn to objects `0..n`, in one tick.
fn attach_round_robin(d: &mut Driver, host: &RuleHost, n: u64, sources: &[[u8; 32]]) {
    let attaches = (0..n)
        .map(|i| {
            let source = sources[i as usize % sources.len()];
            (
                ALICE,
                InputKind::AttachScript {
                    element: obj(i),
                    source,
                },
            )
        })
        .collect();
    d.tick(host, attaches);
}

fn journal(d: &Driver, element: ElementId) -> Vec<String> {
    let slot = d.sim.state().elements[&element].script.as_ref().unwrap();
    String::from_utf8(slot.state.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn inboxes_are_in_canonical_order_which_differs_per_script() {
    let mut host = RuleHost::new();
    let src = host.add("journal", Rule::Journal);
    let mut d = world(2);
    attach(&mut d, &host, obj(0), src);
    attach(&mut d, &host, obj(1), src);
    d.tick(&host, bob_says(12));
    let a = journal(&d, obj(0));
    let b = journal(&d, obj(1));
    let mut sorted_a = a.clone();
    sorted_a.sort();
    let mut sorted_b = b.clone();
    sorted_b.sort();
    assert_eq!(sorted_a, sorted_b, "both heard the same lines");
    assert_eq!(a.len(), 12);
    assert_ne!(a, b, "two scripts see the same events in different orders");
    let arrival: Vec<String> = (0..12).map(|i| format!("heard:m{i}")).collect();
    assert_ne!(a, arrival, "order is not arrival order");
}

#[test]
fn touch_reaches_the_nearest_scripted_ancestor() {
    let mut host = RuleHost::new();
    let src = host.add("journal", Rule::Journal);
    let mut d = world(1);
    d.tick(
        &host,
        vec![(
            ALICE,
            InputKind::Create {
                parent: Some(obj(0)),
                name: "part".into(),
                pos: Vec3::from_ints(1, 1, 1),
            },
        )],
    );
    let part = ElementId::new(1, 4);
    attach(&mut d, &host, obj(0), src);
    d.tick(&host, vec![(BOB, InputKind::Touch { element: part })]);
    assert_eq!(journal(&d, obj(0)), vec![format!("touch:{BOB:?}:{part}")]);
}

#[test]
fn writes_outside_the_subtree_discard_the_whole_output() {
    let mut host = RuleHost::new();
    let target = obj(1);
    let src = host.add("trespasser", Rule::Trespasser { target });
    let mut d = world(2);
    attach(&mut d, &host, obj(0), src);
    let before = d.sim.state().elements[&target].clone();
    let r = d.tick(&host, vec![(BOB, InputKind::Touch { element: obj(0) })]);
    let fault = r.events.iter().find_map(|e| match e {
        Event::ScriptFault {
            script,
            owner,
            error,
            ..
        } => Some((*script, *owner, error.clone())),
        _ => None,
    });
    let (script, owner, error) = fault.expect("a fault event");
    assert_eq!((script, owner), (obj(0), Some(ALICE)));
    assert!(error.contains("does not own"), "{error}");
    assert_eq!(d.sim.state().elements[&target], before);
    let slot = d.sim.state().elements[&obj(0)].script.clone().unwrap();
    assert!(
        slot.state.is_empty(),
        "the rejected state write did not apply"
    );
    assert_eq!(slot.faults, 1);
}

#[test]
fn repeated_faults_suspend_the_script_and_others_carry_on() {
    let mut host = RuleHost::new();
    let crash = host.add("crash", Rule::Crash);
    let counter = host.add("counter", Rule::Counter);
    let mut d = world(2);
    attach(&mut d, &host, obj(0), crash);
    attach(&mut d, &host, obj(1), counter);
    let max = d.sim.state().settings.script_faults_max;
    for i in 0..(max + 3) {
        let r = d.tick(
            &host,
            vec![(
                BOB,
                InputKind::Say {
                    text: format!("{i}"),
                    radius: None,
                },
            )],
        );
        let suspended = r.events.iter().any(|e| {
            matches!(
                e,
                Event::ScriptFault {
                    suspended: true,
                    ..
                }
            )
        });
        assert_eq!(suspended, i + 1 == max, "tick {i}");
    }
    let s = d.sim.state();
    assert!(s.elements[&obj(0)].script.as_ref().unwrap().suspended);
    // The counter heard every line (plus its own "count" lines from the tick before).
    let count: u64 = String::from_utf8(s.elements[&obj(1)].script.as_ref().unwrap().state.clone())
        .unwrap()
        .parse()
        .unwrap();
    assert!(count >= u64::from(max + 3), "count {count}");
    // Re-attaching (a new version) clears the suspension.
    attach(&mut d, &host, obj(0), counter);
    assert!(
        !d.sim.state().elements[&obj(0)]
            .script
            .as_ref()
            .unwrap()
            .suspended
    );
}

#[test]
fn messages_and_timers_arrive_on_later_ticks() {
    let mut host = RuleHost::new();
    let journal_src = host.add("journal", Rule::Journal);
    let relay = host.add("relay", Rule::Relay { target: obj(1) });
    let mut d = world(2);
    attach(&mut d, &host, obj(0), relay);
    attach(&mut d, &host, obj(1), journal_src);
    d.tick(&host, vec![(BOB, InputKind::Touch { element: obj(0) })]);
    assert!(journal(&d, obj(1)).is_empty(), "messages wait a tick");
    d.tick(&host, vec![]);
    assert_eq!(
        journal(&d, obj(1)),
        vec![format!("msg:{}:touch:{BOB:?}:{}", obj(0), obj(0))]
    );
    // The relay set timer 7 for two ticks after it ran; it fires and is not relayed.
    assert!(
        d.sim
            .state()
            .timers
            .iter()
            .any(|(_, s, t)| *s == obj(0) && *t == 7)
    );
    d.tick(&host, vec![]);
    assert!(
        !d.sim
            .state()
            .timers
            .iter()
            .any(|(due, s, _)| *s == obj(0) && *due < d.sim.tick())
    );
}

#[test]
fn script_hash_does_not_depend_on_thread_count() {
    let run = |threads: usize| {
        metatopia_sim::testing::on_threads(threads, || {
            let mut host = RuleHost::new();
            let busy = host.add("busy", Rule::Busy { n: 20 });
            let mover = host.add("mover", Rule::Mover);
            let counter = host.add("counter", Rule::Counter);
            let mut d = world(60);
            attach_round_robin(&mut d, &host, 60, &[busy, mover, counter]);
            let mut hashes = Vec::new();
            for t in 0..20u64 {
                let inputs = (0..10)
                    .map(|k| {
                        if k % 2 == 0 {
                            (
                                BOB,
                                InputKind::Touch {
                                    element: obj((t * 7 + k) % 60),
                                },
                            )
                        } else {
                            (
                                BOB,
                                InputKind::Say {
                                    text: format!("t{t}k{k}"),
                                    radius: None,
                                },
                            )
                        }
                    })
                    .collect();
                hashes.push(d.tick(&host, inputs).hash);
            }
            hashes
        })
    };
    let one = run(1);
    let two = run(2);
    let four = run(4);
    assert_eq!(one, two);
    assert_eq!(one, four);
}

/// A host whose every call asks for the same writes (and a new state).
#[derive(Debug)]
struct Writes(Vec<metatopia_sim::script::Write>);

impl metatopia_sim::ScriptHost for Writes {
    fn run(
        &self,
        _: &metatopia_sim::script::ScriptCall<'_>,
    ) -> Result<metatopia_sim::script::ScriptOutput, metatopia_sim::script::ScriptFault> {
        Ok(metatopia_sim::script::ScriptOutput {
            writes: self.0.clone(),
            state: Some(b"pushed".to_vec()),
            ..Default::default()
        })
    }
}

/// Long on purpose: one scenario told step by step; its assertions read the state the steps before them built.
#[test]
fn script_physics_writes_become_commands_for_own_bodies_only() {
    use metatopia_sim::physics::{self, BodyKind, BodySpec, Material, Shape};
    use metatopia_sim::script::Write;
    use metatopia_sim::{Fx, NoScripts};
    let mut d = world(1);
    let ball = BodySpec {
        kind: BodyKind::Dynamic,
        shape: Shape::Ball { radius: Fx::ONE },
        material: Material::default(),
    };
    let spawn = |parent| InputKind::SpawnBody {
        parent,
        name: "ball".into(),
        pos: Vec3::from_ints(20, 20, 20),
        body: ball,
        vel: Vec3::default(),
    };
    let first = d.sim.state().next_counter;
    d.tick(
        &NoScripts,
        vec![(ALICE, spawn(Some(obj(0)))), (ALICE, spawn(None))],
    );
    let (mine, theirs) = (ElementId::new(1, first), ElementId::new(1, first + 1));
    assert!(d.sim.state().bodies.contains_key(&mine));
    assert!(d.sim.state().bodies.contains_key(&theirs));
    d.tick(
        &NoScripts,
        vec![(
            ALICE,
            InputKind::AttachScript {
                element: obj(0),
                source: [1; 32],
            },
        )],
    );
    let up = Vec3::from_ints(0, 0, 5);
    let touch = || vec![(ALICE, InputKind::Touch { element: obj(0) })];
    let slot = |d: &Driver| d.sim.state().elements[&obj(0)].script.clone().unwrap();
    // Its own body: both writes become physics commands, in order.
    let ok = Writes(vec![
        Write::Impulse {
            element: mine,
            impulse: up,
        },
        Write::SetVelocity {
            element: mine,
            vel: up,
        },
    ]);
    let r = d.tick(&ok, touch());
    assert!(r.physics.contains(&physics::Command::Impulse {
        id: mine,
        impulse: up
    }));
    assert!(
        r.physics
            .contains(&physics::Command::SetVelocity { id: mine, vel: up })
    );
    assert_eq!(slot(&d).state, b"pushed".to_vec());
    // A non-body, or a body outside the subtree: the whole output is
    // rejected, nothing reaches physics, state stays.
    for (bad, want) in [
        (
            Write::Impulse {
                element: obj(0),
                impulse: up,
            },
            "is not a body",
        ),
        (
            Write::SetVelocity {
                element: theirs,
                vel: up,
            },
            "does not own",
        ),
    ] {
        let before = slot(&d);
        let host = Writes(vec![
            Write::Impulse {
                element: mine,
                impulse: up,
            },
            bad,
        ]);
        let r = d.tick(&host, touch());
        let fault = r
            .events
            .iter()
            .find_map(|e| match e {
                Event::ScriptFault { error, .. } => Some(error.clone()),
                _ => None,
            })
            .unwrap();
        assert!(fault.contains(want), "{fault}");
        assert!(
            !r.physics
                .iter()
                .any(|c| matches!(c, physics::Command::Impulse { .. })),
            "{:?}",
            r.physics
        );
        assert_eq!(slot(&d).faults, before.faults + 1);
        assert_eq!(slot(&d).state, before.state);
    }
}

/// `Sim::step` changes its state in place; the free `step` copies. Both
/// give the same state and hash, a clone kept before the step is left as
/// it was, and every stored per-element hash matches a state rebuilt from
/// its snapshot (no entry hash went stale in an in-place update).
#[test]
fn in_place_step_matches_copying_step_and_leaves_clones_alone() {
    let mut host = RuleHost::new();
    let journal_src = host.add("journal", Rule::Journal);
    let relay = host.add("relay", Rule::Relay { target: obj(1) });
    let mover = host.add("mover", Rule::Mover);
    let counter = host.add("counter", Rule::Counter);
    let mut d = world(12);
    attach_round_robin(&mut d, &host, 12, &[relay, journal_src, mover, counter]);
    for t in 0..12u64 {
        let inputs = vec![
            d.input(
                BOB,
                InputKind::Touch {
                    element: obj(t % 12),
                },
            ),
            d.input(
                BOB,
                InputKind::Say {
                    text: format!("t{t}"),
                    radius: None,
                },
            ),
        ];
        let batch = metatopia_sim::Batch {
            tick: d.sim.tick(),
            time_ms: d.time_ms,
            inputs,
        };
        d.time_ms += d.tick_ms;
        let kept = d.sim.clone();
        let kept_bytes = snapshot::encode_state(kept.state());
        let mut copied = kept.clone();
        let copied_report = copied.step(&batch, &host).unwrap();
        let report = d.sim.step(&batch, &host).unwrap();
        assert!(report.script_calls > 0);
        assert_eq!(report, copied_report);
        assert_eq!(d.sim.state(), copied.state());
        assert_eq!(snapshot::encode_state(kept.state()), kept_bytes);
        assert_eq!(snapshot::state_hash(kept.state()), kept.hash());
        let rebuilt = snapshot::decode_state(&snapshot::encode_state(d.sim.state())).unwrap();
        assert_eq!(snapshot::state_hash(&rebuilt), d.sim.hash());
    }
}

/// A full inbox keeps the first `script_inbox_max` events queued for the
/// script and counts the rest as dropped; other scripts are not affected.
#[test]
fn a_full_inbox_keeps_the_first_events_and_counts_the_rest() {
    let mut host = RuleHost::new();
    let src = host.add("journal", Rule::Journal);
    let settings = Settings {
        script_inbox_max: 3,
        ..Settings::default()
    };
    let mut d = Driver::new(State::new(RegionId(1), settings, &[ALICE]));
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
    let creates = (0..2)
        .map(|i| {
            (
                ALICE,
                InputKind::Create {
                    parent: None,
                    name: format!("obj{i}"),
                    pos: Vec3::from_ints(10 + i, 10, 0),
                },
            )
        })
        .collect();
    d.tick(&host, creates);
    attach(&mut d, &host, obj(0), src);
    attach(&mut d, &host, obj(1), src);
    // Five lines heard by both scripts, then a touch for obj(1) only.
    let mut inputs = bob_says(5);
    inputs.push((BOB, InputKind::Touch { element: obj(1) }));
    let r = d.tick(&host, inputs);
    assert_eq!(r.script_calls, 2);
    assert_eq!(r.inbox_dropped, 2 + 3);
    for script in [obj(0), obj(1)] {
        let mut heard = journal(&d, script);
        heard.sort();
        assert_eq!(heard, vec!["heard:m0", "heard:m1", "heard:m2"], "{script}");
    }
}

/// Faults on touches by Alice; any other call succeeds and leaves `state`
/// as it is.
#[derive(Debug)]
struct FaultsOnAlice;

impl metatopia_sim::ScriptHost for FaultsOnAlice {
    fn run(
        &self,
        call: &metatopia_sim::script::ScriptCall<'_>,
    ) -> Result<metatopia_sim::script::ScriptOutput, metatopia_sim::script::ScriptFault> {
        let alice = call.inbox.iter().any(|e| {
            matches!(
                e.kind,
                metatopia_sim::script::ScriptEventKind::Touched { by, .. } if by == ALICE
            )
        });
        if alice {
            return Err(metatopia_sim::script::ScriptFault::Error("no".into()));
        }
        Ok(metatopia_sim::script::ScriptOutput::default())
    }
}

/// A successful call without a new `state` resets the fault count (and
/// changes nothing else); with no faults to reset the element is untouched.
#[test]
fn success_without_state_resets_faults() {
    let mut host = RuleHost::new();
    let src = host.add("any", Rule::Counter);
    let mut d = world(1);
    attach(&mut d, &host, obj(0), src);
    let faults = |d: &Driver| {
        d.sim.state().elements[&obj(0)]
            .script
            .as_ref()
            .unwrap()
            .faults
    };
    d.tick(
        &FaultsOnAlice,
        vec![(ALICE, InputKind::Touch { element: obj(0) })],
    );
    d.tick(
        &FaultsOnAlice,
        vec![(ALICE, InputKind::Touch { element: obj(0) })],
    );
    assert_eq!(faults(&d), 2);
    let before = d.sim.state().elements[&obj(0)].clone();
    let r = d.tick(
        &FaultsOnAlice,
        vec![(BOB, InputKind::Touch { element: obj(0) })],
    );
    assert_eq!(r.script_calls, 1);
    assert_eq!(faults(&d), 0);
    let mut expected = before;
    expected.script.as_mut().unwrap().faults = 0;
    assert_eq!(d.sim.state().elements[&obj(0)], expected);
    let r = d.tick(
        &FaultsOnAlice,
        vec![(BOB, InputKind::Touch { element: obj(0) })],
    );
    assert_eq!(r.script_calls, 1);
    assert_eq!(d.sim.state().elements[&obj(0)], expected);
    let rebuilt = snapshot::decode_state(&snapshot::encode_state(d.sim.state())).unwrap();
    assert_eq!(snapshot::state_hash(&rebuilt), d.sim.hash());
}

/// Bob says `m0`, `m1`, ... in one tick.
fn bob_says(n: usize) -> Vec<(PlayerId, InputKind)> {
    (0..n)
        .map(|i| {
            (
                BOB,
                InputKind::Say {
                    text: format!("m{i}"),
                    radius: None,
                },
            )
        })
        .collect()
}

/// The timer scene of the 10k bench, every script counting its timer
/// events and setting the next (some move or crash at the first tick).
/// The tick leaves its scripts' element hashes to a parallel pass, so its
/// state hash must be the hash of the same state with every element hashed
/// on insert (rebuilt from the snapshot), for any number of threads.
#[test]
fn deferred_element_hashes_match_a_rebuilt_state() {
    let run = |threads: usize| {
        metatopia_sim::testing::on_threads(threads, || {
            let mut host = RuleHost::new();
            let ticker = host.add("ticker", Rule::Ticker);
            let mover = host.add("mover", Rule::Mover);
            let crash = host.add("crash", Rule::Crash);
            let mut state = metatopia_sim::testing::timer_region(600, ticker);
            let ids: Vec<ElementId> = state.scripted.iter().copied().collect();
            for (i, id) in ids.iter().enumerate() {
                let other = match i % 7 {
                    3 => mover,
                    5 => crash,
                    _ => continue,
                };
                state.elements.update(id, |e| {
                    if let Some(slot) = e.script.as_mut() {
                        slot.source = other;
                    }
                });
            }
            let mut sim = metatopia_sim::Sim::new(state);
            let mut hashes = Vec::new();
            for _ in 0..12 {
                let report = metatopia_sim::testing::step_idle(&mut sim, &host);
                assert!(report.script_calls > 0);
                let rebuilt = snapshot::decode_state(&snapshot::encode_state(sim.state()))
                    .expect("a snapshot decodes");
                assert_eq!(report.hash, snapshot::state_hash(&rebuilt));
                assert_eq!(report.hash, sim.hash());
                hashes.push(report.hash);
            }
            hashes
        })
    };
    let one = run(1);
    assert_eq!(run(2), one);
    assert_eq!(run(3), one);
}

/// `(tick, script index, timers)`: what a script sets at a tick.
type TimerPlan = (u64, usize, Vec<(u32, u64)>);

/// Sets, per script (by its index in `scripts`) and tick, the listed
/// `(timer id, delay)` pairs.
struct TimerHost {
    scripts: Vec<ElementId>,
    plan: Vec<TimerPlan>,
}

impl metatopia_sim::ScriptHost for TimerHost {
    fn run(
        &self,
        call: &metatopia_sim::script::ScriptCall<'_>,
    ) -> Result<metatopia_sim::script::ScriptOutput, metatopia_sim::script::ScriptFault> {
        let index = self.scripts.iter().position(|s| *s == call.script);
        let timers = self
            .plan
            .iter()
            .find(|(tick, i, _)| *tick == call.tick && Some(*i) == index)
            .map(|(_, _, timers)| timers.clone())
            .unwrap_or_default();
        Ok(metatopia_sim::script::ScriptOutput {
            timers,
            ..Default::default()
        })
    }
}

/// The region's timer cap counts pending timers once: a timer set twice in
/// one call, or set again while pending, is one timer (as it was when the
/// timers were an `OrdSet` filled during the merge; the merge now adds them
/// in one batch after it).
#[test]
fn timer_cap_counts_each_pending_timer_once() {
    let mut state = metatopia_sim::testing::timer_region(3, [5; 32]);
    state.settings.timers_max = 4;
    let scripts: Vec<ElementId> = state.scripted.iter().copied().collect();
    let (a, b, c) = (scripts[0], scripts[1], scripts[2]);
    let host = TimerHost {
        scripts: scripts.clone(),
        plan: vec![
            // 0 pending. A: 2 distinct of 3 (0 + 3 <= 4); B: 2 + 1; C: 3 + 1.
            (0, 0, vec![(1, 5), (1, 5), (2, 1)]),
            (0, 1, vec![(1, 1)]),
            (0, 2, vec![(1, 1)]),
            // (5, A, 1) pending. A sets it again (1 + 1); B: 1 + 2; C: 3 + 1.
            (1, 0, vec![(1, 4)]),
            (1, 1, vec![(1, 2), (2, 2)]),
            (1, 2, vec![(1, 1)]),
            // 3 pending: C's two are refused (3 + 2 > 4).
            (2, 2, vec![(1, 1), (2, 1)]),
        ],
    };
    let mut sim = metatopia_sim::Sim::new(state);
    let faults = |r: &metatopia_sim::TickReport| {
        r.events
            .iter()
            .filter(|e| matches!(e, Event::ScriptFault { .. }))
            .count()
    };
    let timers = |sim: &metatopia_sim::Sim| -> Vec<(u64, ElementId, u32)> {
        sim.state().timers.iter().copied().collect()
    };
    let r = metatopia_sim::testing::step_idle(&mut sim, &host);
    assert_eq!(faults(&r), 0, "{:?}", r.events);
    assert_eq!(
        timers(&sim),
        vec![(1, a, 2), (1, b, 1), (1, c, 1), (5, a, 1)]
    );
    let r = metatopia_sim::testing::step_idle(&mut sim, &host);
    assert_eq!(faults(&r), 0, "{:?}", r.events);
    assert_eq!(
        timers(&sim),
        vec![(2, c, 1), (3, b, 1), (3, b, 2), (5, a, 1)]
    );
    let r = metatopia_sim::testing::step_idle(&mut sim, &host);
    assert_eq!(faults(&r), 1, "{:?}", r.events);
    assert_eq!(timers(&sim), vec![(3, b, 1), (3, b, 2), (5, a, 1)]);
}
