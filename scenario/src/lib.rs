//! metatopia-scenario: scenario files, physics scene files and the
//! human-facing actions they share with the API and the CLI, run headless.
//!
//! It depends on the sim and the physics only; Lua (the script host and
//! `[[script]]` files) comes with the `scripts` feature, which the node
//! turns on. Without it the crate builds where Lua cannot: the determinism
//! suite's `metatopia-trace` runs on wasm32-wasip1 (`.ci/determinism wasm`).
//! The node re-exports the modules (`metatopia_node::scenario`, ...).
//!
//! Layout:
//! - [`action`]: human-facing actions shared by the API, CLI and scenarios.
//! - [`scenario`]: scenario files, run headless.
//! - [`physics_scene`]: physics scene files (regions as boxes, bodies), run headless.
//! - [`quote`]: quoting user input in error messages, bounded.
//! - [`trace`]: the hash after every tick of a scenario file or physics scene.

pub mod action;
pub mod physics_scene;
pub mod quote;
pub mod scenario;
pub mod trace;
