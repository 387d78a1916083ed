//! The plan catalog served to callers: an immutable, versioned [`Snapshot`] with every
//! answer pre-rendered, swapped atomically through [`CatalogHandle`].
//!
//! The catalog is small (245 countries × ≤ 5 plans), so every node holds all of it. A
//! snapshot is built off the hot path from the store's rows ([`CatalogData`]) and
//! swapped in atomically, so no response ever mixes two versions. The plans response
//! of every country is rendered to bytes when the snapshot is built: the hit path
//! copies a reference-counted buffer and does no serialization. [`disk`] keeps the last
//! good rows on disk for a node that starts while the store is down.

pub mod disk;

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

pub use crate::plan::{is_country_code, CatalogData, Plan, PlanPrice, Price};

fn country_index(cc: [u8; 2]) -> usize {
    (cc[0] - b'A') as usize * 26 + (cc[1] - b'A') as usize
}

/// The pre-rendered plans answer of one country.
#[derive(Debug, Clone)]
pub struct CountryPlans {
    /// The whole JSON body.
    pub body: Bytes,
    /// Strong ETag for `body`.
    pub etag: HeaderValue,
}

/// A plan with its pre-rendered JSON fragment for entitlement answers.
#[derive(Debug)]
pub struct PlanEntry {
    pub plan: Plan,
    /// `"max_streams":…,"max_resolution":…,"download_devices":…,"device_classes":[…]`.
    pub entitlement_fragment: Bytes,
}

/// An immutable, versioned catalog with every answer rendered.
#[derive(Debug)]
pub struct Snapshot {
    version: u64,
    version_header: HeaderValue,
    /// Indexed by `country_index`: 26 × 26 slots, so a lookup is two subtractions.
    countries: Vec<Option<CountryPlans>>,
    plans: Vec<PlanEntry>,
    country_count: usize,
}

impl Snapshot {
    /// Builds a snapshot. Rows that cannot be served (a malformed country code, a price
    /// for a plan that does not exist) are skipped with a warning rather than failing the
    /// whole catalog: other services write these tables in raw SQL.
    pub fn build(data: &CatalogData) -> Snapshot {
        let mut plans: Vec<PlanEntry> = data
            .plans
            .iter()
            .map(|p| PlanEntry {
                plan: p.clone(),
                entitlement_fragment: render_entitlement_fragment(p),
            })
            .collect();
        plans.sort_by(|a, b| a.plan.id.cmp(&b.plan.id));

        let mut by_country: Vec<Vec<&PlanPrice>> = vec![Vec::new(); 26 * 26];
        for row in &data.prices {
            let cc = row.country.as_bytes();
            if !is_country_code(cc) {
                tracing::warn!(country = %row.country, "skipping price row with a malformed country code");
                continue;
            }
            if plans
                .binary_search_by(|p| p.plan.id.as_str().cmp(&row.plan_id))
                .is_err()
            {
                tracing::warn!(country = %row.country, plan = %row.plan_id, "skipping price row for an unknown plan");
                continue;
            }
            by_country[country_index([cc[0], cc[1]])].push(row);
        }

        let mut countries = Vec::with_capacity(26 * 26);
        let mut country_count = 0;
        for (idx, rows) in by_country.iter_mut().enumerate() {
            if rows.is_empty() {
                countries.push(None);
                continue;
            }
            country_count += 1;
            rows.sort_by(|a, b| {
                a.amount
                    .cmp(&b.amount)
                    .then_with(|| a.plan_id.cmp(&b.plan_id))
            });
            let cc = [b'A' + (idx / 26) as u8, b'A' + (idx % 26) as u8];
            let body = render_country(data.version, &cc, rows, &plans);
            let etag = format!(
                "\"{}-{}\"",
                std::str::from_utf8(&cc).unwrap_or("XX"),
                data.version
            );
            countries.push(Some(CountryPlans {
                body,
                // Built from ASCII letters, digits and quotes: always a valid header.
                etag: HeaderValue::from_str(&etag).expect("etag is visible ASCII"),
            }));
        }

        Snapshot {
            version: data.version,
            version_header: HeaderValue::from(data.version),
            countries,
            plans,
            country_count,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The `x-catalog-version` header value, made once per snapshot.
    pub fn version_header(&self) -> &HeaderValue {
        &self.version_header
    }

    /// The plans answer of a country (`cc` already checked by [`is_country_code`]).
    pub fn country(&self, cc: [u8; 2]) -> Option<&CountryPlans> {
        self.countries
            .get(country_index(cc))
            .and_then(Option::as_ref)
    }

    /// A plan by id.
    pub fn plan(&self, id: &str) -> Option<&PlanEntry> {
        self.plan_index(id).map(|i| &self.plans[i])
    }

    /// Where a plan is in this snapshot, for a caller that needs it more than once
    /// (a string search each time costs ~125 instructions): see [`Snapshot::plan_at`].
    pub fn plan_index(&self, id: &str) -> Option<usize> {
        self.plans
            .binary_search_by(|p| p.plan.id.as_str().cmp(id))
            .ok()
    }

    /// The plan at an index [`Snapshot::plan_index`] gave for this snapshot.
    pub fn plan_at(&self, index: usize) -> Option<&PlanEntry> {
        self.plans.get(index)
    }

    /// Number of countries with at least one plan.
    pub fn country_count(&self) -> usize {
        self.country_count
    }
}

#[derive(Serialize)]
struct CountryBody<'a> {
    country: &'a str,
    currency: &'a str,
    catalog_version: u64,
    plans: Vec<PlanBody<'a>>,
}

#[derive(Serialize)]
struct PlanBody<'a> {
    id: &'a str,
    name: &'a str,
    price: PriceBody<'a>,
    max_streams: u32,
    max_resolution: &'a str,
    download_devices: u32,
    ads: bool,
    device_classes: &'a [String],
}

