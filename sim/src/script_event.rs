//! The events scripts get: what happened ([`ScriptEventKind`]), who spoke
//! ([`Speaker`]), and those queued for the next tick ([`Pending`]). Plain
//! data below both the state, which queues them, and the script host
//! interface, which delivers them.

use serde::{Deserialize, Serialize};

use crate::id::{ElementId, PlayerId, RegionId};

/// Who said a chat line.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Speaker {
    /// A player (through their avatar).
    Player(PlayerId),
    /// A scripted element.
    Script(ElementId),
}

/// An event in a script's inbox.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ScriptEvent {
    /// Unique within the tick; with the tick seed it fixes the canonical order.
    pub id: u64,
    /// What happened.
    pub kind: ScriptEventKind,
}

/// What a script can hear about.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ScriptEventKind {
    /// A player touched `element` (the script's element or a descendant).
    Touched {
        /// Who touched.
        by: PlayerId,
        /// What was touched.
        element: ElementId,
    },
    /// Chat within hearing.
    Heard {
        /// Who spoke.
        from: Speaker,
        /// What was said.
        text: String,
    },
    /// A message from another script, sent last tick.
    Message {
        /// The sending script.
        from: ElementId,
        /// The message.
        body: String,
    },
    /// A timer the script set has fired.
    Timer {
        /// The timer's id, as the script chose it.
        timer: u32,
    },
    /// A player entered the region.
    Entered {
        /// The player.
        player: PlayerId,
    },
    /// A player left the region.
    Left {
        /// The player.
        player: PlayerId,
    },
    /// A body (the script's element or a descendant) started touching
    /// another (reported by the body's owner region only).
    Collision {
        /// The body.
        element: ElementId,
        /// What it touched.
        other: ElementId,
    },
    /// A message from a script of another region (`send(target, text,
    /// region)` there), delivered exactly once.
    RemoteMessage {
        /// The sending script's region.
        region: RegionId,
        /// The sending script.
        from: ElementId,
        /// The message.
        body: String,
    },
    /// A player's avatar crossed the border into a neighbouring region
    /// (the player left this region for `to`). Scripts get it as
    /// `on_leave(player, to)`; a plain leave is `on_leave(player)`.
    Crossed {
        /// The player.
        player: PlayerId,
        /// The region the avatar went to.
        to: RegionId,
    },
}

/// An event for a script, delivered at the next tick (messages between
/// scripts, chat said by scripts).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Pending {
    /// The receiving script.
    pub to: ElementId,
    /// The event.
    pub event: ScriptEventKind,
}
