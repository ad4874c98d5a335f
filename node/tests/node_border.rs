//! Two replica groups of `metatopia up` processes on loopback host
//! adjacent regions (region 1 at x 0..256 m, region 2 at 256..512 m,
//! `[[group.neighbours]]` in each node.toml, one `group.epoch_ms`) and
//! trade certified border sets over `/metatopia/border/1` (ADR 0013). A
//! ball spawned in region 1 near the border, moving east, crosses: it
//! leaves region 1's state and enters region 2's, at every tick owned by
//! exactly one region as far as the samples show, and each group's
//! members keep signing agreeing checkpoints. With groups of four, a
//! member of region 2's group is then killed (`kill -9`), a second ball
//! crosses to the other three, and the killed member restarts and agrees
//! again. After the nodes stop, each region's log replays from genesis to
//! the hash it ran to (the border certificates in the proposals are all
//! replay needs), and `metatopia handoffs` finds every hand-off two ticks
//! after its offer in the two logs. The storm with a primary killed is
//! `node_border_storm.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::border::{World, agreed, metric, start_world};
use common::{Node, eventually, run};
use serde_json::{Value, json};

/// (tick, whether the ball `name` is in the region's state) as `node`
/// serves it, and its x there (region coordinates, metres).
fn sample(node: &Node, region: u32, name: &str) -> Option<((u64, bool), Option<f64>)> {
    let s: Value = node
        .get(&format!("/api/regions/{region}/state"))
        .json()
        .ok()?;
    let ball = s["elements"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name && !e["body"].is_null());
    let x = ball.and_then(|b| b["pos"]["x"].as_str()?.parse().ok());
    Some(((s["tick"].as_u64()?, ball.is_some()), x))
}

