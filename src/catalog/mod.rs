//! The plan catalog served to callers: an immutable, versioned [`Snapshot`] with every
//! answer pre-rendered, swapped atomically through [`CatalogHandle`].
//!
//! The catalog is small (245 countries × ≤ 5 plans, plus the pricing rules), so every
//! node holds all of it. A snapshot is built off the hot path from the store's rows
//! ([`CatalogData`]) and swapped in atomically, so no response ever mixes two
//! versions. Every plans answer is rendered to bytes when the snapshot is built — per
//! country, per period of its scheduled changes and per variant (experiment cells ×
//! partner offers, see [`pricing`]) — so the hit path copies a reference-counted
//! buffer and does no serialization, and a scheduled change takes effect on each
//! node's clock with no rebuild. [`disk`] keeps the last good rows on disk for a node
//! that starts while the store is down.

pub mod disk;
pub mod pricing;

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::Serialize;

pub use crate::plan::{is_country_code, CatalogData, Plan, PlanPrice, Price};
use pricing::CountryCatalog;
pub use pricing::{Amount, PlansAnswer, PlansError, Rendered};

/// What a member pays ([`Snapshot::member_price`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberPrice<'a> {
    pub amount: &'a str,
    pub currency: &'a str,
    /// Their own locked price (grandfathering), not the catalog's.
    pub locked: bool,
}

impl MemberPrice<'_> {
    /// `"locked"` or `"catalog"`, as answers name it.
    pub fn source(&self) -> &'static str {
        if self.locked {
            "locked"
        } else {
            "catalog"
        }
    }
}

fn country_index(cc: [u8; 2]) -> usize {
    (cc[0] - b'A') as usize * 26 + (cc[1] - b'A') as usize
}

/// The pre-rendered plans answer of one country (kept under its old name: the plain
/// answer is one [`Rendered`] like every variant).
pub type CountryPlans = Rendered;

/// Milliseconds since the Unix epoch on this node's clock: what scheduled changes
/// switch on (each node on its own clock; no write happens at the instant).
/// Whole milliseconds from seconds and the sub-second part: no 128-bit division on the
/// request path (`Duration::as_millis` is one).
#[inline]
pub fn clock_ms() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64 * 1000 + i64::from(d.subsec_millis()),
        Err(_) => 0,
    }
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
    version_header: http::HeaderValue,
    /// Indexed by `country_index`: 26 × 26 slots, so a lookup is two subtractions.
    countries: Vec<Option<CountryCatalog>>,
    plans: Vec<PlanEntry>,
    country_count: usize,
    /// Every partner named in `partner_offers`, in name order (a partner unknown here
    /// is a 400; a known one without an offer in the country gets the plain answer).
    partners: Vec<String>,
}

impl Snapshot {
    /// Builds a snapshot as of now (see [`Snapshot::build_at`]).
    pub fn build(data: &CatalogData) -> Snapshot {
        Snapshot::build_at(data, clock_ms())
    }

