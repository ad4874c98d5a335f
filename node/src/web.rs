//! What the HTTP routes share ([`crate::http`], [`crate::scripts`]): the
//! app state, the bounded request body, JSON errors, the bearer-token
//! check, `If-None-Match`, and the status of a submission that did not
//! commit. Both route modules import it; neither imports the other's
//! helpers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use metatopia_sim::PlayerId;

use crate::faults::Faults;
use crate::world::{Handle, SubmitError};

/// Largest request body: a script source at its largest (one definition).
pub const BODY_BYTES_MAX: usize = metatopia_scripts::host::SOURCE_BYTES_MAX;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct App {
    /// The world.
    pub world: Handle,
    /// The local player (inputs posted with the token act as this player).
    pub player: PlayerId,
    /// The bearer token.
    pub token: Arc<str>,
    /// Data directory, for status.
    pub data_dir: Arc<str>,
    /// Whether `/metrics` is served.
    pub metrics: bool,
    /// The overlay membership, when `[overlay] enabled`.
    pub overlay: Option<metatopia_overlay::Handle>,
    /// Script faults seen since the node started.
    pub faults: Arc<Faults>,
    /// The region stream's hub.
    pub stream: crate::stream::Hub,
    /// The HTTP listener's connection counters.
    pub connections: Arc<crate::listener::ConnectionCounters>,
    /// The content store (script sources and assets).
    pub content: crate::content::Store,
    /// What the inputs route saw.
    pub inputs: Arc<InputMetrics>,
    /// Its peer side, when the node has a swarm (a group member or an
    /// observer): `GET /assets/{hash}` fetches a missing blob from peers.
    pub peers: Option<crate::content::peer::Peers>,
}

/// What `POST /api/regions/{id}/inputs` saw, for `/metrics`.
#[derive(Debug)]
pub struct InputMetrics {
    /// Seconds from a request's arrival to its committed answer.
    pub commit_latency: prometheus_client::metrics::histogram::Histogram,
    /// Submissions that did not commit, by reason.
    pub refused: prometheus_client::metrics::family::Family<
        [(&'static str, &'static str); 1],
        prometheus_client::metrics::counter::Counter,
    >,
    /// All of `refused`.
    pub refused_total: std::sync::atomic::AtomicU64,
}

impl Default for InputMetrics {
    fn default() -> InputMetrics {
        InputMetrics {
            // 5 ms to ~10 s.
            commit_latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 12),
            ),
            refused: Default::default(),
            refused_total: Default::default(),
        }
    }
}

impl InputMetrics {
    /// Counts a submission that did not commit.
    pub fn refused(&self, e: &SubmitError) {
        self.refused
            .get_or_create(&[("reason", refusal_reason(e))])
            .inc();
        self.refused_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The `reason` label of a submission that did not commit.
pub fn refusal_reason(e: &SubmitError) -> &'static str {
    use crate::replica::core::Refusal;
    match e {
        SubmitError::Rejected(_) => "rejected_by_sim",
        SubmitError::Refused(r) => match r {
            Refusal::Signature(_) => "signature",
            Refusal::Replayed { .. } => "replayed",
            Refusal::UnknownSource(_) => "unknown_source",
            Refusal::Busy => "busy",
            Refusal::PlayerBusy(_) => "player_pending_max",
            Refusal::PlayerRate(_) => "player_rate",
            Refusal::NotServing => "not_serving",
        },
        SubmitError::Busy => "busy",
        SubmitError::NotMine(_) => "not_mine",
        SubmitError::Stopped => "stopped",
        SubmitError::Superseded { .. } => "superseded",
        SubmitError::Sequence(_) => "sequence_store",
    }
}

/// A request body of at most [`BODY_BYTES_MAX`] bytes. A larger one is
/// refused with 413 and the JSON error naming the limit and what was sent
/// (axum's own answer is plain text).
#[derive(Debug)]
pub(crate) struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Body, Response> {
        let sent = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(error(StatusCode::PAYLOAD_TOO_LARGE, too_large(sent)))
            }
            Err(r) => Err(error(
                r.status(),
                format!("cannot read the request body: {}", r.body_text()),
            )),
        }
    }
}

/// The message for a body over [`BODY_BYTES_MAX`]; `sent` is its
/// `Content-Length`, when it had one.
fn too_large(sent: Option<u64>) -> String {
    let limit = format!("the limit of {BODY_BYTES_MAX} bytes (64 KiB)");
    match sent {
        Some(n) => format!("request body too large: {n} bytes sent, over {limit}"),
        None => format!("request body too large: more than {limit} sent"),
    }
}

/// A JSON error answer `{"error": message}`.
pub(crate) fn error(code: StatusCode, message: String) -> Response {
    (code, axum::Json(json!({ "error": message }))).into_response()
}

/// Whether `If-None-Match` names `etag` (a quoted strong tag) or `*`.
pub(crate) fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// The 401 answer for a missing or wrong bearer token.
pub(crate) fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (see the `token` file in the data directory)".into(),
    )
}

/// Whether the request carries the node's bearer token.
pub(crate) fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else {
        return false;
    };
    token_matches(app, given)
}

/// Whether `given` is the node's token (compared in constant time).
pub(crate) fn token_matches(app: &App, given: &str) -> bool {
    let (a, b) = (given.trim().as_bytes(), app.token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The HTTP status of a submission that did not commit.
pub fn submit_error_status(e: &SubmitError) -> StatusCode {
    use crate::replica::core::Refusal;
    match e {
        SubmitError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
        SubmitError::Refused(Refusal::PlayerBusy(_) | Refusal::PlayerRate(_)) => {
            StatusCode::TOO_MANY_REQUESTS
        }
        SubmitError::Refused(Refusal::Busy | Refusal::NotServing)
        | SubmitError::Busy
        | SubmitError::Stopped
        | SubmitError::Sequence(_) => StatusCode::SERVICE_UNAVAILABLE,
        SubmitError::Superseded { .. } => StatusCode::CONFLICT,
        SubmitError::Refused(_) => StatusCode::BAD_REQUEST,
        SubmitError::NotMine(_) => StatusCode::FORBIDDEN,
    }
}
