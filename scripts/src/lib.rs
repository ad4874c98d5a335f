//! metatopia-scripts: deterministic, sandboxed Lua 5.4 for metatopia sims.
//!
//! Creators write Lua; every replica of a sim runs it to the same state
//! hash. [`Host`] implements the sim's `ScriptHost`: one hardened Lua state
//! per script ([`Sandbox`]), instruction and memory budgets that no `pcall`
//! can catch, a canonical encoding of each script's persistent `state`
//! table ([`codec`]), fixed-point maths as raw integers ([`fx`]) and a
//! copyleft licence check for uploads ([`licence`]). The script API is
//! documented in `docs/scripting.md`.
//!
//! Layout:
//! - [`host`]: the `ScriptHost`, the source lookup and the upload check.
//! - [`sandbox`]: one Lua state, hardened; one call of it.
//! - `budget`: a call's limits and the counters charged against them.
//! - `strings`: the string functions with counted work (over [`pattern`]).
//! - `errors`: errors as the script's owner reads them.
//! - [`bytecode`]: finds assignments to enclosing variables in compiled code.
//! - [`codec`]: the canonical `state` encoding.
//! - [`fx`]: the `fx` library.
//! - [`licence`]: `SPDX-License-Identifier` checks.
//! - [`pattern`]: Lua's pattern matching with its work counted.
//! - [`prefetch`]: software prefetch of the next script's memory.
//! - [`raw`]: Lua C functions written in Rust, for the hottest calls.
//! - [`rng`]: the generator behind `math.random`.
//! - [`fuzz`]: bodies of the fuzz targets.
//! - [`alloc`]: the allocator binaries that run scripts should use.

pub mod alloc;
mod budget;
pub mod bytecode;
pub mod codec;
mod errors;
pub mod fuzz;
pub mod fx;
pub mod host;
pub mod licence;
pub mod pattern;
pub mod prefetch;
pub mod raw;
pub mod rng;
pub mod sandbox;
mod strings;

pub use host::{CheckError, Host, MemorySources, Sources, check_upload, hash_source};
pub use sandbox::{Limits, LoadError, Sandbox, check_build};