    /// Builds a snapshot holding the period in force at `now` and every later one.
    /// Rows that cannot be served (a malformed country code, a price for a plan that
    /// does not exist) are skipped with a warning rather than failing the whole
    /// catalog: other services write these tables in raw SQL.
    pub fn build_at(data: &CatalogData, now: i64) -> Snapshot {
        let mut plans: Vec<PlanEntry> = data
            .plans
            .iter()
            .map(|p| PlanEntry {
                plan: p.clone(),
                entitlement_fragment: render_entitlement_fragment(p),
            })
            .collect();
        plans.sort_by(|a, b| a.plan.id.cmp(&b.plan.id));

        let index = |cc: &str| {
            let b = cc.as_bytes();
            is_country_code(b).then(|| country_index([b[0], b[1]]))
        };
        let rules = pricing::rules_by_country(data, &plans, index);
        let mut countries: Vec<Option<CountryCatalog>> = (0..26 * 26).map(|_| None).collect();
        let mut country_count = 0;
        for (i, r) in rules {
            let c = pricing::build_country(r, data.version, &plans, now);
            if c.has_plans() {
                country_count += 1;
            }
            countries[i] = Some(c);
        }
        let mut partners: Vec<String> = data
            .partner_offers
            .iter()
            .map(|o| o.partner.clone())
            .collect();
        partners.sort();
        partners.dedup();

        Snapshot {
            version: data.version,
            version_header: http::HeaderValue::from(data.version),
            countries,
            plans,
            country_count,
            partners,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The `x-catalog-version` header value, made once per snapshot.
    pub fn version_header(&self) -> &http::HeaderValue {
        &self.version_header
    }

    fn country_catalog(&self, cc: [u8; 2]) -> Option<&CountryCatalog> {
        self.countries
            .get(country_index(cc))
            .and_then(Option::as_ref)
    }

    /// The plain plans answer of a country now (`cc` already checked by
    /// [`is_country_code`]): no visitor, no partner. Reads the clock only if the
    /// country has a change scheduled.
    #[inline]
    pub fn country(&self, cc: [u8; 2]) -> Option<&Rendered> {
        self.country_catalog(cc)?.plain(clock_ms)
    }

    /// The plans a visitor sees in a country at `now` (evaluated only if the country
    /// has a change scheduled), with a partner's offer: the one entry point of the
    /// plans logic, for HTTP and any other face. `visitor` and `partner` are checked
    /// here (shape; the partner must be known).
    pub fn plans(
        &self,
        cc: [u8; 2],
        visitor: Option<&str>,
        partner: Option<&str>,
        now: impl FnOnce() -> i64,
    ) -> Result<PlansAnswer<'_>, PlansError> {
        self.check(visitor, partner)?;
        let unknown = || PlansError::UnknownCountry(String::from_utf8_lossy(&cc).into_owned());
        let c = self.country_catalog(cc).ok_or_else(unknown)?;
        if visitor.is_none() && partner.is_none() {
            return c.plain(now).map(PlansAnswer::Ready).ok_or_else(unknown);
        }
        c.answer(self.version, &self.plans, visitor, partner, now)
            .ok_or_else(unknown)
    }

    /// The answer [`Snapshot::plans`] would give at any instant `at` (an operator's
    /// preview of a scheduled change), rendered from the rules.
    pub fn plans_at(
        &self,
        cc: [u8; 2],
        at: i64,
        visitor: Option<&str>,
        partner: Option<&str>,
    ) -> Result<Rendered, PlansError> {
        self.check(visitor, partner)?;
        self.country_catalog(cc)
            .and_then(|c| c.answer_at(self.version, &self.plans, at, visitor, partner))
            .ok_or_else(|| PlansError::UnknownCountry(String::from_utf8_lossy(&cc).into_owned()))
    }

    fn check(&self, visitor: Option<&str>, partner: Option<&str>) -> Result<(), PlansError> {
        if let Some(v) = visitor {
            if !pricing::valid_id(v) {
                return Err(PlansError::MalformedVisitor(v.chars().take(70).collect()));
            }
        }
        if let Some(p) = partner {
            if !pricing::valid_id(p) {
                return Err(PlansError::MalformedPartner(p.chars().take(70).collect()));
            }
            if self
                .partners
                .binary_search_by(|q| q.as_str().cmp(p))
                .is_err()
            {
                let known = if self.partners.is_empty() {
                    "none".to_string()
                } else {
                    self.partners.join(", ")
                };
                return Err(PlansError::UnknownPartner(p.to_string(), known));
            }
        }
        Ok(())
    }

    /// What a member pays at `now` (`None`: their country no longer offers their plan
    /// at a catalog price and no lock holds), and until when that holds: their lock
    /// while it holds, else the catalog price. The one rule behind the `price` of
    /// every entitlement answer, HTTP and gRPC.
    pub fn member_price<'a>(
        &'a self,
        m: &'a crate::member::Member,
        now: i64,
    ) -> (Option<MemberPrice<'a>>, i64) {
        if let Some(lock) = m.price_lock.as_deref() {
            if lock.holds_at(now) {
                let price = MemberPrice {
                    amount: lock.amount.as_str(),
                    currency: &lock.currency,
                    locked: true,
                };
                return (Some(price), lock.until_ms.unwrap_or(i64::MAX));
            }
        }
        let (amount, until) = self.catalog_price(&m.country, &m.plan_id, || now);
        let price = amount.map(|a| MemberPrice {
            amount: a.amount.as_str(),
            currency: &a.currency,
            locked: false,
        });
        (price, until)
    }

    /// The catalog price of a plan in a country now, and the instant it holds until
    /// (`i64::MAX`: no change scheduled): what a member without a price lock pays.
    pub fn catalog_price(
        &self,
        country: &str,
        plan: &str,
        now: impl FnOnce() -> i64,
    ) -> (Option<&Amount>, i64) {
        let b = country.as_bytes();
        if !is_country_code(b) {
            return (None, i64::MAX);
        }
        match self.country_catalog([b[0], b[1]]) {
            Some(c) => c.price(plan, now),
            None => (None, i64::MAX),
        }
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

    /// Periods rendered over every country (the current one and each later one).
    pub fn period_count(&self) -> usize {
        self.countries
            .iter()
            .flatten()
            .map(|c| c.period_count())
            .sum()
    }
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
