//! The handlers: plans, entitlement, authorize, readiness and metrics. Each answers
//! from the current catalog snapshot and the lookup service; see the module above for
//! the rules of the request path.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::Instrument;

use super::params::{
    country_param, etag_matches, parse_member_id, plans_params, read_body, valid_device_class,
    AuthorizeRequest,
};
use super::problem::{
    malformed_country, method_not_allowed, only_get, overloaded, problem, shed_waiting,
};
use super::render::{
    json_ok, json_string, render_entitlement_at, with_member_headers, FROM_SNAPSHOT, JSON,
    X_CATALOG_VERSION, X_SERVED_FROM,
};
use super::{App, Body, Later};
use crate::admission::{Face, Path, Reason as ShedReason};
use crate::catalog::{clock_ms, PlansError, Snapshot};
use crate::logging::trace::{miss_span, TRACEPARENT, TRACERESPONSE};
use crate::lookup::{Entry, LookupError, ServedFrom};
use crate::member::{self, Member, Reason};

impl App {
    pub(super) fn plans(&self, req: &Request<Incoming>) -> Response<Body> {
        if let Some(resp) = only_get(req) {
            return resp;
        }
        let query = req.uri().query();
        let cc = match country_param(query) {
            Ok(cc) => cc,
            Err(detail) => return malformed_country(&detail),
        };
        // `country=XX` alone (the common case) has no visitor or partner to look for.
        let (visitor, partner) = if query.is_some_and(|q| q.len() == 10) {
            (None, None)
        } else {
            plans_params(query)
        };
        let snapshot = self.catalog.load();
        // The clock is read at most once, and only for a country with a change
        // scheduled (to pick the period, then for `max-age`).
        let clock = std::cell::OnceCell::new();
        let now = || *clock.get_or_init(clock_ms);
        let answer = match snapshot.plans(cc, visitor, partner, now) {
            Ok(a) => a,
            Err(e) => return plans_problem(e),
        };
        let not_modified = req
            .headers()
            .get(IF_NONE_MATCH)
            .is_some_and(|v| etag_matches(v.as_bytes(), answer.etag.as_bytes()));
        let (status, body) = if not_modified {
            (StatusCode::NOT_MODIFIED, Bytes::new())
        } else {
            (StatusCode::OK, answer.body.clone())
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        if !not_modified {
            h.insert(CONTENT_TYPE, JSON);
        }
        h.insert(ETAG, answer.etag.clone());
        h.insert(CACHE_CONTROL, max_age(answer.until_ms, now));
        h.insert(X_CATALOG_VERSION.clone(), snapshot.version_header().clone());
        h.insert(X_SERVED_FROM.clone(), FROM_SNAPSHOT);
        resp
    }

    /// The entitlement answer if it needs no waiting (a rejection or an L1 hit);
    /// otherwise the member id to look up.
    pub(super) fn entitlement_now(
        &self,
        req: &Request<Incoming>,
        id: &str,
    ) -> Result<Response<Body>, Later> {
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
            Some(entry) => Ok(self.entitlement_answer(id, &entry, ServedFrom::L1)),
            None => Err(Later::Entitlement(id)),
        }
    }

    /// An entitlement whose member was not in L1 when the request arrived.
    pub(super) async fn entitlement_miss(
        &self,
        id: u64,
        admitted: bool,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let traceparent = req.headers().get(TRACEPARENT).map(|v| v.as_bytes());
        let (found, trace) = self
            .lookup(id, admitted, Path::Entitlement, traceparent)
            .await;
        let resp = match found {
            Ok((entry, from)) => self.entitlement_answer(id, &entry, from),
            Err(resp) => resp,
        };
        with_traceresponse(resp, trace)
    }

    fn entitlement_answer(&self, id: u64, entry: &Entry, from: ServedFrom) -> Response<Body> {
        // A relaxed load and a compare unless this answer is sampled (see
        // `lookup::inspector`).
        self.inspector.sample(id, entry.version);
        let snapshot = self.catalog.load();
        let Some(member) = entry.member.as_ref() else {
            let mut resp = if entry.is_unreadable() {
                unreadable_member(id)
            } else {
                problem(
                    StatusCode::NOT_FOUND,
                    "unknown-member",
                    "Unknown member",
                    &format!("there is no member {id}"),
                )
            };
            with_member_headers(&mut resp, &snapshot, from);
            return resp;
        };
        let body = entitlement_body(entry, member, &snapshot);
        let mut resp = json_ok(body);
        with_member_headers(&mut resp, &snapshot, from);
        resp
    }

