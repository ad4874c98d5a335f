//! Fixed-point numbers: [`Fx`] (signed 32.32) and [`Vec3`].
//!
//! Every value in world state is an integer or an `Fx`. Arithmetic is
//! explicit about overflow (`checked_*` or `saturating_*`), so debug and
//! release builds compute the same bits. The transcendental functions are
//! our own integer algorithms (no libm), so every platform agrees:
//!
//! | function | method | error bound (measured by the tests) |
//! |---|---|---|
//! | [`Fx::sqrt`] | integer square root of the 128-bit value, rounded down | < 1 ulp (2^-32) |
//! | [`Fx::sin`], [`Fx::cos`] | reduction modulo 2π in Q62, Taylor series in Q62 | ≤ 2 ulp for \|x\| ≤ 2^16; reduction adds \|x\| · 2^-61 |
//! | [`Fx::atan2`] | octant reduction, two argument halvings, Taylor series in Q62 | ≤ 2 ulp |
//!
//! Parsing ([`str::parse`]) reads decimal text exactly (never through a
//! float) and rounds to the nearest representable value, ties to even.

use std::fmt;
use std::str::FromStr;

use fixed::types::I32F32;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fractional bits of the Q62 working format used inside the algorithms.
const Q: u32 = 62;
/// π in Q62: round(π · 2^62).
const PI_Q62: i128 = 14_488_038_916_154_245_685;
/// π/2 in Q62.
const FRAC_PI_2_Q62: i128 = PI_Q62 / 2;
/// 2π in Q62.
const TAU_Q62: i128 = PI_Q62 * 2;
/// 1.0 in Q62.
const ONE_Q62: i128 = 1 << Q;

/// A signed fixed-point number with 32 integer and 32 fractional bits.
///
/// It serialises as its raw `i64` bits in binary formats (postcard) and as
/// exact decimal text in human-readable ones (JSON).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fx(I32F32);

