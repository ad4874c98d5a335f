//! The call path: one call of a sandbox over its inbox.

use std::sync::atomic::Ordering;

use mlua::Value;

use metatopia_sim::script::{ScriptCall, ScriptEventKind, ScriptFault, ScriptOutput};
use metatopia_sim::{ElementId, PlayerId};

use super::Sandbox;
use super::context::{CTX, Ctx, SAVED, WORLD, with_ctx};
use crate::budget::Limits;
use crate::codec;
use crate::errors::{describe_error, rt};
use crate::rng::Rng;

/// An id as text on the stack: passing ids to Lua allocates nothing here.
struct IdText {
    buf: [u8; 64],
    len: usize,
}

impl IdText {
    fn player(p: PlayerId) -> IdText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 64];
        for (i, b) in p.0.iter().enumerate() {
            buf[2 * i] = HEX[usize::from(b >> 4)];
            buf[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        IdText { buf, len: 64 }
    }

    fn element(e: ElementId) -> IdText {
        let mut t = IdText {
            buf: [0; 64],
            len: 0,
        };
        t.push_int(u64::from(e.region.0));
        t.buf[t.len] = b'.';
        t.len += 1;
        t.push_int(e.counter);
        t
    }

    fn speaker(s: &metatopia_sim::state::Speaker) -> IdText {
        match s {
            metatopia_sim::state::Speaker::Player(p) => IdText::player(*p),
            metatopia_sim::state::Speaker::Script(e) => IdText::element(*e),
        }
    }

    fn push_int(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for d in digits[..n].iter().rev() {
            self.buf[self.len] = *d;
            self.len += 1;
        }
    }
}

/// Handler names, in the order of [`handler_index`].
pub(super) const HANDLERS: [&str; 7] = [
    "on_touch",
    "on_heard",
    "on_message",
    "on_timer",
    "on_enter",
    "on_leave",
    "on_collision",
];

fn handler_index(kind: &ScriptEventKind) -> usize {
    match kind {
        ScriptEventKind::Touched { .. } => 0,
        ScriptEventKind::Heard { .. } => 1,
        ScriptEventKind::Message { .. } | ScriptEventKind::RemoteMessage { .. } => 2,
        ScriptEventKind::Timer { .. } => 3,
        ScriptEventKind::Entered { .. } => 4,
        ScriptEventKind::Left { .. } | ScriptEventKind::Crossed { .. } => 5,
        ScriptEventKind::Collision { .. } => 6,
    }
}

impl Sandbox {
    /// Resets the budget and the memory cap for a call (or the load).
    pub(super) fn arm(&self, limits: &Limits) -> mlua::Result<()> {
        let b = &self.budget;
        b.used.store(0, Ordering::Relaxed);
        b.limit
            .store(limits.instructions_per_handler, Ordering::Relaxed);
        b.exhausted.store(false, Ordering::Relaxed);
        b.memory.store(false, Ordering::Relaxed);
        b.memory_limit.store(limits.memory_bytes, Ordering::Relaxed);
        // The cap counts from the idle size, not from whatever garbage
        // earlier calls left: an allocation fails only if live data would
        // pass the cap after an emergency collection.
        let cap = limits.memory_bytes.min(usize::MAX as u64 / 2) as usize;
        let margin = if self.ran.get() {
            self.idle_bytes.min(cap / 2)
        } else {
            0
        };
        let limit = self.idle_bytes.saturating_add(cap - margin);
        if self.cap.get() != limit {
            self.lua.set_memory_limit(limit)?;
            self.cap.set(limit);
        }
        Ok(())
    }

    pub(super) fn fault_of(&self, e: &mlua::Error, limits: &Limits) -> ScriptFault {
        if self.budget.exhausted.load(Ordering::Relaxed) {
            return ScriptFault::InstructionBudget(limits.instructions_per_handler);
        }
        if self.budget.memory.load(Ordering::Relaxed) || matches!(e, mlua::Error::MemoryError(_)) {
            return ScriptFault::MemoryCap(limits.memory_bytes);
        }
        ScriptFault::Error(describe_error(e))
    }

