//! The asset routes (merged into the node's router).
//!
//! | route | what |
//! |---|---|
//! | `PUT /api/assets[?hash=HEX]` | store the body (bearer token); `{"hash", "bytes", "new"}`; with `hash`, refused (400) unless the bytes hash to it |
//! | `GET /assets/{hash}[?type=MIME]` | the bytes; strong `ETag` = hash, immutable caching, `If-None-Match` → 304, one `Range` → 206 |
//!
//! The upload is streamed to a temporary file while it is hashed and
//! counted, so an asset up to `content_blob_bytes_max` never sits in
//! memory whole; the 64 KiB body limit of the other routes does not apply
//! here. A download is streamed from the file in 64 KiB chunks.
//!
//! `Content-Type` is `application/octet-stream` unless the URL asks for
//! another with `?type=` (checked: `type/subtype` of token characters).
//! The type is a property of the reference, not of the bytes: the same
//! bytes may be a texture in one place and a download in another, and the
//! hash does not cover metadata (ADR 0012). Every asset answer also
//! carries `X-Content-Type-Options: nosniff` and `Content-Security-Policy:
//! sandbox`, so an uploaded HTML or SVG file cannot run script in the
//! viewer's origin (where the bearer token lives).

use std::io::Read as _;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures::StreamExt as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use metatopia_sim::{hex, unhex32};

use super::range::{self, Range};
use super::{Hash, PutError, Store};
use crate::web::{App, authorized, error, if_none_match, unauthorized};

/// Chunk size of a streamed download; a blob this size or smaller is
/// read in one go.
const CHUNK_BYTES: usize = 64 << 10;

/// Longest `?type=` accepted.
const TYPE_CHARS_MAX: usize = 127;

/// The routes.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/assets/{hash}", get(get_asset))
        .route("/api/assets", put(put_asset))
}

/// The JSON answer for a refused or failed upload: the message, and for a
/// cap, its `[limits]` key and numbers.
pub fn put_error(e: &PutError) -> Response {
    let (code, extra) = match e {
        PutError::BlobTooLarge { bytes, max } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "bytes": bytes, "max": max }),
        ),
        PutError::PlayerFull { used, bytes, max } | PutError::StoreFull { used, bytes, max } => (
            StatusCode::INSUFFICIENT_STORAGE,
            json!({ "used": used, "bytes": bytes, "max": max }),
        ),
        PutError::HashMismatch { .. } => (StatusCode::BAD_REQUEST, json!({})),
        PutError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
    };
    let mut body = json!({ "error": e.to_string() });
    if let Some(cap) = e.cap() {
        body["limit"] = json!(cap);
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
    }
    (code, axum::Json(body)).into_response()
}

/// A hash from a URL or query, or the 400 answer.
fn parse_hash(text: &str) -> Result<Hash, Box<Response>> {
    unhex32(&text.to_ascii_lowercase()).ok_or_else(|| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not a content hash (64 hex digits)",
                crate::quote::cap(text, crate::quote::QUOTE_CHARS_MAX)
            ),
        ))
    })
}

/// Query of `PUT /api/assets`.
#[derive(Debug, serde::Deserialize)]
struct PutQuery {
    /// The hash the bytes must have.
    #[serde(default)]
    hash: Option<String>,
}

