//! A small Chrome DevTools Protocol client for the browser tests: starts
//! headless Chromium (Debian's `chromium`, which `.ci/run` installs), opens
//! pages, evaluates JavaScript, types, clicks and takes screenshots, over a
//! WebSocket (`tungstenite`). No npm, no driver binary.
//!
//! Included by the browser tests with `#[path = "common/cdp.rs"] mod cdp;`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// How long any one wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A headless Chromium with a DevTools endpoint.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    /// `127.0.0.1:PORT` of the DevTools endpoint.
    host: String,
    browser_ws: String,
}

impl Browser {
    /// Starts Chromium with WebGL on SwiftShader (the software renderer; a
    /// test machine has no GPU) and a 1280×800 window.
    pub fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                "--ignore-gpu-blocklist",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium is installed (see .ci/run)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                    sent = true;
                }
                // Keep draining so Chromium never blocks on a full pipe.
            }
        });
        let browser_ws = rx
            .recv_timeout(WAIT)
            .expect("chromium printed its DevTools address");
        let host = browser_ws
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .unwrap()
            .to_string();
        Browser {
            child,
            _profile: profile,
            host,
            browser_ws,
        }
    }

    /// Opens `url` in a new tab and returns a session attached to it.
    pub fn open(&self, url: &str) -> Page {
        let mut b = Page::connect(&self.browser_ws);
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
        let id = target["targetId"].as_str().unwrap().to_string();
        let mut page = Page::connect(&format!("ws://{}/devtools/page/{id}", self.host));
        page.call("Page.enable", json!({}));
        page.call("Runtime.enable", json!({}));
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        page.call("Page.navigate", json!({ "url": url }));
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab.
pub struct Page {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
    /// Console messages and exceptions the page logged, for failure reports.
    pub console: Vec<String>,
}

impl Page {
    fn connect(url: &str) -> Page {
        let (ws, _) = tungstenite::connect(url).expect("connect to the DevTools endpoint");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(WAIT)).unwrap();
        }
        Page {
            ws,
            next: 1,
            console: Vec::new(),
        }
    }

    /// Sends one command and waits for its answer (events in between are
    /// kept when they are console output, else dropped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().expect("a DevTools answer");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method} failed: {}", v["error"]);
                return v["result"].clone();
            }
            match v["method"].as_str() {
                Some("Runtime.consoleAPICalled") => {
                    let args: Vec<String> = v["params"]["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            a["value"]
                                .as_str()
                                .map_or_else(|| a["description"].to_string(), str::to_string)
                        })
                        .collect();
                    self.console.push(args.join(" "));
                }
                Some("Runtime.exceptionThrown") => {
                    self.console
                        .push(v["params"]["exceptionDetails"].to_string());
                }
                _ => {}
            }
        }
    }

    /// Closes the tab.
    pub fn close(mut self) {
        self.call("Page.close", json!({}));
    }

    /// Evaluates `expr` (promises awaited) and returns its value as JSON.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr} threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits (bounded by [`WAIT`]) until `expr` is neither null, false nor
    /// undefined, and returns its value.
    pub fn wait_for(&mut self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.eval(&format!(
                "(() => {{ try {{ return {expr}; }} catch (e) {{ return null; }} }})()"
            ));
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            if Instant::now() > deadline {
                let errors =
                    self.eval("JSON.stringify(window.metatopia && window.metatopia.errors)");
                panic!(
                    "timed out waiting for {what} ({expr}); page errors: {errors}; console: {:?}",
                    self.console
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A key press or release (`key` as in `KeyboardEvent.key`: "w", "ArrowUp").
    pub fn key(&mut self, key: &str, down: bool) {
        let (code, vk) = match key {
            "w" => ("KeyW", 87),
            "a" => ("KeyA", 65),
            "s" => ("KeyS", 83),
            "d" => ("KeyD", 68),
            "ArrowUp" => ("ArrowUp", 38),
            "ArrowDown" => ("ArrowDown", 40),
            "ArrowLeft" => ("ArrowLeft", 37),
            "ArrowRight" => ("ArrowRight", 39),
            "Enter" => ("Enter", 13),
            other => panic!("no key code for {other}"),
        };
        let mut p = json!({
            "type": if down { "keyDown" } else { "keyUp" },
            "key": key, "code": code, "windowsVirtualKeyCode": vk,
        });
        if down && key == "Enter" {
            p["text"] = json!("\r");
        }
        self.call("Input.dispatchKeyEvent", p);
    }

    /// Types `text` into the focused element.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// A left click at CSS pixel (`x`, `y`), with `modifiers` (8: shift).
    pub fn click(&mut self, x: f64, y: f64, modifiers: u32) {
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1, "modifiers": modifiers}),
            );
        }
    }

    /// Saves a PNG of the page to `target/browser-artefacts/NAME.png`
    /// (printed) and returns its path.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let dir = artefacts();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }
}

/// `target/browser-artefacts` (under `CARGO_TARGET_DIR` when set).
pub fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("browser-artefacts")
}
