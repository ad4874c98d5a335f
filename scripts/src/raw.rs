//! Lua C functions written in Rust, for the calls a script makes most
//! (docs/adr/0007): the hot host functions, `fx` and the `state` decode.
//!
//! mlua's callbacks are safe and general but cost several times more per
//! call: each converts its arguments through mlua's reference stack and
//! runs through its error-wrapping machinery. Here a C closure reads its
//! arguments in place ([`Arg`]), runs a plain Rust function ([`RawFn`]) and
//! pushes what it returns ([`Ret`]).
//!
//! The rule every function here keeps: a Lua error long-jumps, so nothing
//! with a destructor may be alive in a Rust frame when one can happen.
//! Values that own memory are dropped before `lua_error`; pushes that
//! allocate while such values live run inside a nested protected call
//! ([`push_found`]); panics are caught before they reach Lua's C frames.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use mlua::{Function, Lua, Value, ffi};

use crate::codec;

// The functions the Lua patches add (vendor/lua-src/PATCHES.md).
#[allow(unsafe_code)]
unsafe extern "C" {
    /// Writes up to `n` addresses a call of the state `l` touches first
    /// (the state, its stack and call frames, the registry values `refs`
    /// name and what they point to) to `out`; returns how many. Reads the
    /// state, raises no error, allocates nothing.
    pub fn lua_hotlines(
        l: *mut ffi::lua_State,
        refs: *const c_int,
        nrefs: c_int,
        out: *mut *const c_void,
        n: c_int,
    ) -> c_int;
    /// Writes up to `n` addresses of the string keys of the table at
    /// `idx` (their string-table buckets) to `out`; returns how many.
    /// Reads the state, raises no error, allocates nothing.
    pub fn lua_hotkeys(
        l: *mut ffi::lua_State,
        idx: c_int,
        out: *mut *const c_void,
        n: c_int,
    ) -> c_int;
}

/// A host function's argument: read from the Lua stack without copying
/// (raw host functions) or from an mlua value.

#[derive(Debug)]
pub enum Arg<'a> {
    /// Nil or absent.
    Nil,
    /// A boolean.
    Bool,
    /// An integer (or the raw bits of an `fx`).
    Int(i64),
    /// A float.
    Float(f64),
    /// A string's bytes.
    Str(std::borrow::Cow<'a, [u8]>),
    /// Any other type, by name.
    Other(&'static str),
}

impl Arg<'_> {
    /// An mlua value as an argument.
    pub fn of(v: &Value) -> Arg<'static> {
        match v {
            Value::Nil => Arg::Nil,
            Value::Boolean(_) => Arg::Bool,
            Value::Integer(i) => Arg::Int(*i),
            Value::Number(n) => Arg::Float(*n),
            Value::String(s) => Arg::Str(s.as_bytes().to_vec().into()),
            other => Arg::Other(other.type_name()),
        }
    }

    /// The value at stack index `i` of a C function's frame, borrowed.
    ///
    /// # Safety
    /// `l` is the running C function's state; the borrow must end before
    /// the value leaves the stack.
    #[allow(unsafe_code)]
    pub unsafe fn at<'a>(l: *mut mlua::ffi::lua_State, i: std::ffi::c_int) -> Arg<'a> {
        use mlua::ffi;
        // SAFETY: type tests and reads of the value at `i`; strings are
        // read in place (`lua_tolstring` on a string neither allocates nor
        // raises).
        unsafe {
            match ffi::lua_type(l, i) {
                ffi::LUA_TNONE | ffi::LUA_TNIL => Arg::Nil,
                ffi::LUA_TBOOLEAN => Arg::Bool,
                ffi::LUA_TNUMBER if ffi::lua_isinteger(l, i) != 0 => {
                    Arg::Int(ffi::lua_tointegerx(l, i, std::ptr::null_mut()))
                }
                ffi::LUA_TNUMBER => Arg::Float(ffi::lua_tonumberx(l, i, std::ptr::null_mut())),
                ffi::LUA_TSTRING => {
                    let mut len = 0usize;
                    let p = ffi::lua_tolstring(l, i, &mut len);
                    Arg::Str(std::slice::from_raw_parts(p.cast::<u8>(), len).into())
                }
                ffi::LUA_TTABLE => Arg::Other("table"),
                ffi::LUA_TFUNCTION => Arg::Other("function"),
                ffi::LUA_TTHREAD => Arg::Other("thread"),
                ffi::LUA_TLIGHTUSERDATA => Arg::Other("lightuserdata"),
                _ => Arg::Other("userdata"),
            }
        }
    }

    /// Lua's name of the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Arg::Nil => "nil",
            Arg::Bool => "boolean",
            Arg::Int(_) | Arg::Float(_) => "number",
            Arg::Str(_) => "string",
            Arg::Other(t) => t,
        }
    }
}

