//! The viewer in a real browser (headless Chromium over the DevTools
//! protocol, see `common/cdp.rs`): a player joins from the page, sees their
//! avatar in the 3-D view, walks with the keyboard, chats, builds, pushes a
//! script without and with a licence, touches its object and sees its
//! reaction and, for a faulting script, the fault's reason. A second player
//! on another node of the same region (an observer, `metatopia join --via`:
//! one node has one local player) sees the first move and chat, and the
//! other way round.
//!
//! Needs `chromium` on PATH: `.ci/run` installs it and runs these tests
//! explicitly (`cargo test -p metatopia-node --test node_browser --
//! --ignored`); plain `cargo test` skips them. Screenshots go to
//! `target/browser-artefacts/` (paths printed).

#![allow(clippy::unwrap_used)]

#[path = "common/cdp.rs"]
mod cdp;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cdp::{Browser, Page};
use common::{Node, run};
use serde_json::{Value, json};

fn state(node: &Node) -> Value {
    node.get("/api/regions/1/state").json().unwrap()
}

fn element_named(state: &Value, name: &str) -> Option<Value> {
    state["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}

fn pos(e: &Value) -> (f64, f64) {
    let f = |k: &str| e["pos"][k].as_str().unwrap().parse::<f64>().unwrap();
    (f("x"), f("y"))
}

/// Bounded polling of the node's API (the page's side uses `Page::wait_for`).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + cdp::WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Joins from the page's join bar as `name` and waits until the page draws
/// the avatar; returns the avatar's element id.
fn join_from_page(page: &mut Page, name: &str) -> String {
    page.wait_for(
        "the join bar",
        "!document.getElementById('joinbar').hidden && window.metatopia.settings",
    );
    page.eval(&format!(
        "document.getElementById('joinname').value = {}; document.querySelector('#join button').click(); true",
        json!(name)
    ));
    let avatar = page.wait_for(
        "my avatar drawn",
        "document.body.dataset.avatar && window.metatopia.meshes.has(document.body.dataset.avatar) && document.body.dataset.avatar",
    );
    avatar.as_str().unwrap().to_string()
}

/// Sets the script editor's text.
fn set_source(page: &mut Page, text: &str) {
    page.eval(&format!(
        "document.querySelector('[data-tab=scripts]').click(); window.metatopia.editor.set({}); true",
        json!(text)
    ));
}

#[test]
#[ignore = "needs chromium; run by .ci/run"]
fn a_player_walks_chats_builds_and_scripts_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let browser = Browser::launch();
    let mut page = browser.open(&format!("{}/#token={}", node.base, node.token()));

    // The page follows the region stream and says so.
    let mode = page.wait_for(
        "the stream",
        "document.body.dataset.mode === 'stream' && document.getElementById('conn').textContent",
    );
    assert_eq!(mode, "live: region stream");

    // The script editor is the vendored CodeMirror.
    page.wait_for(
        "CodeMirror",
        "window.metatopia.editor.kind === 'codemirror' && document.querySelector('#editor .cm-editor')",
    );

    // Join, and see the avatar in the 3-D view, in front of the camera,
    // labelled with the name.
    let avatar = join_from_page(&mut page, "Browser Tester");
    let seen = page.wait_for(
        "the avatar on screen",
        &format!("(() => {{ const p = window.metatopia.screenPos({avatar:?}); return p && p.visible && p; }})()"),
    );
    println!("avatar {avatar} drawn at {seen}");
    assert_eq!(
        page.eval(&format!(
            "(() => {{ const m = window.metatopia.meshes.get({avatar:?}); return m.userData.slots.length === 2 && window.metatopia.scene.children.includes(m.userData.label); }})()"
        )),
        json!(true)
    );
    let st = state(&node);
    assert_eq!(element_named(&st, "Browser Tester").unwrap()["id"], avatar);
    page.wait_for("a frame rendered", "window.metatopia.fps > 0");
    page.screenshot("viewer-joined");

    // Walk with the keyboard: W held until the node has the avatar > 2 m
    // away.
    let before = pos(&element_named(&state(&node), "Browser Tester").unwrap());
    page.eval("document.getElementById('scene').focus(); true");
    page.key("w", true);
    let after = eventually("the avatar to walk", || {
        let p = pos(&element_named(&state(&node), "Browser Tester").unwrap());
        (((p.0 - before.0).powi(2) + (p.1 - before.1).powi(2)).sqrt() > 2.0).then_some(p)
    });
    page.key("w", false);
    println!("walked from {before:?} to {after:?}");
    page.wait_for(
        "the page to show the new position",
        &format!(
            "(() => {{ const e = window.metatopia.elements.get({avatar:?}); return Math.hypot(parseFloat(e.pos.x) - {}, parseFloat(e.pos.y) - {}) > 2; }})()",
            before.0, before.1
        ),
    );

    // Chat from the box; the committed line comes back to the page.
    page.eval("document.getElementById('text').focus(); true");
    page.type_text("hello from chromium");
    page.key("Enter", true);
    page.key("Enter", false);
    page.wait_for(
        "the chat line",
        "document.getElementById('chat').textContent.includes('Browser Tester: hello from chromium')",
    );
    assert!(
        state(&node)["chat"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["text"] == "hello from chromium")
    );

    // Build: create an object in front of the avatar.
    page.eval("document.querySelector('[data-tab=build]').click(); document.getElementById('newname').value = 'Lamp'; document.getElementById('create').click(); true");
    let lamp = page.wait_for(
        "the lamp",
        "[...window.metatopia.elements.values()].find(e => e.name === 'Lamp' && window.metatopia.meshes.has(e.id))?.id",
    );
    let lamp = lamp.as_str().unwrap().to_string();
    page.eval(&format!("window.metatopia.select({lamp:?}); true"));

    // A script without a licence line, typed into the editor, is refused,
    // in words.
    set_source(&mut page, "");
    page.eval("document.querySelector('#editor .cm-content').focus(); true");
    page.type_text("function on_touch(by, element)\n  say(\"no licence\")\nend\n");
    assert_eq!(
        page.eval("window.metatopia.editor.get()"),
        json!("function on_touch(by, element)\n  say(\"no licence\")\nend\n")
    );
    page.eval("document.getElementById('pushscript').click(); true");
    let refusal = page.wait_for(
        "the licence refusal",
        "document.getElementById('scriptmsg').classList.contains('bad') && document.getElementById('scriptmsg').textContent",
    );
    println!("refusal: {refusal}");
    assert!(
        refusal
            .as_str()
            .unwrap()
            .contains("SPDX-License-Identifier"),
        "{refusal}"
    );

    // One the sandbox refuses (it assigns a variable of an enclosing
    // function) is refused with the line and the name.
    set_source(
        &mut page,
        "-- SPDX-License-Identifier: AGPL-3.0-or-later\nlocal n = 0\nfunction on_touch(by, element)\n  n = n + 1\nend\n",
    );
    page.eval("document.getElementById('pushscript').click(); true");
    let sandbox = page.wait_for(
        "the sandbox's refusal",
        "document.getElementById('scriptmsg').classList.contains('bad') && document.getElementById('scriptmsg').textContent",
    );
    println!("sandbox: {sandbox}");
    assert!(
        sandbox.as_str().unwrap().contains("assigns `n`"),
        "{sandbox}"
    );

    // With a licence it is published and attached.
    set_source(
        &mut page,
        "-- SPDX-License-Identifier: AGPL-3.0-or-later\nfunction on_touch(by, element)\n  state.n = (state.n or 0) + 1\n  say(\"lamp lit \" .. state.n)\nend\n",
    );
    page.eval("document.getElementById('pushscript').click(); true");
    let ok = page.wait_for(
        "the script published",
        "document.getElementById('scriptmsg').classList.contains('ok') && document.getElementById('scriptmsg').textContent",
    );
    println!("pushed: {ok}");
    page.wait_for(
        "the lamp's script",
        &format!("window.metatopia.elements.get({lamp:?}).script"),
    );

    // Touch it by clicking it in the 3-D view (looking down on it, so the
    // avatar is not in the way); its script answers in chat.
    page.eval(&format!(
        "(() => {{ const m = window.metatopia; document.getElementById('follow').checked = false; \
         const p = m.meshes.get({lamp:?}).position; m.controls.target.copy(p); \
         m.camera.position.set(p.x + 0.5, p.y + 10, p.z + 4); return true; }})()"
    ));
    let at = page.wait_for(
        "the lamp on screen",
        &format!("(() => {{ const p = window.metatopia.screenPos({lamp:?}, 0); return p && p.visible && p; }})()"),
    );
    let (x, y) = (at["x"].as_f64().unwrap(), at["y"].as_f64().unwrap());
    page.click(x, y, 0);
    page.wait_for(
        "the lamp selected by the click",
        &format!("window.metatopia.selected === {lamp:?}"),
    );
    page.wait_for(
        "the lamp's reaction",
        "document.getElementById('chat').textContent.includes('Lamp: lamp lit 1')",
    );
    page.screenshot("viewer-touched");

    // Read the script back by its hash.
    set_source(&mut page, "");
    page.eval("document.getElementById('readscript').click(); true");
    page.wait_for(
        "the source read back",
        "window.metatopia.editor.get().includes('lamp lit')",
    );

    // A faulting script: its reason is shown.
    let lit = element_named(&state(&node), "Lamp").unwrap()["script"]
        .as_str()
        .unwrap()
        .to_string();
    set_source(
        &mut page,
        "-- SPDX-License-Identifier: AGPL-3.0-or-later\nfunction on_touch(by, element)\n  error(\"the bulb is broken\")\nend\n",
    );
    page.eval("document.getElementById('pushscript').click(); true");
    page.wait_for(
        "the faulting script published",
        "document.getElementById('scriptmsg').classList.contains('ok') && document.getElementById('scriptmsg').textContent.includes('published')",
    );
    page.wait_for(
        "the new script attached",
        &format!("window.metatopia.elements.get({lamp:?}).script !== {lit:?}"),
    );
    page.eval("document.getElementById('touch').click(); true");
    let fault = page.wait_for(
        "the fault's reason",
        "document.getElementById('faults').textContent.includes('the bulb is broken') && document.getElementById('faults').textContent",
    );
    println!("fault shown: {fault}");

    // Spawn a ball and push it: the node sees it move.
    page.eval("document.querySelector('[data-tab=build]').click(); document.getElementById('spawnball').click(); true");
    let ball = page.wait_for(
        "the ball",
        "[...window.metatopia.elements.values()].find(e => e.name === 'Ball' && e.body)?.id",
    );
    let ball = ball.as_str().unwrap().to_string();
    page.eval(&format!("window.metatopia.select({ball:?}); document.getElementById('pushforce').value = '20'; document.getElementById('push').click(); true"));
    eventually("the pushed ball to move sideways", || {
        let st = state(&node);
        let b = st["elements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == ball.as_str())?
            .clone();
        let v = &b["body"]["vel"];
        let h = |k: &str| v[k].as_str().unwrap().parse::<f64>().unwrap().abs();
        (h("x") + h("y") > 0.5).then_some(())
    });
    page.screenshot("viewer-scripts");
    // The live node has no ground collider: the pushed ball slides on for
    // ever and could roll under the click below. It has done its part.
    let gone = node.act(&json!({"do": "delete", "element": ball}));
    assert_eq!(gone.status, 200, "{}", gone.text());
    page.wait_for(
        "the ball to be gone",
        &format!("!window.metatopia.meshes.has({ball:?})"),
    );

    // Click-to-go: a click on the ground walks the avatar there.
    page.eval(&format!(
        "(() => {{ const m = window.metatopia; const p = m.meshes.get({avatar:?}).position; \
         m.controls.target.copy(p); m.camera.position.set(p.x, p.y + 25, p.z + 0.1); return true; }})()"
    ));
    // South-west of the avatar, where nothing was built or pushed. The
    // camera eases to where it was put: wait until the point under the
    // click stays the same, or the click lands elsewhere than `goal`.
    let ground_at =
        "(() => { const h = window.metatopia.pick(300, 550); return h && h.ground; })()";
    let mut goal = page.wait_for("a ground point", ground_at);
    for _ in 0..100 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = page.wait_for("a ground point", ground_at);
        if now == goal {
            break;
        }
        goal = now;
    }
    let (gx, gy) = (goal["x"].as_f64().unwrap(), goal["y"].as_f64().unwrap());
    page.click(300.0, 550.0, 0);
    page.wait_for(
        "the page to show the avatar there",
        &format!(
            "(() => {{ const e = window.metatopia.elements.get({avatar:?}); return Math.hypot(parseFloat(e.pos.x) - {gx}, parseFloat(e.pos.y) - {gy}) < 0.01; }})()"
        ),
    );
    let arrived = eventually("the avatar to arrive", || {
        let p = pos(&element_named(&state(&node), "Browser Tester").unwrap());
        (((p.0 - gx).powi(2) + (p.1 - gy).powi(2)).sqrt() < 0.01).then_some(p)
    });
    println!("clicked the ground at ({gx:.2}, {gy:.2}); the avatar went to {arrived:?}");

    // A falling body is drawn between ticks: sampled at every frame for a
    // second, some drawn heights lie strictly between the last two heights
    // the stream gave (interpolation), and none below the newest (the page
    // never draws ahead of the sim).
    assert_eq!(
        node.act(
            &json!({"do": "spawn_body", "name": "Drop", "pos": "100,100,60", "shape": "ball:0.5"})
        )
        .status,
        200
    );
    let drop_id = page.wait_for(
        "the falling ball",
        "[...window.metatopia.elements.values()].find(e => e.name === 'Drop' && window.metatopia.meshes.has(e.id))?.id",
    );
    let samples = page.eval(&format!(
        "new Promise(done => {{ const m = window.metatopia, id = {drop_id}; let last = null, prev = null; const out = [];
           const t0 = performance.now();
           const step = () => {{
             const z = parseFloat(m.elements.get(id).pos.z);
             if (last !== null && z !== last) prev = last;
             last = z;
             if (prev !== null) out.push([m.meshes.get(id).position.y, prev, z]);
             if (performance.now() - t0 < 1000) requestAnimationFrame(step); else done(out);
           }};
           requestAnimationFrame(step); }})"
    ));
    let samples = samples.as_array().unwrap();
    let between = samples
        .iter()
        .filter(|s| {
            let (y, a, b) = (
                s[0].as_f64().unwrap(),
                s[1].as_f64().unwrap(),
                s[2].as_f64().unwrap(),
            );
            y < a - 1e-6 && y > b + 1e-6
        })
        .count();
    let ahead = samples
        .iter()
        .filter(|s| s[0].as_f64().unwrap() < s[2].as_f64().unwrap() - 1e-6)
        .count();
    println!(
        "falling ball: {} frames sampled, {between} drawn between two ticks, {ahead} ahead of the sim",
        samples.len()
    );
    assert!(between > 0, "interpolated frames: {samples:?}");
    assert_eq!(ahead, 0, "{samples:?}");

    // Delete the lamp from the Build tab: gone from the node and the page.
    page.eval(&format!(
        "document.querySelector('[data-tab=build]').click(); window.metatopia.select({lamp:?}); document.getElementById('delete').click(); true"
    ));
    eventually("the lamp deleted", || {
        element_named(&state(&node), "Lamp").is_none().then_some(())
    });
    page.wait_for(
        "the lamp gone from the page",
        &format!(
            "!window.metatopia.meshes.has({lamp:?}) && !window.metatopia.elements.has({lamp:?})"
        ),
    );

    // The status lines: tick duration, the group's agreement, latency.
    let status = page.wait_for(
        "the status lines",
        "(() => { const t = document.getElementById('status').textContent; return t.includes('tick duration') && t.includes('hashes agree') && t.includes('input→commit') && t; })()",
    );
    println!("status: {status}");

    // Nothing went wrong on the way, so the page showed no error.
    assert_eq!(page.eval("window.metatopia.errors"), json!([]));
    node.kill9();
}

