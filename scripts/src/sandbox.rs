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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mlua::chunk::ChunkMode;
use mlua::{Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Table, Value, VmState};

use metatopia_sim::script::{ScriptCall, ScriptEventKind, ScriptFault, ScriptOutput, Write};
use metatopia_sim::{ElementId, Fx, PlayerId, State, Vec3};

use crate::bytecode;
use crate::codec;
use crate::fx;
use crate::pattern;
use crate::raw::{self, Arg, Ret};
use crate::rng::Rng;

/// The hook runs every this many VM instructions; budgets are counted in
/// these steps (a budget is rounded up to a multiple of it).
pub const HOOK_STEP: u32 = 1000;

/// Per-call limits, from the region's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// VM instructions per handler (and for the top level).
    pub instructions_per_handler: u64,
    /// Bytes of live Lua data one call may hold (on top of the idle state).
    pub memory_bytes: u64,
    /// Largest encoded `state`, bytes.
    pub state_bytes: u32,
    /// Most sends plus says in one call.
    pub sends_max: u32,
    /// Longest text (chat, message, name), bytes.
    pub text_bytes: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            instructions_per_handler: 1_000_000,
            memory_bytes: 4 * 1024 * 1024,
            state_bytes: 65_536,
            sends_max: 16,
            text_bytes: 1024,
        }
    }
}

impl Limits {
    /// The limits a region's settings give.
    pub fn from_settings(s: &metatopia_sim::Settings) -> Limits {
        Limits {
            instructions_per_handler: u64::from(s.script_instructions_max),
            memory_bytes: u64::from(s.script_memory_bytes_max),
            state_bytes: s.script_state_bytes_max,
            sends_max: s.script_sends_per_tick_max,
            text_bytes: s.text_bytes_max,
        }
    }
}

/// Why a script could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The Lua state could not be created or hardened (a bug or no memory).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// The source does not compile.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The source compiles but breaks a rule checked before it runs.
    #[error("{0}")]
    Refused(String),
    /// The top level fails when run, or leaves something that cannot be
    /// sealed.
    #[error("the script fails when loaded: {0}")]
    TopLevel(String),
}

/// Shared between the hook, the catch check and the call.
#[derive(Debug, Default)]
struct Budget {
    used: AtomicU64,
    limit: AtomicU64,
    exhausted: AtomicBool,
    memory: AtomicBool,
    /// Bytes one call may hold, for buffers built outside Lua.
    memory_limit: AtomicU64,
}

