//! [`Host`]: the sim's script host for Lua. One [`Sandbox`] per scripted
//! element, cached by element and rebuilt when the source or the region's
//! limits change (hot reload). Calls for different scripts run in
//! parallel; each script's sandbox sits behind its own mutex (a script is
//! called at most once per tick, so nobody waits). The cache is a
//! persistent map behind an atomic pointer: a call looks its sandbox up
//! without writing to any shared cache line (a lock's counter would bounce
//! between the cores at every call); loads and evictions replace the map.
//!
//! The cache is bounded ([`Host::with_capacity`]): past the cap, sandboxes
//! of elements that no longer have a script go first, then the least
//! recently used. What a call computes never depends on the cache: a
//! sandbox is a pure function of (source, element, limits), and sealing
//! (docs/adr/0004) keeps anything but `state` from surviving a call.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use imbl::OrdMap;

use metatopia_sim::script::{ScriptCall, ScriptFault, ScriptHost, ScriptOutput};
use metatopia_sim::{ElementId, State};

use crate::licence::{self, LicenceError};
use crate::prefetch::{HOT_MAX, Hot, Prefetcher};
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
    limits: Limits,
    /// The tick of the last call, for eviction.
    used_tick: AtomicU64,
    /// The SPDX identifiers the source's licence line names.
    licence_ids: Vec<String>,
    sandbox: Mutex<Result<Sandbox, String>>,
    /// What the script that ran after this one on the same thread touched
    /// first, last time: prefetched when this one runs ([`crate::prefetch`]).
    next: Hot,
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
    /// Not valid UTF-8 or too large.
    #[error("{0}")]
    Invalid(String),
}

/// Largest source accepted, bytes (64 KiB, docs/scripting.md): the one
/// definition; the node's HTTP body limit is this too.
pub const SOURCE_BYTES_MAX: usize = 64 * 1024;

/// Default most sandboxes cached (about 50 KiB each when idle).
pub const CACHED_MAX: usize = 16_384;

/// The Lua script host.
pub struct Host {
    sources: Arc<dyn Sources>,
    cache: ArcSwap<OrdMap<ElementId, Arc<Entry>>>,
    /// Held while the cache map is replaced.
    writer: Mutex<()>,
    cached_max: usize,
}

type Cache = OrdMap<ElementId, Arc<Entry>>;

/// Keeps the entries of `c` whose element `keep` accepts.
fn retain(c: &mut Cache, mut keep: impl FnMut(ElementId) -> bool) {
    let gone: Vec<ElementId> = c.keys().filter(|id| !keep(**id)).copied().collect();
    for id in gone {
        c.remove(&id);
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.cache.load().len();
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
        Host::with_capacity(sources, CACHED_MAX)
    }

    /// A host that caches at most `cached_max` sandboxes (at least one).
    pub fn with_capacity(sources: Arc<dyn Sources>, cached_max: usize) -> Result<Host, LoadError> {
        crate::sandbox::check_build()?;
        Ok(Host {
            sources,
            cache: ArcSwap::from_pointee(OrdMap::new()),
            writer: Mutex::new(()),
            cached_max: cached_max.max(1),
        })
    }

    /// Sandboxes cached now.
    pub fn cached(&self) -> usize {
        self.cache.load().len()
    }

    /// Replaces the cache map with `f` of it.
    fn update(&self, f: impl FnOnce(&mut Cache)) {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = Cache::clone(&self.cache.load());
        f(&mut c);
        self.cache.store(Arc::new(c));
    }

    /// Drops cached sandboxes of elements for which `keep` is false.
    pub fn retain(&self, mut keep: impl FnMut(ElementId) -> bool) {
        self.update(|c| retain(c, &mut keep));
    }

    /// Drops sandboxes until at most `keep` remain: first those of elements
    /// that have no script in `state`, then the least recently used.
    fn trim(c: &mut Cache, state: &State, keep: usize) {
        retain(c, |id| state.scripted.contains(&id));
        if c.len() > keep {
            let mut by_age: Vec<(u64, ElementId)> = c
                .iter()
                .map(|(id, e)| (e.used_tick.load(Ordering::Relaxed), *id))
                .collect();
            by_age.sort_unstable();
            for (_, id) in by_age.iter().take(c.len() - keep) {
                c.remove(id);
            }
        }
    }

    /// The cached entry for `call`'s script, if its source and limits are
    /// current. Borrowed from `cache`: a lookup writes nothing shared (no
    /// reference count).
    fn lookup<'c>(cache: &'c Cache, call: &ScriptCall<'_>, limits: &Limits) -> Option<&'c Entry> {
        let e = cache.get(&call.script)?;
        if e.source != call.slot.source || e.limits != *limits {
            return None;
        }
        e.used_tick.store(call.tick, Ordering::Relaxed);
        Some(e)
    }

    /// Loads `call`'s script into a new sandbox and caches it.
    fn load(&self, call: &ScriptCall<'_>, limits: &Limits) -> Result<Arc<Entry>, ScriptFault> {
        let (script, source) = (call.script, call.slot.source);
        let text = self
            .sources
            .source(&source)
            .filter(|t| hash_source(t) == source)
            .ok_or_else(|| ScriptFault::MissingSource(metatopia_sim::hex(&source)))?;
        let sandbox = Sandbox::new(&text, script, limits).map_err(|e| e.to_string());
        let entry = Arc::new(Entry {
            source,
            limits: limits.clone(),
            used_tick: AtomicU64::new(call.tick),
            licence_ids: licence::ids(&text),
            sandbox: Mutex::new(sandbox),
            next: Hot::default(),
        });
        let cached_max = self.cached_max;
        self.update(|c| {
            if c.len() >= cached_max && !c.contains_key(&script) {
                // Trim to three quarters so that trimming is rare.
                Host::trim(c, call.state, cached_max - cached_max / 4 - 1);
            }
            c.insert(script, entry.clone());
        });
        Ok(entry)
    }
}

