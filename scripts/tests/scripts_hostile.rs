//! Hostile scripts: each is contained with a clear error, none of its
//! effects apply, and a well-behaved script in the same tick carries on.

#![allow(clippy::unwrap_used)]

mod common;

use common::{COUNTER, World, chat, faults};

/// (name, script body, what the owner's error must say)
const CASES: &[(&str, &str, &str)] = &[
    (
        "infinite loop",
        "function on_touch() state.x = 1; say('hi'); while true do end end",
        "instruction budget exhausted",
    ),
    (
        "loop inside pcall",
        "function on_touch() state.x = 1; while true do pcall(function() while true do end end) end end",
        "instruction budget exhausted",
    ),
    (
        "pcall of pcall of a loop, result ignored",
        "function on_touch() state.x = 1; pcall(pcall, function() while true do end end) end",
        "instruction budget exhausted",
    ),
    (
        "xpcall with a handler that loops too",
        "function on_touch() state.x = 1; xpcall(function() while true do end end, function() while true do end end) end",
        "instruction budget exhausted",
    ),
    (
        "loop in a __close handler of a coroutine that ran out",
        "function on_touch() state.x = 1; local f = coroutine.wrap(function() local c <close> = setmetatable({}, { __close = function() while true do end end }); while true do end end); f() end",
        "may not have __gc, __mode or __close",
    ),
    (
        "__close added to a metatable after use",
        "function on_touch() state.x = 1; local mt = {}; local c = setmetatable({}, mt); mt.__close = function() end end",
        "may not have __gc, __mode or __close",
    ),
    (
        "to-be-closed variable without __close",
        "function on_touch() state.x = 1; local c <close> = {} end",
        "non-closable value",
    ),
    (
        "coroutine.close after running out",
        "function on_touch() state.x = 1; local co = coroutine.create(function() while true do end end); coroutine.resume(co); coroutine.close(co) end",
        "instruction budget exhausted",
    ),
    (
        "deep recursion",
        "local function f(n) return f(n + 1) + 1 end function on_touch() state.x = 1; f(1) end",
        "memory cap exceeded",
    ),
    (
        "memory bomb",
        "function on_touch() state.x = 1; local t = {} for i = 1, 1 << 40 do t[i] = { i, i, i } end end",
        "memory cap exceeded",
    ),
    (
        "memory bomb caught by pcall",
        "function on_touch() state.x = 1; local ok = pcall(function() local t = {} for i = 1, 1 << 40 do t[i] = {} end end); state.caught = ok end",
        "memory cap exceeded",
    ),
    (
        "string.rep bomb",
        "function on_touch() state.x = 1; local s = string.rep('x', 1 << 28) end",
        "memory cap exceeded",
    ),
    (
        "string.rep bomb inside pcall",
        "function on_touch() state.x = 1; pcall(string.rep, 'x', 1 << 30); state.after = 1 end",
        "memory cap exceeded",
    ),
    (
        "concat doubling",
        "function on_touch() state.x = 1; local s = 'x' while true do s = s .. s end end",
        "memory cap exceeded",
    ),
    (
        "huge table",
        "function on_touch() state.x = 1; local t = {} for i = 1, 1 << 40 do t[i] = i end end",
        "memory cap exceeded",
    ),
    (
        "loop inside a coroutine",
        "function on_touch() state.x = 1; local co = coroutine.create(function() while true do end end); local ok = coroutine.resume(co); state.ok = ok end",
        "instruction budget exhausted",
    ),
    (
        "coroutine.wrap inside pcall, yielding forever",
        "function on_touch() state.x = 1; local f = coroutine.wrap(function() while true do coroutine.yield() end end); while true do pcall(f) end end",
        "instruction budget exhausted",
    ),
    (
        "memory bomb in a coroutine",
        "function on_touch() state.x = 1; local co = coroutine.create(function() local s = 'x' while true do s = s .. s end end); state.r = coroutine.resume(co) end",
        "memory cap exceeded",
    ),
    (
        "__gc finaliser",
        "function on_touch() state.x = 1; setmetatable({}, { __gc = function() while true do end end }) end",
        "may not have __gc, __mode or __close",
    ),
    (
        "__gc added to a metatable after use",
        "function on_touch() state.x = 1; local mt = {}; setmetatable({}, mt); mt.__gc = function() end end",
        "may not have __gc, __mode or __close",
    ),
    (
        "weak table by rawset",
        "function on_touch() state.x = 1; local mt = {}; setmetatable({}, mt); rawset(mt, '__mode', 'k') end",
        "may not have __gc, __mode or __close",
    ),
    (
        "__index loop",
        "function on_touch() state.x = 1; local t = {}; setmetatable(t, { __index = function(t, k) return t[k] end }); return t.x end",
        "stack overflow",
    ),
    (
        "load of bytecode",
        "function on_touch() state.x = 1; load('\\27Lua\\84\\0')() end",
        "load is not available",
    ),
    (
        "string.dump",
        "function on_touch() state.x = 1; string.dump(on_touch) end",
        "attempt to call a nil value (field 'dump')",
    ),
    (
        "os.exit",
        "function on_touch() state.x = 1; os.exit(1) end",
        "os.exit is not available",
    ),
    (
        "io.open",
        "function on_touch() state.x = 1; io.open('/etc/passwd') end",
        "io.open is not available",
    ),
    (
        "debug.sethook",
        "function on_touch() state.x = 1; debug.sethook() end",
        "debug.sethook is not available",
    ),
    (
        "require",
        "function on_touch() state.x = 1; require('os') end",
        "require is not available",
    ),
    (
        "collectgarbage",
        "function on_touch() state.x = 1; collectgarbage('count') end",
        "collectgarbage is not available",
    ),
    (
        "writing into a library table",
        "function on_touch() state.x = 1; string.format = nil end",
        "string is read-only",
    ),
    (
        "rawset into a library table",
        "function on_touch() state.x = 1; rawset(math, 'floor', nil) end",
        "library tables are read-only",
    ),
    (
        "reaching the string library through a metatable",
        "function on_touch() state.x = 1; getmetatable('').__index.upper = nil end",
        "attempt to index a boolean value",
    ),
    (
        "timer with a delay of zero",
        "function on_touch() state.x = 1; set_timer(1, 0) end",
        "set_timer: delay must be 1..=1000000000 ticks",
    ),
    (
        "send to something that is not an element id",
        "function on_touch() state.x = 1; send('nope', 'x') end",
        "send: target must be an element id",
    ),
    (
        "say a table",
        "function on_touch() state.x = 1; say({}) end",
        "say: text must be a string, got table",
    ),
    (
        "an argument error caught by pcall is its text",
        "function on_touch() local ok, e = pcall(set_timer, 'a', 1); state.x = 1; error('caught: ' .. tostring(e), 0) end",
        "caught: set_timer: id must be an integer, got string",
    ),
    (
        "flood of messages",
        "function on_touch() state.x = 1; for i = 1, 100000 do send(me, 'spam') end end",
        "too many messages in one tick",
    ),
    (
        "floats into the world",
        "function on_touch() state.x = 1; set_pos(me, 1.5, 2, 3) end",
        "is a float",
    ),
    (
        "floats into state",
        "function on_touch() state.x = 1.5 end",
        "state.x is a float",
    ),
    (
        "writing someone else's element",
        "function on_touch() state.x = 1; set_name('1.0', 'mine') end",
        "is not this script's element",
    ),
    (
        "addresses through %p",
        "function on_touch() state.x = 1; say(string.format('%p', {})) end",
        "%p prints addresses",
    ),
    (
        "iterating coroutine keys",
        "function on_touch() state.x = 1; local t = { [coroutine.create(print)] = 1, [{}] = 2 }; for k in pairs(t) do end end",
        "no iteration order that every replica agrees on",
    ),
    (
        "iterating library function keys",
        "function on_touch() state.x = 1; local t = { [math.floor] = 1 }; for k in pairs(t) do end end",
        "no iteration order that every replica agrees on",
    ),
    (
        "syntax error",
        "function on_touch( state.x = 1 end",
        "syntax error",
    ),
];

