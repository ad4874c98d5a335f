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
use metatopia_sim::script::{ScriptCall, ScriptEvent, ScriptEventKind, ScriptOutput};
use metatopia_sim::state::{ElementKind, ScriptSlot, Settings, State};
use metatopia_sim::{ElementId, PlayerId, RegionId, Sim, Vec3};

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

/// Benchmarks `Sandbox::run` of `src` (the script of one object) on one
/// event, with `stored` as its saved `state`; `check` looks at each result.
fn bench_run(
    c: &mut Criterion,
    id: &str,
    src: &str,
    stored: Vec<u8>,
    event: fn(ElementId) -> ScriptEventKind,
    limits: &Limits,
    check: fn(&ScriptOutput),
) {
    let (state, script) = world();
    let sandbox = Sandbox::new(src, script, limits).unwrap();
    let slot = ScriptSlot {
        source: metatopia_scripts::hash_source(src),
        state: stored,
        faults: 0,
        suspended: false,
    };
    let inbox = [ScriptEvent {
        id: 0,
        kind: event(script),
    }];
    c.bench_function(id, |b| {
        b.iter(|| {
            let call = ScriptCall {
                state: &state,
                script,
                slot: &slot,
                inbox: &inbox,
                tick: 1,
                seed: [1; 32],
            };
            let out = sandbox.run(&call, limits).unwrap();
            check(&out);
            black_box(out)
        })
    });
}

fn touched(script: ElementId) -> ScriptEventKind {
    ScriptEventKind::Touched {
        by: PlayerId::from_byte(1),
        element: script,
    }
}

/// Limits for handlers that loop 10,000 times or more.
fn loop_limits() -> Limits {
    Limits {
        instructions_per_handler: 10_000_000,
        ..Limits::default()
    }
}

fn sandbox_call(c: &mut Criterion, name: &str, body: &str) {
    let src = format!("{LICENCE}{body}");
    let limits = loop_limits();
    bench_run(
        c,
        &format!("{name}/sandbox"),
        &src,
        Vec::new(),
        touched,
        &limits,
        |_| {},
    );
    // The same function in a plain Lua state, called with the same two
    // string arguments (built per call, as the sandbox does).
    let (_, script) = world();
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
    state_handler(c);
}

/// The 10k tick's handler (`state.n = state.n + 1`, `set_timer`) called in
/// a loop on one warm sandbox: the per-script cost without cache misses.
fn state_handler(c: &mut Criterion) {
    use metatopia_scripts::codec::{self, Data};
    let limits = Limits::default();
    let stored = codec::encode(
        &Data::Table(vec![(Data::Str(b"n".to_vec()), Data::Int(41))]),
        limits.state_bytes,
    )
    .unwrap();
    bench_run(
        c,
        "state_handler/sandbox",
        &format!("{LICENCE}{TIMER}"),
        stored,
        |_| ScriptEventKind::Timer { timer: 1 },
        &limits,
        |out| assert!(out.state.is_some() && out.timers.len() == 1),
    );
}

/// 10,000 iterations of `a = a + b * c` inside a sandboxed handler: fx
/// (`a + fx.mul(b, c)`) against plain Lua integers (`a + b * c`). Both pay
/// the instruction hook; the ratio is what a creator sees.
fn fx_ops(c: &mut Criterion) {
    let fx_src = "function on_touch() local a, b, c = 0, fx(3), fx(2)
           local mul = fx.mul
           for i = 1, 10000 do a = a + mul(b, c) end state.a = a end";
    let int_src = "function on_touch() local a, b, c = 0, 3, 2
           for i = 1, 10000 do a = a + b * c end state.a = a end";
    for (name, src) in [("fx", fx_src), ("int", int_src)] {
        let id = format!("fx_mul_add_10k/{name}");
        bench_run(c, &id, src, Vec::new(), touched, &loop_limits(), |_| {});
    }
}

/// The handler of the 10k tick.
const TIMER: &str = "function on_timer(id) state.n = (state.n or 0) + 1; set_timer(1, 1) end";

/// A region with 10,000 scripted elements, each with a timer due.
fn ten_thousand() -> (State, Arc<MemorySources>) {
    let sources = Arc::new(MemorySources::new());
    let hash = sources.insert(&format!("{LICENCE}{TIMER}"));
    (metatopia_sim::testing::timer_region(10_000, hash), sources)
}

/// 10,000 scripts, each with one timer event per tick (20 Hz world).
fn tick_10k(c: &mut Criterion) {
    let world = std::sync::OnceLock::new();
    for threads in [1usize, 2] {
        // Built on first use, so a filtered run skips it; criterion calls
        // the closure several times, the 10,000 loads happen once.
        let setup = std::sync::OnceLock::new();
        c.bench_function(&format!("tick_10k_scripts/{threads}_threads"), |b| {
            let (pool, host, sim) = setup.get_or_init(|| {
                let (state, sources) = world.get_or_init(ten_thousand);
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let host = Host::new(sources.clone()).unwrap();
                let sim = std::sync::Mutex::new(Sim::new(state.clone()));
                (pool, host, sim)
            });
            let step = || {
                let mut guard = sim.lock().unwrap();
                let sim: &mut Sim = &mut guard;
                let r = pool.install(|| metatopia_sim::testing::step_idle(sim, host));
                assert_eq!(r.script_calls, 10_000);
            };
            // Load the 10,000 sandboxes outside the measurement.
            step();
            b.iter(step)
        });
    }
}

fn tick_10k_sim_only(c: &mut Criterion) {
    let setup = std::sync::OnceLock::new();
    c.bench_function("tick_10k_scripts/sim_only_1_thread", |b| {
        let sim = setup.get_or_init(|| std::sync::Mutex::new(Sim::new(ten_thousand().0)));
        b.iter(|| {
            let mut guard = sim.lock().unwrap();
            let r =
                metatopia_sim::testing::step_idle(&mut guard, &metatopia_sim::testing::TimerHost);
            assert_eq!(r.script_calls, 10_000);
        })
    });
}

/// The node's allocator (docs/performance.md measures with it).
#[global_allocator]
static ALLOC: metatopia_scripts::alloc::Allocator = metatopia_scripts::alloc::Allocator;

fn idle_memory(_c: &mut Criterion) {
    metatopia_scripts::alloc::init();
    let counter = include_str!("../../examples/scripts/counter.lua");
    let (_, me) = world();
    let s = Sandbox::new(counter, me, &Limits::default()).unwrap();
    eprintln!(
        "idle memory per script (counter.lua): {} bytes ({:.1} KiB)",
        s.idle_bytes(),
        s.idle_bytes() as f64 / 1024.0
    );
}

criterion_group!(
    benches,
    idle_memory,
    handlers,
    fx_ops,
    tick_10k,
    tick_10k_sim_only
);
criterion_main!(benches);
