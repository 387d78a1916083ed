//! Messages from what the node holds: an entitlement from a member record and the
//! catalog snapshot (the decision is [`crate::member::standing`], as for HTTP), and a
//! country's plans from the snapshot's pre-rendered answer (decoded, so the message
//! says exactly what `GET /v1/plans` answers).

use serde::Deserialize;

use super::pb;
use crate::catalog::Snapshot;
use crate::lookup::ServedFrom;
use crate::member::{self, Member};

/// A member's entitlement, as `GET /v1/members/{id}/entitlement` answers it, with where
/// the record came from and the catalog version it was computed with.
pub fn entitlement(m: &Member, snapshot: &Snapshot, from: ServedFrom, now: i64) -> pb::Entitlement {
    let plan = snapshot.plan(&m.plan_id).map(|e| &e.plan);
    pb::Entitlement {
        member_id: m.id,
        status: m.status.as_str().to_string(),
        plan: m.plan_id.clone(),
        country: m.country.clone(),
        can_stream: member::standing(m, plan).is_ok(),
        max_streams: plan.map_or(0, |p| p.max_streams),
        max_resolution: plan.map(|p| p.max_resolution.clone()),
        download_devices: plan.map_or(0, |p| p.download_devices),
        device_classes: plan.map(|p| p.device_classes.clone()).unwrap_or_default(),
        version: m.version,
        served_from: from.as_str().to_string(),
        catalog_version: snapshot.version(),
        price: snapshot.member_price(m, now).0.map(|p| pb::MemberPrice {
            amount: p.amount.to_string(),
            currency: p.currency.to_string(),
            source: p.source().to_string(),
        }),
    }
}

#[derive(Deserialize)]
struct CountryJson {
    country: String,
    currency: String,
    catalog_version: u64,
    plans: Vec<PlanJson>,
    #[serde(default)]
    cells: Vec<CellJson>,
    #[serde(default)]
    partner: Option<PartnerJson>,
}

#[derive(Deserialize)]
struct CellJson {
    experiment: String,
    cell: String,
}

#[derive(Deserialize)]
struct PartnerJson {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct PlanJson {
    id: String,
    name: String,
    price: PriceJson,
    max_streams: u32,
    max_resolution: String,
    download_devices: u32,
    ads: bool,
    device_classes: Vec<String>,
}

#[derive(Deserialize)]
struct PriceJson {
    amount: String,
    currency: String,
}

/// A country's plans message from a `GET /v1/plans` answer (its body, and its
/// `valid_until` as [`Rendered::until_ms`](crate::catalog::Rendered)).
pub fn country_plans(body: &[u8], until_ms: i64) -> Result<pb::CountryPlans, serde_json::Error> {
    let c: CountryJson = serde_json::from_slice(body)?;
    Ok(pb::CountryPlans {
        cells: c
            .cells
            .into_iter()
            .map(|x| pb::Cell {
                experiment: x.experiment,
                cell: x.cell,
            })
            .collect(),
        partner: c.partner.map(|p| pb::Partner {
            id: p.id,
            name: p.name,
        }),
        valid_until_ms: if until_ms == i64::MAX { 0 } else { until_ms },
        country: c.country,
        currency: c.currency,
        catalog_version: c.catalog_version,
        plans: c
            .plans
            .into_iter()
            .map(|p| pb::Plan {
                id: p.id,
                name: p.name,
                price: Some(pb::Price {
                    amount: p.price.amount,
                    currency: p.price.currency,
                }),
                max_streams: p.max_streams,
                max_resolution: p.max_resolution,
                download_devices: p.download_devices,
                ads: p.ads,
                device_classes: p.device_classes,
            })
            .collect(),
    })
}

/// A country code as the HTTP API takes it: two ASCII letters, either case.
pub fn country_code(s: &str) -> Result<[u8; 2], String> {
    let b = s.as_bytes();
    if b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic) {
        return Ok([b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()]);
    }
    let shown: String = s.chars().take(16).collect();
    Err(format!(
        "country must be a two-letter ISO 3166-1 code such as US; got {shown:?}"
    ))
}

/// A member id as the HTTP API takes it: positive, and fits a signed 64-bit column.
pub fn member_id(id: u64, field: &str) -> Result<u64, String> {
    if !is_member_id(id) {
        return Err(member_id_problem(id, field));
    }
    Ok(id)
}

/// Whether `id` can be a member id (positive, and within PostgreSQL's `bigint`).
#[inline]
pub fn is_member_id(id: u64) -> bool {
    id != 0 && id <= i64::MAX as u64
}

/// What is wrong with a member id that is not one, naming its field.
pub fn member_id_problem(id: u64, field: &str) -> String {
    format!("{field} must be a positive 64-bit integer; got {id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::CatalogData;

    #[test]
    fn plans_decode_from_the_rendered_answer() {
        let snap = Snapshot::build(&CatalogData::reference().unwrap());
        let us = country_plans(&snap.country(*b"US").unwrap().body, i64::MAX).unwrap();
        assert_eq!(us.country, "US");
        assert_eq!(us.currency, "USD");
        assert_eq!(us.catalog_version, snap.version());
        let ids: Vec<_> = us.plans.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["standard-with-ads", "standard", "premium"]);
        assert_eq!(us.plans[0].price.as_ref().unwrap().amount, "8.99");
    }

    #[test]
    fn inputs() {
        assert_eq!(country_code("us"), Ok(*b"US"));
        assert!(country_code("usa").unwrap_err().contains("\"usa\""));
        assert!(country_code("").is_err());
        assert!(country_code("U1").is_err());
        assert_eq!(member_id(42, "member_id"), Ok(42));
        assert!(member_id(0, "member_id").is_err());
        assert!(member_id(1 << 63, "member_ids[3]")
            .unwrap_err()
            .starts_with("member_ids[3]"));
    }
}
