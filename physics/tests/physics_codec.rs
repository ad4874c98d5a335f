//! Border envelopes from untrusted bytes: malformed ones get a clear error
//! and change nothing; valid ones round-trip. Also drives the fuzz body
//! (`metatopia_physics::fuzz::border_envelope`) with random and mutated
//! bytes.

#![allow(clippy::unwrap_used)]

use metatopia_physics::region::{Aabb, Region, RegionConfig};
use metatopia_physics::scene;
use metatopia_sim::input::Batch;
use metatopia_sim::physics::{
    BorderError, BorderMessage, Envelope, Ghost, Motion, decode_envelope, encode_envelope,
};
use metatopia_sim::state::Settings;
use metatopia_sim::{ElementId, Fx, NoScripts, RegionId, Vec3};
use proptest::prelude::*;

fn ghost(id: u64, radius_milli: i64) -> Ghost {
    let mut spec = scene::ball(500);
    spec.shape = metatopia_sim::physics::Shape::Ball {
        radius: Fx::from_milli(radius_milli),
    };
    Ghost {
        id: ElementId::new(2, id),
        spec,
        motion: Motion {
            pos: Vec3::from_ints(63, 10, 10),
            rot: [Fx::ZERO, Fx::ZERO, Fx::ZERO, Fx::ONE],
            vel: Vec3::ZERO,
            angvel: Vec3::ZERO,
        },
    }
}

fn env(tick: u64, msg: BorderMessage) -> Envelope {
    Envelope {
        from: RegionId(2),
        to: RegionId(1),
        tick,
        msg,
    }
}

fn region() -> Region {
    let b = |x: i32| Aabb {
        min: Vec3::new(Fx::from_int(x), Fx::ZERO, Fx::ZERO),
        max: Vec3::new(Fx::from_int(x + 64), Fx::from_int(64), Fx::from_int(64)),
    };
    let mut cfg = RegionConfig::new(RegionId(1), b(0));
    cfg.neighbours = vec![(RegionId(2), b(64))];
    Region::new(cfg, Settings::default(), &[])
}

fn batch(tick: u64) -> Batch {
    Batch {
        tick,
        time_ms: tick * 50,
        inputs: Vec::new(),
    }
}

#[test]
fn valid_envelopes_round_trip_and_apply() {
    let e = env(
        0,
        BorderMessage::Ghosts {
            bodies: vec![ghost(1, 500), ghost(2, 500)],
        },
    );
    let bytes = encode_envelope(&e);
    assert_eq!(decode_envelope(&bytes).unwrap(), e);
    let mut r = region();
    r.tick(&batch(0), &NoScripts, &[]).unwrap();
    let rep = r.tick(&batch(1), &NoScripts, &[e]).unwrap();
    assert!(rep.refused.is_empty());
    assert_eq!(r.space().ghost_of(ElementId::new(2, 1)), Some(RegionId(2)));
    assert_eq!(r.space().owned_count(), 0);
}

