//! The operators' endpoints under `/admin/`, served on the admin listener only (it is
//! not exposed to callers: see README, "Operating it"). They are off the request path:
//! each may read the store or every zone, so none is admitted under the waiting limit,
//! and none is served on the public listener (there `/admin/…` is a 404 like any
//! unknown path).
//!
//! Each route is one arm of [`route`]; an unknown path under `/admin/` is a 404
//! problem, a known path with the wrong method a 405 with `Allow`.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::history;
use super::problem::{only_get, problem};
use super::{App, Body};

/// Answers a request for `/admin/…`.
pub(super) async fn route(app: &App, req: Request<Incoming>) -> http::Response<Body> {
    let path = req.uri().path();
    let query = req.uri().query();
    if let Some(rest) = path.strip_prefix("/admin/members/") {
        if let Some((id, "history")) = rest.split_once('/') {
            return match only_get(&req) {
                Some(resp) => resp,
                None => history::member(app, id, query).await,
            };
        }
    }
    if path == "/admin/catalog/history" {
        return match only_get(&req) {
            Some(resp) => resp,
            None => history::catalog(app, query).await,
        };
    }
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not Found",
        &format!("no resource at {path}"),
    )
}
