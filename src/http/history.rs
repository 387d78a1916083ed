//! History on the admin listener (README, "History"):
//! - `GET /admin/members/{id}/history?limit=&before=`: the member's entries, newest
//!   first; `next_before` is the cursor of the next page (absent on the last).
//! - `GET /admin/members/{id}/history?as_of=<RFC 3339>`: the member's row at that
//!   instant (`limit` and `before` do not apply); 404 if it did not exist then, 409 if
//!   history cannot tell (a bulk seed).
//! - `GET /admin/catalog/history?country=CC&limit=&before=`: price and plan entries.
//!
//! Bad parameters are 400 problems naming them; a store failure is a 503.

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use super::params::parse_member_id;
use super::problem::problem;
use super::render::json_ok;
use super::{App, Body};
use crate::store::history::{Entry, Instant, State, MAX_PAGE};

/// Entries per page when `limit` is not given.
const DEFAULT_PAGE: i64 = 50;

/// The query's pairs, percent-decoded (`+` is a space, as forms send it).
fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

fn bad(detail: &str) -> http::Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request",
        detail,
    )
}

fn store_down(e: &crate::store::StoreError) -> http::Response<Body> {
    tracing::warn!(error = %e, "history read failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "store-unavailable",
        "Member store unavailable",
        "history could not be read from the store; retry shortly",
    )
}

/// A page's parameters: `limit` (1..=1000) and `before` (a seq).
struct Page {
    limit: i64,
    before: Option<i64>,
}

fn page_param(key: &str, value: &str, page: &mut Page) -> Result<bool, String> {
    match key {
        "limit" => match value.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => page.limit = n,
            _ => {
                return Err(format!(
                    "limit must be an integer from 1 to {MAX_PAGE}; got {value:?}"
                ))
            }
        },
        "before" => match value.parse::<i64>() {
            Ok(n) if n > 0 => page.before = Some(n),
            _ => {
                return Err(format!(
                    "before must be a positive seq from a previous page; got {value:?}"
                ))
            }
        },
        _ => return Ok(false),
    }
    Ok(true)
}

fn page_answer(
    mut head: serde_json::Value,
    entries: Vec<Entry>,
    limit: i64,
) -> http::Response<Body> {
    // A full page may have a next one, older than its last entry.
    let next = entries
        .last()
        .map(|e| e.seq)
        .filter(|_| entries.len() as i64 == limit);
    head["entries"] = json!(entries);
    if let Some(seq) = next {
        head["next_before"] = json!(seq);
    }
    json_ok(Bytes::from(head.to_string()))
}

/// `GET /admin/members/{id}/history`.
pub(super) async fn member(app: &App, id: &str, query: Option<&str>) -> http::Response<Body> {
    let id = match parse_member_id(id) {
        Ok(id) => id as i64,
        Err(e) => return bad(&e),
    };
    let mut page = Page {
        limit: DEFAULT_PAGE,
        before: None,
    };
    let mut as_of = None;
    let params = match pairs(query) {
        Ok(p) => p,
        Err(e) => return bad(&e),
    };
    for (k, v) in &params {
        if k == "as_of" {
            match Instant::parse(v) {
                Ok(t) => as_of = Some(t),
                Err(e) => return bad(&format!("as_of: {e}")),
            }
            continue;
        }
        match page_param(k, v, &mut page) {
            Ok(true) => {}
            Ok(false) => {
                return bad(&format!(
                    "unknown query parameter {k:?}: this resource takes limit, before or as_of"
                ))
            }
            Err(e) => return bad(&e),
        }
    }
    let store = app.members.store();
    // With as_of, the answer is one state: limit and before do not apply.
    if let Some(at) = as_of {
        return match store.member_as_of(id, &at).await {
            Ok(State::Existed(row)) => json_ok(Bytes::from(
                json!({"member_id": id, "as_of": at.as_str(), "state": row}).to_string(),
            )),
            Ok(State::Absent) => problem(
                StatusCode::NOT_FOUND,
                "not-a-member",
                "Not a member then",
                &format!("member {id} did not exist at {at}"),
            ),
            Ok(State::Unknown(why)) => problem(
                StatusCode::CONFLICT,
                "history-unknown",
                "History cannot tell",
                &format!("member {id} at {at}: {why}"),
            ),
            Err(e) => store_down(&e),
        };
    }
    match store.member_history(id, page.limit, page.before).await {
        Ok(entries) => page_answer(json!({"member_id": id}), entries, page.limit),
        Err(e) => store_down(&e),
    }
}

/// `GET /admin/catalog/history`.
pub(super) async fn catalog(app: &App, query: Option<&str>) -> http::Response<Body> {
    let mut page = Page {
        limit: DEFAULT_PAGE,
        before: None,
    };
    let mut country = None;
    let params = match pairs(query) {
        Ok(p) => p,
        Err(e) => return bad(&e),
    };
    for (k, v) in &params {
        if k == "country" {
            if v.len() == 2 && v.bytes().all(|b| b.is_ascii_alphabetic()) {
                country = Some(v.to_ascii_uppercase());
                continue;
            }
            return bad(&format!(
                "country must be a two-letter ISO 3166-1 code such as US; got {v:?}"
            ));
        }
        match page_param(k, v, &mut page) {
            Ok(true) => {}
            Ok(false) => {
                return bad(&format!(
                    "unknown query parameter {k:?}: this resource takes country, limit or before"
                ))
            }
            Err(e) => return bad(&e),
        }
    }
    let head = json!({ "country": country });
    match app
        .members
        .store()
        .catalog_history(country, page.limit, page.before)
        .await
    {
        Ok(entries) => page_answer(head, entries, page.limit),
        Err(e) => store_down(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_percent_decoded() {
        let p = pairs(Some("as_of=2026-11-30T08%3A00%3A00%2B01%3A00&limit=5")).unwrap();
        assert_eq!(p[0], ("as_of".into(), "2026-11-30T08:00:00+01:00".into()));
        assert_eq!(p[1], ("limit".into(), "5".into()));
        assert!(pairs(Some("as_of=%zz")).is_err());
    }
}
