//! The content store through the real binary: `PUT /api/assets` and `GET
//! /assets/{hash}` (ETag, 304, Range), a hash mismatch refused, a
//! corrupted file never served, the caps of `[limits]` refused with their
//! numbers, `asset put|get`, an old `DIR/scripts` moved into the store,
//! and `content gc` keeping a referenced script while an unreferenced
//! asset goes.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, bytes, examples, put, run};
use metatopia_node::client::{Response, request};
use serde_json::{Value, json};

fn get_with(node: &Node, path: &str, headers: &[(&str, &str)]) -> Response {
    request(&node.base, "GET", path, headers, None).unwrap()
}

fn hex_hash(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

fn error_of(r: &Response) -> String {
    r.json().unwrap()["error"].as_str().unwrap().to_string()
}

fn metric(node: &Node, name: &str) -> u64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn blobs_on_disk(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("content"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.len() == 64 && !n.starts_with('.')
        })
        .count()
}

/// Long on purpose: one upload, then every way of reading it back.
#[test]
fn upload_fetch_304_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // Larger than the 64 KiB limit of the other routes, and streamed.
    let asset = bytes(300_000, 7);
    let hash = hex_hash(&asset);

    let r = request(&node.base, "PUT", "/api/assets", &[], Some(&asset)).unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let r = put(&node, "/api/assets", &asset);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["hash"], hash);
    assert_eq!(v["bytes"], 300_000);
    assert_eq!(v["new"], true);
    assert_eq!(
        put(&node, "/api/assets", &asset).json().unwrap()["new"],
        false
    );
    // The other routes keep their 64 KiB limit.
    let r = put(&node, "/api/scripts", &vec![b'-'; 100_000]);
    assert_eq!(r.status, 413, "{}", r.text());

    let path = format!("/assets/{hash}");
    let r = node.get(&path);
    assert_eq!(r.status, 200);
    assert!(r.body == asset, "the bytes come back exactly");
    let etag = format!("\"{hash}\"");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let r = node.get(&format!("{path}?type=model/gltf-binary"));
    assert_eq!(r.header("content-type"), Some("model/gltf-binary"));
    let r = node.get(&format!("{path}?type=text/html;%20x"));
    assert_eq!(r.status, 400, "{}", r.text());

    let r = get_with(&node, &path, &[("If-None-Match", etag.as_str())]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = get_with(&node, &path, &[("If-None-Match", "\"other\"")]);
    assert_eq!(r.status, 200);

    let n = asset.len();
    let cases: [(&str, usize, usize); 5] = [
        ("bytes=0-99", 0, 99),                     // first bytes
        ("bytes=150000-150009", 150_000, 150_009), // middle
        ("bytes=-1000", n - 1000, n - 1),          // suffix
        ("bytes=299990-", 299_990, n - 1),         // open-ended
        ("bytes=299000-999999", 299_000, n - 1),   // clipped
    ];
    for (range, a, b) in cases {
        let r = get_with(&node, &path, &[("Range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{b}/{n}").as_str()),
            "{range}"
        );
        assert!(r.body == asset[a..=b], "{range}: the right bytes");
    }
    let r = get_with(&node, &path, &[("Range", "bytes=300000-")]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    assert!(error_of(&r).contains("300000 bytes"));
    // Several ranges: the whole body with 200.
    let r = get_with(&node, &path, &[("Range", "bytes=0-1,5-6")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n);
    // If-Range naming another version: the whole body.
    let r = get_with(
        &node,
        &path,
        &[("Range", "bytes=0-1"), ("If-Range", "\"other\"")],
    );
    assert_eq!(r.status, 200);

    // A small asset (read whole) answers ranges the same way.
    let small = b"0123456789".to_vec();
    let small_hash = put(&node, "/api/assets", &small).json().unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let r = get_with(
        &node,
        &format!("/assets/{small_hash}"),
        &[("Range", "bytes=-3")],
    );
    assert_eq!((r.status, r.body.as_slice()), (206, &b"789"[..]));

    let r = node.get("/assets/nothex");
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("64 hex digits"));
    let r = node.get(&format!("/assets/{}", "0".repeat(64)));
    assert_eq!(r.status, 404);
    let missing = format!("\"{}\"", "0".repeat(64));
    let r = get_with(
        &node,
        &format!("/assets/{}", "0".repeat(64)),
        &[("If-None-Match", missing.as_str())],
    );
    assert_eq!(
        r.status, 304,
        "the name is the hash: a client holding bytes with this ETag holds the blob, stored here or not"
    );

    // The CLI verbs.
    let data = dir.path().to_str().unwrap();
    let file = dir.path().join("in.bin");
    let cli_bytes = bytes(70_000, 9);
    std::fs::write(&file, &cli_bytes).unwrap();
    let out = run(&["asset", "put", file.to_str().unwrap(), "--data", data]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(cli_hash, hex_hash(&cli_bytes));
    let back = dir.path().join("out.bin");
    let out = run(&[
        "asset",
        "get",
        &cli_hash,
        "-o",
        back.to_str().unwrap(),
        "--data",
        data,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&back).unwrap() == cli_bytes);
    let out = run(&["asset", "get", &"1".repeat(64), "--data", data]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no blob"));

    assert!(metric(&node, "metatopia_content_bytes") >= (n + 10 + 70_000) as u64);
}

#[test]
fn hash_mismatch_refused_and_corruption_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let asset = bytes(100_000, 3);
    let hash = hex_hash(&asset);
    let other = hex_hash(b"something else");

    let r = put(&node, &format!("/api/assets?hash={other}"), &asset);
    assert_eq!(r.status, 400, "{}", r.text());
    let e = error_of(&r);
    assert!(e.contains(&hash) && e.contains(&other), "{e}");
    assert_eq!(node.get(&format!("/assets/{hash}")).status, 404);
    assert_eq!(blobs_on_disk(dir.path()), 0, "nothing stored");
    assert_eq!(metric(&node, "metatopia_content_refused_hash_total"), 1);
    let r = put(&node, "/api/assets?hash=xyz", &asset);
    assert_eq!(r.status, 400);
    let r = put(
        &node,
        &format!("/api/assets?hash={}", hash.to_uppercase()),
        &asset,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Served once (and remembered as verified), then damaged in place.
    let path = format!("/assets/{hash}");
    assert_eq!(node.get(&path).status, 200);
    let file = dir.path().join("content").join(&hash);
    let mut damaged = asset.clone();
    damaged[50_000] ^= 1;
    std::fs::write(&file, &damaged).unwrap();
    let etag = format!("\"{hash}\"");
    for headers in [&[][..], &[("Range", "bytes=0-9")][..]] {
        let r = get_with(&node, &path, headers);
        assert_eq!(r.status, 500, "{}", r.text());
        assert!(error_of(&r).contains("corrupt"), "{}", r.text());
    }
    assert!(metric(&node, "metatopia_content_corrupt_total") >= 2);
    // A client that holds the blob is told its copy is current (it is:
    // the ETag is the hash), with no byte of the damaged file.
    let r = get_with(&node, &path, &[("If-None-Match", etag.as_str())]);
    assert_eq!(r.status, 304);
    // Uploading the bytes again repairs it.
    let r = put(&node, "/api/assets", &asset);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = node.get(&path);
    assert_eq!(r.status, 200);
    assert!(r.body == asset);
}

fn node_with_caps(data: &std::path::Path, blob: u64, player: u64, store: u64) -> Node {
    std::fs::write(
        data.join("node.toml"),
        format!(
            "[limits]\ncontent_blob_bytes_max = {blob}\ncontent_player_bytes_max = {player}\ncontent_store_bytes_max = {store}\n"
        ),
    )
    .unwrap();
    Node::start(data)
}

#[test]
fn caps_refused_with_their_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_caps(dir.path(), 1000, 2000, 1_000_000);
    let r = put(&node, "/api/assets", &bytes(1001, 1));
    assert_eq!(r.status, 413, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["limit"], "content_blob_bytes_max");
    assert_eq!(
        (v["bytes"].clone(), v["max"].clone()),
        (json!(1001), json!(1000))
    );
    assert!(v["error"].as_str().unwrap().contains("1001"));
    assert_eq!(put(&node, "/api/assets", &bytes(1000, 2)).status, 200);
    assert_eq!(put(&node, "/api/assets", &bytes(1000, 3)).status, 200);
    let r = put(&node, "/api/assets", &bytes(10, 4));
    assert_eq!(r.status, 507, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["limit"], "content_player_bytes_max");
    assert_eq!(
        (v["used"].clone(), v["max"].clone()),
        (json!(2000), json!(2000))
    );
    // Bytes already stored cost nothing.
    assert_eq!(put(&node, "/api/assets", &bytes(1000, 2)).status, 200);
    // Scripts count too.
    let r = put(
        &node,
        "/api/scripts",
        b"-- SPDX-License-Identifier: AGPL-3.0-or-later\n",
    );
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(blobs_on_disk(dir.path()), 2, "nothing else stored");
    assert_eq!(
        metric(&node, "metatopia_content_refused_blob_bytes_max_total"),
        1
    );
    assert_eq!(
        metric(&node, "metatopia_content_refused_player_bytes_max_total"),
        2
    );
    drop(node);
    // The usage outlives a restart.
    let node = Node::start(dir.path());
    let r = put(&node, "/api/assets", &bytes(10, 4));
    assert_eq!(r.status, 507, "{}", r.text());
    drop(node);

    let dir = tempfile::tempdir().unwrap();
    let node = node_with_caps(dir.path(), 1000, 1_000_000, 1500);
    assert_eq!(put(&node, "/api/assets", &bytes(1000, 5)).status, 200);
    let r = put(&node, "/api/assets", &bytes(1000, 6));
    assert_eq!(r.status, 507, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["limit"], "content_store_bytes_max");
    assert_eq!(
        metric(&node, "metatopia_content_refused_store_bytes_max_total"),
        1
    );
    assert_eq!(blobs_on_disk(dir.path()), 1);

    // A bad cap in node.toml names the key.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "[limits]\ncontent_blob_bytes_max = 0\n",
    )
    .unwrap();
    let out = run(&[
        "up",
        "--http",
        "127.0.0.1:0",
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.content_blob_bytes_max"));
}

/// A node with an object that runs the counter script (attached through
/// the API), plus an unattached script and an asset. Returns the node,
/// the attached script's hash, the unattached one's and the asset's.
fn world_with_content(dir: &std::path::Path) -> (Node, String, String, String) {
    let node = Node::start(dir);
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
    let counter = std::fs::read(examples().join("scripts/counter.lua")).unwrap();
    let r = put(&node, &format!("/api/scripts?object={lamp}"), &counter);
    assert_eq!(r.status, 200, "{}", r.text());
    let attached = r.json().unwrap()["hash"].as_str().unwrap().to_string();
    let loose = b"-- SPDX-License-Identifier: AGPL-3.0-or-later\n-- never attached\n";
    let r = put(&node, "/api/scripts", loose);
    assert_eq!(r.status, 200, "{}", r.text());
    let unattached = r.json().unwrap()["hash"].as_str().unwrap().to_string();
    let r = put(&node, "/api/assets", &bytes(5000, 8));
    assert_eq!(r.status, 200, "{}", r.text());
    let asset = r.json().unwrap()["hash"].as_str().unwrap().to_string();
    (node, attached, unattached, asset)
}

#[test]
fn an_old_scripts_dir_is_moved_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (node, attached, unattached, _) = world_with_content(dir.path());
    assert!(node.terminate());
    // Put the sources back where older versions kept them.
    let content = dir.path().join("content");
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    for h in [&attached, &unattached] {
        std::fs::rename(content.join(h), scripts.join(format!("{h}.lua"))).unwrap();
    }
    // Recovery replays the attach: it needs the source, from the old place.
    let node = Node::start(dir.path());
    for h in [&attached, &unattached] {
        assert_eq!(node.get(&format!("/scripts/{h}")).status, 200);
        assert!(content.join(h).exists());
    }
    assert!(!scripts.exists(), "the old directory is gone once empty");
    // The script runs: touching the lamp is not refused.
    let state: Value = node.get("/api/regions/1/state").json().unwrap();
    let lamp = state["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "lamp")
        .unwrap();
    assert_eq!(lamp["script"], json!(attached), "{lamp}");
}

#[test]
fn gc_keeps_referenced_scripts_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (node, attached, unattached, asset) = world_with_content(dir.path());
    let out = run(&["content", "gc", "--grace-secs", "0", "--data", data]);
    assert!(!out.status.success(), "refused while the node runs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    assert!(node.terminate());

    // Within the default grace period nothing goes.
    let out = run(&["content", "gc", "--data", data]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("kept {attached} ")), "{stdout}");
    assert!(
        stdout.contains(&format!("kept {asset} 5000 younger")),
        "{stdout}"
    );
    assert!(stdout.contains("gc: removed 0 blobs"), "{stdout}");

    let out = run(&[
        "content",
        "gc",
        "--grace-secs",
        "0",
        "--dry-run",
        "--data",
        data,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("would remove {asset} 5000")),
        "{stdout}"
    );
    assert!(dir.path().join("content").join(&asset).exists());

    let out = run(&["content", "gc", "--grace-secs", "0", "--data", data]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("removed {asset} 5000")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("removed {unattached} ")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("kept {attached} ")), "{stdout}");
    assert!(stdout.contains("referenced"), "{stdout}");
    assert!(!dir.path().join("content").join(&asset).exists());
    assert!(!dir.path().join("content").join(&unattached).exists());
    assert!(dir.path().join("content").join(&attached).exists());

    // A full replay from genesis still finds every source it loads.
    let out = run(&["replay", "--data", data]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The world recovers and serves the script; the asset is gone.
    let node = Node::start(dir.path());
    assert_eq!(node.get(&format!("/scripts/{attached}")).status, 200);
    assert_eq!(node.get(&format!("/assets/{asset}")).status, 404);
}