#[test]
#[ignore = "needs chromium; run by .ci/run"]
fn the_page_polls_when_it_cannot_stream_and_reconnects_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[limits]\nstream_subscribers_max = 1\n",
    )
    .unwrap();
    let node = Node::start(dir.path());
    let url = format!("{}/#token={}", node.base, node.token());
    let browser = Browser::launch();
    let mut first = browser.open(&url);
    first.wait_for(
        "the first page streaming",
        "document.body.dataset.mode === 'stream'",
    );

    // The second page finds the stream full: it polls, and says why.
    let mut second = browser.open(&url);
    let banner = second.wait_for(
        "the second page polling",
        "document.body.dataset.mode === 'poll' && document.getElementById('conn').textContent",
    );
    println!("second page: {banner}");
    assert!(
        banner
            .as_str()
            .unwrap()
            .contains("too many stream subscribers"),
        "{banner}"
    );
    // Polling still shows the world: a chat line said through the API.
    assert_eq!(
        node.act(&json!({"do": "join", "name": "Poller"})).status,
        200
    );
    assert_eq!(
        node.act(&json!({"do": "say", "text": "seen by polling"}))
            .status,
        200
    );
    second.wait_for(
        "the line on the polling page",
        "document.getElementById('chat').textContent.includes('Poller: seen by polling')",
    );
    second.screenshot("viewer-polling");
    second.close();

    // The node dies: the page says so in words, then reconnects to the
    // restarted node (same data directory, same address) and streams again.
    let addr = node.base.trim_start_matches("http://").to_string();
    node.kill9();
    let down = first.wait_for(
        "the page to notice",
        "document.body.dataset.mode !== 'stream' && document.getElementById('conn').textContent",
    );
    println!("node down: {down}");
    let node = Node::start_with(&["up", "--http", &addr], dir.path());
    first.wait_for(
        "the page streaming again",
        "document.body.dataset.mode === 'stream'",
    );
    assert_eq!(
        node.act(&json!({"do": "say", "text": "after the restart"}))
            .status,
        200
    );
    first.wait_for(
        "a line said after the restart",
        "document.getElementById('chat').textContent.includes('Poller: after the restart')",
    );
    node.kill9();
}

