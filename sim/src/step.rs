//! The tick: one agreed batch in, the next state and its events out.
//!
//! Order within tick `t` (every replica does exactly this):
//! 1. Check the batch: its tick is the state's next tick, its time is not
//!    earlier than the last tick's. A bad batch changes nothing.
//! 2. `tick_seed = blake3(hash(S_t) || t)`.
//! 3. The physics inbox applies (only through [`step_with_physics`]):
//!    subtrees whose ownership leaves, then those that arrive, then last
//!    tick's physics events (moved, collided, at rest) in their order.
//!    Events queued last tick (script messages and chat) and timers due at
//!    `t` go to their scripts' inboxes.
//! 4. The temp-admin rule is evaluated at the batch's time.
//! 5. Inputs apply in batch order: duplicates (sequence number not above
//!    the player's last) are dropped, refused inputs produce a `Rejected`
//!    event and change nothing but the sender's sequence number. Accepted
//!    inputs may queue script events (touch, chat heard, enter, leave).
//! 6. Each inbox is put in canonical order; scripts run in parallel (rayon)
//!    against the state as it stands after step 5, which none can change.
//! 7. Outputs merge in script-id order, each whole or not at all.
//! 8. `tick = t + 1`; the state hash is taken.
//!
//! Nothing here reads a clock, a thread id or an address; the result does not
//! depend on the number of rayon threads.

use std::collections::BTreeMap;

use crate::admin;
use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, PlayerId};
use crate::input::{AdminAction, Batch, Event, Input, InputKind, Rejection, SettingsPatch};
use crate::order;
use crate::physics::{Body, BodyKind, PhysicsCommand, PhysicsEvent, PhysicsInbox, Transfer};
use crate::script::{
    ScriptCall, ScriptEvent, ScriptEventKind, ScriptFault, ScriptHost, ScriptOutput, Write,
};
use crate::snapshot;
use crate::state::{
    ChatLine, Element, ElementKind, Pending, Player, Role, ScriptSlot, Speaker, State,
};
use crate::timers::Timer;

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
    pub physics: Vec<PhysicsCommand>,
}

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

    /// Executes one batch with the physics inbox of this tick (see
    /// [`step_with_physics`]), in place as [`Sim::step`]. On error nothing
    /// changes.
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

/// Executes `batch` on `state` (whose hash is `hash`), returning the next
/// state and what happened. `state` itself is untouched (persistent maps:
/// the two share everything the tick did not change).
pub fn step(
    state: &State,
    hash: &[u8; 32],
    batch: &Batch,
    host: &dyn ScriptHost,
) -> Result<(State, TickReport), StepError> {
    step_with_physics(state, hash, batch, host, &PhysicsInbox::default())
}

/// [`step`], with what the region's physics side hands the sim at this
/// tick: ownership departures and arrivals, and last tick's physics events.
pub fn step_with_physics(
    state: &State,
    hash: &[u8; 32],
    batch: &Batch,
    host: &dyn ScriptHost,
    physics: &PhysicsInbox,
) -> Result<(State, TickReport), StepError> {
    check_batch(state, batch)?;
    let mut next = state.clone();
    let report = run_tick(&mut next, hash, batch, host, physics);
    Ok((next, report))
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
    let mut tick = Tick {
        s: state,
        report: TickReport {
            tick: batch.tick,
            ..TickReport::default()
        },
        queued: Vec::new(),
        next_event_id: 0,
        new_timers: Vec::new(),
        forwarded: &physics.forwarded,
    };
    tick.s.time_ms = batch.time_ms;
    tick.apply_physics(physics);
    tick.deliver_pending();
    tick.update_temp_admin();
    tick.apply_inputs(&batch.inputs);
    tick.run_scripts(&seed, host);
    let Tick { s, mut report, .. } = tick;
    s.tick = batch.tick.saturating_add(1);
    report.hash = snapshot::state_hash(s);
    report
}

/// Script calls per rayon task at most: a call is microseconds of work.
const CALLS_PER_TASK_MAX: usize = 16;

/// Script calls per rayon task for `calls` calls: up to
/// [`CALLS_PER_TASK_MAX`], but small enough that a few slow scripts still
/// spread over the pool (at least four tasks a thread). Only how the calls
/// are scheduled depends on the number of threads, never a result.
fn calls_per_task(calls: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads().max(1);
    (calls / tasks).clamp(1, CALLS_PER_TASK_MAX)
}

/// Element lookups per rayon task when they are spread over the pool.
const LOOKUPS_PER_TASK: usize = 256;

/// Work in progress for one tick.
struct Tick<'a> {
    s: &'a mut State,
    report: TickReport,
    /// Bodies handed to another region recently (see `PhysicsInbox`).
    forwarded: &'a [(ElementId, Option<PlayerId>)],
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
        _ => Err(Rejection::NotJoined),
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

