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
//! again. A third test sends three balls each way while region 2's
//! primary is killed. After the nodes stop, each
//! region's log replays from genesis to the hash it ran to (the border
//! certificates in the proposals are all replay needs).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Node, eventually, run};
use serde_json::{Value, json};

/// Eight consecutive free TCP ports on 127.0.0.1 (two groups of up to
/// four; probed, a little racy like any port picked in advance).
fn free_ports_8() -> u16 {
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    (start..60_000)
        .step_by(9)
        .find(|base| (0..8).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("eight free ports")
}

/// `metatopia group init` of `members` members for `region` from `port`.
fn group_init(base: &Path, region: u32, members: usize, port: u16) -> Vec<PathBuf> {
    let dir = base.join(format!("g{region}"));
    let out = run(&[
        "group",
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--members",
        &members.to_string(),
        "--port",
        &port.to_string(),
        "--region",
        &region.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (0..members).map(|i| dir.join(format!("m{i}"))).collect()
}

fn load(dir: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(dir.join("node.toml")).unwrap()).unwrap()
}

/// Gives each member of `dirs` its region's origin, the world's epoch and
/// the neighbour (`region`, `origin`, its members).
fn configure(
    dirs: &[PathBuf],
    origin: &str,
    (epoch_ms, wait_ms): (u64, u64),
    neighbour: (u32, &str, &Value),
) {
    for d in dirs {
        let mut t = load(d);
        t["overlay"]
            .as_table_mut()
            .unwrap()
            .insert("origin".into(), origin.into());
        let group = t["group"].as_table_mut().unwrap();
        group.insert("epoch_ms".into(), toml::Value::Integer(epoch_ms as i64));
        group.insert(
            "border_wait_ms".into(),
            toml::Value::Integer(wait_ms as i64),
        );
        let mut n = toml::Table::new();
        n.insert("region".into(), toml::Value::Integer(neighbour.0.into()));
        n.insert("origin".into(), neighbour.1.into());
        n.insert(
            "members".into(),
            toml::Value::try_from(neighbour.2.clone()).unwrap(),
        );
        group.insert(
            "neighbours".into(),
            toml::Value::Array(vec![toml::Value::Table(n)]),
        );
        std::fs::write(d.join("node.toml"), toml::to_string(&t).unwrap()).unwrap();
    }
}

fn members_of(dir: &Path) -> Value {
    let t = load(dir);
    let m = t["group"]["members"].clone();
    serde_json::to_value(m).unwrap()
}

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

/// The newest checkpoint all `n` members signed and agree on, at or after
/// `after`.
fn agreed(node: &Node, n: u64, after: u64) -> Option<u64> {
    let status = node.get("/api/status").json().ok()?;
    status["group"]["checkpoints"]
        .as_array()?
        .iter()
        .filter(|c| c["signed"] == n && c["agree"] == true)
        .filter_map(|c| c["tick"].as_u64())
        .find(|t| *t >= after)
}

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

/// Two groups of `n` started on loopback: region 1 at x 0..256 m, region
/// 2 east of it. The base directory, the data directories and the nodes.
struct World {
    _base: tempfile::TempDir,
    g1: Vec<PathBuf>,
    g2: Vec<PathBuf>,
    nodes1: Vec<Node>,
    nodes2: Vec<Node>,
}

fn start_world(n: usize) -> World {
    let base = tempfile::tempdir().unwrap();
    let port = free_ports_8();
    let g1 = group_init(base.path(), 1, n, port);
    let g2 = group_init(base.path(), 2, n, port + 4);
    let (m1, m2) = (members_of(&g1[0]), members_of(&g2[0]));
    // Tick 0 a few seconds from now: both groups start on one schedule.
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3000;
    // Groups of one finalize at once: the default wait (20 ms) is enough.
    // Eight debug processes on a small machine finalize in more than
    // 20 ms + a hop, so without a longer wait every set is late and a
    // crossing never completes (ADR 0013, decision 6).
    let wait_ms = if n == 1 { 20 } else { 250 };
    configure(&g1, "0,0", (epoch, wait_ms), (2, "256,0", &m2));
    configure(&g2, "256,0", (epoch, wait_ms), (1, "0,0", &m1));
    let nodes1: Vec<Node> = g1.iter().map(|d| Node::start(d)).collect();
    let nodes2: Vec<Node> = g2.iter().map(|d| Node::start(d)).collect();
    World {
        _base: base,
        g1,
        g2,
        nodes1,
        nodes2,
    }
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
    let counter = |node: &Node, name: &str| -> u64 {
        let metrics = node.get("/metrics").text();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("metatopia_{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(counter(a, "handoffs_out_total") >= 1);
    assert!(counter(b, "handoffs_in_total") >= 1);
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
}

#[test]
fn two_groups_of_one_hand_a_ball_across_the_border() {
    crossing(1);
}

#[test]
fn two_groups_of_four_hand_a_ball_across_the_border() {
    crossing(4);
}

/// `Node::act` on region 2.
fn act2(node: &Node, action: &Value) -> metatopia_node::client::Response {
    let auth = format!("Bearer {}", node.token());
    metatopia_node::client::request(
        &node.base,
        "POST",
        "/api/regions/2/inputs",
        &[("Authorization", auth.as_str())],
        Some(&serde_json::to_vec(action).unwrap()),
    )
    .unwrap()
}

/// Which of `names` are in the region's state as `node` serves it (with a
/// body), and the tick.
fn present(node: &Node, region: u32, names: &[String]) -> Option<(u64, Vec<bool>)> {
    let s: Value = node
        .get(&format!("/api/regions/{region}/state"))
        .json()
        .ok()?;
    let elements = s["elements"].as_array()?;
    let here = names
        .iter()
        .map(|n| {
            elements
                .iter()
                .any(|e| e["name"] == n.as_str() && !e["body"].is_null())
        })
        .collect();
    Some((s["tick"].as_u64()?, here))
}

/// The storm, small: three balls fly east from region 1 and three west
/// from region 2 while region 2's primary is killed (`kill -9`) right
/// after they are spawned; every ball ends in the other region, leaves
/// its own for good, and no sample shows one in both regions at a tick
/// or in neither across the switch; the survivors agree on checkpoints.
#[test]
fn balls_cross_both_ways_while_a_primary_is_killed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let World {
        _base,
        nodes1,
        mut nodes2,
        ..
    } = start_world(4);
    let a = &nodes1[0];
    assert_eq!(a.act(&json!({"do": "join", "name": "A"})).status, 200);
    assert_eq!(
        act2(&nodes2[0], &json!({"do": "join", "name": "B"})).status,
        200
    );
    let mut names = Vec::new();
    for i in 0..3 {
        let (east, west) = (format!("east{i}"), format!("west{i}"));
        let y = 40 + 40 * i;
        let r = a.act(&json!({
            "do": "spawn_body", "name": east, "pos": format!("250,{y},3000"),
            "shape": "ball:0.5", "vel": "5,0,0"
        }));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let r = act2(
            &nodes2[0],
            &json!({
                "do": "spawn_body", "name": west, "pos": format!("6,{},3000", y + 20),
                "shape": "ball:0.5", "vel": "-5,0,0"
            }),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        names.push(east);
        names.push(west);
    }
    // Kill region 2's primary; sample region 2 through another member.
    let primary = eventually("region 2's primary", || {
        let status: Value = nodes2[0].get("/api/status").json().ok()?;
        status["group"]["primary"].as_str().map(str::to_string)
    });
    let index = nodes2
        .iter()
        .position(|n| {
            let status: Value = n.get("/api/status").json().unwrap();
            status["group"]["me"] == primary.as_str()
        })
        .unwrap();
    nodes2.remove(index).kill9();
    let b = &nodes2[0];
    // Per ball: (tick, here) samples in region 1 and region 2.
    let mut s1: Vec<Vec<(u64, bool)>> = vec![Vec::new(); names.len()];
    let mut s2: Vec<Vec<(u64, bool)>> = vec![Vec::new(); names.len()];
    let deadline = Instant::now() + Duration::from_secs(90);
    // East balls start in region 1 (source 1), west balls in region 2.
    let source_is_1 = |i: usize| i.is_multiple_of(2);
    loop {
        if let Some((t, here)) = present(a, 1, &names) {
            for (i, h) in here.into_iter().enumerate() {
                s1[i].push((t, h));
            }
        }
        if let Some((t, here)) = present(b, 2, &names) {
            for (i, h) in here.into_iter().enumerate() {
                s2[i].push((t, h));
            }
        }
        let done = (0..names.len()).all(|i| {
            let (from, to) = if source_is_1(i) {
                (&s1[i], &s2[i])
            } else {
                (&s2[i], &s1[i])
            };
            from.iter().any(|x| x.1)
                && from.last().is_some_and(|x| !x.1)
                && to.iter().filter(|x| x.1).count() >= 10
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every ball crossed in 90 s: {:?}",
            (0..names.len())
                .map(|i| (&names[i], s1[i].last(), s2[i].last()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut after = 0;
    for (i, name) in names.iter().enumerate() {
        let (from, to) = if source_is_1(i) {
            (&s1[i], &s2[i])
        } else {
            (&s2[i], &s1[i])
        };
        let first = from.iter().position(|x| x.1).unwrap();
        let gone = first + from[first..].iter().position(|x| !x.1).unwrap();
        assert!(
            from[gone..].iter().all(|x| !x.1),
            "{name} came back: {from:?}"
        );
        let arrived = to.iter().position(|x| x.1).unwrap();
        assert!(to[arrived..].iter().all(|x| x.1), "{name} left: {to:?}");
        let (last_from, gone_from) = (from[gone - 1].0, from[gone].0);
        let (before_to, first_to) = (arrived.checked_sub(1).map(|k| to[k].0), to[arrived].0);
        assert!(
            last_from < first_to,
            "{name} owned by both at tick {first_to}"
        );
        if let Some(before_to) = before_to {
            assert!(
                before_to < gone_from,
                "{name} owned by neither at tick {before_to}"
            );
        }
        println!(
            "{name}: source last seen with it at {last_from}, without at {gone_from}; target without at {before_to:?}, with at {first_to}"
        );
        after = after.max(first_to).max(gone_from);
    }
    for node in &nodes1 {
        eventually("region 1's members to agree", || agreed(node, 4, after));
    }
    for node in &nodes2 {
        eventually("region 2's three survivors to agree", || {
            agreed(node, 3, after)
        });
    }
    for node in nodes1.into_iter().chain(nodes2) {
        assert!(node.terminate());
    }
}
