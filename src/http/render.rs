//! Rendering answers: the entitlement body (rendered once per L1 entry and catalog
//! version, then served as shared bytes), and the headers every member answer carries.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::Response;
use http_body_util::Full;

use super::Body;
use crate::catalog::{clock_ms, Snapshot};
use crate::lookup::ServedFrom;
use crate::member::{self, Member};

pub static X_CATALOG_VERSION: HeaderName = HeaderName::from_static("x-catalog-version");
pub static X_SERVED_FROM: HeaderName = HeaderName::from_static("x-served-from");
pub const JSON: HeaderValue = HeaderValue::from_static("application/json");
pub const FROM_SNAPSHOT: HeaderValue = HeaderValue::from_static("snapshot");
const FROM_L1: HeaderValue = HeaderValue::from_static("l1");
const FROM_L2: HeaderValue = HeaderValue::from_static("l2");
const FROM_STORE: HeaderValue = HeaderValue::from_static("store");

/// [`render_entitlement_at`] now, without the instant it holds until.
pub fn render_entitlement(m: &Member, snapshot: &Snapshot) -> Bytes {
    render_entitlement_at(m, snapshot, clock_ms()).0
}

/// `{"member_id":…,"status":…,"plan":…,"country":…,"can_stream":…,<plan fragment>,
/// "price":{"amount":…,"currency":…,"source":"locked"|"catalog"},"version":…}` at `now`,
/// and the instant until which it holds (`i64::MAX`: until the catalog or the member
/// changes): the next scheduled change of the member's price, or the end of its lock.
/// `price` is `null` when the member's country no longer offers their plan at a
/// catalog price and no lock holds.
pub fn render_entitlement_at(m: &Member, snapshot: &Snapshot, now: i64) -> (Bytes, i64) {
    let entry = snapshot.plan(&m.plan_id);
    let can_stream = member::standing(m, entry.map(|e| &e.plan)).is_ok();
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
    let until = write_price(&mut out, m, snapshot, now);
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(itoa::Buffer::new().format(m.version).as_bytes());
    out.push(b'}');
    // Kept in the member's L1 entry for as long as it holds: shrunk to its length
    // (an in-place realloc) instead of keeping the doubled capacity. The answer with a
    // price passes the 256 reserved, and `Bytes::from(Vec)` keeps the capacity: 512
    // bytes a member where ~300 are used.
    (Bytes::from(out.into_boxed_slice()), until)
}

/// `,"price":…` for a member at `now`; returns until when it holds.
fn write_price(out: &mut Vec<u8>, m: &Member, snapshot: &Snapshot, now: i64) -> i64 {
    let (price, until) = snapshot.member_price(m, now);
    match price {
        Some(p) => {
            out.extend_from_slice(b",\"price\":{\"amount\":");
            json_string(out, p.amount);
            out.extend_from_slice(b",\"currency\":");
            json_string(out, p.currency);
            out.extend_from_slice(b",\"source\":\"");
            out.extend_from_slice(p.source().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        None => out.extend_from_slice(b",\"price\":null"),
    }
    until
}

pub fn json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("string serializes");
}

pub fn with_member_headers(resp: &mut Response<Body>, snapshot: &Snapshot, from: ServedFrom) {
    let h = resp.headers_mut();
    h.insert(X_CATALOG_VERSION.clone(), snapshot.version_header().clone());
    h.insert(
        X_SERVED_FROM.clone(),
        match from {
            ServedFrom::L1 => FROM_L1,
            ServedFrom::L2 => FROM_L2,
            ServedFrom::Store => FROM_STORE,
        },
    );
}

pub fn json_ok(body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp
}
