//! [`Sandbox`]: one script's Lua state, hardened, and one call of it.
//!
//! The script's top level runs once, at load, with no access to the world;
//! then everything it made is sealed (docs/adr/0004): globals and every
//! table reachable from them or from the script's functions become
//! read-only, and no function may assign a variable of an enclosing
//! function (checked in the bytecode before anything runs). Each call
//! decodes `state` from the slot's bytes. So nothing a handler does
//! survives the call except what it returns (writes, sends, says, timers)
//! and the re-encoded `state`, and a replica that restarts from a snapshot,
//! with a brand-new Lua state, computes the same results as one that has
//! been running for days.
//!
//! Layout (one room an idea):
//! - [`load`]: building a sandbox: the prelude, the script's top level, the
//!   seal, the handlers' registry references.
//! - [`build_check`]: whether this build of Lua is deterministic.
//! - [`call`]: the call path: arm the budget, one protected call into Lua
//!   for the whole inbox, read back `state`, the fault if any.
//! - [`state`]: reading and writing the script's `state` table.
//! - [`context`]: what host functions see during a call.
//! - [`api`]: the host functions (`say`, `send`, timers, writes, ...).
//! - [`args`]: reading and checking their arguments.
//! - [`world`]: the read-only `world` table.
//!
//! The budget is [`crate::budget`], the string functions
//! [`crate::strings`], the raw Lua bindings [`crate::raw`].

use std::sync::Arc;

use mlua::Lua;

use crate::budget::Budget;

mod api;
mod args;
mod build_check;
mod call;
mod context;
mod load;
mod state;
mod world;

pub use crate::budget::{HOOK_STEP, Limits};
pub use crate::errors::describe_error;
pub use build_check::{
    PINNED_STRING_KEY_ORDER, PINNED_TABLE_KEY_ORDER, check_build, string_key_order, table_key_order,
};
pub use load::LoadError;

/// One script's hardened Lua state, loaded and sealed.
pub struct Sandbox {
    lua: Lua,
    /// `lua`'s main state, for the call path's raw API use.
    main: MainState,
    /// A registry slot through which mlua reads a call's error object
    /// (it holds `true` between calls).
    error_key: mlua::RegistryKey,
    /// Registry references of the handlers, the sealed globals (where
    /// `state` is put for each call) and the key `"state"`, for the call
    /// path ([`Sandbox::call_handlers`]).
    refs: Vec<mlua::RegistryKey>,
    raw: RawRefs,
    budget: Arc<Budget>,
    idle_bytes: usize,
    /// The memory limit set now (0: none).
    cap: std::cell::Cell<usize>,
    /// Whether a handler call has run in this state (see [`Sandbox::is_fresh`]).
    ran: std::cell::Cell<bool>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("idle_bytes", &self.idle_bytes)
            .finish_non_exhaustive()
    }
}

/// A sandbox's main Lua state. The call path uses it directly rather than
/// through mlua's lock and reference stack, which cost several cache
/// misses per call on a state nothing has touched since the last tick.
struct MainState(*mut mlua::ffi::lua_State);

// SAFETY: the pointer belongs to the sandbox's `Lua` (which is `Send`) and
// is used only by whoever holds the sandbox, as that `Lua` is: the host
// keeps each sandbox behind a mutex.
#[allow(unsafe_code)]
unsafe impl Send for MainState {}

/// Registry indices of what a call pushes, held by `Sandbox::refs`.
#[derive(Clone, Copy, Default)]
struct RawRefs {
    /// By [`HANDLERS`] index; 0 where the script has no such handler.
    handlers: [std::ffi::c_int; 7],
    env_shadow: std::ffi::c_int,
    state_key: std::ffi::c_int,
}

impl Sandbox {
    /// Bytes the Lua state holds when idle (after load and a collection).
    pub fn idle_bytes(&self) -> usize {
        self.idle_bytes
    }

    /// Bytes the Lua state holds now.
    pub fn used_bytes(&self) -> usize {
        self.lua.used_memory()
    }

    /// [`Sandbox::used_bytes`] as Lua counts it (the same number: Lua and
    /// mlua's allocator both add up the sizes Lua requests), read from the
    /// Lua state itself instead of through mlua's lock and allocator data.
    #[allow(unsafe_code)]
    fn lua_bytes(&self) -> usize {
        let l = self.main.0;
        // SAFETY: `l` is this sandbox's live main state, used by no one
        // else meanwhile; `lua_gc` with these options raises no error.
        let (kib, rem) = unsafe {
            (
                mlua::ffi::lua_gc(l, mlua::ffi::LUA_GCCOUNT, 0),
                mlua::ffi::lua_gc(l, mlua::ffi::LUA_GCCOUNTB, 0),
            )
        };
        usize::try_from(kib).unwrap_or(0) * 1024 + usize::try_from(rem).unwrap_or(0)
    }

