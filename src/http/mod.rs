//! The HTTP API: routing, the three lookups, problem answers, and the listeners.
//!
//! The request path, once:
//! - `GET /v1/plans?country=CC`: the country's answer is pre-rendered in the current
//!   catalog snapshot — a hit copies a reference-counted buffer (`x-served-from:
//!   snapshot`); `If-None-Match` matching the ETag answers 304; a country without plans
//!   is 404. The catalog never misses: a node does not serve without a snapshot. With
//!   `visitor` and/or `partner` the answer is the pre-rendered variant for the
//!   visitor's experiment cells and the partner's offer (`catalog::pricing`).
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

mod access;
mod admin;
mod batch;
mod conn;
mod handlers;
mod history;
pub mod openapi;
mod operate;
pub mod params;
pub mod problem;
pub mod render;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

pub use batch::MAX_IDS as MAX_BATCH_IDS;
pub use conn::{bind, bind_shared, serve, serve_per_core};
pub use openapi::{RouteSpec, ROUTES};
pub use params::{country_param, AuthorizeRequest};
pub use render::render_entitlement;

use crate::admission::{Admission, AdmissionConfig, Face, Path};
use crate::catalog::CatalogHandle;
use crate::config::{Config, HttpConfig};
use crate::lookup::inspector::Inspector;
use crate::lookup::Members;
use crate::telemetry::{HttpMetrics, Route};
use problem::{only_get, problem};
use render::json_ok;

pub type Body = Full<Bytes>;

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
    /// `POST /v1/entitlements:batch` (reads a body; admitted if any id misses L1).
    Batch,
    Metrics,
    /// `/admin/…` on the admin listener (see `admin`).
    Admin,
}

impl Later {
    /// The route it answers, for counting.
    pub fn route(&self) -> Route {
        match self {
            Later::Entitlement(_) => Route::Entitlement,
            Later::Authorize => Route::Authorize,
            Later::Batch => Route::Batch,
            Later::Metrics => Route::Metrics,
            Later::Admin => Route::Admin,
        }
    }
}

/// What every request handler shares.
pub struct App {
    pub catalog: Arc<CatalogHandle>,
    pub members: Arc<Members>,
    /// Samples member answers for the consistency inspector (`lookup::inspector`).
    pub inspector: Arc<Inspector>,
    /// Set at shutdown: `/readyz` answers 503 so load balancers stop sending.
    pub draining: AtomicBool,
    pub limits: HttpConfig,
    prometheus: PrometheusHandle,
    metrics: HttpMetrics,
    /// Open connections on the public listener (`http.max_connections`).
    pub(crate) connections: AtomicUsize,
    /// Admission of lookups that wait on Redis or the store, shared with gRPC
    /// (`http.max_waiting`, `http.adaptive_waiting`; see `admission`).
    pub admission: Arc<Admission>,
    /// The sampled access log (`log.access_sample`); off unless configured.
    access: access::AccessLog,
    /// `GET /admin/config`'s answer, rendered once (secrets redacted).
    config_json: Bytes,
}

/// A lookup admitted to wait on Redis or the store; holds its place until dropped.
/// Held by the request's future (`Arc`) or within a handler (`&App`).
pub(crate) struct Waiting<A: std::ops::Deref<Target = App> = Arc<App>> {
    app: A,
}

impl<A: std::ops::Deref<Target = App>> Drop for Waiting<A> {
    fn drop(&mut self) {
        self.app.admission.release();
    }
}

impl App {
    pub fn new(
        catalog: Arc<CatalogHandle>,
        members: Arc<Members>,
        inspector: Arc<Inspector>,
        limits: HttpConfig,
        prometheus: PrometheusHandle,
    ) -> App {
        let fills = members.clone();
        let admission = Arc::new(Admission::new(
            AdmissionConfig {
                adaptive: limits.adaptive_waiting,
                max_waiting: limits.max_waiting,
                queue_target: limits.queue_target,
                saturation: limits.waiting_saturation,
            },
            move || fills.take_fill_wait(),
        ));
        App {
            catalog,
            members,
            inspector,
            draining: AtomicBool::new(false),
            admission,
            limits,
            prometheus,
            metrics: HttpMetrics::register(),
            connections: AtomicUsize::new(0),
            access: access::AccessLog::new(0.0),
            config_json: Bytes::from_static(b"{\"keys\":{}}"),
        }
    }

