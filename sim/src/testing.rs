//! A script host written in Rust, for tests, benchmarks and examples.
//!
//! [`RuleHost`] maps source hashes to small built-in behaviours
//! ([`Rule`]). It follows the host contract exactly (pure function of the
//! call, canonical inbox order, all-or-nothing outputs), so the sim's tick
//! can be tested before, and independently of, the Lua runtime.

use std::collections::BTreeMap;

use crate::fx::{Fx, Vec3};
use crate::id::ElementId;
use crate::script::{ScriptCall, ScriptEventKind, ScriptFault, ScriptHost, ScriptOutput, Write};

/// A built-in behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Keeps in its state the order in which it saw its inbox: one line per
    /// event, `kind:detail`, so tests can read the order back.
    Journal,
    /// Counts events in its state (a decimal number) and says the count.
    Counter,
    /// Moves its element by +1 on x per event.
    Mover,
    /// Tries to move `target`, which it does not own: every output is rejected.
    Trespasser {
        /// The element it tries to move.
        target: ElementId,
    },
    /// Fails every call with a script error.
    Crash,
    /// Sends each event's description to `target` and sets a timer.
    Relay {
        /// The receiving script.
        target: ElementId,
    },
    /// Counts its events in its state (a decimal number) and sets timer 1
    /// for the next tick: the script of the 10k-script benches.
    Ticker,
    /// Sends each event's description (but timers') to `target` in
    /// `region` (a message to another region).
    RemoteRelay {
        /// The receiving script's region.
        region: crate::id::RegionId,
        /// The receiving script.
        target: ElementId,
    },
    /// Burns work proportional to `n` (a loop of hashes), then counts.
    Busy {
        /// Rounds of work per event.
        n: u32,
    },
}

/// A host that runs [`Rule`]s keyed by source hash.
#[derive(Debug, Clone, Default)]
pub struct RuleHost {
    rules: BTreeMap<[u8; 32], Rule>,
}

impl RuleHost {
    /// An empty host.
    pub fn new() -> RuleHost {
        RuleHost::default()
    }

    /// Registers a rule and returns the source hash that selects it.
    pub fn add(&mut self, name: &str, rule: Rule) -> [u8; 32] {
        let hash = *blake3::hash(name.as_bytes()).as_bytes();
        self.rules.insert(hash, rule);
        hash
    }
}

fn describe(kind: &ScriptEventKind) -> String {
    match kind {
        ScriptEventKind::Touched { by, element } => format!("touch:{by:?}:{element}"),
        ScriptEventKind::Heard { text, .. } => format!("heard:{text}"),
        ScriptEventKind::Message { from, body } => format!("msg:{from}:{body}"),
        ScriptEventKind::Timer { timer } => format!("timer:{timer}"),
        ScriptEventKind::Entered { player } => format!("enter:{player:?}"),
        ScriptEventKind::Left { player } => format!("left:{player:?}"),
        ScriptEventKind::Crossed { player, to } => format!("crossed:{player:?}:{to}"),
        ScriptEventKind::Collision { element, other } => format!("hit:{element}:{other}"),
        ScriptEventKind::RemoteMessage { region, from, body } => {
            format!("rmsg:{region}:{from}:{body}")
        }
    }
}

