//! Content between peers through the real binary on loopback (issue 14):
//! a group of two members hosts a region; a player on member 1 uploads an
//! asset and sets it as an element's mesh; member 0 fetches it over
//! `/metatopia/content/1`; an observer started with `metatopia join`
//! fetches it too and serves the same bytes and ETag. Member 0 serves
//! wrong bytes (the debug-build switch `METATOPIA_TEST_CONTENT_LIE`): the
//! observer, which asks member 0 first, refuses them, counts the refusal
//! and gets the blob from member 1. A blob an element does not reference
//! is fetched on demand by `GET /assets/{hash}`; one no peer has is a 404
//! that says so.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Node, bytes, eventually, group_init_of, put};
use metatopia_node::client::Response;
use serde_json::json;

fn upload(node: &Node, body: &[u8]) -> String {
    let r = put(node, "/api/assets", body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["hash"].as_str().unwrap().to_string()
}

/// A counter in `/metrics` (0 when the line is absent).
fn metric(node: &Node, name: &str) -> u64 {
    let text = node.get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("metatopia_{name} ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn on_disk(node: &Node, hash: &str) -> Option<Vec<u8>> {
    std::fs::read(node.data.join("content").join(hash)).ok()
}

fn act_ok(node: &Node, action: serde_json::Value) -> Response {
    let r = node.act(&action);
    assert_eq!(r.status, 200, "{action}: {}", r.text());
    r
}

/// Long on purpose: one group, then every way a blob travels.
#[test]
fn an_observer_fetches_the_regions_assets_and_refuses_wrong_bytes() {
    let (base, dirs) = group_init_of(2);
    let liar = Node::start_env(&dirs[0], &[("METATOPIA_TEST_CONTENT_LIE", "1")]);
    let honest = Node::start(&dirs[1]);

    // A player on member 1 uploads a mesh and shows it on an object.
    let mesh = bytes(300_000, 3);
    let hash = upload(&honest, &mesh);
    act_ok(&honest, json!({"do": "join", "name": "maker"}));
    act_ok(
        &honest,
        json!({"do": "create", "name": "statue", "pos": "10,10,0"}),
    );
    let state = honest.get("/api/regions/1/state").json().unwrap();
    let statue = state["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "statue")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A bad hash is refused with the field named; nothing changes.
    let r = honest.act(&json!({"do": "set_assets", "element": statue, "mesh": "abc"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("mesh"), "{}", r.text());
    act_ok(
        &honest,
        json!({"do": "set_assets", "element": statue, "mesh": hash}),
    );

    // Member 0 fetches it from member 1 (it has no other source).
    let got = eventually("member 0 to fetch the mesh", || on_disk(&liar, &hash));
    assert!(got == mesh, "member 0 stored the right bytes");
    assert!(metric(&liar, "content_peer_fetched_total") >= 1);

    // An observer follows the group through member 1's address list,
    // which names member 0 first: it asks member 0 first.
    let observer = Node::observe(&base.path().join("observer"), &honest.base);
    let view = observer.get("/api/regions/1/state").json().unwrap();
    let shown = view["elements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == statue.as_str())
        .unwrap()["assets"]["mesh"]
        .clone();
    assert_eq!(shown, hash.as_str(), "the observer's view shows the mesh");
    let got = eventually("the observer to fetch the mesh", || {
        on_disk(&observer, &hash)
    });
    assert!(got == mesh, "the observer stored the right bytes");
    assert!(
        metric(&observer, "content_peer_mismatches_total") >= 1,
        "member 0's wrong bytes were refused and counted"
    );
    assert!(metric(&observer, "content_peer_fetched_total") >= 1);
    assert!(metric(&observer, "content_peer_fetched_bytes_total") >= 300_000);
    assert!(metric(&liar, "content_peer_served_total") >= 1);
    assert!(metric(&honest, "content_peer_served_total") >= 2);
    // The bytes on the wire: the observer read the mesh from the group's
    // swarm, and the member wrote it; each answered HTTP.
    let group_in = metric(&observer, "bytes_received_total{service=\"group\"}");
    assert!(group_in >= 300_000, "the observer read {group_in} bytes");
    let group_out = metric(&honest, "bytes_sent_total{service=\"group\"}");
    assert!(group_out >= 300_000, "member 1 wrote {group_out} bytes");
    assert!(metric(&honest, "bytes_received_total{service=\"http\"}") >= 300_000);
    assert!(metric(&honest, "bytes_sent_total{service=\"http\"}") > 0);

    // The observer serves the same bytes with the same ETag.
    let path = format!("/assets/{hash}");
    let a = observer.get(&path);
    let b = honest.get(&path);
    assert_eq!(a.status, 200);
    assert!(a.body == mesh, "the observer serves the mesh's bytes");
    assert_eq!(a.header("etag"), b.header("etag"));
    assert_eq!(a.header("etag"), Some(format!("\"{hash}\"").as_str()));

    // A blob no element references is fetched when asked for.
    let loose = bytes(5_000, 9);
    let loose_hash = upload(&honest, &loose);
    assert!(on_disk(&observer, &loose_hash).is_none());
    let r = observer.get(&format!("/assets/{loose_hash}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == loose, "fetched on demand");
    assert!(on_disk(&observer, &loose_hash).is_some(), "and kept");

    // A blob nobody has: a 404 that says the peers were asked.
    let nowhere = blake3::hash(b"nobody has these bytes").to_hex().to_string();
    let r = observer.get(&format!("/assets/{nowhere}"));
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no peer gave it"), "{}", r.text());
    assert!(metric(&observer, "content_peer_fetch_failed_total") >= 1);
    // Asked again at once: the same answer, without asking the peers again.
    let served = metric(&honest, "content_peer_not_here_total");
    let r = observer.get(&format!("/assets/{nowhere}"));
    assert_eq!(r.status, 404);
    assert!(r.text().contains("not asked again yet"), "{}", r.text());
    assert!(metric(&observer, "content_peer_negative_hits_total") >= 1);
    assert_eq!(metric(&honest, "content_peer_not_here_total"), served);
}