    /// What the operators' side takes from the whole configuration: the access log's
    /// sample and the effective configuration `GET /admin/config` answers.
    pub fn with_config(mut self, cfg: &Config) -> App {
        self.access = access::AccessLog::new(cfg.log.access_sample);
        self.config_json = Bytes::from(cfg.provenance.to_json().to_string());
        self
    }

    /// Admits a lookup of `member` (not in L1) to wait on Redis or the store, or `None`
    /// when it is shed (the caller answers 503).
    pub(crate) fn admit_waiting(
        self: &Arc<Self>,
        member: u64,
        face: Face,
        path: Path,
    ) -> Option<Waiting> {
        self.admit(self.clone(), member, face, path, 1)
    }

    /// [`App::admit_waiting`] from within a handler, for `misses` members not in L1 of
    /// which `member` is one.
    pub(crate) fn wait_here(
        &self,
        member: u64,
        face: Face,
        path: Path,
        misses: usize,
    ) -> Option<Waiting<&App>> {
        self.admit(self, member, face, path, misses)
    }

    /// The one admission both take: a place, or a shed counted by reason, and among
    /// the lookups L1 did not answer (so the hit ratio is the share L1 answered).
    fn admit<A: std::ops::Deref<Target = App>>(
        &self,
        app: A,
        member: u64,
        face: Face,
        path: Path,
        misses: usize,
    ) -> Option<Waiting<A>> {
        match self.admission.admit(member, face, path) {
            Ok(()) => Some(Waiting { app }),
            Err(_) => {
                self.members.count_shed_misses(misses as u64);
                None
            }
        }
    }

    /// Counts a connection refused over `http.max_connections`.
    pub(crate) fn shed_connection(&self) {
        self.metrics.shed_connections.increment(1);
    }

    /// Counts and times an answer, writes it to the access log when sampled, and asks
    /// the client to close once draining.
    fn finish(
        &self,
        route: Route,
        method: &Method,
        mut resp: Response<Body>,
        started: Instant,
    ) -> Response<Body> {
        let elapsed = started.elapsed();
        self.metrics.record(route, resp.status().as_u16(), elapsed);
        // Off: one load and one branch (the hit path's whole cost of the access log).
        if self.access.on() {
            self.access.record(method, route, &resp, elapsed);
        }
        if self.draining.load(Ordering::Relaxed) {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The answer to a request head over `http.max_header_bytes`.
    pub(crate) fn head_too_large(&self) -> Response<Body> {
        let mut resp = problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-too-large",
            "Request head too large",
            &format!(
                "the request line and headers may take at most {} bytes",
                self.limits.max_header_bytes
            ),
        );
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
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
            // After the hot paths: costs them nothing.
            if path == "/v1/entitlements:batch" {
                return Err(Later::Batch);
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
            // After the hot paths above: costs them nothing.
            "/openapi.json" => (
                Route::Openapi,
                only_get(req).unwrap_or_else(openapi::answer),
            ),
            "/metrics" if listener == Listener::Admin => match only_get(req) {
                Some(resp) => (Route::Metrics, resp),
                None => return Err(Later::Metrics),
            },
            _ if listener == Listener::Admin && path.starts_with("/admin/") => {
                return Err(Later::Admin)
            }
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
        admitted: bool,
    ) -> (Route, Response<Body>) {
        match later {
            Later::Entitlement(id) => (
                Route::Entitlement,
                self.entitlement_miss(id, admitted, &req).await,
            ),
            Later::Authorize => (Route::Authorize, self.authorize(req).await),
            Later::Batch => (Route::Batch, self.batch(req).await),
            Later::Metrics => (Route::Metrics, self.metrics_text().await),
            Later::Admin => (Route::Admin, admin::route(self, req).await),
        }
    }
}

/// The size of a request's head as sent: request line and header lines.
///
/// hyper's own limit (its read buffer, twice `http.max_header_bytes`, see `conn`)
/// answers a bare 431; below it this check answers the problem JSON every other error
/// gets. Only called when the connection received more than the limit since its last
/// request (`conn`), so a normal request never pays for the walk over its headers.
pub(crate) fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path().len()
        + 12
        + req.uri().query().map_or(0, |q| q.len() + 1);
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}
