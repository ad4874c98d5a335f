//! Physics bodies as the sim state holds them: shape, material, kind and
//! velocity. Below the state and the physics messages, which both use
//! them.

use serde::{Deserialize, Serialize};

use crate::fx::{Fx, Vec3};

/// A collision shape.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Shape {
    /// A sphere.
    Ball {
        /// Radius, metres, positive.
        radius: Fx,
    },
    /// A box.
    Cuboid {
        /// Half extents, metres, each positive.
        half: Vec3,
    },
}

impl Shape {
    /// Radius of the smallest sphere around the shape's centre (upper
    /// bound), for margins.
    pub fn bounding_radius(&self) -> Fx {
        match self {
            Shape::Ball { radius } => *radius,
            Shape::Cuboid { half } => half.x.saturating_add(half.y).saturating_add(half.z),
        }
    }

    fn valid(&self) -> bool {
        let ok = |v: Fx| v > Fx::ZERO && v <= Fx::from_int(1000);
        match self {
            Shape::Ball { radius } => ok(*radius),
            Shape::Cuboid { half } => ok(half.x) && ok(half.y) && ok(half.z),
        }
    }
}

/// Surface and mass properties.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Material {
    /// Mass per cubic metre, positive.
    pub density: Fx,
    /// Friction coefficient, `0..=10`.
    pub friction: Fx,
    /// Restitution (bounciness), `0..=1`.
    pub restitution: Fx,
}

impl Default for Material {
    fn default() -> Material {
        Material {
            density: Fx::ONE,
            friction: Fx::from_milli(500),
            restitution: Fx::from_milli(500),
        }
    }
}

impl Material {
    fn valid(&self) -> bool {
        self.density > Fx::ZERO
            && self.density <= Fx::from_int(100_000)
            && self.friction >= Fx::ZERO
            && self.friction <= Fx::from_int(10)
            && self.restitution >= Fx::ZERO
            && self.restitution <= Fx::ONE
    }
}

/// How a body moves.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum BodyKind {
    /// Moved by forces and contacts.
    Dynamic,
    /// Moved only by kinematic targets; pushes dynamic bodies.
    Kinematic,
    /// Never moves (ground, walls).
    Fixed,
    /// Rides its parent element's body at a fixed offset (a seated avatar
    /// in a vehicle). It has a sensor collider and no dynamics of its own,
    /// and it crosses borders with its vehicle, as one group.
    Seated {
        /// Offset from the vehicle's centre, metres.
        offset: Vec3,
    },
}

/// What a body is made of.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BodySpec {
    /// How it moves.
    pub kind: BodyKind,
    /// Its collider.
    pub shape: Shape,
    /// Its material.
    pub material: Material,
}

impl BodySpec {
    /// Whether every field is in range.
    pub fn valid(&self) -> bool {
        let offset_ok = match self.kind {
            BodyKind::Seated { offset } => offset.length() <= Fx::from_int(100),
            _ => true,
        };
        offset_ok && self.shape.valid() && self.material.valid()
    }
}

/// What the main sim keeps of a physical element (its position is the
/// element's `pos`). Written only from physics events and body inputs.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Body {
    /// Shape, material and kind.
    pub spec: BodySpec,
    /// Linear velocity at the end of the last physics step, m/s.
    pub vel: Vec3,
    /// Whether the body is asleep (came to rest).
    pub resting: bool,
}

impl crate::table::EntryHash for Body {}
