//! Chat lines and script messages between two regions (`Cluster::grid`:
//! region 1 is x in [0, 64), region 2 x in [64, 128)): a line said within
//! its radius of the border is heard over there, a script's message to an
//! element of the neighbour is delivered exactly once even when border
//! envelopes are lost (numbered, acknowledged, sent again),
//! an address that does not resolve is refused and counted, and a
//! neighbour that hears nothing for long has a bounded queue (the excess
//! dropped and counted) and at most 64 items an envelope.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use metatopia_physics::Cluster;
use metatopia_physics::cluster::ClusterReport;
use metatopia_physics::region::{REMOTE_QUEUE_MAX, RemoteCounts};
use metatopia_sim::input::{Event, Input, InputKind};
use metatopia_sim::physics::{BorderMessage, REMOTE_ITEMS_MAX};
use metatopia_sim::state::Settings;
use metatopia_sim::testing::{Rule, RuleHost};
use metatopia_sim::{ElementId, Fx, PlayerId, RegionId, Vec3};

const ALICE: PlayerId = PlayerId::from_byte(1);
const BOB: PlayerId = PlayerId::from_byte(2);
const R1: RegionId = RegionId(1);
const R2: RegionId = RegionId(2);

fn seed(default: u64) -> u64 {
    let s = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {s} (reproduce with SIM_SEED={s})");
    s
}

struct World {
    cluster: Cluster,
    host: RuleHost,
    seqs: BTreeMap<(RegionId, PlayerId), u64>,
}

impl World {
    /// Alice online in both regions (at x = 20 in region 1), Bob in
    /// region 2 at world x = 66.
    fn new() -> World {
        let settings = Settings {
            inputs_per_player_per_tick_max: 64,
            ..Settings::default()
        };
        let cluster = Cluster::grid(2, 1, 64, 256, &settings, &[ALICE], |_| {});
        let mut w = World {
            cluster,
            host: RuleHost::new(),
            seqs: BTreeMap::new(),
        };
        let join = |name: &str| InputKind::Join { name: name.into() };
        w.tick(vec![
            (R1, ALICE, join("Alice")),
            (R2, ALICE, join("Alice")),
            (R2, BOB, join("Bob")),
        ]);
        let (a, b) = (w.avatar(R1, ALICE), w.avatar(R2, BOB));
        w.tick(vec![
            (R1, ALICE, mv(a, Vec3::from_ints(20, 10, 0))),
            (R2, BOB, mv(b, Vec3::from_ints(2, 10, 0))),
        ]);
        w
    }

    fn avatar(&self, r: RegionId, p: PlayerId) -> ElementId {
        let s = self.cluster.region(r).unwrap().sim().state();
        s.players.get(&p).unwrap().avatar.unwrap()
    }

    fn tick(&mut self, inputs: Vec<(RegionId, PlayerId, InputKind)>) -> ClusterReport {
        let mut by: BTreeMap<RegionId, Vec<Input>> = BTreeMap::new();
        for (r, player, kind) in inputs {
            let seq = self.seqs.entry((r, player)).or_insert(0);
            *seq += 1;
            by.entry(r).or_default().push(Input {
                player,
                seq: *seq,
                kind,
            });
        }
        let rep = self.cluster.tick(&by, &self.host).unwrap();
        for r in rep.regions.values() {
            assert_eq!(r.sim.rejected, 0, "{:?}", r.sim.events);
            assert!(r.refused.is_empty(), "{:?}", r.refused);
        }
        assert!(rep.undecodable.is_empty(), "{:?}", rep.undecodable);
        rep
    }

    /// Alice creates an object in `r` at `pos` running `rule`; its id.
    fn scripted(&mut self, r: RegionId, pos: Vec3, name: &str, rule: Rule) -> ElementId {
        let src = self.host.add(name, rule);
        self.tick(vec![(
            r,
            ALICE,
            InputKind::Create {
                parent: None,
                name: name.into(),
                pos,
            },
        )]);
        let s = self.cluster.region(r).unwrap().sim().state();
        let id = s
            .elements
            .iter()
            .find(|(_, e)| e.name == name)
            .map(|(id, _)| *id)
            .unwrap();
        self.tick(vec![(
            r,
            ALICE,
            InputKind::AttachScript {
                element: id,
                source: src,
            },
        )]);
        id
    }

