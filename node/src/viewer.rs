//! The browser viewer's static files, embedded in the binary (nothing is
//! fetched from the internet at run time).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the viewer page (`node/viewer/index.html`), `no-cache`, `ETag` = the assets' version |
//! | `GET /viewer/{version}/{file}` | a file of `node/viewer/` (the page, its script, three.js); strong `ETag`, `If-None-Match` → 304 |
//!
//! `version` is the first 16 hex digits of a blake3 over every embedded
//! file, so a new binary gets new URLs: a file asked for under the current
//! version is cached for a year (`immutable`); under another version (a
//! page loaded before an upgrade) it is served `no-cache`.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::web::{App, error, if_none_match};

/// One embedded file.
struct Asset {
    /// Its path under `/viewer/{version}/`.
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// A module of the vendored CodeMirror (`node/viewer/vendor/codemirror/`).
macro_rules! codemirror {
    ($file:literal) => {
        Asset {
            path: concat!("vendor/codemirror/", $file),
            content_type: JS,
            bytes: include_bytes!(concat!("../viewer/vendor/codemirror/", $file)),
        }
    };
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "viewer.js",
        content_type: JS,
        bytes: include_bytes!("../viewer/viewer.js"),
    },
    Asset {
        path: "viewer.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../viewer/viewer.css"),
    },
    Asset {
        path: "vendor/three/three.module.js",
        content_type: JS,
        bytes: include_bytes!("../viewer/vendor/three/three.module.js"),
    },
    Asset {
        path: "vendor/three/three.core.js",
        content_type: JS,
        bytes: include_bytes!("../viewer/vendor/three/three.core.js"),
    },
    Asset {
        path: "vendor/three/OrbitControls.js",
        content_type: JS,
        bytes: include_bytes!("../viewer/vendor/three/OrbitControls.js"),
    },
    Asset {
        path: "vendor/three/LICENSE",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../viewer/vendor/three/LICENSE"),
    },
    codemirror!("state.js"),
    codemirror!("view.js"),
    codemirror!("language.js"),
    codemirror!("commands.js"),
    codemirror!("streamparser.js"),
    codemirror!("lua.js"),
    codemirror!("lezer-common.js"),
    codemirror!("lezer-highlight.js"),
    codemirror!("find-cluster-break.js"),
    codemirror!("crelt.js"),
    codemirror!("style-mod.js"),
    codemirror!("w3c-keyname.js"),
    Asset {
        path: "vendor/codemirror/LICENSES.txt",
        content_type: "text/plain; charset=utf-8",
        bytes: include_bytes!("../viewer/vendor/codemirror/LICENSES.txt"),
    },
];

const INDEX: &str = include_str!("../viewer/index.html");

/// The assets' version, their strong ETags (same order as [`ASSETS`]) and
/// the page with the version filled in.
struct Built {
    version: String,
    etags: Vec<String>,
    index: String,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut all = blake3::Hasher::new();
        let etags = ASSETS
            .iter()
            .map(|a| {
                all.update(a.path.as_bytes());
                all.update(a.bytes);
                format!("\"{}\"", blake3::hash(a.bytes).to_hex())
            })
            .collect();
        all.update(INDEX.as_bytes());
        let version = all.finalize().to_hex()[..16].to_string();
        let index = INDEX.replace("{{VERSION}}", &version);
        Built {
            version,
            etags,
            index,
        }
    })
}

/// The viewer's routes (merged into the node's router).
pub fn routes() -> Router<App> {
    Router::new()
        .route("/", get(index))
        .route("/viewer/{version}/{*path}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    let b = built();
    let etag = format!("\"{}\"", b.version);
    let etag_value = HeaderValue::from_str(&etag).expect("hex in quotes is a valid header");
    if if_none_match(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::ETAG, etag_value),
        ],
        b.index.clone(),
    )
        .into_response()
}

async fn asset(Path((version, path)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let b = built();
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("the viewer has no file {path:?}"),
        );
    };
    let etag_value = HeaderValue::from_str(&b.etags[i]).expect("hex in quotes is a valid header");
    if if_none_match(&headers, &b.etags[i]) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    let cache = if version == b.version {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(ASSETS[i].content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
            (header::ETAG, etag_value),
        ],
        ASSETS[i].bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_file_under_the_current_version() {
        let b = built();
        assert_eq!(b.version.len(), 16);
        assert!(!b.index.contains("{{VERSION}}"));
        for needed in ["viewer.js", "viewer.css", "vendor/three/three.module.js"] {
            assert!(
                b.index.contains(&format!("/viewer/{}/{needed}", b.version)),
                "index.html links {needed}"
            );
        }
    }
}
