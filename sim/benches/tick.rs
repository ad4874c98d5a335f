//! One tick of a busy region: 10,000 elements, 100 players online, 1,000
//! inputs (moves of owned objects, chat, touches). Also the state hash and
//! snapshot encoding of that world on their own. And the sim's own
//! per-script work in a tick of 10,000 scripts, each with one timer event,
//! against a host that returns what the Lua script of the scripts crate's
//! bench would (a timer and a changed 8-byte state), without Lua, on one
//! thread and on two.
//!
//! And 1,000 avatars moving: walking (a few `Walk` inputs a tick) against
//! a `Move` input each a tick.
//!
//! Run: `cargo bench -p metatopia-sim --bench tick`

use criterion::{Criterion, criterion_group, criterion_main};
use metatopia_sim::input::{Batch, Input, InputKind};
use metatopia_sim::state::{ElementKind, Settings, State};
use metatopia_sim::{ElementId, Fx, NoScripts, PlayerId, RegionId, Sim, Vec3, snapshot};

const PLAYERS: u32 = 100;
const OBJECTS: u32 = 9_800;
const INPUTS: u32 = 1_000;

fn player(i: u32) -> PlayerId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    PlayerId(b)
}

/// Players 0 to n - 1 joining (sequence number 1).
fn joins(n: u32) -> Vec<Input> {
    (0..n)
        .map(|p| Input {
            player: player(p),
            seq: 1,
            kind: InputKind::Join {
                name: format!("player{p}"),
            },
        })
        .collect()
}

/// The world after its players joined, and the ids of their objects.
fn world() -> (Sim, Vec<ElementId>) {
    let settings = Settings {
        players_online_max: 1000,
        ..Settings::default()
    };
    let mut state = State::new(RegionId(1), settings, &[]);
    let root = state.root();
    let mut objects = Vec::new();
    for i in 0..OBJECTS {
        let owner = player(i % PLAYERS);
        let pos = Vec3::from_ints((i % 250) as i32, (i / 250 % 250) as i32, 0);
        objects.push(
            state
                .add_child(
                    root,
                    ElementKind::Object,
                    Some(owner),
                    &format!("object {i}"),
                    pos,
                )
                .expect("room for the bench world"),
        );
    }
    let mut sim = Sim::new(state);
    let joins = joins(PLAYERS);
    sim.step(
        &Batch {
            tick: 0,
            time_ms: 0,
            inputs: joins,
        },
        &NoScripts,
    )
    .expect("join batch");
    (sim, objects)
}

fn batch(sim: &Sim, objects: &[ElementId]) -> Batch {
    let inputs = (0..INPUTS)
        .map(|i| {
            let p = i % PLAYERS;
            let kind = match i % 4 {
                0 | 1 => InputKind::Move {
                    element: objects[(p + PLAYERS * (i / PLAYERS)) as usize],
                    to: Vec3::from_ints((i % 200) as i32, 7, 1),
                },
                2 => InputKind::Say {
                    text: format!("hello {i}"),
                    radius: Some(Fx::from_int(30)),
                },
                _ => InputKind::Touch {
                    element: objects[i as usize],
                },
            };
            Input {
                player: player(p),
                seq: 2 + u64::from(i / PLAYERS),
                kind,
            }
        })
        .collect();
    Batch {
        tick: sim.tick(),
        time_ms: 50,
        inputs,
    }
}

fn bench(c: &mut Criterion) {
    let (sim, objects) = world();
    let batch = batch(&sim, &objects);
    let bytes = snapshot::encode_state(sim.state());
    eprintln!(
        "world: {} elements, snapshot {} bytes",
        sim.state().elements.len(),
        bytes.len()
    );
    c.bench_function("tick_10k_elements_1k_inputs", |b| {
        b.iter(|| {
            let mut s = sim.clone();
            let r = s.step(&batch, &NoScripts).expect("valid batch");
            assert_eq!(r.accepted, INPUTS);
            r.hash
        })
    });
    c.bench_function("state_hash_10k_elements", |b| {
        b.iter(|| snapshot::state_hash(sim.state()))
    });
    c.bench_function("snapshot_encode_10k_elements", |b| {
        b.iter(|| snapshot::encode_state(sim.state()).len())
    });
}

