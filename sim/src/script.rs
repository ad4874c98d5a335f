//! The script host trait: how the sim runs scripts without knowing their
//! language.
//!
//! At each tick every scripted element with a non-empty inbox is called
//! once with its whole inbox, in canonical order, against the immutable
//! state. Calls run in parallel; their outputs merge in script-id order. An
//! output is all or nothing: a fault, or any write outside the script's own
//! subtree, discards all of it.

use serde::{Deserialize, Serialize};

use crate::fx::Vec3;
use crate::id::ElementId;
use crate::state::{ScriptSlot, State};

pub use crate::script_event::{ScriptEvent, ScriptEventKind};

/// One call of a script for one tick.
#[derive(Debug)]
pub struct ScriptCall<'a> {
    /// The state the script reads (after this tick's inputs applied).
    pub state: &'a State,
    /// The scripted element (the script's id).
    pub script: ElementId,
    /// The script's slot: source hash and persistent state.
    pub slot: &'a ScriptSlot,
    /// The inbox, in canonical order.
    pub inbox: &'a [ScriptEvent],
    /// The tick being executed.
    pub tick: u64,
    /// Seed for this script at this tick: `blake3(tick_seed || script id)`.
    /// Use it for the script's random numbers.
    pub seed: [u8; 32],
}

/// A change a script asks for. Only elements in the script's own subtree
/// may be written.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Write {
    /// Move an element.
    SetPos {
        /// The element.
        element: ElementId,
        /// Its new position (must be inside the region).
        pos: Vec3,
    },
    /// Rename an element.
    SetName {
        /// The element.
        element: ElementId,
        /// Its new name.
        name: String,
    },
    /// Add an impulse (N·s) to a body at its centre of mass (a
    /// `physics::Command::Impulse` for the physics sim).
    Impulse {
        /// The body.
        element: ElementId,
        /// The impulse.
        impulse: Vec3,
    },
    /// Set a body's linear velocity, m/s (a `physics::Command::SetVelocity`).
    SetVelocity {
        /// The body.
        element: ElementId,
        /// The velocity.
        vel: Vec3,
    },
}

/// What one call produced. Applied whole or not at all.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ScriptOutput {
    /// Writes to the script's own elements.
    pub writes: Vec<Write>,
    /// Messages to other scripts, delivered next tick: (target, body).
    pub sends: Vec<(ElementId, String)>,
    /// Messages to scripts of other regions: (region, target, body),
    /// delivered at the neighbour's tick whose batch carries them (next
    /// tick when the link is on time). One to this region is a local send.
    pub remote_sends: Vec<(crate::id::RegionId, ElementId, String)>,
    /// Chat lines said from the script's element: (text, radius).
    pub says: Vec<(String, Option<crate::fx::Fx>)>,
    /// Timers to set: (timer id, delay in ticks, at least 1).
    pub timers: Vec<(u32, u64)>,
    /// The new persistent state, if it changed.
    pub state: Option<Vec<u8>>,
}

/// Why a call failed. The call's effects are discarded and the owner told.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum ScriptFault {
    /// The source is not known to the host.
    #[error("script source {0} is not available")]
    MissingSource(String),
    /// The handler raised an error.
    #[error("script error: {0}")]
    Error(String),
    /// The handler ran out of instructions.
    #[error("instruction budget exhausted ({0} instructions)")]
    InstructionBudget(u64),
    /// The script ran out of memory.
    #[error("memory cap exceeded ({0} bytes)")]
    MemoryCap(u64),
    /// The output broke a rule (checked by the sim at merge).
    #[error("rejected output: {0}")]
    Rejected(String),
}

/// Runs scripts. Implemented by `metatopia-scripts` (Lua) and by test hosts.
///
/// `run` must be a pure function of its call: the same call gives the same
/// result on every replica, thread and run.
pub trait ScriptHost: Sync {
    /// Runs the script's handlers over its inbox.
    fn run(&self, call: &ScriptCall<'_>) -> Result<ScriptOutput, ScriptFault>;
}

/// A host for worlds without scripts: every call faults, so a script that
/// somehow got attached is suspended instead of silently ignored.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoScripts;

impl ScriptHost for NoScripts {
    fn run(&self, call: &ScriptCall<'_>) -> Result<ScriptOutput, ScriptFault> {
        Err(ScriptFault::MissingSource(format!(
            "{} (this node runs no script runtime)",
            crate::id::hex(&call.slot.source)
        )))
    }
}
