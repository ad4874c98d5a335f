//! Why an input was refused: below the state (whose edits refuse them
//! too) and the inputs.

use serde::{Deserialize, Serialize};

use crate::id::{ElementId, PlayerId, RegionId};

/// Why an input was refused. The input changed nothing but its sender's
/// sequence number.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The sender has not joined this region.
    #[error("player has not joined this region")]
    NotJoined,
    /// The sender is banned.
    #[error("player is banned from this region")]
    Banned,
    /// The region is full.
    #[error("region is full ({0} players online)")]
    RegionFull(u32),
    /// The sender is already in the region.
    #[error("player is already in the region")]
    AlreadyJoined,
    /// The sender lacks the right.
    #[error("permission denied: {0}")]
    Permission(String),
    /// The element does not exist.
    #[error("unknown element {0}")]
    UnknownElement(ElementId),
    /// The player is unknown to the region.
    #[error("unknown player {0}")]
    UnknownPlayer(PlayerId),
    /// A value is out of range.
    #[error("{0}")]
    OutOfBounds(String),
    /// The request is not valid for this element or player.
    #[error("{0}")]
    Invalid(String),
    /// The sender sent more inputs this tick than allowed.
    #[error("too many inputs this tick (limit {0})")]
    RateLimited(u32),
    /// The sender's avatar crossed the border into another region: their
    /// inputs go to that region's group now.
    #[error("avatar moved to region {0}: send inputs there")]
    Moved(RegionId),
    /// The sender's avatar is crossing into another region (offered, the
    /// switch is due): only moves that keep it there are taken until then.
    #[error("avatar is crossing into region {0}")]
    Crossing(RegionId),
}
