//! Step 5b: walking avatars. A `Walk` input sets (or, with zero, clears)
//! the velocity of its sender's avatar; after the inputs, every walking
//! avatar moves by `vel / tick_rate_hz`, in avatar-id order, exactly as a
//! `Move` of the avatar to that point would (ADR 0017). Moving the avatar
//! by hand, leaving, being kicked or departing stop it.

use imbl::OrdMap;

use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, PlayerId};
use crate::input::Rejection;

use super::{Work, online_avatar};

/// Where one tick of walking takes an avatar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stride {
    /// Still inside the region: it moves there and walks on.
    Inside(Vec3),
    /// The stride would leave the region: it stops at this point, the
    /// nearest one inside (the target clamped to the bounds).
    Bound(Vec3),
}

/// Where a walking avatar that means to reach `to` would stop in a region
/// of `size` (it spans `[0, size)`) when it may not go there: a stride
/// into a neighbour's box is taken by the crossing rule first
/// (`Work::place_avatar`, ADR 0018); this clamps one that has no
/// neighbour to go to.
pub fn stride(size: Vec3, to: Vec3) -> Stride {
    if crate::state::in_bounds(size, to) {
        return Stride::Inside(to);
    }
    let clamp = |v: Fx, max: Fx| v.max(Fx::ZERO).min(max.saturating_sub(Fx::DELTA));
    Stride::Bound(Vec3::new(
        clamp(to.x, size.x),
        clamp(to.y, size.y),
        clamp(to.z, size.z),
    ))
}

/// How far `vel` (m/s) goes in one tick at `tick_rate_hz`, rounded toward
/// zero; zero at a rate of zero.
pub fn per_tick(vel: Vec3, tick_rate_hz: u32) -> Vec3 {
    let Ok(rate) = i32::try_from(tick_rate_hz) else {
        return Vec3::ZERO;
    };
    let div = |v: Fx| v.checked_div(Fx::from_int(rate)).unwrap_or(Fx::ZERO);
    Vec3::new(div(vel.x), div(vel.y), div(vel.z))
}

/// Whether `vel` is no faster than `max` m/s (exact, no square root).
fn within_speed(vel: Vec3, max: Fx) -> bool {
    let m = max.to_bits().max(0) as u128;
    vel.length_squared_q64() <= m * m
}

impl Work<'_> {
    /// A `Walk` input: sets the sender's avatar walking at `vel`, or stops
    /// it when `vel` is zero.
    pub(super) fn walk_input(&mut self, who: PlayerId, vel: Vec3) -> Result<(), Rejection> {
        let avatar = online_avatar(self.state, who)?;
        if vel == Vec3::ZERO {
            self.state.walking.remove(&avatar);
            return Ok(());
        }
        let max = self.state.settings.walk_speed_max;
        if !within_speed(vel, max) {
            return Err(Rejection::OutOfBounds(format!(
                "walking speed {} m/s is above the region's walk_speed_max of {max} m/s",
                vel.length()
            )));
        }
        self.state.walking.insert(avatar, vel);
        Ok(())
    }

    /// Step 5b: every walking avatar takes one stride, in id order. One
    /// that reaches the bounds stops there; one whose subtree cannot move
    /// (a part would leave the region) stops where it is.
    pub(super) fn advance_walkers(&mut self) {
        if self.state.walking.is_empty() {
            return;
        }
        let rate = self.state.settings.tick_rate_hz;
        let size = self.state.settings.size;
        // A pointer copy: the loop changes `walking` only by removals.
        let walkers: OrdMap<ElementId, Vec3> = self.state.walking.clone();
        for (&avatar, &vel) in &walkers {
            let Some(from) = self.state.elements.get(&avatar).map(|e| e.pos) else {
                // Not reachable through the rules (removals stop walking);
                // a state decoded from elsewhere might hold one.
                self.state.walking.remove(&avatar);
                continue;
            };
            let to = from.saturating_add(per_tick(vel, rate));
            // The avatar goes where a `Move` would take it (ADR 0018's
            // rule: past the border into a neighbour's box it walks on and
            // crosses). Where that is refused: at the bounds with no
            // neighbour it stops on the nearest point inside; otherwise (a
            // crossing under way it would undo, a part that would leave)
            // it stops where it is.
            if self.place_avatar(avatar, to).is_ok() {
                continue;
            }
            self.state.walking.remove(&avatar);
            if let Stride::Bound(inside) = stride(size, to) {
                let _ = self.place_avatar(avatar, inside);
            }
        }
    }

    /// Stops walkers over a new speed limit (a settings change).
    pub(super) fn stop_walkers_over(&mut self, max: Fx) {
        let over: Vec<ElementId> = self
            .state
            .walking
            .iter()
            .filter(|(_, vel)| !within_speed(**vel, max))
            .map(|(id, _)| *id)
            .collect();
        for id in over {
            self.state.walking.remove(&id);
        }
    }
}
