//! The temp-admin rule.
//!
//! At sim time T: if no permanent admin has logged in within X days
//! (`temp_admin_absence_days`), the temp admin is the player with the
//! earliest first join among those who logged in within Y days
//! (`temp_admin_recent_days`), ties broken by the lower player id; otherwise
//! there is none. Banned players are never chosen.
//!
//! "Logged in" means a committed join input. An *admin login* is a join made
//! while a permanent admin, or being made permanent admin while online (the
//! admin is present as admin from that moment). The temp admin's own logins
//! are ordinary logins, so they never reset the admin clock. "Within D days"
//! is inclusive: `T - login ≤ D · 86 400 000 ms`.

use crate::id::PlayerId;
use crate::state::{DAY_MS, Role, State};

/// Whether a login at `at` is within `days` of `now`.
fn within(now: u64, at: u64, days: u32) -> bool {
    now.saturating_sub(at) <= u64::from(days).saturating_mul(DAY_MS)
}

/// The temp admin the rule names for `state` at `state.time_ms`.
pub fn temp_admin(state: &State) -> Option<PlayerId> {
    let now = state.time_ms;
    let settings = &state.settings;
    let admin_present = state.players.values().any(|p| {
        p.role == Role::Admin
            && !state.banned.contains(&p.id)
            && p.last_admin_login_ms
                .is_some_and(|at| within(now, at, settings.temp_admin_absence_days))
    });
    if admin_present {
        return None;
    }
    state
        .players
        .values()
        .filter(|p| !state.banned.contains(&p.id))
        .filter(|p| {
            p.last_login_ms
                .is_some_and(|at| within(now, at, settings.temp_admin_recent_days))
        })
        .filter_map(|p| p.first_join_ms.map(|first| (first, p.id)))
        .min()
        .map(|(_, id)| id)
}
