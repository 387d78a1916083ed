//! RFC 9457 problem answers: every error this service gives is one of these, with a
//! stable `type` per kind of problem and a `detail` that says what to fix.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::Body;

const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

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

/// The answer to a request shed under overload: try again in a second.
/// A `country` query parameter that is missing or not a code (`detail` says which).
pub fn malformed_country(detail: &str) -> Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        "malformed-country",
        "Malformed country code",
        detail,
    )
}

pub fn overloaded(detail: &str) -> Response<Body> {
    let mut resp = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Overloaded",
        detail,
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The answer to a request shed by the waiting limit, built from static parts: under
/// overload most requests get this, and it must cost far less than an answer.
pub fn shed_waiting() -> Response<Body> {
    const BODY: &[u8] = b"{\"type\":\"urn:readtier:problem:overloaded\",\"title\":\"Overloaded\",\"status\":503,\"detail\":\"too many requests waiting on the tier or the store; retry shortly\"}";
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, PROBLEM_JSON);
    h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The whole HTTP/1.1 answer written to a connection over `http.max_connections`
/// before it is closed.
pub const OVER_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 128\r\n\r\n\
{\"type\":\"urn:readtier:problem:overloaded\",\"title\":\"Overloaded\",\"status\":503,\"detail\":\"too many open connections; retry shortly\"}";

pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
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
pub fn only_get<B>(req: &Request<B>) -> Option<Response<Body>> {
    (req.method() != Method::GET && req.method() != Method::HEAD)
        .then(|| method_not_allowed("GET, HEAD"))
}