impl Entry {
    /// The allow-list may change after upload; a script whose licence the
    /// region no longer accepts stops running.
    fn check_licence(&self, allowed: &[String]) -> Result<(), ScriptFault> {
        if self.licence_ids.is_empty() {
            return Err(ScriptFault::Error(
                "the script has no valid SPDX-License-Identifier line".into(),
            ));
        }
        if let Some(id) = self.licence_ids.iter().find(|id| !allowed.contains(id)) {
            return Err(ScriptFault::Error(format!(
                "licence {id:?} is not accepted in this region; accepted: {}",
                allowed.join(", ")
            )));
        }
        Ok(())
    }

    /// What a call of this entry touches first, for [`Prefetcher::hand_back`]:
    /// `data` (the script's slot in the sim's state and the `state` bytes
    /// its next call will read), this entry, its licence list and the hot
    /// memory of its Lua state. Writes them to `out`, returns how many.
    fn hot_lines(
        &self,
        sandbox: &Sandbox,
        data: [*const std::ffi::c_void; 2],
        out: &mut [*const std::ffi::c_void; HOT_MAX],
    ) -> usize {
        out[..2].copy_from_slice(&data);
        let start = std::ptr::from_ref(self).cast::<u8>();
        let lines = std::mem::size_of::<Entry>().div_ceil(64);
        let mut n = 2;
        for i in 0..lines.min(HOT_MAX / 4) {
            out[n] = start.wrapping_add(64 * i).cast();
            n += 1;
        }
        out[n] = self.licence_ids.as_ptr().cast();
        n += 1;
        if let Some(id) = self.licence_ids.first() {
            out[n] = id.as_ptr().cast();
            n += 1;
        }
        let (_, rest) = out.split_at_mut(n);
        let mut lua = [std::ptr::null(); HOT_MAX];
        let k = sandbox.hot_lines(&mut lua).min(rest.len());
        rest[..k].copy_from_slice(&lua[..k]);
        n + k
    }
}

impl ScriptHost for Host {
    fn run(&self, call: &ScriptCall<'_>) -> Result<ScriptOutput, ScriptFault> {
        let limits = Limits::from_settings(&call.state.settings);
        // Held for the call: the entry is borrowed from it.
        let cache = self.cache.load();
        let loaded;
        let entry = match Host::lookup(&cache, call, &limits) {
            Some(e) => e,
            None => {
                loaded = self.load(call, &limits)?;
                &*loaded
            }
        };
        let prefetch = Prefetcher::start(&entry.next);
        let Ok(guard) = entry.sandbox.lock() else {
            // A panic left this sandbox in an unknown state: rebuild.
            self.update(|c| {
                c.remove(&call.script);
            });
            return Err(ScriptFault::Error(
                "the script's sandbox was reset after an internal error".into(),
            ));
        };
        let sandbox = guard.as_ref().map_err(|e| ScriptFault::Error(e.clone()))?;
        entry.check_licence(&call.state.settings.script_licences)?;
        let fresh = sandbox.is_fresh();
        let result = prefetch.around(|| sandbox.run(call, &limits));
        // Where the next call's stored `state` will be: the bytes this call
        // returns (the sim keeps them as they are), or the ones it read.
        let state = match &result {
            Ok(ScriptOutput {
                state: Some(bytes), ..
            }) => bytes.as_ptr(),
            _ => call.slot.state.as_ptr(),
        };
        let mut hot = [std::ptr::null(); HOT_MAX];
        let data = [std::ptr::from_ref(call.slot).cast(), state.cast()];
        let n = entry.hot_lines(sandbox, data, &mut hot);
        prefetch.hand_back(call.script, &hot[..n], |prev| {
            cache.get(&prev).map(|e| &e.next)
        });
        if matches!(result, Err(ScriptFault::MemoryCap(_))) && !fresh {
            // Near the cap, a sandbox's history (its Lua bookkeeping) could
            // decide the outcome. The fresh sandbox's result is canonical:
            // confirm the fault there. The rebuilt sandbox is fresh, so
            // this recursion ends after one more call.
            drop(guard);
            self.update(|c| {
                c.remove(&call.script);
            });
            return self.run(call);
        }
        result
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
    Sandbox::new(
        text,
        script.unwrap_or_else(|| state.root()),
        &Limits::from_settings(&state.settings),
    )?;
    Ok(licence)
}
