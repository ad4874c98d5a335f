//! metatopia-sim: the deterministic world.
//!
//! A sim is one region run in lockstep: an agreed [`Batch`] of inputs goes
//! in, every replica computes the same next [`State`], and a blake3
//! [`state_hash`](snapshot::state_hash) proves it. This crate does no I/O,
//! reads no clock, uses no floats and no hash maps; see `docs/ARCHITECTURE.md`.
//!
//! Layout:
//! - [`fx`]: fixed-point numbers and vectors, deterministic maths.
//! - [`id`]: region, element and player ids.
//! - [`state`]: the world state (elements, players, chat, settings).
//! - [`input`]: inputs, batches and events.
//! - [`rejection`]: why an input was refused.
//! - [`body`]: physics bodies as the state holds them.
//! - [`script_event`]: the events scripts get, and those queued for them.
//! - [`admin`]: the temp-admin rule.
//! - [`order`]: tick seeds and canonical inbox order.
//! - [`script`]: the script host trait.
//! - [`physics`]: messages to and from the physics sim and between regions.
//! - [`remote`]: chat lines and script messages between regions.
//! - [`step`]: the tick.
//! - [`table`]: ordered maps whose entries carry their own hash.
//! - [`timers`]: the pending script timers, grouped by due tick.
//! - [`codec`]: bounded, canonical serde for the persistent collections.
//! - [`hashing`]: postcard encodings streamed into blake3 or onto a `Vec`.
//! - [`snapshot`]: canonical encoding, state hash, snapshots.
//! - [`testing`]: a Rust script host and a tick driver for tests and benches.

#![deny(clippy::float_arithmetic)]

pub mod admin;
pub mod body;
pub mod codec;
pub mod fx;
pub mod hashing;
pub mod id;
pub mod input;
pub mod order;
pub mod physics;
pub mod rejection;
pub mod remote;
pub mod script;
pub mod script_event;
pub mod snapshot;
pub mod state;
pub mod step;
pub mod table;
pub mod testing;
pub mod timers;

pub use fx::{Fx, Vec3};
pub use id::{ElementId, PlayerId, RegionId, hex, unhex32};
pub use input::{AdminAction, Batch, Event, Input, InputKind, Rejection, SettingsPatch};
pub use script::{NoScripts, ScriptHost};
pub use state::{Settings, State};
pub use step::{Sim, StepError, TickReport};
