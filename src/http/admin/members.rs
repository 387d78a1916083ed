//! `GET /admin/members/{id}/inspect` and `POST /admin/members/{id}/flush`: what each
//! tier holds for one member, and dropping what this node and the zones hold so the
//! next read answers the store's version.
//!
//! **Flush, and why zones are repaired rather than emptied.** An operator flushing a
//! member wants the next read to answer what the store holds. Dropping L1 alone is not
//! enough (the next read would come from a zone that may hold the wrong value), but a
//! bare `HDEL` in a zone breaks the tier's versioned-set rule (`tier`): a fill that
//! read an older version before the flush could land after the delete, find nothing
//! to compare with, and leave the zone behind with no change event coming to repair
//! it. So flush does what `reconcile` does for one member, in its order: read each
//! zone's raw value first, *then* the store (so any version a zone held legitimately
//! is already visible in the store), then in each zone compare-and-set exactly the
//! value read to the store's (a record, a deletion's tombstone, or nothing for an id
//! the store never had; a zone holding nothing gets the record by a versioned set).
//! A value written meanwhile (by the relay or a fill) is never overwritten: the zone
//! reports `changed_meanwhile`. Last, this node's L1 entry is dropped and the
//! member's floor *set* to the store's version, so the next read here takes the
//! repaired zone value or the store, and no load in flight can keep anything older.
//! Other nodes' L1 are theirs: they follow change events (or their own flush).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::super::params::parse_member_id;
use super::super::problem::problem;
use super::super::render::json_ok;
use super::super::{App, Body};
use crate::lookup::L1View;
use crate::member::Member;
use crate::store::{Store, StoreError};
use crate::tier::{encoding, Tier, TierEntry, TierError};

/// `GET /admin/members/{id}/inspect`: L1, every zone and the store, side by side.
/// A zone that cannot be read is shown with its error; the call itself succeeds.
pub(in crate::http) async fn inspect(app: &App, id: &str) -> Response<Body> {
    let id = match parse_member_id(id) {
        Ok(id) => id,
        Err(detail) => return malformed(&detail),
    };
    let l1 = l1_json(&app.members.l1_view(id));
    let zones = match app.members.tier() {
        Some(tier) => {
            let raws = read_zones(tier, id).await;
            raws.into_iter()
                .enumerate()
                .map(|(z, raw)| {
                    let mut v = match raw {
                        Ok(raw) => held_json(id, raw.as_deref()),
                        Err(e) => {
                            json!({"state": "error", "version": null, "error": e.to_string()})
                        }
                    };
                    v["zone"] = json!(tier.zones[z].name);
                    v["local"] = json!(z == tier.local);
                    v["write_only"] = json!(tier.zones[z].write_only);
                    v
                })
                .collect()
        }
        None => Vec::new(),
    };
    let store = match read_store(app.members.store(), id, app.limits.request_timeout).await {
        Ok(StoreHolds::Member(m)) => {
            json!({"state": "member", "version": m.version, "member": member_json(&m)})
        }
        Ok(StoreHolds::Absent(tombstone)) => json!({"state": "absent", "version": tombstone}),
        Err(e) => json!({"state": "error", "version": null, "error": e}),
    };
    answer(json!({"member_id": id, "l1": l1, "zones": zones, "store": store}))
}

/// `POST /admin/members/{id}/flush`: see the module comment for what and why.
pub(in crate::http) async fn flush(app: &App, id: &str) -> Response<Body> {
    let id = match parse_member_id(id) {
        Ok(id) => id,
        Err(detail) => return malformed(&detail),
    };
    let tier = app.members.tier();
    // The zones first, then the store: the order that makes the repair safe.
    let before = match tier {
        Some(t) => read_zones(t, id).await,
        None => Vec::new(),
    };
    let holds = match read_store(app.members.store(), id, app.limits.request_timeout).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "flush: store unreadable");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Member store unavailable",
                "the member could not be read from the store, so nothing was flushed; retry shortly",
            );
        }
    };
    let (want, floor, store) = match &holds {
        StoreHolds::Member(m) => (
            Some(TierEntry::Member(m.clone())),
            m.version,
            json!({"state": "member", "version": m.version}),
        ),
        StoreHolds::Absent(tombstone) => (
            tombstone.map(|version| TierEntry::Gone { version }),
            tombstone.unwrap_or(0),
            json!({"state": "absent", "version": tombstone}),
        ),
    };
    let mut zones = Vec::new();
    if let Some(tier) = tier {
        for (z, raw) in before.into_iter().enumerate() {
            let mut v = match raw {
                Ok(raw) => {
                    let held = held_json(id, raw.as_deref());
                    let outcome = repair(tier, z, id, raw.as_deref(), want.as_ref()).await;
                    let mut v =
                        json!({"before": {"state": held["state"], "version": held["version"]}});
                    match outcome {
                        Ok(action) => v["action"] = json!(action),
                        Err(e) => {
                            v["action"] = json!("error");
                            v["error"] = json!(e.to_string());
                        }
                    }
                    v
                }
                Err(e) => json!({"before": null, "action": "error", "error": e.to_string()}),
            };
            v["zone"] = json!(tier.zones[z].name);
            zones.push(v);
        }
    }
    let dropped = app.members.flush(id, floor);
    tracing::info!(
        floor,
        "a member flushed by an operator (no id: logs never name members)"
    );
    answer(json!({
        "member_id": id,
        "store": store,
        "l1": {"dropped": dropped, "floor": floor},
        "zones": zones,
    }))
}