impl Budget {
    /// Charges `n` instructions of work done outside the VM; false once
    /// the budget is gone (and the fault is set).
    fn charge(&self, n: u64) -> bool {
        let used = self.used.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if used > self.limit.load(Ordering::Relaxed) {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        self.fault().is_none()
    }

    fn fault(&self) -> Option<mlua::Error> {
        if self.exhausted.load(Ordering::Relaxed) {
            Some(mlua::Error::runtime("instruction budget exhausted"))
        } else if self.memory.load(Ordering::Relaxed) {
            Some(mlua::Error::runtime("memory cap exceeded"))
        } else {
            None
        }
    }
}

/// What the host functions see during a call.
struct Ctx {
    script: ElementId,
    out: ScriptOutput,
    rng: Rng,
    limits: Limits,
    /// Whether a handler used or assigned `state` (else it is unchanged).
    touched: bool,
}

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

fn rt(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(msg.into())
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

// The call's context, the world as it was at the start of the tick and the
// script's stored `state` bytes: set for the duration of [`Sandbox::run`]
// on the thread that runs it (Lua calls the host functions on that
// thread). Borrowed, not copied: a call clones nothing shared, so calls on
// different threads write to no common cache line.
scoped_tls::scoped_thread_local!(static CTX: std::cell::RefCell<Ctx>);
scoped_tls::scoped_thread_local!(static WORLD: State);
scoped_tls::scoped_thread_local!(static SAVED: Vec<u8>);

fn with_ctx<R>(f: impl FnOnce(&mut Ctx, &State) -> mlua::Result<R>) -> mlua::Result<R> {
    if !CTX.is_set() {
        return Err(rt(
            "the world, say, send, timers, writes and math.random are only available inside handlers (the top level runs once, when the script loads)",
        ));
    }
    CTX.with(|cell| {
        let mut ctx = cell
            .try_borrow_mut()
            .map_err(|_| rt("the sandbox's call context is busy"))?;
        WORLD.with(|world| f(&mut ctx, world))
    })
}

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

/// A text argument: a string (numbers are not silently converted).
fn text_arg(v: &Arg, what: &str) -> mlua::Result<String> {
    match v {
        Arg::Str(s) => std::str::from_utf8(s)
            .map(str::to_string)
            .map_err(|_| rt(format!("{what} must be UTF-8 text"))),
        other => Err(rt(format!(
            "{what} must be a string, got {}",
            other.type_name()
        ))),
    }
}

fn element_arg(v: &Arg, what: &str) -> mlua::Result<ElementId> {
    let s = text_arg(v, what)?;
    s.parse().map_err(|_| {
        rt(format!(
            "{what} must be an element id like \"1.42\", got {s:?}"
        ))
    })
}

fn int_arg(v: &Arg, what: &str) -> mlua::Result<i64> {
    match v {
        Arg::Int(i) => Ok(*i),
        Arg::Float(n) => Err(rt(format!(
            "{what} is a float ({n}); world values are integers or fx: use fx(...)"
        ))),
        other => Err(rt(format!(
            "{what} must be an integer, got {}",
            other.type_name()
        ))),
    }
}

/// Text for events, chat and sends: bounded and without control characters
/// other than newlines (the sim checks again at merge).
fn check_text(s: &str, max: u32, what: &str) -> mlua::Result<()> {
    if s.len() as u64 > u64::from(max) {
        return Err(rt(format!("{what} is {} bytes, limit {max}", s.len())));
    }
    Ok(())
}

/// Refuses `%p` (it prints addresses) in a format string.
fn check_format(fmt: &[u8]) -> mlua::Result<()> {
    let mut i = 0;
    while i < fmt.len() {
        if fmt[i] == b'%' {
            i += 1;
            while i < fmt.len() && b"-+ #0123456789.".contains(&fmt[i]) {
                i += 1;
            }
            if i < fmt.len() && fmt[i] == b'p' {
                return Err(rt(
                    "string.format: %p prints addresses, which differ between replicas",
                ));
            }
        }
        i += 1;
    }
    Ok(())
}

fn install_host(lua: &Lua, budget: &Arc<Budget>) -> mlua::Result<Table> {
    let h = lua.create_table()?;
    let b = budget.clone();
    h.set(
        "check",
        lua.create_function(move |lua, args: MultiValue| {
            if let Some(e) = b.fault() {
                return Err(e);
            }
            if let (Some(Value::Boolean(false)), Some(Value::String(msg))) =
                (args.front(), args.get(1))
                && msg.as_bytes() == b"not enough memory"
            {
                b.memory.store(true, Ordering::Relaxed);
                // Room for the error to travel up.
                let _ = lua.set_memory_limit(lua.used_memory() + 256 * 1024);
                return Err(rt("memory cap exceeded"));
            }
            Ok(args)
        })?,
    )?;
    let b = budget.clone();
    h.set(
        "faulted",
        lua.create_function(move |_, ()| Ok(b.fault().is_some()))?,
    )?;
    h.set(
        "check_format",
        lua.create_function(|_, fmt: Value| match fmt {
            Value::String(s) => check_format(&s.as_bytes()),
            _ => Ok(()),
        })?,
    )?;
    h.set(
        "random",
        lua.create_function(|_, args: MultiValue| {
            let a: Vec<Value> = args.into_iter().collect();
            with_ctx(|ctx, _| {
                let r = &mut ctx.rng;
                match a.as_slice() {
                    [] => Ok(Value::Number(r.next_f64())),
                    [m] => {
                        let m = int_arg(&Arg::of(m), "math.random(m)")?;
                        if m == 0 {
                            return Ok(Value::Integer(r.next_u64() as i64));
                        }
                        if m < 1 {
                            return Err(rt("bad argument #1 to 'random' (interval is empty)"));
                        }
                        Ok(Value::Integer(r.range(1, m)))
                    }
                    [m, n] => {
                        let (m, n) = (
                            int_arg(&Arg::of(m), "math.random(m, n)")?,
                            int_arg(&Arg::of(n), "math.random(m, n)")?,
                        );
                        if m > n {
                            return Err(rt("bad argument #2 to 'random' (interval is empty)"));
                        }
                        Ok(Value::Integer(r.range(m, n)))
                    }
                    _ => Err(rt("wrong number of arguments to 'random'")),
                }
            })
        })?,
    )?;
    let memory = &budget.memory;
    for (name, f) in HOST_FUNCTIONS {
        h.set(name, raw::function(lua, memory, f)?)?;
    }
    h.set("state_index", state_index_function(lua, budget)?)?;
    h.set(
        "touch_state",
        lua.create_function(|_, ()| {
            with_ctx(|ctx, _| {
                ctx.touched = true;
                Ok(())
            })
        })?,
    )?;
    h.set("patterns", patterns(lua, budget)?)?;
    h.set("world", world_table(lua)?)?;
    h.set("fx", fx::table(lua, memory)?)?;
    Ok(h)
}

/// The host functions a handler calls most, run as C functions
/// ([`raw::function`]): an mlua callback costs several times more per call
/// and touches more memory of a Lua state that is cold at every tick.
const HOST_FUNCTIONS: [(&str, raw::RawFn); 7] = [
    ("say", host_say),
    ("send", host_send),
    ("set_timer", host_set_timer),
    ("set_pos", host_set_pos),
    ("set_name", host_set_name),
    ("impulse", host_impulse),
    ("set_velocity", host_set_velocity),
];

fn fx_arg(v: &Arg, what: &str) -> mlua::Result<Fx> {
    int_arg(v, what).map(Fx::from_bits)
}

fn host_say(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let text = text_arg(&a[0], "say: text")?;
    let radius = match &a[1] {
        Arg::Nil => None,
        v => Some(fx_arg(v, "say: radius")?),
    };
    with_ctx(|ctx, _| {
        check_text(&text, ctx.limits.text_bytes, "say: text")?;
        push_send_count(ctx)?;
        ctx.out.says.push((text, radius));
        Ok(Ret::None)
    })
}

fn host_send(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let target = element_arg(&a[0], "send: target")?;
    let body = text_arg(&a[1], "send: message")?;
    with_ctx(|ctx, _| {
        check_text(&body, ctx.limits.text_bytes, "send: message")?;
        push_send_count(ctx)?;
        ctx.out.sends.push((target, body));
        Ok(Ret::None)
    })
}

fn host_set_timer(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let id = int_arg(&a[0], "set_timer: id")?;
    let id = u32::try_from(id).map_err(|_| rt("set_timer: id must be in 0..=4294967295"))?;
    let delay = int_arg(&a[1], "set_timer: delay")?;
    if !(1..=1_000_000_000).contains(&delay) {
        return Err(rt("set_timer: delay must be 1..=1000000000 ticks"));
    }
    with_ctx(|ctx, _| {
        if ctx.out.timers.len() >= 64 {
            return Err(rt("set_timer: at most 64 timers per call"));
        }
        ctx.out.timers.push((id, delay as u64));
        Ok(Ret::None)
    })
}

fn host_set_pos(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let element = element_arg(&a[0], "set_pos: element")?;
    let pos = Vec3::new(
        fx_arg(&a[1], "set_pos: x")?,
        fx_arg(&a[2], "set_pos: y")?,
        fx_arg(&a[3], "set_pos: z")?,
    );
    with_ctx(|ctx, world| {
        check_writable(ctx, world, element, "set_pos")?;
        if !world.in_bounds(pos) {
            return Err(rt(format!("set_pos: {pos} is outside the region")));
        }
        ctx.out.writes.push(Write::SetPos { element, pos });
        Ok(Ret::None)
    })
}

fn host_set_name(a: &[Arg; 4]) -> mlua::Result<Ret> {
    let element = element_arg(&a[0], "set_name: element")?;
    let name = text_arg(&a[1], "set_name: name")?;
    with_ctx(|ctx, world| {
        check_writable(ctx, world, element, "set_name")?;
        let max = world.settings.name_bytes_max;
        check_text(&name, max, "set_name: name")?;
        ctx.out.writes.push(Write::SetName { element, name });
        Ok(Ret::None)
    })
}

fn host_impulse(a: &[Arg; 4]) -> mlua::Result<Ret> {
    body_write(a, "impulse", true)
}

fn host_set_velocity(a: &[Arg; 4]) -> mlua::Result<Ret> {
    body_write(a, "set_velocity", false)
}

/// `impulse` and `set_velocity`.
fn body_write(a: &[Arg; 4], name: &str, impulse: bool) -> mlua::Result<Ret> {
    let element = element_arg(&a[0], name)?;
    let v = Vec3::new(
        fx_arg(&a[1], name)?,
        fx_arg(&a[2], name)?,
        fx_arg(&a[3], name)?,
    );
    with_ctx(|ctx, world| {
        check_writable(ctx, world, element, name)?;
        if !world.bodies.contains_key(&element) {
            return Err(rt(format!(
                "{name}: {element} is not a body (spawn it with a body to give it physics)"
            )));
        }
        ctx.out.writes.push(if impulse {
            Write::Impulse {
                element,
                impulse: v,
            }
        } else {
            Write::SetVelocity { element, vel: v }
        });
        Ok(Ret::None)
    })
}

/// `__index` of the script's globals: `state`, decoded from the stored
/// bytes on its first use in a call and kept in the globals for the rest
/// of the call (the host clears it before each call); any other missing
/// global is nil. A C function with the budget as its upvalue: this runs
/// in most calls, and a Lua closure calling a Rust callback cost several
/// times more.
#[allow(unsafe_code)]
fn state_index_function(lua: &Lua, budget: &Arc<Budget>) -> mlua::Result<Function> {
    use mlua::ffi;
    use std::ffi::c_int;

    unsafe extern "C-unwind" fn index(l: *mut ffi::lua_State) -> c_int {
        // SAFETY: Lua calls this as `__index(t, k)`; the upvalue is the
        // budget's memory flag (the sandbox owns it; it outlives its Lua
        // state). Whatever allocates on the Lua side runs inside `push_found`'s protected
        // call, and `found` is gone before `lua_error`, so no Lua error
        // long-jumps over a value with a destructor.
        unsafe {
            let mut len = 0usize;
            if ffi::lua_type(l, 1) != ffi::LUA_TTABLE || ffi::lua_type(l, 2) != ffi::LUA_TSTRING {
                return 0;
            }
            let key = ffi::lua_tolstring(l, 2, &mut len);
            if std::slice::from_raw_parts(key.cast::<u8>(), len) != b"state" {
                return 0;
            }
            // A panic must not unwind into Lua's C frames. The stored
            // bytes are checked, then built straight into Lua.
            let raise = std::panic::catch_unwind(|| {
                match with_ctx(|ctx, _| Ok(!std::mem::replace(&mut ctx.touched, true))) {
                    Ok(false) => {
                        ffi::lua_pushnil(l);
                        false
                    }
                    Ok(true) => SAVED.with(|bytes| {
                        let found = match codec::check(bytes) {
                            Ok(()) => raw::Found::Encoded(bytes),
                            Err(e) => raw::Found::Error(format!(
                                "{e} (the script's state cannot be read)"
                            )),
                        };
                        raw::push_found(l, found)
                    }),
                    Err(e) => raw::push_found(l, raw::Found::Error(describe_error(&e))),
                }
            })
            .unwrap_or_else(|_| {
                raw::push_found(l, raw::Found::Error("state: internal error".into()))
            });
            if raise {
                ffi::lua_error(l);
            }
            // t.state = s, then return s.
            ffi::lua_pushvalue(l, 2);
            ffi::lua_pushvalue(l, -2);
            ffi::lua_rawset(l, 1);
            1
        }
    }

    raw::c_closure(lua, &budget.memory, index, 0)
}

/// Runs the matcher with its steps charged to the budget; a budget error
/// becomes the budget fault, a pattern error Lua's message.
fn run_matcher<'a, R>(
    budget: &'a Budget,
    src: &'a [u8],
    pat: &'a [u8],
    f: impl FnOnce(
        &mut pattern::Matcher<'a, Box<dyn FnMut(u64) -> bool + 'a>>,
    ) -> Result<R, pattern::PatternError>,
) -> mlua::Result<R> {
    let mut charged = 0u64;
    let charge: Box<dyn FnMut(u64) -> bool + 'a> = Box::new(move |total: u64| {
        let n = total.saturating_sub(charged);
        charged = total;
        budget.charge(n)
    });
    let mut m = pattern::Matcher::new(src, pat, charge);
    let r = f(&mut m).and_then(|r| m.finish().map(|()| r));
    r.map_err(|e| match e {
        pattern::PatternError::Budget => mlua::Error::runtime("instruction budget exhausted"),
        pattern::PatternError::Lua(m) => rt(m),
    })
}