#[test]
fn every_hostile_script_is_contained() {
    let mut w = World::new();
    let good = w.scripted("good", COUNTER);
    for (i, (name, body, want)) in CASES.iter().enumerate() {
        eprintln!("case {i}: {name}");
        let bad = w.scripted(&format!("bad{i}"), body);
        let before = w.driver.sim.state().elements.get(&bad).unwrap().clone();
        let r = w.touch(&[bad, good]);
        let f = faults(&r);
        assert_eq!(f.len(), 1, "{name}: {f:?}");
        assert_eq!(f[0].0, bad, "{name}");
        assert!(
            f[0].1.contains(want),
            "{name}: error {:?} lacks {want:?}",
            f[0].1
        );
        assert!(!f[0].1.contains("0x5"), "{name}: address in {:?}", f[0].1);
        // None of the bad script's effects applied.
        let after = w.driver.sim.state().elements.get(&bad).unwrap();
        assert_eq!(after, &{
            let mut b = before.clone();
            b.script.as_mut().unwrap().faults = 1;
            b
        });
        assert!(
            chat(&r)
                .iter()
                .all(|l| !l.contains("hi") && !l.contains("spam"))
        );
        // The good script carried on in the same tick.
        assert_eq!(w.int(good, "n"), Some(i as i64 + 1), "{name}");
        assert!(chat(&r).contains(&format!("count {}", i + 1)), "{name}");
        // Detach so the next case's inbox is clean.
        w.tick(vec![metatopia_sim::input::InputKind::DetachScript {
            element: bad,
        }]);
    }
}

#[test]
fn repeated_faults_suspend_the_script() {
    let mut w = World::new();
    let bad = w.scripted("bad", "function on_touch() while true do end end");
    let max = w.driver.sim.state().settings.script_faults_max;
    for i in 1..=max {
        let r = w.touch(&[bad]);
        let f = faults(&r);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].2, i == max, "suspended only at fault {i}");
    }
    let r = w.touch(&[bad]);
    assert!(faults(&r).is_empty(), "a suspended script gets no events");
    assert_eq!(r.script_calls, 0);
}

