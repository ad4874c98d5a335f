//! The body of the `physics_border` fuzz target: border envelopes from
//! untrusted bytes.
//!
//! Anything that decodes must validate, re-encode to the same bytes, and be
//! applicable to a region without panicking; anything else must be refused
//! with an error. The cargo-fuzz target and a proptest both call
//! [`border_envelope`].

use metatopia_sim::input::Batch;
use metatopia_sim::physics::{decode_envelope, encode_envelope};
use metatopia_sim::state::Settings;
use metatopia_sim::{Fx, NoScripts, RegionId, Vec3};

use crate::region::{Aabb, Region, RegionConfig};

/// Decodes `bytes` as a border envelope; if it decodes, checks the round
/// trip and feeds it to a fresh region as if region 2 had sent it at tick 0.
pub fn border_envelope(bytes: &[u8]) {
    let Ok(env) = decode_envelope(bytes) else {
        return;
    };
    assert_eq!(
        encode_envelope(&env),
        bytes,
        "decoded envelope re-encodes differently"
    );
    let b = |x: i32| Aabb {
        min: Vec3::new(Fx::from_int(x), Fx::ZERO, Fx::ZERO),
        max: Vec3::new(Fx::from_int(x + 64), Fx::from_int(64), Fx::from_int(64)),
    };
    let mut cfg = RegionConfig::new(RegionId(1), b(0));
    cfg.neighbours = vec![(RegionId(2), b(64))];
    let mut region = Region::new(cfg, Settings::default(), &[]);
    let first = Batch::default();
    let _ = region.tick(&first, &NoScripts, &[]);
    let second = Batch {
        tick: 1,
        time_ms: 50,
        inputs: Vec::new(),
    };
    let _ = region.tick(&second, &NoScripts, &[env]);
}
