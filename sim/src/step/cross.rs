//! Avatars crossing into neighbouring regions (docs/adr/0018): the one
//! rule for where an avatar may be put ([`Work::place_avatar`]), and the
//! player following the avatar when its subtree leaves, arrives or comes
//! back.
//!
//! The sim knows its neighbours only as the boxes the region hands it
//! each tick ([`PhysicsInbox::neighbours`](crate::physics::PhysicsInbox)).
//! An avatar may stand outside this region's box only inside one of
//! them; once it is more than the hysteresis past the box, the tick
//! reports a [`Crossing`] and the region offers the avatar's subtree to
//! that neighbour like any group of bodies (`Offer`, `Accept`, `Final`,
//! switch at t + 2, verdicts; ADR 0013). The player's presence travels in
//! the subtree's [`Transfer::player`](crate::physics::Transfer).

use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, RegionId};
use crate::input::{Event, Rejection};
use crate::physics::{self, Arrival, NeighbourBox, Refusal};
use crate::script::ScriptEventKind;
use crate::state::{ElementKind, Player, Role};

use super::{Crossing, Work};

/// How far inside the far faces a pushed-back avatar is put (1/1024 m,
/// as the region pushes bodies back).
const INSIDE: Fx = Fx::from_bits(1 << 22);

/// How far `p` is outside `[0, size)`, along the axis where it is
/// farthest (Chebyshev distance, as the region measures bodies); zero
/// inside.
fn outside_by(size: Vec3, p: Vec3) -> Fx {
    let axis = |v: Fx, hi: Fx| {
        if v < Fx::ZERO {
            Fx::ZERO.saturating_sub(v)
        } else if v > hi {
            v.saturating_sub(hi)
        } else {
            Fx::ZERO
        }
    };
    axis(p.x, size.x)
        .max(axis(p.y, size.y))
        .max(axis(p.z, size.z))
}

/// `p` clamped into `[0, size)`, [`INSIDE`] from the far faces.
fn clamp_inside(size: Vec3, p: Vec3) -> Vec3 {
    let c = |v: Fx, hi: Fx| {
        let hi = hi.saturating_sub(INSIDE);
        v.max(Fx::ZERO).min(hi)
    };
    Vec3::new(c(p.x, size.x), c(p.y, size.y), c(p.z, size.z))
}

