//! Chat lines, from players' inputs (step 5) and scripts' says (step 7).

use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, PlayerId};
use crate::input::Event;
use crate::script::ScriptEventKind;
use crate::state::{ChatLine, Pending, Speaker};

use super::Work;

impl Work<'_> {
    /// Records a chat line, tells its listeners, and queues `Heard` for
    /// scripts in range (this tick for players' lines, next tick for
    /// scripts' own lines, which are said during the merge).
    pub(super) fn say(
        &mut self,
        from: Speaker,
        pos: Vec3,
        radius: Option<Fx>,
        text: String,
        script: Option<ElementId>,
    ) {
        let line = ChatLine {
            tick: self.state.tick,
            time_ms: self.state.time_ms,
            from,
            pos,
            radius,
            text,
        };
        let listeners: Vec<PlayerId> = self
            .state
            .online()
            .filter(|p| match (radius, p.avatar) {
                (None, _) => true,
                (Some(r), Some(a)) => self
                    .state
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
                    .state
                    .scripted
                    .iter()
                    .copied()
                    .filter(|t| *t != sid)
                    .filter(|t| match radius {
                        None => true,
                        Some(r) => self
                            .state
                            .elements
                            .get(t)
                            .is_some_and(|e| e.pos.within(pos, r)),
                    })
                    .collect();
                for to in targets {
                    if self.state.mailbox.len() as u64 >= u64::from(self.state.settings.mailbox_max)
                    {
                        self.report.inbox_dropped += 1;
                        break;
                    }
                    self.state.mailbox.push_back(Pending {
                        to,
                        event: heard.clone(),
                    });
                }
            }
        }
        self.state.chat.push_back(line.clone());
        self.trim_chat();
        self.report.events.push(Event::Chat { line, listeners });
    }

    pub(super) fn trim_chat(&mut self) {
        while self.state.chat.len() as u64 > u64::from(self.state.settings.chat_history_max) {
            self.state.chat.pop_front();
        }
    }
}
