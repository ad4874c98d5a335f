//! The HTTP side (Lspace): JSON API, viewer page, metrics.
//!
//! | route | what |
//! |---|---|
//! | `GET /`, `GET /viewer/...` | the browser viewer (see [`crate::viewer`]) |
//! | `GET /api/status` | tick, state hash, regions, players online, group and links, `border`: hand-offs, messages and per neighbour border sets and ghosts held |
//! | `GET /api/regions/{id}/state` | the region as JSON; strong `ETag` = state hash, `If-None-Match` → 304; `border`: its box, its neighbours' and the ghosts of their bodies it holds (world coordinates) |
//! | `GET /api/regions/{id}/ghosts` | only that `border` part, with the tick (`null` without neighbours) |
//! | `POST /api/regions/{id}/inputs` | one action as the local player (bearer token); answers when committed |
//! | `GET /api/regions/{id}/stream` | WebSocket: a snapshot, then each published tick's changes and events ([`crate::stream`], `docs/stream.md`) |
//! | `GET /scripts/{hash}`, `PUT /api/scripts` | script sources (see [`crate::scripts`]) |
//! | `GET /assets/{hash}`, `PUT /api/assets` | assets, any bytes by hash (see [`crate::content::http`]) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/overlay` | overlay membership: peer id, joined, neighbours |
//! | `GET /api/overlay/locate?x_mm=X&y_mm=Y` | regions announced at a world point, and their hosts |
//!
//! Bodies are limited to [`BODY_BYTES_MAX`] (64 KiB), but for `PUT
//! /api/assets` (`limits.content_blob_bytes_max`); every error, a body
//! over the limit, an unknown route or a wrong method included, is JSON
//! `{"error": "..."}`.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use metatopia_sim::hex;

use crate::action::{Action, IdsOnly};
use crate::view;
use crate::web::{Body, authorized, error, if_none_match, unauthorized};
use crate::world::SubmitError;

pub use crate::web::{App, BODY_BYTES_MAX, submit_error_status};

/// The router.
pub fn router(app: App) -> Router {
    let mut router = Router::new()
        .merge(crate::viewer::routes())
        .route("/api/status", get(status))
        .route("/api/regions/{id}/state", get(region_state))
        .route("/api/regions/{id}/ghosts", get(region_ghosts))
        .route("/api/regions/{id}/inputs", post(post_input))
        .route("/api/regions/{id}/stream", get(crate::stream::route))
        .merge(crate::scripts::routes())
        .merge(crate::content::http::routes());
    if app.metrics {
        router = router.route("/metrics", get(metrics));
    }
    router = router
        .route("/api/overlay", get(overlay_status))
        .route("/api/overlay/locate", get(overlay_locate));
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method".into(),
            )
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(app)
}

async fn status(State(app): State<App>) -> Response {
    let latest = app.world.latest();
    let mut v = view::status(&latest.sim, &latest.hash, app.player, &app.data_dir);
    v.group = Some(view::group(&app.world.group()));
    v.health = Some(health(&app));
    v.border = view::border_status(&latest);
    axum::Json(v).into_response()
}

fn health(app: &App) -> view::Health {
    let c = &app.world.counters;
    let load = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let (blobs, bytes) = app.content.size();
    view::Health {
        tick_ms_last: load(&c.tick_us_last) as f64 / 1e3,
        tick_ms_mean: load(&c.tick_us_total) as f64 / 1e3 / load(&c.ticks).max(1) as f64,
        stream_subscribers: app.stream.counters.subscribers.load(Ordering::Relaxed) as u64,
        http_connections: load(&app.connections.open),
        inputs_refused: load(&app.inputs.refused_total),
        script_faults: load(&app.faults.total),
        content_blobs: blobs,
        content_bytes: bytes,
    }
}

pub(crate) fn check_region(app: &App, id: &str) -> Result<(), Box<Response>> {
    let region = app.world.latest().sim.state().region;
    if id.parse::<u32>().ok() == Some(region.0) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("this node hosts region {region}, not {id:?}"),
        )))
    }
}

async fn region_state(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = check_region(&app, &id) {
        return *r;
    }
    let latest = app.world.latest();
    let etag = format!("\"{}\"", hex(&latest.hash));
    let matches = if_none_match(&headers, &etag);
    let etag_value = HeaderValue::from_str(&etag).expect("hex in quotes is a valid header");
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
    }
    (
        [
            (header::ETAG, etag_value),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        axum::Json(view::region_state(&latest, &app.faults.recent())),
    )
        .into_response()
}

async fn region_ghosts(State(app): State<App>, Path(id): Path<String>) -> Response {
    if let Err(r) = check_region(&app, &id) {
        return *r;
    }
    let latest = app.world.latest();
    axum::Json(json!({
        "region": latest.sim.state().region,
        "tick": latest.sim.state().tick,
        "border": view::border_view(&latest.ghosts),
    }))
    .into_response()
}