impl Work<'_> {
    /// The neighbour whose box holds `p` (region coordinates), if any.
    fn neighbour_at(&self, p: Vec3) -> Option<&NeighbourBox> {
        self.neighbours.iter().find(|n| n.contains(p))
    }

    /// Puts `avatar` (and its subtree, by the same offset) at `to`: the
    /// one rule every cause of an avatar's motion goes through (a `Move`
    /// today; walking when it comes).
    ///
    /// - Inside the box: moved.
    /// - Outside it, inside a neighbour's box: moved (it may stand there,
    ///   as a body may); if more than the hysteresis past the box, the
    ///   tick reports a [`Crossing`] to that neighbour and the region
    ///   offers the avatar's subtree to it.
    /// - Anywhere else: refused, out of bounds.
    ///
    /// While an avatar's crossing is under way (offered, switch due), it
    /// moves only where it still crosses into the same neighbour; other
    /// moves are refused with [`Rejection::Crossing`]. Every element of
    /// the subtree must end inside the box or a neighbour's.
    pub(super) fn place_avatar(&mut self, avatar: ElementId, to: Vec3) -> Result<(), Rejection> {
        let size = self.state.settings.size;
        let owner = self.element(avatar)?.owner;
        let depth = outside_by(size, to);
        let host = self.neighbour_at(to).map(|n| n.region);
        let deep = host.filter(|_| depth > self.hysteresis);
        let under_way = self
            .crossing
            .iter()
            .find(|(id, _)| *id == avatar)
            .map(|(_, r)| *r);
        match under_way {
            Some(r) if deep != Some(r) => return Err(Rejection::Crossing(r)),
            _ => {}
        }
        if depth > Fx::ZERO && host.is_none() {
            return Err(Rejection::OutOfBounds(format!(
                "position {to} of {avatar} would be outside the region and its neighbours"
            )));
        }
        let moved = self.plan_move(avatar, to, true)?;
        self.apply_moves(moved);
        if let (Some(to), Some(player), None) = (deep, owner, under_way)
            && !self.report.crossings.iter().any(|c| c.avatar == avatar)
        {
            self.report.crossings.push(Crossing { avatar, player, to });
        }
        Ok(())
    }

    /// The new positions of `element`'s subtree moved to `to` by the same
    /// offset, each inside the box (or, if `wide`, inside a neighbour's
    /// box), or why not.
    pub(super) fn plan_move(
        &self,
        element: ElementId,
        to: Vec3,
        wide: bool,
    ) -> Result<Vec<(ElementId, Vec3)>, Rejection> {
        let from = self.element(element)?.pos;
        let ids = self.state.subtree(element);
        let mut moved = Vec::with_capacity(ids.len());
        for id in &ids {
            let pos = self.element(*id)?.pos;
            let new = pos.saturating_sub(from).saturating_add(to);
            let inside = self.state.in_bounds(new) || (wide && self.neighbour_at(new).is_some());
            if !inside {
                return Err(Rejection::OutOfBounds(format!(
                    "position {new} of {id} would be outside the region"
                )));
            }
            moved.push((*id, new));
        }
        Ok(moved)
    }

    /// Sets the positions planned by [`Work::plan_move`] (bodies follow).
    pub(super) fn apply_moves(&mut self, moved: Vec<(ElementId, Vec3)>) {
        for (id, pos) in moved {
            self.state.elements.update(&id, |e| {
                e.pos = pos;
            });
            if self.state.bodies.contains_key(&id) {
                self.report
                    .physics
                    .push(physics::Command::SetPosition { id, pos });
            }
        }
    }

    /// The avatar `root` left for `to` (its subtree is gone already): its
    /// player goes offline here, remembering where they went.
    pub(super) fn depart_player(
        &mut self,
        root: ElementId,
        player: Option<crate::PlayerId>,
        to: RegionId,
    ) {
        let Some(who) = player else {
            return;
        };
        if self
            .state
            .players
            .get(&who)
            .is_none_or(|p| p.avatar != Some(root))
        {
            return;
        }
        self.state.players.update(&who, |p| {
            p.online = false;
            p.avatar = None;
            p.moved_to = Some(to);
        });
        let from = self.state.region;
        self.report.events.push(Event::Crossed {
            player: who,
            from,
            to,
        });
        self.broadcast(ScriptEventKind::Crossed { player: who, to });
    }

    /// The avatar `root` arrived (its subtree is attached): its player is
    /// online here with it. From a neighbour: a login here (first join
    /// kept per region, for the temp-admin rule). From this region (the
    /// crossing failed and the subtree came back): online again as before.
    pub(super) fn arrive_player(&mut self, root: ElementId, a: &Arrival) {
        let here = self.state.region;
        let now = self.state.time_ms;
        let current = self.state.players.get(&a.player).cloned();
        if current
            .as_ref()
            .is_some_and(|p| p.online && p.avatar != Some(root))
        {
            // Joined here again with another avatar meanwhile: the one
            // that came back stays an object of theirs.
            return;
        }
        let mut p = current.unwrap_or(Player::unseen(a.player, Role::Member));
        if a.from != here {
            p.name = a.name.clone();
            p.first_join_ms.get_or_insert(now);
            p.last_login_ms = Some(now);
            if p.role == Role::Admin {
                p.last_admin_login_ms = Some(now);
            }
            self.report.events.push(Event::Crossed {
                player: a.player,
                from: a.from,
                to: here,
            });
        }
        p.online = true;
        p.avatar = Some(root);
        p.moved_to = None;
        p.last_seq = p.last_seq.max(a.last_seq);
        self.state.players.insert(a.player, p);
        self.broadcast(ScriptEventKind::Entered { player: a.player });
    }

    /// The crossing of the avatar `root` into `to` failed: it is put back
    /// inside the box (its subtree by the same offset, each element
    /// clamped inside) and its player told why.
    pub(super) fn crossing_refused(&mut self, root: ElementId, to: RegionId, reason: Refusal) {
        let Some(e) = self.state.elements.get(&root) else {
            return;
        };
        if e.kind != ElementKind::Avatar {
            return;
        }
        let owner = e.owner;
        let from = e.pos;
        let size = self.state.settings.size;
        let back = clamp_inside(size, from);
        let moved: Vec<(ElementId, Vec3)> = self
            .state
            .subtree(root)
            .into_iter()
            .filter_map(|id| {
                let pos = self.state.elements.get(&id)?.pos;
                let new = pos.saturating_sub(from).saturating_add(back);
                Some((id, clamp_inside(size, new)))
            })
            .collect();
        self.apply_moves(moved);
        if let Some(player) = owner {
            self.report
                .events
                .push(Event::CrossRefused { player, to, reason });
        }
    }
}

/// Whether the region may admit `who` now (as a join would): not banned,
/// not online already, room for one more. For the region deciding on an
/// avatar offered to it.
pub fn admits(state: &crate::state::State, who: crate::PlayerId) -> Result<(), Refusal> {
    if state.banned.contains(&who) {
        return Err(Refusal::Banned);
    }
    if state.players.get(&who).is_some_and(|p| p.online) {
        return Err(Refusal::AlreadyThere);
    }
    let max = state.settings.players_online_max;
    if state.online().count() as u64 >= u64::from(max) {
        return Err(Refusal::Full(max));
    }
    Ok(())
}
