//! The budget of one call: its limits ([`Limits`], from the region's
//! settings) and the counters the instruction hook, the host functions and
//! the string functions charge ([`Budget`]). A budget that runs out is a
//! fault no `pcall` can catch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// Shared between the hook, the catch check and the call.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    /// Instructions used so far in this call (or handler).
    pub(crate) used: AtomicU64,
    /// Instructions allowed per handler.
    pub(crate) limit: AtomicU64,
    /// Set once `used` passed `limit`.
    pub(crate) exhausted: AtomicBool,
    /// Set once an allocation failed at the memory cap.
    pub(crate) memory: AtomicBool,
    /// Bytes one call may hold, for buffers built outside Lua.
    pub(crate) memory_limit: AtomicU64,
}

impl Budget {
    /// Charges `n` instructions of work done outside the VM; false once
    /// the budget is gone (and the fault is set).
    pub(crate) fn charge(&self, n: u64) -> bool {
        let used = self.used.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if used > self.limit.load(Ordering::Relaxed) {
            self.exhausted.store(true, Ordering::Relaxed);
        }
        self.fault().is_none()
    }

    pub(crate) fn fault(&self) -> Option<mlua::Error> {
        if self.exhausted.load(Ordering::Relaxed) {
            Some(mlua::Error::runtime("instruction budget exhausted"))
        } else if self.memory.load(Ordering::Relaxed) {
            Some(mlua::Error::runtime("memory cap exceeded"))
        } else {
            None
        }
    }
}
