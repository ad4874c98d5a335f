//! Driving the real `metatopia` binary from tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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
