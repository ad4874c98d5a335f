//! Identifiers: regions, elements and players.
//!
//! Element ids are `(region, counter)`: a region mints ids from its own
//! counter, so ids are unique with no coordination. Players are ed25519
//! public keys. In JSON every id is a string (`"1.42"`, 64 hex digits); in
//! postcard they are plain integers and bytes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// An element id is `REGION.COUNTER`, two decimal integers.
    #[error("invalid element id {0:?}: expected REGION.COUNTER, e.g. 1.42")]
    Element(String),
    /// A player id is 64 hexadecimal digits (an ed25519 public key).
    #[error("invalid player id {0:?}: expected 64 hex digits")]
    Player(String),
}

/// A region (one sim).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct RegionId(pub u32);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An element: a region root, an object, a part or an avatar.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ElementId {
    /// The region that minted the id.
    pub region: RegionId,
    /// The minting region's counter value.
    pub counter: u64,
}

impl ElementId {
    /// An id from its parts.
    pub const fn new(region: u32, counter: u64) -> ElementId {
        ElementId {
            region: RegionId(region),
            counter,
        }
    }

    /// The canonical bytes used in hashes (region then counter, little endian).
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.region.0.to_le_bytes());
        out[4..].copy_from_slice(&self.counter.to_le_bytes());
        out
    }
}

impl fmt::Display for ElementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.region.0, self.counter)
    }
}

impl fmt::Debug for ElementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for ElementId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<ElementId, IdError> {
        let bad = || IdError::Element(s.chars().take(40).collect());
        let (r, c) = s.trim().split_once('.').ok_or_else(bad)?;
        Ok(ElementId {
            region: RegionId(r.parse().map_err(|_| bad())?),
            counter: c.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for ElementId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            (self.region.0, self.counter).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for ElementId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ElementId, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            let (r, c) = <(u32, u64)>::deserialize(d)?;
            Ok(ElementId::new(r, c))
        }
    }
}

/// A player: an ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlayerId(pub [u8; 32]);

impl PlayerId {
    /// A player id whose bytes are all `b` (for tests and examples).
    pub const fn from_byte(b: u8) -> PlayerId {
        PlayerId([b; 32])
    }

    /// A deterministic id derived from a name: `blake3("metatopia player name" || name)`.
    /// Scenarios use it so that files can name players instead of keys.
    pub fn from_name(name: &str) -> PlayerId {
        let mut h = blake3::Hasher::new();
        h.update(b"metatopia player name\0");
        h.update(name.as_bytes());
        PlayerId(*h.finalize().as_bytes())
    }
}

/// Lowercase hex of some bytes (hashes, keys): the one hex helper.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from exactly 64 hex digits (either case), if they are: the
/// one hex reader, the inverse of [`hex`].
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl fmt::Display for PlayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PlayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        write!(f, "P:{}", &s[..8])
    }
}

impl FromStr for PlayerId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<PlayerId, IdError> {
        let s = s.trim();
        unhex32(s)
            .map(PlayerId)
            .ok_or_else(|| IdError::Player(s.chars().take(70).collect()))
    }
}

impl Serialize for PlayerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PlayerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PlayerId, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(PlayerId)
        }
    }
}
