//! Region records signed by their hosting group.
//!
//! A [`RegionInfo`] names the group that hosts the region (its genesis
//! digest and its members' ed25519 keys, each with the address of its group
//! endpoint) and carries signatures by members over all of that and a
//! sequence number. A peer stores a record only when every signature on it
//! verifies and at least one member signed; it replaces a stored record of
//! the same region only when
//! - the new record is by the same group (same digest, same members) with a
//!   sequence number at least as high (a member's refresh), or
//! - the stored one has expired, or
//! - the new record is signed by more than a third of the stored group's
//!   members (`f + 1` of `n = 3f + 1`: at least one honest member agrees to
//!   the hand-over).
//!
//! So a peer outside a group cannot take over a region's record while the
//! group keeps announcing it. The first record of a region is trusted on
//! first use: region ids are not allocated by any authority.

use libp2p::identity::{Keypair, ed25519};
use serde::Serialize;

use crate::wire::{GroupMember, RegionInfo, SIGNATURE_BYTES};

/// Domain separation for the signed bytes.
const DOMAIN: &[u8] = b"metatopia region record v1\0";

/// Why a record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Nobody signed it.
    #[error("the record carries no member signature")]
    Unsigned,
    /// A signature names a member the record does not list.
    #[error("signature by member {0}, but the group has {1} members")]
    NoSuchMember(u16, usize),
    /// A member signed twice.
    #[error("member {0} signed twice")]
    Twice(u16),
    /// A member's key is not an ed25519 key.
    #[error("member {0}'s key is not a valid ed25519 key")]
    BadKey(u16),
    /// A signature does not verify.
    #[error("member {0}'s signature does not verify")]
    BadSignature(u16),
    /// A record of another group while the stored one lives.
    #[error(
        "region {region} is hosted by another group; a hand-over needs {needed} signatures of its members, this record has {had}"
    )]
    Takeover {
        /// The region.
        region: u32,
        /// Signatures of the stored group's members needed.
        needed: usize,
        /// Signatures of them the new record has.
        had: usize,
    },
    /// An older record of the same group.
    #[error("an older record (seq {new} < {stored})")]
    Stale {
        /// The new record's sequence number.
        new: u64,
        /// The stored one's.
        stored: u64,
    },
    /// The key cannot sign (not ed25519).
    #[error("the signing key cannot sign: {0}")]
    Signing(String),
}

impl GroupMember {
    /// The member whose libp2p identity is `key` (ed25519 only), with the
    /// address of its group endpoint.
    pub fn of(key: &libp2p::identity::PublicKey, addr: Vec<u8>) -> Option<GroupMember> {
        let key = key.clone().try_into_ed25519().ok()?.to_bytes();
        Some(GroupMember { key, addr })
    }

    /// Its libp2p peer id, if its key is a valid ed25519 key.
    pub fn peer_id(&self) -> Option<libp2p::PeerId> {
        let key = ed25519::PublicKey::try_from_bytes(&self.key).ok()?;
        Some(libp2p::identity::PublicKey::from(key).to_peer_id())
    }
}

impl RegionInfo {
    /// An unsigned record; add signatures with [`RegionInfo::sign`].
    pub fn new(
        id: crate::wire::RegionId,
        bounds: crate::wire::Rect,
        group: [u8; 32],
        members: Vec<GroupMember>,
        seq: u64,
    ) -> RegionInfo {
        RegionInfo {
            id,
            bounds,
            group,
            members,
            seq,
            sigs: Vec::new(),
        }
    }

    /// A record of the group whose members are `keys`, signed by all of
    /// them (tests and simulations).
    pub fn signed_by_all(
        id: crate::wire::RegionId,
        bounds: crate::wire::Rect,
        group: [u8; 32],
        keys: &[Keypair],
        seq: u64,
    ) -> RegionInfo {
        let members = keys
            .iter()
            .filter_map(|k| GroupMember::of(&k.public(), Vec::new()))
            .collect();
        let mut r = RegionInfo::new(id, bounds, group, members, seq);
        for (i, k) in keys.iter().enumerate() {
            let _ = r.sign(i as u16, k);
        }
        r
    }
}

#[derive(Serialize)]
struct Signed<'a> {
    id: u32,
    bounds: &'a crate::wire::Rect,
    group: &'a [u8; 32],
    members: &'a [crate::wire::GroupMember],
    seq: u64,
}

