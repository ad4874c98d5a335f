//! [`Host`]: the sim's script host for Lua. One [`Sandbox`] per scripted
//! element, cached by (element, source hash) and rebuilt when the source
//! changes (hot reload). Calls for different scripts run in parallel; each
//! script's sandbox sits behind its own mutex (a script is called at most
//! once per tick, so nobody waits).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use metatopia_sim::script::{ScriptCall, ScriptFault, ScriptHost, ScriptOutput, hex32};
use metatopia_sim::state::ScriptSlot;
use metatopia_sim::{ElementId, State};

use crate::licence::{self, LicenceError};
use crate::sandbox::{Limits, LoadError, Sandbox};

/// Where the host finds script sources by blake3 hash.
pub trait Sources: Send + Sync + fmt::Debug {
    /// The source text whose blake3 hash is `hash`, if known.
    fn source(&self, hash: &[u8; 32]) -> Option<Arc<str>>;
}

/// Sources held in memory (scenarios, tests, benches).
#[derive(Debug, Default)]
pub struct MemorySources {
    map: RwLock<BTreeMap<[u8; 32], Arc<str>>>,
}

impl MemorySources {
    /// An empty set.
    pub fn new() -> MemorySources {
        MemorySources::default()
    }

    /// Adds a source and returns its hash.
    pub fn insert(&self, text: &str) -> [u8; 32] {
        let hash = hash_source(text);
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, Arc::from(text));
        hash
    }
}

impl Sources for MemorySources {
    fn source(&self, hash: &[u8; 32]) -> Option<Arc<str>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
            .cloned()
    }
}

/// The content address of a source: blake3 of its bytes.
pub fn hash_source(text: &str) -> [u8; 32] {
    *blake3::hash(text.as_bytes()).as_bytes()
}

struct Entry {
    source: [u8; 32],
    /// The SPDX identifiers the source's licence line names.
    licence_ids: Vec<String>,
    sandbox: Mutex<Result<Sandbox, String>>,
}

/// Why an upload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The licence line is missing, malformed or not allowed.
    #[error(transparent)]
    Licence(#[from] LicenceError),
    /// The source does not compile, or the sandbox failed.
    #[error("{0}")]
    Load(#[from] LoadError),
    /// The top level fails when run.
    #[error("the script fails when loaded: {0}")]
    TopLevel(String),
    /// Not valid UTF-8 or too large.
    #[error("{0}")]
    Invalid(String),
}

/// Largest source accepted, bytes.
pub const SOURCE_BYTES_MAX: usize = 256 * 1024;

/// The Lua script host.
pub struct Host {
    sources: Arc<dyn Sources>,
    cache: RwLock<BTreeMap<ElementId, Arc<Entry>>>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.cache.read().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("Host")
            .field("sources", &self.sources)
            .field("cached", &n)
            .finish()
    }
}

/// The licences a region accepts.
pub fn allowed_licences(state: &State) -> Vec<String> {
    state.settings.script_licences.clone()
}

impl Host {
    /// A host reading sources from `sources`. Fails if this build of Lua is
    /// not deterministic (see [`crate::check_build`]).
    pub fn new(sources: Arc<dyn Sources>) -> Result<Host, LoadError> {
        crate::sandbox::check_build()?;
        Ok(Host {
            sources,
            cache: RwLock::new(BTreeMap::new()),
        })
    }

    /// Sandboxes cached now.
    pub fn cached(&self) -> usize {
        self.cache.read().map(|c| c.len()).unwrap_or(0)
    }

    /// Drops cached sandboxes of elements for which `keep` is false.
    pub fn retain(&self, mut keep: impl FnMut(ElementId) -> bool) {
        if let Ok(mut c) = self.cache.write() {
            c.retain(|id, _| keep(*id));
        }
    }

    fn entry(&self, script: ElementId, source: [u8; 32]) -> Result<Arc<Entry>, ScriptFault> {
        if let Ok(c) = self.cache.read()
            && let Some(e) = c.get(&script)
            && e.source == source
        {
            return Ok(e.clone());
        }
        let text = self
            .sources
            .source(&source)
            .filter(|t| hash_source(t) == source)
            .ok_or_else(|| ScriptFault::MissingSource(hex32(&source)))?;
        let sandbox = Sandbox::new(&text).map_err(|e| e.to_string());
        let entry = Arc::new(Entry {
            source,
            licence_ids: licence::ids(&text),
            sandbox: Mutex::new(sandbox),
        });
        if let Ok(mut c) = self.cache.write() {
            c.insert(script, entry.clone());
        }
        Ok(entry)
    }
}

impl ScriptHost for Host {
    fn run(&self, call: &ScriptCall<'_>) -> Result<ScriptOutput, ScriptFault> {
        let allowed = &call.state.settings.script_licences;
        let entry = self.entry(call.script, call.slot.source)?;
        let guard = match entry.sandbox.lock() {
            Ok(g) => g,
            Err(_) => {
                // A panic left this sandbox in an unknown state: rebuild.
                if let Ok(mut c) = self.cache.write() {
                    c.remove(&call.script);
                }
                return Err(ScriptFault::Error(
                    "the script's sandbox was reset after an internal error".into(),
                ));
            }
        };
        let sandbox = guard.as_ref().map_err(|e| ScriptFault::Error(e.clone()))?;
        // The allow-list may change after upload; a script whose licence
        // the region no longer accepts stops running.
        if entry.licence_ids.is_empty() {
            return Err(ScriptFault::Error(
                "the script has no valid SPDX-License-Identifier line".into(),
            ));
        }
        if let Some(id) = entry.licence_ids.iter().find(|id| !allowed.contains(id)) {
            return Err(ScriptFault::Error(format!(
                "licence {id:?} is not accepted in this region; accepted: {}",
                allowed.join(", ")
            )));
        }
        sandbox.run(call, &Limits::from_settings(&call.state.settings))
    }
}

/// Checks a source for upload: size, UTF-8, licence against `allowed`,
/// compiles, and runs its top level against `state` as `script` would.
/// Returns the licence expression.
pub fn check_upload(
    source: &[u8],
    state: &State,
    script: Option<ElementId>,
) -> Result<String, CheckError> {
    if source.len() > SOURCE_BYTES_MAX {
        return Err(CheckError::Invalid(format!(
            "source is {} bytes, limit {SOURCE_BYTES_MAX}",
            source.len()
        )));
    }
    let text = std::str::from_utf8(source)
        .map_err(|_| CheckError::Invalid("source is not valid UTF-8".into()))?;
    let licence = licence::check(text, &allowed_licences(state))?;
    let sandbox = Sandbox::new(text)?;
    let slot = ScriptSlot {
        source: hash_source(text),
        state: Vec::new(),
        faults: 0,
        suspended: false,
    };
    let call = ScriptCall {
        state,
        script: script.unwrap_or_else(|| state.root()),
        slot: &slot,
        inbox: &[],
        tick: state.tick,
        seed: [0; 32],
    };
    sandbox
        .run(&call, &Limits::from_settings(&state.settings))
        .map_err(|e| CheckError::TopLevel(e.to_string()))?;
    Ok(licence)
}