    /// Whether no handler has run here since load. A fresh sandbox is the
    /// canonical one: every replica can rebuild it from the source alone.
    /// Its memory cap is exact; a sandbox that has run (whose Lua
    /// bookkeeping, such as string-table and stack sizes, depends on its
    /// history) gets the cap minus a margin of its idle size, and the host
    /// re-runs a call that ran out of memory there on a fresh sandbox.
    pub fn is_fresh(&self) -> bool {
        !self.ran.get()
    }

    /// The addresses the next call of this sandbox will most likely touch
    /// first (its Lua state, stack, handlers and the globals they name), as
    /// the Lua state is now: for [`crate::prefetch::Hot`]. Writes them to
    /// `out` and returns how many.
    #[allow(unsafe_code)]
    pub fn hot_lines(
        &self,
        out: &mut [*const std::ffi::c_void; crate::prefetch::HOT_MAX],
    ) -> usize {
        let mut refs = [0; call::HANDLERS.len() + 2];
        refs[0] = self.raw.env_shadow;
        refs[1] = self.raw.state_key;
        let mut n = 2;
        for r in self.raw.handlers.iter().filter(|r| **r != 0) {
            refs[n] = *r;
            n += 1;
        }
        // The budget and mlua's allocator data (its memory count), which
        // a call touches before Lua runs and at its first allocation.
        let (head, rest) = out.split_at_mut(2);
        head[0] = Arc::as_ptr(&self.budget).cast();
        let l = self.main.0;
        // SAFETY: `l` is this sandbox's live main state, used by no one else
        // meanwhile, between calls. `lua_getallocf`, `lua_hotlines` and
        // `lua_hotkeys` only read it and write at most the given number of
        // pointers; the raw reads of `state` (stack checked first) raise no
        // error, and the stack is restored.
        unsafe {
            let mut ud = std::ptr::null_mut();
            mlua::ffi::lua_getallocf(l, &mut ud);
            head[1] = ud.cast_const();
            let k = crate::raw::lua_hotlines(
                l,
                refs.as_ptr(),
                n as std::ffi::c_int,
                rest.as_mut_ptr(),
                rest.len() as std::ffi::c_int,
            );
            let k = usize::try_from(k).unwrap_or(0).min(rest.len());
            let rest = &mut rest[k..];
            // The next call decodes `state` again, interning its keys.
            let mut keys = 0;
            if mlua::ffi::lua_checkstack(l, 3) != 0 {
                let top = mlua::ffi::lua_gettop(l);
                self.push_state(l);
                keys = crate::raw::lua_hotkeys(
                    l,
                    -1,
                    rest.as_mut_ptr(),
                    rest.len() as std::ffi::c_int,
                );
                mlua::ffi::lua_settop(l, top);
            }
            2 + k + usize::try_from(keys).unwrap_or(0).min(rest.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metatopia_sim::ElementId;

    /// The call path's memory count (read from the Lua state) is mlua's,
    /// at load, after calls that keep and drop data, and after a fault.
    #[test]
    fn lua_bytes_is_used_bytes() {
        use metatopia_sim::script::{ScriptCall, ScriptEvent, ScriptEventKind};
        use metatopia_sim::state::{ElementKind, ScriptSlot, Settings, State};
        let mut world = State::new(metatopia_sim::id::RegionId(1), Settings::default(), &[]);
        let root = world.root();
        let me = world
            .add_child(
                root,
                ElementKind::Object,
                None,
                "o",
                metatopia_sim::fx::Vec3::from_ints(1, 1, 1),
            )
            .unwrap();
        let limits = Limits::from_settings(&world.settings);
        let source = "function on_timer(t)\n\
            state.list = state.list or {}\n\
            for i = 1, 50 do state.list[#state.list + 1] = string.rep('x', t + i) end\n\
            if t == 3 then error('boom') end\n\
            end";
        let sandbox = Sandbox::new(source, me, &limits).unwrap();
        assert_eq!(sandbox.lua_bytes(), sandbox.used_bytes());
        let mut stored = Vec::new();
        for timer in 1..=4 {
            let slot = ScriptSlot {
                source: [0; 32],
                state: stored.clone(),
                faults: 0,
                suspended: false,
            };
            let inbox = [ScriptEvent {
                id: 0,
                kind: ScriptEventKind::Timer { timer },
            }];
            let out = sandbox.run(
                &ScriptCall {
                    state: &world,
                    script: me,
                    slot: &slot,
                    inbox: &inbox,
                    tick: u64::from(timer),
                    seed: [1; 32],
                },
                &limits,
            );
            assert_eq!(out.is_err(), timer == 3, "{out:?}");
            if let Ok(out) = out {
                stored = out.state.unwrap();
            }
            assert_eq!(sandbox.lua_bytes(), sandbox.used_bytes());
        }
    }

    /// A call's errors, as the raw protected call reports them: Lua
    /// errors of any value, mlua's callback errors, both budgets. Each
    /// leaves the stack as it was, and the next call runs normally.
    #[test]
    fn call_errors() {
        use metatopia_sim::script::{ScriptCall, ScriptEvent, ScriptEventKind, ScriptFault};
        use metatopia_sim::state::{ScriptSlot, Settings, State};
        let world = State::new(metatopia_sim::id::RegionId(1), Settings::default(), &[]);
        let me = world.root();
        let limits = Limits::from_settings(&world.settings);
        let source = "function on_timer(t)\n\
            if t == 1 then error('boom') end\n\
            if t == 2 then error({}) end\n\
            if t == 3 then error(setmetatable({}, { __tostring = function() return 'custom' end })) end\n\
            if t == 4 then return string.format('%p', {}) end\n\
            if t == 5 then while true do end end\n\
            if t == 6 then local x = {} for i = 1, 1e8 do x[i] = i end end\n\
            state.n = t\n\
            end";
        let sandbox = Sandbox::new(source, me, &limits).unwrap();
        let slot = ScriptSlot {
            source: [0; 32],
            state: Vec::new(),
            faults: 0,
            suspended: false,
        };
        let call = |timer: u32| {
            let inbox = [ScriptEvent {
                id: 0,
                kind: ScriptEventKind::Timer { timer },
            }];
            sandbox.run(
                &ScriptCall {
                    state: &world,
                    script: me,
                    slot: &slot,
                    inbox: &inbox,
                    tick: 1,
                    seed: [1; 32],
                },
                &limits,
            )
        };
        #[allow(unsafe_code)]
        // SAFETY: reads the stack height of the idle state.
        let top = || unsafe { mlua::ffi::lua_gettop(sandbox.main.0) };
        let text = |r: Result<_, ScriptFault>| match r {
            Err(ScriptFault::Error(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(text(call(1)).contains("boom"));
        assert!(text(call(2)).contains("table: 0x…"));
        assert!(text(call(3)).contains("custom"));
        assert!(text(call(4)).contains("%p prints addresses"));
        assert!(matches!(call(5), Err(ScriptFault::InstructionBudget(_))));
        assert!(matches!(call(6), Err(ScriptFault::MemoryCap(_))));
        assert_eq!(top(), 0);
        let out = call(7).unwrap();
        assert!(out.state.is_some());
        assert_eq!(top(), 0);
    }

    /// The hot list starts with the Lua state and covers the handler and
    /// the globals it names; a sandbox without handlers still lists its
    /// state.
    #[test]
    fn hot_lines_list_the_state_and_handlers() {
        let me = ElementId {
            region: metatopia_sim::id::RegionId(1),
            counter: 7,
        };
        let limits = Limits::from_settings(&metatopia_sim::state::Settings::default());
        let mut out = [std::ptr::null(); crate::prefetch::HOT_MAX];
        let idle = Sandbox::new("local x = 1", me, &limits).unwrap();
        let n_idle = idle.hot_lines(&mut out);
        assert!(n_idle >= 8, "{n_idle}");
        assert_eq!(out[2], idle.main.0.cast_const().cast());
        let busy = Sandbox::new(
            "function on_timer(t) state.n = (state.n or 0) + 1; set_timer(1, 1) end",
            me,
            &limits,
        )
        .unwrap();
        let n = busy.hot_lines(&mut out);
        assert!(n > n_idle + 10, "{n} vs {n_idle}");
        assert!(n <= crate::prefetch::HOT_MAX);
        assert!(out[..n].iter().all(|p| !p.is_null()));
    }

    #[test]
    fn errors_hide_addresses() {
        let e = mlua::Error::runtime("bad table: 0x55d0c0ffee00 here");
        assert_eq!(describe_error(&e), "bad table: 0x… here");
    }
}