/// Removes a temporary file when dropped (an upload that ends early).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Long on purpose: the upload streams, hashes, counts and commits in
/// sequence, each refusal its own answer.
async fn put_asset(
    State(app): State<App>,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized();
    }
    let expected = match query {
        Ok(Query(PutQuery { hash: None })) => None,
        Ok(Query(PutQuery { hash: Some(h) })) => match parse_hash(&h) {
            Ok(h) => Some(h),
            Err(r) => return *r,
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected ?hash=<64 hex digits>: {}", e.body_text()),
            );
        }
    };
    let store = app.content.clone();
    let Some(_slot) = store.upload_slot() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} uploads are in progress, the most this node takes at once; try again",
                super::UPLOADS_MAX
            ),
        );
    };
    // A declared length over the cap is refused before reading a byte.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared
        && let Err(e) = store.check_blob(n)
    {
        return put_error(&e);
    }
    let max = store.caps().blob_bytes_max;
    let tmp = TempFile(store.temp_path());
    let mut file = match tokio::fs::File::create(&tmp.0).await {
        Ok(f) => f,
        Err(e) => return put_error(&PutError::Io(e)),
    };
    let mut hasher = blake3::Hasher::new();
    let mut len: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                );
            }
        };
        len = len.saturating_add(chunk.len() as u64);
        if len > max {
            // Counted; the rest of the body is not read.
            return put_error(
                &store
                    .check_blob(len)
                    .err()
                    .unwrap_or(PutError::BlobTooLarge { bytes: len, max }),
            );
        }
        hasher.update(&chunk);
        if let Err(e) = file.write_all(&chunk).await {
            return put_error(&PutError::Io(e));
        }
    }
    let h = *hasher.finalize().as_bytes();
    if let Err(e) = store.check_expected(expected, &h) {
        return put_error(&e);
    }
    if let Err(e) = file.sync_all().await {
        return put_error(&PutError::Io(e));
    }
    drop(file);
    let player = app.player;
    let committed =
        tokio::task::spawn_blocking(move || store.commit_file(&tmp.0, h, len, Some(player))).await;
    match committed {
        Ok(Ok(put)) => {
            axum::Json(json!({ "hash": hex(&put.hash), "bytes": put.bytes, "new": put.new }))
                .into_response()
        }
        Ok(Err(e)) => put_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Query of `GET /assets/{hash}`.
#[derive(Debug, serde::Deserialize)]
struct GetQuery {
    /// The `Content-Type` to answer with.
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// Whether `t` is a plain `type/subtype` (RFC 6838 restricted names).
fn valid_type(t: &str) -> bool {
    let name = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    t.len() <= TYPE_CHARS_MAX && t.split_once('/').is_some_and(|(a, b)| name(a) && name(b))
}

/// What a blocking open found.
enum Opened {
    Missing,
    Corrupt(String),
    /// Small enough to be read whole.
    Whole(Vec<u8>),
    /// Streamed from the file.
    File(std::fs::File, u64),
}

/// Opens the blob (hashing it if this file version was not seen), and
/// reads it whole when it is small.
fn open(store: &Store, h: &Hash) -> Opened {
    match store.open_verified(h) {
        Ok(None) => Opened::Missing,
        Err(c) => Opened::Corrupt(c.to_string()),
        Ok(Some((mut file, len))) if len <= CHUNK_BYTES as u64 => {
            let mut bytes = Vec::with_capacity(len as usize);
            match file.read_to_end(&mut bytes) {
                Ok(_) if bytes.len() as u64 == len => Opened::Whole(bytes),
                _ => Opened::Missing,
            }
        }
        Ok(Some((file, len))) => Opened::File(file, len),
    }
}

/// [`open`] off the async threads; a blob that is missing (or damaged)
/// here is fetched from peers first when the node has a swarm. A fetch
/// that fails answers 404 with each peer's answer.
async fn open_or_fetch(app: &App, h: Hash) -> Result<Opened, Box<Response>> {
    let internal = |e: tokio::task::JoinError| {
        Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    };
    let store = app.content.clone();
    let opened = tokio::task::spawn_blocking(move || open(&store, &h))
        .await
        .map_err(internal)?;
    let Some(peers) = &app.peers else {
        return Ok(opened);
    };
    if !matches!(opened, Opened::Missing | Opened::Corrupt(_)) {
        return Ok(opened);
    }
    if let Err(e) = peers.fetch(h).await {
        return Err(Box::new(error(StatusCode::NOT_FOUND, e.to_string())));
    }
    let store = app.content.clone();
    tokio::task::spawn_blocking(move || open(&store, &h))
        .await
        .map_err(internal)
}

/// Long on purpose: one pass through the conditional, range and
/// streaming cases of a download, in the order RFC 9110 evaluates them.
async fn get_asset(
    State(app): State<App>,
    UrlPath(hash): UrlPath<String>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let h = match parse_hash(&hash) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let content_type = match query {
        Ok(Query(GetQuery { kind: None })) => HeaderValue::from_static("application/octet-stream"),
        Ok(Query(GetQuery { kind: Some(t) })) if valid_type(&t) => {
            HeaderValue::from_str(&t).expect("checked: token characters and one slash")
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "expected ?type=<type>/<subtype> (e.g. image/png)".into(),
            );
        }
    };
    let etag = format!("\"{}\"", hex(&h));
    let etag_value = HeaderValue::from_str(&etag).expect("hex in quotes is a valid header");
    let mut out = HeaderMap::new();
    out.insert(header::ETAG, etag_value);
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    // The name is the hash of the bytes: a client whose copy has this
    // ETag holds exactly them, whatever this node's store holds, so the
    // answer needs no disk (and no peer).
    if if_none_match(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, out).into_response();
    }
    let opened = match open_or_fetch(&app, h).await {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let (whole, file, len) = match opened {
        Opened::Missing => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no blob with hash {}", hex(&h)),
            );
        }
        Opened::Corrupt(reason) => return error(StatusCode::INTERNAL_SERVER_ERROR, reason),
        Opened::Whole(bytes) => {
            let len = bytes.len() as u64;
            (Some(bytes), None, len)
        }
        Opened::File(f, len) => (None, Some(f), len),
    };
    out.insert(header::CONTENT_TYPE, content_type);
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    // `If-Range` naming another version: the whole body.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let wanted = match headers.get(header::RANGE) {
        Some(v) if if_range_ok => range::parse(v.as_bytes(), len),
        _ => Range::Whole,
    };
    let (status, start, count) = match wanted {
        Range::Whole => (StatusCode::OK, 0, len),
        Range::Part { start, end } => {
            let value = format!("bytes {start}-{end}/{len}");
            out.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("digits are a valid header"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Range::Unsatisfiable => {
            let value = format!("bytes */{len}");
            out.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("digits are a valid header"),
            );
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let body =
                json!({ "error": format!("range not satisfiable: the blob is {len} bytes") });
            return (StatusCode::RANGE_NOT_SATISFIABLE, out, body.to_string()).into_response();
        }
    };
    out.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from_str(&count.to_string()).expect("digits are a valid header"),
    );
    let body = match (whole, file) {
        (Some(bytes), _) => {
            let (a, b) = (start as usize, (start + count) as usize);
            Body::from(bytes[a..b].to_vec())
        }
        (None, Some(file)) => stream_file(file, start, count),
        (None, None) => Body::empty(),
    };
    (status, out, body).into_response()
}