/// A string argument as Lua's `luaL_checklstring` takes it (numbers are
/// converted).
fn str_arg(lua: &Lua, v: Value, n: u32, f: &str) -> mlua::Result<mlua::LuaString> {
    let t = v.type_name();
    match v {
        Value::String(s) => Ok(s),
        v @ (Value::Integer(_) | Value::Number(_)) => lua.coerce_string(v)?.ok_or_else(|| {
            rt(format!(
                "bad argument #{n} to '{f}' (string expected, got {t})"
            ))
        }),
        _ => Err(rt(format!(
            "bad argument #{n} to '{f}' (string expected, got {t})"
        ))),
    }
}

fn opt_int(lua: &Lua, v: Value, n: u32, f: &str) -> mlua::Result<Option<i64>> {
    if v.is_nil() {
        return Ok(None);
    }
    let t = v.type_name();
    lua.coerce_integer(v)?.map(Some).ok_or_else(|| {
        rt(format!(
            "bad argument #{n} to '{f}' (number expected, got {t})"
        ))
    })
}

fn capture_value(lua: &Lua, src: &[u8], c: pattern::Capture) -> mlua::Result<Value> {
    Ok(match c {
        pattern::Capture::Position(p) => Value::Integer(p as i64),
        pattern::Capture::Text(a, b) => Value::String(lua.create_string(&src[a..b])?),
    })
}

