//! The HTTP side of the control plane (axum): routes, bearer-token check, and JSON
//! errors. Every failure answers `{"error": "...", "status": N}` with its status code;
//! malformed paths, bodies and ids are 4xx, never a panic.
//!
//! Routes:
//! - `GET /`: the status page (static HTML + JS, polling the API).
//! - `GET /metrics`: Prometheus / OpenMetrics text.
//! - `GET /api/streams`, `GET /api/streams/{app}/{key}`: streams, one stream in detail.
//! - `DELETE /api/streams/{app}/{key}`: ends the publisher;
//!   `DELETE /api/streams/{app}/{key}/players/{id}` and `DELETE /api/players/{id}`: end
//!   a player.
//! - `POST /api/sessions` (allocate), `GET /api/sessions` (list).
//! - `POST /api/drain`: graceful drain, as SIGTERM.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::{info, warn};

use super::api::{AllocatedJson, AllocationJson, StreamJson};
use super::sessions::{public_host, AllocError, SessionRequest, SessionUrls};
use super::{Control, STATUS_PAGE};
use crate::gate::Role;

/// Largest request body accepted (a session request is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// An error answer: a status code and a sentence.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }

    fn bad_request(what: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.message, "status": self.status.as_u16() }));
        (self.status, body).into_response()
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::bad_request(format!("bad path: {e}"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router, with the bearer check and the body limit.
pub(super) fn router(control: Control) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics))
        .route("/api/streams", get(list_streams))
        .route("/api/streams/{*path}", get(get_stream).delete(delete_stream))
        .route("/api/players/{id}", delete(delete_player))
        .route("/api/sessions", post(create_session).get(list_sessions))
        .route("/api/drain", post(drain))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
        })
        .layer(middleware::from_fn_with_state(control.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(control)
}

/// The peer of a control connection, put on every request by the server.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerAddr(pub(super) std::net::SocketAddr);

/// Who may do what (see [`super::access`]): a Host header naming this API; the bearer
/// token for every mutating request, and for reads unless the token was generated and
/// the peer is on loopback; the status page itself is open (it sends the token it finds
/// after `#token=`).
async fn require_token(State(control): State<Control>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    if !super::access::host_allowed(host, &control.inner.api_hosts) {
        warn!(host = ?host, path = %request.uri().path(), "control API request for another host refused");
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not the control API's (add it to [api] hosts)",
        )
        .into_response();
    }
    let read = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
    let token = &control.inner.api_token;
    if read && (request.uri().path() == "/" || token.reads_open_to(peer)) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.token.as_bytes()) => next.run(request).await,
        _ => {
            warn!(path = %request.uri().path(), "control API request without a valid bearer token");
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "a valid bearer token is required").into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Compares without an early exit, so the time taken says nothing about where a guess
/// went wrong.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status_page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