/// Long on purpose: one case per malformed input, each with the error it must give.
#[test]
fn malformed_bytes_get_clear_errors() {
    let good = encode_envelope(&env(
        0,
        BorderMessage::Ghosts {
            bodies: vec![ghost(1, 500)],
        },
    ));
    let err = |b: &[u8]| decode_envelope(b).unwrap_err().to_string();
    assert!(err(&[]).contains("truncated"), "{}", err(&[]));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert!(err(&bad).contains("bad magic"));
    assert!(err(&good[..good.len() - 3]).contains("malformed"));
    let mut long = good.clone();
    long.push(0);
    assert!(matches!(
        decode_envelope(&long),
        Err(BorderError::Decode(_))
    ));
    // Invalid content: a ghost with a zero radius, ghosts out of order, an
    // offer of no bodies, a message to oneself.
    let zero = encode_envelope(&env(
        0,
        BorderMessage::Ghosts {
            bodies: vec![ghost(1, 0)],
        },
    ));
    assert!(err(&zero).contains("invalid body"), "{}", err(&zero));
    let unsorted = encode_envelope(&env(
        0,
        BorderMessage::Ghosts {
            bodies: vec![ghost(2, 500), ghost(1, 500)],
        },
    ));
    assert!(err(&unsorted).contains("not sorted"));
    let empty_offer = encode_envelope(&env(
        0,
        BorderMessage::Offer {
            root: ElementId::new(2, 1),
            bodies: 0,
            switch_tick: 2,
            player: None,
        },
    ));
    assert!(err(&empty_offer).contains("offer of 0 bodies"));
    let mut selfish = env(
        0,
        BorderMessage::Accept {
            root: ElementId::new(2, 1),
        },
    );
    selfish.to = RegionId(2);
    assert!(err(&encode_envelope(&selfish)).contains("itself"));
    // Forwarded influences: numbered 1.. ascending, influences only.
    let push = |n: u64| {
        (
            n,
            metatopia_sim::physics::Command::Impulse {
                id: ElementId::new(2, 1),
                impulse: metatopia_sim::Vec3::ZERO,
            },
        )
    };
    let influences =
        |list| encode_envelope(&env(0, BorderMessage::Influences { influences: list }));
    assert!(decode_envelope(&influences(vec![push(1), push(7)])).is_ok());
    assert!(err(&influences(vec![])).contains("0 forwarded"));
    assert!(err(&influences(vec![push(0)])).contains("numbered"));
    assert!(err(&influences(vec![push(3), push(3)])).contains("numbered"));
    let remove = (
        1,
        metatopia_sim::physics::Command::Remove {
            id: ElementId::new(2, 1),
        },
    );
    assert!(err(&influences(vec![remove])).contains("not an influence"));
}

#[test]
fn misrouted_envelopes_are_refused_and_change_nothing() {
    let cases = vec![
        // Wrong recipient.
        Envelope {
            to: RegionId(3),
            ..env(
                0,
                BorderMessage::Ghosts {
                    bodies: vec![ghost(1, 500)],
                },
            )
        },
        // Not a neighbour.
        Envelope {
            from: RegionId(9),
            ..env(
                0,
                BorderMessage::Ghosts {
                    bodies: vec![ghost(1, 500)],
                },
            )
        },
        // Sent for another tick.
        env(
            5,
            BorderMessage::Ghosts {
                bodies: vec![ghost(1, 500)],
            },
        ),
        // Invalid content that skipped the decoder.
        env(
            0,
            BorderMessage::Ghosts {
                bodies: vec![ghost(1, -5)],
            },
        ),
    ];
    let mut clean = region();
    clean.tick(&batch(0), &NoScripts, &[]).unwrap();
    let want = clean.tick(&batch(1), &NoScripts, &[]).unwrap().hash;
    for case in cases {
        let mut r = region();
        r.tick(&batch(0), &NoScripts, &[]).unwrap();
        let rep = r
            .tick(&batch(1), &NoScripts, std::slice::from_ref(&case))
            .unwrap();
        assert_eq!(rep.refused.len(), 1, "{case:?}");
        assert_eq!(
            rep.hash, want,
            "refused envelope changed the region: {case:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fuzz_body_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        metatopia_physics::fuzz::border_envelope(&bytes);
        let mut framed = b"MTPB\x01\x00".to_vec();
        framed.extend_from_slice(&bytes);
        metatopia_physics::fuzz::border_envelope(&framed);
    }

    #[test]
    fn fuzz_body_never_panics_on_mutated_envelopes(at in 0usize..200, byte in any::<u8>(), kind in 0u8..3) {
        let msg = match kind {
            0 => BorderMessage::Ghosts { bodies: vec![ghost(1, 500), ghost(3, 250)] },
            1 => BorderMessage::Offer { root: ElementId::new(2, 1), bodies: 1, switch_tick: 2, player: None },
            _ => BorderMessage::Refuse { root: ElementId::new(1, 4), reason: metatopia_sim::physics::Refusal::Capacity },
        };
        let mut bytes = encode_envelope(&env(0, msg));
        let i = at % bytes.len();
        bytes[i] = byte;
        metatopia_physics::fuzz::border_envelope(&bytes);
    }
}
