//! metatopia-node: the `metatopia` node as a library.
//!
//! The binary (`main.rs`) parses arguments, installs tracing and calls
//! [`cli::run`]; everything else lives here so that tests can drive it.
//!
//! Layout:
//! - [`cli`]: the verbs (`up`, `status`, `say`, `act`, `run`, `replay`, `desync`, `handoffs`).
//! - [`config`]: `DIR/node.toml`: services and limits.
//! - [`desync`]: desync reports: the first diverging tick, and which element and field differ.
//! - [`handoffs`]: body ownership across two neighbouring regions, checked after every tick of their logs.
//! - [`datadir`]: the data directory: keys, token, lock, where the node listens.
//! - [`store`]: redb persistence: genesis, batch log with checkpoints, snapshots, recovery.
//! - [`replica`]: the sans-IO replica core, its wire types and the region manifest.
//! - [`world`]: the local world: the replica core's driver on a tick thread.
//! - [`overlay`]: joining the Voronoi overlay, announcing and locating regions.
//! - [`http`]: the HTTP API and metrics.
//! - [`listener`]: the HTTP listener's connection caps (total and per address).
//! - [`stream`]: the region stream, a WebSocket of each tick's changes and events.
//! - [`viewer`]: the browser viewer's files (page, script, vendored three.js), embedded.
//! - [`faults`]: script faults seen: counted, logged, the recent ones kept.
//! - [`view`]: JSON views of the world.
//! - [`action`], [`scenario`], [`physics_scene`], [`quote`]: re-exported
//!   from metatopia-scenario (actions, scenario files, physics scenes).
//! - [`content`]: the content store (script sources and assets by blake3), its caps, HTTP routes, gc and CLI verbs.
//! - [`scripts`]: script sources (in the content store), their HTTP routes and CLI verbs.
//! - [`client`]: a minimal HTTP client for the CLI and tests.
//! - [`out`]: standard output for verbs ([`outln!`]); a closed pipe ends a verb quietly.

/// `println!` for verbs: a closed standard output ends the verb quietly
/// ([`out::StdoutClosed`]) instead of panicking. Use inside a function
/// returning `anyhow::Result`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::write_out(format_args!("{}\n", format_args!($($arg)*)))?
    };
}

pub mod cli;
pub mod client;
pub mod config;
pub mod content;
pub mod datadir;
pub mod desync;
pub mod faults;
pub mod handoffs;
pub mod http;
pub mod listener;
pub mod out;
pub mod overlay;
pub mod replica;
pub mod scripts;
pub mod store;
pub mod stream;
/// Bytes on the wire ([`metatopia_overlay::traffic`]).
pub use metatopia_overlay::traffic;
pub mod view;
pub mod viewer;
pub mod web;
pub mod world;

// Scenario files, physics scenes and actions live in metatopia-scenario
// (Lua-free, so the determinism suite builds them for wasm32); their old
// paths stay.
pub use metatopia_scenario::{action, physics_scene, quote, scenario};
