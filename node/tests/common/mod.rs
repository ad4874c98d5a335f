//! Driving the real `metatopia` binary from tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_metatopia");

/// A running `metatopia up`.
pub struct Node {
    pub child: Child,
    pub base: String,
    pub data: PathBuf,
    pub lines: mpsc::Receiver<String>,
    /// What it printed before its address (the world line with the
    /// recovered `state_hash=`).
    pub header: Vec<String>,
}

impl Node {
    /// Starts a node on `data` with an ephemeral port and waits until it
    /// says where it listens (bounded: 60 s).
    pub fn start(data: &Path) -> Node {
        Node::start_with(&["up", "--http", "127.0.0.1:0"], data)
    }

    /// [`Node::start`] with extra environment variables.
    pub fn start_env(data: &Path, env: &[(&str, &str)]) -> Node {
        Node::spawn(&["up", "--http", "127.0.0.1:0"], data, env)
    }

    /// Starts `metatopia join --via URL` (an observer of the group of the
    /// node at `url`) on `data`, and waits until it serves.
    pub fn observe(data: &Path, url: &str) -> Node {
        Node::start_with(&["join", "--via", url, "--http", "127.0.0.1:0"], data)
    }

    /// Starts the binary with `args` and `--data DATA`, and waits until it
    /// says where it listens (bounded: 60 s).
    pub fn start_with(args: &[&str], data: &Path) -> Node {
        Node::spawn(args, data, &[])
    }

    fn spawn(args: &[&str], data: &Path, env: &[(&str, &str)]) -> Node {
        let mut child = Command::new(BIN)
            .args(args)
            .arg("--data")
            .arg(data)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn metatopia up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::sync_channel(256);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut header = Vec::new();
        let base = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("node printed its address");
            if let Some(rest) = line.strip_prefix("metatopia: listening on ") {
                break rest.trim().to_string();
            }
            header.push(line);
        };
        Node {
            child,
            base,
            data: data.to_path_buf(),
            lines: rx,
            header,
        }
    }

    pub fn get(&self, path: &str) -> metatopia_node::client::Response {
        metatopia_node::client::request(&self.base, "GET", path, &[], None).unwrap()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// POSTs an action with the token.
    pub fn act(&self, action: &serde_json::Value) -> metatopia_node::client::Response {
        let auth = format!("Bearer {}", self.token());
        metatopia_node::client::request(
            &self.base,
            "POST",
            "/api/regions/1/inputs",
            &[("Authorization", auth.as_str())],
            Some(&serde_json::to_vec(action).unwrap()),
        )
        .unwrap()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait; returns the exit status success.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap().success()
    }
}

/// A node left running by a failing test would outlive it (and keep its
/// output pipes open): stop it.
impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run metatopia")
}

pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run metatopia")
}

/// The `state_hash=` value on the last line of stdout.
pub fn final_hash(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    last.strip_prefix("state_hash=")
        .unwrap_or_else(|| panic!("last line is not state_hash=: {stdout}"))
        .to_string()
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Four consecutive free TCP ports on 127.0.0.1 (probed; a little racy,
/// like any port picked in advance).
pub fn free_ports() -> u16 {
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    (start..60_000)
        .step_by(5)
        .find(|base| (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("four free ports")
}

/// The first overlay address `node` prints (`metatopia: overlay ADDR`),
/// once it has joined the overlay (bounded: 60 s).
pub fn overlay_addr(node: &Node) -> String {
    loop {
        let line = node
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("overlay address line");
        if let Some(a) = line.strip_prefix("metatopia: overlay ") {
            return a.trim().to_string();
        }
    }
}

/// Polls (bounded: 60 s) until `f` holds.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_or(what, f, String::new)
}

/// [`eventually`], but a timeout's panic carries `report()` (say what
/// every node knows, so a timeout is a bug report).
pub fn eventually_or<T>(
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    report: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", report());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node's `/api/status`, named, one per line (for timeout reports).
pub fn statuses<'a>(nodes: impl IntoIterator<Item = (String, &'a Node)>) -> String {
    nodes
        .into_iter()
        .map(|(name, n)| format!("{name}: {}", n.get("/api/status").text()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `metatopia group init` of four members on free ports: the temporary
/// base directory and the members' data directories.
pub fn group_init() -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    group_init_of(4)
}

/// `metatopia group init` of `members` members on free ports.
pub fn group_init_of(members: usize) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let base = group_init_with(&["--members", &members.to_string()]);
    let dirs = (0..members)
        .map(|i| base.path().join(format!("m{i}")))
        .collect();
    (base, dirs)
}

/// `metatopia group init --dir BASE --port FREE ARGS…` into a new
/// temporary base directory (asserted to succeed).
pub fn group_init_with(args: &[&str]) -> tempfile::TempDir {
    let base = tempfile::tempdir().unwrap();
    let port = free_ports().to_string();
    let mut all = vec![
        "group",
        "init",
        "--dir",
        base.path().to_str().unwrap(),
        "--port",
        &port,
    ];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    base
}

/// Deterministic bytes that do not repeat within a range test.
pub fn bytes(n: usize, seed: u8) -> Vec<u8> {
    let mut x = (seed as u32).wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `PUT path` with the node's token.
pub fn put(node: &Node, path: &str, body: &[u8]) -> metatopia_node::client::Response {
    let auth = format!("Bearer {}", node.token());
    metatopia_node::client::request(
        &node.base,
        "PUT",
        path,
        &[("Authorization", auth.as_str())],
        Some(body),
    )
    .unwrap()
}

/// The newest checkpoint tick at which an observer's own hash agrees with
/// at least `members` members' signed hashes.
pub fn observer_agrees(node: &Node, members: usize) -> Option<u64> {
    let status = node.get("/api/status").json().ok()?;
    let me = status["group"]["me"].as_str()?.to_string();
    status["group"]["checkpoints"]
        .as_array()?
        .iter()
        .find(|c| {
            c["hashes"].get(&me).is_some()
                && c["signed"].as_u64() > Some(members as u64)
                && c["agree"] == true
        })
        .and_then(|c| c["tick"].as_u64())
}

/// Two replica groups hosting neighbouring regions.
pub mod border;
