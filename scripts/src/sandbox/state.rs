//! The script's persistent `state`: decoded from the stored bytes on its
//! first use in a call (a C `__index` function), read back after the
//! handlers with the raw API.

use std::sync::Arc;

use mlua::{Function, Lua};

use super::Sandbox;
use super::context::{SAVED, with_ctx};
use crate::budget::Budget;
use crate::codec;
use crate::errors::describe_error;
use crate::raw;

/// `__index` of the script's globals: `state`, decoded from the stored
/// bytes on its first use in a call and kept in the globals for the rest
/// of the call (the host clears it before each call); any other missing
/// global is nil. A C function with the budget as its upvalue: this runs
/// in most calls, and a Lua closure calling a Rust callback cost several
/// times more.
#[allow(unsafe_code)]
pub(super) fn state_index_function(lua: &Lua, budget: &Arc<Budget>) -> mlua::Result<Function> {
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

impl Sandbox {
    /// Pushes the sealed globals and their `state` value (two slots; raw
    /// reads only).
    ///
    /// # Safety
    /// `l` is this sandbox's main state, used by no one else meanwhile,
    /// with room for three more values. Raw reads of tables raise no error
    /// and allocate nothing; the registry indices are held by `self.refs`.
    #[allow(unsafe_code)]
    pub(super) unsafe fn push_state(&self, l: *mut mlua::ffi::lua_State) {
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
    pub(super) fn read_state(
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
}
