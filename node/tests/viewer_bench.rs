//! Viewer benchmarks in headless Chromium (software WebGL: SwiftShader).
//! Ignored, not run by `.ci/run`; they print numbers for
//! `docs/performance.md`:
//!
//! ```sh
//! cargo test --release -p metatopia-node --test viewer_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `frame_rate_with_1000_objects_and_100_moving_avatars`: 1,000 objects
//!   created on a real node (900 boxes, 100 physics balls), plus 100
//!   avatars walking at 20 Hz. One node has one local player, so the 100
//!   avatars are fed into the page as tick frames in the stream's format
//!   (`metatopia.onFrame`, the same path the WebSocket's frames take),
//!   shaped exactly like the node's element views.
//! - `stream_bytes_per_second`: what the page's WebSocket receives from a
//!   real node whose 1,000 physics bodies are all moving, and the
//!   per-element cost from which 1,000 moving avatars follow.
//! - `ghosts_of_100_bodies_near_the_border`: two groups of one (`group
//!   init --regions 2`), 100 balls falling 1 m west of the border in
//!   region 1: the bytes the ghost keys add to region 2's stream per
//!   tick, and region 2's page frame rate before and with the 100 ghosts.

#![allow(clippy::unwrap_used)]

#[path = "common/cdp.rs"]
mod cdp;
mod common;

use std::time::{Duration, Instant};

use cdp::Browser;
use common::Node;
use serde_json::{Value, json};

/// Posts `actions` with `threads` clients at once (a player may have up to
/// 64 inputs in one tick, so this takes a few ticks per 64).
fn act_all(node: &Node, actions: Vec<Value>, threads: usize) {
    let token = node.token();
    let chunks: Vec<Vec<Value>> = actions
        .chunks(actions.len().div_ceil(threads))
        .map(<[Value]>::to_vec)
        .collect();
    std::thread::scope(|s| {
        for chunk in chunks {
            let (base, auth) = (node.base.clone(), format!("Bearer {token}"));
            s.spawn(move || {
                for a in chunk {
                    let r = metatopia_node::client::request(
                        &base,
                        "POST",
                        "/api/regions/1/inputs",
                        &[("Authorization", auth.as_str())],
                        Some(&serde_json::to_vec(&a).unwrap()),
                    )
                    .unwrap();
                    assert_eq!(r.status, 200, "{a}: {}", r.text());
                }
            });
        }
    });
}

fn elements(node: &Node) -> usize {
    node.get("/api/regions/1/state").json().unwrap()["elements"]
        .as_array()
        .unwrap()
        .len()
}

/// The page's mean frame rate over `secs` seconds (requestAnimationFrame
/// callbacks per second).
fn fps(page: &mut cdp::Page, secs: u64) -> f64 {
    let start = page.eval("[performance.now(), window.metatopia.framesDrawn]");
    std::thread::sleep(Duration::from_secs(secs));
    let end = page.eval("[performance.now(), window.metatopia.framesDrawn]");
    let ms = end[0].as_f64().unwrap() - start[0].as_f64().unwrap();
    let n = end[1].as_f64().unwrap() - start[1].as_f64().unwrap();
    n * 1000.0 / ms
}

