//! metatopia-physics: the physics sim of a region.
//!
//! Each region runs one rapier3d-f64 world, stepped once per region tick.
//! The main sim talks to it only through messages defined in
//! `metatopia_sim::physics`: commands in, events out, positions and
//! velocities crossing into sim state as fixed point by the rounding rule of
//! [`convert`]. Bodies near a border are mirrored to the neighbour as
//! ghosts; a body whose centre crosses into a neighbour is handed over with
//! the G World Engine procedure (offer, accept or refuse by capacity,
//! numbered influences forwarded, switch at an agreed tick).
//!
//! Determinism: rapier is built with `enhanced-determinism` and without
//! `parallel` or any SIMD feature. Rapier's features cannot be checked with
//! `cfg` from this crate, so the guard is the test
//! `physics_features.rs`, which reads the features cargo resolved for
//! `rapier3d-f64` and `parry3d-f64` in this workspace and fails on
//! `parallel`, `simd-*`, `simd8` or a missing `enhanced-determinism`. This
//! crate's own features that would break determinism are refused here at
//! compile time.
//!
//! Layout:
//! - [`convert`]: the `f64` <-> `Fx` rounding rule.
//! - [`space`]: [`Space`], one region's rapier world: commands in, events out,
//!   digest, snapshots, ghosts.
//! - [`region`]: [`Region`], one region tick: main sim, then physics, then
//!   border messages; the handoff state machine.
//! - [`cluster`]: [`Cluster`], several regions in one process exchanging
//!   border messages as encoded bytes (tests, benches, scenes).
//! - [`scene`]: scene drivers (one player spawning and pushing bodies in
//!   every region) and the named scenes of tests and benches.
//! - [`fuzz`]: the body of the border-message fuzz target.

#[cfg(any(feature = "parallel", feature = "simd"))]
compile_error!(
    "metatopia-physics must not enable parallel or SIMD physics: results would depend on the build"
);

pub mod cluster;
pub mod convert;
pub mod fuzz;
pub mod region;
pub mod scene;
pub mod space;

pub use cluster::Cluster;
pub use region::{Aabb, BorderCounts, Region, RegionConfig, RegionReport};
pub use space::Space;