/// The sim side of a 10,000-script tick, on one rayon thread and on two
/// (the host calls and the rehash of the scripts' elements run on the
/// pool). The sim is stepped on from one iteration to the next, as a
/// region would be.
fn scripts(c: &mut Criterion) {
    for (name, threads) in [
        ("tick_10k_scripts_fake_host", 1),
        ("tick_10k_scripts_fake_host_2_threads", 2),
    ] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool");
        let mut sim = Sim::new(metatopia_sim::testing::timer_region(10_000, [7; 32]));
        c.bench_function(name, |b| {
            b.iter(|| {
                let r = pool.install(|| {
                    metatopia_sim::testing::step_idle(&mut sim, &metatopia_sim::testing::TimerHost)
                });
                assert_eq!(r.script_calls, 10_000);
                r.hash
            })
        });
    }
}

/// 1,000 avatars moving (ADR 0017), stepped on from one iteration to the
/// next with a clone kept each tick (as a replica keeps its recent
/// states): all walking, 25 of them changing heading a tick (500 `Walk`
/// inputs a second at 20 Hz); against the same avatars each moved by a
/// `Move` input every tick.
fn walkers(c: &mut Criterion) {
    const AVATARS: u32 = 1_000;
    let settings = Settings {
        players_online_max: AVATARS,
        ..Settings::default()
    };
    let mut sim = Sim::new(State::new(RegionId(1), settings, &[]));
    let joins = joins(AVATARS);
    let at = |sim: &Sim, inputs| Batch {
        tick: sim.tick(),
        time_ms: sim.tick() * 50,
        inputs,
    };
    let r = sim.step(&at(&sim, joins), &NoScripts).expect("join batch");
    assert_eq!(r.accepted, AVATARS);
    let avatars: Vec<ElementId> = (0..AVATARS)
        .map(|p| sim.state().players[&player(p)].avatar.expect("joined"))
        .collect();
    // A small heading per player, never zero, so that none reaches the
    // bounds in a run.
    let heading = |p: u32, k: u64| {
        let a = ((u64::from(p) * 7 + k * 3) % 7) as i32 - 3;
        let b = ((u64::from(p) * 5 + k) % 5) as i32 - 2;
        Vec3::new(
            Fx::from_milli(i64::from(a) * 100 + 50),
            Fx::from_milli(i64::from(b) * 100),
            Fx::ZERO,
        )
    };
    let mut seq = 2u64;
    let walks = (0..AVATARS)
        .map(|p| Input {
            player: player(p),
            seq,
            kind: InputKind::Walk { vel: heading(p, 0) },
        })
        .collect();
    let mut moving = sim.clone();
    sim.step(&at(&sim, walks), &NoScripts).expect("walk batch");
    let mut kept = Vec::with_capacity(2);
    c.bench_function("tick_1k_walkers_25_walk_inputs", |b| {
        b.iter(|| {
            seq += 1;
            let first = (seq % 40) as u32 * 25;
            let inputs = (first..first + 25)
                .map(|p| Input {
                    player: player(p),
                    seq,
                    kind: InputKind::Walk {
                        vel: heading(p, seq),
                    },
                })
                .collect();
            let batch = at(&sim, inputs);
            kept.push(sim.clone());
            if kept.len() > 1 {
                kept.remove(0);
            }
            let r = sim.step(&batch, &NoScripts).expect("valid batch");
            assert_eq!(r.accepted, 25);
            r.hash
        })
    });
    assert_eq!(sim.state().walking.len(), AVATARS as usize, "none stopped");
    let mut seq = 2u64;
    c.bench_function("tick_1k_avatars_1k_move_inputs", |b| {
        b.iter(|| {
            seq += 1;
            let inputs = avatars
                .iter()
                .enumerate()
                .map(|(p, &element)| Input {
                    player: player(p as u32),
                    seq,
                    kind: InputKind::Move {
                        element,
                        to: Vec3::from_ints(100 + (seq % 50) as i32, 100 + p as i32 % 50, 0),
                    },
                })
                .collect();
            let batch = at(&moving, inputs);
            kept.push(moving.clone());
            if kept.len() > 1 {
                kept.remove(0);
            }
            let r = moving.step(&batch, &NoScripts).expect("valid batch");
            assert_eq!(r.accepted, AVATARS);
            r.hash
        })
    });
}

criterion_group!(benches, bench, scripts, walkers);
criterion_main!(benches);