#[test]
#[ignore = "benchmark: needs chromium; prints numbers"]
fn frame_rate_with_1000_objects_and_100_moving_avatars() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    assert_eq!(
        node.act(&json!({"do": "join", "name": "Bench"})).status,
        200
    );
    let mut actions = Vec::new();
    for i in 0..1000u32 {
        let (x, y) = (20 + (i % 40) * 5, 20 + (i / 40) * 8);
        actions.push(if i % 10 == 0 {
            json!({"do": "spawn_body", "name": format!("ball{i}"), "pos": format!("{x},{y},1"),
                   "shape": "ball:0.5", "kind": "fixed"})
        } else {
            json!({"do": "create", "name": format!("box{i}"), "pos": format!("{x},{y},0")})
        });
    }
    let t = Instant::now();
    act_all(&node, actions, 16);
    println!("created 1000 objects in {:?}", t.elapsed());
    assert_eq!(elements(&node), 1002);

    let browser = Browser::launch();
    let mut page = browser.open(&format!("{}/#token={}", node.base, node.token()));
    page.wait_for(
        "1,000 objects drawn",
        "window.metatopia.meshes.size >= 1001 && window.metatopia.fps > 0",
    );
    std::thread::sleep(Duration::from_secs(2));
    std::thread::sleep(Duration::from_secs(3));
    let still = fps(&mut page, 5);
    println!("1000 objects, 1 avatar, nothing moving: {still:.1} fps");

    // 100 avatars, walking in circles, one tick frame per 50 ms.
    page.eval(
        r#"(() => {
        const M = window.metatopia, owner = "ab".repeat(32);
        let tick = 1e6;
        const avatar = (i, t) => ({ id: "1." + (50000 + i), parent: "1.0", kind: "Avatar", owner: owner.slice(0, 60) + String(1000 + i),
          name: "walker " + i, children: [], script: null, script_status: null, body: null,
          pos: { x: String(128 + 40 * Math.cos(t / 40 + i)), y: String(128 + 40 * Math.sin(t / 40 + i)), z: "0" } });
        M.benchTimer = setInterval(() => {
          tick++;
          const els = [];
          for (let i = 0; i < 100; i++) els.push(avatar(i, tick));
          M.onFrame(JSON.stringify({ type: "tick", tick, state_hash: "00", time_ms: 0, temp_admin: null,
            elements: els, removed: [], players: [], chat: [], events: [] }));
        }, 50);
        return true; })()"#,
    );
    page.wait_for("100 avatars drawn", "window.metatopia.meshes.size >= 1101");
    page.eval("document.getElementById('follow').checked = false; window.metatopia.camera.position.set(128, 60, -20); window.metatopia.controls.target.set(128, 0, -128); true");
    std::thread::sleep(Duration::from_secs(2));
    let moving = fps(&mut page, 10);
    println!("1000 objects, 100 avatars walking at 20 Hz: {moving:.1} fps");
    page.screenshot("bench-1000-objects-100-avatars");
    println!(
        "render scale {} (of the 920x800 canvas), {} draw calls per frame",
        page.eval("window.metatopia.renderScale"),
        page.eval("window.metatopia.renderer.info.render.calls")
    );
    // What holds it back: the same view with only the ground, then with
    // only the objects and avatars.
    page.eval(
        "for (const o of window.metatopia.scene.children) o.visible = !o.isInstancedMesh; true",
    );
    println!("only the ground and lights: {:.1} fps", fps(&mut page, 5));
    page.eval("for (const o of window.metatopia.scene.children) o.visible = o.isInstancedMesh || o.isLight; true");
    println!("only the objects and avatars: {:.1} fps", fps(&mut page, 5));
    page.eval("for (const o of window.metatopia.scene.children) o.visible = true; window.metatopia.scene.visible = false; true");
    println!(
        "the same page drawing nothing (its ceiling on this machine): {:.1} fps",
        fps(&mut page, 5)
    );
    let renderer = page.eval(
        "(() => { const g = document.createElement('canvas').getContext('webgl2'); const d = g.getExtension('WEBGL_debug_renderer_info'); return d ? g.getParameter(d.UNMASKED_RENDERER_WEBGL) : g.getParameter(g.RENDERER); })()",
    );
    println!("renderer: {renderer}");
    node.kill9();
}

#[test]
#[ignore = "benchmark: needs a node; prints numbers"]
fn stream_bytes_per_second() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    assert_eq!(
        node.act(&json!({"do": "join", "name": "Bench"})).status,
        200
    );
    // Balls falling from up to 200 m: all of them move for the
    // measurement's 5 s. `BENCH_BODIES` of them (default 250: with 1,000, a
    // debug-built node and reader on this 2-core machine fall behind and
    // the node drops the reader with 4008).
    let bodies: u32 = std::env::var("BENCH_BODIES").map_or(250, |v| v.parse().unwrap());
    let mut actions = Vec::new();
    for i in 0..bodies {
        let (x, y) = (20 + (i % 40) * 5, 20 + (i / 40) * 8);
        actions.push(json!({"do": "spawn_body", "name": format!("ball{i}"),
            "pos": format!("{x},{y},{}", 150 + i % 50), "shape": "ball:0.5"}));
    }
    act_all(&node, actions, 16);
    let url = format!(
        "{}/api/regions/1/stream?token={}",
        node.base.replace("http://", "ws://"),
        node.token()
    );
    let (mut ws, _) = tungstenite::connect(&url).unwrap();
    let first = ws.read().unwrap().into_text().unwrap();
    println!("snapshot frame: {} bytes", first.len());
    let (mut bytes, mut frames, mut full, mut short) = (0usize, 0usize, 0usize, 0usize);
    let mut position_bytes = 0usize;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let text = match ws.read().unwrap() {
            tungstenite::Message::Text(t) => t,
            tungstenite::Message::Close(c) => panic!("the stream closed: {c:?}"),
            _ => continue,
        };
        bytes += text.len();
        frames += 1;
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        full += frame["elements"].as_array().map_or(0, Vec::len);
        for m in frame["moved"].as_array().into_iter().flatten() {
            short += 1;
            // What the same element would cost without a body: its id and
            // position (an avatar walking).
            position_bytes += Value::from(m.as_array().unwrap()[..4].to_vec())
                .to_string()
                .len();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{bodies} falling bodies: {frames} frames in {secs:.1} s, {:.0} elements changed per frame ({:.0} as whole views, {:.0} as moves), {:.0} bytes/s ({:.0} bytes per changed element)",
        (full + short) as f64 / frames as f64,
        full as f64 / frames as f64,
        short as f64 / frames as f64,
        bytes as f64 / secs,
        bytes as f64 / (full + short).max(1) as f64
    );
    // An avatar that walks only moves: the frame carries `[id, x, y, z]`,
    // as long as the falling bodies' ids and positions above. Its whole
    // view is what a change other than a move costs.
    let state = node.get("/api/regions/1/state").json().unwrap();
    let avatar = state["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "Avatar")
        .unwrap()
        .to_string();
    let step = position_bytes as f64 / short.max(1) as f64 + 1.0;
    println!(
        "an avatar's element view: {} bytes, a move: {step:.0} bytes with its comma; 1000 avatars moving every tick at 20 Hz: about {:.0} bytes/s",
        avatar.len(),
        step * 1000.0 * 20.0
    );
    node.kill9();
}

