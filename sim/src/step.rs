//! The tick: one agreed batch in, the next state and its events out.
//!
//! Order within tick `t` (every replica does exactly this):
//! 1. Check the batch: its tick is the state's next tick, its time is not
//!    earlier than the last tick's. A bad batch changes nothing.
//! 2. `tick_seed = blake3(hash(S_t) || t)`.
//! 3. The physics inbox applies (only through [`step_with_physics`]):
//!    subtrees whose ownership leaves, then those that arrive, then last
//!    tick's physics events (moved, collided, at rest) in their order,
//!    then chat lines and script messages from neighbouring regions.
//!    Events queued last tick (script messages and chat) and timers due at
//!    `t` go to their scripts' inboxes.
//! 4. The temp-admin rule is evaluated at the batch's time.
//! 5. Inputs apply in batch order: duplicates (sequence number not above
//!    the player's last) are dropped, refused inputs produce a `Rejected`
//!    event and change nothing but the sender's sequence number. Accepted
//!    inputs may queue script events (touch, chat heard, enter, leave).
//!    Then every walking avatar takes one stride (`vel / tick_rate_hz`),
//!    in avatar-id order; at the region's bounds it stops (step 5b).
//! 6. Each inbox is put in canonical order; scripts run in parallel (rayon)
//!    against the state as it stands after step 5, which none can change.
//! 7. Outputs merge in script-id order, each whole or not at all.
//! 8. `tick = t + 1`; the state hash is taken.
//!
//! Nothing here reads a clock, a thread id or an address; the result does not
//! depend on the number of rayon threads.
//!
//! Layout: the step's work in progress is `Work`, one phase a file
//! under `step/`: `deliver.rs` (step 3), `admin_rule.rs` (step 4),
//! `remote.rs` (step 3, neighbours' items), `inputs.rs` with `admin_input.rs`, `bodies.rs` and `chat.rs` (step 5),
//! `walk.rs` (step 5b),
//! `inbox.rs` (the inboxes and their order) and `run.rs` (step 6),
//! `merge.rs` (step 7).

use crate::id::{ElementId, PlayerId, RegionId};
use crate::input::{Batch, Event, Rejection};
use crate::order;
use crate::physics::{self, PhysicsInbox};
use crate::script::{ScriptEvent, ScriptHost};
use crate::snapshot;
use crate::state::{Element, State};
use crate::timers::Timer;

mod admin_input;
mod admin_rule;
mod bodies;
mod chat;
mod cross;
mod deliver;
mod inbox;
mod inputs;
mod merge;
mod remote;
mod run;
mod walk;

pub use walk::{Stride, per_tick, stride};

/// Why a batch cannot be executed. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The batch is for another tick.
    #[error("batch is for tick {got}, expected tick {expected}")]
    WrongTick {
        /// The state's next tick.
        expected: u64,
        /// The batch's tick.
        got: u64,
    },
    /// The batch's time is before the last tick's.
    #[error("batch time {got} ms is before the last tick's {last} ms")]
    TimeWentBack {
        /// The last tick's time.
        last: u64,
        /// The batch's time.
        got: u64,
    },
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TickReport {
    /// The tick that was executed.
    pub tick: u64,
    /// The state hash after it.
    pub hash: [u8; 32],
    /// Events for players and observers.
    pub events: Vec<Event>,
    /// Inputs applied.
    pub accepted: u32,
    /// Inputs refused (each has a `Rejected` event).
    pub rejected: u32,
    /// Inputs dropped as duplicates or replays.
    pub duplicates: u32,
    /// Script handlers called.
    pub script_calls: u32,
    /// Script events dropped because an inbox was full.
    pub inbox_dropped: u32,
    /// Commands for this tick's physics step, in issue order.
    pub physics: Vec<physics::Command>,
    /// Chat lines with a radius said this tick and messages scripts sent
    /// to other regions, in the order made, for the region to route to
    /// its neighbours (lines heard from neighbours are not among them).
    pub remote: Vec<crate::remote::Outbound>,
    /// Items from neighbours applied this tick.
    pub remote_delivered: u32,
    /// Items from neighbours refused this tick: a message to an element
    /// that is not a live script here, or text over this region's limit.
    /// Nothing else changes.
    pub remote_refused: u32,
    /// Avatars put more than the hysteresis into a neighbour's box this
    /// tick, for the region to offer (docs/adr/0018).
    pub crossings: Vec<Crossing>,
}

/// An avatar that crosses into a neighbouring region: the region offers
/// its subtree there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// The avatar (the subtree's root).
    pub avatar: ElementId,
    /// Its player.
    pub player: PlayerId,
    /// The neighbour it is in.
    pub to: RegionId,
}

pub use cross::admits;

/// A sim: a state with its hash, stepped by batches.
#[derive(Debug, Clone)]
pub struct Sim {
    state: State,
    hash: [u8; 32],
}