    pub(super) async fn authorize(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(resp) = post_json_only(&req) {
            return resp;
        }
        // Kept for a miss (the body consumes the request); parsed only then.
        let traceparent = req.headers().get(TRACEPARENT).cloned();
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
        let (found, trace) = self
            .lookup(
                ask.member_id,
                false,
                Path::Authorize,
                traceparent.as_ref().map(|v| v.as_bytes()),
            )
            .await;
        let (entry, from) = match found {
            Ok(found) => found,
            Err(resp) => return with_traceresponse(resp, trace),
        };
        self.inspector.sample(ask.member_id, entry.version);
        let snapshot = self.catalog.load();
        if entry.is_unreadable() {
            let mut resp = unreadable_member(ask.member_id);
            with_member_headers(&mut resp, &snapshot, from);
            return with_traceresponse(resp, trace);
        }
        let member = entry.member.as_ref();
        let plan = member
            .and_then(|m| snapshot.plan(&m.plan_id))
            .map(|e| &e.plan);
        let reason = member::authorize(member, plan, &ask.device_class, ask.active_streams);
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
        with_traceresponse(resp, trace)
    }

    /// A member lookup bounded by the request timeout; failures become 503 problems.
    /// A miss not `admitted` yet (authorize) is admitted here, or shed. A miss runs under a span continuing the caller's `traceparent` (raw
    /// header, parsed only here), and returns the `traceresponse` to answer with.
    async fn lookup(
        &self,
        id: u64,
        admitted: bool,
        path: Path,
        traceparent: Option<&[u8]>,
    ) -> (Result<(Entry, ServedFrom), Response<Body>>, Option<String>) {
        // The hit path needs no timer and no span: only a miss can wait.
        if let Some(entry) = self.members.get_l1(id) {
            return (Ok((entry, ServedFrom::L1)), None);
        }
        let route = match path {
            Path::Authorize => "authorize",
            _ => "entitlement",
        };
        let trace = miss_span(route, traceparent);
        let found = self
            .lookup_miss(id, admitted, path)
            .instrument(trace.span)
            .await;
        (found, trace.response)
    }

    /// [`App::lookup`] once L1 has missed.
    async fn lookup_miss(
        &self,
        id: u64,
        admitted: bool,
        path: Path,
    ) -> Result<(Entry, ServedFrom), Response<Body>> {
        let _waiting = if admitted {
            None
        } else {
            Some(
                self.wait_here(id, Face::Http, path, 1)
                    .ok_or_else(shed_waiting)?,
            )
        };
        match tokio::time::timeout(self.limits.request_timeout, self.members.get(id)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => {
                // No member id: the log never names a member (the trace id, when the
                // request carries one, leads to the request).
                if matches!(e, LookupError::Overloaded(_)) {
                    self.admission.count(Face::Http, path, ShedReason::Store);
                } else {
                    tracing::warn!(error = %e, "member lookup failed");
                }
                Err(lookup_failed(e))
            }
            Err(_) => Err(lookup_too_slow()),
        }
    }

