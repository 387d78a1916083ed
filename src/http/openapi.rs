//! The API's contract: the OpenAPI document (`docs/openapi.yaml`, converted to JSON by
//! `build.rs`) served at `GET /openapi.json`, and [`ROUTES`], the table of what the
//! router serves, which `tests/openapi.rs` holds against both the document and a live
//! node (so neither the table nor the document can drift from the router).
//!
//! The router itself matches paths by hand (`App::route_now`, `admin::route`): a
//! table walk would cost every request, and the hot paths are measured in
//! instructions. Adding a route is therefore three edits, each checked: its arm in
//! the router, its row here, its operation in `docs/openapi.yaml`.

use bytes::Bytes;

use super::render::json_ok;
use super::{Body, Listener};

/// The document, as JSON, made at build time.
static DOCUMENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// `GET /openapi.json`: the static document (a reference-counted copy of nothing).
pub(super) fn answer() -> http::Response<Body> {
    json_ok(Bytes::from_static(DOCUMENT))
}

/// The OpenAPI document the node serves, as JSON.
pub fn document() -> &'static [u8] {
    DOCUMENT
}

/// One operation the router answers: a method on a path template (OpenAPI's
/// `{name}` for a path parameter) on some listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Upper case, as sent (`GET`, `HEAD`, `POST`): the `Allow` of the path's 405.
    pub method: &'static str,
    pub path: &'static str,
    pub listeners: &'static [Listener],
}

const PUBLIC: &[Listener] = &[Listener::Public];
const ADMIN: &[Listener] = &[Listener::Admin];
const BOTH: &[Listener] = &[Listener::Public, Listener::Admin];

const fn route(
    method: &'static str,
    path: &'static str,
    listeners: &'static [Listener],
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        listeners,
    }
}

/// Every operation the router answers, and nothing else: any other path on a
/// listener is a 404, any other method on one of these paths a 405 whose `Allow`
/// lists this table's methods for the path. GET routes answer HEAD too (listed).
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/v1/plans", PUBLIC),
    route("HEAD", "/v1/plans", PUBLIC),
    route("GET", "/v1/members/{member_id}/entitlement", PUBLIC),
    route("HEAD", "/v1/members/{member_id}/entitlement", PUBLIC),
    route("POST", "/v1/playback/authorize", PUBLIC),
    route("POST", "/v1/entitlements:batch", PUBLIC),
    route("GET", "/healthz", BOTH),
    route("HEAD", "/healthz", BOTH),
    route("GET", "/readyz", BOTH),
    route("HEAD", "/readyz", BOTH),
    route("GET", "/openapi.json", BOTH),
    route("HEAD", "/openapi.json", BOTH),
    route("GET", "/metrics", ADMIN),
    route("HEAD", "/metrics", ADMIN),
    // Admin routes (`admin::route`) go here, with `ADMIN`.
    route("GET", "/admin/members/{member_id}/history", ADMIN),
    route("HEAD", "/admin/members/{member_id}/history", ADMIN),
    route("GET", "/admin/members/{member_id}/inspect", ADMIN),
    route("HEAD", "/admin/members/{member_id}/inspect", ADMIN),
    route("POST", "/admin/members/{member_id}/flush", ADMIN),
    route("GET", "/admin/config", ADMIN),
    route("HEAD", "/admin/config", ADMIN),
    route("GET", "/admin/log-level", ADMIN),
    route("HEAD", "/admin/log-level", ADMIN),
    route("PUT", "/admin/log-level", ADMIN),
    route("GET", "/admin/plans", ADMIN),
    route("HEAD", "/admin/plans", ADMIN),
    route("GET", "/admin/catalog/history", ADMIN),
    route("HEAD", "/admin/catalog/history", ADMIN),
    route("GET", "/admin/store/rejected", ADMIN),
    route("HEAD", "/admin/store/rejected", ADMIN),
];
