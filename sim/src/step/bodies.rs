//! Step 5, physics inputs: bodies spawned, pushed and given a velocity
//! (commands for this tick's physics step).

use crate::fx::Vec3;
use crate::id::{ElementId, PlayerId};
use crate::input::Rejection;
use crate::physics::{self, Body, BodyKind};

use super::Work;

impl Work<'_> {
    /// `Some(owner)` if `id` is a body handed to another region recently
    /// (and not back here).
    pub(super) fn forwarded_owner(&self, id: ElementId) -> Option<Option<PlayerId>> {
        if self.state.elements.contains_key(&id) {
            return None;
        }
        self.forwarded
            .binary_search_by_key(&id, |(e, _)| *e)
            .ok()
            .map(|i| self.forwarded[i].1)
    }

    pub(super) fn body(&self, id: ElementId) -> Result<&Body, Rejection> {
        self.element(id)?;
        self.state
            .bodies
            .get(&id)
            .ok_or_else(|| Rejection::Invalid(format!("element {id} is not a body")))
    }

    pub(super) fn spawn_body(
        &mut self,
        who: PlayerId,
        parent: Option<ElementId>,
        name: &str,
        pos: Vec3,
        spec: crate::physics::BodySpec,
        vel: Vec3,
    ) -> Result<(), Rejection> {
        if !spec.valid() {
            return Err(Rejection::OutOfBounds(
                "body shape, material or seat offset out of range".into(),
            ));
        }
        if let BodyKind::Seated { .. } = spec.kind {
            let vehicle = parent
                .ok_or_else(|| Rejection::Invalid("a seated body needs a parent body".into()))?;
            self.body(vehicle)?;
        }
        let id = self.create(who, parent, name, pos)?;
        let vel = match spec.kind {
            BodyKind::Dynamic => vel,
            _ => Vec3::ZERO,
        };
        self.state.bodies.insert(
            id,
            Body {
                spec,
                vel,
                resting: false,
            },
        );
        let vehicle = match spec.kind {
            BodyKind::Seated { .. } => parent,
            _ => None,
        };
        self.report.physics.push(physics::Command::Spawn {
            id,
            spec,
            pos,
            vel,
            vehicle,
        });
        Ok(())
    }
}