impl RegionInfo {
    /// The bytes members sign: everything but the signatures.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let signed = Signed {
            id: self.id.0,
            bounds: &self.bounds,
            group: &self.group,
            members: &self.members,
            seq: self.seq,
        };
        postcard::to_extend(&signed, DOMAIN.to_vec())
            .expect("postcard encoding into a Vec cannot fail")
    }

    /// Adds member `member`'s signature with `key` (its signature replaces
    /// an earlier one by the same member).
    pub fn sign(&mut self, member: u16, key: &Keypair) -> Result<(), RecordError> {
        let sig = key
            .sign(&self.signing_bytes())
            .map_err(|e| RecordError::Signing(e.to_string()))?;
        self.sigs.retain(|s| s.member != member);
        self.sigs.push(crate::wire::MemberSig { member, sig });
        self.sigs.sort_by_key(|s| s.member);
        Ok(())
    }

    /// The members whose signatures verify, ascending; an error when
    /// any signature is bad or there is none.
    pub fn signers(&self) -> Result<Vec<u16>, RecordError> {
        if self.sigs.is_empty() {
            return Err(RecordError::Unsigned);
        }
        let bytes = self.signing_bytes();
        let mut out = Vec::with_capacity(self.sigs.len());
        for s in &self.sigs {
            let m = self
                .members
                .get(usize::from(s.member))
                .ok_or(RecordError::NoSuchMember(s.member, self.members.len()))?;
            if out.contains(&s.member) {
                return Err(RecordError::Twice(s.member));
            }
            let key = ed25519::PublicKey::try_from_bytes(&m.key)
                .map_err(|_| RecordError::BadKey(s.member))?;
            if s.sig.len() != SIGNATURE_BYTES || !key.verify(&bytes, &s.sig) {
                return Err(RecordError::BadSignature(s.member));
            }
            out.push(s.member);
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Whether this record (already verified) may replace `stored`, a live
    /// record of the same region.
    pub fn may_replace(&self, stored: &RegionInfo) -> Result<(), RecordError> {
        if self.group == stored.group && self.members == stored.members {
            return if self.seq >= stored.seq {
                Ok(())
            } else {
                Err(RecordError::Stale {
                    new: self.seq,
                    stored: stored.seq,
                })
            };
        }
        // A hand-over: more than a third of the stored group must sign.
        let needed = (stored.members.len().saturating_sub(1)) / 3 + 1;
        let had = self
            .sigs
            .iter()
            .filter_map(|s| self.members.get(usize::from(s.member)))
            .filter(|m| stored.members.iter().any(|o| o.key == m.key))
            .count();
        if had >= needed {
            Ok(())
        } else {
            Err(RecordError::Takeover {
                region: self.id.0,
                needed,
                had,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Point, Rect, RegionId};

    fn keys(n: u8) -> Vec<Keypair> {
        (1..=n)
            .map(|i| Keypair::ed25519_from_bytes([i; 32]).expect("32 bytes"))
            .collect()
    }

    fn record(keys: &[Keypair], group: u8, seq: u64) -> RegionInfo {
        let members = keys
            .iter()
            .map(|k| GroupMember::of(&k.public(), Vec::new()).expect("ed25519"))
            .collect();
        let bounds = Rect {
            min: Point::new(0, 0),
            max: Point::new(256_000, 256_000),
        };
        RegionInfo::new(RegionId(5), bounds, [group; 32], members, seq)
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let k = keys(4);
        let mut r = record(&k, 1, 10);
        assert_eq!(r.signers(), Err(RecordError::Unsigned));
        r.sign(2, &k[2]).expect("sign");
        r.sign(0, &k[0]).expect("sign");
        assert_eq!(r.signers(), Ok(vec![0, 2]));
        // Changing any signed field breaks the signatures.
        let mut moved = r.clone();
        moved.bounds.max.x += 1;
        assert_eq!(moved.signers(), Err(RecordError::BadSignature(0)));
        // A signature under the wrong member's name.
        let mut wrong = record(&k, 1, 10);
        wrong.sign(1, &k[3]).expect("sign");
        assert_eq!(wrong.signers(), Err(RecordError::BadSignature(1)));
        let mut outside = r.clone();
        outside.sigs[0].member = 9;
        assert_eq!(outside.signers(), Err(RecordError::NoSuchMember(9, 4)));
    }

    #[test]
    fn only_the_group_or_a_third_of_it_replaces_a_record() {
        let k = keys(8);
        let (group, others) = k.split_at(4);
        let mut stored = record(group, 1, 10);
        stored.sign(0, &group[0]).expect("sign");
        // A refresh by another member, later.
        let mut refresh = record(group, 1, 11);
        refresh.sign(3, &group[3]).expect("sign");
        assert_eq!(refresh.may_replace(&stored), Ok(()));
        let mut old = record(group, 1, 9);
        old.sign(1, &group[1]).expect("sign");
        assert_eq!(
            old.may_replace(&stored),
            Err(RecordError::Stale { new: 9, stored: 10 })
        );
        // Outsiders announcing their own group for the region: refused.
        let mut takeover = record(others, 2, 99);
        for (i, key) in others.iter().enumerate() {
            takeover.sign(i as u16, key).expect("sign");
        }
        assert_eq!(
            takeover.may_replace(&stored),
            Err(RecordError::Takeover {
                region: 5,
                needed: 2,
                had: 0
            })
        );
        // A new group that keeps two of the old members, both signing.
        let mixed: Vec<Keypair> = vec![
            group[0].clone(),
            group[1].clone(),
            others[0].clone(),
            others[1].clone(),
        ];
        let mut handover = record(&mixed, 3, 1);
        handover.sign(0, &mixed[0]).expect("sign");
        assert!(handover.may_replace(&stored).is_err());
        handover.sign(1, &mixed[1]).expect("sign");
        assert_eq!(handover.may_replace(&stored), Ok(()));
    }
}