/// Reads a stream until `stop`, counting bytes; true if the node closed it.
fn read_stream(
    url: &str,
    stop: &std::sync::atomic::AtomicBool,
    bytes: &std::sync::atomic::AtomicU64,
) -> bool {
    use std::sync::atomic::Ordering;
    let (mut ws, _) = tungstenite::connect(url).unwrap();
    while !stop.load(Ordering::Relaxed) {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
            }
            Ok(tungstenite::Message::Close(_)) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

/// One number from `/metrics`.
fn metric(node: &Node, name: &str) -> f64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Subscribers per node at 20 Hz with 1,000 moving bodies before a tick
/// is late: 1,000 balls thrown straight up at 280 m/s (the region is 4 km
/// high; the live node has no ground collider, so nothing would bounce)
/// fly for about 57 s. For each count of subscribers, readers on this
/// machine read the stream as fast as they can for 5 s while the node's
/// ticks and tick time are measured. Long on purpose: set-up, then one
/// measurement per row.
#[test]
#[ignore = "benchmark: needs a node; prints numbers"]
fn stream_fan_out_with_1000_moving_bodies() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[limits]\nstream_subscribers_max = 2048\nhttp_connections_per_ip_max = 4096\nhttp_connections_max = 4096\n",
    )
    .unwrap();
    let node = Node::start(dir.path());
    assert_eq!(
        node.act(&json!({"do": "join", "name": "Bench"})).status,
        200
    );
    let bodies: u32 = std::env::var("BENCH_BODIES").map_or(1000, |v| v.parse().unwrap());
    let actions = (0..bodies)
        .map(|i| {
            let (x, y) = (10 + (i % 40) * 6, 10 + (i / 40) * 9);
            json!({"do": "spawn_body", "name": format!("b{i}"), "vel": "0,0,280",
                "pos": format!("{x},{y},{}", 1 + i % 7), "shape": "ball:0.5"})
        })
        .collect();
    act_all(&node, actions, 16);
    let url = format!(
        "{}/api/regions/1/stream",
        node.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tungstenite::connect(&url).unwrap();
    let mut moving = 0;
    for _ in 0..41 {
        let text = ws.read().unwrap().into_text().unwrap();
        let frame: Value = serde_json::from_str(text.as_str()).unwrap();
        moving += frame["moved"].as_array().map_or(0, Vec::len);
    }
    drop(ws);
    println!(
        "{bodies} bodies, {} moving per tick; subscribers | ticks/s | tick ms (mean) | MB/s read | dropped",
        moving / 40
    );
    // Rows: `BENCH_ROWS`, subscriber counts separated by commas.
    let rows: Vec<usize> = std::env::var("BENCH_ROWS")
        .unwrap_or_else(|_| "1,16,64,128,256,512".into())
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    for n in rows {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let (url, stop, bytes) = (url.clone(), stop.clone(), bytes.clone());
                std::thread::spawn(move || read_stream(&url, &stop, &bytes))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        let (t0, s0, b0) = (
            metric(&node, "metatopia_ticks_total"),
            metric(&node, "metatopia_tick_seconds_total"),
            bytes.load(Ordering::Relaxed),
        );
        let dropped0 = metric(&node, "metatopia_stream_dropped_slow_total");
        let start = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        let secs = start.elapsed().as_secs_f64();
        let ticks = metric(&node, "metatopia_ticks_total") - t0;
        let busy = metric(&node, "metatopia_tick_seconds_total") - s0;
        let read = (bytes.load(Ordering::Relaxed) - b0) as f64;
        let dropped = metric(&node, "metatopia_stream_dropped_slow_total") - dropped0;
        stop.store(true, Ordering::Relaxed);
        let closed = readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .filter(|closed| *closed)
            .count();
        println!(
            "{n:>5} | {:.1} | {:.1} | {:.1} | {dropped} ({closed} closed by the node)",
            ticks / secs,
            busy * 1000.0 / ticks.max(1.0),
            read / secs / 1e6
        );
    }
    node.kill9();
}

