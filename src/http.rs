//! The HTTP API: routing, the three lookups, problem answers, and the listeners.
//!
//! The request path, once:
//! - `GET /v1/plans?country=CC`: the country's answer is pre-rendered in the current
//!   catalog snapshot — a hit copies a reference-counted buffer (`x-served-from:
//!   snapshot`); `If-None-Match` matching the ETag answers 304; a country without plans
//!   is 404. The catalog never misses: a node does not serve without a snapshot.
//! - `GET /v1/members/{id}/entitlement` and `POST /v1/playback/authorize`: the member is
//!   looked up through [`Members`] — **hit** answers from L1; **miss** loads once per
//!   member (concurrent misses wait for that one load) from the L2 tier's local zone,
//!   then its other zones, then the store; **stale** entries are
//!   dropped by the change follower before they are read again; **failure** of the store
//!   answers 503 problem JSON and caches nothing. The decision is computed from the
//!   record and the same snapshot that supplies `x-catalog-version`.
//! - Anything malformed is a 4xx problem (RFC 9457) naming what was wrong: 400 bad
//!   input, 404 unknown path, 405 wrong method (with `Allow`), 408 body too slow, 413
//!   body over the limit, 415 not JSON, 431 (from hyper) head over the limit.
//!
//! Requests are counted and timed per route and status with handles registered once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::Either;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{is_country_code, CatalogHandle, Snapshot};
use crate::config::HttpConfig;
use crate::members::{self, Member, Members, Reason};
use crate::telemetry::{HttpMetrics, Route};

pub type Body = Full<Bytes>;

static X_CATALOG_VERSION: HeaderName = HeaderName::from_static("x-catalog-version");
static X_SERVED_FROM: HeaderName = HeaderName::from_static("x-served-from");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const FROM_SNAPSHOT: HeaderValue = HeaderValue::from_static("snapshot");
const FROM_L1: HeaderValue = HeaderValue::from_static("l1");
const FROM_L2: HeaderValue = HeaderValue::from_static("l2");
const FROM_STORE: HeaderValue = HeaderValue::from_static("store");

/// Which listener a request arrived on: the admin one also serves `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Work [`App::route_now`] hands to [`App::route_later`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Later {
    /// A member not in L1.
    Entitlement(u64),
    Authorize,
    Metrics,
}

/// What every request handler shares.
pub struct App {
    pub catalog: Arc<CatalogHandle>,
    pub members: Arc<Members>,
    /// Set at shutdown: `/readyz` answers 503 so load balancers stop sending.
    pub draining: AtomicBool,
    pub limits: HttpConfig,
    prometheus: PrometheusHandle,
    metrics: HttpMetrics,
}

impl App {
    pub fn new(
        catalog: Arc<CatalogHandle>,
        members: Arc<Members>,
        limits: HttpConfig,
        prometheus: PrometheusHandle,
    ) -> App {
        App {
            catalog,
            members,
            draining: AtomicBool::new(false),
            limits,
            prometheus,
            metrics: HttpMetrics::register(),
        }
    }