async fn post_input(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    if !authorized(&app, &headers) {
        return unauthorized();
    }
    if let Err(r) = check_region(&app, &id) {
        return *r;
    }
    let action: Action = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid action: {}",
                    crate::quote::cap(&e.to_string(), crate::quote::MESSAGE_CHARS_MAX)
                ),
            );
        }
    };
    let avatar = app
        .world
        .latest()
        .sim
        .state()
        .players
        .get(&app.player)
        .and_then(|p| p.avatar);
    let kind = match action.to_input(&IdsOnly { avatar }) {
        Ok(k) => k,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid action: {}",
                    crate::quote::cap(&e.to_string(), crate::quote::MESSAGE_CHARS_MAX)
                ),
            );
        }
    };
    let arrived = std::time::Instant::now();
    let result = app.world.submit(app.player, kind).await;
    if let Err(e) = &result {
        app.inputs.refused(e);
    }
    match result {
        Ok(receipt) => {
            app.inputs
                .commit_latency
                .observe(arrived.elapsed().as_secs_f64());
            axum::Json(receipt).into_response()
        }
        Err(e @ SubmitError::Rejected(_)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, format!("rejected: {e}"))
        }
        Err(e) => error(submit_error_status(&e), e.to_string()),
    }
}

fn overlay_handle(app: &App) -> Result<&metatopia_overlay::Handle, Box<Response>> {
    app.overlay.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "this node is not in the overlay ([overlay] enabled = false in node.toml)".into(),
        ))
    })
}