/// The bytes 100 moving ghosts add to a neighbour's stream per tick, and
/// the page's frame rate with them (see the module doc).
#[test]
#[ignore = "benchmark: needs chromium; prints numbers"]
fn ghosts_of_100_bodies_near_the_border() {
    let base = common::group_init_with(&["--regions", "2", "--members", "1"]);
    let west = Node::start(&base.path().join("r0/m0"));
    let east = Node::start(&base.path().join("r1/m0"));
    let browser = Browser::launch();
    let mut page = browser.open(&format!("{}/#token={}", east.base, east.token()));
    page.wait_for(
        "the stream and the neighbour",
        "document.body.dataset.mode === 'stream' && window.metatopia.border",
    );
    // Looking west across the border at the column the balls fall in
    // (during the 5 s measured first they fall from about 2,490 m to
    // 2,350 m).
    let look = "(() => { const M = window.metatopia; M.controls.target.set(-1, 2420, -128); M.camera.position.set(-300, 2430, -128); M.controls.update(); return true; })()";
    page.eval(look);
    let before = fps(&mut page, 5);
    assert_eq!(
        west.act(&json!({"do": "join", "name": "Bench"})).status,
        200
    );
    let actions = (0..100)
        .map(|i| {
            json!({"do": "spawn_body", "name": format!("g{i}"),
                "pos": format!("255,{},2500", 28 + 2 * i), "shape": "ball:0.5"})
        })
        .collect();
    // One at a time: 100 spawns at once made region 1's group of one stall
    // (debug build, loaded machine; see docs/performance.md, session 12).
    act_all(&west, actions, 1);
    page.wait_for(
        "100 ghosts drawn",
        "window.metatopia.ghostMeshes.size === 100 && window.metatopia.ghosts.size === 100",
    );
    page.eval(look);
    let with = fps(&mut page, 5);
    let held = page.eval("window.metatopia.ghostMeshes.size");
    page.screenshot("bench-100-ghosts");
    let url = format!(
        "{}/api/regions/2/stream",
        east.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tungstenite::connect(&url).unwrap();
    let first = ws.read().unwrap().into_text().unwrap();
    println!(
        "region 2's snapshot frame with 100 ghosts: {} bytes",
        first.len()
    );
    let (mut frames, mut bytes, mut ghost_bytes, mut moved) = (0usize, 0usize, 0usize, 0usize);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let text = match ws.read().unwrap() {
            tungstenite::Message::Text(t) => t,
            tungstenite::Message::Close(c) => panic!("the stream closed: {c:?}"),
            _ => continue,
        };
        let f: Value = serde_json::from_str(text.as_str()).unwrap();
        if f["type"] != "tick" {
            continue;
        }
        frames += 1;
        bytes += text.len();
        for k in ["ghosts", "ghosts_moved", "ghosts_gone"] {
            if !f[k].is_null() {
                // `,"KEY":VALUE`
                ghost_bytes += k.len() + 4 + f[k].to_string().len();
            }
        }
        moved += f["ghosts_moved"].as_array().map_or(0, Vec::len);
    }
    println!(
        "100 falling balls 1 m from the border: {frames} tick frames of region 2 in 5 s, {:.0} ghosts moved per frame, ghost keys {:.0} bytes per tick ({:.1} per ghost), whole frames {:.0} bytes per tick",
        moved as f64 / frames.max(1) as f64,
        ghost_bytes as f64 / frames.max(1) as f64,
        ghost_bytes as f64 / moved.max(1) as f64,
        bytes as f64 / frames.max(1) as f64
    );
    println!(
        "region 2's page: {before:.1} fps before the balls, {with:.1} fps with {held} ghosts drawn (software WebGL: {})",
        page.eval("window.metatopia.softwareGl")
    );
}