    /// Counts and times an answer, and asks the client to close once draining.
    fn finish(&self, route: Route, mut resp: Response<Body>, started: Instant) -> Response<Body> {
        self.metrics
            .record(route, resp.status().as_u16(), started.elapsed());
        if self.draining.load(Ordering::Relaxed) {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// Answers at once whatever needs no waiting: plans, health, readiness, L1 hits and
    /// every rejection. Answering here lets the connection drop the request before its
    /// answer is written, which hyper rewards (its read buffer is reused in place).
    pub fn route_now(
        &self,
        req: &Request<Incoming>,
        listener: Listener,
    ) -> Result<(Route, Response<Body>), Later> {
        let path = req.uri().path();
        if listener == Listener::Public {
            if path == "/v1/plans" {
                return Ok((Route::Plans, self.plans(req)));
            }
            if path == "/v1/playback/authorize" {
                return Err(Later::Authorize);
            }
            if let Some(rest) = path.strip_prefix("/v1/members/") {
                if let Some(id) = rest.strip_suffix("/entitlement") {
                    if !id.contains('/') {
                        return self
                            .entitlement_now(req, id)
                            .map(|r| (Route::Entitlement, r));
                    }
                }
            }
        }
        Ok(match path {
            "/healthz" => (
                Route::Healthz,
                only_get(req)
                    .unwrap_or_else(|| json_ok(Bytes::from_static(b"{\"status\":\"ok\"}"))),
            ),
            "/readyz" => (
                Route::Readyz,
                only_get(req).unwrap_or_else(|| self.readyz()),
            ),
            "/metrics" if listener == Listener::Admin => match only_get(req) {
                Some(resp) => (Route::Metrics, resp),
                None => return Err(Later::Metrics),
            },
            _ => (
                Route::Other,
                problem(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "Not Found",
                    &format!("no resource at {path}"),
                ),
            ),
        })
    }

    /// Answers what [`App::route_now`] could not: member misses, authorize (which reads
    /// a body), metrics.
    pub async fn route_later(
        &self,
        req: Request<Incoming>,
        later: Later,
    ) -> (Route, Response<Body>) {
        match later {
            Later::Entitlement(id) => (Route::Entitlement, self.entitlement_miss(id).await),
            Later::Authorize => (Route::Authorize, self.authorize(req).await),
            Later::Metrics => (Route::Metrics, self.metrics_text().await),
        }
    }

    fn plans(&self, req: &Request<Incoming>) -> Response<Body> {
        if let Some(resp) = only_get(req) {
            return resp;
        }
        let cc = match country_param(req.uri().query()) {
            Ok(cc) => cc,
            Err(detail) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "malformed-country",
                    "Malformed country code",
                    &detail,
                )
            }
        };
        let snapshot = self.catalog.load();
        let Some(entry) = snapshot.country(cc) else {
            return problem(
                StatusCode::NOT_FOUND,
                "unknown-country",
                "No plans for this country",
                &format!("no plans are offered in {}", String::from_utf8_lossy(&cc)),
            );
        };
        let not_modified = req
            .headers()
            .get(IF_NONE_MATCH)
            .is_some_and(|v| etag_matches(v.as_bytes(), entry.etag.as_bytes()));
        let (status, body) = if not_modified {
            (StatusCode::NOT_MODIFIED, Bytes::new())
        } else {
            (StatusCode::OK, entry.body.clone())
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        if !not_modified {
            h.insert(CONTENT_TYPE, JSON);
        }
        h.insert(ETAG, entry.etag.clone());
        h.insert(X_CATALOG_VERSION.clone(), snapshot.version_header().clone());
        h.insert(X_SERVED_FROM.clone(), FROM_SNAPSHOT);
        resp
    }

    /// The entitlement answer if it needs no waiting (a rejection or an L1 hit);
    /// otherwise the member id to look up.
    fn entitlement_now(&self, req: &Request<Incoming>, id: &str) -> Result<Response<Body>, Later> {
        if let Some(resp) = only_get(req) {
            return Ok(resp);
        }
        let id = match parse_member_id(id) {
            Ok(id) => id,
            Err(detail) => {
                return Ok(problem(
                    StatusCode::BAD_REQUEST,
                    "malformed-member-id",
                    "Malformed member id",
                    &detail,
                ))
            }
        };
        match self.members.get_l1(id) {
            Some(entry) => Ok(self.entitlement_answer(id, &entry, members::ServedFrom::L1)),
            None => Err(Later::Entitlement(id)),
        }
    }

    async fn entitlement_miss(&self, id: u64) -> Response<Body> {
        match self.lookup(id).await {
            Ok((entry, from)) => self.entitlement_answer(id, &entry, from),
            Err(resp) => resp,
        }
    }

    fn entitlement_answer(
        &self,
        id: u64,
        entry: &members::Entry,
        from: members::ServedFrom,
    ) -> Response<Body> {
        let snapshot = self.catalog.load();
        let Some(member) = entry.member.as_ref() else {
            let mut resp = problem(
                StatusCode::NOT_FOUND,
                "unknown-member",
                "Unknown member",
                &format!("there is no member {id}"),
            );
            with_member_headers(&mut resp, &snapshot, from);
            return resp;
        };
        // Rendered once per entry and catalog version, then served as shared bytes.
        let cached = entry.rendered.load();
        let body = match cached.as_deref() {
            Some((version, body)) if *version == snapshot.version() => body.clone(),
            _ => {
                let body = render_entitlement(member, &snapshot);
                entry
                    .rendered
                    .store(Some(Arc::new((snapshot.version(), body.clone()))));
                body
            }
        };
        let mut resp = json_ok(body);
        with_member_headers(&mut resp, &snapshot, from);
        resp
    }

    async fn authorize(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let essence = v.split(';').next().unwrap_or("").trim();
                essence.eq_ignore_ascii_case("application/json")
            })
            .unwrap_or(false);
        if !is_json {
            return problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/json",
            );
        }
        let body = match read_body(req, &self.limits).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let ask: AuthorizeRequest = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "malformed-body",
                    "Malformed request body",
                    &format!("expected {{\"member_id\": positive integer, \"device_class\": string, \"active_streams\": non-negative integer}}: {e}"),
                )
            }
        };
        if ask.member_id == 0 || ask.member_id > i64::MAX as u64 {
            return problem(
                StatusCode::BAD_REQUEST,
                "malformed-member-id",
                "Malformed member id",
                "member_id must be a positive 64-bit integer",
            );
        }
        if !valid_device_class(&ask.device_class) {
            return problem(
                StatusCode::BAD_REQUEST,
                "malformed-device-class",
                "Malformed device class",
                "device_class must be 1 to 32 characters of a-z, 0-9, '_' or '-' (for example \"tv\")",
            );
        }
        let (entry, from) = match self.lookup(ask.member_id).await {
            Ok(found) => found,
            Err(resp) => return resp,
        };
        let snapshot = self.catalog.load();
        let (reason, plan) = members::authorize(
            entry.member.as_ref(),
            &snapshot,
            &ask.device_class,
            ask.active_streams,
        );
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"{\"allowed\":");
        out.extend_from_slice(if reason == Reason::Ok {
            b"true"
        } else {
            b"false"
        });
        out.extend_from_slice(b",\"reason\":\"");
        out.extend_from_slice(reason.as_str().as_bytes());
        out.extend_from_slice(b"\",\"max_streams\":");
        match plan {
            Some(p) => {
                out.extend_from_slice(itoa::Buffer::new().format(p.max_streams).as_bytes());
                out.extend_from_slice(b",\"max_resolution\":");
                json_string(&mut out, &p.max_resolution);
            }
            None => out.extend_from_slice(b"0,\"max_resolution\":null"),
        }
        out.push(b'}');
        let mut resp = json_ok(Bytes::from(out));
        with_member_headers(&mut resp, &snapshot, from);
        resp
    }

    /// A member lookup bounded by the request timeout; failures become 503 problems.
    async fn lookup(
        &self,
        id: u64,
    ) -> Result<(members::Entry, members::ServedFrom), Response<Body>> {
        // The hit path needs no timer: only a miss can wait.
        if let Some(entry) = self.members.get_l1(id) {
            return Ok((entry, members::ServedFrom::L1));
        }
        match tokio::time::timeout(self.limits.request_timeout, self.members.get(id)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => {
                tracing::warn!(member = id, error = %e, "member lookup failed");
                Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "Member store unavailable",
                    "the member could not be read; retry shortly",
                ))
            }
            Err(_) => Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-timeout",
                "Member store too slow",
                "the member could not be read in time; retry shortly",
            )),
        }
    }

    fn readyz(&self) -> Response<Body> {
        if self.draining.load(Ordering::Acquire) {
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "Draining",
                "this node is shutting down",
            );
        }
        let snapshot = self.catalog.load();
        let body = format!(
            "{{\"status\":\"ready\",\"catalog_version\":{}}}",
            snapshot.version()
        );
        let mut resp = json_ok(Bytes::from(body));
        resp.headers_mut()
            .insert(X_CATALOG_VERSION.clone(), snapshot.version_header().clone());
        resp
    }

    async fn metrics_text(&self) -> Response<Body> {
        metrics::gauge!("readtier_l1_entries").set(self.members.len() as f64);
        let mut text = self.prometheus.render();
        self.metrics.render_latency(&mut text);
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    }
}