fn captures_values(lua: &Lua, src: &[u8], caps: Vec<pattern::Capture>) -> mlua::Result<Vec<Value>> {
    caps.into_iter()
        .map(|c| capture_value(lua, src, c))
        .collect()
}

/// `string.find`, `match`, `gmatch` and `gsub` with counted work
/// ([`pattern`]).
fn patterns(lua: &Lua, budget: &Arc<Budget>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (name, find) in [("find", true), ("match", false)] {
        let b = budget.clone();
        t.set(
            name,
            lua.create_function(
                move |lua, (s, p, init, plain): (Value, Value, Value, Value)| {
                    let s = str_arg(lua, s, 1, name)?;
                    let p = str_arg(lua, p, 2, name)?;
                    let init = opt_int(lua, init, 3, name)?;
                    let (src, pat) = (s.as_bytes(), p.as_bytes());
                    let init = pattern::init_index(init, src.len());
                    if init > src.len() {
                        return Ok(MultiValue::from_iter([Value::Nil]));
                    }
                    if find
                        && (plain.as_boolean().unwrap_or(!plain.is_nil())
                            || pattern::no_specials(&pat))
                    {
                        let mut steps = 0;
                        let r = pattern::plain_find(&src, &pat, init, &mut steps);
                        if !b.charge(steps) {
                            return Err(mlua::Error::runtime("instruction budget exhausted"));
                        }
                        return Ok(match r {
                            Some((a, e)) => MultiValue::from_iter([
                                Value::Integer(a as i64 + 1),
                                Value::Integer(e as i64),
                            ]),
                            None => MultiValue::from_iter([Value::Nil]),
                        });
                    }
                    let anchor = pat.first() == Some(&b'^');
                    let found = run_matcher(&b, &src, &pat, |m| {
                        match m.find(init, usize::from(anchor), anchor, None)? {
                            Some((a, e)) => Ok(Some((a, e, m.captures(a, e, !find)?))),
                            None => Ok(None),
                        }
                    })?;
                    let Some((a, e, caps)) = found else {
                        return Ok(MultiValue::from_iter([Value::Nil]));
                    };
                    let mut out = Vec::with_capacity(caps.len() + 2);
                    if find {
                        out.push(Value::Integer(a as i64 + 1));
                        out.push(Value::Integer(e as i64));
                    }
                    out.extend(captures_values(lua, &src, caps)?);
                    Ok(MultiValue::from_iter(out))
                },
            )?,
        )?;
    }
    let b = budget.clone();
    t.set(
        "gmatch",
        lua.create_function(move |lua, (s, p, init): (Value, Value, Value)| {
            let s = str_arg(lua, s, 1, "gmatch")?;
            let p = str_arg(lua, p, 2, "gmatch")?;
            let init = opt_int(lua, init, 3, "gmatch")?;
            let len = s.as_bytes().len();
            let start = pattern::init_index(init, len).min(len + 1);
            // An iterator made while loading would carry its position
            // from call to call (docs/adr/0004): it works during load only.
            let at_load = with_ctx(|_, _| Ok(())).is_err();
            let pos = std::sync::Mutex::new((start, None::<usize>));
            let b = b.clone();
            lua.create_function(move |lua, ()| {
                if at_load && with_ctx(|_, _| Ok(())).is_ok() {
                    return Err(rt(
                        "a gmatch iterator made while the script loaded cannot be used in a handler (it would keep its position between calls)",
                    ));
                }
                let mut pos = pos.lock().map_err(|_| rt("gmatch iterator is broken"))?;
                let (src, pat) = (s.as_bytes(), p.as_bytes());
                let (from, last) = *pos;
                let found = run_matcher(&b, &src, &pat, |m| match m.find(from, 0, false, last)? {
                    Some((a, e)) => Ok(Some((e, m.captures(a, e, true)?))),
                    None => Ok(None),
                })?;
                match found {
                    Some((e, caps)) => {
                        *pos = (e, Some(e));
                        Ok(MultiValue::from_iter(captures_values(lua, &src, caps)?))
                    }
                    None => {
                        *pos = (len + 1, last);
                        Ok(MultiValue::from_iter([Value::Nil]))
                    }
                }
            })
        })?,
    )?;
    let b = budget.clone();
    t.set(
        "gsub",
        lua.create_function(
            move |lua, (s, p, repl, max_n): (Value, Value, Value, Value)| {
                let s = str_arg(lua, s, 1, "gsub")?;
                let p = str_arg(lua, p, 2, "gsub")?;
                if !matches!(
                    repl,
                    Value::Integer(_)
                        | Value::Number(_)
                        | Value::String(_)
                        | Value::Function(_)
                        | Value::Table(_)
                ) {
                    return Err(rt(format!(
                        "bad argument #3 to 'gsub' (string/function/table expected, got {})",
                        repl.type_name()
                    )));
                }
                let repl_text = match &repl {
                    Value::Integer(_) | Value::Number(_) | Value::String(_) => {
                        Some(str_arg(lua, repl.clone(), 3, "gsub")?)
                    }
                    _ => None,
                };
                let (src, pat) = (s.as_bytes(), p.as_bytes());
                let max_n = opt_int(lua, max_n, 4, "gsub")?.unwrap_or(src.len() as i64 + 1);
                let anchor = pat.first() == Some(&b'^');
                let cap = b.memory_limit.load(Ordering::Relaxed);
                let mut out: Vec<u8> = Vec::new();
                let (mut at, mut last, mut n) = (0usize, None::<usize>, 0i64);
                while n < max_n {
                    // One match, then its replacement (which may call Lua).
                    let found = run_matcher(&b, &src, &pat, |m| {
                        match m.find(at, usize::from(anchor), anchor, last)? {
                            Some((a, e)) => {
                                // Only what the replacement uses (an unfinished
                                // capture is an error only when used).
                                let all = match &repl {
                                    Value::Function(_) => m.captures(a, e, true)?,
                                    _ => Vec::new(),
                                };
                                let first = match &repl {
                                    Value::Table(_) => Some(m.one_capture(0, a, e)?),
                                    _ => None,
                                };
                                let mut text = Vec::new();
                                if let Some(r) = &repl_text {
                                    let r = r.as_bytes();
                                    let mut i = 0;
                                    while i < r.len() {
                                        if r[i] != b'%' {
                                            text.push(r[i]);
                                            i += 1;
                                            continue;
                                        }
                                        let c = r.get(i + 1).copied().unwrap_or(0);
                                        match c {
                                            b'%' => text.push(b'%'),
                                            b'0' => text.extend_from_slice(&src[a..e]),
                                            b'1'..=b'9' => {
                                                match m.one_capture(usize::from(c - b'1'), a, e)? {
                                                    pattern::Capture::Position(p) => text
                                                        .extend_from_slice(
                                                            p.to_string().as_bytes(),
                                                        ),
                                                    pattern::Capture::Text(x, y) => {
                                                        text.extend_from_slice(&src[x..y])
                                                    }
                                                }
                                            }
                                            _ => {
                                                return Err(pattern::PatternError::Lua(
                                                    "invalid use of '%' in replacement string"
                                                        .into(),
                                                ));
                                            }
                                        }
                                        i += 2;
                                    }
                                }
                                Ok(Some((a, e, all, first, text)))
                            }
                            None => Ok(None),
                        }
                    })?;
                    let Some((a, e, all, first, text)) = found else {
                        break;
                    };
                    n += 1;
                    out.extend_from_slice(&src[at..a]);
                    let value = match &repl {
                        Value::Function(f) => {
                            let args = captures_values(lua, &src, all)?;
                            f.call::<Value>(MultiValue::from_iter(args))?
                        }
                        Value::Table(t) => match first {
                            Some(c) => t.get::<Value>(capture_value(lua, &src, c)?)?,
                            None => Value::Nil,
                        },
                        _ => Value::Nil,
                    };
                    if repl_text.is_some() {
                        out.extend_from_slice(&text);
                    } else {
                        match value {
                            Value::Nil | Value::Boolean(false) => out.extend_from_slice(&src[a..e]),
                            v @ (Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
                                if let Some(t) = lua.coerce_string(v)? {
                                    out.extend_from_slice(&t.as_bytes());
                                }
                            }
                            other => {
                                return Err(rt(format!(
                                    "invalid replacement value (a {})",
                                    other.type_name()
                                )));
                            }
                        }
                    }
                    if !b.charge(out.len() as u64 / 64) {
                        return Err(mlua::Error::runtime("instruction budget exhausted"));
                    }
                    if out.len() as u64 > cap {
                        b.memory.store(true, Ordering::Relaxed);
                        return Err(rt("memory cap exceeded"));
                    }
                    at = e;
                    last = Some(e);
                    if anchor {
                        break;
                    }
                }
                out.extend_from_slice(&src[at.min(src.len())..]);
                Ok((lua.create_string(&out)?, n))
            },
        )?,
    )?;
    Ok(t)
}