/// Why a decimal string is not an [`Fx`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fixed-point number {text:?}: {reason}")]
pub struct ParseFxError {
    /// The text that was given (cut to 40 characters).
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Fx {
    /// Zero.
    pub const ZERO: Fx = Fx(I32F32::ZERO);
    /// One.
    pub const ONE: Fx = Fx(I32F32::ONE);
    /// The largest value, just under 2^31.
    pub const MAX: Fx = Fx(I32F32::MAX);
    /// The smallest value, -2^31.
    pub const MIN: Fx = Fx(I32F32::MIN);
    /// The smallest positive step, 2^-32.
    pub const DELTA: Fx = Fx(I32F32::DELTA);
    /// π rounded to 32 fractional bits.
    pub const PI: Fx = Fx(I32F32::PI);

    /// The value with these raw bits (value = bits / 2^32).
    pub const fn from_bits(bits: i64) -> Fx {
        Fx(I32F32::from_bits(bits))
    }

    /// The raw bits (value · 2^32).
    pub const fn to_bits(self) -> i64 {
        self.0.to_bits()
    }

    /// An integer, exactly.
    pub const fn from_int(n: i32) -> Fx {
        Fx::from_bits((n as i64) << 32)
    }

    /// `n / 1000`, rounded toward negative infinity; saturates outside the range.
    pub fn from_milli(n: i64) -> Fx {
        let bits = ((n as i128) << 32).div_euclid(1000);
        Fx::from_bits(bits.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }

    /// The value in thousandths, rounded toward negative infinity.
    pub fn to_milli(self) -> i64 {
        ((self.to_bits() as i128 * 1000) >> 32) as i64
    }

    /// The integer part, rounded toward negative infinity.
    pub const fn floor_int(self) -> i32 {
        (self.to_bits() >> 32) as i32
    }

    /// `self + rhs`, or `None` on overflow.
    pub fn checked_add(self, rhs: Fx) -> Option<Fx> {
        self.0.checked_add(rhs.0).map(Fx)
    }

    /// `self - rhs`, or `None` on overflow.
    pub fn checked_sub(self, rhs: Fx) -> Option<Fx> {
        self.0.checked_sub(rhs.0).map(Fx)
    }

    /// `self * rhs` rounded down, or `None` on overflow.
    pub fn checked_mul(self, rhs: Fx) -> Option<Fx> {
        self.0.checked_mul(rhs.0).map(Fx)
    }

    /// `self / rhs` rounded toward zero, or `None` on overflow or division by zero.
    pub fn checked_div(self, rhs: Fx) -> Option<Fx> {
        self.0.checked_div(rhs.0).map(Fx)
    }

    /// `self + rhs`, clamped to the range.
    pub fn saturating_add(self, rhs: Fx) -> Fx {
        Fx(self.0.saturating_add(rhs.0))
    }

    /// `self - rhs`, clamped to the range.
    pub fn saturating_sub(self, rhs: Fx) -> Fx {
        Fx(self.0.saturating_sub(rhs.0))
    }

    /// `self * rhs`, clamped to the range.
    pub fn saturating_mul(self, rhs: Fx) -> Fx {
        Fx(self.0.saturating_mul(rhs.0))
    }

    /// `self / rhs`, clamped to the range; `None` when `rhs` is zero.
    pub fn saturating_div(self, rhs: Fx) -> Option<Fx> {
        if rhs == Fx::ZERO {
            None
        } else {
            Some(Fx(self.0.saturating_div(rhs.0)))
        }
    }

    /// `-self`, clamped (the negation of [`Fx::MIN`] is [`Fx::MAX`]).
    pub fn saturating_neg(self) -> Fx {
        Fx(self.0.saturating_neg())
    }

    /// The absolute value, clamped.
    pub fn saturating_abs(self) -> Fx {
        Fx(self.0.saturating_abs())
    }

    /// The square root rounded down; `None` for negative numbers.
    pub fn sqrt(self) -> Option<Fx> {
        let bits = self.to_bits();
        if bits < 0 {
            return None;
        }
        // sqrt(bits / 2^32) · 2^32 = sqrt(bits · 2^32).
        let root = isqrt_u128((bits as u128) << 32);
        Some(Fx::from_bits(root as i64))
    }

    /// The sine of `self` radians.
    pub fn sin(self) -> Fx {
        from_q62(sin_q62(reduce_angle_q62(self)))
    }

    /// The cosine of `self` radians.
    pub fn cos(self) -> Fx {
        from_q62(sin_q62(add_angle_q62(
            reduce_angle_q62(self),
            FRAC_PI_2_Q62,
        )))
    }

    /// The angle of the point `(x, y)` from the x axis, in radians in
    /// `(-π, π]`; `atan2(0, 0)` is 0.
    pub fn atan2(y: Fx, x: Fx) -> Fx {
        from_q62(atan2_q62(y.to_bits() as i128, x.to_bits() as i128))
    }
}

/// Integer square root of a u128, rounded down.
fn isqrt_u128(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    // Newton's iteration from an overestimate converges monotonically.
    let bits = 128 - n.leading_zeros();
    let mut x: u128 = 1 << bits.div_ceil(2);
    loop {
        let y = (x + n / x) >> 1;
        if y >= x {
            return x;
        }
        x = y;
    }
}

/// Q62 → Fx, rounded to nearest.
fn from_q62(v: i128) -> Fx {
    let shift = Q - 32;
    let rounded = (v + (1 << (shift - 1))) >> shift;
    Fx::from_bits(rounded.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

/// Fx → an angle in Q62 reduced to `[-π, π)`.
fn reduce_angle_q62(x: Fx) -> i128 {
    // x · 2^30 is x in Q62; |x| < 2^31 so this fits in i128 easily.
    let v = (x.to_bits() as i128) << (Q - 32);
    (v + PI_Q62).rem_euclid(TAU_Q62) - PI_Q62
}

/// `a + b` for reduced angles, reduced again to `[-π, π)`.
fn add_angle_q62(a: i128, b: i128) -> i128 {
    (a + b + PI_Q62).rem_euclid(TAU_Q62) - PI_Q62
}

/// `a · b` in Q62, rounded to nearest.
fn mul_q62(a: i128, b: i128) -> i128 {
    // Operands here are at most ~4 in magnitude (2^64 in Q62); the product
    // fits in i128 (2^128 would not, but 4 · 4 · 2^124 = 2^128 is never
    // reached because callers keep |a|, |b| ≤ 2).
    (a * b + (1 << (Q - 1))) >> Q
}

/// sin(x) for x in `[-π, π)` in Q62.
fn sin_q62(x: i128) -> i128 {
    // Fold into [-π/2, π/2]: sin(π - x) = sin(x).
    let x = if x > FRAC_PI_2_Q62 {
        PI_Q62 - x
    } else if x < -FRAC_PI_2_Q62 {
        -PI_Q62 - x
    } else {
        x
    };
    // Taylor series: x - x^3/3! + x^5/5! - ... ; |x| ≤ π/2, 25 terms give
    // a remainder far below 2^-62.
    let x2 = mul_q62(x, x);
    let mut term = x;
    let mut sum = x;
    let mut k: i128 = 1;
    while term != 0 {
        term = -mul_q62(term, x2) / ((k + 1) * (k + 2));
        k += 2;
        sum += term;
    }
    sum.clamp(-ONE_Q62, ONE_Q62)
}

/// atan(t) for t in `[0, 1]` in Q62.
fn atan_unit_q62(t: i128) -> i128 {
    // Two halvings: atan(t) = 2 · atan(t / (1 + sqrt(1 + t²))), which takes
    // t ≤ 1 to t ≤ tan(π/16) < 0.2, where the series converges quickly.
    let mut t = t;
    for _ in 0..2 {
        let s = ONE_Q62 + mul_q62(t, t);
        let root = isqrt_u128((s as u128) << Q) as i128;
        t = (t << Q) / (ONE_Q62 + root);
    }
    let t2 = mul_q62(t, t);
    let mut power = t;
    let mut sum = t;
    let mut k: i128 = 1;
    loop {
        power = -mul_q62(power, t2);
        k += 2;
        let term = power / k;
        if term == 0 {
            break;
        }
        sum += term;
    }
    sum * 4
}

/// atan2(y, x) with y, x as raw 32.32 bits, result in Q62 in `(-π, π]`.
fn atan2_q62(y: i128, x: i128) -> i128 {
    if x == 0 && y == 0 {
        return 0;
    }
    let (ax, ay) = (x.abs(), y.abs());
    // Angle of (ax, ay) in [0, π/2].
    let base = if ay <= ax {
        atan_unit_q62((ay << Q) / ax)
    } else {
        FRAC_PI_2_Q62 - atan_unit_q62((ax << Q) / ay)
    };
    let angle = if x >= 0 { base } else { PI_Q62 - base };
    if y < 0 { -angle } else { angle }
}

impl FromStr for Fx {
    type Err = ParseFxError;

    fn from_str(s: &str) -> Result<Fx, ParseFxError> {
        let trimmed = s.trim();
        I32F32::from_str(trimmed).map(Fx).map_err(|e| ParseFxError {
            text: trimmed.chars().take(40).collect(),
            reason: e.to_string(),
        })
    }
}

impl fmt::Display for Fx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Fx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Fx {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&self.0)
        } else {
            s.serialize_i64(self.to_bits())
        }
    }
}

impl<'de> Deserialize<'de> for Fx {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fx, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            i64::deserialize(d).map(Fx::from_bits)
        }
    }
}

