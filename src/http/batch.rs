//! `POST /v1/entitlements:batch`: many members' entitlements in one call.
//!
//! Body `{"member_ids":[…]}`: 1 to [`MAX_IDS`] positive integers (whole floats such
//! as `42.0` count, as for authorize). Answer `{"results":[…]}`, one result per id in
//! the order asked, each the single lookup's entitlement JSON with its
//! `served_from` added, or `{"member_id":N,"error":"unknown-member","served_from":…}`
//! for an id with no member: an unknown id is an answer, not a failed call. A repeated
//! id is looked up once and answered at each of its places.
//!
//! Refusals: 400 malformed JSON, a missing or mistyped `member_ids`, an empty list,
//! or an id that is not a positive 64-bit integer (the detail names its index); 413
//! over [`MAX_IDS`] ids or a body over [`BATCH_BODY_BYTES`] (or `http.max_body_bytes`
//! if larger); 415 not JSON; 405 not POST. A batch whose ids are all in L1 is answered
//! at once; one with any miss waits on Redis or the store, so it is admitted under
//! the waiting limit first (or shed: 503 with `Retry-After`), and fails as a whole
//! with the single lookup's 503s if any member cannot be read.
//!
//! The lookups are [`crate::lookup::Members::get_many`]'s: one round trip per Redis
//! node holding any missed id, one store query for the rest.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::handlers::{entitlement_body, lookup_failed, lookup_too_slow, post_json_only};
use super::params::{read_body_up_to, whole_number};
use super::problem::{problem, shed_waiting};
use super::render::{json_ok, X_CATALOG_VERSION};
use super::{App, Body};
use crate::admission::{Face, Path, Reason};
use crate::lookup::{Entry, LookupError, ServedFrom};

/// Most ids in one batch; more is a 413.
pub const MAX_IDS: usize = 1000;

/// The batch body limit: [`MAX_IDS`] ids of 19 digits with separators take about
/// 20 KB, so 32 KiB leaves room for spacing. `http.max_body_bytes` (sized for one
/// member's request) applies instead when larger.
pub const BATCH_BODY_BYTES: usize = 32 * 1024;

/// One id of the list, as the authorize body reads `member_id`.
struct MemberId(u64);

impl<'de> Deserialize<'de> for MemberId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MemberId, D::Error> {
        whole_number(d).map(MemberId)
    }
}

#[derive(Deserialize)]
struct BatchRequest {
    member_ids: Vec<MemberId>,
}

/// Why a body was refused: the parts of its problem answer.
struct Refusal {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
}

impl Refusal {
    /// Written as `problem(…)` is, so `tests/openapi.rs` finds its slug and status.
    fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: String) -> Refusal {
        Refusal {
            status,
            slug,
            title,
            detail,
        }
    }

    fn answer(&self) -> Response<Body> {
        problem(self.status, self.slug, self.title, &self.detail)
    }
}

/// The ids a body asks for, or why it was refused.
fn parse(body: &[u8]) -> Result<Vec<u64>, Refusal> {
    let ask: BatchRequest = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "malformed-body",
            "Malformed request body",
            format!("expected {{\"member_ids\": [positive integers]}}: {e}"),
        )
    })?;
    if ask.member_ids.is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "malformed-body",
            "Malformed request body",
            format!("member_ids must hold 1 to {MAX_IDS} ids; got none"),
        ));
    }
    if ask.member_ids.len() > MAX_IDS {
        return Err(Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-many-ids",
            "Too many member ids",
            format!(
                "a batch may ask for at most {MAX_IDS} members; got {}",
                ask.member_ids.len()
            ),
        ));
    }
    if let Some(i) = ask
        .member_ids
        .iter()
        .position(|MemberId(id)| *id == 0 || *id > i64::MAX as u64)
    {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "malformed-member-id",
            "Malformed member id",
            format!(
                "member_ids[{i}] must be a positive 64-bit integer; got {}",
                ask.member_ids[i].0
            ),
        ));
    }
    Ok(ask.member_ids.into_iter().map(|MemberId(id)| id).collect())
}