/// `metatopia group init --members 1` writes a one-member group whose
/// libp2p address an observer can follow.
fn one_member_group(base: &Path) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = run(&[
        "group",
        "init",
        "--dir",
        base.to_str().unwrap(),
        "--members",
        "1",
        "--port",
        &port,
    ]);
    assert!(
        out.status.success(),
        "group init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    base.join("m0")
}

#[test]
#[ignore = "needs chromium; run by .ci/run"]
fn two_players_on_two_nodes_see_each_other_move_and_chat() {
    let base = tempfile::tempdir().unwrap();
    let m0 = one_member_group(base.path());
    let host = Node::start(&m0);
    let guest = Node::observe(&base.path().join("guest"), &host.base);

    let b1 = Browser::launch();
    let b2 = Browser::launch();
    let mut ann = b1.open(&format!("{}/#token={}", host.base, host.token()));
    let mut bob = b2.open(&format!("{}/#token={}", guest.base, guest.token()));
    let ann_avatar = join_from_page(&mut ann, "Ann");
    let bob_avatar = join_from_page(&mut bob, "Bob");

    // Each page draws the other's avatar.
    ann.wait_for(
        "Bob's avatar on Ann's page",
        &format!("window.metatopia.meshes.has({bob_avatar:?})"),
    );
    bob.wait_for(
        "Ann's avatar on Bob's page",
        &format!("window.metatopia.meshes.has({ann_avatar:?})"),
    );

    // Bob walks; Ann's page sees his avatar move, and the other way round.
    walk_and_watch(&mut bob, &mut ann, &bob_avatar);
    walk_and_watch(&mut ann, &mut bob, &ann_avatar);

    // Each sees the other's chat.
    chat_and_hear(&mut ann, &mut bob, "Ann", "hello Bob");
    chat_and_hear(&mut bob, &mut ann, "Bob", "hello Ann");
    ann.screenshot("two-players-ann");
    bob.screenshot("two-players-bob");

    // The people tab: Ann is admin, and the temp-admin rule says why
    // nobody is temp admin.
    bob.eval("document.querySelector('[data-tab=people]').click(); true");
    let people = bob.wait_for(
        "the people tab",
        "(() => { const t = document.getElementById('people').textContent; return t.includes('Annadmin') && t.includes('Bob (you)') && t; })()",
    );
    println!("Bob's people tab: {people}");
    let rule = bob.wait_for(
        "the rule",
        "document.getElementById('rule').textContent.includes('no temp admin') && document.getElementById('rule').textContent",
    );
    println!("Bob's rule line: {rule}");

    // Bob is no admin: his kick of Ann is refused in words on his page.
    bob.eval(&format!(
        "document.querySelector('[data-tab=people]').click(); document.querySelector('button[data-act=kick][data-player=\"' + {:?} + '\"]').click(); true",
        host_player(&host)
    ));
    let refusal = bob.wait_for(
        "the refusal",
        "document.getElementById('adminmsg').classList.contains('bad') && document.getElementById('adminmsg').textContent",
    );
    println!("Bob's kick: {refusal}");
    assert!(refusal.as_str().unwrap().starts_with("kick: "), "{refusal}");

    // Ann is: she grants Bob admin, and his page shows his badge.
    ann.eval(&format!(
        "document.querySelector('[data-tab=people]').click(); document.querySelector('button[data-act=grant][data-player=\"' + {:?} + '\"]').click(); true",
        host_player(&guest)
    ));
    ann.wait_for(
        "the grant done",
        "document.getElementById('adminmsg').classList.contains('ok') && document.getElementById('adminmsg').textContent",
    );
    bob.wait_for(
        "Bob's admin badge",
        "document.getElementById('people').textContent.includes('Bob (you)admin')",
    );

    // Ann renames the region from the settings form; Bob's page shows it.
    ann.eval(
        "document.getElementById('set-name').value = 'Harbour'; document.querySelector('#settings button').click(); true",
    );
    bob.wait_for(
        "the new name",
        "document.getElementById('title').textContent === 'Harbour'",
    );
    drop(guest);
    host.kill9();
}

