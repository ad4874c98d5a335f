//! The viewer's files come from the binary: the page at `/`, its script,
//! style, three.js and CodeMirror under `/viewer/{version}/`, with content types, a
//! year's cache under the current version, strong ETags and 304s; nothing
//! on the page points off the node.

#![allow(clippy::unwrap_used)]

mod common;

use common::Node;
use metatopia_node::client;

#[test]
fn the_node_serves_the_viewer_and_three_js_from_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());

    let page = node.get("/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let html = page.text();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    let version = html
        .split("/viewer/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string();
    assert_eq!(version.len(), 16, "{html}");
    let etag = page.header("etag").unwrap().to_string();
    let again = client::request(
        &node.base,
        "GET",
        "/",
        &[("If-None-Match", etag.as_str())],
        None,
    )
    .unwrap();
    assert_eq!(again.status, 304);

    for (file, kind, needle) in [
        ("viewer.js", "text/javascript; charset=utf-8", "onFrame"),
        ("viewer.css", "text/css; charset=utf-8", "#scene"),
        (
            "vendor/three/three.module.js",
            "text/javascript; charset=utf-8",
            "three.core.js",
        ),
        (
            "vendor/three/three.core.js",
            "text/javascript; charset=utf-8",
            "REVISION",
        ),
        (
            "vendor/three/OrbitControls.js",
            "text/javascript; charset=utf-8",
            "class OrbitControls",
        ),
        ("vendor/three/LICENSE", "text/plain; charset=utf-8", "MIT"),
        (
            "vendor/codemirror/view.js",
            "text/javascript; charset=utf-8",
            "class EditorView",
        ),
        (
            "vendor/codemirror/lua.js",
            "text/javascript; charset=utf-8",
            "export const lua",
        ),
        (
            "vendor/codemirror/LICENSES.txt",
            "text/plain; charset=utf-8",
            "MIT",
        ),
    ] {
        let path = format!("/viewer/{version}/{file}");
        if ["viewer.js", "viewer.css", "vendor/three/three.module.js"].contains(&file) {
            assert!(html.contains(&path), "the page links {path}");
        }
        let r = node.get(&path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(kind), "{path}");
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{path}"
        );
        assert!(r.text().contains(needle), "{path} has {needle}");
        let etag = r.header("etag").unwrap().to_string();
        let cached = client::request(
            &node.base,
            "GET",
            &path,
            &[("If-None-Match", etag.as_str())],
            None,
        )
        .unwrap();
        assert_eq!(cached.status, 304, "{path}");
    }

    // A page from an older binary still gets the file, but not cached for
    // a year under a version that is not the binary's.
    let old = node.get("/viewer/0000000000000000/viewer.js");
    assert_eq!(old.status, 200);
    assert_eq!(old.header("cache-control"), Some("no-cache"));

    let missing = node.get(&format!("/viewer/{version}/secret.txt"));
    assert_eq!(missing.status, 404);
    assert!(
        missing.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("secret.txt")
    );
    node.kill9();
}
