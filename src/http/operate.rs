//! Two operators' endpoints of the admin listener (arms of `admin::route`):
//!
//! - `GET /admin/config`: the effective configuration, every key with its value and
//!   the layer that set it (`default`, `file`, `env`), passwords and secrets redacted
//!   (`config::provenance` says how). Rendered once at start: the configuration does
//!   not change while the process runs.
//! - `GET /admin/log-level`: the log filter in force; `PUT /admin/log-level` with
//!   `{"level":"debug"}` (a level name: trace, debug, info, warn, error, off) or
//!   `{"filter":"warn,readtier::access=info"}` (tracing-subscriber directives) swaps
//!   it at once, without a restart, and answers the new and the previous filter. A
//!   level name keeps the PostgreSQL driver at `warn` (at `debug` it logs statement
//!   parameters, which are member ids); a filter is taken as written.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::params::read_body;
use super::problem::{method_not_allowed, problem};
use super::render::json_ok;
use super::{App, Body};
use crate::logging::{self, LoggingError};

/// `GET /admin/config`.
pub(super) fn config(app: &App, req: &Request<Incoming>) -> Response<Body> {
    if let Some(resp) = super::problem::only_get(req) {
        return resp;
    }
    json_ok(app.config_json.clone())
}

/// The body of `PUT /admin/log-level`: an object with exactly one of `level` and
/// `filter`, a string (a `null` is not an absent field: the document says so).
fn level_change(body: &[u8]) -> Result<(Option<String>, Option<String>), String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if map.len() != 1 {
        return Err("give exactly one of level and filter".into());
    }
    match map.into_iter().next() {
        Some((k, serde_json::Value::String(v))) if k == "level" => Ok((Some(v), None)),
        Some((k, serde_json::Value::String(v))) if k == "filter" => Ok((None, Some(v))),
        Some((k, _)) if k == "level" || k == "filter" => Err(format!("{k} must be a string")),
        Some((k, _)) => Err(format!("unknown field {k:?}")),
        None => Err("give exactly one of level and filter".into()),
    }
}

/// `GET` and `PUT /admin/log-level`.
pub(super) async fn log_level(app: &App, req: Request<Incoming>) -> Response<Body> {
    match *req.method() {
        Method::GET | Method::HEAD => match logging::current_filter() {
            Some(filter) => json_ok(Bytes::from(
                serde_json::json!({ "filter": filter }).to_string(),
            )),
            None => unmanaged(),
        },
        Method::PUT => {
            let body = match read_body(req, &app.limits).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let change = match level_change(&body) {
                Ok(c) => c,
                Err(e) => return malformed(&e),
            };
            let filter = match change {
                (Some(level), None) => match logging::filter_for_level(&level) {
                    Some(f) => f,
                    None => {
                        return problem(
                            StatusCode::BAD_REQUEST,
                            "invalid-log-level",
                            "Invalid log level",
                            &format!(
                                "level must be one of trace, debug, info, warn, error, off; got {level:?}"
                            ),
                        )
                    }
                },
                (None, Some(filter)) => filter,
                _ => return malformed("give exactly one of level and filter"),
            };
            match logging::set_filter(&filter) {
                Ok(previous) => json_ok(Bytes::from(
                    serde_json::json!({ "filter": filter, "previous": previous }).to_string(),
                )),
                Err(e @ LoggingError::Filter { .. }) => problem(
                    StatusCode::BAD_REQUEST,
                    "invalid-log-filter",
                    "Invalid log filter",
                    &e.to_string(),
                ),
                Err(LoggingError::NotInstalled) => unmanaged(),
                Err(e) => problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "log-filter-failed",
                    "Log filter not changed",
                    &e.to_string(),
                ),
            }
        }
        _ => method_not_allowed("GET, HEAD, PUT"),
    }
}

fn malformed(detail: &str) -> Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        "malformed-body",
        "Malformed request body",
        &format!(
            "expected {{\"level\": \"debug\"}} or {{\"filter\": \"warn,readtier=debug\"}}: {detail}"
        ),
    )
}

/// The answer when the process's subscriber is not readtier's (an embedding program).
fn unmanaged() -> Response<Body> {
    problem(
        StatusCode::CONFLICT,
        "log-level-unmanaged",
        "Log level not managed here",
        &LoggingError::NotInstalled.to_string(),
    )
}