    /// Runs the script over the call's inbox.
    pub fn run(&self, call: &ScriptCall<'_>, limits: &Limits) -> Result<ScriptOutput, ScriptFault> {
        let ctx = Ctx {
            script: call.script,
            out: ScriptOutput::default(),
            rng: Rng::from_seed(&call.seed),
            limits: limits.clone(),
            touched: false,
        };
        let cell = std::cell::RefCell::new(ctx);
        let result = CTX.set(&cell, || {
            WORLD.set(call.state, || {
                SAVED.set(&call.slot.state, || self.run_inner(call, limits))
            })
        });
        self.ran.set(true);
        let ctx = cell.into_inner();
        // A memory fault raised the cap to let the error out: set it again
        // at the next call. Keep garbage from piling up across calls.
        if self.budget.memory.load(Ordering::Relaxed) {
            let _ = self.lua.set_memory_limit(0);
            self.cap.set(0);
        }
        if self.lua_bytes() > self.idle_bytes + 256 * 1024 {
            let _ = self.lua.gc_collect();
        }
        let state = match result {
            Ok(state) => state,
            Err(e) => return Err(self.fault_of(&e, limits)),
        };
        if let Some(e) = self.budget.fault() {
            return Err(self.fault_of(&e, limits));
        }
        let mut out = ctx.out;
        if let Some(bytes) = state?
            && bytes != call.slot.state
        {
            out.state = Some(bytes);
        }
        Ok(out)
    }

