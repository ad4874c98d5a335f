//! The region stream (`GET /api/regions/{id}/stream`, docs/stream.md)
//! through the real binary: a snapshot, then tick frames that rebuild the
//! state the HTTP API shows; events addressed to the node's player only
//! with its token; the subscriber limit, a wrong token and a plain GET
//! refused with reasons; subscribers told when the node stops.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Node;
use metatopia_node::client::request;
use serde_json::{Value, json};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<TcpStream>;

fn connect(node: &Node, query: &str) -> Socket {
    let addr = node.base.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://{addr}/api/regions/1/stream{query}");
    let (socket, _) = tungstenite::client(url, stream).unwrap();
    socket
}

/// The next frame as JSON, or the close frame's code and reason.
fn next(socket: &mut Socket) -> Result<Value, (u16, String)> {
    loop {
        match socket.read() {
            Ok(Message::Text(t)) => return Ok(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(Some(c))) => return Err((c.code.into(), c.reason.to_string())),
            Ok(Message::Close(None)) => return Err((0, String::new())),
            Ok(_) => {}
            Err(e) => return Err((0, e.to_string())),
        }
    }
}

/// A client's copy of the region, kept by the stream's frames.
#[derive(Default)]
struct Mirror {
    tick: u64,
    elements: BTreeMap<String, Value>,
    players: BTreeMap<String, Value>,
    chat: Vec<Value>,
    events: Vec<Value>,
    frames: usize,
    /// Elements updated by a frame's short `moved` form.
    moves: usize,
}

impl Mirror {
    fn apply(&mut self, frame: &Value) {
        self.frames += 1;
        match frame["type"].as_str().unwrap() {
            "snapshot" => {
                let s = &frame["state"];
                self.tick = s["tick"].as_u64().unwrap();
                self.elements = keyed(&s["elements"]);
                self.players = keyed(&s["players"]);
                self.chat = s["chat"].as_array().unwrap().clone();
            }
            "tick" => {
                let tick = frame["tick"].as_u64().unwrap();
                assert_eq!(tick, self.tick + 1, "ticks are consecutive: {frame}");
                self.tick = tick;
                self.elements.extend(keyed(&frame["elements"]));
                for m in frame["moved"].as_array().unwrap() {
                    self.apply_move(m.as_array().unwrap());
                }
                for id in frame["removed"].as_array().unwrap() {
                    assert!(self.elements.remove(&id.to_string()).is_some());
                }
                self.players.extend(keyed(&frame["players"]));
                self.chat
                    .extend(frame["chat"].as_array().unwrap().iter().cloned());
                self.events
                    .extend(frame["events"].as_array().unwrap().iter().cloned());
            }
            other => panic!("unknown frame type {other}"),
        }
    }

    /// `[id, x, y, z]` or `[id, x, y, z, vx, vy, vz, resting]`: an element
    /// that only moved.
    fn apply_move(&mut self, m: &[Value]) {
        self.moves += 1;
        let e = self
            .elements
            .get_mut(&m[0].to_string())
            .expect("a moved element is known");
        e["pos"] = json!({"x": m[1], "y": m[2], "z": m[3]});
        if m.len() == 8 {
            e["body"]["vel"] = json!({"x": m[4], "y": m[5], "z": m[6]});
            e["body"]["resting"] = m[7].clone();
        } else {
            assert_eq!(m.len(), 4, "a move is 4 or 8 long: {m:?}");
        }
    }

    /// Reads frames until `done` holds (bounded: 20 s).
    fn follow(&mut self, socket: &mut Socket, done: impl Fn(&Mirror) -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < until, "stream did not show it in 20 s");
            self.apply(&next(socket).unwrap());
        }
    }
}

fn keyed(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| (v["id"].to_string(), without_last_error(v)))
        .collect()
}

/// `script_status.last_error` comes from the node's fault follower, not the
/// state; the stream carries faults as events.
fn without_last_error(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(s) = v.get_mut("script_status").and_then(Value::as_object_mut) {
        s.remove("last_error");
    }
    v
}

