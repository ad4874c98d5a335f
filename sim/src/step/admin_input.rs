//! Step 5, admin inputs: roles, kicks, bans and the region's settings.

use crate::fx::Fx;
use crate::id::PlayerId;
use crate::input::{AdminAction, Rejection, SettingsPatch};
use crate::state::Role;

use super::{Work, check_text};

impl Work<'_> {
    pub(super) fn admin(&mut self, who: PlayerId, action: &AdminAction) -> Result<(), Rejection> {
        let now = self.state.time_ms;
        match action {
            AdminAction::Grant { player } => {
                let known = self.state.players.update(player, |p| {
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
                    .state
                    .players
                    .get(player)
                    .ok_or(Rejection::UnknownPlayer(*player))?;
                if p.role != Role::Admin {
                    return Err(Rejection::Invalid(format!(
                        "{player} is not a permanent admin"
                    )));
                }
                self.state.players.update(player, |p| p.role = Role::Member);
            }
            AdminAction::Kick { player } => {
                if !self.state.players.get(player).is_some_and(|p| p.online) {
                    return Err(Rejection::Invalid(format!("{player} is not in the region")));
                }
                self.leave(*player);
            }
            AdminAction::Ban { player } => {
                if *player == who {
                    return Err(Rejection::Invalid("admins cannot ban themselves".into()));
                }
                self.state.banned.insert(*player);
                if self.state.players.get(player).is_some_and(|p| p.online) {
                    self.leave(*player);
                }
            }
            AdminAction::Unban { player } => {
                if self.state.banned.remove(player).is_none() {
                    return Err(Rejection::Invalid(format!("{player} is not banned")));
                }
            }
            AdminAction::Settings(patch) => self.patch_settings(patch)?,
        }
        Ok(())
    }

    pub(super) fn patch_settings(&mut self, patch: &SettingsPatch) -> Result<(), Rejection> {
        let mut next = self.state.settings.clone();
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
            if !self.state.in_bounds(v) {
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
            if !licences_ok(list) {
                return Err(Rejection::Invalid(
                    "script_licences must be 1 to 64 SPDX identifiers".into(),
                ));
            }
            next.script_licences = list.clone();
        }
        if let Some(v) = patch.walk_speed_max {
            if v < Fx::ZERO || v > Fx::from_int(WALK_SPEED_MAX_LIMIT) {
                return Err(Rejection::OutOfBounds(format!(
                    "walk_speed_max must be in 0..={WALK_SPEED_MAX_LIMIT} m/s, got {v}"
                )));
            }
            next.walk_speed_max = v;
        }
        let root = self.state.root();
        if next.name != self.state.settings.name {
            let name = next.name.clone();
            self.state.elements.update(&root, |r| r.name = name);
        }
        let walk_max = next.walk_speed_max;
        self.state.settings = next;
        self.trim_chat();
        // Walkers faster than a lowered limit stop.
        self.stop_walkers_over(walk_max);
        Ok(())
    }
}

/// The highest `walk_speed_max` a region may set, m/s.
const WALK_SPEED_MAX_LIMIT: i32 = 100;

/// Whether `list` is 1 to 64 SPDX identifiers.
fn licences_ok(list: &[String]) -> bool {
    let spdx = |id: &String| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+'))
    };
    !list.is_empty() && list.len() <= 64 && list.iter().all(spdx)
}