async fn overlay_status(State(app): State<App>) -> Response {
    let handle = match overlay_handle(&app) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let s = handle.status();
    axum::Json(json!({
        "peer_id": handle.peer_id().to_string(),
        "joined": s.joined,
        "position_mm": [s.position.x, s.position.y],
        "voronoi_neighbours": s.voronoi.len(),
        "links": s.links,
        "regions_refused": s.regions_refused,
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct LocateQuery {
    x_mm: i64,
    y_mm: i64,
}

async fn overlay_locate(
    State(app): State<App>,
    query: Result<axum::extract::Query<LocateQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let handle = match overlay_handle(&app) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let Ok(axum::extract::Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected ?x_mm=<integer>&y_mm=<integer>".into(),
        );
    };
    let point = metatopia_overlay::Point::new(q.x_mm, q.y_mm);
    match crate::overlay::locate(handle, point).await {
        Ok(found) => axum::Json(found).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("overlay: {e:#}")),
    }
}

/// Long on purpose: one registration per exported metric, in the order they are printed.
async fn metrics(State(app): State<App>) -> Response {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::registry::Registry;

    let c = &app.world.counters;
    let latest = app.world.latest();
    let s = latest.sim.state();
    let mut reg = Registry::with_prefix("metatopia");
    let counter = |v: &std::sync::atomic::AtomicU64| ConstCounter::new(v.load(Ordering::Relaxed));
    reg.register("ticks", "Ticks executed since start", counter(&c.ticks));
    reg.register("inputs_accepted", "Inputs accepted", counter(&c.accepted));
    reg.register(
        "inputs_rejected",
        "Inputs refused by the sim",
        counter(&c.rejected),
    );
    reg.register(
        "inputs_busy",
        "Inputs refused because the queue was full",
        counter(&c.busy),
    );
    let f = &app.faults;
    reg.register(
        "script_faults",
        "Script faults (errors, budgets, refused outputs) since start",
        counter(&f.total),
    );
    reg.register(
        "script_suspensions",
        "Script faults that suspended their script since start",
        counter(&f.suspensions),
    );
    reg.register(
        "fault_follower_ticks_missed",
        "Committed ticks whose faults were not recorded (the follower fell behind)",
        counter(&f.ticks_missed),
    );
    reg.register(
        "tick_seconds",
        "Time spent executing and committing ticks",
        ConstCounter::new(c.tick_us_total.load(Ordering::Relaxed) as f64 / 1e6),
    );
    reg.register(
        "tick",
        "Next tick to execute",
        ConstGauge::new(s.tick as i64),
    );
    reg.register(
        "elements",
        "Elements in the region",
        ConstGauge::new(s.element_count() as i64),
    );
    reg.register(
        "players_online",
        "Players online",
        ConstGauge::new(s.online().count() as i64),
    );
    let b = latest.border;
    for (name, help, v) in [
        (
            "handoffs_out",
            "Body groups handed to neighbour regions",
            b.handoffs_out,
        ),
        (
            "handoffs_in",
            "Body groups taken from neighbour regions",
            b.handoffs_in,
        ),
        (
            "handoffs_refused",
            "Hand-off offers neighbour regions refused",
            b.refused,
        ),
        (
            "handoffs_aborted",
            "Hand-offs undone on a negative verdict (or given one here)",
            b.aborted,
        ),
    ] {
        reg.register(name, help, ConstCounter::new(v));
    }
    let r = b.remote;
    for (name, help, v) in [
        (
            "border_messages_queued",
            "Chat lines and script messages queued for neighbour regions",
            r.queued,
        ),
        (
            "border_messages_resent",
            "Chat lines and script messages sent again for want of an acknowledgement",
            r.resent,
        ),
        (
            "border_messages_dropped",
            "Chat lines and script messages not queued: a neighbour's queue was full or an item too large",
            r.dropped,
        ),
        (
            "border_messages_unroutable",
            "Script messages to a region that is not a neighbour",
            r.unroutable,
        ),
        (
            "border_messages_delivered",
            "Chat lines and script messages from neighbours applied here",
            r.delivered,
        ),
        (
            "border_messages_refused",
            "Chat lines and script messages from neighbours refused here (no such script, text over the limit)",
            r.refused,
        ),
    ] {
        reg.register(name, help, ConstCounter::new(v));
    }
    reg.register(
        "border_messages_unacked",
        "Chat lines and script messages queued for neighbours and not yet acknowledged",
        ConstGauge::new(b.remote_unacked as i64),
    );
    reg.register(
        "handoffs_pending",
        "Hand-off offers waiting for their switch tick, and groups kept until the target's verdict",
        ConstGauge::new((b.pending + b.kept) as i64),
    );
    let conns = &app.connections;
    reg.register(
        "http_connections",
        "HTTP connections open",
        ConstGauge::new(conns.open.load(Ordering::Relaxed) as i64),
    );
    reg.register(
        "http_connections_refused",
        "HTTP connections refused at http_connections_max, http_connections_per_ip_max or connections_memory_max_mib",
        counter(&conns.refused),
    );
    // Bytes on the wire by service: HTTP connections, and the replica
    // group's libp2p swarm (members, observers, content), after noise.
    type ByService = prometheus_client::metrics::family::Family<
        [(&'static str, &'static str); 1],
        prometheus_client::metrics::counter::Counter,
    >;
    let (received, sent) = (ByService::default(), ByService::default());
    for (service, t) in [
        ("http", &*conns.traffic),
        ("group", &**crate::traffic::GROUP),
        ("overlay", &**crate::traffic::OVERLAY),
    ] {
        received
            .get_or_create(&[("service", service)])
            .inc_by(t.received.load(Ordering::Relaxed));
        sent.get_or_create(&[("service", service)])
            .inc_by(t.sent.load(Ordering::Relaxed));
    }
    reg.register("bytes_received", "Bytes read from the network", received);
    reg.register("bytes_sent", "Bytes written to the network", sent);
    let st = &app.stream.counters;
    reg.register(
        "stream_subscribers",
        "Region stream subscribers connected",
        ConstGauge::new(st.subscribers.load(Ordering::Relaxed) as i64),
    );
    reg.register(
        "stream_dropped_slow",
        "Region stream subscribers dropped for falling behind",
        counter(&st.dropped_slow),
    );
    reg.register(
        "stream_refused_full",
        "Region stream subscribers refused at stream_subscribers_max",
        counter(&st.refused_full),
    );
    reg.register(
        "input_commit_latency_seconds",
        "From an input's arrival on the API to its committed answer",
        app.inputs.commit_latency.clone(),
    );
    reg.register(
        "inputs_refused",
        "API inputs that did not commit, by reason (limits, signatures, the sim)",
        app.inputs.refused.clone(),
    );
    let group = app.world.group();
    reg.register(
        "desynced",
        "1 while this replica's region hash differs from its group's (it resyncs)",
        ConstGauge::new(i64::from(group.desync.is_some())),
    );
    reg.register(
        "resyncs",
        "Resyncs from the group's snapshot since start",
        ConstCounter::new(group.resyncs),
    );
    reg.register(
        "group_members",
        "Members of the region's replica group",
        ConstGauge::new(group.members.len() as i64),
    );
    if let Some(overlay) = &app.overlay {
        let s = overlay.status();
        reg.register(
            "overlay_links",
            "Direct links to overlay peers",
            ConstGauge::new(s.links as i64),
        );
        reg.register(
            "overlay_regions_refused",
            "Region records refused (bad signatures, takeovers)",
            ConstCounter::new(s.regions_refused),
        );
    }
    crate::content::http::register_metrics(&mut reg, &app.content);
    if let Some(p) = &app.peers {
        crate::content::peer::register_metrics(&mut reg, p);
    }
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed".into(),
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
