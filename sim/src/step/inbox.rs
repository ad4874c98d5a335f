//! Step 6, first half: events for scripts, queued as they are made, then
//! grouped into one inbox per script (script-id order) and put in
//! canonical order (order.rs).

use crate::fx::{Fx, Vec3};
use crate::id::ElementId;
use crate::order;
use crate::script::{ScriptEvent, ScriptEventKind};

use super::{Work, live_script};

impl Work<'_> {
    pub(super) fn new_event_id(&mut self) -> u64 {
        let id = self.next_event_id;
        self.next_event_id += 1;
        id
    }

    /// Queues an event for a script this tick, if it runs. Room in its
    /// inbox is checked when the inboxes are formed (the first
    /// `script_inbox_max` events queued for a script are kept).
    pub(super) fn push_event(&mut self, script: ElementId, id: u64, kind: ScriptEventKind) {
        if live_script(self.state.elements.get(&script)) {
            self.queued.push((script, ScriptEvent { id, kind }));
        }
    }

    /// Sends an event to every live script.
    pub(super) fn broadcast(&mut self, kind: ScriptEventKind) {
        let id = self.new_event_id();
        let scripts: Vec<ElementId> = self.state.scripted.iter().copied().collect();
        for script in scripts {
            self.push_event(script, id, kind.clone());
        }
    }

    /// Sends an event to every live script within `radius` of `pos`, except `skip`.
    pub(super) fn broadcast_near(
        &mut self,
        pos: Vec3,
        radius: Option<Fx>,
        skip: Option<ElementId>,
        kind: ScriptEventKind,
    ) {
        let id = self.new_event_id();
        let scripts: Vec<ElementId> = self
            .state
            .scripted
            .iter()
            .copied()
            .filter(|sid| Some(*sid) != skip)
            .filter(|sid| match radius {
                None => true,
                Some(r) => self
                    .state
                    .elements
                    .get(sid)
                    .is_some_and(|e| e.pos.within(pos, r)),
            })
            .collect();
        for script in scripts {
            self.push_event(script, id, kind.clone());
        }
    }

    /// The queued events as inboxes: scripts in id order, each with the
    /// range of its events in the returned list, in canonical order. A
    /// script's events beyond `script_inbox_max` (in queue order) are
    /// dropped and counted.
    pub(super) fn inboxes(
        &mut self,
        seed: &[u8; 32],
    ) -> (Vec<(ElementId, std::ops::Range<usize>)>, Vec<ScriptEvent>) {
        let mut queued = std::mem::take(&mut self.queued);
        // Stable: each script's events stay in the order they were queued.
        queued.sort_by_key(|(script, _)| *script);
        let max = self.state.settings.script_inbox_max as usize;
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
}
