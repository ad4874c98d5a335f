//! The instruction budget's count hook fires at the same instructions with
//! the patched VM's inline counting (count-only hook, vendor/lua-src
//! PATCHES.md, `lvm.c`) as through `luaG_traceexec` (forced here by adding
//! a line hook, which takes the unpatched path for every instruction).

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use mlua::debug::DebugEvent;
use mlua::{HookTriggers, Lua, VmState};

/// The value of the global `x` at each count-hook firing.
fn count_events(count: u32, with_lines: bool) -> Vec<i64> {
    let lua = Lua::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut triggers = HookTriggers::new().every_nth_instruction(count);
    if with_lines {
        triggers = triggers.every_line();
    }
    lua.set_global_hook(triggers, move |lua, debug| {
        if debug.event() == DebugEvent::Count {
            let x: Option<i64> = lua.globals().get("x")?;
            s.lock().unwrap().push(x.unwrap_or(-1));
        }
        Ok(VmState::Continue)
    })
    .unwrap();
    lua.load(
        r#"
        x = 0
        local function f(n) local s = 0 for i = 1, n do s = s + i end return s end
        for i = 1, 300 do
          x = x + 1
          if i % 7 == 0 then x = x + f(i % 13) end
          local t = {} t[i] = x
          co = coroutine.wrap(function() coroutine.yield(1) x = x + 2 end)
          co() co()
        end
        "#,
    )
    .exec()
    .unwrap();
    seen.lock().unwrap().clone()
}

#[test]
fn count_hook_fires_at_the_same_instructions() {
    for count in [1, 2, 3, 7, 64, 1000] {
        let fast = count_events(count, false);
        let slow = count_events(count, true);
        assert!(!fast.is_empty(), "count {count}");
        assert_eq!(fast, slow, "count {count}");
    }
}
