//! Fixed-point laws, bounds and the error of the deterministic maths.
//! f64 appears here only as the reference the integer algorithms are
//! measured against; it never reaches the sim.
#![allow(clippy::disallowed_types, clippy::float_arithmetic)]
#![allow(clippy::unwrap_used)]

use metatopia_sim::{Fx, Vec3};
use proptest::prelude::*;

fn to_f64(x: Fx) -> f64 {
    x.to_bits() as f64 / 4_294_967_296.0
}

fn ulps(a: Fx, reference: f64) -> f64 {
    ((to_f64(a) - reference) * 4_294_967_296.0).abs()
}

fn fx() -> impl Strategy<Value = Fx> {
    any::<i64>().prop_map(Fx::from_bits)
}

fn small() -> impl Strategy<Value = Fx> {
    (-(1i64 << 48)..(1i64 << 48)).prop_map(Fx::from_bits)
}

proptest! {
    #[test]
    fn add_commutes_and_sub_inverts(a in fx(), b in fx()) {
        prop_assert_eq!(a.checked_add(b), b.checked_add(a));
        if let Some(s) = a.checked_add(b) {
            prop_assert_eq!(s.checked_sub(b), Some(a));
        }
    }

    #[test]
    fn saturating_matches_checked_or_clamps(a in fx(), b in fx()) {
        let s = a.saturating_add(b);
        match a.checked_add(b) {
            Some(c) => prop_assert_eq!(s, c),
            None => prop_assert!(s == Fx::MAX || s == Fx::MIN),
        }
        let m = a.saturating_mul(b);
        match a.checked_mul(b) {
            Some(c) => prop_assert_eq!(m, c),
            None => prop_assert!(m == Fx::MAX || m == Fx::MIN),
        }
    }

    #[test]
    fn mul_commutes_and_one_is_identity(a in fx(), b in fx()) {
        prop_assert_eq!(a.checked_mul(b), b.checked_mul(a));
        prop_assert_eq!(a.checked_mul(Fx::ONE), Some(a));
    }

    #[test]
    fn div_then_mul_is_close(a in small(), b in small()) {
        prop_assume!(b.saturating_abs() > Fx::ONE);
        let q = a.checked_div(b).unwrap();
        let back = q.checked_mul(b).unwrap();
        // |q·b - a| ≤ |b| ulp (two roundings of at most one ulp each).
        let err = (back.to_bits() as i128 - a.to_bits() as i128).abs();
        prop_assert!(err <= (b.to_bits() as i128).abs() >> 31, "err {}", err);
    }

    #[test]
    fn decimal_text_round_trips(a in fx()) {
        let text = a.to_string();
        prop_assert_eq!(text.parse::<Fx>().unwrap(), a);
    }

    #[test]
    fn sqrt_is_within_one_ulp(a in any::<i64>().prop_map(|b| Fx::from_bits(b.abs()))) {
        let r = a.sqrt().unwrap();
        prop_assert!(ulps(r, to_f64(a).sqrt()) < 1.0 + to_f64(a).sqrt() * 1e-6);
        // Rounded down: r² ≤ a < (r+δ)².
        let r2 = (r.to_bits() as u128) * (r.to_bits() as u128);
        prop_assert!(r2 <= (a.to_bits() as u128) << 32);
    }

    #[test]
    fn sin_cos_within_two_ulp(a in (-(1i64 << 47)..(1i64 << 47)).prop_map(Fx::from_bits)) {
        let x = to_f64(a);
        prop_assert!(ulps(a.sin(), x.sin()) <= 2.0, "sin {} -> {}", x, a.sin());
        prop_assert!(ulps(a.cos(), x.cos()) <= 2.0, "cos {} -> {}", x, a.cos());
    }

    #[test]
    fn atan2_within_two_ulp(y in small(), x in small()) {
        prop_assume!(x != Fx::ZERO || y != Fx::ZERO);
        let r = Fx::atan2(y, x);
        prop_assert!(ulps(r, to_f64(y).atan2(to_f64(x))) <= 2.0, "atan2({}, {}) = {}", y, x, r);
    }

    #[test]
    fn vec_within_is_exact(ax in small(), ay in small(), bx in small(), r in small()) {
        let a = Vec3::new(ax, ay, Fx::ZERO);
        let b = Vec3::new(bx, ay, Fx::ZERO);
        let d = (ax.to_bits() as i128 - bx.to_bits() as i128).abs();
        prop_assert_eq!(a.within(b, r), r.to_bits() >= 0 && d <= r.to_bits() as i128);
    }
}

#[test]
fn parsing_is_exact_and_errors_are_clear() {
    assert_eq!("1.5".parse::<Fx>().unwrap(), Fx::from_bits(3 << 31));
    assert_eq!("-0.25".parse::<Fx>().unwrap(), Fx::from_bits(-(1 << 30)));
    // 0.1 is not a binary fraction: it rounds to the nearest 2^-32.
    assert_eq!("0.1".parse::<Fx>().unwrap().to_bits(), 429_496_730);
    let err = "1.2.3".parse::<Fx>().unwrap_err().to_string();
    assert!(err.contains("1.2.3"), "{err}");
    assert!("99999999999".parse::<Fx>().is_err());
    assert_eq!("1,2,3".parse::<Vec3>().unwrap(), Vec3::from_ints(1, 2, 3));
    assert!(
        "1,2"
            .parse::<Vec3>()
            .unwrap_err()
            .to_string()
            .contains("x,y,z")
    );
}

#[test]
fn trig_corners() {
    assert_eq!(Fx::ZERO.sin(), Fx::ZERO);
    assert_eq!(Fx::ZERO.cos(), Fx::ONE);
    assert_eq!(Fx::atan2(Fx::ZERO, Fx::ZERO), Fx::ZERO);
    assert!(ulps(Fx::atan2(Fx::ZERO, Fx::from_int(-1)), std::f64::consts::PI) <= 2.0);
    assert!(ulps(Fx::atan2(Fx::ONE, Fx::ZERO), std::f64::consts::FRAC_PI_2) <= 2.0);
    assert!(ulps(Fx::MAX.sin(), to_f64(Fx::MAX).sin()) <= 4.0);
    assert_eq!(Fx::from_int(-1).sqrt(), None);
    assert_eq!(Vec3::from_ints(3, 4, 0).length(), Fx::from_int(5));
}