/// The body of `POST /v1/playback/authorize`.
#[derive(Debug, Deserialize)]
pub struct AuthorizeRequest {
    pub member_id: u64,
    pub device_class: String,
    pub active_streams: u64,
}

fn valid_device_class(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The `country` query parameter, upper-cased; an error says what was wrong.
pub fn country_param(query: Option<&str>) -> Result<[u8; 2], String> {
    let q = query.unwrap_or("").as_bytes();
    // The common case, `country=XX` alone, without walking the pairs.
    if q.len() == 10
        && q.starts_with(b"country=")
        && q[8].is_ascii_alphabetic()
        && q[9].is_ascii_alphabetic()
    {
        return Ok([q[8].to_ascii_uppercase(), q[9].to_ascii_uppercase()]);
    }
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("country="))
        .ok_or_else(|| "the country query parameter is required, as in ?country=US".to_string())?;
    let b = value.as_bytes();
    if b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic) {
        let cc = [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()];
        debug_assert!(is_country_code(&cc));
        return Ok(cc);
    }
    let shown: String = value.chars().take(16).collect();
    Err(format!(
        "country must be a two-letter ISO 3166-1 code such as US; got {shown:?}"
    ))
}

/// A member id: a positive decimal integer that fits a signed 64-bit column.
pub fn parse_member_id(s: &str) -> Result<u64, String> {
    let bad = || {
        let shown: String = s.chars().take(24).collect();
        format!("member id must be a positive integer; got {shown:?}")
    };
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.parse::<u64>() {
        Ok(n) if n > 0 && n <= i64::MAX as u64 => Ok(n),
        _ => Err(bad()),
    }
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, lists, `*`).
pub fn etag_matches(header: &[u8], etag: &[u8]) -> bool {
    header.split(|b| *b == b',').any(|t| {
        let t = t.trim_ascii();
        let t = t.strip_prefix(b"W/").unwrap_or(t);
        t == b"*" || t == etag
    })
}

