//! Step 3: what arrives before the inputs. The physics inbox (subtrees
//! whose ownership leaves, then those that arrive, then last tick's physics
//! events), then last tick's queued script events and the timers due now.

use crate::fx::Vec3;
use crate::id::ElementId;
use crate::physics::{PhysicsEvent, PhysicsInbox, Transfer};
use crate::script::{ScriptEvent, ScriptEventKind};
use crate::state::ElementKind;

use super::{LOOKUPS_PER_TASK, Work, live_script};

impl Work<'_> {
    /// Step 3, first half: ownership switches, then last tick's events.
    pub(super) fn apply_physics(&mut self, inbox: &PhysicsInbox) {
        for (root, to) in &inbox.departures {
            let player = self
                .state
                .elements
                .get(root)
                .filter(|e| e.kind == ElementKind::Avatar)
                .and_then(|e| e.owner);
            if self.depart(*root) {
                self.depart_player(*root, player, *to);
            }
        }
        for transfer in &inbox.arrivals {
            self.arrive(transfer);
        }
        for (root, to, reason) in &inbox.refused {
            self.crossing_refused(*root, *to, *reason);
        }
        for event in &inbox.events {
            match event {
                PhysicsEvent::Moved { id, pos, vel } => self.moved(*id, *pos, *vel),
                PhysicsEvent::AtRest { id } => {
                    self.state.bodies.update(id, |b| b.resting = true);
                }
                PhysicsEvent::Collided { id, other } => self.collided(*id, *other),
                PhysicsEvent::LeftRegion { .. } => {}
            }
        }
    }

    /// A body moved in last tick's physics step: its element (and the
    /// elements riding on it without a body of their own) follow.
    fn moved(&mut self, id: ElementId, pos: Vec3, vel: Vec3) {
        let Some(from) = self.state.elements.get(&id).map(|e| e.pos) else {
            return;
        };
        if !self.state.bodies.contains_key(&id) {
            return;
        }
        // Elements without a body of their own ride along.
        let has_children = self
            .state
            .elements
            .get(&id)
            .is_some_and(|e| !e.children.is_empty());
        let riders: Vec<ElementId> = if has_children {
            self.state
                .subtree(id)
                .into_iter()
                .filter(|c| *c != id && !self.state.bodies.contains_key(c))
                .collect()
        } else {
            Vec::new()
        };
        for c in riders {
            self.state.elements.update(&c, |e| {
                e.pos = e.pos.saturating_sub(from).saturating_add(pos);
            });
        }
        self.state.elements.update(&id, |e| e.pos = pos);
        self.state.bodies.update(&id, |b| {
            b.vel = vel;
            b.resting = false;
        });
    }

    /// A body collided: its script hears it, or its nearest scripted
    /// ancestor's.
    fn collided(&mut self, id: ElementId, other: ElementId) {
        let mut cur = Some(id);
        let mut steps = 0u32;
        while let Some(at) = cur {
            let Some(e) = self.state.elements.get(&at) else {
                break;
            };
            if e.script.is_some() {
                let ev = self.new_event_id();
                self.push_event(at, ev, ScriptEventKind::Collision { element: id, other });
                break;
            }
            cur = e.parent;
            steps += 1;
            if steps > self.state.settings.depth_max {
                break;
            }
        }
    }

    /// Removes a subtree whose ownership left, with its bodies, timers and
    /// queued events (they travelled with it). No physics command: the
    /// physics side already let the bodies go. Whether it was here.
    pub(super) fn depart(&mut self, root: ElementId) -> bool {
        if root == self.state.root() || !self.state.elements.contains_key(&root) {
            return false;
        }
        let ids = self.state.subtree(root);
        let parent = self.state.elements.get(&root).and_then(|e| e.parent);
        for id in &ids {
            self.state.elements.remove(id);
            self.state.scripted.remove(id);
            self.state.bodies.remove(id);
            self.state.walking.remove(id);
        }
        if let Some(parent) = parent {
            self.state
                .elements
                .update(&parent, |p| p.children.retain(|c| *c != root));
        }
        let mut ids = ids;
        ids.sort();
        let gone = |id: &ElementId| ids.binary_search(id).is_ok();
        self.state.timers.retain(|(_, s, _)| !gone(s));
        self.state.mailbox.retain(|p| !gone(&p.to));
        true
    }

    /// Attaches a subtree whose ownership arrived under the region root.
    pub(super) fn arrive(&mut self, t: &Transfer) {
        let Some(root) = t.root() else {
            return;
        };
        if t.elements
            .iter()
            .any(|e| self.state.elements.contains_key(&e.id))
        {
            return;
        }
        let region = self.state.region;
        let region_root = self.state.root();
        for (i, e) in t.elements.iter().enumerate() {
            let mut e = e.clone();
            e.owner_region = region;
            if i == 0 {
                e.parent = Some(region_root);
            }
            if e.script.is_some() {
                self.state.scripted.insert(e.id);
            }
            self.state.elements.insert(e.id, e);
        }
        self.state.elements.update(&region_root, |r| {
            let at = r.children.binary_search(&root).unwrap_or_else(|i| i);
            r.children.insert(at, root);
        });
        for (id, body) in &t.bodies {
            self.state.bodies.insert(*id, body.clone());
        }
        self.state.timers.extend(t.timers.clone());
        for p in &t.mailbox {
            self.state.mailbox.push_back(p.clone());
        }
        if let Some(a) = &t.player {
            self.arrive_player(root, a);
        }
    }

    /// Step 3: last tick's queued events and timers due now.
    pub(super) fn deliver_pending(&mut self) {
        let pending = std::mem::take(&mut self.state.mailbox);
        for p in pending {
            let id = self.new_event_id();
            self.push_event(p.to, id, p.event);
        }
        let due = self.state.timers.take_due(self.state.tick);
        // As `push_event`, with the scripts looked up on the pool, in
        // ordered walks when the due timers are in script order (they are
        // when all are due at this tick).
        let scripts: Vec<ElementId> = due.iter().map(|(_, script, _)| *script).collect();
        let live: Vec<bool> = self
            .state
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
}
