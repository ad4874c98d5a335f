//! What the host functions see during a call: the call's context, the
//! world as it was at the start of the tick and the stored `state` bytes.

use metatopia_sim::script::ScriptOutput;
use metatopia_sim::{ElementId, State};

use crate::budget::Limits;
use crate::errors::rt;
use crate::rng::Rng;

/// What the host functions see during a call.
pub(super) struct Ctx {
    pub(super) script: ElementId,
    pub(super) out: ScriptOutput,
    pub(super) rng: Rng,
    pub(super) limits: Limits,
    /// Whether a handler used or assigned `state` (else it is unchanged).
    pub(super) touched: bool,
}

// The call's context, the world as it was at the start of the tick and the
// script's stored `state` bytes: set for the duration of [`Sandbox::run`]
// on the thread that runs it (Lua calls the host functions on that
// thread). Borrowed, not copied: a call clones nothing shared, so calls on
// different threads write to no common cache line.
scoped_tls::scoped_thread_local!(pub(super) static CTX: std::cell::RefCell<Ctx>);
scoped_tls::scoped_thread_local!(pub(super) static WORLD: State);
scoped_tls::scoped_thread_local!(pub(super) static SAVED: Vec<u8>);

pub(super) fn with_ctx<R>(f: impl FnOnce(&mut Ctx, &State) -> mlua::Result<R>) -> mlua::Result<R> {
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

/// Whether a call is running on this thread (else the top level is
/// loading).
pub(crate) fn in_call() -> bool {
    CTX.is_set()
}