    pub(super) fn readyz(&self) -> Response<Body> {
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

    pub(super) async fn metrics_text(&self) -> Response<Body> {
        crate::telemetry::set_l1_sizes(self.members.len(), self.members.negative_len());
        let mut text = self.prometheus.render();
        self.admission.render(&mut text);
        self.metrics.render_latency(&mut text);
        crate::telemetry::render_process(&mut text);
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    }
}

/// The longest a plans answer may be cached by a client: a catalog write can change
/// it at any moment (the ETag revalidates it cheaply after that).
pub const PLANS_MAX_AGE_SECS: i64 = 60;
const MAX_AGE_CAP: HeaderValue = HeaderValue::from_static("max-age=60");

/// `Cache-Control` for an answer valid until `until_ms`: at most
/// [`PLANS_MAX_AGE_SECS`], and never past the next scheduled change (rounded down, so
/// no cache holds an answer past its instant). Static unless a change is that near.
#[inline]
pub(super) fn max_age(until_ms: i64, now: impl FnOnce() -> i64) -> HeaderValue {
    if until_ms == i64::MAX {
        return MAX_AGE_CAP;
    }
    let left = (until_ms - now()).max(0) / 1000;
    if left >= PLANS_MAX_AGE_SECS {
        return MAX_AGE_CAP;
    }
    let mut buf = itoa::Buffer::new();
    // "max-age=" and digits: always a valid header value.
    HeaderValue::from_str(&format!("max-age={}", buf.format(left))).unwrap_or(MAX_AGE_CAP)
}

/// The problem answer to a plans question without an answer.
pub(super) fn plans_problem(e: PlansError) -> Response<Body> {
    let detail = e.to_string();
    match e {
        PlansError::UnknownCountry(_) => problem(
            StatusCode::NOT_FOUND,
            "unknown-country",
            "No plans for this country",
            &detail,
        ),
        PlansError::MalformedVisitor(_) => problem(
            StatusCode::BAD_REQUEST,
            "malformed-visitor",
            "Malformed visitor id",
            &detail,
        ),
        PlansError::MalformedPartner(_) => problem(
            StatusCode::BAD_REQUEST,
            "malformed-partner",
            "Malformed partner id",
            &detail,
        ),
        PlansError::UnknownPartner(..) => problem(
            StatusCode::BAD_REQUEST,
            "unknown-partner",
            "Unknown partner",
            &detail,
        ),
    }
}

/// Adds `traceresponse` to a miss's answer when the request carried a trace.
fn with_traceresponse(mut resp: Response<Body>, trace: Option<String>) -> Response<Body> {
    if let Some(value) = trace.and_then(|t| HeaderValue::from_str(&t).ok()) {
        resp.headers_mut()
            .insert(http::header::HeaderName::from_static(TRACERESPONSE), value);
    }
    resp
}

/// `None` for a POST of `application/json`; otherwise its 405 or 415 answer.
pub(super) fn post_json_only(req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() != Method::POST {
        return Some(method_not_allowed("POST"));
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
    (!is_json).then(|| {
        problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as application/json",
        )
    })
}

/// A member's entitlement body, rendered once per entry, catalog version and price
/// period, then served as shared bytes. Inlined: the single entitlement's L1 hit path
/// runs it. The clock is read only for a body whose price changes at a known instant
/// (a scheduled change in the member's country, or the end of a price lock).
#[inline]
pub(super) fn entitlement_body(entry: &Entry, member: &Member, snapshot: &Snapshot) -> Bytes {
    let cached = entry.rendered.load();
    match cached.as_deref() {
        Some((version, until, body))
            if *version == snapshot.version() && (*until == i64::MAX || clock_ms() < *until) =>
        {
            body.clone()
        }
        _ => {
            let (body, until) = render_entitlement_at(member, snapshot, clock_ms());
            entry
                .rendered
                .store(Some(Arc::new((snapshot.version(), until, body.clone()))));
            body
        }
    }
}

/// The 503 answer to a lookup that failed (logged by the caller).
pub(super) fn lookup_failed(e: LookupError) -> Response<Body> {
    match e {
        LookupError::Overloaded(n) => overloaded(&format!(
            "{n} store reads are in flight already; retry shortly"
        )),
        _ => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Member store unavailable",
            "the member could not be read; retry shortly",
        ),
    }
}

/// The answer for a member whose store row cannot be read (issue 27): a 422 naming the
/// problem, not a 503 a retry could cure, and never another member's answer.
pub(super) fn unreadable_member(id: u64) -> Response<Body> {
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unreadable-member",
        "Member record unreadable",
        &format!(
            "the store's row for member {id} holds a value this node cannot read; it is quarantined (listed on the admin listener) until it is fixed"
        ),
    )
}

/// The 503 answer to a lookup that outlived `http.request_timeout`.
pub(super) fn lookup_too_slow() -> Response<Body> {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-timeout",
        "Member store too slow",
        "the member could not be read in time; retry shortly",
    )
}
