//! The script API between regions: `send(target, text, region)` hands a
//! message to the region to carry to another region (to this region's own
//! id it is an ordinary send), and `on_message(from, body, region)` gets
//! one from another region with the sender's region (nil for a local
//! message). Bad arguments are errors that say why.

#![allow(clippy::unwrap_used)]

mod common;

use common::{World, faults};
use metatopia_sim::ElementId;
use metatopia_sim::RegionId;
use metatopia_sim::input::Batch;
use metatopia_sim::physics::PhysicsInbox;
use metatopia_sim::remote::{Outbound, Remote};

#[test]
fn send_with_a_region_hands_the_message_out_and_to_this_region_stays_here() {
    let mut w = World::new();
    let sink = w.scripted(
        "sink",
        "function on_message(from, body, region) state.body = body; state.here = region == nil end",
    );
    let body = format!(
        "function on_touch() send('2.5', 'over there', 2); send('{sink}', 'right here', 1) end"
    );
    let src = w.scripted("src", &body);
    let r = w.touch(&[src]);
    assert!(faults(&r).is_empty(), "{:?}", faults(&r));
    assert_eq!(
        r.remote,
        vec![Outbound {
            to: Some(RegionId(2)),
            item: Remote::Message {
                from: src,
                to: ElementId::new(2, 5),
                body: "over there".into(),
            },
        }]
    );
    let r = w.tick(vec![]);
    assert!(faults(&r).is_empty(), "{:?}", faults(&r));
    assert_eq!(w.text(sink, "body").as_deref(), Some("right here"));
    assert_eq!(
        w.field(sink, "here"),
        Some(metatopia_scripts::codec::Data::Bool(true))
    );
}

#[test]
fn on_message_gets_the_sending_region_of_a_message_from_another_region() {
    let mut w = World::new();
    let sink = w.scripted(
        "sink",
        "function on_message(from, body, region) state.from = from; state.body = body; state.region = region end",
    );
    let d = &mut w.driver;
    let batch = Batch {
        tick: d.sim.tick(),
        time_ms: d.time_ms,
        inputs: Vec::new(),
    };
    let inbox = PhysicsInbox {
        remote: vec![(
            RegionId(2),
            Remote::Message {
                from: ElementId::new(2, 7),
                to: sink,
                body: "hi from 2".into(),
            },
        )],
        ..PhysicsInbox::default()
    };
    let r = d.sim.step_with_physics(&batch, &w.host, &inbox).unwrap();
    assert_eq!((r.remote_delivered, r.remote_refused), (1, 0));
    assert_eq!(w.text(sink, "from").as_deref(), Some("2.7"));
    assert_eq!(w.text(sink, "body").as_deref(), Some("hi from 2"));
    assert_eq!(w.int(sink, "region"), Some(2));
}

#[test]
fn bad_regions_and_empty_messages_to_other_regions_are_errors() {
    let mut w = World::new();
    for (call, why) in [
        ("send(me, 'x', 1.5)", "float"),
        ("send(me, 'x', -1)", "region id"),
        ("send(me, 'x', 'two')", "integer"),
        ("send(me, '', 2)", "cannot be empty"),
    ] {
        let src = w.scripted("bad", &format!("function on_touch() {call} end"));
        let r = w.touch(&[src]);
        let f = faults(&r);
        assert_eq!(f.len(), 1, "{call}: {f:?}");
        assert!(f[0].1.contains(why), "{call}: {}", f[0].1);
        assert!(r.remote.is_empty());
    }
}