fn push_send_count(ctx: &mut Ctx) -> mlua::Result<()> {
    let n = ctx.out.sends.len() + ctx.out.says.len();
    if n as u64 >= u64::from(ctx.limits.sends_max) {
        return Err(rt(format!(
            "too many messages in one tick (limit {})",
            ctx.limits.sends_max
        )));
    }
    Ok(())
}

fn check_writable(ctx: &Ctx, world: &State, element: ElementId, what: &str) -> mlua::Result<()> {
    if !world.elements.contains_key(&element) {
        return Err(rt(format!("{what}: no element {element}")));
    }
    if !world.is_within(element, ctx.script) {
        return Err(rt(format!(
            "{what}: {element} is not this script's element or one of its parts"
        )));
    }
    Ok(())
}

fn player_str(p: PlayerId) -> String {
    p.to_string()
}

fn world_table(lua: &Lua) -> mlua::Result<Table> {
    let w = lua.create_table()?;
    w.set(
        "tick",
        lua.create_function(|_, ()| with_ctx(|_, world| Ok(world.tick as i64)))?,
    )?;
    w.set(
        "time_ms",
        lua.create_function(|_, ()| with_ctx(|_, world| Ok(world.time_ms as i64)))?,
    )?;
    w.set(
        "me",
        lua.create_function(|_, ()| with_ctx(|c, _| Ok(c.script.to_string())))?,
    )?;
    w.set(
        "pos",
        lua.create_function(|_, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.pos")?;
            with_ctx(|_, world| match world.elements.get(&id) {
                Some(el) => Ok((
                    Some(el.pos.x.to_bits()),
                    Some(el.pos.y.to_bits()),
                    Some(el.pos.z.to_bits()),
                )),
                None => Ok((None, None, None)),
            })
        })?,
    )?;
    w.set(
        "name",
        lua.create_function(|_, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.name")?;
            with_ctx(|_, world| Ok(world.elements.get(&id).map(|el| el.name.clone())))
        })?,
    )?;
    w.set(
        "owner",
        lua.create_function(|_, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.owner")?;
            with_ctx(|_, world| {
                Ok(world
                    .elements
                    .get(&id)
                    .and_then(|el| el.owner)
                    .map(player_str))
            })
        })?,
    )?;
    w.set(
        "parent",
        lua.create_function(|_, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.parent")?;
            with_ctx(|_, world| {
                Ok(world
                    .elements
                    .get(&id)
                    .and_then(|el| el.parent)
                    .map(|p| p.to_string()))
            })
        })?,
    )?;
    w.set(
        "children",
        lua.create_function(|lua, e: Value| {
            let id = element_arg(&Arg::of(&e), "world.children")?;
            let kids: Vec<String> = with_ctx(|_, world| {
                Ok(world
                    .elements
                    .get(&id)
                    .map(|el| el.children.iter().map(|k| k.to_string()).collect())
                    .unwrap_or_default())
            })?;
            lua.create_sequence_from(kids)
        })?,
    )?;
    w.set(
        "player_name",
        lua.create_function(|_, p: Value| {
            let text = text_arg(&Arg::of(&p), "world.player_name")?;
            let Ok(id) = text.parse::<PlayerId>() else {
                return Ok(None);
            };
            with_ctx(|_, world| Ok(world.players.get(&id).map(|p| p.name.clone())))
        })?,
    )?;
    Ok(w)
}