impl App {
    pub(super) async fn batch(&self, req: Request<Incoming>) -> Response<Body> {
        if let Some(resp) = post_json_only(&req) {
            return resp;
        }
        let max = BATCH_BODY_BYTES.max(self.limits.max_body_bytes);
        let body = match read_body_up_to(req, max, &self.limits).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let ids = match parse(&body) {
            Ok(ids) => ids,
            Err(refusal) => return refusal.answer(),
        };
        let l1 = self.members.get_many_l1(&ids);
        let found = if l1.iter().all(Option::is_some) {
            // Every id is in L1: nothing waits, so nothing is admitted or shed.
            l1.into_iter()
                .flatten()
                .map(|e| (e, ServedFrom::L1))
                .collect()
        } else {
            let missing = l1.iter().filter(|e| e.is_none()).count();
            let first = ids
                .iter()
                .zip(&l1)
                .find_map(|(id, e)| e.is_none().then_some(*id))
                .unwrap_or(0);
            let Some(_waiting) = self.wait_here(first, Face::Http, Path::Batch, missing) else {
                return shed_waiting();
            };
            let lookup = self.members.get_many_after(&ids, l1);
            match tokio::time::timeout(self.limits.request_timeout, lookup).await {
                Ok(Ok(found)) => found,
                Ok(Err(e)) => {
                    if matches!(e, LookupError::Overloaded(_)) {
                        self.admission.count(Face::Http, Path::Batch, Reason::Store);
                    } else {
                        tracing::warn!(members = ids.len(), error = %e, "batch lookup failed");
                    }
                    return lookup_failed(e);
                }
                Err(_) => return lookup_too_slow(),
            }
        };
        self.batch_answer(&ids, &found)
    }

    /// `{"results":[…]}`: each entitlement as the single lookup renders it (the same
    /// cached bytes) with `served_from` spliced in before its closing brace.
    fn batch_answer(&self, ids: &[u64], found: &[(Entry, ServedFrom)]) -> Response<Body> {
        let snapshot = self.catalog.load();
        let mut out = Vec::with_capacity(16 + found.len() * 300);
        out.extend_from_slice(b"{\"results\":[");
        for (i, (id, (entry, from))) in ids.iter().zip(found).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match entry.member.as_ref() {
                Some(member) => {
                    let body = entitlement_body(entry, member, &snapshot);
                    // A rendered entitlement is a JSON object: it ends in '}'.
                    out.extend_from_slice(body.strip_suffix(b"}").unwrap_or(&body));
                }
                None => {
                    out.extend_from_slice(b"{\"member_id\":");
                    out.extend_from_slice(itoa::Buffer::new().format(*id).as_bytes());
                    out.extend_from_slice(if entry.is_unreadable() {
                        b",\"error\":\"unreadable-member\""
                    } else {
                        b",\"error\":\"unknown-member\""
                    });
                }
            }
            out.extend_from_slice(b",\"served_from\":\"");
            out.extend_from_slice(from.as_str().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        out.extend_from_slice(b"]}");
        let mut resp = json_ok(Bytes::from(out));
        resp.headers_mut()
            .insert(X_CATALOG_VERSION.clone(), snapshot.version_header().clone());
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(resp: Response<Body>) -> (u16, String) {
        use futures_util::FutureExt;
        use http_body_util::BodyExt;
        let status = resp.status().as_u16();
        // A `Full` body is ready at once.
        let body = resp
            .into_body()
            .collect()
            .now_or_never()
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[test]
    fn bodies() {
        assert_eq!(
            parse(br#"{"member_ids":[3,1,3,2.0]}"#).ok(),
            Some(vec![3, 1, 3, 2])
        );
        let ids: Vec<String> = (1..=MAX_IDS).map(|i| i.to_string()).collect();
        let full = format!("{{\"member_ids\":[{}]}}", ids.join(","));
        assert_eq!(parse(full.as_bytes()).ok().map(|v| v.len()), Some(MAX_IDS));
        let over = format!("{{\"member_ids\":[{},1]}}", ids.join(","));
        let (status, body) = detail(parse(over.as_bytes()).err().unwrap().answer());
        assert_eq!(status, 413);
        assert!(
            body.contains("too-many-ids") && body.contains("1001"),
            "{body}"
        );
        for (bad, slug) in [
            (&br#"{"member_ids":[]}"#[..], "malformed-body"),
            (br#"{"member_ids":[1,0]}"#, "member_ids[1]"),
            (br#"{"member_ids":[9223372036854775808]}"#, "member_ids[0]"),
            (br#"{"member_ids":[-1]}"#, "malformed-body"),
            (br#"{"member_ids":[1.5]}"#, "malformed-body"),
            (br#"{"member_ids":["1"]}"#, "malformed-body"),
            (br#"{"member_ids":1}"#, "malformed-body"),
            (br#"{"ids":[1]}"#, "malformed-body"),
            (br#"{"member_ids":[1"#, "malformed-body"),
        ] {
            let (status, body) = detail(parse(bad).err().unwrap().answer());
            assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
            assert!(body.contains(slug), "{body}");
        }
    }

    #[test]
    fn the_body_limit_fits_the_largest_batch() {
        let ids = vec![i64::MAX.to_string(); MAX_IDS];
        let body = format!("{{\"member_ids\":[{}]}}", ids.join(","));
        assert!(body.len() <= BATCH_BODY_BYTES, "{}", body.len());
    }
}
