//! The rounding rule between rapier's `f64` and sim's [`Fx`] (I32F32).
//!
//! - `f64` to `Fx`: multiply by 2^32 (exact: a power of two), round to the
//!   nearest integer with ties to even, saturate to `i64`, and use that as
//!   the `Fx` bits. NaN becomes zero; ±infinity saturate.
//! - `Fx` to `f64`: `bits as f64 / 2^32`. Exact when `|bits| < 2^53`, i.e.
//!   for values below 2^21 (about two million metres) in magnitude, which
//!   covers every region; larger values round to nearest, ties to even.
//!
//! Both directions are pure IEEE-754 operations (no libm), so they give the
//! same result on every platform.

use metatopia_sim::physics::Motion;
use metatopia_sim::{Fx, Vec3};
use rapier3d_f64::math::{Rotation, Vector};

const SCALE: f64 = 4_294_967_296.0;
const I64_EDGE: f64 = 9_223_372_036_854_775_808.0;
const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
const MAGIC_BITS: i64 = 0x4338_0000_0000_0000; // MAGIC.to_bits()
const FAST_EDGE: f64 = 2_251_799_813_685_248.0; // 2^51

/// `v` as fixed point, by the rule above.
#[inline]
pub fn fx(v: f64) -> Fx {
    let s = v * SCALE;
    if s.abs() < FAST_EDGE {
        // (s + 1.5·2^52) lands in [2^52, 2^53), where the spacing of f64 is
        // 1: the addition itself rounds to the nearest integer, ties to
        // even (IEEE default rounding), and within that binade the bit
        // pattern grows by one per unit, so subtracting MAGIC's bits gives
        // the integer. Same result as `round_ties_even`, which without
        // SSE4.1 is a libm call.
        return Fx::from_bits((s + MAGIC).to_bits() as i64 - MAGIC_BITS);
    }
    if v.is_nan() {
        return Fx::ZERO;
    }
    let r = s.round_ties_even();
    if r >= I64_EDGE {
        Fx::MAX
    } else if r < -I64_EDGE {
        Fx::MIN
    } else {
        Fx::from_bits(r as i64)
    }
}

/// `x` as `f64`, by the rule above.
pub fn f64(x: Fx) -> f64 {
    x.to_bits() as f64 / SCALE
}

/// A rapier vector as fixed point.
#[inline]
pub fn vec3(v: Vector) -> Vec3 {
    Vec3::new(fx(v.x), fx(v.y), fx(v.z))
}

/// A fixed-point vector for rapier.
pub fn vector(v: Vec3) -> Vector {
    Vector::new(f64(v.x), f64(v.y), f64(v.z))
}

/// A quaternion as fixed point `(x, y, z, w)`.
#[inline]
pub fn quat(q: Rotation) -> [Fx; 4] {
    [fx(q.x), fx(q.y), fx(q.z), fx(q.w)]
}

/// A fixed-point quaternion for rapier, renormalised (quantizing moves it
/// off the unit sphere by at most 2^-33 per component). Identity if the
/// input is degenerate.
pub fn rotation(q: [Fx; 4]) -> Rotation {
    let r = Rotation::from_xyzw(f64(q[0]), f64(q[1]), f64(q[2]), f64(q[3]));
    let n = r.length();
    if n.is_finite() && n > 0.5 {
        r / n
    } else {
        Rotation::IDENTITY
    }
}

/// A body's quantized motion.
#[inline]
pub fn motion(pos: Vector, rot: Rotation, vel: Vector, angvel: Vector) -> Motion {
    Motion {
        pos: vec3(pos),
        rot: quat(rot),
        vel: vec3(vel),
        angvel: vec3(angvel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bits_are_magic() {
        assert_eq!(MAGIC.to_bits() as i64, MAGIC_BITS);
    }

    #[test]
    fn rounding_rule_examples() {
        assert_eq!(fx(1.5), Fx::from_bits(3 << 31));
        // Exactly half a quantum rounds to even (zero), 1.5 quanta to 2.
        assert_eq!(fx(0.5 / SCALE), Fx::ZERO);
        assert_eq!(fx(1.5 / SCALE), Fx::from_bits(2));
        assert_eq!(fx(2.5 / SCALE), Fx::from_bits(2));
        assert_eq!(fx(-2.5 / SCALE), Fx::from_bits(-2));
        assert_eq!(fx(f64::NAN), Fx::ZERO);
        assert_eq!(fx(f64::INFINITY), Fx::MAX);
        assert_eq!(fx(-1e300), Fx::MIN);
        assert_eq!(fx(-0.0), Fx::ZERO);
    }

    proptest::proptest! {
        #[test]
        fn fx_round_trips_exactly(bits in -(1i64 << 52)..(1i64 << 52)) {
            let x = Fx::from_bits(bits);
            proptest::prop_assert_eq!(fx(f64(x)), x);
        }

        #[test]
        fn fast_rounding_matches_round_ties_even(v in -1.0e6f64..1.0e6, k in -3i64..3) {
            // Exact halves too: (n + 0.5) / 2^32.
            let half = (v.trunc() * SCALE + 0.5 + k as f64) / SCALE;
            for x in [v, half] {
                let want = (x * SCALE).round_ties_even() as i64;
                proptest::prop_assert_eq!(fx(x).to_bits(), want);
            }
        }

        #[test]
        fn quantization_error_is_half_a_quantum(v in -1.0e6f64..1.0e6) {
            let back = f64(fx(v));
            proptest::prop_assert!((back - v).abs() <= 0.5 / SCALE);
        }
    }
}