impl Sim {
    /// A sim starting from `state`.
    pub fn new(state: State) -> Sim {
        let hash = snapshot::state_hash(&state);
        Sim { state, hash }
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The hash of the current state.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The next tick to execute.
    pub fn tick(&self) -> u64 {
        self.state.tick
    }

    /// Whether `batch` can run now (step 1): the check [`Sim::step`] makes
    /// first, for drivers that must refuse a batch before they change
    /// anything of their own.
    pub fn check(&self, batch: &Batch) -> Result<(), StepError> {
        check_batch(&self.state, batch)
    }

    /// Executes one batch. On error nothing changes.
    ///
    /// The state is changed in place: nothing else shares it (unless the
    /// caller kept a clone), so the tick writes into its own map nodes and
    /// elements instead of copying them. A panic inside the tick (a bug in
    /// the sim or in the host) leaves the sim part-way through the tick;
    /// do not step it further.
    pub fn step(&mut self, batch: &Batch, host: &dyn ScriptHost) -> Result<TickReport, StepError> {
        self.step_with_physics(batch, host, &PhysicsInbox::default())
    }

    /// Executes one batch with what the region's physics side hands the
    /// sim at this tick (ownership departures and arrivals, last tick's
    /// physics events), in place as [`Sim::step`]. On error nothing
    /// changes. The one definition of a tick; [`Sim::step`] is it with an
    /// empty inbox.
    pub fn step_with_physics(
        &mut self,
        batch: &Batch,
        host: &dyn ScriptHost,
        physics: &PhysicsInbox,
    ) -> Result<TickReport, StepError> {
        check_batch(&self.state, batch)?;
        let report = run_tick(&mut self.state, &self.hash, batch, host, physics);
        self.hash = report.hash;
        Ok(report)
    }
}

/// Step 1: whether `batch` can run on `state`.
fn check_batch(state: &State, batch: &Batch) -> Result<(), StepError> {
    if batch.tick != state.tick {
        return Err(StepError::WrongTick {
            expected: state.tick,
            got: batch.tick,
        });
    }
    if batch.time_ms < state.time_ms {
        return Err(StepError::TimeWentBack {
            last: state.time_ms,
            got: batch.time_ms,
        });
    }
    Ok(())
}

/// Steps 2 to 8 on a checked batch, changing `state` in place.
fn run_tick(
    state: &mut State,
    hash: &[u8; 32],
    batch: &Batch,
    host: &dyn ScriptHost,
    physics: &PhysicsInbox,
) -> TickReport {
    let seed = order::tick_seed(hash, batch.tick);
    let mut work = Work {
        state,
        report: TickReport {
            tick: batch.tick,
            ..TickReport::default()
        },
        queued: Vec::new(),
        next_event_id: 0,
        new_timers: Vec::new(),
        forwarded: &physics.forwarded,
        neighbours: &physics.neighbours,
        hysteresis: physics.hysteresis,
        crossing: &physics.crossing,
    };
    work.state.time_ms = batch.time_ms;
    work.apply_physics(physics);
    work.apply_remote(&physics.remote);
    work.deliver_pending();
    work.update_temp_admin();
    work.apply_inputs(&batch.inputs);
    work.advance_walkers();
    work.run_scripts(&seed, host);
    let Work {
        state, mut report, ..
    } = work;
    state.tick = batch.tick.saturating_add(1);
    report.hash = snapshot::state_hash(state);
    report
}

/// Element lookups per rayon task when they are spread over the pool.
const LOOKUPS_PER_TASK: usize = 256;

/// The work in progress of one step: the state being changed and what
/// the step has gathered so far. Each phase is an `impl Work` of its own
/// (the modules above).
struct Work<'a> {
    state: &'a mut State,
    report: TickReport,
    /// Bodies handed to another region recently (see `PhysicsInbox`).
    forwarded: &'a [(ElementId, Option<PlayerId>)],
    /// Neighbours' boxes, the hysteresis and the avatars whose crossing
    /// is under way (see `PhysicsInbox`).
    neighbours: &'a [physics::NeighbourBox],
    hysteresis: crate::Fx,
    crossing: &'a [(ElementId, RegionId)],
    /// Events for scripts this tick, in the order they were made. Grouped
    /// into inboxes (by script id, keeping this order) when scripts run.
    queued: Vec<(ElementId, ScriptEvent)>,
    next_event_id: u64,
    /// Timers set by the scripts merged so far this tick, none pending
    /// before nor repeated; added to the state's timers in one batch after
    /// the merge (nothing reads them in between but the cap check, which
    /// counts them).
    new_timers: Vec<Timer>,
}

/// Whether an element has a script that gets events (attached, not
/// suspended).
fn live_script(element: Option<&Element>) -> bool {
    element
        .and_then(|e| e.script.as_ref())
        .is_some_and(|slot| !slot.suspended)
}

/// The id of the player's avatar, or why they cannot act.
fn online_avatar(s: &State, player: PlayerId) -> Result<ElementId, Rejection> {
    match s.players.get(&player) {
        Some(p) if p.online => p.avatar.ok_or(Rejection::NotJoined),
        Some(p) => Err(p.moved_to.map_or(Rejection::NotJoined, Rejection::Moved)),
        None => Err(Rejection::NotJoined),
    }
}

fn check_text(text: &str, max: u32, what: &str) -> Result<(), Rejection> {
    if text.is_empty() {
        return Err(Rejection::Invalid(format!("{what} is empty")));
    }
    if text.len() as u64 > u64::from(max) {
        return Err(Rejection::OutOfBounds(format!(
            "{what} is {} bytes, limit {max}",
            text.len()
        )));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Rejection::Invalid(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

impl Work<'_> {
    pub(super) fn element(&self, id: ElementId) -> Result<&Element, Rejection> {
        self.state
            .elements
            .get(&id)
            .ok_or(Rejection::UnknownElement(id))
    }

    pub(super) fn check_owner(
        &self,
        who: PlayerId,
        owner: Option<PlayerId>,
        what: &str,
    ) -> Result<(), Rejection> {
        if owner == Some(who) || self.state.is_admin(who) {
            Ok(())
        } else {
            Err(Rejection::Permission(format!(
                "only the owner or an admin may {what} it"
            )))
        }
    }
}