/// A point or direction in region coordinates (metres).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Vec3 {
    /// East.
    pub x: Fx,
    /// North.
    pub y: Fx,
    /// Up.
    pub z: Fx,
}

impl Vec3 {
    /// The origin.
    pub const ZERO: Vec3 = Vec3 {
        x: Fx::ZERO,
        y: Fx::ZERO,
        z: Fx::ZERO,
    };

    /// A vector from its parts.
    pub const fn new(x: Fx, y: Fx, z: Fx) -> Vec3 {
        Vec3 { x, y, z }
    }

    /// A vector of whole numbers.
    pub const fn from_ints(x: i32, y: i32, z: i32) -> Vec3 {
        Vec3::new(Fx::from_int(x), Fx::from_int(y), Fx::from_int(z))
    }

    /// Component-wise sum, clamped.
    pub fn saturating_add(self, o: Vec3) -> Vec3 {
        Vec3::new(
            self.x.saturating_add(o.x),
            self.y.saturating_add(o.y),
            self.z.saturating_add(o.z),
        )
    }

    /// Component-wise difference, clamped.
    pub fn saturating_sub(self, o: Vec3) -> Vec3 {
        Vec3::new(
            self.x.saturating_sub(o.x),
            self.y.saturating_sub(o.y),
            self.z.saturating_sub(o.z),
        )
    }

    /// Scaled by `k`, clamped.
    pub fn saturating_scale(self, k: Fx) -> Vec3 {
        Vec3::new(
            self.x.saturating_mul(k),
            self.y.saturating_mul(k),
            self.z.saturating_mul(k),
        )
    }

    /// The squared length as raw Q64 bits (exact; never overflows).
    pub fn length_squared_q64(self) -> u128 {
        let sq = |v: Fx| {
            let b = v.to_bits().unsigned_abs() as u128;
            b * b
        };
        sq(self.x)
            .saturating_add(sq(self.y))
            .saturating_add(sq(self.z))
    }

    /// The length, rounded down and clamped to [`Fx::MAX`].
    pub fn length(self) -> Fx {
        let root = isqrt_u128(self.length_squared_q64());
        Fx::from_bits(root.min(i64::MAX as u128) as i64)
    }

    /// True when `self` and `o` are at most `radius` apart (exact).
    pub fn within(self, o: Vec3, radius: Fx) -> bool {
        let d = |a: Fx, b: Fx| {
            let diff = (a.to_bits() as i128 - b.to_bits() as i128).unsigned_abs();
            diff * diff
        };
        let dist2 = d(self.x, o.x)
            .saturating_add(d(self.y, o.y))
            .saturating_add(d(self.z, o.z));
        let r = radius.to_bits().max(0) as u128;
        dist2 <= r * r
    }
}

impl fmt::Debug for Vec3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {}, {})", self.x, self.y, self.z)
    }
}

impl fmt::Display for Vec3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.x, self.y, self.z)
    }
}

impl FromStr for Vec3 {
    type Err = ParseFxError;

    /// Parses `x,y,z` (decimal text, exactly).
    fn from_str(s: &str) -> Result<Vec3, ParseFxError> {
        let parts: Vec<&str> = s.split(',').collect();
        if parts.len() != 3 {
            return Err(ParseFxError {
                text: s.chars().take(40).collect(),
                reason: "expected three numbers x,y,z".into(),
            });
        }
        Ok(Vec3::new(
            parts[0].parse()?,
            parts[1].parse()?,
            parts[2].parse()?,
        ))
    }
}
