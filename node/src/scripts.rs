//! Scripts in the node: content-addressed source storage, the HTTP routes
//! and the `metatopia script push|get` verbs.
//!
//! Sources are blobs in the content store ([`crate::content`],
//! `DIR/content/<blake3 hex>`), written atomically; reading checks the
//! hash, so a corrupted file is treated as missing, never run. Uploads
//! count against the store's caps like assets.
//!
//! | route | what |
//! |---|---|
//! | `GET /scripts/{hash}` | the exact source; strong `ETag` = hash, `If-None-Match` → 304 |
//! | `PUT /api/scripts[?object=ID]` | publish a source (bearer token), licence-checked; with `object`, attach it (an input, committed at a tick) |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use clap::Subcommand;
use serde_json::json;

use metatopia_scripts::{CheckError, Host, Sources, check_upload};
use metatopia_sim::input::InputKind;
use metatopia_sim::{ElementId, ScriptHost, hex};

use crate::client;
use crate::datadir::{DataDir, default_dir};
use crate::web::{App, Body, authorized, error, if_none_match, submit_error_status, unauthorized};
use crate::world::SubmitError;

/// Script sources in the content store ([`crate::content`]): a source is
/// a blob whose bytes are UTF-8.
#[derive(Debug, Clone)]
pub struct SourceStore {
    content: crate::content::Store,
}

impl SourceStore {
    /// The sources of a data directory's content store (`DIR/content`).
    pub fn open(data_dir: &Path) -> std::io::Result<SourceStore> {
        Ok(SourceStore::on(crate::content::Store::open(
            data_dir,
            crate::content::Caps::default(),
        )?))
    }

    /// The sources in `content`.
    pub fn on(content: crate::content::Store) -> SourceStore {
        SourceStore { content }
    }

    /// Stores `text` (idempotent, no caps: for sources a committed
    /// proposal carries) and returns its hash.
    pub fn put(&self, text: &str) -> std::io::Result<[u8; 32]> {
        self.content.put(text.as_bytes())
    }

    /// The source with this hash, if stored, intact and UTF-8.
    pub fn get(&self, hash: &[u8; 32]) -> Option<Arc<str>> {
        let bytes = self.content.get(hash)?;
        String::from_utf8(bytes).ok().map(Arc::from)
    }
}

impl crate::replica::SourceBook for SourceStore {
    fn get(&self, hash: &[u8; 32]) -> Option<Arc<str>> {
        SourceStore::get(self, hash)
    }

    fn put(&self, text: &str) -> std::io::Result<[u8; 32]> {
        SourceStore::put(self, text)
    }
}

impl Sources for SourceStore {
    fn source(&self, hash: &[u8; 32]) -> Option<Arc<str>> {
        self.get(hash)
    }
}

/// The Lua host for a data directory's world.
pub fn host(data_dir: &Path) -> Result<Host> {
    let sources = SourceStore::open(data_dir)
        .with_context(|| format!("opening {}", data_dir.join("content").display()))?;
    Host::new(Arc::new(sources))
        .map_err(|e| anyhow::anyhow!("cannot start the script runtime: {e}"))
}

/// The script routes (merged into the node's router).
pub fn routes() -> Router<App> {
    Router::new()
        .route("/scripts/{hash}", get(get_source))
        .route("/api/scripts", put(put_source))
}

