//! A small world for script tests: one player who owns scripted objects.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use metatopia_scripts::codec::{self, Data};
use metatopia_scripts::{Host, MemorySources};
use metatopia_sim::input::{Event, InputKind};
use metatopia_sim::state::{Settings, State};
use metatopia_sim::step::TickReport;
use metatopia_sim::testing::Driver;
use metatopia_sim::{ElementId, PlayerId, RegionId, Vec3};

pub const OWNER: PlayerId = PlayerId([7; 32]);
pub const LICENCE: &str = "-- SPDX-License-Identifier: AGPL-3.0-or-later\n";

pub struct World {
    pub driver: Driver,
    pub host: Host,
    pub sources: Arc<MemorySources>,
}

pub fn settings() -> Settings {
    Settings {
        script_instructions_max: 200_000,
        script_memory_bytes_max: 1024 * 1024,
        ..Settings::default()
    }
}

impl World {
    pub fn new() -> World {
        World::with_settings(settings())
    }

    pub fn with_settings(settings: Settings) -> World {
        let sources = Arc::new(MemorySources::new());
        let host = Host::new(sources.clone()).unwrap();
        let mut w = World {
            driver: Driver::new(State::new(RegionId(1), settings, &[OWNER])),
            host,
            sources,
        };
        w.tick(vec![InputKind::Join {
            name: "owner".into(),
        }]);
        w
    }

    pub fn tick(&mut self, inputs: Vec<InputKind>) -> TickReport {
        let inputs = inputs.into_iter().map(|k| (OWNER, k)).collect();
        self.driver.tick(&self.host, inputs)
    }

    pub fn object(&mut self, name: &str) -> ElementId {
        let before = self.driver.sim.state().next_counter;
        self.tick(vec![InputKind::Create {
            parent: None,
            name: name.into(),
            pos: Vec3::from_ints(10, 10, 0),
        }]);
        let id = ElementId::new(1, before);
        assert!(self.driver.sim.state().elements.contains_key(&id));
        id
    }

    /// Attaches `body` (the licence line is added) and returns the report.
    pub fn attach(&mut self, element: ElementId, body: &str) -> TickReport {
        let src = format!("{LICENCE}{body}");
        let source = self.sources.insert(&src);
        let r = self.tick(vec![InputKind::AttachScript { element, source }]);
        assert_eq!(r.rejected, 0, "{:?}", r.events);
        r
    }

    pub fn scripted(&mut self, name: &str, body: &str) -> ElementId {
        let id = self.object(name);
        self.attach(id, body);
        id
    }

    pub fn touch(&mut self, elements: &[ElementId]) -> TickReport {
        self.tick(
            elements
                .iter()
                .map(|e| InputKind::Touch { element: *e })
                .collect(),
        )
    }

    pub fn state_of(&self, element: ElementId) -> Data {
        let el = self.driver.sim.state().elements.get(&element).unwrap();
        codec::decode(&el.script.as_ref().unwrap().state).unwrap()
    }

    pub fn field(&self, element: ElementId, key: &str) -> Option<Data> {
        match self.state_of(element) {
            Data::Table(entries) => entries
                .into_iter()
                .find(|(k, _)| *k == Data::Str(key.as_bytes().to_vec()))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn int(&self, element: ElementId, key: &str) -> Option<i64> {
        match self.field(element, key) {
            Some(Data::Int(i)) => Some(i),
            _ => None,
        }
    }

    pub fn text(&self, element: ElementId, key: &str) -> Option<String> {
        match self.field(element, key) {
            Some(Data::Str(s)) => Some(String::from_utf8(s).unwrap()),
            _ => None,
        }
    }
}

pub fn faults(r: &TickReport) -> Vec<(ElementId, String, bool)> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::ScriptFault {
                script,
                error,
                suspended,
                ..
            } => Some((*script, error.clone(), *suspended)),
            _ => None,
        })
        .collect()
}

pub fn chat(r: &TickReport) -> Vec<String> {
    r.events
        .iter()
        .filter_map(|e| match e {
            Event::Chat { line, .. } => Some(line.text.clone()),
            _ => None,
        })
        .collect()
}

pub const COUNTER: &str = r#"
function on_touch(by, element)
  state.n = (state.n or 0) + 1
  say("count " .. state.n)
end
"#;

/// A region with one object, for calling a `Sandbox` directly.
pub fn one_object() -> (State, ElementId) {
    let mut world = State::new(RegionId(1), Settings::default(), &[]);
    let root = world.root();
    let me = world
        .add_child(
            root,
            metatopia_sim::state::ElementKind::Object,
            None,
            "o",
            Vec3::from_ints(1, 1, 1),
        )
        .unwrap();
    (world, me)
}

/// Calls `sandbox` (the script of `me`) with one timer event and `stored`
/// as its saved `state`.
pub fn timer_call(
    sandbox: &metatopia_scripts::Sandbox,
    world: &State,
    me: ElementId,
    stored: Vec<u8>,
    limits: &metatopia_scripts::Limits,
) -> Result<metatopia_sim::script::ScriptOutput, metatopia_sim::script::ScriptFault> {
    use metatopia_sim::script::{ScriptCall, ScriptEvent, ScriptEventKind};
    let slot = metatopia_sim::state::ScriptSlot {
        source: [0; 32],
        state: stored,
        faults: 0,
        suspended: false,
    };
    let inbox = [ScriptEvent {
        id: 0,
        kind: ScriptEventKind::Timer { timer: 1 },
    }];
    sandbox.run(
        &ScriptCall {
            state: world,
            script: me,
            slot: &slot,
            inbox: &inbox,
            tick: 1,
            seed: [1; 32],
        },
        limits,
    )
}