fn count_of(state: &[u8]) -> u64 {
    std::str::from_utf8(state)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl ScriptHost for RuleHost {
    fn run(&self, call: &ScriptCall<'_>) -> Result<ScriptOutput, ScriptFault> {
        let rule = self
            .rules
            .get(&call.slot.source)
            .ok_or_else(|| ScriptFault::MissingSource(crate::hex(&call.slot.source)))?;
        let mut out = ScriptOutput::default();
        match rule {
            Rule::Journal => {
                let mut text = String::from_utf8_lossy(&call.slot.state).into_owned();
                for e in call.inbox {
                    text.push_str(&describe(&e.kind));
                    text.push('\n');
                }
                out.state = Some(text.into_bytes());
            }
            Rule::Counter => {
                let n = count_of(&call.slot.state) + call.inbox.len() as u64;
                out.state = Some(n.to_string().into_bytes());
                out.says.push((format!("count {n}"), None));
            }
            Rule::Mover => {
                let pos = call
                    .state
                    .elements
                    .get(&call.script)
                    .map(|e| e.pos)
                    .unwrap_or_default();
                let steps = Fx::from_int(call.inbox.len() as i32);
                out.writes.push(Write::SetPos {
                    element: call.script,
                    pos: pos.saturating_add(Vec3::new(steps, Fx::ZERO, Fx::ZERO)),
                });
            }
            Rule::Trespasser { target } => {
                out.writes.push(Write::SetPos {
                    element: *target,
                    pos: Vec3::from_ints(1, 1, 1),
                });
                out.state = Some(b"should never be stored".to_vec());
            }
            Rule::Crash => return Err(ScriptFault::Error("crash rule always fails".into())),
            Rule::Relay { target } => {
                for e in call.inbox {
                    if !matches!(e.kind, ScriptEventKind::Timer { .. }) {
                        out.sends.push((*target, describe(&e.kind)));
                    }
                }
                out.timers.push((7, 2));
            }
            Rule::RemoteRelay { region, target } => {
                for e in call.inbox {
                    if !matches!(e.kind, ScriptEventKind::Timer { .. }) {
                        out.remote_sends.push((*region, *target, describe(&e.kind)));
                    }
                }
            }
            Rule::Ticker => {
                let n = count_of(&call.slot.state) + call.inbox.len() as u64;
                out.state = Some(n.to_string().into_bytes());
                out.timers.push((1, 1));
            }
            Rule::Busy { n } => {
                let mut h = call.seed;
                for _ in 0..(*n as u64).saturating_mul(call.inbox.len() as u64) {
                    h = *blake3::hash(&h).as_bytes();
                }
                let n = count_of(&call.slot.state) + u64::from(h[0] & 1) + 1;
                out.state = Some(n.to_string().into_bytes());
            }
        }
        Ok(out)
    }
}

/// Drives a [`Sim`](crate::step::Sim) tick by tick: numbers each player's
/// inputs and advances sim time by `tick_ms` per tick.
#[derive(Debug, Clone)]
pub struct Driver {
    /// The sim being driven.
    pub sim: crate::step::Sim,
    /// Sim time of the next tick.
    pub time_ms: u64,
    /// Sim time per tick.
    pub tick_ms: u64,
    seqs: BTreeMap<crate::id::PlayerId, u64>,
}

impl Driver {
    /// A driver for `state`, at sim time 0, 50 ms per tick.
    pub fn new(state: crate::state::State) -> Driver {
        Driver {
            sim: crate::step::Sim::new(state),
            time_ms: 0,
            tick_ms: 50,
            seqs: BTreeMap::new(),
        }
    }

    /// The input `kind` from `player`, with the player's next sequence number.
    pub fn input(
        &mut self,
        player: crate::id::PlayerId,
        kind: crate::input::InputKind,
    ) -> crate::input::Input {
        let seq = self.seqs.entry(player).or_insert(0);
        *seq += 1;
        crate::input::Input {
            player,
            seq: *seq,
            kind,
        }
    }

    /// Runs one tick with these inputs (numbered in order).
    pub fn tick(
        &mut self,
        host: &dyn ScriptHost,
        inputs: Vec<(crate::id::PlayerId, crate::input::InputKind)>,
    ) -> crate::step::TickReport {
        let inputs = inputs.into_iter().map(|(p, k)| self.input(p, k)).collect();
        self.tick_raw(host, inputs)
    }

    /// Runs one tick with these inputs as they are.
    pub fn tick_raw(
        &mut self,
        host: &dyn ScriptHost,
        inputs: Vec<crate::input::Input>,
    ) -> crate::step::TickReport {
        let batch = crate::input::Batch {
            tick: self.sim.tick(),
            time_ms: self.time_ms,
            inputs,
        };
        self.time_ms = self.time_ms.saturating_add(self.tick_ms);
        self.sim
            .step(&batch, host)
            .expect("the driver always sends the next tick at a later time")
    }
}

/// A region of `n` scripted objects, all running the source with hash
/// `source`, each with timer 1 due at tick 0: the scene of the
/// `tick_10k_scripts` benches (sim and scripts) and of the scripts crate's
/// `tick10k` example.
pub fn timer_region(n: i32, source: [u8; 32]) -> crate::state::State {
    use crate::state::{ElementKind, ScriptSlot, Settings, State};
    let mut state = State::new(crate::id::RegionId(1), Settings::default(), &[]);
    let root = state.root();
    for i in 0..n {
        let pos = Vec3::from_ints(i % 256, i / 256, 0);
        let Ok(id) = state.add_child(root, ElementKind::Object, None, "s", pos) else {
            break;
        };
        state.elements.update(&id, |e| {
            e.script = Some(ScriptSlot {
                source,
                state: Vec::new(),
                faults: 0,
                suspended: false,
            })
        });
        state.scripted.insert(id);
        state.timers.insert((0, id, 1));
    }
    state
}

/// What the Lua script `state.n = (state.n or 0) + 1; set_timer(1, 1)`
/// returns, without Lua: one timer and a changed 8-byte state. The host of
/// the sim-only 10k-script benches and of `tick10k_sim`.
#[derive(Debug)]
pub struct TimerHost;

impl ScriptHost for TimerHost {
    fn run(&self, call: &ScriptCall<'_>) -> Result<ScriptOutput, ScriptFault> {
        Ok(ScriptOutput {
            timers: vec![(1, 1)],
            state: Some(call.tick.to_le_bytes().to_vec()),
            ..Default::default()
        })
    }
}

/// Runs `f` on a rayon pool of `threads` threads (tests that compare
/// results across thread counts). Panics if the pool cannot be built.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
        .install(f)
}

/// Steps `sim` one tick with no inputs, at 20 Hz sim time (the loop of the
/// `tick_10k_scripts` benches and `tick10k`). Panics if the sim refuses.
pub fn step_idle(sim: &mut crate::step::Sim, host: &dyn ScriptHost) -> crate::step::TickReport {
    let t = sim.tick();
    let batch = crate::input::Batch {
        tick: t,
        time_ms: t * 50,
        inputs: vec![],
    };
    sim.step(&batch, host)
        .expect("an empty batch at the sim's own tick is valid")
}

/// The reasons of the `Rejected` events among `events`, in order.
pub fn rejections(events: &[crate::input::Event]) -> Vec<crate::input::Rejection> {
    events
        .iter()
        .filter_map(|e| match e {
            crate::input::Event::Rejected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}