impl Tick<'_> {
    fn new_event_id(&mut self) -> u64 {
        let id = self.next_event_id;
        self.next_event_id += 1;
        id
    }

    /// Queues an event for a script this tick, if it runs. Room in its
    /// inbox is checked when the inboxes are formed (the first
    /// `script_inbox_max` events queued for a script are kept).
    fn push_event(&mut self, script: ElementId, id: u64, kind: ScriptEventKind) {
        if live_script(self.s.elements.get(&script)) {
            self.queued.push((script, ScriptEvent { id, kind }));
        }
    }

    /// Sends an event to every live script.
    fn broadcast(&mut self, kind: ScriptEventKind) {
        let id = self.new_event_id();
        let scripts: Vec<ElementId> = self.s.scripted.iter().copied().collect();
        for script in scripts {
            self.push_event(script, id, kind.clone());
        }
    }

    /// Sends an event to every live script within `radius` of `pos`, except `skip`.
    fn broadcast_near(
        &mut self,
        pos: Vec3,
        radius: Option<Fx>,
        skip: Option<ElementId>,
        kind: ScriptEventKind,
    ) {
        let id = self.new_event_id();
        let scripts: Vec<ElementId> = self
            .s
            .scripted
            .iter()
            .copied()
            .filter(|sid| Some(*sid) != skip)
            .filter(|sid| match radius {
                None => true,
                Some(r) => self
                    .s
                    .elements
                    .get(sid)
                    .is_some_and(|e| e.pos.within(pos, r)),
            })
            .collect();
        for script in scripts {
            self.push_event(script, id, kind.clone());
        }
    }

    /// Step 3: last tick's queued events and timers due now.
    fn deliver_pending(&mut self) {
        let pending = std::mem::take(&mut self.s.mailbox);
        for p in pending {
            let id = self.new_event_id();
            self.push_event(p.to, id, p.event);
        }
        let due = self.s.timers.take_due(self.s.tick);
        // As `push_event`, with the scripts looked up on the pool, in
        // ordered walks when the due timers are in script order (they are
        // when all are due at this tick).
        let scripts: Vec<ElementId> = due.iter().map(|(_, script, _)| *script).collect();
        let live: Vec<bool> = self
            .s
            .elements
            .par_map_sorted(&scripts, LOOKUPS_PER_TASK, |_, _, e| live_script(e))
            .collect();
        self.queued.reserve(due.len());
        for ((_, script, timer), live) in due.into_iter().zip(live) {
            let id = self.new_event_id();
            if live {
                self.queued.push((
                    script,
                    ScriptEvent {
                        id,
                        kind: ScriptEventKind::Timer { timer },
                    },
                ));
            }
        }
    }

    fn update_temp_admin(&mut self) {
        let now = admin::temp_admin(self.s);
        if now != self.s.temp_admin {
            self.s.temp_admin = now;
            self.report.events.push(Event::TempAdmin { player: now });
        }
    }

    /// Step 5.
    fn apply_inputs(&mut self, inputs: &[Input]) {
        let per_player_max = self.s.settings.inputs_per_player_per_tick_max;
        // Per sender this tick: (inputs counted, highest sequence number).
        // Sequence numbers are written back once per player at the end.
        let mut seen: BTreeMap<PlayerId, (u32, u64)> = BTreeMap::new();
        for input in inputs {
            let stored = self.s.players.get(&input.player).map_or(0, |p| p.last_seq);
            let (count, max_seq) = seen.entry(input.player).or_insert((0, stored));
            if self.s.players.contains_key(&input.player) && input.seq <= *max_seq {
                self.report.duplicates += 1;
                continue;
            }
            *count += 1;
            *max_seq = input.seq;
            let result = if *count > per_player_max {
                Err(Rejection::RateLimited(per_player_max))
            } else {
                self.apply_input(input)
            };
            match result {
                Ok(()) => {
                    self.report.accepted += 1;
                    if matches!(input.kind, InputKind::Join { .. } | InputKind::Admin(_)) {
                        self.update_temp_admin();
                    }
                }
                Err(reason) => {
                    self.report.rejected += 1;
                    self.report.events.push(Event::Rejected {
                        player: input.player,
                        seq: input.seq,
                        reason,
                    });
                }
            }
        }
        for (player, (_, max_seq)) in seen {
            if self
                .s
                .players
                .get(&player)
                .is_some_and(|p| p.last_seq < max_seq)
            {
                self.s.players.update(&player, |p| p.last_seq = max_seq);
            }
        }
    }

    fn apply_input(&mut self, input: &Input) -> Result<(), Rejection> {
        let who = input.player;
        match &input.kind {
            InputKind::Join { name } => self.join(who, name),
            InputKind::Leave => {
                online_avatar(self.s, who)?;
                self.leave(who);
                Ok(())
            }
            InputKind::Move { element, to } => {
                online_avatar(self.s, who)?;
                let e = self.element(*element)?;
                if e.kind == ElementKind::Region {
                    return Err(Rejection::Invalid("the region root cannot move".into()));
                }
                self.check_owner(who, e.owner, "move")?;
                self.move_subtree(*element, *to)
            }
            InputKind::Say { text, radius } => {
                let avatar = online_avatar(self.s, who)?;
                check_text(text, self.s.settings.text_bytes_max, "chat line")?;
                if radius.is_some_and(|r| r <= Fx::ZERO) {
                    return Err(Rejection::OutOfBounds(
                        "chat radius must be positive".into(),
                    ));
                }
                let pos = self.element(avatar)?.pos;
                self.say(Speaker::Player(who), pos, *radius, text.clone(), None);
                Ok(())
            }
            InputKind::Touch { element } => {
                online_avatar(self.s, who)?;
                self.element(*element)?;
                // The touched element's script hears it, or its nearest
                // scripted ancestor's; touching unscripted things does nothing.
                let mut cur = Some(*element);
                while let Some(id) = cur {
                    let e = self.element(id)?;
                    if e.script.is_some() {
                        let ev = self.new_event_id();
                        self.push_event(
                            id,
                            ev,
                            ScriptEventKind::Touched {
                                by: who,
                                element: *element,
                            },
                        );
                        break;
                    }
                    cur = e.parent;
                }
                Ok(())
            }
            InputKind::Reparent { element, parent } => {
                online_avatar(self.s, who)?;
                self.reparent(who, *element, *parent)
            }
            InputKind::Create { parent, name, pos } => {
                online_avatar(self.s, who)?;
                self.create(who, *parent, name, *pos).map(|_| ())
            }
            InputKind::Delete { element } => {
                online_avatar(self.s, who)?;
                let e = self.element(*element)?;
                match e.kind {
                    ElementKind::Region => {
                        return Err(Rejection::Invalid(
                            "the region root cannot be deleted".into(),
                        ));
                    }
                    ElementKind::Avatar => {
                        return Err(Rejection::Invalid(
                            "avatars leave, they are not deleted".into(),
                        ));
                    }
                    _ => {}
                }
                self.check_owner(who, e.owner, "delete")?;
                self.delete_subtree(*element);
                Ok(())
            }
            InputKind::AttachScript { element, source } => {
                online_avatar(self.s, who)?;
                let e = self.element(*element)?;
                if e.kind == ElementKind::Region && !self.s.is_admin(who) {
                    return Err(Rejection::Permission(
                        "only admins script the region root".into(),
                    ));
                }
                self.check_owner(who, e.owner, "script")?;
                let slot = match &e.script {
                    // Hot reload: the persistent state is kept.
                    Some(old) => ScriptSlot {
                        source: *source,
                        state: old.state.clone(),
                        faults: 0,
                        suspended: false,
                    },
                    None => ScriptSlot {
                        source: *source,
                        state: Vec::new(),
                        faults: 0,
                        suspended: false,
                    },
                };
                let id = *element;
                self.s.elements.update(&id, |e| {
                    e.script = Some(slot);
                });
                self.s.scripted.insert(id);
                Ok(())
            }
            InputKind::DetachScript { element } => {
                online_avatar(self.s, who)?;
                let e = self.element(*element)?;
                self.check_owner(who, e.owner, "unscript")?;
                if e.script.is_none() {
                    return Err(Rejection::Invalid(format!(
                        "element {element} has no script"
                    )));
                }
                let id = *element;
                self.s.elements.update(&id, |e| {
                    e.script = None;
                });
                self.s.scripted.remove(&id);
                Ok(())
            }
            InputKind::Admin(action) => {
                if !self.s.is_admin(who) {
                    return Err(Rejection::Permission("admins only".into()));
                }
                self.admin(who, action)
            }
            InputKind::SpawnBody {
                parent,
                name,
                pos,
                body,
                vel,
            } => {
                online_avatar(self.s, who)?;
                self.spawn_body(who, *parent, name, *pos, *body, *vel)
            }
            InputKind::Push { element, impulse } => {
                online_avatar(self.s, who)?;
                if self.forwarded_owner(*element).is_none() {
                    self.body(*element)?;
                }
                self.report.physics.push(PhysicsCommand::Impulse {
                    id: *element,
                    impulse: *impulse,
                });
                Ok(())
            }
            InputKind::SetVelocity { element, vel } => {
                online_avatar(self.s, who)?;
                let owner = match self.forwarded_owner(*element) {
                    Some(owner) => owner,
                    None => {
                        self.body(*element)?;
                        self.element(*element)?.owner
                    }
                };
                self.check_owner(who, owner, "set the velocity of")?;
                self.report.physics.push(PhysicsCommand::SetVelocity {
                    id: *element,
                    vel: *vel,
                });
                Ok(())
            }
        }
    }

    fn element(&self, id: ElementId) -> Result<&Element, Rejection> {
        self.s
            .elements
            .get(&id)
            .ok_or(Rejection::UnknownElement(id))
    }

    fn check_owner(
        &self,
        who: PlayerId,
        owner: Option<PlayerId>,
        what: &str,
    ) -> Result<(), Rejection> {
        if owner == Some(who) || self.s.is_admin(who) {
            Ok(())
        } else {
            Err(Rejection::Permission(format!(
                "only the owner or an admin may {what} it"
            )))
        }
    }

    fn join(&mut self, who: PlayerId, name: &str) -> Result<(), Rejection> {
        if self.s.banned.contains(&who) {
            return Err(Rejection::Banned);
        }
        check_text(name, self.s.settings.name_bytes_max, "name")?;
        if self.s.players.get(&who).is_some_and(|p| p.online) {
            return Err(Rejection::AlreadyJoined);
        }
        let online = self.s.online().count() as u64;
        if online >= u64::from(self.s.settings.players_online_max) {
            return Err(Rejection::RegionFull(self.s.settings.players_online_max));
        }
        let spawn = self.s.settings.spawn;
        let root = self.s.root();
        let avatar = self
            .s
            .add_child(root, ElementKind::Avatar, Some(who), name, spawn)?;
        let now = self.s.time_ms;
        let mut player = self.s.players.get(&who).cloned().unwrap_or(Player {
            id: who,
            name: String::new(),
            first_join_ms: None,
            last_login_ms: None,
            last_admin_login_ms: None,
            role: Role::Member,
            online: false,
            avatar: None,
            last_seq: 0,
        });
        player.name = name.to_string();
        player.first_join_ms.get_or_insert(now);
        player.last_login_ms = Some(now);
        if player.role == Role::Admin {
            player.last_admin_login_ms = Some(now);
        }
        player.online = true;
        player.avatar = Some(avatar);
        self.s.players.insert(who, player);
        self.report.events.push(Event::Joined { player: who });
        self.broadcast(ScriptEventKind::Entered { player: who });
        Ok(())
    }

    fn leave(&mut self, who: PlayerId) {
        let avatar = self.s.players.get(&who).and_then(|p| p.avatar);
        if let Some(avatar) = avatar {
            self.delete_subtree(avatar);
        }
        self.s.players.update(&who, |p| {
            p.online = false;
            p.avatar = None;
        });
        self.report.events.push(Event::Left { player: who });
        self.broadcast(ScriptEventKind::Left { player: who });
    }

    fn create(
        &mut self,
        who: PlayerId,
        parent: Option<ElementId>,
        name: &str,
        pos: Vec3,
    ) -> Result<ElementId, Rejection> {
        check_text(name, self.s.settings.name_bytes_max, "name")?;
        let root = self.s.root();
        let parent = parent.unwrap_or(root);
        let p = self.element(parent)?;
        if parent != root {
            if p.kind == ElementKind::Avatar && p.owner != Some(who) {
                return Err(Rejection::Permission(
                    "only the avatar's player may attach to it".into(),
                ));
            }
            self.check_owner(who, p.owner, "add parts to")?;
        }
        let kind = if parent == root {
            ElementKind::Object
        } else {
            ElementKind::Part
        };
        self.s.add_child(parent, kind, Some(who), name, pos)
    }

    /// Moves an element to `to`, and its subtree by the same offset.
    fn move_subtree(&mut self, element: ElementId, to: Vec3) -> Result<(), Rejection> {
        let from = self.element(element)?.pos;
        let ids = self.s.subtree(element);
        let mut moved = Vec::with_capacity(ids.len());
        for id in &ids {
            let pos = self.element(*id)?.pos;
            let new = pos.saturating_sub(from).saturating_add(to);
            if !self.s.in_bounds(new) {
                return Err(Rejection::OutOfBounds(format!(
                    "position {new} of {id} would be outside the region"
                )));
            }
            moved.push((*id, new));
        }
        for (id, pos) in moved {
            self.s.elements.update(&id, |e| {
                e.pos = pos;
            });
            if self.s.bodies.contains_key(&id) {
                self.report
                    .physics
                    .push(PhysicsCommand::SetPosition { id, pos });
            }
        }
        Ok(())
    }

    fn delete_subtree(&mut self, element: ElementId) {
        let parent = self.s.elements.get(&element).and_then(|e| e.parent);
        for id in self.s.subtree(element) {
            self.s.elements.remove(&id);
            self.s.scripted.remove(&id);
            if self.s.bodies.remove(&id).is_some() {
                self.report.physics.push(PhysicsCommand::Remove { id });
            }
        }
        if let Some(parent) = parent {
            self.s
                .elements
                .update(&parent, |p| p.children.retain(|c| *c != element));
        }
    }

    fn reparent(
        &mut self,
        who: PlayerId,
        element: ElementId,
        parent: ElementId,
    ) -> Result<(), Rejection> {
        let e = self.element(element)?;
        match e.kind {
            ElementKind::Region => {
                return Err(Rejection::Invalid("the region root has no parent".into()));
            }
            ElementKind::Avatar => {
                return Err(Rejection::Invalid("avatars cannot be reparented".into()));
            }
            _ => {}
        }
        self.check_owner(who, e.owner, "reparent")?;
        let old_parent = e.parent;
        let p = self.element(parent)?;
        let root = self.s.root();
        if parent != root {
            if p.kind == ElementKind::Avatar && p.owner != Some(who) {
                return Err(Rejection::Permission(
                    "only the avatar's player may attach to it".into(),
                ));
            }
            self.check_owner(who, p.owner, "attach to")?;
        }
        if self.s.is_within(parent, element) {
            return Err(Rejection::Invalid(format!(
                "{parent} is inside {element}: the hierarchy would have a cycle"
            )));
        }
        let depth_max = self.s.settings.depth_max;
        if self.s.depth(parent) + 1 + self.s.subtree_height(element) > depth_max {
            return Err(Rejection::OutOfBounds(format!(
                "hierarchy would be deeper than {depth_max}"
            )));
        }
        if old_parent == Some(parent) {
            return Ok(());
        }
        if let Some(old) = old_parent {
            self.s
                .elements
                .update(&old, |op| op.children.retain(|c| *c != element));
        }
        self.s.elements.update(&parent, |np| {
            let at = np.children.binary_search(&element).unwrap_or_else(|i| i);
            np.children.insert(at, element);
        });
        self.s.elements.update(&element, |e| {
            e.parent = Some(parent);
            e.kind = if parent == root {
                ElementKind::Object
            } else {
                ElementKind::Part
            };
        });
        Ok(())
    }

    fn admin(&mut self, who: PlayerId, action: &AdminAction) -> Result<(), Rejection> {
        let now = self.s.time_ms;
        match action {
            AdminAction::Grant { player } => {
                let known = self.s.players.update(player, |p| {
                    p.role = Role::Admin;
                    if p.online {
                        p.last_admin_login_ms = Some(now);
                    }
                });
                if !known {
                    return Err(Rejection::UnknownPlayer(*player));
                }
            }
            AdminAction::Revoke { player } => {
                let p = self
                    .s
                    .players
                    .get(player)
                    .ok_or(Rejection::UnknownPlayer(*player))?;
                if p.role != Role::Admin {
                    return Err(Rejection::Invalid(format!(
                        "{player} is not a permanent admin"
                    )));
                }
                self.s.players.update(player, |p| p.role = Role::Member);
            }
            AdminAction::Kick { player } => {
                if !self.s.players.get(player).is_some_and(|p| p.online) {
                    return Err(Rejection::Invalid(format!("{player} is not in the region")));
                }
                self.leave(*player);
            }
            AdminAction::Ban { player } => {
                if *player == who {
                    return Err(Rejection::Invalid("admins cannot ban themselves".into()));
                }
                self.s.banned.insert(*player);
                if self.s.players.get(player).is_some_and(|p| p.online) {
                    self.leave(*player);
                }
            }
            AdminAction::Unban { player } => {
                if self.s.banned.remove(player).is_none() {
                    return Err(Rejection::Invalid(format!("{player} is not banned")));
                }
            }
            AdminAction::Settings(patch) => self.patch_settings(patch)?,
        }
        Ok(())
    }

    fn patch_settings(&mut self, patch: &SettingsPatch) -> Result<(), Rejection> {
        let mut next = self.s.settings.clone();
        let range = |v: u32, lo: u32, hi: u32, what: &str| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(Rejection::OutOfBounds(format!(
                    "{what} must be in {lo}..={hi}, got {v}"
                )))
            }
        };
        if let Some(name) = &patch.name {
            check_text(name, next.name_bytes_max, "region name")?;
            next.name = name.clone();
        }
        if let Some(v) = patch.temp_admin_absence_days {
            next.temp_admin_absence_days = range(v, 0, 36_500, "temp_admin_absence_days")?;
        }
        if let Some(v) = patch.temp_admin_recent_days {
            next.temp_admin_recent_days = range(v, 0, 36_500, "temp_admin_recent_days")?;
        }
        if let Some(v) = patch.spawn {
            if !self.s.in_bounds(v) {
                return Err(Rejection::OutOfBounds(format!(
                    "spawn {v} is outside the region"
                )));
            }
            next.spawn = v;
        }
        if let Some(v) = patch.elements_max {
            next.elements_max = range(v, 1, 10_000_000, "elements_max")?;
        }
        if let Some(v) = patch.players_online_max {
            next.players_online_max = range(v, 1, 100_000, "players_online_max")?;
        }
        if let Some(v) = patch.chat_history_max {
            next.chat_history_max = range(v, 0, 100_000, "chat_history_max")?;
        }
        if let Some(v) = patch.text_bytes_max {
            next.text_bytes_max = range(v, 1, 65_536, "text_bytes_max")?;
        }
        if let Some(v) = patch.script_instructions_max {
            next.script_instructions_max = range(v, 1_000, 100_000_000, "script_instructions_max")?;
        }
        if let Some(v) = patch.script_memory_bytes_max {
            next.script_memory_bytes_max =
                range(v, 65_536, 256 * 1024 * 1024, "script_memory_bytes_max")?;
        }
        if let Some(list) = &patch.script_licences {
            let spdx = |id: &String| {
                !id.is_empty()
                    && id.len() <= 64
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+'))
            };
            if list.is_empty() || list.len() > 64 || !list.iter().all(spdx) {
                return Err(Rejection::Invalid(
                    "script_licences must be 1 to 64 SPDX identifiers".into(),
                ));
            }
            next.script_licences = list.clone();
        }
        let root = self.s.root();
        if next.name != self.s.settings.name {
            let name = next.name.clone();
            self.s.elements.update(&root, |r| r.name = name);
        }
        self.s.settings = next;
        self.trim_chat();
        Ok(())
    }

    /// Records a chat line, tells its listeners, and queues `Heard` for
    /// scripts in range (this tick for players' lines, next tick for
    /// scripts' own lines, which are said during the merge).
    fn say(
        &mut self,
        from: Speaker,
        pos: Vec3,
        radius: Option<Fx>,
        text: String,
        script: Option<ElementId>,
    ) {
        let line = ChatLine {
            tick: self.s.tick,
            time_ms: self.s.time_ms,
            from,
            pos,
            radius,
            text,
        };
        let listeners: Vec<PlayerId> = self
            .s
            .online()
            .filter(|p| match (radius, p.avatar) {
                (None, _) => true,
                (Some(r), Some(a)) => self
                    .s
                    .elements
                    .get(&a)
                    .is_some_and(|e| e.pos.within(pos, r)),
                (Some(_), None) => false,
            })
            .map(|p| p.id)
            .collect();
        let heard = ScriptEventKind::Heard {
            from,
            text: line.text.clone(),
        };
        match script {
            None => self.broadcast_near(pos, radius, None, heard),
            Some(sid) => {
                let targets: Vec<ElementId> = self
                    .s
                    .scripted
                    .iter()
                    .copied()
                    .filter(|t| *t != sid)
                    .filter(|t| match radius {
                        None => true,
                        Some(r) => self.s.elements.get(t).is_some_and(|e| e.pos.within(pos, r)),
                    })
                    .collect();
                for to in targets {
                    if self.s.mailbox.len() as u64 >= u64::from(self.s.settings.mailbox_max) {
                        self.report.inbox_dropped += 1;
                        break;
                    }
                    self.s.mailbox.push_back(Pending {
                        to,
                        event: heard.clone(),
                    });
                }
            }
        }
        self.s.chat.push_back(line.clone());
        self.trim_chat();
        self.report.events.push(Event::Chat { line, listeners });
    }

    fn trim_chat(&mut self) {
        while self.s.chat.len() as u64 > u64::from(self.s.settings.chat_history_max) {
            self.s.chat.pop_front();
        }
    }

    /// Steps 6 and 7.
    fn run_scripts(&mut self, seed: &[u8; 32], host: &dyn ScriptHost) {
        if self.queued.is_empty() {
            return;
        }
        let (calls, inboxes) = self.inboxes(seed);
        self.report.script_calls = calls.len() as u32;
        let state = &*self.s;
        let tick = self.s.tick;
        let ids: Vec<ElementId> = calls.iter().map(|(script, _)| *script).collect();
        // Each result comes with whether the script's fault count needs
        // resetting on success (no other output changes a script's own slot
        // during the merge).
        let results =
            state
                .elements
                .par_map_sorted(&ids, calls_per_task(ids.len()), |i, script, element| {
                    let Some(slot) = element.and_then(|e| e.script.as_ref()) else {
                        return (false, Err(ScriptFault::Rejected("script vanished".into())));
                    };
                    let result = host.run(&ScriptCall {
                        state,
                        script: *script,
                        slot,
                        inbox: &inboxes[calls[i].1.clone()],
                        tick,
                        seed: order::script_seed(seed, *script),
                    });
                    (slot.faults > 0, result)
                });
        drop(inboxes);
        // Most scripts set a timer (the 10k scene: every one).
        self.new_timers.reserve(calls.len());
        for ((script, _), (had_faults, result)) in calls.into_iter().zip(results) {
            let result = result.and_then(|out| self.check_output(script, &out).map(|()| out));
            match result {
                Ok(out) => self.apply_output(script, out, had_faults),
                Err(fault) => self.fault(script, fault),
            }
        }
        self.s.timers.extend(std::mem::take(&mut self.new_timers));
        // The merge left the hashes of the elements it changed to be
        // computed; most are the scripts' own (new state, faults), so
        // those are hashed here in parallel rather than one by one in the
        // digest.
        self.s.elements.rehash(&ids);
    }

    /// The queued events as inboxes: scripts in id order, each with the
    /// range of its events in the returned list, in canonical order. A
    /// script's events beyond `script_inbox_max` (in queue order) are
    /// dropped and counted.
    fn inboxes(
        &mut self,
        seed: &[u8; 32],
    ) -> (Vec<(ElementId, std::ops::Range<usize>)>, Vec<ScriptEvent>) {
        let mut queued = std::mem::take(&mut self.queued);
        // Stable: each script's events stay in the order they were queued.
        queued.sort_by_key(|(script, _)| *script);
        let max = self.s.settings.script_inbox_max as usize;
        let mut calls: Vec<(ElementId, std::ops::Range<usize>)> = Vec::with_capacity(queued.len());
        let mut events: Vec<ScriptEvent> = Vec::with_capacity(queued.len());
        for (script, event) in queued {
            if calls.last().is_none_or(|(last, _)| *last != script) {
                calls.push((script, events.len()..events.len()));
            }
            let Some((_, range)) = calls.last_mut() else {
                continue;
            };
            if range.len() >= max {
                self.report.inbox_dropped += 1;
                continue;
            }
            range.end += 1;
            events.push(event);
        }
        for (script, range) in &calls {
            order::canonical_order(seed, *script, &mut events[range.clone()]);
        }
        (calls, events)
    }

    /// Checks a script's output against the rules before anything applies.
    fn check_output(&self, script: ElementId, out: &ScriptOutput) -> Result<(), ScriptFault> {
        let st = &self.s.settings;
        let reject = |m: String| Err(ScriptFault::Rejected(m));
        for w in &out.writes {
            let (element, ok) = match w {
                Write::SetPos { element, pos } => (*element, self.s.in_bounds(*pos)),
                Write::SetName { element, name } => (
                    *element,
                    check_text(name, st.name_bytes_max, "name").is_ok(),
                ),
                Write::Impulse { element, .. } | Write::SetVelocity { element, .. } => {
                    (*element, true)
                }
            };
            if !self.s.elements.contains_key(&element) {
                return reject(format!("write to unknown element {element}"));
            }
            if !self.s.is_within(element, script) {
                return reject(format!("write to {element}, which the script does not own"));
            }
            if !ok {
                return reject(format!("invalid value written to {element}"));
            }
            if matches!(w, Write::Impulse { .. } | Write::SetVelocity { .. })
                && !self.s.bodies.contains_key(&element)
            {
                return reject(format!("{element} is not a body"));
            }
        }
        let sends = out.sends.len() + out.says.len();
        if sends as u64 > u64::from(st.script_sends_per_tick_max) {
            return reject(format!(
                "{sends} messages in one tick, limit {}",
                st.script_sends_per_tick_max
            ));
        }
        for (_, body) in &out.sends {
            if body.len() as u64 > u64::from(st.text_bytes_max) {
                return reject(format!(
                    "message of {} bytes, limit {}",
                    body.len(),
                    st.text_bytes_max
                ));
            }
        }
        for (text, radius) in &out.says {
            if check_text(text, st.text_bytes_max, "chat line").is_err()
                || radius.is_some_and(|r| r <= Fx::ZERO)
            {
                return reject("invalid chat line".into());
            }
        }
        if self.s.mailbox.len() as u64 + out.sends.len() as u64 > u64::from(st.mailbox_max) {
            return reject("region mailbox is full".into());
        }
        let timers = self.s.timers.len() + self.new_timers.len();
        if timers as u64 + out.timers.len() as u64 > u64::from(st.timers_max) {
            return reject("region timer table is full".into());
        }
        if out
            .timers
            .iter()
            .any(|(_, d)| *d == 0 || *d > 1_000_000_000)
        {
            return reject("timer delay must be 1..=1000000000 ticks".into());
        }
        if let Some(state) = &out.state
            && state.len() as u64 > u64::from(st.script_state_bytes_max)
        {
            return reject(format!(
                "state of {} bytes, limit {}",
                state.len(),
                st.script_state_bytes_max
            ));
        }
        Ok(())
    }

    /// Applies a checked output. `had_faults`: the script's slot counted
    /// faults before this call (they are reset now).
    fn apply_output(&mut self, script: ElementId, out: ScriptOutput, had_faults: bool) {
        for w in out.writes {
            match w {
                Write::SetPos { element, pos } => {
                    self.s.elements.update(&element, |e| {
                        e.pos = pos;
                    });
                }
                Write::SetName { element, name } => {
                    self.s.elements.update(&element, |e| {
                        e.name = name;
                    });
                }
                Write::Impulse { element, impulse } => {
                    self.report.physics.push(PhysicsCommand::Impulse {
                        id: element,
                        impulse,
                    });
                }
                Write::SetVelocity { element, vel } => {
                    self.report
                        .physics
                        .push(PhysicsCommand::SetVelocity { id: element, vel });
                }
            }
        }
        for (to, body) in out.sends {
            self.s.mailbox.push_back(Pending {
                to,
                event: ScriptEventKind::Message { from: script, body },
            });
        }
        let pos = if out.says.is_empty() {
            Vec3::default()
        } else {
            self.s
                .elements
                .get(&script)
                .map(|e| e.pos)
                .unwrap_or_default()
        };
        for (text, radius) in out.says {
            self.say(Speaker::Script(script), pos, radius, text, Some(script));
        }
        let tick = self.s.tick;
        // Only this script's timers can repeat each other in the batch.
        let mine = self.new_timers.len();
        for (timer, delay) in out.timers {
            let t = (tick.saturating_add(delay), script, timer);
            if !self.s.timers.contains(&t) && !self.new_timers[mine..].contains(&t) {
                self.new_timers.push(t);
            }
        }
        // A slot with no faults to reset and no new state is unchanged: no
        // write, no rehash.
        if out.state.is_some() || had_faults {
            self.s.elements.update(&script, |e| {
                if let Some(slot) = e.script.as_mut() {
                    slot.faults = 0;
                    if let Some(state) = out.state {
                        slot.state = state;
                    }
                }
            });
        }
    }

    fn fault(&mut self, script: ElementId, fault: ScriptFault) {
        let max = self.s.settings.script_faults_max;
        let Some(owner) = self.s.elements.get(&script).map(|e| e.owner) else {
            return;
        };
        let mut suspended = false;
        self.s.elements.update(&script, |e| {
            if let Some(slot) = e.script.as_mut() {
                slot.faults = slot.faults.saturating_add(1);
                if slot.faults >= max {
                    slot.suspended = true;
                }
                suspended = slot.suspended;
            }
        });
        self.report.events.push(Event::ScriptFault {
            script,
            owner,
            error: fault.to_string(),
            suspended,
        });
    }
}