/// `count` bytes of `file` from `start`, as a body streamed in chunks; a
/// file that ends early ends the body with an error (the client sees a
/// short body, never wrong bytes in place of the missing ones).
fn stream_file(file: std::fs::File, start: u64, count: u64) -> Body {
    let file = tokio::fs::File::from_std(file);
    let stream = futures::stream::unfold(
        (Some(file), start, count, false),
        |(file, start, left, seeked)| async move {
            let mut file = file?;
            if !seeked && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
                return Some((Err(e), (None, start, 0, true)));
            }
            if left == 0 {
                return None;
            }
            let mut buf = vec![0u8; (left as usize).min(CHUNK_BYTES)];
            match file.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob shorter than when opened",
                    )),
                    (None, start, 0, true),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        Ok(axum::body::Bytes::from(buf)),
                        (Some(file), start, left - n as u64, true),
                    ))
                }
                Err(e) => Some((Err(e), (None, start, 0, true))),
            }
        },
    );
    Body::from_stream(stream)
}

/// The store's lines in `/metrics`.
pub fn register_metrics(reg: &mut prometheus_client::registry::Registry, store: &Store) {
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    let c = store.counters();
    let counter = |v: &std::sync::atomic::AtomicU64| ConstCounter::new(v.load(Ordering::Relaxed));
    let (blobs, bytes) = store.size();
    reg.register(
        "content_blobs",
        "Blobs in the content store (sources and assets)",
        ConstGauge::new(blobs as i64),
    );
    reg.register(
        "content_bytes",
        "Bytes in the content store",
        ConstGauge::new(bytes as i64),
    );
    reg.register(
        "content_stored_bytes",
        "Bytes of new blobs stored since start",
        counter(&c.stored_bytes),
    );
    reg.register(
        "content_refused_blob_bytes_max",
        "Uploads refused at limits.content_blob_bytes_max",
        counter(&c.refused_blob),
    );
    reg.register(
        "content_refused_player_bytes_max",
        "Uploads refused at limits.content_player_bytes_max",
        counter(&c.refused_player),
    );
    reg.register(
        "content_refused_store_bytes_max",
        "Uploads refused at limits.content_store_bytes_max",
        counter(&c.refused_store),
    );
    reg.register(
        "content_refused_busy",
        "Uploads refused because UPLOADS_MAX were in progress",
        counter(&c.refused_busy),
    );
    reg.register(
        "content_refused_hash",
        "Uploads refused because the bytes did not hash to ?hash=",
        counter(&c.refused_hash),
    );
    reg.register(
        "content_corrupt",
        "Reads that found a stored blob not matching its hash (not served)",
        counter(&c.corrupt),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        assert!(valid_type("image/png"));
        assert!(valid_type("model/gltf+json"));
        assert!(!valid_type("text/html; charset=utf-8"));
        assert!(!valid_type("image"));
        assert!(!valid_type("/png"));
        assert!(!valid_type("a/b\r\nX: y"));
        assert!(!valid_type(&format!("a/{}", "b".repeat(200))));
    }
}
