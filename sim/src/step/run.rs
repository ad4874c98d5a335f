//! Step 6, second half: the scripts run in parallel (rayon) against the
//! state after step 5, which none can change; their outputs then merge
//! (merge.rs).

use crate::id::ElementId;
use crate::order;
use crate::script::{ScriptCall, ScriptFault, ScriptHost};

use super::Work;

/// Script calls per rayon task at most: a call is microseconds of work.
const CALLS_PER_TASK_MAX: usize = 16;

/// Script calls per rayon task for `calls` calls: up to
/// [`CALLS_PER_TASK_MAX`], but small enough that a few slow scripts still
/// spread over the pool (at least four tasks a thread). Only how the calls
/// are scheduled depends on the number of threads, never a result.
fn calls_per_task(calls: usize) -> usize {
    let tasks = 4 * rayon::current_num_threads().max(1);
    (calls / tasks).clamp(1, CALLS_PER_TASK_MAX)
}

impl Work<'_> {
    /// Steps 6 and 7.
    pub(super) fn run_scripts(&mut self, seed: &[u8; 32], host: &dyn ScriptHost) {
        if self.queued.is_empty() {
            return;
        }
        let (calls, inboxes) = self.inboxes(seed);
        self.report.script_calls = calls.len() as u32;
        let state = &*self.state;
        let tick = self.state.tick;
        let ids: Vec<ElementId> = calls.iter().map(|(script, _)| *script).collect();
        // Each result comes with whether the script's fault count needs
        // resetting on success (no other output changes a script's own slot
        // during the merge).
        let results =
            state
                .elements
                .par_map_sorted(&ids, calls_per_task(ids.len()), |i, script, element| {
                    let Some(slot) = element.and_then(|e| e.script.as_ref()) else {
                        return (false, Err(ScriptFault::Rejected("script vanished".into())));
                    };
                    let result = host.run(&ScriptCall {
                        state,
                        script: *script,
                        slot,
                        inbox: &inboxes[calls[i].1.clone()],
                        tick,
                        seed: order::script_seed(seed, *script),
                    });
                    (slot.faults > 0, result)
                });
        drop(inboxes);
        // Most scripts set a timer (the 10k scene: every one).
        self.new_timers.reserve(calls.len());
        for ((script, _), (had_faults, result)) in calls.into_iter().zip(results) {
            let result = result.and_then(|out| self.check_output(script, &out).map(|()| out));
            match result {
                Ok(out) => self.apply_output(script, out, had_faults),
                Err(fault) => self.fault(script, fault),
            }
        }
        self.state
            .timers
            .extend(std::mem::take(&mut self.new_timers));
        // The merge left the hashes of the elements it changed to be
        // computed; most are the scripts' own (new state, faults), so
        // those are hashed here in parallel rather than one by one in the
        // digest.
        self.state.elements.rehash(&ids);
    }
}