/// Bodies and the physics inbox.
impl Tick<'_> {
    /// `Some(owner)` if `id` is a body handed to another region recently
    /// (and not back here).
    fn forwarded_owner(&self, id: ElementId) -> Option<Option<PlayerId>> {
        if self.s.elements.contains_key(&id) {
            return None;
        }
        self.forwarded
            .binary_search_by_key(&id, |(e, _)| *e)
            .ok()
            .map(|i| self.forwarded[i].1)
    }

    fn body(&self, id: ElementId) -> Result<&Body, Rejection> {
        self.element(id)?;
        self.s
            .bodies
            .get(&id)
            .ok_or_else(|| Rejection::Invalid(format!("element {id} is not a body")))
    }

    fn spawn_body(
        &mut self,
        who: PlayerId,
        parent: Option<ElementId>,
        name: &str,
        pos: Vec3,
        spec: crate::physics::BodySpec,
        vel: Vec3,
    ) -> Result<(), Rejection> {
        if !spec.valid() {
            return Err(Rejection::OutOfBounds(
                "body shape, material or seat offset out of range".into(),
            ));
        }
        if let BodyKind::Seated { .. } = spec.kind {
            let vehicle = parent
                .ok_or_else(|| Rejection::Invalid("a seated body needs a parent body".into()))?;
            self.body(vehicle)?;
        }
        let id = self.create(who, parent, name, pos)?;
        let vel = match spec.kind {
            BodyKind::Dynamic => vel,
            _ => Vec3::ZERO,
        };
        self.s.bodies.insert(
            id,
            Body {
                spec,
                vel,
                resting: false,
            },
        );
        let vehicle = match spec.kind {
            BodyKind::Seated { .. } => parent,
            _ => None,
        };
        self.report.physics.push(PhysicsCommand::Spawn {
            id,
            spec,
            pos,
            vel,
            vehicle,
        });
        Ok(())
    }

    /// Step 3, first half: ownership switches, then last tick's events.
    fn apply_physics(&mut self, inbox: &PhysicsInbox) {
        for root in &inbox.departures {
            self.depart(*root);
        }
        for transfer in &inbox.arrivals {
            self.arrive(transfer);
        }
        for event in &inbox.events {
            match event {
                PhysicsEvent::Moved { id, pos, vel } => {
                    let Some(from) = self.s.elements.get(id).map(|e| e.pos) else {
                        continue;
                    };
                    if !self.s.bodies.contains_key(id) {
                        continue;
                    }
                    // Elements without a body of their own ride along.
                    let has_children = self
                        .s
                        .elements
                        .get(id)
                        .is_some_and(|e| !e.children.is_empty());
                    let riders: Vec<ElementId> = if has_children {
                        self.s
                            .subtree(*id)
                            .into_iter()
                            .filter(|c| c != id && !self.s.bodies.contains_key(c))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    for c in riders {
                        self.s.elements.update(&c, |e| {
                            e.pos = e.pos.saturating_sub(from).saturating_add(*pos);
                        });
                    }
                    self.s.elements.update(id, |e| e.pos = *pos);
                    self.s.bodies.update(id, |b| {
                        b.vel = *vel;
                        b.resting = false;
                    });
                }
                PhysicsEvent::AtRest { id } => {
                    self.s.bodies.update(id, |b| b.resting = true);
                }
                PhysicsEvent::Collided { id, other } => {
                    // The body's script hears it, or its nearest scripted
                    // ancestor's.
                    let mut cur = Some(*id);
                    let mut steps = 0u32;
                    while let Some(at) = cur {
                        let Some(e) = self.s.elements.get(&at) else {
                            break;
                        };
                        if e.script.is_some() {
                            let ev = self.new_event_id();
                            self.push_event(
                                at,
                                ev,
                                ScriptEventKind::Collision {
                                    element: *id,
                                    other: *other,
                                },
                            );
                            break;
                        }
                        cur = e.parent;
                        steps += 1;
                        if steps > self.s.settings.depth_max {
                            break;
                        }
                    }
                }
                PhysicsEvent::LeftRegion { .. } => {}
            }
        }
    }

    /// Removes a subtree whose ownership left, with its bodies, timers and
    /// queued events (they travelled with it). No physics command: the
    /// physics side already let the bodies go.
    fn depart(&mut self, root: ElementId) {
        if root == self.s.root() || !self.s.elements.contains_key(&root) {
            return;
        }
        let ids = self.s.subtree(root);
        let parent = self.s.elements.get(&root).and_then(|e| e.parent);
        for id in &ids {
            self.s.elements.remove(id);
            self.s.scripted.remove(id);
            self.s.bodies.remove(id);
        }
        if let Some(parent) = parent {
            self.s
                .elements
                .update(&parent, |p| p.children.retain(|c| *c != root));
        }
        let mut ids = ids;
        ids.sort();
        let gone = |id: &ElementId| ids.binary_search(id).is_ok();
        self.s.timers.retain(|(_, s, _)| !gone(s));
        self.s.mailbox.retain(|p| !gone(&p.to));
    }

    /// Attaches a subtree whose ownership arrived under the region root.
    fn arrive(&mut self, t: &Transfer) {
        let Some(root) = t.root() else {
            return;
        };
        if t.elements
            .iter()
            .any(|e| self.s.elements.contains_key(&e.id))
        {
            return;
        }
        let region = self.s.region;
        let region_root = self.s.root();
        for (i, e) in t.elements.iter().enumerate() {
            let mut e = e.clone();
            e.owner_region = region;
            if i == 0 {
                e.parent = Some(region_root);
            }
            if e.script.is_some() {
                self.s.scripted.insert(e.id);
            }
            self.s.elements.insert(e.id, e);
        }
        self.s.elements.update(&region_root, |r| {
            let at = r.children.binary_search(&root).unwrap_or_else(|i| i);
            r.children.insert(at, root);
        });
        for (id, body) in &t.bodies {
            self.s.bodies.insert(*id, body.clone());
        }
        self.s.timers.extend(t.timers.clone());
        for p in &t.mailbox {
            self.s.mailbox.push_back(p.clone());
        }
    }
}
