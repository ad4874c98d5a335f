//! Step 4: the temp-admin rule, evaluated at the batch's time (and again
//! after each accepted join or admin input).

use crate::admin;
use crate::input::Event;

use super::Work;

impl Work<'_> {
    pub(super) fn update_temp_admin(&mut self) {
        let now = admin::temp_admin(self.state);
        if now != self.state.temp_admin {
            self.state.temp_admin = now;
            self.report.events.push(Event::TempAdmin { player: now });
        }
    }
}