fn host_player(node: &Node) -> String {
    node.get("/api/status").json().unwrap()["node"]["player"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `walker` holds D until `watcher`'s page has `avatar` more than 1.5 m away.
fn walk_and_watch(walker: &mut Page, watcher: &mut Page, avatar: &str) {
    let start = watcher.eval(&format!(
        "(() => {{ const e = window.metatopia.elements.get({avatar:?}); return [parseFloat(e.pos.x), parseFloat(e.pos.y)]; }})()"
    ));
    walker.eval("document.getElementById('scene').focus(); true");
    walker.key("d", true);
    watcher.wait_for(
        "the other avatar to move",
        &format!(
            "(() => {{ const e = window.metatopia.elements.get({avatar:?}); return Math.hypot(parseFloat(e.pos.x) - {}, parseFloat(e.pos.y) - {}) > 1.5; }})()",
            start[0], start[1]
        ),
    );
    walker.key("d", false);
}

/// `speaker` says `text` from the chat box; `listener`'s page shows it.
fn chat_and_hear(speaker: &mut Page, listener: &mut Page, name: &str, text: &str) {
    speaker.eval(&format!(
        "document.getElementById('text').value = {}; document.querySelector('#say button').click(); true",
        json!(text)
    ));
    listener.wait_for(
        "the other's chat line",
        &format!(
            "document.getElementById('chat').textContent.includes({})",
            json!(format!("{name}: {text}"))
        ),
    );
}

/// `page.wait_for(what, expr)`; on a timeout, prints what the page has
/// of the border and its ghosts, and what the nodes serve of them (their
/// status and ghosts), before failing.
fn wait_or_explain(page: &mut Page, nodes: [(&Node, u32); 2], what: &str, expr: &str) -> Value {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| page.wait_for(what, expr)));
    r.unwrap_or_else(|e| {
        let seen = page.eval(
            "(() => { const M = window.metatopia; return JSON.stringify({mode: M.mode, why: M.modeWhy, tick: M.tick, fps: M.fps, border: M.border, ghosts: [...M.ghosts.keys()], drawn: [...M.ghostMeshes.keys()], elements: [...M.elements.keys()], errors: M.errors}); })()",
        );
        println!("the page when {what} timed out: {seen}");
        for (node, region) in nodes {
            println!(
                "region {region}'s node: ghosts {}\nstatus {}",
                node.get(&format!("/api/regions/{region}/ghosts")).text(),
                node.get("/api/status").text()
            );
        }
        std::panic::resume_unwind(e)
    })
}