/// `{"member_id":…,"status":…,"plan":…,"country":…,"can_stream":…,<plan fragment>,"version":…}`.
pub fn render_entitlement(m: &Member, snapshot: &Snapshot) -> Bytes {
    let entry = snapshot.plan(&m.plan_id);
    let can_stream = members::standing(m, entry.map(|e| &e.plan)) == Reason::Ok;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"member_id\":");
    out.extend_from_slice(itoa::Buffer::new().format(m.id).as_bytes());
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(m.status.as_str().as_bytes());
    out.extend_from_slice(b"\",\"plan\":");
    json_string(&mut out, &m.plan_id);
    out.extend_from_slice(b",\"country\":");
    json_string(&mut out, &m.country);
    out.extend_from_slice(if can_stream {
        b",\"can_stream\":true,"
    } else {
        b",\"can_stream\":false,"
    });
    match entry {
        Some(e) => out.extend_from_slice(&e.entitlement_fragment),
        None => out.extend_from_slice(b"\"max_streams\":0,\"max_resolution\":null,\"download_devices\":0,\"device_classes\":[]"),
    }
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(itoa::Buffer::new().format(m.version).as_bytes());
    out.push(b'}');
    Bytes::from(out)
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("string serializes");
}

fn with_member_headers(resp: &mut Response<Body>, snapshot: &Snapshot, from: members::ServedFrom) {
    let h = resp.headers_mut();
    h.insert(X_CATALOG_VERSION.clone(), snapshot.version_header().clone());
    h.insert(
        X_SERVED_FROM.clone(),
        match from {
            members::ServedFrom::L1 => FROM_L1,
            members::ServedFrom::L2 => FROM_L2,
            members::ServedFrom::Store => FROM_STORE,
        },
    );
}

