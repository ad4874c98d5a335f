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

use serde::Serialize;

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

/// A login the rule counts: who, and when (sim time, ms).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct Login {
    /// The player.
    pub player: PlayerId,
    /// Sim time of the login, ms.
    pub at_ms: u64,
}

/// When the rule's answer changes next if nobody logs in, and to whom.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct Change {
    /// Sim time of the change, ms: the first instant a login the rule
    /// counts is no longer within its window.
    pub at_ms: u64,
    /// The temp admin from then on (`None`: the role ends).
    pub temp_admin: Option<PlayerId>,
}

/// Why the rule names whom it names at `state.time_ms`, for people.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct Explanation {
    /// The rule's answer now.
    pub temp_admin: Option<PlayerId>,
    /// The newest admin login of a permanent admin who is not banned: while
    /// it is within `temp_admin_absence_days` there is no temp admin.
    pub last_admin_login: Option<Login>,
    /// The next change without new logins: when the last admin login leaves
    /// its window (a temp admin is named, if anyone logged in recently) or
    /// when the temp admin's last login leaves `temp_admin_recent_days`
    /// (the role passes to the next oldest recent player, or ends). `None`:
    /// nothing changes until someone logs in.
    pub next_change: Option<Change>,
}

/// The first instant after a login at `at` that is no longer within `days`.
fn window_end(at: u64, days: u32) -> u64 {
    at.saturating_add(u64::from(days).saturating_mul(DAY_MS))
        .saturating_add(1)
}

/// Explains the rule for `state` at `state.time_ms`. One pass over the
/// players (and one more to name the successor); nothing is changed.
pub fn explain(state: &State) -> Explanation {
    let now = state.time_ms;
    let settings = &state.settings;
    let last_admin_login = state
        .players
        .values()
        .filter(|p| p.role == Role::Admin && !state.banned.contains(&p.id))
        .filter_map(|p| p.last_admin_login_ms.map(|at| (at, p.id)))
        .max_by_key(|&(at, id)| (at, std::cmp::Reverse(id)))
        .map(|(at_ms, player)| Login { player, at_ms });
    let current = temp_admin(state);
    // Without new logins the answer can only change when a counted login
    // leaves its window: the newest admin login while an admin is present,
    // else the temp admin's own last login (the others recent with it all
    // joined later, so it stays the oldest until then).
    let end = match (last_admin_login, current) {
        (Some(l), _) if within(now, l.at_ms, settings.temp_admin_absence_days) => {
            Some(window_end(l.at_ms, settings.temp_admin_absence_days))
        }
        (_, Some(p)) => state
            .players
            .get(&p)
            .and_then(|pl| pl.last_login_ms)
            .map(|at| window_end(at, settings.temp_admin_recent_days)),
        _ => None,
    };
    let next_change = end.filter(|&at| at > now).and_then(|at_ms| {
        let mut later = state.clone();
        later.time_ms = at_ms;
        let next = temp_admin(&later);
        (next != current).then_some(Change {
            at_ms,
            temp_admin: next,
        })
    });
    Explanation {
        temp_admin: current,
        last_admin_login,
        next_change,
    }
}