    /// Runs the inbox's handlers in one protected call into Lua: restarts
    /// the hook's countdown (and the creation numbers tables and closures
    /// hash by, vendor/lua-src/PATCHES.md), clears `state`, then calls
    /// each handler with its arguments pushed straight onto the stack.
    /// Stops after a handler that ran out of budget.
    ///
    /// Long on purpose: the whole inbox runs inside one protected call, so the handlers' argument pushes must sit in this closure (nothing with a destructor may be live when Lua long-jumps).
    #[allow(unsafe_code)]
    fn call_handlers(&self, inbox: &[metatopia_sim::script::ScriptEvent]) -> mlua::Result<()> {
        use mlua::ffi;
        let raw = self.raw;
        let budget = &*self.budget;
        let l = self.main.0;
        // SAFETY: `l` is this sandbox's main state, used by no one else
        // meanwhile; the stack is checked first. The closure runs inside
        // `raw::pcall`: a Lua error long-jumps out of it, which is why
        // nothing in it owns a value with a destructor (only `Copy` data,
        // references and stack buffers). The registry indices are held
        // by `self.refs`, so they name live values.
        let status = unsafe {
            if ffi::lua_checkstack(l, 4) == 0 {
                return Err(mlua::Error::StackError);
            }
            crate::raw::pcall(l, |l| {
                ffi::lua_sethook(
                    l,
                    ffi::lua_gethook(l),
                    ffi::lua_gethookmask(l),
                    ffi::lua_gethookcount(l),
                );
                ffi::luaL_checkstack(l, 8, std::ptr::null());
                ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, raw.env_shadow.into());
                ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, raw.state_key.into());
                ffi::lua_pushnil(l);
                ffi::lua_rawset(l, -3);
                ffi::lua_pop(l, 1);
                for event in inbox {
                    let r = raw.handlers[handler_index(&event.kind)];
                    if r == 0 {
                        continue;
                    }
                    budget.used.store(0, Ordering::Relaxed);
                    ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, r.into());
                    let push = |t: &IdText| {
                        ffi::lua_pushlstring(l, t.buf.as_ptr().cast(), t.len);
                    };
                    let push_str = |t: &str| {
                        ffi::lua_pushlstring(l, t.as_ptr().cast(), t.len());
                    };
                    let nargs = match &event.kind {
                        ScriptEventKind::Touched { by, element } => {
                            push(&IdText::player(*by));
                            push(&IdText::element(*element));
                            2
                        }
                        ScriptEventKind::Heard { from, text } => {
                            push(&IdText::speaker(from));
                            push_str(text);
                            2
                        }
                        ScriptEventKind::Message { from, body } => {
                            push(&IdText::element(*from));
                            push_str(body);
                            2
                        }
                        ScriptEventKind::RemoteMessage { region, from, body } => {
                            push(&IdText::element(*from));
                            push_str(body);
                            ffi::lua_pushinteger(l, i64::from(region.0));
                            3
                        }
                        ScriptEventKind::Timer { timer } => {
                            ffi::lua_pushinteger(l, i64::from(*timer));
                            1
                        }
                        ScriptEventKind::Entered { player } | ScriptEventKind::Left { player } => {
                            push(&IdText::player(*player));
                            1
                        }
                        ScriptEventKind::Crossed { player, to } => {
                            push(&IdText::player(*player));
                            ffi::lua_pushinteger(l, i64::from(to.0));
                            2
                        }
                        ScriptEventKind::Collision { element, other } => {
                            push(&IdText::element(*element));
                            push(&IdText::element(*other));
                            2
                        }
                    };
                    ffi::lua_call(l, nargs, 0);
                    if budget.fault().is_some() {
                        break;
                    }
                }
            })
        };
        if status == ffi::LUA_OK {
            return Ok(());
        }
        // SAFETY: as above; the failed call left its error value on top.
        Err(unsafe { self.pop_error(status) })
    }

    /// Pops the error value a failed protected call left on top of the
    /// stack as the error mlua's `exec_raw` would have returned: mlua's own
    /// errors (userdata) as mlua reads them, strings as runtime or memory
    /// errors by `status`.
    ///
    /// # Safety
    /// The main state's stack has the error value on top, and no one else
    /// uses the state meanwhile.
    #[allow(unsafe_code)]
    unsafe fn pop_error(&self, status: std::ffi::c_int) -> mlua::Error {
        use mlua::ffi;
        let l = self.main.0;
        let slot = self.error_key.id();
        // SAFETY: the caller's contract. `lua_rawseti` into the registry
        // slot the key holds (which exists) neither allocates nor raises;
        // `lua_tolstring` is applied to strings only.
        unsafe {
            if ffi::lua_type(l, -1) == ffi::LUA_TUSERDATA {
                ffi::lua_rawseti(l, ffi::LUA_REGISTRYINDEX, slot.into());
                let value = self.lua.registry_value::<Value>(&self.error_key);
                ffi::lua_pushboolean(l, 1);
                ffi::lua_rawseti(l, ffi::LUA_REGISTRYINDEX, slot.into());
                return match value {
                    Ok(Value::Error(e)) => *e,
                    Ok(other) => rt(format!("error object is a {}", other.type_name())),
                    Err(e) => e,
                };
            }
            let text = if ffi::lua_type(l, -1) == ffi::LUA_TSTRING {
                let mut len = 0usize;
                let p = ffi::lua_tolstring(l, -1, &mut len);
                String::from_utf8_lossy(std::slice::from_raw_parts(p.cast::<u8>(), len))
                    .into_owned()
            } else {
                format!(
                    "error object is a {}",
                    crate::raw::Arg::at(l, -1).type_name()
                )
            };
            ffi::lua_pop(l, 1);
            if status == ffi::LUA_ERRMEM {
                mlua::Error::MemoryError(text)
            } else {
                mlua::Error::RuntimeError(text)
            }
        }
    }

    /// The call proper. The outer result is a Lua failure; the inner one a
    /// state that cannot be stored.
    fn run_inner(
        &self,
        call: &ScriptCall<'_>,
        limits: &Limits,
    ) -> mlua::Result<Result<Option<Vec<u8>>, ScriptFault>> {
        self.arm(limits)?;
        // `state` is decoded when a handler first uses it (prelude.lua,
        // `load_state`).
        self.call_handlers(call.inbox)?;
        if let Some(e) = self.budget.fault() {
            return Err(e);
        }
        let touched = with_ctx(|ctx, _| Ok(ctx.touched))?;
        if !touched {
            return Ok(Ok(None));
        }
        let data = match self.read_state(limits.state_bytes) {
            Ok(data) => data,
            Err(ty) => {
                return Ok(Err(ScriptFault::Error(format!(
                    "state must be a table, got {ty}"
                ))));
            }
        };
        let encoded = data
            .and_then(|d| codec::encode(&d, limits.state_bytes))
            .map(Some)
            .map_err(|e| ScriptFault::Error(e.to_string()));
        Ok(encoded)
    }
}