fn json_ok(body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp
}

/// An RFC 9457 problem answer.
pub fn problem(status: StatusCode, slug: &str, title: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": format!("urn:readtier:problem:{slug}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    resp
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        &format!("this resource answers {allow}"),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `None` for GET or HEAD; otherwise the 405 answer.
fn only_get<B>(req: &Request<B>) -> Option<Response<Body>> {
    (req.method() != Method::GET && req.method() != Method::HEAD)
        .then(|| method_not_allowed("GET, HEAD"))
}

async fn read_body(req: Request<Incoming>, limits: &HttpConfig) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            &format!("the body may be at most {} bytes", limits.max_body_bytes),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), limits.max_body_bytes);
    match tokio::time::timeout(limits.request_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(problem(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "Unreadable body",
            &e.to_string(),
        )),
        Err(_) => Err(problem(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            &format!(
                "the body did not arrive within {:?}",
                limits.request_timeout
            ),
        )),
    }
}

/// Accepts connections until `stop` is cancelled, then lets every open connection
/// finish its in-flight request under `tracker`.
///
/// The connection task runs hyper's connection future alone, so a request wakes
/// nothing else. Time limits and shutdown are handled beside it by a per-connection
/// [`Watchdog`] task that wakes a few times per `http.request_timeout`, instead of
/// hyper's per-request header timer and a per-request `select!` (together ~1,300
/// instructions a request under callgrind; docs/PERFORMANCE.md):
/// - a request head that has started to arrive must be complete within
///   `http.request_timeout`, and a connection with no request for `http.idle_timeout`
///   is closed (bodies are bounded inside the handlers);
/// - once draining, answers carry `Connection: close`, and a connection with no
///   request in flight is closed.
///
/// Closing is a `shutdown(2)` of the socket through a duplicate of its descriptor,
/// which the connection future sees as end of stream.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    kind: Listener,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(app.limits.max_header_bytes)
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let (stream, closer) = match with_closer(stream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot set up connection");
                continue;
            }
        };
        let state = Arc::new(ConnState::default());
        tokio::spawn(
            Watchdog::new(
                state.clone(),
                closer,
                app.limits.request_timeout,
                app.limits.idle_timeout,
            )
            .run(stop.clone()),
        );
        let app = app.clone();
        let builder = builder.clone();
        tracker.spawn(async move {
            let svc_state = state.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let in_flight = InFlight::start(svc_state.clone());
                let started = Instant::now();
                match app.route_now(&req, kind) {
                    Ok((route, resp)) => {
                        drop(req);
                        let resp = app.finish(route, resp, started);
                        drop(in_flight);
                        Either::Left(std::future::ready(Ok::<_, Infallible>(resp)))
                    }
                    Err(later) => {
                        let app = app.clone();
                        Either::Right(async move {
                            let (route, resp) = app.route_later(req, later).await;
                            let resp = app.finish(route, resp, started);
                            drop(in_flight);
                            Ok::<_, Infallible>(resp)
                        })
                    }
                }
            });
            let io = TokioIo::new(CountingIo {
                inner: stream,
                state: state.clone(),
            });
            if let Err(e) = builder.serve_connection(io, svc).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            state.closed.store(true, Ordering::Relaxed);
        });
    }
}

/// The stream, and a duplicate of its socket that can shut it down from elsewhere.
fn with_closer(
    stream: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let closer = std_stream.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(std_stream)?, closer))
}

