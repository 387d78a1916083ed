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

use super::problem::problem;
use super::{App, Body};

/// Answers a request for `/admin/…`.
pub(super) async fn route(app: &App, req: Request<Incoming>) -> http::Response<Body> {
    // Logs and configuration (see `operate`).
    match req.uri().path() {
        "/admin/config" => return super::operate::config(app, &req),
        "/admin/log-level" => return super::operate::log_level(app, req).await,
        _ => {}
    }
    let path = req.uri().path();
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not Found",
        &format!("no resource at {path}"),
    )
}
