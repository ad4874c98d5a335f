//! Two replica groups on loopback hosting neighbouring regions (region 1
//! at x 0..256 m, region 2 at 256..512 m), for the border tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{Node, run};

/// Eight consecutive free TCP ports on 127.0.0.1 (two groups of up to
/// four; probed, a little racy like any port picked in advance).
pub fn free_ports_8() -> u16 {
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    (start..60_000)
        .step_by(9)
        .find(|base| (0..8).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("eight free ports")
}

/// `metatopia group init` of `members` members for `region` from `port`.
pub fn group_init(base: &Path, region: u32, members: usize, port: u16) -> Vec<PathBuf> {
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

pub fn load(dir: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(dir.join("node.toml")).unwrap()).unwrap()
}

/// Gives each member of `dirs` its region's origin, the world's epoch and
/// the neighbour (`region`, `origin`, its members).
pub fn configure(
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

pub fn members_of(dir: &Path) -> Value {
    let t = load(dir);
    let m = t["group"]["members"].clone();
    serde_json::to_value(m).unwrap()
}

/// The newest checkpoint all `n` members signed and agree on, at or after
/// `after`.
pub fn agreed(node: &Node, n: u64, after: u64) -> Option<u64> {
    let status = node.get("/api/status").json().ok()?;
    status["group"]["checkpoints"]
        .as_array()?
        .iter()
        .filter(|c| c["signed"] == n && c["agree"] == true)
        .filter_map(|c| c["tick"].as_u64())
        .find(|t| *t >= after)
}

/// Two groups of `n` started on loopback: region 1 at x 0..256 m, region
/// 2 east of it. The base directory, the data directories and the nodes.
pub struct World {
    pub _base: tempfile::TempDir,
    pub g1: Vec<PathBuf>,
    pub g2: Vec<PathBuf>,
    pub nodes1: Vec<Node>,
    pub nodes2: Vec<Node>,
}

pub fn start_world(n: usize) -> World {
    // Groups of one finalize at once: the default wait (20 ms) is enough.
    // Eight debug processes on a small machine finalize in more than
    // 20 ms + a hop, so without a longer wait every set is late and a
    // crossing never completes (ADR 0013, decision 6).
    start_world_with(n, if n == 1 { 20 } else { 250 })
}

/// [`start_world`] with `group.border_wait_ms` = `wait_ms`.
pub fn start_world_with(n: usize, wait_ms: u64) -> World {
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

/// `Node::act` on region 2.
pub fn act2(node: &Node, action: &Value) -> metatopia_node::client::Response {
    act_in(node, 2, action)
}

/// `Node::act` on `region`.
pub fn act_in(node: &Node, region: u32, action: &Value) -> metatopia_node::client::Response {
    act_at(&node.base, &node.token(), region, action)
}

/// An action on `region` through the node at `base` with its `token`
/// (from any thread).
pub fn act_at(
    base: &str,
    token: &str,
    region: u32,
    action: &Value,
) -> metatopia_node::client::Response {
    let auth = format!("Bearer {token}");
    metatopia_node::client::request(
        base,
        "POST",
        &format!("/api/regions/{region}/inputs"),
        &[("Authorization", auth.as_str())],
        Some(&serde_json::to_vec(action).unwrap()),
    )
    .unwrap()
}

/// A `/metrics` counter of `node` (`metatopia_NAME`).
pub fn metric(node: &Node, name: &str) -> u64 {
    let metrics = node.get("/metrics").text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("metatopia_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .trim()
        .parse()
        .unwrap()
}