#[derive(Serialize)]
struct PriceBody<'a> {
    amount: &'a str,
    currency: &'a str,
}

fn render_country(version: u64, cc: &[u8; 2], rows: &[&PlanPrice], plans: &[PlanEntry]) -> Bytes {
    let plan_of = |id: &str| {
        plans
            .binary_search_by(|p| p.plan.id.as_str().cmp(id))
            .map(|i| &plans[i].plan)
    };
    let body = CountryBody {
        country: std::str::from_utf8(cc).unwrap_or("XX"),
        currency: rows.first().map(|r| r.currency.as_str()).unwrap_or(""),
        catalog_version: version,
        plans: rows
            .iter()
            .filter_map(|r| {
                let p = plan_of(&r.plan_id).ok()?;
                Some(PlanBody {
                    id: &p.id,
                    name: &p.name,
                    price: PriceBody {
                        amount: r.amount.as_str(),
                        currency: &r.currency,
                    },
                    max_streams: p.max_streams,
                    max_resolution: &p.max_resolution,
                    download_devices: p.download_devices,
                    ads: p.ads,
                    device_classes: &p.device_classes,
                })
            })
            .collect(),
    };
    // Plain structs of strings and numbers always serialize.
    Bytes::from(serde_json::to_vec(&body).expect("plans body serializes"))
}

fn render_entitlement_fragment(p: &Plan) -> Bytes {
    #[derive(Serialize)]
    struct Fragment<'a> {
        max_streams: u32,
        max_resolution: &'a str,
        download_devices: u32,
        device_classes: &'a [String],
    }
    let json = serde_json::to_vec(&Fragment {
        max_streams: p.max_streams,
        max_resolution: &p.max_resolution,
        download_devices: p.download_devices,
        device_classes: &p.device_classes,
    })
    .expect("fragment serializes");
    // Strip the surrounding braces so the fragment can be spliced into an object.
    Bytes::copy_from_slice(&json[1..json.len() - 1])
}

/// The current snapshot of a node, swapped atomically and never moved backwards.
#[derive(Debug)]
pub struct CatalogHandle {
    current: ArcSwap<Snapshot>,
    /// The version of the last snapshot installed, sent after the swap: whoever keeps
    /// a copy of the catalog (gRPC's `WatchCatalog`) wakes on it instead of polling.
    /// A watch keeps only the newest value, so a slow reader skips to the newest
    /// version and never reads an older one than what `load` then returns.
    installed: tokio::sync::watch::Sender<u64>,
}

impl CatalogHandle {
    pub fn new(first: Snapshot) -> CatalogHandle {
        crate::telemetry::set_catalog_version(first.version());
        CatalogHandle {
            installed: tokio::sync::watch::Sender::new(first.version()),
            current: ArcSwap::from_pointee(first),
        }
    }

    /// Wakes whenever a newer snapshot has been installed (its version is the value);
    /// [`CatalogHandle::load`] then returns that snapshot or a newer one.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// The snapshot to answer one request from; hold the guard for the whole request so
    /// that every byte of an answer comes from one version.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Swaps in `next` if it is newer than the current snapshot; returns whether it did.
    /// A snapshot built from an older read (two rebuilds racing) is dropped.
    pub fn install(&self, next: Snapshot) -> bool {
        let next = Arc::new(next);
        let mut installed = false;
        self.current.rcu(|cur| {
            if next.version() > cur.version() {
                installed = true;
                next.clone()
            } else {
                installed = false;
                cur.clone()
            }
        });
        if installed {
            crate::telemetry::set_catalog_version(next.version());
            // Versions only rise here (the swap above refuses older ones), but two
            // installs may race to this line: keep the larger.
            self.installed.send_if_modified(|v| {
                let newer = next.version() > *v;
                if newer {
                    *v = next.version();
                }
                newer
            });
        }
        installed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_catalog_covers_245_countries_and_renders_us_in_price_order() {
        let data = CatalogData::reference().unwrap();
        let snap = Snapshot::build(&data);
        assert_eq!(snap.country_count(), 245);
        let us = snap.country(*b"US").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&us.body).unwrap();
        let ids: Vec<_> = v["plans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["standard-with-ads", "standard", "premium"]);
        assert_eq!(v["plans"][0]["price"]["amount"], "8.99");
        assert_eq!(v["currency"], "USD");
        assert!(snap.country(*b"ZZ").is_none());
    }

    #[test]
    fn install_never_moves_backwards() {
        let mut data = CatalogData::reference().unwrap();
        data.version = 5;
        let h = CatalogHandle::new(Snapshot::build(&data));
        data.version = 4;
        assert!(!h.install(Snapshot::build(&data)));
        assert_eq!(h.load().version(), 5);
        data.version = 6;
        assert!(h.install(Snapshot::build(&data)));
        assert_eq!(h.load().version(), 6);
    }

    #[test]
    fn rows_for_unknown_plans_or_bad_countries_are_skipped() {
        let mut data = CatalogData::reference().unwrap();
        data.prices.push(PlanPrice {
            country: "usa".into(),
            plan_id: "basic".into(),
            currency: "USD".into(),
            amount: Price::parse("1").unwrap(),
        });
        data.prices.push(PlanPrice {
            country: "QQ".into(),
            plan_id: "nonexistent".into(),
            currency: "USD".into(),
            amount: Price::parse("1").unwrap(),
        });
        let snap = Snapshot::build(&data);
        assert_eq!(snap.country_count(), 245);
        assert!(snap.country(*b"QQ").is_none());
    }
}