async fn metrics(State(control): State<Control>) -> ApiResult<Response> {
    // Encoding reads locks held only for pointer copies; still, it is off the runtime's
    // async workers so a large scrape never delays a session task.
    let text = tokio::task::spawn_blocking(move || super::metrics::encode(&control.inner.registry))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoder failed"))?
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed"))?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

async fn list_streams(State(control): State<Control>, headers: HeaderMap) -> Json<serde_json::Value> {
    let rates = &control.inner.rates;
    let streams: Vec<StreamJson> =
        control.inner.hub.snapshot().iter().map(|s| StreamJson::summary(s, rates)).collect();
    // Where browsers play: the relay's one port, on the host this API was reached by
    // (the status page links each stream to `{play_base}/play/{app}/{key}`).
    let host_header = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let host = public_host(host_header, control.inner.rtmp_addr);
    let play_base = format!("http://{host}:{}", control.inner.rtmp_addr.port());
    Json(
        json!({ "streams": streams, "draining": control.inner.drain.is_cancelled(), "play_base": play_base }),
    )
}

/// What a path under `/api/streams/` names.
enum Target {
    Stream(String),
    Player(String, u64),
}

/// `{app}/{key}` or `{app}/{key}/players/{id}`. The app may have several segments; a
/// path of the second form is a player when its stream exists (`a/players/1` may also be
/// a stream with app `a/players`, which wins when it exists).
fn target(control: &Control, path: &str) -> ApiResult<Target> {
    let path = path.trim_matches('/');
    if path.split('/').count() < 2 || path.split('/').any(str::is_empty) {
        return Err(ApiError::bad_request("expected /api/streams/{app}/{key}"));
    }
    let hub = &control.inner.hub;
    if hub.stream_info(path).is_none() {
        if let Some((stream, id)) = path.rsplit_once("/players/") {
            if let (Ok(id), Some(_)) = (id.parse::<u64>(), hub.stream_info(stream)) {
                return Ok(Target::Player(stream.to_owned(), id));
            }
        }
    }
    Ok(Target::Stream(path.to_owned()))
}

async fn get_stream(
    State(control): State<Control>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<StreamJson>> {
    let Path(path) = path?;
    let Target::Stream(session_id) = target(&control, &path)? else {
        return Err(ApiError::bad_request("GET a stream, not a player"));
    };
    let info = control
        .inner
        .hub
        .stream_info(&session_id)
        .ok_or_else(|| ApiError::not_found(format!("no stream {session_id}")))?;
    let relay = control.inner.relays.get(&session_id);
    let allocation = control.inner.allocations.get(&session_id);
    Ok(Json(StreamJson::detail(&info, &control.inner.rates, relay, allocation.as_ref())))
}

async fn delete_stream(
    State(control): State<Control>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(path) = path?;
    match target(&control, &path)? {
        Target::Stream(session_id) => {
            if !control.inner.hub.end_publisher(&session_id) {
                return Err(ApiError::not_found(format!("no publisher on {session_id}")));
            }
            info!(session_id, "publisher ended through the control API");
            Ok(accepted(json!({ "ended": "publisher", "session_id": session_id })))
        }
        Target::Player(session_id, id) => end_player(&control, Some(&session_id), id),
    }
}

async fn delete_player(
    State(control): State<Control>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let id = id.parse::<u64>().map_err(|_| ApiError::bad_request(format!("bad player id {id:?}")))?;
    end_player(&control, None, id)
}

fn end_player(control: &Control, session_id: Option<&str>, id: u64) -> ApiResult<Response> {
    if !control.inner.hub.end_player(session_id, id) {
        return Err(ApiError::not_found(format!("no player {id}")));
    }
    info!(player = id, "player ended through the control API");
    Ok(accepted(json!({ "ended": "player", "id": id })))
}

/// 202: the session's own task ends it, a moment later.
fn accepted(body: serde_json::Value) -> Response {
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

async fn create_session(
    State(control): State<Control>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let request: SessionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SessionRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?
    };
    let allocation = control.inner.allocations.allocate(request).map_err(|e| match e {
        AllocError::Invalid(m) => ApiError::bad_request(m),
        e @ AllocError::Taken(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        e @ AllocError::Full => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })?;
    let ttl = allocation.expires.duration_since(allocation.created).unwrap_or_default();
    let host_header = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let host = public_host(host_header, control.inner.rtmp_addr);
    let port = control.inner.rtmp_addr.port();
    let sid = &allocation.session_id;
    let mint = |role| control.inner.minter.as_ref().and_then(|m| m.mint(sid, role, ttl));
    let (publish_token, play_token) = (mint(Role::Publish), mint(Role::Play));
    let body = AllocatedJson {
        session: sid.clone(),
        expires: AllocatedJson::expires(&allocation),
        ttl_s: ttl.as_secs(),
        forward: AllocationJson::new(&allocation).forward_urls(),
        tokens: publish_token.is_some() || play_token.is_some(),
        publish: SessionUrls::new(&host, port, sid, publish_token.as_deref()),
        play: SessionUrls::new(&host, port, sid, play_token.as_deref()),
    };
    info!(session_id = %sid, ttl_s = ttl.as_secs(), forward = allocation.forward.len(), "session allocated");
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_sessions(State(control): State<Control>) -> Json<serde_json::Value> {
    let sessions: Vec<AllocationJson> =
        control.inner.allocations.list().iter().map(AllocationJson::new).collect();
    Json(json!({ "sessions": sessions }))
}

async fn drain(State(control): State<Control>) -> Response {
    let already = control.inner.drain.is_cancelled();
    if !already {
        info!("drain requested through the control API: finishing sessions");
        control.inner.drain.cancel();
    }
    let grace_ms = control.inner.grace.as_millis() as u64;
    accepted(json!({ "draining": true, "already": already, "grace_ms": grace_ms }))
}