/// What a [`RawFn`] returns to Lua.
#[derive(Debug)]
pub enum Ret {
    /// No value.
    None,
    /// An integer.
    Int(i64),
    /// A string.
    Text(String),
}

/// A host function run as a C function: its first four arguments, read in
/// place.
pub type RawFn = fn(&[Arg<'_>; 4]) -> mlua::Result<Ret>;

/// What [`push_found`] pushes.
#[derive(Debug)]
pub enum Found<'a> {
    /// Data to build into a Lua value.
    Data(codec::Data),
    /// A canonical encoding (it passed [`codec::check`]) to build.
    Encoded(&'a [u8]),
    /// The text of an error to raise.
    Error(String),
}

/// Pushes what `push_found` was given (a light userdata pointing to it).
#[allow(unsafe_code)]
unsafe extern "C-unwind" fn build_found(l: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by `lua_pcall` in `push_found` with a pointer to a
    // live `Found` as its only argument; this frame holds references only.
    unsafe {
        match &*ffi::lua_touserdata(l, 1).cast::<Found<'_>>() {
            Found::Data(data) => codec::push(l, data),
            Found::Encoded(bytes) => codec::push_encoded(l, bytes),
            Found::Error(msg) => {
                ffi::lua_pushlstring(l, msg.as_ptr().cast(), msg.len());
            }
        }
    }
    1
}

/// Pushes `found` in a nested protected call (building a value allocates,
/// and a memory error must not long-jump over `found`), then drops it.
/// Returns whether the caller must raise the value now on top: an error
/// text, or the memory error (which also sets the memory fault, so no
/// `pcall` can catch it).
///
/// # Safety
/// Called from a C closure made by [`c_closure`] (its first upvalue is the
/// memory fault flag).
#[allow(unsafe_code)]
pub unsafe fn push_found(l: *mut ffi::lua_State, found: Found<'_>) -> bool {
    // SAFETY: see the contract; the pointer is used only during the call.
    unsafe {
        let failed = matches!(found, Found::Error(_));
        ffi::lua_pushcfunction(l, build_found);
        ffi::lua_pushlightuserdata(l, std::ptr::from_ref(&found).cast_mut().cast());
        let status = ffi::lua_pcall(l, 1, 1, 0);
        drop(found);
        if status == ffi::LUA_ERRMEM {
            let memory = ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)).cast::<AtomicBool>();
            (*memory).store(true, Ordering::Relaxed);
        }
        status != ffi::LUA_OK || failed
    }
}

/// A C closure of `f` with two upvalues: `memory`, the flag a memory error
/// sets (a light userdata; its owner outlives the Lua state), and `data`
/// (a light userdata holding the number).
#[allow(unsafe_code)]
pub fn c_closure(
    lua: &Lua,
    memory: &AtomicBool,
    f: ffi::lua_CFunction,
    data: usize,
) -> mlua::Result<Function> {
    let flag = std::ptr::from_ref(memory).cast_mut().cast::<c_void>();
    // SAFETY: pushes a C closure with two light userdata upvalues inside
    // mlua's protected call; nothing here owns a destructor.
    unsafe {
        lua.exec_raw::<Function>((), |l| {
            ffi::lua_pushlightuserdata(l, flag);
            ffi::lua_pushlightuserdata(l, data as *mut c_void);
            ffi::lua_pushcclosure(l, f, 2);
        })
    }
}

