//! The region manifest: what a replica group agrees on before its first
//! tick. The genesis digest covers it, so two replicas whose manifests
//! differ in any byte can never agree on a batch.

use serde::{Deserialize, Serialize};

use metatopia_physics::Region;
use metatopia_sim::state::{Settings, State};
use metatopia_sim::{PlayerId, RegionId};

use super::wire::Digest;

/// Most members of a replica group.
pub const MEMBERS_MAX: usize = 31;

/// A region's founding document: its id, settings, founders and the
/// replica group that hosts it (the members' node keys, in the order the
/// consensus engine numbers them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The region.
    pub region: RegionId,
    /// Its settings at genesis (size, tick rate, name, rules).
    pub settings: Settings,
    /// Permanent admins at genesis.
    pub founders: Vec<PlayerId>,
    /// The replica group, by node key; `n = 3f + 1` (or 1 for a private
    /// world).
    pub members: Vec<PlayerId>,
}

/// Why a manifest cannot host a region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// No members.
    #[error("the replica group is empty")]
    Empty,
    /// Too many members.
    #[error("the replica group has {0} members (limit {MEMBERS_MAX})")]
    TooMany(usize),
    /// A member is listed twice.
    #[error("member {0} is listed twice")]
    Duplicate(PlayerId),
}

impl Manifest {
    /// A private world: one member, who is also the founder.
    pub fn solo(region: RegionId, settings: Settings, me: PlayerId) -> Manifest {
        Manifest {
            region,
            settings,
            founders: vec![me],
            members: vec![me],
        }
    }

    /// Checks the group's shape.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.members.is_empty() {
            return Err(ManifestError::Empty);
        }
        if self.members.len() > MEMBERS_MAX {
            return Err(ManifestError::TooMany(self.members.len()));
        }
        let mut seen = self.members.clone();
        seen.sort();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(ManifestError::Duplicate(w[0]));
        }
        Ok(())
    }

    /// Faults tolerated: `f = (n - 1) / 3`.
    pub fn faults_max(&self) -> usize {
        self.members.len().saturating_sub(1) / 3
    }

    /// The genesis region.
    pub fn genesis(&self) -> Region {
        Region::from_state(State::new(
            self.region,
            self.settings.clone(),
            &self.founders,
        ))
    }

    /// The genesis digest: the parent of the first proposal. It covers the
    /// manifest and the genesis region hash.
    pub fn genesis_digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"metatopia genesis v1\0");
        let mut buf = Vec::new();
        postcard::to_io(self, &mut buf).expect("postcard encoding into a Vec cannot fail");
        h.update(&buf);
        h.update(&self.genesis().hash());
        *h.finalize().as_bytes()
    }

    /// The member's index, if it is one.
    pub fn index_of(&self, member: PlayerId) -> Option<usize> {
        self.members.iter().position(|m| *m == member)
    }
}

/// A neighbour region as this group knows it: its id and the members of
/// the group that hosts it (from its manifest), whose f + 1 signatures
/// certify the border envelopes it sends here.
///
/// Where it comes from: the `[[group.neighbour]]` list of the node's
/// configuration for now; the overlay's signed region records (which list
/// the hosting group) are the live source (ADR 0013).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    /// The neighbour region.
    pub region: RegionId,
    /// Its replica group, by node key.
    pub members: Vec<PlayerId>,
}

impl Neighbour {
    /// The neighbour hosted as `manifest` says.
    pub fn of(manifest: &Manifest) -> Neighbour {
        Neighbour {
            region: manifest.region,
            members: manifest.members.clone(),
        }
    }

    /// Signatures a border certificate needs: f + 1 of its group.
    pub fn quorum(&self) -> usize {
        self.members.len().saturating_sub(1) / 3 + 1
    }
}

/// Four members with the keys `[1; 32]` .. `[4; 32]`, hosting region 3
/// with default settings, the first member its founder: the group of the
/// replica modules' unit tests.
#[cfg(test)]
pub(crate) fn test_group() -> (Vec<ed25519_dalek::SigningKey>, Manifest) {
    let keys: Vec<ed25519_dalek::SigningKey> = (1..=4u8)
        .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i; 32]))
        .collect();
    let manifest = Manifest {
        region: RegionId(3),
        settings: Settings::default(),
        founders: vec![super::wire::player_of(&keys[0])],
        members: keys.iter().map(super::wire::player_of).collect(),
    };
    (keys, manifest)
}