/// What a connection's watchdog watches: counters updated on the request path with
/// single relaxed atomic operations.
#[derive(Default)]
struct ConnState {
    bytes_in: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    closed: AtomicBool,
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> InFlight {
        state.requests.fetch_add(1, Ordering::Relaxed);
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes a connection whose request head is too slow, that sits idle too long, or
/// that is idle while the node drains.
struct Watchdog {
    state: Arc<ConnState>,
    closer: std::net::TcpStream,
    period: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
    last_requests: u64,
    last_bytes: u64,
    quiet_since: Instant,
    partial_since: Option<Instant>,
}

impl Watchdog {
    fn new(
        state: Arc<ConnState>,
        closer: std::net::TcpStream,
        request_timeout: Duration,
        idle_timeout: Duration,
    ) -> Watchdog {
        Watchdog {
            state,
            closer,
            period: (request_timeout.min(idle_timeout) / 4).max(Duration::from_millis(25)),
            request_timeout,
            idle_timeout,
            last_requests: 0,
            last_bytes: 0,
            quiet_since: Instant::now(),
            partial_since: None,
        }
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.period, self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled(), if !draining => draining = true,
            }
            if self.state.closed.load(Ordering::Relaxed) {
                return;
            }
            if let Some(reason) = self.check(draining) {
                tracing::debug!(reason, "closing connection");
                let _ = self.closer.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }

    /// `Some(reason)` means close the connection now.
    fn check(&mut self, draining: bool) -> Option<&'static str> {
        let now = Instant::now();
        let requests = self.state.requests.load(Ordering::Relaxed);
        let bytes = self.state.bytes_in.load(Ordering::Relaxed);
        let busy = self.state.in_flight.load(Ordering::Relaxed) > 0;
        if busy || requests != self.last_requests {
            // Handlers bound their own time; a new request means progress.
            self.last_requests = requests;
            self.last_bytes = bytes;
            self.quiet_since = now;
            self.partial_since = None;
            return None;
        }
        if bytes != self.last_bytes {
            // Bytes arrived but no request started: a head is on its way.
            self.last_bytes = bytes;
            self.partial_since.get_or_insert(now);
        }
        match self.partial_since {
            Some(since) if now - since >= self.request_timeout => {
                Some("request head not complete in time")
            }
            Some(_) => None,
            None if draining => Some("draining"),
            None if now - self.quiet_since >= self.idle_timeout => Some("idle"),
            None => None,
        }
    }
}

/// The connection's socket, counting bytes received for the watchdog.
struct CountingIo {
    inner: tokio::net::TcpStream,
    state: Arc<ConnState>,
}

impl tokio::io::AsyncRead for CountingIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.state
                .bytes_in
                .fetch_add(read as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl tokio::io::AsyncWrite for CountingIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// Binds a listener, reporting the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_parameter() {
        assert_eq!(country_param(Some("country=US")).unwrap(), *b"US");
        assert_eq!(country_param(Some("x=1&country=jp")).unwrap(), *b"JP");
        for bad in [
            None,
            Some(""),
            Some("country=usa"),
            Some("country=U1"),
            Some("country="),
            Some("country=%55S"),
        ] {
            assert!(country_param(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn member_ids() {
        assert_eq!(parse_member_id("42").unwrap(), 42);
        assert_eq!(parse_member_id("999999999999").unwrap(), 999_999_999_999);
        for bad in [
            "abc",
            "-5",
            "0",
            "",
            "+5",
            "1.5",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(parse_member_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn etags() {
        assert!(etag_matches(b"\"US-1\"", b"\"US-1\""));
        assert!(etag_matches(b"W/\"US-1\"", b"\"US-1\""));
        assert!(etag_matches(b"\"a\", \"US-1\"", b"\"US-1\""));
        assert!(etag_matches(b"*", b"\"US-1\""));
        assert!(!etag_matches(b"\"US-2\"", b"\"US-1\""));
    }

    #[test]
    fn device_classes() {
        assert!(valid_device_class("tv"));
        assert!(valid_device_class("smart-tv_2"));
        assert!(!valid_device_class(""));
        assert!(!valid_device_class("TV"));
        assert!(!valid_device_class(&"a".repeat(33)));
    }
}