/// Tidy an error for the owner: no addresses, no traceback, bounded.
pub fn describe_error(e: &mlua::Error) -> String {
    let mut inner = e;
    while let mlua::Error::CallbackError { cause, .. } = inner {
        inner = cause;
    }
    let text = match inner {
        mlua::Error::RuntimeError(m) | mlua::Error::SyntaxError { message: m, .. } => m.clone(),
        other => other.to_string(),
    };
    let text = text.split("\nstack traceback").next().unwrap_or("").trim();
    let mut out = String::with_capacity(text.len().min(512));
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if out.len() >= 500 {
            out.push('…');
            break;
        }
        out.push(c);
        // Addresses never reach the owner.
        if c == '0' && chars.peek() == Some(&'x') {
            chars.next();
            out.push('x');
            let mut hidden = false;
            while chars.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                chars.next();
                hidden = true;
            }
            if hidden {
                out.push('…');
            }
        }
    }
    out
}

/// Handler names, in the order of [`handler_index`].
const HANDLERS: [&str; 7] = [
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
        ScriptEventKind::Message { .. } => 2,
        ScriptEventKind::Timer { .. } => 3,
        ScriptEventKind::Entered { .. } => 4,
        ScriptEventKind::Left { .. } => 5,
        ScriptEventKind::Collision { .. } => 6,
    }
}

/// The prelude compiled once per process, without debug information: every
/// sandbox loads it without parsing, and holds less. (Bytecode from our own
/// compiler only; scripts can never load bytecode.)
fn prelude_bytecode() -> Result<&'static [u8], LoadError> {
    static CODE: std::sync::OnceLock<Result<Vec<u8>, String>> = std::sync::OnceLock::new();
    CODE.get_or_init(|| {
        let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(|e| e.to_string())?;
        let f = lua
            .load(include_str!("prelude.lua"))
            .set_name("=prelude")
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| describe_error(&e))?;
        Ok(f.dump(true))
    })
    .as_deref()
    .map_err(|e| LoadError::Setup(e.clone()))
}

/// A Lua state with the standard libraries scripts get, plus `debug` for
/// the prelude's own use.
#[allow(unsafe_code)]
fn new_lua() -> Lua {
    // SAFETY: `unsafe_new_with` is unsafe because the debug library can
    // break Lua's memory safety from Lua code. The prelude takes the four
    // functions it needs into locals and sets the global `debug` to nil
    // before any script code exists; scripts run in their own environment
    // built from an explicit list (where `debug` is an error proxy), so no
    // script can reach the library. No C-module loader is loaded (no
    // `package`), and chunks are loaded as text only.
    unsafe {
        Lua::unsafe_new_with(
            StdLib::TABLE
                | StdLib::STRING
                | StdLib::MATH
                | StdLib::UTF8
                | StdLib::COROUTINE
                | StdLib::DEBUG,
            LuaOptions::default(),
        )
    }
}