/// Makes one zone hold `want` (see the module comment); returns what it did.
async fn repair(
    tier: &Tier,
    zone: usize,
    id: u64,
    raw: Option<&[u8]>,
    want: Option<&TierEntry>,
) -> Result<&'static str, TierError> {
    let Some(raw) = raw else {
        return Ok(match want {
            // A versioned set: a newer value written meanwhile wins.
            Some(w @ TierEntry::Member(_)) => {
                if tier.set_in(zone, id, w).await? {
                    "filled"
                } else {
                    "changed_meanwhile"
                }
            }
            // Nothing held and no record to hold: nothing to do.
            _ => "unchanged",
        });
    };
    let held = encoding::decode(id, raw);
    let same = match (&held, want) {
        (Some(h), Some(w)) => h == w,
        (Some(TierEntry::Gone { .. }), None) => true,
        _ => false,
    };
    if same {
        return Ok("unchanged");
    }
    Ok(match (tier.cas_in(zone, id, raw, want).await?, want) {
        (true, Some(_)) => "repaired",
        (true, None) => "removed",
        (false, _) => "changed_meanwhile",
    })
}

/// What the store holds for a member.
enum StoreHolds {
    Member(Member),
    /// No row; the deletion's tombstone version if the change log still has it.
    Absent(Option<i64>),
}

/// Reads the member and, when it has no row, its last logged version (the tombstone),
/// each within `limit`. The error is a message for the operator.
async fn read_store(store: &Store, id: u64, limit: Duration) -> Result<StoreHolds, String> {
    match within(limit, store.get_member(id)).await? {
        Some(m) => Ok(StoreHolds::Member(m)),
        None => {
            let check = within(limit, store.version_check(id, 0)).await?;
            Ok(StoreHolds::Absent(check.logged_version))
        }
    }
}

/// A store read bounded by `limit`, its failure as a message for the operator.
async fn within<T>(
    limit: Duration,
    read: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the store did not answer within {limit:?}")),
    }
}

/// Every zone's raw value for the member, concurrently (each call is bounded by the
/// tier's own timeout and circuit breaker, so a dead zone answers an error quickly).
async fn read_zones(tier: &Tier, id: u64) -> Vec<Result<Option<Vec<u8>>, TierError>> {
    futures_util::future::join_all((0..tier.zones.len()).map(|z| tier.raw_in(z, id))).await
}

/// `{state, version, member}` of what a zone holds.
fn held_json(id: u64, raw: Option<&[u8]>) -> Value {
    let Some(raw) = raw else {
        return json!({"state": "absent", "version": null});
    };
    match encoding::decode(id, raw) {
        Some(TierEntry::Member(m)) => {
            json!({"state": "member", "version": m.version, "member": member_json(&m)})
        }
        Some(TierEntry::Gone { version }) => json!({"state": "tombstone", "version": version}),
        None => json!({
            "state": "unreadable",
            "version": null,
            "raw": String::from_utf8_lossy(raw),
        }),
    }
}

fn l1_json(view: &L1View) -> Value {
    let mut v = match view.entry.as_deref() {
        Some(entry) => match &entry.member {
            Some(m) => {
                json!({"state": "member", "version": entry.version, "member": member_json(m)})
            }
            None => json!({"state": "no_member", "version": entry.version}),
        },
        None => json!({"state": "absent", "version": null}),
    };
    v["floor"] = json!(view.floor);
    v["served"] = json!(view.served);
    let expires_in_ms = view.expires_in.as_millis() as u64;
    v["expires_in_ms"] = json!(view.entry.is_some().then_some(expires_in_ms));
    v
}

fn member_json(m: &Member) -> Value {
    json!({"status": m.status.as_str(), "plan": m.plan_id, "country": m.country})
}

fn malformed(detail: &str) -> Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        "malformed-member-id",
        "Malformed member id",
        detail,
    )
}

fn answer(v: Value) -> Response<Body> {
    json_ok(Bytes::from(v.to_string()))
}