/// `f` as a Lua function.
#[allow(unsafe_code)]
pub fn function(lua: &Lua, memory: &AtomicBool, f: RawFn) -> mlua::Result<Function> {
    unsafe extern "C-unwind" fn call(l: *mut ffi::lua_State) -> c_int {
        // SAFETY: Lua calls this with the upvalues `function` sets; the
        // second is a `RawFn`. The arguments are borrowed from the stack
        // while they are on it, and everything with a destructor
        // (arguments, result, error) is gone before `lua_error`, which
        // `push_found` makes the only long jump.
        unsafe {
            let f: RawFn = std::mem::transmute::<*mut c_void, RawFn>(ffi::lua_touserdata(
                l,
                ffi::lua_upvalueindex(2),
            ));
            let result = {
                let args = [Arg::at(l, 1), Arg::at(l, 2), Arg::at(l, 3), Arg::at(l, 4)];
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&args))).unwrap_or_else(
                    |_| Err(mlua::Error::runtime("internal error in a host function")),
                )
            };
            let found = match result {
                Ok(Ret::None) => return 0,
                Ok(Ret::Int(i)) => {
                    ffi::lua_pushinteger(l, i);
                    return 1;
                }
                Ok(Ret::Text(t)) => Found::Data(codec::Data::Str(t.into_bytes())),
                Err(e) => Found::Error(crate::errors::describe_error(&e)),
            };
            if push_found(l, found) {
                ffi::lua_error(l);
            }
            1
        }
    }
    c_closure(lua, memory, call, f as usize)
}

/// Runs `f` on `l` inside `lua_pcall`, the way mlua's `exec_raw` does but
/// without its lock and bookkeeping (which cost cache misses on a state
/// that nothing has touched since the last tick). The message handler
/// turns an error value into a string, as mlua's does, except mlua's own
/// errors (userdata), which it leaves for mlua to read; it adds no
/// traceback (error reports drop it anyway, `describe_error`). Returns
/// Lua's status; on failure the error value is left on top of the stack.
///
/// # Safety
/// `l` is a live Lua state that no other thread uses meanwhile, with room
/// for three more values. `f` must not panic, and nothing in it may own a
/// value with a destructor when a Lua error can happen (it long-jumps out
/// of `f`).
#[allow(unsafe_code)]
pub unsafe fn pcall<F: FnOnce(*mut ffi::lua_State)>(l: *mut ffi::lua_State, f: F) -> c_int {
    struct Call<F> {
        f: Option<F>,
    }
    unsafe extern "C-unwind" fn body<F: FnOnce(*mut ffi::lua_State)>(
        l: *mut ffi::lua_State,
    ) -> c_int {
        // SAFETY: the only argument is the light userdata `pcall` pushed,
        // which points to its `Call`, alive until `lua_pcall` returns.
        unsafe {
            let call = ffi::lua_touserdata(l, 1).cast::<Call<F>>();
            ffi::lua_settop(l, 0);
            if let Some(f) = (*call).f.take() {
                f(l);
            }
        }
        0
    }
    unsafe extern "C-unwind" fn handler(l: *mut ffi::lua_State) -> c_int {
        // SAFETY: a message handler gets the error value as its argument;
        // `luaL_tolstring` may raise (a bad `__tostring`), which Lua turns
        // into a second error, as for mlua's handler.
        unsafe {
            if ffi::lua_checkstack(l, 2) != 0 && ffi::lua_type(l, -1) != ffi::LUA_TUSERDATA {
                ffi::luaL_tolstring(l, -1, std::ptr::null_mut());
            }
        }
        1
    }
    let mut call = Call { f: Some(f) };
    // SAFETY: the caller's contract; `call` outlives the protected call.
    unsafe {
        let base = ffi::lua_gettop(l);
        ffi::lua_pushcfunction(l, handler);
        ffi::lua_pushcfunction(l, body::<F>);
        ffi::lua_pushlightuserdata(l, (&raw mut call).cast());
        let status = ffi::lua_pcall(l, 1, 0, base + 1);
        ffi::lua_rotate(l, base + 1, -1);
        ffi::lua_pop(l, 1);
        status
    }
}
