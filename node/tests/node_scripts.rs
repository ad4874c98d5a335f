//! Scripts through the real binary: the same state hash in two processes
//! and with 1 or 2 threads; `script push|get` and the HTTP routes (ETag,
//! 304); licence refusals; hot reload that keeps state; a broken version
//! that is refused while the old one keeps running; replay with scripts.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, examples, final_hash, run, run_env};
use serde_json::{Value, json};

#[test]
fn scripted_scenario_hash_is_the_same_everywhere() {
    let file = examples().join("scripts.toml");
    let file = file.to_str().unwrap();
    let a = run(&["run", file]);
    let stderr = String::from_utf8_lossy(&a.stderr);
    assert!(a.status.success(), "{stderr}");
    let b = run(&["run", file]);
    let one = run_env(&["run", file], &[("RAYON_NUM_THREADS", "1")]);
    let two = run_env(&["run", file], &[("RAYON_NUM_THREADS", "2")]);
    let h = final_hash(&a);
    assert_eq!(final_hash(&b), h);
    assert_eq!(final_hash(&one), h);
    assert_eq!(final_hash(&two), h);
    let stdout = String::from_utf8_lossy(&a.stdout);
    assert!(stdout.contains("0 rejected"), "{stdout}");
    // The scripts did something: fewer ticks give another hash.
    let shorter = run(&["run", file, "--ticks", "79"]);
    assert_ne!(final_hash(&shorter), h);
}

#[test]
fn scenario_script_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[region]]\nid = 1\n[[script]]\nkey = \"x\"\nsource = \"function on_touch() end\"\n",
            "script[0]: no SPDX-License-Identifier",
        ),
        (
            "[[region]]\nid = 1\n[[script]]\nkey = \"x\"\nsource = \"-- SPDX-License-Identifier: MIT\\n\"\n",
            "licence \"MIT\" is not accepted",
        ),
        (
            "[[region]]\nid = 1\n[[script]]\nkey = \"x\"\npath = \"missing.lua\"\n",
            "script[0].path",
        ),
        (
            "[[region]]\nid = 1\n[[player]]\nname = \"a\"\n[[object]]\nkey = \"o\"\nname = \"o\"\npos = \"1,1,1\"\n[[input]]\ntick = 0\nby = \"a\"\ndo = \"attach\"\nelement = \"@o\"\nscript = \"@nope\"\n",
            "input[0].script",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("s{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = run(&["run", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i}");
        assert!(stderr.contains(want), "case {i}: {stderr}");
    }
}

fn chat(node: &Node) -> Vec<String> {
    let v = node.get("/api/regions/1/state").json().unwrap();
    v["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

fn push(data: &str, file: &std::path::Path, object: Option<&str>) -> std::process::Output {
    let mut args = vec!["script", "push", file.to_str().unwrap(), "--data", data];
    if let Some(o) = object {
        args.extend(["--object", o]);
    }
    run(&args)
}

/// Long on purpose: one scenario told step by step; its assertions read the state the steps before them built.
#[test]
fn push_get_attach_reload_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let node = Node::start(dir.path());
    assert_eq!(node.act(&json!({"do": "join", "name": "A"})).status, 200);
    assert_eq!(
        node.act(&json!({"do": "create", "name": "lamp", "pos": "3,4,0"}))
            .status,
        200
    );
    let state: Value = node.get("/api/regions/1/state").json().unwrap();
    let lamp = state["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "lamp")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Publish and attach the counter.
    let counter = examples().join("scripts/counter.lua");
    let out = push(data, &counter, Some(&lamp));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(hash.len(), 64);
    let source = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(hash, blake3::hash(source.as_bytes()).to_hex().to_string());

    // Anyone can fetch the exact source; strong ETag and 304.
    let r = node.get(&format!("/scripts/{hash}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), source);
    let etag = r
        .headers
        .iter()
        .find(|(k, _)| k == "etag")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(etag, format!("\"{hash}\""));
    let r = metatopia_node::client::request(
        &node.base,
        "GET",
        &format!("/scripts/{hash}"),
        &[("If-None-Match", etag.as_str())],
        None,
    )
    .unwrap();
    assert_eq!(r.status, 304);
    assert_eq!(
        node.get(&format!("/scripts/{}", "0".repeat(64))).status,
        404
    );
    assert_eq!(node.get("/scripts/nothex").status, 400);
    let got = run(&["script", "get", &hash, "--data", data]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), source);

    // The script runs.
    for _ in 0..2 {
        assert_eq!(
            node.act(&json!({"do": "touch", "element": lamp})).status,
            200
        );
    }
    assert!(chat(&node).contains(&"touched 2 times".to_string()));

    // Licence refusals name the accepted identifiers; nothing is stored.
    let bad = dir.path().join("bad.lua");
    for (text, want) in [
        ("function on_touch() end\n", "no SPDX-License-Identifier"),
        (
            "-- SPDX-License-Identifier: MIT\nfunction on_touch() end\n",
            "licence \"MIT\" is not accepted",
        ),
        ("-- SPDX-License-Identifier: GPL-3.0-only OR\n", "malformed"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = push(data, &bad, Some(&lamp));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(want), "{stderr}");
        assert!(stderr.contains("AGPL-3.0-or-later"), "{stderr}");
    }

    // A broken new version is refused; the old one keeps running.
    std::fs::write(
        &bad,
        "-- SPDX-License-Identifier: MPL-2.0\nfunction on_touch( oops\n",
    )
    .unwrap();
    let out = push(data, &bad, Some(&lamp));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("syntax error"));
    std::fs::write(
        &bad,
        "-- SPDX-License-Identifier: MPL-2.0\nerror('fails at load')\n",
    )
    .unwrap();
    let out = push(data, &bad, Some(&lamp));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fails at load"));
    assert_eq!(
        node.act(&json!({"do": "touch", "element": lamp})).status,
        200
    );
    assert!(chat(&node).contains(&"touched 3 times".to_string()));

    // Hot reload: the new version sees the old state.
    let v2 = dir.path().join("v2.lua");
    std::fs::write(
        &v2,
        "-- SPDX-License-Identifier: GPL-3.0-or-later\nfunction on_touch() state.n = state.n + 1; say('v2 at ' .. state.n) end\n",
    )
    .unwrap();
    let out = push(data, &v2, Some(&lamp));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        node.act(&json!({"do": "touch", "element": lamp})).status,
        200
    );
    assert!(
        chat(&node).contains(&"v2 at 4".to_string()),
        "{:?}",
        chat(&node)
    );

    // PUT without a token is refused.
    let r = metatopia_node::client::request(&node.base, "PUT", "/api/scripts", &[], Some(b"x"))
        .unwrap();
    assert_eq!(r.status, 401);

    // Replay re-runs the scripts from genesis and matches every checkpoint.
    assert!(node.terminate());
    let replay = run(&["replay", "--data", data]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(String::from_utf8_lossy(&replay.stdout).contains("every checkpoint matches"));
}