async fn get_source(
    State(app): State<App>,
    UrlPath(hash): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let Some(h) = metatopia_sim::unhex32(&hash.to_ascii_lowercase()) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a script hash (64 hex digits)"),
        );
    };
    let store = SourceStore::on(app.content.clone());
    let Some(text) = tokio::task::spawn_blocking(move || store.get(&h))
        .await
        .ok()
        .flatten()
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no script with hash {}", hex(&h)),
        );
    };
    let etag = format!("\"{}\"", hex(&h));
    let etag_value = HeaderValue::from_str(&etag).expect("hex in quotes is a valid header");
    if if_none_match(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    (
        [
            (header::ETAG, etag_value),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/x-lua; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        text.to_string(),
    )
        .into_response()
}

/// Query of `PUT /api/scripts`.
#[derive(Debug, serde::Deserialize)]
pub struct PutQuery {
    /// Attach to this element (`"1.42"`) after publishing.
    #[serde(default)]
    pub object: Option<String>,
}

/// Long on purpose: the upload route checks, stores and optionally attaches in sequence, each refusal its own status and message.
async fn put_source(
    State(app): State<App>,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized();
    }
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected ?object=<element id>: {}", e.body_text()),
            );
        }
    };
    let object = match q.object.as_deref().map(str::parse::<ElementId>).transpose() {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("object: {e}")),
    };
    let latest = app.world.latest();
    let state = latest.sim.state();
    if let Some(id) = object
        && !state.elements.contains_key(&id)
    {
        return error(StatusCode::NOT_FOUND, format!("no element {id}"));
    }
    // Licence, compile and top-level run (CPU work: off the async
    // threads); a failing version is refused here, so the running one (if
    // any) keeps running.
    let checked = {
        let (latest, body) = (latest.clone(), body.clone());
        tokio::task::spawn_blocking(move || check_upload(&body, latest.sim.state(), object)).await
    };
    let checked = match checked {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("script check failed: {e}"),
            );
        }
    };
    let licence = match checked {
        Ok(l) => l,
        Err(e) => {
            let code = match e {
                CheckError::Licence(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(code, format!("script refused: {e}"));
        }
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let (store, player) = (app.content.clone(), app.player);
    let hash = match tokio::task::spawn_blocking(move || {
        store.upload(player, text.as_bytes(), None)
    })
    .await
    {
        Ok(Ok(put)) => put.hash,
        // Over a cap: the content store's answer, naming it.
        Ok(Err(e)) => return crate::content::http::put_error(&e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut out = json!({ "hash": hex(&hash), "licence": licence });
    if let Some(element) = object {
        let kind = InputKind::AttachScript {
            element,
            source: hash,
        };
        match app.world.submit(app.player, kind).await {
            Ok(receipt) => {
                out["attached"] = json!({ "element": element.to_string(), "tick": receipt.tick });
            }
            Err(SubmitError::Rejected(reason)) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("published as {} but not attached: {reason}", hex(&hash)),
                );
            }
            Err(e) => return error(submit_error_status(&e), e.to_string()),
        }
    }
    axum::Json(out).into_response()
}

/// `metatopia script ...`
#[derive(Debug, Subcommand)]
pub enum ScriptCmd {
    /// Publish a script (licence-checked) and print its hash; with
    /// --object, also attach it to an object you own (admins: any).
    Push {
        /// The Lua source file.
        file: PathBuf,
        /// Attach to this element id (e.g. 1.42).
        #[arg(long)]
        object: Option<String>,
        /// Data directory of the running node.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Print a script's exact source by hash.
    Get {
        /// The hash (64 hex digits).
        hash: String,
        /// Data directory of the running node.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// Runs a `script` verb.
pub fn cli(cmd: ScriptCmd) -> Result<()> {
    match cmd {
        ScriptCmd::Push { file, object, data } => {
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let dir = DataDir::open(&data.unwrap_or_else(default_dir))?;
            let base = dir.running_node()?;
            let auth = format!("Bearer {}", dir.token()?);
            let path = match &object {
                Some(o) => format!("/api/scripts?object={o}"),
                None => "/api/scripts".into(),
            };
            let r = client::request(
                &base,
                "PUT",
                &path,
                &[("Authorization", auth.as_str())],
                Some(&text),
            )?;
            let v = r.json().unwrap_or_default();
            if r.status != 200 {
                bail!(
                    "{}",
                    v["error"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| r.text())
                );
            }
            crate::outln!("{}", v["hash"].as_str().unwrap_or_default());
            if let Some(a) = v.get("attached") {
                eprintln!(
                    "attached to {} at tick {}",
                    a["element"].as_str().unwrap_or_default(),
                    a["tick"]
                );
            }
            Ok(())
        }
        ScriptCmd::Get { hash, data } => {
            let Some(h) = metatopia_sim::unhex32(&hash.to_ascii_lowercase()) else {
                bail!("{hash:?} is not a script hash (64 hex digits)");
            };
            let dir = DataDir::open(&data.unwrap_or_else(default_dir))?;
            // The local store first; then the running node.
            if let Some(text) = SourceStore::open(&dir.path)?.get(&h) {
                crate::out::write_out(format_args!("{text}"))?;
                return Ok(());
            }
            let base = dir.running_node()?;
            let r = client::request(&base, "GET", &format!("/scripts/{}", hex(&h)), &[], None)?;
            if r.status != 200 {
                bail!("no script with hash {} ({})", hex(&h), r.status);
            }
            crate::out::write_out(format_args!("{}", String::from_utf8_lossy(&r.body)))?;
            Ok(())
        }
    }
}

/// A host for a scenario: the scenario's own sources, in memory.
pub fn scenario_host(texts: &[String]) -> Result<Box<dyn ScriptHost>> {
    let sources = Arc::new(metatopia_scripts::MemorySources::new());
    for t in texts {
        sources.insert(t);
    }
    Ok(Box::new(Host::new(sources).map_err(|e| {
        anyhow::anyhow!("cannot start the script runtime: {e}")
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = SourceStore::open(dir.path()).unwrap();
        let h = s.put("-- hi\n").unwrap();
        assert_eq!(s.put("-- hi\n").unwrap(), h);
        assert_eq!(&*s.get(&h).unwrap(), "-- hi\n");
        std::fs::write(s.content.path(&h), "-- tampered\n").unwrap();
        assert!(s.get(&h).is_none());
        assert!(metatopia_sim::unhex32("zz").is_none());
        assert_eq!(metatopia_sim::unhex32(&hex(&h)), Some(h));
    }
}