impl Sandbox {
    /// A hardened Lua state with `source` compiled, checked, its top level
    /// run once (as the script `me`, within `limits`) and everything it
    /// made sealed (docs/adr/0004). A pure function of its arguments: every
    /// replica that loads the same source gets the same sandbox.
    pub fn new(source: &str, me: ElementId, limits: &Limits) -> Result<Sandbox, LoadError> {
        let setup = |e: mlua::Error| LoadError::Setup(describe_error(&e));
        let lua = new_lua();
        let budget = Arc::new(Budget::default());
        let host = install_host(&lua, &budget).map_err(setup)?;
        let api: Table = lua
            .load(prelude_bytecode()?)
            .set_name("=prelude")
            .set_mode(ChunkMode::Binary)
            .call(host)
            .map_err(setup)?;
        let base: Table = api.get("base").map_err(setup)?;
        let seal: Function = api.get("seal").map_err(setup)?;
        let set_loading: Function = api.get("set_loading").map_err(setup)?;
        // `_ENV` is the chunk's argument. Same line, so line numbers stay
        // right.
        let wrapped = format!("local _ENV = ...; {source}");
        let chunk = lua
            .load(wrapped)
            .set_name("=script")
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| LoadError::Syntax(describe_error(&e)))?;
        let writes = bytecode::upvalue_writes(&chunk.dump(false))
            .map_err(|e| LoadError::Setup(e.to_string()))?;
        if let Some(w) = writes.first() {
            return Err(LoadError::Refused(format!(
                "line {}: a function assigns `{}`, a variable of an enclosing function; functions may read such variables but not assign them (data that lasts between calls goes in `state`)",
                w.line, w.name
            )));
        }
        let env = lua.create_table().map_err(setup)?;
        let env_mt = lua.create_table().map_err(setup)?;
        env_mt.raw_set("__index", base).map_err(setup)?;
        env_mt.raw_set("__metatable", false).map_err(setup)?;
        env.set_metatable(Some(env_mt.clone())).map_err(setup)?;
        env.raw_set("_G", env.clone()).map_err(setup)?;
        env.raw_set("me", me.to_string()).map_err(setup)?;
        let state_key = lua.create_string("state").map_err(setup)?;
        let mut main = std::ptr::null_mut();
        // SAFETY: only reads the state pointer mlua calls the closure with,
        // which is the main state (no coroutine is running).
        #[allow(unsafe_code)]
        unsafe {
            lua.exec_raw::<()>((), |l| main = l).map_err(setup)?;
        }
        let error_key = lua.create_registry_value(true).map_err(setup)?;
        let mut sandbox = Sandbox {
            lua,
            main: MainState(main),
            error_key,
            refs: Vec::new(),
            raw: RawRefs::default(),
            budget,
            idle_bytes: 0,
            cap: std::cell::Cell::new(0),
            ran: std::cell::Cell::new(false),
        };
        sandbox.idle_bytes = sandbox.lua.used_memory();
        let top = (|| {
            sandbox.arm(limits)?;
            sandbox.install_hook()?;
            set_loading.call::<()>(true)?;
            chunk.call::<()>(env.clone())?;
            if let Some(e) = sandbox.budget.fault() {
                return Err(e);
            }
            set_loading.call::<()>(false)?;
            sandbox.lua.remove_global_hook();
            seal.call::<Table>((env, env_mt))
        })();
        let _ = sandbox.lua.set_memory_limit(0);
        sandbox.cap.set(0);
        sandbox.lua.remove_global_hook();
        let shadow =
            top.map_err(|e| LoadError::TopLevel(sandbox.fault_of(&e, limits).to_string()))?;
        let mut reg = |v: Value| -> Result<std::ffi::c_int, LoadError> {
            let key = sandbox.lua.create_registry_value(v).map_err(setup)?;
            let id = key.id();
            sandbox.refs.push(key);
            Ok(id)
        };
        let mut raw = RawRefs {
            env_shadow: reg(Value::Table(shadow.clone()))?,
            state_key: reg(Value::String(state_key))?,
            ..RawRefs::default()
        };
        for (i, name) in HANDLERS.iter().enumerate() {
            match shadow.raw_get::<Value>(*name).map_err(setup)? {
                Value::Nil => {}
                f @ Value::Function(_) => raw.handlers[i] = reg(f)?,
                other => {
                    return Err(LoadError::TopLevel(format!(
                        "{name} must be a function, got {}",
                        other.type_name()
                    )));
                }
            }
        }
        sandbox.raw = raw;
        sandbox.install_hook().map_err(setup)?;
        sandbox.lua.gc_collect().map_err(setup)?;
        sandbox.idle_bytes = sandbox.lua.used_memory();
        Ok(sandbox)
    }

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

    /// The addresses the next call of this sandbox will most likely touch
    /// first (its Lua state, stack, handlers and the globals they name), as
    /// the Lua state is now: for [`crate::prefetch::Hot`]. Writes them to
    /// `out` and returns how many.
    #[allow(unsafe_code)]
    pub fn hot_lines(
        &self,
        out: &mut [*const std::ffi::c_void; crate::prefetch::HOT_MAX],
    ) -> usize {
        unsafe extern "C" {
            /// vendor/lua-src (PATCHES.md): reads the state, raises no
            /// error, allocates nothing.
            fn lua_hotlines(
                l: *mut mlua::ffi::lua_State,
                refs: *const std::ffi::c_int,
                nrefs: std::ffi::c_int,
                out: *mut *const std::ffi::c_void,
                n: std::ffi::c_int,
            ) -> std::ffi::c_int;
            /// vendor/lua-src (PATCHES.md): reads the state, raises no
            /// error, allocates nothing.
            fn lua_hotkeys(
                l: *mut mlua::ffi::lua_State,
                idx: std::ffi::c_int,
                out: *mut *const std::ffi::c_void,
                n: std::ffi::c_int,
            ) -> std::ffi::c_int;
        }
        let mut refs = [0; HANDLERS.len() + 2];
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
            let k = lua_hotlines(
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
                keys = lua_hotkeys(l, -1, rest.as_mut_ptr(), rest.len() as std::ffi::c_int);
                mlua::ffi::lua_settop(l, top);
            }
            2 + k + usize::try_from(keys).unwrap_or(0).min(rest.len())
        }
    }

    /// Pushes the sealed globals and their `state` value (two slots; raw
    /// reads only).
    ///
    /// # Safety
    /// `l` is this sandbox's main state, used by no one else meanwhile,
    /// with room for three more values. Raw reads of tables raise no error
    /// and allocate nothing; the registry indices are held by `self.refs`.
    #[allow(unsafe_code)]
    unsafe fn push_state(&self, l: *mut mlua::ffi::lua_State) {
        use mlua::ffi;
        // SAFETY: the caller's contract.
        unsafe {
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.raw.env_shadow.into());
            ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, self.raw.state_key.into());
            ffi::lua_rawget(l, -2);
        }
    }

    /// The value of `state` in the script's environment after the calls,
    /// read with the raw API outside any protected call: `Err` names the
    /// type when it is not a table; `nil` reads as an empty table.
    #[allow(unsafe_code)]
    fn read_state(
        &self,
        limit: u32,
    ) -> Result<Result<codec::Data, codec::CodecError>, &'static str> {
        use mlua::ffi;
        let l = self.main.0;
        // SAFETY: `l` is this sandbox's live main state, used by no one
        // else meanwhile. The stack is checked first; `lua_rawgeti` and
        // `lua_rawget` on tables, type tests and `codec::from_stack` raise
        // no Lua error and allocate nothing in Lua, so no error can
        // long-jump over this frame. The registry indices are held by
        // `self.refs`, so they name live values (a table and a string).
        unsafe {
            if ffi::lua_checkstack(l, 2 * codec::DEPTH_MAX as std::ffi::c_int + 8) == 0 {
                return Ok(Err(codec::CodecError::Lua("stack overflow".into())));
            }
            let top = ffi::lua_gettop(l);
            self.push_state(l);
            let r = match ffi::lua_type(l, -1) {
                ffi::LUA_TTABLE => Ok(codec::from_stack(l, top + 2, limit)),
                ffi::LUA_TNIL => Ok(Ok(codec::Data::Table(Vec::new()))),
                _ => Err(crate::raw::Arg::at(l, -1).type_name()),
            };
            ffi::lua_settop(l, top);
            r
        }
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

    /// Installs the instruction-count hook (once per Lua state; each call
    /// restarts its countdown, [`reset_countdown`]).
    fn install_hook(&self) -> mlua::Result<()> {
        let hook_budget = self.budget.clone();
        self.lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_STEP),
            move |_, _| {
                let used = hook_budget
                    .used
                    .fetch_add(u64::from(HOOK_STEP), Ordering::Relaxed)
                    + u64::from(HOOK_STEP);
                if used > hook_budget.limit.load(Ordering::Relaxed) {
                    hook_budget.exhausted.store(true, Ordering::Relaxed);
                }
                match hook_budget.fault() {
                    Some(e) => Err(e),
                    None => Ok(VmState::Continue),
                }
            },
        )
    }

    /// Resets the budget and the memory cap for a call (or the load).
    fn arm(&self, limits: &Limits) -> mlua::Result<()> {
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

    fn fault_of(&self, e: &mlua::Error, limits: &Limits) -> ScriptFault {
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
                        ScriptEventKind::Timer { timer } => {
                            ffi::lua_pushinteger(l, i64::from(*timer));
                            1
                        }
                        ScriptEventKind::Entered { player } | ScriptEventKind::Left { player } => {
                            push(&IdText::player(*player));
                            1
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

/// Pairs order of a fixed set of string keys: the same on every machine
/// only if Lua was built with the pinned hash seed (.cargo/config.toml).
pub fn string_key_order() -> Result<String, LoadError> {
    let lua = Lua::new_with(StdLib::TABLE, LuaOptions::default())
        .map_err(|e| LoadError::Setup(e.to_string()))?;
    lua.load(
        r#"local t = {}
        for _, k in ipairs({"alpha","beta","gamma","delta","epsilon","zeta","eta","theta",
                            "iota","kappa","lambda","mu","nu","xi","omicron","pi"}) do t[k] = true end
        local out = {}
        for k in pairs(t) do out[#out + 1] = k end
        return table.concat(out, ",")"#,
    )
    .eval::<String>()
    .map_err(|e| LoadError::Setup(e.to_string()))
}

/// The order [`string_key_order`] gives with the pinned seed.
pub const PINNED_STRING_KEY_ORDER: &str =
    "kappa,zeta,theta,eta,pi,omicron,xi,gamma,alpha,beta,nu,mu,delta,lambda,iota,epsilon";

/// Pairs order of twelve tables used as keys: the same on every machine
/// only with the patched Lua (vendor/lua-src), which hashes tables by
/// creation number instead of address.
pub fn table_key_order() -> Result<String, LoadError> {
    let lua = Lua::new_with(StdLib::TABLE, LuaOptions::default())
        .map_err(|e| LoadError::Setup(e.to_string()))?;
    lua.load(
        r#"local t, out = {}, {}
        for i = 1, 12 do t[{ id = i }] = true end
        for k in pairs(t) do out[#out + 1] = k.id end
        return table.concat(out, ",")"#,
    )
    .eval::<String>()
    .map_err(|e| LoadError::Setup(e.to_string()))
}

/// The order [`table_key_order`] gives with the patched Lua.
pub const PINNED_TABLE_KEY_ORDER: &str = "1,2,3,4,5,6,7,8,9,10,11,12";

/// Checks that this build of Lua is deterministic (the string-hash seed is
/// pinned, tables hash by creation number). A node must not run scripts
/// otherwise: its replicas would disagree on `pairs` order.
pub fn check_build() -> Result<(), LoadError> {
    let got = string_key_order()?;
    if got != PINNED_STRING_KEY_ORDER {
        return Err(LoadError::Setup(format!(
            "this build of Lua does not pin its string-hash seed (pairs order {got:?}); build with the workspace's .cargo/config.toml (CFLAGS -Dluai_makeseed)"
        )));
    }
    let got = table_key_order()?;
    if got != PINNED_TABLE_KEY_ORDER {
        return Err(LoadError::Setup(format!(
            "this build of Lua hashes table keys by address (pairs order {got:?}); build with the workspace's patched lua-src (vendor/lua-src)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_check() {
        assert!(check_format(b"%d %s %5.2f %%p").is_ok());
        assert!(check_format(b"%p").is_err());
        assert!(check_format(b"x %-10p").is_err());
    }

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
