//! Step 3, after the physics inbox: chat lines and script messages from
//! neighbouring regions (see [`crate::remote`]).

use crate::id::RegionId;
use crate::remote::Remote;
use crate::script::ScriptEventKind;

use super::{Work, check_text, live_script};

impl Work<'_> {
    /// Applies the items neighbours sent, in the order given. A chat line
    /// is heard by players and scripts within its radius (this tick, like
    /// a player's line said here) and kept in the chat history; a message
    /// goes to its target's inbox this tick. A message whose target is not
    /// a live script here, or text over this region's limit, is refused
    /// and counted; nothing else changes.
    pub(super) fn apply_remote(&mut self, items: &[(RegionId, Remote)]) {
        let max = self.state.settings.text_bytes_max;
        for (region, item) in items {
            match item {
                Remote::Chat {
                    from,
                    pos,
                    radius,
                    text,
                } => {
                    if check_text(text, max, "chat line").is_err() || *radius <= crate::Fx::ZERO {
                        self.report.remote_refused += 1;
                        continue;
                    }
                    self.say(*from, *pos, Some(*radius), text.clone(), None);
                }
                Remote::Message { from, to, body } => {
                    let known = live_script(self.state.elements.get(to));
                    if !known || body.is_empty() || body.len() as u64 > u64::from(max) {
                        self.report.remote_refused += 1;
                        continue;
                    }
                    let id = self.new_event_id();
                    self.push_event(
                        *to,
                        id,
                        ScriptEventKind::RemoteMessage {
                            region: *region,
                            from: *from,
                            body: body.clone(),
                        },
                    );
                }
            }
            self.report.remote_delivered += 1;
        }
    }
}
