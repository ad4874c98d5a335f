//! The codec round-trips, rejects bad envelopes and oversize fields, and
//! never panics on random bytes.

use metatopia_overlay::wire::{
    self, CONTACTS_MAX, DecodeError, MAGIC, MESSAGE_BYTES_MAX, Route, RouteKind, Shape, VERSION,
    Walk, WalkKind,
};
use metatopia_overlay::{Contact, Message, NodeId, Point, Rect, RegionId, RegionInfo};
use proptest::prelude::*;

fn contact(i: u64) -> Contact {
    Contact {
        id: NodeId(i),
        pos: Point::new(i as i64 * 1000, -(i as i64)),
        seq: 3,
        addr: vec![1, 2, 3],
    }
}

fn samples() -> Vec<Message> {
    let key = libp2p::identity::Keypair::ed25519_from_bytes([7; 32]).expect("32 bytes");
    let bounds = Rect {
        min: Point::new(0, 0),
        max: Point::new(10, 10),
    };
    let region = RegionInfo::signed_by_all(RegionId(7), bounds, [3; 32], &[key], 5);
    vec![
        Message::Route(Route {
            target: Point::new(5, 6),
            origin: contact(1),
            hops: 4,
            kind: RouteKind::Walk {
                query: 3,
                shape: Shape::Disc {
                    centre: Point::new(1, 1),
                    radius: 50,
                },
                kind: WalkKind::Announce(Box::new(region.clone())),
            },
        }),
        Message::Hello {
            from: contact(2),
            vn: (0..6).map(contact).collect(),
            known: (0..20).map(NodeId).collect(),
        },
        Message::JoinReply {
            from: contact(3),
            contacts: vec![contact(4)],
            regions: vec![region],
        },
        Message::Walk(Walk {
            query: 1,
            origin: contact(1),
            shape: Shape::Rect(Rect {
                min: Point::new(0, 0),
                max: Point::new(1, 1),
            }),
            kind: WalkKind::Aoi,
            visited: vec![NodeId(1)],
            frontier: vec![contact(2)],
            found: vec![],
            hops: 2,
        }),
        Message::Bye { from: contact(9) },
    ]
}

#[test]
fn wire_round_trips() {
    for m in samples() {
        let b = wire::encode(&m).expect("encode");
        assert_eq!(&b[..2], &[MAGIC, VERSION]);
        assert_eq!(wire::encoded_len(&m), b.len());
        assert_eq!(wire::decode(&b), Ok(m));
    }
}

#[test]
fn wire_rejects_bad_envelopes() {
    let good = wire::encode(&Message::Bye { from: contact(1) }).expect("encode");
    assert_eq!(wire::decode(&[]), Err(DecodeError::Incomplete));
    assert_eq!(wire::decode(&[MAGIC]), Err(DecodeError::Incomplete));
    let mut bad = good.clone();
    bad[0] ^= 1;
    assert_eq!(wire::decode(&bad), Err(DecodeError::BadMagic));
    let mut bad = good.clone();
    bad[1] = VERSION + 1;
    assert_eq!(wire::decode(&bad), Err(DecodeError::BadVersion));
    let mut bad = good.clone();
    bad.push(0);
    assert_eq!(wire::decode(&bad), Err(DecodeError::Trailing));
    assert_eq!(
        wire::decode(&good[..good.len() - 1]),
        Err(DecodeError::Malformed)
    );
    assert_eq!(
        wire::decode(&vec![MAGIC; MESSAGE_BYTES_MAX + 1]),
        Err(DecodeError::TooLarge)
    );
}

#[test]
fn wire_enforces_list_bounds() {
    let big = Message::Introduce {
        from: contact(1),
        contacts: (0..=CONTACTS_MAX as u64).map(contact).collect(),
    };
    assert!(wire::encode(&big).is_err());
    // Hand-encode the same message past the encoder's check.
    let mut b = vec![MAGIC, VERSION];
    b = postcard::to_extend(&big, b).expect("postcard");
    assert_eq!(wire::decode(&b), Err(DecodeError::OutOfBounds));
    // Coordinates beyond the bound are refused too.
    let far = Message::Bye {
        from: Contact {
            id: NodeId(1),
            pos: Point { x: i64::MAX, y: 0 },
            seq: 0,
            addr: vec![],
        },
    };
    let mut b = vec![MAGIC, VERSION];
    b = postcard::to_extend(&far, b).expect("postcard");
    assert_eq!(wire::decode(&b), Err(DecodeError::OutOfBounds));
}

proptest! {
    #[test]
    fn wire_random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        metatopia_overlay::fuzz::fuzz_decode(&bytes);
        let mut b = vec![MAGIC, VERSION];
        b.extend_from_slice(&bytes);
        metatopia_overlay::fuzz::fuzz_decode(&b);
    }

    #[test]
    fn wire_mutated_messages_never_panic(idx in 0usize..5, pos in any::<usize>(), val in any::<u8>()) {
        let mut b = wire::encode(&samples()[idx]).expect("encode");
        let n = b.len();
        b[pos % n] = val;
        metatopia_overlay::fuzz::fuzz_decode(&b);
    }
}