/// The group tests run one at a time (up to eight debug processes each).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `metatopia replay`: the final state hash a replay from genesis reaches.
fn replay(data: &Path) -> String {
    let out = run(&["replay", "--data", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    common::final_hash(&out)
}

/// Spawns a ball `name` at `pos` in region 1 (through `a`) moving east
/// and samples both regions (`a`, `b`) until it has crossed: it leaves
/// region 1 for good, enters region 2 for good, and the samples show one
/// owner at every tick. Returns a tick by which both saw the switch.
fn cross(n: usize, a: &Node, b: &Node, name: &str, pos: &str) -> u64 {
    let r = a.act(&json!({
        "do": "spawn_body", "name": name, "pos": pos,
        "shape": "ball:0.5", "vel": "5,0,0"
    }));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Sample both regions until the ball has been in region 2 for a while.
    let mut s1: Vec<(u64, bool)> = Vec::new();
    let mut s2: Vec<(u64, bool)> = Vec::new();
    // The first tick region 1 showed the ball 0.5 m inside region 2 (the
    // hysteresis): the tick it offers the ball.
    let mut offered: Option<u64> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((x, pos)) = sample(a, 1, name) {
            if offered.is_none() && pos.is_some_and(|p| p >= 256.5) {
                offered = Some(x.0);
            }
            s1.push(x);
        }
        if let Some((x, _)) = sample(b, 2, name) {
            s2.push(x);
        }
        let crossed = s1.iter().any(|x| x.1)
            && s2.iter().filter(|x| x.1).count() >= 10
            && s1.last().is_some_and(|x| !x.1);
        if crossed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ball did not cross in 60 s: region 1 {:?} region 2 {:?}",
            s1.iter().rev().take(5).collect::<Vec<_>>(),
            s2.iter().rev().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Region 1 had it, then never again; region 2 had it from one tick on.
    let first_in_1 = s1.iter().position(|x| x.1).unwrap();
    let gone_from_1 = first_in_1 + s1[first_in_1..].iter().position(|x| !x.1).unwrap();
    assert!(
        s1[gone_from_1..].iter().all(|x| !x.1),
        "the ball came back to region 1: {s1:?}"
    );
    let in_2 = s2.iter().position(|x| x.1).unwrap();
    assert!(
        s2[in_2..].iter().all(|x| x.1),
        "the ball left region 2: {s2:?}"
    );
    // One owner at every tick: region 1 last seen with it before region 2
    // first seen with it, and region 2 last seen without it before region
    // 1 first seen without it (the switch tick lies in both windows).
    let (last1, gone1) = (s1[gone_from_1 - 1].0, s1[gone_from_1].0);
    let (before2, first2) = (in_2.checked_sub(1).map(|i| s2[i].0), s2[in_2].0);
    assert!(
        last1 < first2,
        "owned by both at tick {first2}: {s1:?} {s2:?}"
    );
    if let Some(before2) = before2 {
        assert!(before2 < gone1, "owned by neither at tick {before2}");
    }
    println!(
        "groups of {n}, {name}: offered at tick {offered:?} (as sampled), handed over between ticks {last1} and {first2} (region 1 last seen with it at {last1}, without at {gone1}; region 2 without at {before2:?}, with at {first2})"
    );

    first2.max(gone1)
}

fn crossing(n: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let World {
        _base,
        g1,
        g2,
        nodes1,
        nodes2,
    } = start_world(n);
    let (a, b) = (&nodes1[0], &nodes2[0]);

    // The founder of region 1 joins and spawns a ball 6 m from the border,
    // moving east at 5 m/s, high enough not to touch the floor first.
    assert_eq!(a.act(&json!({"do": "join", "name": "A"})).status, 200);
    let after = cross(n, a, b, "ball", "250,128,3000");

    // Both groups' members agree on checkpoints after the crossing.
    for (nodes, what) in [(&nodes1, "region 1"), (&nodes2, "region 2")] {
        for node in nodes.iter() {
            eventually(
                &format!("{what}'s members to agree after the crossing"),
                || agreed(node, n as u64, after),
            );
        }
    }
    // Every member sent border sets, none dropped or refused; bytes each
    // member sent per tick (to every member of the other group).
    for (node, region) in nodes1
        .iter()
        .map(|x| (x, 1))
        .chain(nodes2.iter().map(|x| (x, 2)))
    {
        let status: Value = node.get("/api/status").json().unwrap();
        let border = &status["group"]["border"];
        let tick = sample(node, region, "ball").unwrap().0.0;
        assert!(border["frames_sent"].as_u64().unwrap() > 0, "{border}");
        assert_eq!(border["dropped"], 0, "{border}");
        assert_eq!(border["refused"], 0, "{border}");
        println!(
            "region {region} member: {} border bytes in {} frames by tick {tick}: {} bytes per tick",
            border["bytes_sent"],
            border["frames_sent"],
            border["bytes_sent"].as_u64().unwrap() / tick.max(1)
        );
    }
    // The hand-off shows in /metrics on both sides.
    assert!(metric(a, "handoffs_out_total") >= 1);
    assert!(metric(b, "handoffs_in_total") >= 1);
    let mut nodes2 = nodes2;
    if n == 4 {
        // kill -9 a member of region 2's group (not the one sampled): the
        // other three (f = 1) go on certifying region 1's sets and
        // adopting, so a second ball crosses; the killed member restarts
        // from its log, catches up and agrees with all four again.
        nodes2.pop().unwrap().kill9();
        let after2 = cross(n, &nodes1[0], &nodes2[0], "ball2", "250,100,3000");
        let back = Node::start(&g2[3]);
        eventually("the restarted member to agree with all four", || {
            agreed(&back, 4, after2)
        });
        nodes2.push(back);
    }
    for node in nodes1.into_iter().chain(nodes2) {
        assert!(node.terminate());
    }
    // Each log replays from genesis, border certificates included.
    for d in [&g1[0], &g2[0]] {
        replay(d);
    }
    // And the two logs agree on ownership after every tick.
    let out = run(&["handoffs", g1[0].to_str().unwrap(), g2[0].to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let balls = if n == 4 { 2 } else { 1 };
    assert!(
        stdout.contains(&format!("hand-offs: {balls} ({balls} at offer + 2)")),
        "{stdout}"
    );
}

#[test]
fn two_groups_of_one_hand_a_ball_across_the_border() {
    crossing(1);
}

#[test]
fn two_groups_of_four_hand_a_ball_across_the_border() {
    crossing(4);
}