#[test]
fn replaced_globals_stay_with_their_script() {
    let mut w = World::new();
    // Replacing globals at load affects only this script's own globals;
    // from a handler it is refused.
    let vandal = w.scripted(
        "vandal",
        r#"
pairs = function() error("hacked") end
tostring = nil
math = nil
function on_touch()
  state.n = (state.n or 0) + 1
  say = function() end
end
"#,
    );
    let victim = w.scripted(
        "victim",
        r#"
function on_touch()
  local keys = {}
  for k in pairs({ a = 1 }) do keys[#keys + 1] = k end
  state.keys = table.concat(keys)
  state.text = tostring(12) .. string.format("%d", 3) .. math.floor(7)
  say("victim fine")
end
"#,
    );
    for _ in 0..2 {
        let r = w.touch(&[vandal, victim]);
        let f = faults(&r);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, vandal);
        assert!(f[0].1.contains("globals are read-only after load"), "{f:?}");
        assert!(chat(&r).contains(&"victim fine".to_string()));
    }
    assert_eq!(w.text(victim, "keys").as_deref(), Some("a"));
    assert_eq!(w.text(victim, "text").as_deref(), Some("1237"));
    assert_eq!(
        w.int(vandal, "n"),
        None,
        "the faulted calls changed nothing"
    );
}

#[test]
fn tostring_shows_no_addresses() {
    let mut w = World::new();
    let s = w.scripted(
        "s",
        r#"
function on_touch()
  state.a = tostring({}) .. " " .. tostring(print) .. " " .. tostring(coroutine.create(function() end))
  state.b = string.format("%s %s", {}, on_touch)
  state.c = tostring(setmetatable({}, { __tostring = function() return "custom" end }))
  state.d = tostring(setmetatable({}, { __name = "named" }))
end
"#,
    );
    let r = w.touch(&[s]);
    assert!(faults(&r).is_empty(), "{:?}", faults(&r));
    assert_eq!(w.text(s, "a").as_deref(), Some("table function thread"));
    assert_eq!(w.text(s, "b").as_deref(), Some("table function"));
    assert_eq!(w.text(s, "c").as_deref(), Some("custom"));
    assert_eq!(w.text(s, "d").as_deref(), Some("table"));
}

/// A stored `state` is decoded when a handler first reads it. Bytes that
/// are not a canonical encoding fail the call with an error that says so;
/// a state whose decoding passes the memory cap is a memory fault, which a
/// `pcall` around the read cannot catch. Nothing else the handler did
/// applies in either case.
#[test]
fn a_stored_state_that_cannot_be_read_or_does_not_fit_faults_the_call() {
    use metatopia_scripts::codec::{self, Data};
    use metatopia_scripts::{Limits, Sandbox};
    use metatopia_sim::script::ScriptFault;

    let (world, me) = common::one_object();
    let limits = Limits {
        memory_bytes: 32 * 1024,
        ..Limits::default()
    };
    let run = |body: &str, stored: Vec<u8>| {
        let src = format!("{}{body}", common::LICENCE);
        let sandbox = Sandbox::new(&src, me, &limits).unwrap();
        common::timer_call(&sandbox, &world, me, stored, &limits)
    };
    let read = "function on_timer() say('hi'); set_timer(1, 1); local n = state.n end";
    match run(read, vec![codec::VERSION, 4, 9, 9, 9]) {
        Err(ScriptFault::Error(e)) => {
            assert!(e.contains("state cannot be read"), "{e}");
        }
        other => panic!("corrupt state: {other:?}"),
    }
    // 500 strings of 100 bytes: 57 KB stored (under the 64 KiB state
    // limit), about twice the 32 KiB memory cap once in Lua.
    let big = Data::Table(
        (0..500)
            .map(|i| (Data::Int(i), Data::Str(vec![b'x'; 100])))
            .collect(),
    );
    let stored = codec::encode(&big, 1 << 20).unwrap();
    for body in [
        read,
        "function on_timer() say('hi'); local ok = pcall(function() return state.n end); state = {} end",
    ] {
        match run(body, stored.clone()) {
            Err(ScriptFault::MemoryCap(_)) => {}
            other => panic!("{body}: {other:?}"),
        }
    }
    // The same state under a cap it fits in reads back.
    let roomy = Limits {
        memory_bytes: 4 * 1024 * 1024,
        ..limits.clone()
    };
    let src = format!(
        "{}function on_timer() state[7] = state[7] .. 'y' end",
        common::LICENCE
    );
    let sandbox = Sandbox::new(&src, me, &roomy).unwrap();
    let out = common::timer_call(&sandbox, &world, me, stored, &roomy).unwrap();
    let Data::Table(entries) = codec::decode(&out.state.unwrap()).unwrap() else {
        panic!("state is not a table");
    };
    assert_eq!(entries.len(), 500);
    assert_eq!(
        entries[7].1,
        Data::Str([vec![b'x'; 100], b"y".to_vec()].concat())
    );
}
