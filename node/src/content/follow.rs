//! Keeping the store in step with the region: every asset an element
//! references (its mesh, its texture) is fetched from peers when the
//! store lacks it, after the first state (the joined snapshot) and as new
//! references commit.
//!
//! A pass every [`PASS_MS`] ms looks only at the elements that changed
//! since the last pass, and at hashes with no file in the store ([`metatopia_sim::table::Table::changes`]). A hash
//! no peer could give is asked for again after [`RETRY_MS`] ms; at most
//! [`peer::FETCHES_MAX`] fetches run at once and at most [`WANTED_MAX`]
//! hashes wait.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use metatopia_sim::State;
use metatopia_sim::table::Change;
use tracing::warn;

use super::Hash;
use super::peer::{self, Peers};

/// Milliseconds between passes.
pub const PASS_MS: u64 = 250;

/// Milliseconds before a hash no peer gave is asked for again.
pub const RETRY_MS: u64 = 5_000;

/// Most hashes waiting to be fetched; past it new references wait for a
/// later pass over the whole region.
pub const WANTED_MAX: usize = 65_536;

/// The hashes `new` references that `old` did not (all of them when
/// there is no `old`).
pub fn new_references(old: Option<&State>, new: &State) -> BTreeSet<Hash> {
    let mut out = BTreeSet::new();
    match old {
        None => {
            for e in new.elements.values() {
                out.extend(e.assets.hashes());
            }
        }
        Some(old) => {
            for c in new.elements.changes(&old.elements) {
                if let Change::Set(_, e) = c {
                    out.extend(e.assets.hashes());
                }
            }
        }
    }
    out
}

/// Fetches the region's missing assets until the world's handle stops
/// publishing (runs forever on a live node; spawn it).
pub async fn follow(peers: Peers, world: crate::world::Handle) {
    let mut seen: Option<State> = None;
    // Hash -> when to ask next.
    let mut wanted: BTreeMap<Hash, Instant> = BTreeMap::new();
    let mut overflowed = false;
    let mut running = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(PASS_MS));
    loop {
        tick.tick().await;
        let state = world.latest().sim.state().clone();
        let fresh = if overflowed {
            overflowed = false;
            new_references(None, &state)
        } else {
            new_references(seen.as_ref(), &state)
        };
        seen = Some(state);
        let now = Instant::now();
        for h in fresh {
            // A file already there is not fetched (nor hashed: a restart
            // of a node with many assets must not read them all); a
            // damaged one is repaired when it is asked for.
            if matches!(
                tokio::fs::try_exists(peers.store().path(&h)).await,
                Ok(true)
            ) {
                continue;
            }
            if wanted.len() >= WANTED_MAX {
                overflowed = true;
                warn!("{WANTED_MAX} assets wait to be fetched: the rest on a later pass");
                break;
            }
            wanted.entry(h).or_insert(now);
        }
        while let Some(done) = running.try_join_next() {
            if let Ok((h, ok)) = done {
                if ok {
                    wanted.remove(&h);
                } else {
                    wanted.insert(h, now + Duration::from_millis(RETRY_MS));
                }
            }
        }
        let due: Vec<Hash> = wanted
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(h, _)| *h)
            .take(peer::FETCHES_MAX.saturating_sub(running.len()))
            .collect();
        for h in due {
            // Not due again until it finishes (it is put back then).
            wanted.insert(h, now + Duration::from_secs(3600));
            let p = peers.clone();
            running.spawn(async move {
                match p.fetch(h).await {
                    Ok(_) => (h, true),
                    Err(e) => {
                        warn!(error = %e, "asset fetch failed; trying again later");
                        (h, false)
                    }
                }
            });
        }
    }
}
