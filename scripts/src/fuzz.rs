//! Bodies of the fuzz targets (`fuzz/fuzz_targets/scripts_*.rs`), also
//! driven by proptest in `tests/scripts_fuzz.rs`. None may panic.

use metatopia_sim::script::{ScriptCall, ScriptEvent, ScriptEventKind, ScriptFault};
use metatopia_sim::state::{ScriptSlot, Settings, State};
use metatopia_sim::{ElementId, PlayerId, RegionId};

use crate::{Limits, Sandbox, codec, licence};

fn world() -> (State, ElementId) {
    let mut s = State::new(RegionId(1), Settings::default(), &[]);
    let root = s.root();
    let id = s
        .add_child(
            root,
            metatopia_sim::state::ElementKind::Object,
            None,
            "thing",
            metatopia_sim::Vec3::from_ints(1, 1, 1),
        )
        .unwrap_or(root);
    (s, id)
}

fn small_limits() -> Limits {
    Limits {
        instructions_per_handler: 20_000,
        memory_bytes: 256 * 1024,
        ..Limits::default()
    }
}

/// Arbitrary bytes as a script source: licence check, compile, and a call
/// with one event of each kind.
pub fn source(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = licence::check(text, licence::DEFAULT_ALLOWED);
    let (state, script) = world();
    let Ok(sandbox) = Sandbox::new(text, script, &small_limits()) else {
        return;
    };
    let p = PlayerId::from_byte(1);
    let inbox = [
        ScriptEventKind::Touched {
            by: p,
            element: script,
        },
        ScriptEventKind::Timer { timer: 1 },
        ScriptEventKind::Message {
            from: script,
            body: "hi".into(),
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, kind)| ScriptEvent { id: i as u64, kind })
    .collect::<Vec<_>>();
    let slot = ScriptSlot {
        source: crate::hash_source(text),
        state: Vec::new(),
        faults: 0,
        suspended: false,
    };
    let call = ScriptCall {
        state: &state,
        script,
        slot: &slot,
        inbox: &inbox,
        tick: 0,
        seed: [3; 32],
    };
    // The first call runs on a freshly loaded sandbox, the second on one
    // that has run before: sealing must make them agree. The one allowed
    // difference: a sandbox that has run gets a smaller memory cap, and its
    // memory faults are confirmed by the host on a fresh sandbox.
    let first = sandbox.run(&call, &small_limits());
    let second = sandbox.run(&call, &small_limits());
    if !matches!(second, Err(ScriptFault::MemoryCap(_))) {
        assert_eq!(first, second, "a call must be a pure function");
    }
}

/// A fixed, busy script called with arbitrary arguments and state bytes.
pub fn args(data: &[u8]) {
    const SRC: &str = r#"
function on_message(from, body)
  state.n = (state.n or 0) + 1
  state[body] = from
  for k, v in pairs(state) do state.last = k end
  send(from, body)
end
function on_heard(from, text) say(text) end
function on_timer(t) set_timer(t, 1) end
"#;
    let (state, script) = world();
    let Ok(sandbox) = Sandbox::new(SRC, script, &small_limits()) else {
        return;
    };
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let (head, tail) = data.split_at(split);
    let text = String::from_utf8_lossy(head).into_owned();
    let inbox = vec![
        ScriptEvent {
            id: 0,
            kind: ScriptEventKind::Message {
                from: ElementId::new(u32::from(data.len() as u8), split as u64),
                body: text.clone(),
            },
        },
        ScriptEvent {
            id: 1,
            kind: ScriptEventKind::Heard {
                from: metatopia_sim::state::Speaker::Script(script),
                text,
            },
        },
        ScriptEvent {
            id: 2,
            kind: ScriptEventKind::Timer {
                timer: data.len() as u32,
            },
        },
    ];
    let slot = ScriptSlot {
        source: crate::hash_source(SRC),
        state: tail.to_vec(),
        faults: 0,
        suspended: false,
    };
    let call = ScriptCall {
        state: &state,
        script,
        slot: &slot,
        inbox: &inbox,
        tick: 1,
        seed: [9; 32],
    };
    let _ = sandbox.run(&call, &small_limits());
    assert_eq!(
        codec::check(tail).is_ok(),
        codec::decode(tail).is_ok(),
        "check and decode accept the same bytes"
    );
    if let Ok(d) = codec::decode(tail) {
        let again = codec::encode(&d, u32::MAX).unwrap_or_default();
        assert_eq!(again, tail, "decoding accepts only canonical bytes");
    }
}
