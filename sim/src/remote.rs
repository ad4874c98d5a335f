//! Messages between regions that the sim makes and takes: chat lines said
//! near a border (the neighbour's listeners within the line's radius hear
//! it, by the same rule as local chat) and script messages addressed to an
//! element of another region (`send(target, text, region)`).
//!
//! The sim knows nothing of its neighbours: a tick puts what it said and
//! sent in [`TickReport::remote`](crate::step::TickReport) as
//! [`Outbound`]s, and the region (`metatopia-physics`' `Region`, which
//! knows the neighbours' boxes) routes them: a chat line to every neighbour
//! whose box is within its radius, a message to the region it names. The
//! neighbour's region hands them to its sim in the
//! [`PhysicsInbox::remote`](crate::physics::PhysicsInbox) of the tick whose
//! batch carries them, and the sim applies them at step 3, in the order
//! given (by sending region, then by the sender's sequence number: the
//! region's canonical order). See docs/adr/0016-messages-between-regions.md.

use serde::{Deserialize, Serialize};

use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, RegionId};
use crate::script_event::Speaker;

/// Longest text of a remote chat line or message on the wire, bytes (the
/// receiving region also applies its own `text_bytes_max`).
pub const REMOTE_TEXT_BYTES_MAX: usize = 4096;

/// One item travelling from a region to a neighbour.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Remote {
    /// A chat line with a hearing radius, said near the border.
    Chat {
        /// Who said it (player keys and element ids are global).
        from: Speaker,
        /// Where it was said from: region coordinates of the sim that
        /// makes or takes it, world coordinates on the wire.
        pos: Vec3,
        /// Hearing radius, metres (positive).
        radius: Fx,
        /// The text.
        text: String,
    },
    /// A script message for an element of the receiving region.
    Message {
        /// The sending script's element.
        from: ElementId,
        /// The receiving script's element.
        to: ElementId,
        /// The message.
        body: String,
    },
}

impl Remote {
    /// Whether the item is well formed: text non-empty and bounded, a
    /// positive radius.
    pub fn valid(&self) -> bool {
        let text = match self {
            Remote::Chat { radius, text, .. } => {
                if *radius <= Fx::ZERO {
                    return false;
                }
                text
            }
            Remote::Message { body, .. } => body,
        };
        !text.is_empty() && text.len() <= REMOTE_TEXT_BYTES_MAX
    }

    /// The item with its position (chat) shifted by `by`.
    pub fn shifted(&self, by: Vec3) -> Remote {
        let mut r = self.clone();
        if let Remote::Chat { pos, .. } = &mut r {
            *pos = pos.saturating_add(by);
        }
        r
    }
}

/// Something a tick said or sent that may concern a neighbour.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Outbound {
    /// For a message, the region it is addressed to; `None` for a chat
    /// line (every neighbour within its radius).
    pub to: Option<RegionId>,
    /// The item, chat positions in this region's coordinates.
    pub item: Remote,
}
