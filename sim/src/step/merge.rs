//! Step 7: outputs merge in script-id order, each checked whole and
//! applied whole or not at all; a refused output is a fault.

use crate::fx::{Fx, Vec3};
use crate::id::ElementId;
use crate::input::Event;
use crate::physics;
use crate::remote::{Outbound, Remote};
use crate::script::{ScriptEventKind, ScriptFault, ScriptOutput, Write};
use crate::state::{Pending, Speaker};

use super::{Work, check_text};

impl Work<'_> {
    /// Checks a script's output against the rules before anything applies.
    pub(super) fn check_output(
        &self,
        script: ElementId,
        out: &ScriptOutput,
    ) -> Result<(), ScriptFault> {
        let st = &self.state.settings;
        let reject = |m: String| Err(ScriptFault::Rejected(m));
        self.check_writes(script, &out.writes)?;
        let sends = out.sends.len() + out.says.len() + out.remote_sends.len();
        if sends as u64 > u64::from(st.script_sends_per_tick_max) {
            return reject(format!(
                "{sends} messages in one tick, limit {}",
                st.script_sends_per_tick_max
            ));
        }
        let remote = out.remote_sends.iter().map(|(_, _, b)| b);
        for body in out.sends.iter().map(|(_, b)| b).chain(remote) {
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
        if out.remote_sends.iter().any(|(_, _, b)| b.is_empty()) {
            return reject("empty message to another region".into());
        }
        let here = self.state.region;
        let local = out.sends.len() + out.remote_sends.iter().filter(|s| s.0 == here).count();
        if self.state.mailbox.len() as u64 + local as u64 > u64::from(st.mailbox_max) {
            return reject("region mailbox is full".into());
        }
        let timers = self.state.timers.len() + self.new_timers.len();
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

    /// Each write: to a known element within the script's subtree, with a
    /// valid value; impulses and velocities to bodies.
    fn check_writes(&self, script: ElementId, writes: &[Write]) -> Result<(), ScriptFault> {
        let st = &self.state.settings;
        let reject = |m: String| Err(ScriptFault::Rejected(m));
        for w in writes {
            let (element, ok) = match w {
                Write::SetPos { element, pos } => (*element, self.state.in_bounds(*pos)),
                Write::SetName { element, name } => (
                    *element,
                    check_text(name, st.name_bytes_max, "name").is_ok(),
                ),
                Write::Impulse { element, .. } | Write::SetVelocity { element, .. } => {
                    (*element, true)
                }
            };
            if !self.state.elements.contains_key(&element) {
                return reject(format!("write to unknown element {element}"));
            }
            if !self.state.is_within(element, script) {
                return reject(format!("write to {element}, which the script does not own"));
            }
            if !ok {
                return reject(format!("invalid value written to {element}"));
            }
            if matches!(w, Write::Impulse { .. } | Write::SetVelocity { .. })
                && !self.state.bodies.contains_key(&element)
            {
                return reject(format!("{element} is not a body"));
            }
        }
        Ok(())
    }

    /// Applies a checked output. `had_faults`: the script's slot counted
    /// faults before this call (they are reset now).
    pub(super) fn apply_output(&mut self, script: ElementId, out: ScriptOutput, had_faults: bool) {
        for w in out.writes {
            match w {
                Write::SetPos { element, pos } => {
                    self.state.elements.update(&element, |e| {
                        e.pos = pos;
                    });
                }
                Write::SetName { element, name } => {
                    self.state.elements.update(&element, |e| {
                        e.name = name;
                    });
                }
                Write::Impulse { element, impulse } => {
                    self.report.physics.push(physics::Command::Impulse {
                        id: element,
                        impulse,
                    });
                }
                Write::SetVelocity { element, vel } => {
                    self.report
                        .physics
                        .push(physics::Command::SetVelocity { id: element, vel });
                }
            }
        }
        for (to, body) in out.sends {
            self.state.mailbox.push_back(Pending {
                to,
                event: ScriptEventKind::Message { from: script, body },
            });
        }
        for (region, to, body) in out.remote_sends {
            if region == self.state.region {
                self.state.mailbox.push_back(Pending {
                    to,
                    event: ScriptEventKind::Message { from: script, body },
                });
            } else {
                self.report.remote.push(Outbound {
                    to: Some(region),
                    item: Remote::Message {
                        from: script,
                        to,
                        body,
                    },
                });
            }
        }
        let pos = if out.says.is_empty() {
            Vec3::default()
        } else {
            self.state
                .elements
                .get(&script)
                .map(|e| e.pos)
                .unwrap_or_default()
        };
        for (text, radius) in out.says {
            if let Some(r) = radius {
                self.report.remote.push(Outbound {
                    to: None,
                    item: Remote::Chat {
                        from: Speaker::Script(script),
                        pos,
                        radius: r,
                        text: text.clone(),
                    },
                });
            }
            self.say(Speaker::Script(script), pos, radius, text, Some(script));
        }
        let tick = self.state.tick;
        // Only this script's timers can repeat each other in the batch.
        let mine = self.new_timers.len();
        for (timer, delay) in out.timers {
            let t = (tick.saturating_add(delay), script, timer);
            if !self.state.timers.contains(&t) && !self.new_timers[mine..].contains(&t) {
                self.new_timers.push(t);
            }
        }
        // A slot with no faults to reset and no new state is unchanged: no
        // write, no rehash.
        if out.state.is_some() || had_faults {
            self.state.elements.update(&script, |e| {
                if let Some(slot) = e.script.as_mut() {
                    slot.faults = 0;
                    if let Some(state) = out.state {
                        slot.state = state;
                    }
                }
            });
        }
    }

    pub(super) fn fault(&mut self, script: ElementId, fault: ScriptFault) {
        let max = self.state.settings.script_faults_max;
        let Some(owner) = self.state.elements.get(&script).map(|e| e.owner) else {
            return;
        };
        let mut suspended = false;
        self.state.elements.update(&script, |e| {
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
