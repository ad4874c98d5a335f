//! Script host costs: a handler call through the full sandbox against a
//! bare mlua call of the same function; fx arithmetic against plain
//! integers; a 10,000-script tick on 1 and 2 threads; idle memory.
//!
//! `cargo bench -p metatopia-scripts -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mlua::{Function, Lua};

use metatopia_scripts::{Host, Limits, MemorySources, Sandbox};
use metatopia_sim::script::{ScriptCall, ScriptEvent, ScriptEventKind};
use metatopia_sim::state::{ElementKind, ScriptSlot, Settings, State};
use metatopia_sim::{Batch, ElementId, PlayerId, RegionId, Sim, Vec3};

const LICENCE: &str = "-- SPDX-License-Identifier: AGPL-3.0-or-later\n";
const TRIVIAL: &str = "function on_touch(by, element) end";
const COMPUTE: &str = "function on_touch(by, element)
  local s = 0
  for i = 1, 20000 do s = (s + i * 3) % 1000003 end
  return s
end";

fn world() -> (State, ElementId) {
    let mut s = State::new(RegionId(1), Settings::default(), &[]);
    let root = s.root();
    let id = s
        .add_child(
            root,
            ElementKind::Object,
            None,
            "o",
            Vec3::from_ints(1, 1, 1),
        )
        .unwrap();
    (s, id)
}

fn sandbox_call(c: &mut Criterion, name: &str, body: &str) {
    let (state, script) = world();
    let src = format!("{LICENCE}{body}");
    let sandbox = Sandbox::new(&src).unwrap();
    let slot = ScriptSlot {
        source: metatopia_scripts::hash_source(&src),
        state: Vec::new(),
        faults: 0,
        suspended: false,
    };
    let inbox = [ScriptEvent {
        id: 0,
        kind: ScriptEventKind::Touched {
            by: PlayerId::from_byte(1),
            element: script,
        },
    }];
    let limits = Limits {
        instructions_per_handler: 10_000_000,
        ..Limits::default()
    };
    c.bench_function(&format!("{name}/sandbox"), |b| {
        b.iter(|| {
            let call = ScriptCall {
                state: &state,
                script,
                slot: &slot,
                inbox: &inbox,
                tick: 1,
                seed: [1; 32],
            };
            black_box(sandbox.run(&call, &limits).unwrap())
        })
    });
    // The same function in a plain Lua state, called with the same two
    // string arguments (built per call, as the sandbox does).
    let lua = Lua::new();
    lua.load(body).exec().unwrap();
    let f: Function = lua.globals().get("on_touch").unwrap();
    let by = PlayerId::from_byte(1).to_string();
    let el = script.to_string();
    c.bench_function(&format!("{name}/bare_mlua"), |b| {
        b.iter(|| {
            let a = lua.create_string(&by).unwrap();
            let e = lua.create_string(&el).unwrap();
            black_box(f.call::<mlua::Value>((a, e)).unwrap())
        })
    });
}

fn handlers(c: &mut Criterion) {
    sandbox_call(c, "trivial_handler", TRIVIAL);
    sandbox_call(c, "compute_handler", COMPUTE);
}

/// 10,000 iterations of `a = a + b * c`: fx (raw bits, fx.mul in Rust)
/// against plain Lua integers.
fn fx_ops(c: &mut Criterion) {
    let lua = Lua::new();
    lua.globals()
        .set("fx", metatopia_scripts::fx::table(&lua).unwrap())
        .unwrap();
    let fx_loop: Function = lua
        .load(
            "return function(n) local a, b, c = 0, fx.new(3), fx.new(2)
               local mul = fx.mul
               for i = 1, n do a = a + mul(b, c) end return a end",
        )
        .eval()
        .unwrap();
    let int_loop: Function = lua
        .load("return function(n) local a, b, c = 0, 3, 2 for i = 1, n do a = a + b * c end return a end")
        .eval()
        .unwrap();
    c.bench_function("fx_mul_add_10k/fx", |b| {
        b.iter(|| black_box(fx_loop.call::<i64>(10_000).unwrap()))
    });
    c.bench_function("fx_mul_add_10k/int", |b| {
        b.iter(|| black_box(int_loop.call::<i64>(10_000).unwrap()))
    });
}

/// 10,000 scripts, each with one timer event per tick (20 Hz world).
fn tick_10k(c: &mut Criterion) {
    let body = "function on_timer(id) state.n = (state.n or 0) + 1; set_timer(1, 1) end";
    let src = format!("{LICENCE}{body}");
    let sources = Arc::new(MemorySources::new());
    let hash = sources.insert(&src);
    let mut state = State::new(RegionId(1), Settings::default(), &[]);
    let root = state.root();
    for i in 0..10_000 {
        let id = state
            .add_child(
                root,
                ElementKind::Object,
                None,
                "s",
                Vec3::from_ints(i % 256, i / 256, 0),
            )
            .unwrap();
        state.elements.update(&id, |e| {
            e.script = Some(ScriptSlot {
                source: hash,
                state: Vec::new(),
                faults: 0,
                suspended: false,
            })
        });
        state.scripted.insert(id);
        state.timers.insert((0, id, 1));
    }
    for threads in [1usize, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let host = Host::new(sources.clone()).unwrap();
        let mut sim = Sim::new(state.clone());
        let step = |sim: &mut Sim| {
            let t = sim.tick();
            let r = pool
                .install(|| {
                    sim.step(
                        &Batch {
                            tick: t,
                            time_ms: t * 50,
                            inputs: vec![],
                        },
                        &host,
                    )
                })
                .unwrap();
            assert_eq!(r.script_calls, 10_000);
        };
        // Load the 10,000 sandboxes outside the measurement.
        step(&mut sim);
        c.bench_function(&format!("tick_10k_scripts/{threads}_threads"), |b| {
            b.iter(|| step(&mut sim))
        });
    }
}

fn idle_memory(_c: &mut Criterion) {
    let counter = include_str!("../../examples/scripts/counter.lua");
    let s = Sandbox::new(counter).unwrap();
    eprintln!(
        "idle memory per script (counter.lua): {} bytes ({:.1} KiB)",
        s.idle_bytes(),
        s.idle_bytes() as f64 / 1024.0
    );
}

criterion_group!(benches, idle_memory, handlers, fx_ops, tick_10k);
criterion_main!(benches);
