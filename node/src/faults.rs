//! Script faults the node has seen: counted, logged, and the most recent
//! ones kept (with the sandbox's message) for the state view.
//!
//! The tick thread publishes every committed tick with its events
//! ([`world::Handle::subscribe`]); [`follow`] reads that stream on a task.
//! The ring is bounded ([`RECENT_MAX`]); ticks the task missed because it
//! lagged are counted ([`Faults::ticks_missed`]) and warned about, never
//! waited for. The sim state itself keeps each script's fault count and
//! suspended flag; this ring adds the messages, which the state does not
//! hold, and starts empty when the node starts.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use metatopia_sim::input::Event;
use metatopia_sim::{ElementId, PlayerId};

use crate::world;

/// Most recent faults kept.
pub const RECENT_MAX: usize = 64;

/// One script fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// The tick whose scripts faulted.
    pub tick: u64,
    /// The script's element.
    pub script: ElementId,
    /// Its owner.
    pub owner: Option<PlayerId>,
    /// What went wrong, as the sandbox says it (e.g. "instruction budget
    /// exhausted (1000000 instructions)").
    pub error: String,
    /// Whether the script is suspended from this fault on.
    pub suspended: bool,
}

/// Faults seen since the node started.
#[derive(Debug, Default)]
pub struct Faults {
    recent: Mutex<VecDeque<Fault>>,
    /// Script faults.
    pub total: AtomicU64,
    /// Faults that suspended their script.
    pub suspensions: AtomicU64,
    /// Committed ticks this follower skipped because it fell behind (their
    /// faults are neither counted nor kept).
    pub ticks_missed: AtomicU64,
}

impl Faults {
    /// Records the faults among `events` of tick `tick`: logs, counts and
    /// keeps them (dropping the oldest beyond [`RECENT_MAX`]).
    pub fn record(&self, tick: u64, events: &[Event]) {
        for e in events {
            let Event::ScriptFault {
                script,
                owner,
                error,
                suspended,
            } = e
            else {
                continue;
            };
            self.total.fetch_add(1, Ordering::Relaxed);
            if *suspended {
                self.suspensions.fetch_add(1, Ordering::Relaxed);
                warn!(tick, script = %script, owner = ?owner, error = %error, "script fault: script suspended");
            } else {
                info!(tick, script = %script, owner = ?owner, error = %error, "script fault");
            }
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT_MAX {
                recent.pop_front();
            }
            recent.push_back(Fault {
                tick,
                script: *script,
                owner: *owner,
                error: error.clone(),
                suspended: *suspended,
            });
        }
    }

    /// The recent faults, oldest first.
    pub fn recent(&self) -> Vec<Fault> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }
}

/// Follows the world's committed ticks on a task until the world stops,
/// recording their faults into the returned [`Faults`].
pub fn follow(world: &world::Handle) -> Arc<Faults> {
    let faults = Arc::new(Faults::default());
    let mut ticks = world.subscribe();
    let out = faults.clone();
    tokio::spawn(async move {
        loop {
            match ticks.recv().await {
                Ok(published) => {
                    // The published sim is after the tick: its events are
                    // those of the tick before.
                    let tick = published.sim.tick().saturating_sub(1);
                    faults.record(tick, &published.events);
                }
                Err(RecvError::Lagged(n)) => {
                    faults.ticks_missed.fetch_add(n, Ordering::Relaxed);
                    warn!(
                        missed = n,
                        "fault follower fell behind: ticks skipped, their faults not recorded"
                    );
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(n: u64, suspended: bool) -> Event {
        Event::ScriptFault {
            script: ElementId::new(1, n),
            owner: None,
            error: format!("script error: boom {n}"),
            suspended,
        }
    }

    #[test]
    fn keeps_the_newest_and_counts_all() {
        let f = Faults::default();
        let events: Vec<Event> = (0..RECENT_MAX as u64 + 3)
            .map(|n| fault(n, n == 1))
            .chain([Event::TempAdmin { player: None }])
            .collect();
        f.record(7, &events);
        let recent = f.recent();
        assert_eq!(recent.len(), RECENT_MAX);
        assert_eq!(recent[0].script, ElementId::new(1, 3));
        assert_eq!(
            recent.last().unwrap().error,
            format!("script error: boom {}", RECENT_MAX + 2)
        );
        assert_eq!(recent[0].tick, 7);
        assert_eq!(f.total.load(Ordering::Relaxed), RECENT_MAX as u64 + 3);
        assert_eq!(f.suspensions.load(Ordering::Relaxed), 1);
    }
}
