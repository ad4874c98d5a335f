//! Scripts and physics in one region tick (physics::Scene over a one-region
//! cluster with the Lua host): a collision reaches `on_collision`, and a
//! script's `impulse` and `set_velocity` become physics commands for its own
//! bodies only, all or nothing.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use metatopia_physics::scene::{self, Scene};
use metatopia_scripts::codec::{self, Data};
use metatopia_scripts::{Host, MemorySources};
use metatopia_sim::input::{Event, InputKind};
use metatopia_sim::{ElementId, Fx, RegionId, Vec3};

const LICENCE: &str = "-- SPDX-License-Identifier: AGPL-3.0-or-later\n";

struct World {
    scene: Scene,
    host: Host,
    sources: Arc<MemorySources>,
    region: RegionId,
}

impl World {
    fn new() -> World {
        let sources = Arc::new(MemorySources::new());
        let mut w = World {
            scene: Scene::grid(1, 1, 64, |_| {}),
            host: Host::new(sources.clone()).unwrap(),
            sources,
            region: RegionId(1),
        };
        w.step();
        w
    }

    fn step(&mut self) -> Vec<Event> {
        let r = self.scene.step(&self.host).unwrap();
        r.regions.into_values().flat_map(|r| r.sim.events).collect()
    }

    fn state(&self) -> &metatopia_sim::State {
        self.scene
            .cluster
            .region(self.region)
            .unwrap()
            .sim()
            .state()
    }

    /// Spawns a ball at `pos` moving at `vel` and returns its id.
    fn ball(&mut self, parent: Option<ElementId>, pos: Vec3, vel: Vec3) -> ElementId {
        let before = self.state().next_counter;
        self.scene
            .spawn(parent, pos, scene::ball(500), vel)
            .unwrap();
        self.step();
        let id = ElementId::new(self.region.0, before);
        assert!(self.state().bodies.contains_key(&id), "{id} spawned");
        id
    }

    fn attach(&mut self, element: ElementId, body: &str) {
        let source = self.sources.insert(&format!("{LICENCE}{body}"));
        self.scene
            .queue(self.region, InputKind::AttachScript { element, source });
        self.step();
    }

    fn field(&self, element: ElementId, key: &str) -> Option<Data> {
        let slot = self.state().elements[&element].script.clone().unwrap();
        match codec::decode(&slot.state).unwrap() {
            Data::Table(e) => e
                .into_iter()
                .find(|(k, _)| *k == Data::Str(key.as_bytes().to_vec()))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn vel(&self, id: ElementId) -> Vec3 {
        self.scene
            .cluster
            .region(self.region)
            .unwrap()
            .space()
            .motion(id)
            .unwrap()
            .vel
    }
}

fn faults(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ScriptFault { error, .. } => Some(error.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_collision_reaches_on_collision_and_the_script_steers_its_body() {
    let mut w = World::new();
    let a = w.ball(None, Vec3::from_ints(20, 20, 20), Vec3::from_ints(4, 0, 0));
    let b = w.ball(None, Vec3::from_ints(24, 20, 20), Vec3::from_ints(-4, 0, 0));
    w.attach(
        a,
        r#"
function on_collision(element, other)
  state.hits = (state.hits or 0) + 1
  state.element, state.other = element, other
  set_velocity(me, fx(0), fx(0), fx(20))
end
function on_touch()
  impulse(me, fx(0), fx(0), fx(100))
end
"#,
    );
    let mut ticks = 0;
    while w.field(a, "hits").is_none() {
        let events = w.step();
        assert!(faults(&events).is_empty(), "{:?}", faults(&events));
        ticks += 1;
        assert!(ticks < 100, "no collision reached the script");
    }
    assert_eq!(
        w.field(a, "element"),
        Some(Data::Str(a.to_string().into_bytes()))
    );
    assert_eq!(
        w.field(a, "other"),
        Some(Data::Str(b.to_string().into_bytes()))
    );
    // The velocity the handler set reached the physics world this tick:
    // up, less one step of gravity and the contact still being resolved
    // (it was 4 m/s along x, 0 up).
    let v = w.vel(a);
    assert!(v.z > Fx::from_int(15) && v.z <= Fx::from_int(20), "{v}");
    assert!(v.x.saturating_abs() < Fx::from_int(2), "{v}");
    // A touch pushes it further up.
    let before = w.vel(a).z;
    w.scene.queue(w.region, InputKind::Touch { element: a });
    let events = w.step();
    assert!(faults(&events).is_empty(), "{:?}", faults(&events));
    assert!(w.vel(a).z > before, "{} then {}", before, w.vel(a).z);
}

#[test]
fn scripts_push_only_their_own_bodies_all_or_nothing() {
    let mut w = World::new();
    let a = w.ball(None, Vec3::from_ints(10, 10, 40), Vec3::from_ints(0, 0, 0));
    let other = w.ball(None, Vec3::from_ints(40, 40, 40), Vec3::from_ints(0, 0, 0));
    w.attach(
        a,
        &format!(
            r#"
function on_touch()
  state.tried = true
  impulse("{other}", fx(0), fx(0), fx(100))
end
"#
        ),
    );
    w.scene.queue(w.region, InputKind::Touch { element: a });
    let events = w.step();
    let f = faults(&events);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(
        f[0].contains("is not this script's element or one of its parts"),
        "{f:?}"
    );
    assert_eq!(w.field(a, "tried"), None, "a faulted call changes nothing");
    // Floats are refused with advice to use fx.
    let _ = w.step();
    w.attach(a, "function on_touch() set_velocity(me, 1.5, 0, 0) end");
    w.scene.queue(w.region, InputKind::Touch { element: a });
    let f = faults(&w.step());
    assert!(f.iter().any(|e| e.contains("use fx(")), "{f:?}");
}