#[test]
fn stream_rebuilds_the_state_and_addresses_events() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let token = node.token();
    let mut mine = connect(&node, &format!("?token={token}"));
    let mut public = connect(&node, "");

    let first = next(&mut mine).unwrap();
    assert_eq!(first["type"], "snapshot");
    let me = first["you"].as_str().unwrap().to_string();
    let public_first = next(&mut public).unwrap();
    assert_eq!(public_first["you"], Value::Null);
    let mut m = Mirror::default();
    m.apply(&first);
    let root = m.elements.values().find(|e| e["kind"] == "Region").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    assert_eq!(
        node.act(&json!({"do": "join", "name": "Streamer"})).status,
        200
    );
    assert_eq!(
        node.act(&json!({"do": "say", "text": "live on the stream"}))
            .status,
        200
    );
    let created = node.act(&json!({"do": "create", "name": "Lamp", "pos": "5,6,0"}));
    assert_eq!(created.status, 200, "{}", created.text());
    // The region's root is not the player's: the sim refuses the move.
    let refused = node.act(&json!({"do": "move", "element": root, "to": "1,1,0"}));
    assert_ne!(refused.status, 200, "{}", refused.text());

    m.follow(&mut mine, |m| {
        m.events.iter().any(|e| e["event"] == "rejected")
            && m.elements.values().any(|e| e["name"] == "Lamp")
    });
    assert!(
        m.chat.iter().any(|c| c["text"] == "live on the stream"),
        "{:?}",
        m.chat
    );
    assert!(
        m.events
            .iter()
            .any(|e| e["event"] == "joined" && e["player"] == me.as_str())
    );
    let rejected = m.events.iter().find(|e| e["event"] == "rejected").unwrap();
    assert!(
        !rejected["reason"].as_str().unwrap().is_empty(),
        "{rejected}"
    );
    assert!(m.players[&format!("\"{me}\"")]["online"] == true);

    // A falling ball: its element changes on every tick while it moves;
    // then it stops changing (at rest, or gone through the region's floor).
    let ball =
        node.act(&json!({"do": "spawn_body", "name": "Ball", "pos": "8,8,3", "shape": "ball:0.5"}));
    assert_eq!(ball.status, 200, "{}", ball.text());
    let mut heights = Vec::new();
    let mut still = 0;
    let until = Instant::now() + Duration::from_secs(20);
    while heights.is_empty() || still < 10 {
        assert!(Instant::now() < until, "the ball kept moving: {heights:?}");
        m.apply(&next(&mut mine).unwrap());
        let z = m
            .elements
            .values()
            .find(|e| e["name"] == "Ball")
            .map(|b| b["pos"]["z"].as_str().unwrap().to_string());
        match z {
            Some(z) if heights.last() != Some(&z) => {
                heights.push(z);
                still = 0;
            }
            _ => still += 1,
        }
    }
    assert!(m.moves > 3, "the fall came as short moves: {}", m.moves);
    assert!(
        heights.len() > 3,
        "the fall came in several frames: {heights:?}"
    );
    assert_ne!(heights.first(), heights.last());

    // Let a few quiet ticks pass, then the mirror is the API's state.
    let quiet = m.tick + 5;
    m.follow(&mut mine, |m| m.tick >= quiet);
    let state = node.get("/api/regions/1/state").json().unwrap();
    assert_eq!(m.elements, keyed(&state["elements"]));
    assert_eq!(m.players, keyed(&state["players"]));
    assert_eq!(&m.chat, state["chat"].as_array().unwrap());
    assert!(m.frames > 5);

    // The public subscriber saw the chat and the join, not the rejection.
    let mut p = Mirror::default();
    p.apply(&public_first);
    p.follow(&mut public, |p| p.tick >= quiet);
    assert!(p.chat.iter().any(|c| c["text"] == "live on the stream"));
    assert!(p.events.iter().any(|e| e["event"] == "joined"));
    assert!(
        !p.events.iter().any(|e| e["event"] == "rejected"),
        "{:?}",
        p.events
    );

    // Stopping the node closes the stream with a reason, and the node
    // does not wait for its subscribers.
    let started = Instant::now();
    assert!(node.terminate());
    assert!(started.elapsed() < Duration::from_secs(10));
    let closed = loop {
        match next(&mut mine) {
            Ok(_) => continue,
            Err(c) => break c,
        }
    };
    assert_eq!(closed, (1001, "the node is stopping".to_string()));
}

