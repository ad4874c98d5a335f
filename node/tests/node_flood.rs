//! A flood on loopback, bounded in count and time: hostile clients (each on
//! its own loopback address) hold idle connections, send garbage bytes,
//! post inputs without the token and oversized bodies, and subscribe to the
//! region stream without reading, while the player keeps chatting. Every
//! one of the player's lines commits, the node keeps serving, and the
//! excess is refused with reasons and counted. The player's latency before
//! and during the flood is printed (a number for the notes; timing is not
//! asserted on a shared machine).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::json;

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&from.into())?;
    sock.connect_timeout(&to.into(), Duration::from_secs(5))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Whatever the server says on `s` (up to 4 KiB), until it closes or
/// stops for the read timeout.
fn read_some(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    String::from_utf8_lossy(&buf[..n]).to_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn chat(node: &Node, n: usize, tag: &str) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let r = node.act(&json!({"do": "say", "text": format!("{tag} {i}")}));
            assert_eq!(r.status, 200, "{tag} {i}: {}", r.text());
            t.elapsed()
        })
        .collect()
}

#[test]
fn a_flood_from_other_clients_does_not_stop_the_player() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[limits]\nhttp_connections_per_ip_max = 32\nstream_subscribers_max = 16\n",
    )
    .unwrap();
    let node = Node::start(dir.path());
    let addr: SocketAddr = node.base.trim_start_matches("http://").parse().unwrap();
    assert_eq!(
        node.act(&json!({"do": "join", "name": "Player"})).status,
        200
    );
    let before = chat(&node, 20, "before");

    let stop = Arc::new(AtomicBool::new(false));
    let garbage_sent = Arc::new(AtomicU64::new(0));
    let posts = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();

    // 127.0.0.2 holds idle connections: 32 are admitted and held, the rest
    // are refused with the reason.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..60 {
        let mut s = connect_from("127.0.0.2", addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let said = read_some(&mut s);
        if said.contains("503") {
            assert!(said.contains("http_connections_per_ip_max"), "{said}");
            refused += 1;
        } else {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 32, "{refused} refused");
    assert_eq!(refused, 28);

    // 127.0.0.3 sends garbage, over and over.
    for t in 0..2u8 {
        let (stop, sent) = (stop.clone(), garbage_sent.clone());
        threads.push(std::thread::spawn(move || {
            let junk: Vec<u8> = (0..4096u32)
                .map(|i| (i * 31 + u32::from(t)) as u8)
                .collect();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = connect_from("127.0.0.3", addr) {
                    let _ = s.write_all(&junk);
                    let _ = read_some(&mut s);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // 127.0.0.4 posts inputs without the token, and bodies over the limit.
    for t in 0..2 {
        let (stop, posts) = (stop.clone(), posts.clone());
        threads.push(std::thread::spawn(move || {
            let big = vec![b'x'; 200_000];
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = connect_from("127.0.0.4", addr) else {
                    continue;
                };
                let body: &[u8] = if t == 0 { br#"{"do":"say","text":"spam"}"# } else { &big };
                let head = format!(
                    "POST /api/regions/1/inputs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body);
                let said = read_some(&mut s);
                assert!(
                    said.is_empty() || said.contains(" 401 ") || said.contains(" 413 "),
                    "{said}"
                );
                posts.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // 127.0.0.5 subscribes to the stream and never reads.
    let mut silent = Vec::new();
    for _ in 0..20 {
        if let Ok(s) = connect_from("127.0.0.5", addr) {
            let (ws, _) = tungstenite::client(format!("ws://{addr}/api/regions/1/stream"), s)
                .unwrap_or_else(|e| panic!("upgrade: {e}"));
            silent.push(ws);
        }
    }

    let during = chat(&node, 20, "during");
    let status = node.get("/api/status");
    assert_eq!(status.status, 200);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    drop(held);
    drop(silent);
    assert!(garbage_sent.load(Ordering::Relaxed) > 0);
    assert!(posts.load(Ordering::Relaxed) > 0);

    let metrics = node.get("/metrics").text();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("metatopia_http_connections_refused_total") >= 28);
    assert_eq!(value("metatopia_stream_refused_full_total"), 4);
    // Every line the player said is in the region.
    let state = node.get("/api/regions/1/state").json().unwrap();
    let said: Vec<&str> = state["chat"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["text"].as_str())
        .collect();
    for i in 0..20 {
        assert!(said.contains(&format!("during {i}").as_str()), "{said:?}");
    }
    eprintln!(
        "player's say latency, median of 20: before {:?}, during the flood {:?} ({} garbage connections, {} hostile posts)",
        median(before),
        median(during),
        garbage_sent.load(Ordering::Relaxed),
        posts.load(Ordering::Relaxed),
    );
}

#[test]
fn an_input_storm_from_the_player_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[limits]\ninputs_per_player_per_sec = 2\ninputs_per_player_burst = 5\n",
    )
    .unwrap();
    let node = Node::start(dir.path());
    assert_eq!(
        node.act(&json!({"do": "join", "name": "Stormy"})).status,
        200
    );
    // 40 inputs at once: what is left of the burst (the join took one)
    // gets in, the rest is told why.
    let answers: Vec<_> = (0..40)
        .map(|i| {
            let (base, auth) = (node.base.clone(), format!("Bearer {}", node.token()));
            std::thread::spawn(move || {
                let say = json!({"do": "say", "text": format!("storm {i}")});
                let r = metatopia_node::client::request(
                    &base,
                    "POST",
                    "/api/regions/1/inputs",
                    &[("Authorization", auth.as_str())],
                    Some(&serde_json::to_vec(&say).unwrap()),
                )
                .unwrap();
                (r.status, r.text())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let slowed: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!((4..=7).contains(&ok), "{answers:?}");
    assert_eq!(ok + slowed.len(), 40, "{answers:?}");
    assert!(
        slowed[0].1.contains("inputs_per_player_per_sec"),
        "{}",
        slowed[0].1
    );
    // /metrics counts them by reason, and the committed ones' latency.
    let metrics = node.get("/metrics").text();
    let refused = format!(
        "metatopia_inputs_refused_total{{reason=\"player_rate\"}} {}",
        slowed.len()
    );
    assert!(metrics.contains(&refused), "{refused} in\n{metrics}");
    let committed = format!("metatopia_input_commit_latency_seconds_count {}", ok + 1);
    assert!(metrics.contains(&committed), "{committed} in\n{metrics}");
    assert!(metrics.contains("metatopia_desynced 0"), "{metrics}");
    // Once the allowance refills, the player is heard again.
    std::thread::sleep(Duration::from_millis(1500));
    let again = node.act(&json!({"do": "say", "text": "calm again"}));
    assert_eq!(again.status, 200, "{}", again.text());
}

/// Short of memory (here: a cap below what any process uses), the node
/// refuses new connections with the reason instead of taking on more, and
/// keeps ticking: back under the cap after a restart with the default, it
/// serves again at a later tick.
#[test]
fn a_node_over_its_memory_cap_refuses_connections_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[limits]\nconnections_memory_max_mib = 1\n",
    )
    .unwrap();
    let node = Node::start_with(&["up"], dir.path());
    let r = node.get("/api/status");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("connections_memory_max_mib"),
        "the refusal names the key: {}",
        r.text()
    );
    assert!(node.terminate(), "a refused node still stops cleanly");
    std::fs::write(dir.path().join("node.toml"), "[limits]\n").unwrap();
    let node = Node::start_with(&["up"], dir.path());
    let status = node.get("/api/status").json().unwrap();
    assert!(status["tick"].as_u64().unwrap() > 0, "{status}");
}
