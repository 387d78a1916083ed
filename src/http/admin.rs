//! The operators' endpoints under `/admin/`, served on the admin listener only (it is
//! not exposed to callers: see README, "Operating it"). They are off the request path:
//! each may read the store or every zone, so none is admitted under the waiting limit,
//! and none is served on the public listener (there `/admin/…` is a 404 like any
//! unknown path).
//!
//! Each route is one arm of [`route`]; an unknown path under `/admin/` is a 404
//! problem, a known path with the wrong method a 405 with `Allow`.

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::history;
use super::problem::{malformed_country, method_not_allowed, only_get, problem};
use super::{App, Body};

mod members;

/// Answers a request for `/admin/…`.
pub(super) async fn route(app: &App, req: Request<Incoming>) -> http::Response<Body> {
    // Logs and configuration (see `operate`).
    match req.uri().path() {
        "/admin/config" => return super::operate::config(app, &req),
        "/admin/log-level" => return super::operate::log_level(app, req).await,
        _ => {}
    }
    let path = req.uri().path();
    let query = req.uri().query();
    // Member operations (see `members` and `history`).
    if let Some(rest) = path.strip_prefix("/admin/members/") {
        if let Some((id, action)) = rest.split_once('/') {
            match action {
                "inspect" => {
                    return match only_get(&req) {
                        Some(resp) => resp,
                        None => members::inspect(app, id).await,
                    }
                }
                "flush" => {
                    return match *req.method() {
                        Method::POST => members::flush(app, id).await,
                        _ => method_not_allowed("POST"),
                    }
                }
                "history" => {
                    return match only_get(&req) {
                        Some(resp) => resp,
                        None => history::member(app, id, query).await,
                    }
                }
                _ => {}
            }
        }
    }
    if path == "/admin/plans" {
        return match only_get(&req) {
            Some(resp) => resp,
            None => preview_plans(app, query),
        };
    }
    if path == "/admin/store/rejected" {
        return match only_get(&req) {
            Some(resp) => resp,
            None => {
                let rows = app.members.store().quarantine().list();
                super::render::json_ok(bytes::Bytes::from(
                    serde_json::to_vec(&serde_json::json!({ "rows": rows })).unwrap_or_default(),
                ))
            }
        };
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

/// `GET /admin/plans?country=CC&at=T[&visitor=V][&partner=P]`: the plans answer as it
/// will be (or was) at `T` under the current snapshot's rules, for an operator checking
/// a scheduled change before its instant. Rendered on request (the admin listener is
/// off the hot path).
fn preview_plans(app: &App, query: Option<&str>) -> http::Response<Body> {
    let cc = match super::params::country_param(query) {
        Ok(cc) => cc,
        Err(detail) => return malformed_country(&detail),
    };
    let at = match super::params::query_value(query, "at") {
        Ok(Some(text)) => crate::plan::parse_instant_ms(&text),
        Ok(None) => Err("the at query parameter is required, as in at=2027-02-01T00:00:00Z".into()),
        Err(e) => Err(e),
    };
    let at = match at {
        Ok(at) => at,
        Err(detail) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "malformed-instant",
                "Malformed instant",
                &detail,
            )
        }
    };
    let (visitor, partner) = super::params::plans_params(query);
    let snapshot = app.catalog.load();
    match snapshot.plans_at(cc, at, visitor, partner) {
        Ok(answer) => {
            let mut resp = super::render::json_ok(answer.body);
            let h = resp.headers_mut();
            h.insert(http::header::ETAG, answer.etag);
            h.insert(
                super::render::X_CATALOG_VERSION.clone(),
                snapshot.version_header().clone(),
            );
            resp
        }
        Err(e) => super::handlers::plans_problem(e),
    }
}