#[test]
fn stream_refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[limits]\nstream_subscribers_max = 1\n",
    )
    .unwrap();
    let node = Node::start(dir.path());
    // A plain GET is not a WebSocket.
    let r = node.get("/api/regions/1/stream");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("WebSocket")
    );
    // A wrong token: 401 before the upgrade.
    let r = request(
        &node.base,
        "GET",
        "/api/regions/1/stream?token=nope",
        &[],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    // Another region: 404.
    let r = node.get("/api/regions/7/stream");
    assert_eq!(r.status, 404, "{}", r.text());

    // One subscriber at most: the second is closed with the reason.
    let mut first = connect(&node, "");
    assert_eq!(next(&mut first).unwrap()["type"], "snapshot");
    let mut second = connect(&node, "");
    let (code, reason) = next(&mut second).unwrap_err();
    assert_eq!(code, u16::from(CloseCode::Again), "{reason}");
    assert!(reason.contains("stream_subscribers_max"), "{reason}");
    let metrics = node.get("/metrics").text();
    assert!(
        metrics.contains("metatopia_stream_refused_full_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metatopia_stream_subscribers 1"),
        "{metrics}"
    );
    // The first still gets ticks.
    assert_eq!(next(&mut first).unwrap()["type"], "tick");
    // When it leaves, there is room again.
    first.close(None).unwrap();
    drop(first);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = connect(&node, "");
        match next(&mut again) {
            Ok(v) => {
                assert_eq!(v["type"], "snapshot");
                break;
            }
            Err(e) => assert!(
                Instant::now() < until,
                "no room after the first left: {e:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_reader_that_stops_reading_is_dropped_and_the_node_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // A chatty object makes big frames: 16 lines of 1,000 bytes a tick
    // (~320 KB/s), so the kernel's socket buffers fill in seconds.
    assert_eq!(node.act(&json!({"do": "join", "name": "Host"})).status, 200);
    assert_eq!(
        node.act(&json!({"do": "create", "name": "Radio", "pos": "3,4,0"}))
            .status,
        200
    );
    let state = node.get("/api/regions/1/state").json().unwrap();
    let radio = state["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "Radio")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let script = dir.path().join("radio.lua");
    std::fs::write(
        &script,
        "-- SPDX-License-Identifier: AGPL-3.0-or-later\n\
         function on_touch(by, element) set_timer(1, 1) end\n\
         function on_timer(id)\n\
           for i = 1, 16 do say(string.rep(\"x\", 1000)) end\n\
           set_timer(1, 1)\n\
         end\n",
    )
    .unwrap();
    let data = dir.path().to_str().unwrap();
    let pushed = common::run(&[
        "script",
        "push",
        script.to_str().unwrap(),
        "--data",
        data,
        "--object",
        &radio,
    ]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert_eq!(
        node.act(&json!({"do": "touch", "element": radio})).status,
        200
    );
    // A client with a tiny receive buffer that reads the snapshot and then
    // nothing: the node's socket fills, the subscriber falls behind.
    let addr: std::net::SocketAddr = node.base.trim_start_matches("http://").parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut slow, _) =
        tungstenite::client(format!("ws://{addr}/api/regions/1/stream"), stream).unwrap();
    assert_eq!(next(&mut slow).unwrap()["type"], "snapshot");
    let mut fast = connect(&node, "");
    assert_eq!(next(&mut fast).unwrap()["type"], "snapshot");
    let started = Instant::now();
    let dropped = loop {
        // The other subscriber keeps getting every tick meanwhile.
        assert_eq!(next(&mut fast).unwrap()["type"], "tick");
        let metrics = node.get("/metrics").text();
        if metrics.contains("metatopia_stream_dropped_slow_total 1") {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(90), "never dropped");
    };
    eprintln!("slow reader dropped after {dropped:?}");
    // Its connection ends: a reason cannot reach a socket that is full
    // (docs/stream.md), so it sees the frames it had, then the end.
    let closed = loop {
        match next(&mut slow) {
            Ok(_) => continue,
            Err(c) => break c,
        }
    };
    assert!(
        closed.0 == 4008 || closed.1.contains("reset") || closed.1.contains("closed"),
        "{closed:?}"
    );
    assert_eq!(
        node.act(&json!({"do": "say", "text": "still here"})).status,
        200
    );
}