/// Counts, on `page`, the animation frames in which the body `id` is drawn
/// neither as an element nor as a ghost, from the first frame it is drawn
/// until `until` (a JS expression) holds: `window.__gaps`.
fn watch_gaps(page: &mut Page, id: &str, until: &str) {
    page.eval(&format!(
        "(() => {{ const M = window.metatopia; window.__gaps = 0; window.__seen = false; window.__done = false;
          const f = () => {{ if (window.__done) return;
            const drawn = M.meshes.has({id:?}) || M.ghostMeshes.has({id:?});
            if (drawn) window.__seen = true; else if (window.__seen) window.__gaps++;
            if (window.__seen && ({until})) {{ window.__done = true; return; }}
            requestAnimationFrame(f); }};
          requestAnimationFrame(f); return true; }})()"
    ));
}

/// Two regions' pages: a neighbour's post drawn translucent in its place
/// and named on hover, gone when deleted; a ball crossing drawn in every
/// frame on both pages. The crossing needs the hand-off to complete: on a
/// loaded machine (load 14-17, session 12) border sets came late, the
/// ball was kept without owner awaiting its verdict for over 60 s and the
/// wait timed out (the page then shows it nowhere, as the API does).
#[test]
#[ignore = "needs chromium; run by .ci/run"]
fn the_neighbour_regions_bodies_are_drawn_as_ghosts_and_hand_over_without_a_gap() {
    let base = common::group_init_with(&["--regions", "2", "--members", "1"]);
    let west = Node::start(&base.path().join("r0/m0"));
    let east = Node::start(&base.path().join("r1/m0"));
    // One browser per page: a page in a background tab gets no animation
    // frames.
    let (b1, b2) = (Browser::launch(), Browser::launch());
    let mut page2 = b2.open(&format!("{}/#token={}", east.base, east.token()));
    let mut page1 = b1.open(&format!("{}/#token={}", west.base, west.token()));
    for page in [&mut page1, &mut page2] {
        page.wait_for(
            "the stream and the neighbour's box",
            "document.body.dataset.mode === 'stream' && window.metatopia.border && window.metatopia.border.neighbours.length === 1",
        );
    }

    // A fixed post 1 m west of the border, in region 1: region 2's page
    // draws it translucent, 1 m west of its own ground (x = -1 in its
    // frame), and hovering it names region 1.
    assert_eq!(west.act(&json!({"do": "join", "name": "W"})).status, 200);
    let r = west.act(
        &json!({"do": "spawn_body", "name": "Post", "pos": "255,128,10",
        "shape": "ball:0.5", "kind": "fixed"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let post = eventually("the post", || {
        element_named(&state(&west), "Post").map(|e| e["id"].as_str().unwrap().to_string())
    });
    let at = wait_or_explain(
        &mut page2,
        [(&west, 1), (&east, 2)],
        "the post's ghost drawn",
        &format!(
            "(() => {{ const m = window.metatopia.ghostMeshes.get({post:?}); return m && [m.position.x, m.position.y, m.position.z, m.userData.ghost, m.userData.slots[0].pool.material.transparent]; }})()"
        ),
    );
    let xyz: Vec<f64> = (0..3).map(|i| at[i].as_f64().unwrap()).collect();
    assert_eq!(xyz, [-1.0, 10.0, -128.0], "{at}");
    assert_eq!((&at[3], &at[4]), (&json!(1), &json!(true)), "{at}");
    page2.eval(
        "(() => { const M = window.metatopia; M.controls.target.set(-1, 10, -128); M.camera.position.set(4, 13, -120); M.controls.update(); return true; })()",
    );
    let hover = page2.wait_for(
        "the ghost on screen, named on hover",
        &format!(
            "(() => {{ const p = window.metatopia.screenPos({post:?}, 0); if (!p || !p.visible) return null; const r = document.getElementById('scene').getBoundingClientRect(); return window.metatopia.hoverText(r.left + p.x, r.top + p.y); }})()"
        ),
    );
    assert!(
        hover.as_str().unwrap().contains("region 1's"),
        "hover says {hover}"
    );
    page2.screenshot("ghost-post");
    // Deleted in region 1: gone from region 2's page.
    let r = west.act(&json!({"do": "delete", "element": post}));
    assert_eq!(r.status, 200, "{}", r.text());
    page2.wait_for(
        "the post's ghost gone",
        &format!(
            "!window.metatopia.ghostMeshes.has({post:?}) && !window.metatopia.ghosts.has({post:?})"
        ),
    );

    // A ball rolling east across the border: drawn in every frame on both
    // pages, ghost then element on region 2's, element then ghost on
    // region 1's.
    let r = west.act(
        &json!({"do": "spawn_body", "name": "Runner", "pos": "248,128,3000",
        "shape": "ball:0.5", "vel": "2,0,0"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let runner = eventually("the runner", || {
        element_named(&state(&west), "Runner").map(|e| e["id"].as_str().unwrap().to_string())
    });
    watch_gaps(
        &mut page2,
        &runner,
        &format!("M.meshes.has({runner:?}) && !M.ghostMeshes.has({runner:?})"),
    );
    // Region 1's page: until region 2's ghost of it comes, or 60 ticks
    // after it left region 1 (a ball adopted more than 2 m inside region 2,
    // after a failed attempt, is never ghosted back; the page keeps a
    // placeholder 40 ticks).
    watch_gaps(
        &mut page1,
        &runner,
        &format!(
            "(M.ghosts.has({runner:?}) && (window.__ghosted = true)) || (M.meshes.has({runner:?}) ? (window.__leftAt = 0, false) : (window.__leftAt ||= M.tick, M.tick > window.__leftAt + 60))"
        ),
    );
    // Where the runner is, as the nodes serve it (for a timeout report).
    let runner_at = |node: &Node, region: u32| {
        let s: Value = node
            .get(&format!("/api/regions/{region}/state"))
            .json()
            .unwrap();
        let e = s["elements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == runner.as_str())
            .map(|e| e["pos"].clone());
        let g = s["border"]["ghosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == runner.as_str())
            .map(|g| g["pos"].clone());
        format!(
            "region {region} at tick {}: element {e:?}, ghost {g:?}",
            s["tick"]
        )
    };
    for _ in 0..20 {
        if page2.eval("window.__done") == json!(true) {
            break;
        }
        println!("{}; {}", runner_at(&west, 1), runner_at(&east, 2));
        std::thread::sleep(Duration::from_secs(2));
    }
    for (page, name) in [(&mut page2, "region 2"), (&mut page1, "region 1")] {
        wait_or_explain(
            page,
            [(&west, 1), (&east, 2)],
            &format!("the hand-off seen on {name}'s page"),
            "window.__done",
        );
    }
    let aborted: u64 = [&west, &east]
        .iter()
        .map(|n| {
            n.get("/api/status").json().unwrap()["border"]["handoffs_aborted"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let ghosted = page1.eval("window.__ghosted === true") == json!(true);
    if aborted == 0 {
        assert_eq!(
            page2.eval("window.__gaps"),
            json!(0),
            "frames without the runner on region 2's page"
        );
    }
    if aborted == 0 && ghosted {
        assert_eq!(
            page1.eval("window.__gaps"),
            json!(0),
            "frames without the runner on region 1's page"
        );
    }
    println!(
        "hand-off attempts failed: {aborted}; region 2's ghost reached region 1's page: {ghosted}; frames without the runner: region 2's page {}, region 1's {}",
        page2.eval("window.__gaps"),
        page1.eval("window.__gaps")
    );
    page2.screenshot("ghost-handed-over");
}