    fn journal(&self, r: RegionId, id: ElementId) -> Vec<String> {
        let s = self.cluster.region(r).unwrap().sim().state();
        let slot = s.elements[&id].script.as_ref().unwrap();
        String::from_utf8(slot.state.clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn counts(&self, r: RegionId) -> RemoteCounts {
        self.cluster.region(r).unwrap().remote_counts()
    }
}

fn mv(element: ElementId, to: Vec3) -> InputKind {
    InputKind::Move { element, to }
}

fn say(text: &str, radius: i32) -> InputKind {
    InputKind::Say {
        text: text.into(),
        radius: Some(Fx::from_int(radius)),
    }
}

fn chats(rep: &ClusterReport, r: RegionId) -> Vec<(String, Vec<PlayerId>)> {
    rep.regions[&r]
        .sim
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Chat { line, listeners } => Some((line.text.clone(), listeners.clone())),
            _ => None,
        })
        .collect()
}

fn remote_envelopes(rep: &ClusterReport, from: RegionId) -> Vec<(u64, usize)> {
    rep.regions[&from]
        .outbox
        .iter()
        .filter_map(|e| match &e.msg {
            BorderMessage::Remote { ack, items } => Some((*ack, items.len())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_line_said_near_the_border_is_heard_over_there_the_next_tick() {
    let mut w = World::new();
    let a = w.avatar(R1, ALICE);
    w.tick(vec![(R1, ALICE, mv(a, Vec3::from_ints(60, 10, 0)))]);
    // 6 m from Bob: within 10 m, heard; handed out once, to region 2 only.
    let rep = w.tick(vec![(R1, ALICE, say("can you hear me", 10))]);
    assert_eq!(
        chats(&rep, R1),
        vec![("can you hear me".to_string(), vec![ALICE])]
    );
    assert_eq!(remote_envelopes(&rep, R1), vec![(0, 1)]);
    let rep = w.tick(vec![]);
    assert_eq!(
        chats(&rep, R2),
        vec![("can you hear me".to_string(), vec![BOB])]
    );
    // Region 2 acknowledges it; nothing is sent again.
    assert_eq!(remote_envelopes(&rep, R2), vec![(1, 0)]);
    for _ in 0..4 {
        let rep = w.tick(vec![]);
        assert!(chats(&rep, R2).is_empty());
        assert!(remote_envelopes(&rep, R1).is_empty());
    }
    assert_eq!(w.counts(R1).queued, 1);
    assert_eq!(w.counts(R1).resent, 0);
    assert_eq!(w.counts(R2).delivered, 1);
    assert_eq!(w.cluster.region(R1).unwrap().remote_unacked(), 0);
    // 5 m is not enough from 6 m away: not heard by Bob, but handed over
    // (the box is within 5 m) and kept in region 2's chat history.
    w.tick(vec![(R1, ALICE, say("whisper", 5))]);
    let rep = w.tick(vec![]);
    assert_eq!(chats(&rep, R2), vec![("whisper".to_string(), vec![])]);
    // Said 10 m from the border with a 5 m radius: stays in region 1.
    w.tick(vec![(R1, ALICE, mv(a, Vec3::from_ints(54, 10, 0)))]);
    let rep = w.tick(vec![(R1, ALICE, say("here only", 5))]);
    assert!(remote_envelopes(&rep, R1).is_empty());
}

#[test]
fn script_messages_cross_exactly_once_when_envelopes_are_lost() {
    let seed = seed(7);
    let mut rng = metatopia_physics::scene::Rng(seed);
    let mut w = World::new();
    let inbox = w.scripted(R2, Vec3::from_ints(30, 30, 0), "journal", Rule::Journal);
    let relay = w.scripted(
        R1,
        Vec3::from_ints(20, 12, 0),
        "relay",
        Rule::RemoteRelay {
            region: R2,
            target: inbox,
        },
    );
    // Alice says n0.. next to the relay (5 m: the line stays here); the
    // relay sends each line it hears to region 2. For 40 ticks about
    // 40 % of the border envelopes (both ways) are lost.
    let n = 40;
    for i in 0..n {
        w.tick(vec![(R1, ALICE, say(&format!("n{i}"), 5))]);
        w.cluster.retain_mail(|_| rng.next_u64() % 10 >= 4);
    }
    for _ in 0..12 {
        w.tick(vec![]);
    }
    // Each exactly once (a script's inbox of one tick is in the region's
    // canonical order, not the sender's, so sort).
    let mut got = w.journal(R2, inbox);
    got.sort();
    let mut want: Vec<String> = (0..n)
        .map(|i| format!("rmsg:1:{relay}:heard:n{i}"))
        .collect();
    want.sort();
    assert_eq!(got, want, "reproduce with SIM_SEED={seed}");
    let (c1, c2) = (w.counts(R1), w.counts(R2));
    println!("region 1 {c1:?}\nregion 2 {c2:?}");
    assert_eq!(c1.queued, n);
    assert!(c1.resent > 0, "{c1:?}");
    assert_eq!(c2.delivered, n);
    assert_eq!(w.cluster.region(R1).unwrap().remote_unacked(), 0);
}

#[test]
fn a_message_to_an_element_that_is_not_there_is_refused_and_counted() {
    let mut w = World::new();
    let plain = ElementId::new(2, 999);
    w.scripted(
        R1,
        Vec3::from_ints(20, 12, 0),
        "relay",
        Rule::RemoteRelay {
            region: R2,
            target: plain,
        },
    );
    let before = w.cluster.region(R2).unwrap().sim().state().chat.len();
    w.tick(vec![(R1, ALICE, say("lost", 5))]);
    let rep = w.tick(vec![]);
    assert_eq!(rep.regions[&R2].sim.remote_refused, 1);
    assert_eq!(w.counts(R2).refused, 1);
    assert_eq!(w.counts(R2).delivered, 0);
    // Taken (acknowledged: not sent again), nothing else changed.
    assert_eq!(remote_envelopes(&rep, R2), vec![(1, 0)]);
    w.tick(vec![]);
    assert_eq!(w.cluster.region(R1).unwrap().remote_unacked(), 0);
    assert_eq!(
        w.cluster.region(R2).unwrap().sim().state().chat.len(),
        before
    );
    // A region that is not a neighbour: counted by the sender.
    w.scripted(
        R1,
        Vec3::from_ints(20, 14, 0),
        "relay-far",
        Rule::RemoteRelay {
            region: RegionId(9),
            target: plain,
        },
    );
    w.tick(vec![(R1, ALICE, say("nowhere", 5))]);
    assert_eq!(w.counts(R1).unroutable, 1);
}

#[test]
fn a_silent_neighbour_gets_a_bounded_queue_and_at_most_64_items_an_envelope() {
    let mut w = World::new();
    let inbox = w.scripted(R2, Vec3::from_ints(30, 30, 0), "journal", Rule::Journal);
    // 16 relays around Alice: each line she says is 16 messages.
    let relays: u64 = 16;
    for k in 0..relays {
        w.scripted(
            R1,
            Vec3::from_ints(18 + (k % 4) as i32, 8 + (k / 4) as i32, 0),
            &format!("relay{k}"),
            Rule::RemoteRelay {
                region: R2,
                target: inbox,
            },
        );
    }
    // The link is cut for 70 ticks: 1,120 messages, the queue keeps 1,024.
    let ticks: u64 = 70;
    for i in 0..ticks {
        w.tick(vec![(R1, ALICE, say(&format!("n{i}"), 5))]);
        w.cluster
            .retain_mail(|e| !matches!(e.msg, BorderMessage::Remote { .. }));
    }
    let sent = ticks * relays;
    let c1 = w.counts(R1);
    assert_eq!(c1.queued, REMOTE_QUEUE_MAX as u64);
    assert_eq!(c1.dropped, sent - REMOTE_QUEUE_MAX as u64);
    // Healed: drained at most 64 a tick, each delivered once.
    let mut most = 0;
    for _ in 0..40 {
        let rep = w.tick(vec![]);
        for (_, n) in remote_envelopes(&rep, R1) {
            most = most.max(n);
        }
    }
    assert_eq!(most, REMOTE_ITEMS_MAX);
    assert_eq!(w.journal(R2, inbox).len(), REMOTE_QUEUE_MAX);
    assert_eq!(w.counts(R2).delivered, REMOTE_QUEUE_MAX as u64);
    assert_eq!(w.cluster.region(R1).unwrap().remote_unacked(), 0);
}

#[test]
fn a_region_with_links_restores_to_the_same_hashes_and_one_without_keeps_its_encoding() {
    let mut w = World::new();
    let plain = w.cluster.region(R1).unwrap().snapshot();
    let r = metatopia_physics::Region::restore(&plain).unwrap();
    assert_eq!(r.hash(), w.cluster.region(R1).unwrap().hash());
    let inbox = w.scripted(R2, Vec3::from_ints(30, 30, 0), "journal", Rule::Journal);
    w.scripted(
        R1,
        Vec3::from_ints(20, 12, 0),
        "relay",
        Rule::RemoteRelay {
            region: R2,
            target: inbox,
        },
    );
    w.tick(vec![(R1, ALICE, say("one", 5))]);
    w.cluster.retain_mail(|_| false);
    // Region 1 holds an unacknowledged item: it is in the snapshot.
    let snap = w.cluster.snapshot();
    let mut copy = Cluster::restore(&snap).unwrap();
    for _ in 0..5 {
        let a = w.tick(vec![]);
        let b = copy.tick(&BTreeMap::new(), &w.host).unwrap();
        assert_eq!(a.hash, b.hash);
    }
    assert_eq!(w.journal(R2, inbox).len(), 1);
}
