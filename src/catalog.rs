//! The plan catalog: which plans each country offers, at what price, with what features.
//!
//! The catalog is small (245 countries × ≤ 5 plans), so every node holds all of it as an
//! immutable, versioned [`Snapshot`]. A snapshot is built off the hot path from the
//! store's rows ([`CatalogData`]) and swapped in atomically through [`CatalogHandle`], so
//! no response ever mixes two versions. The plans response of every country is rendered
//! to bytes when the snapshot is built: the hit path copies a reference-counted buffer
//! and does no serialization.

use std::cmp::Ordering;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use serde::{Deserialize, Serialize};

/// The reference price list that ships with readtier (see `data/README.md`).
pub const REFERENCE_PRICES_CSV: &str = include_str!("../data/plan-prices.csv");
/// The reference plan features that ship with readtier.
pub const REFERENCE_FEATURES_CSV: &str = include_str!("../data/plan-features.csv");

/// Problems with catalog rows.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reference data {file}, line {line}: {reason}")]
    Reference {
        file: &'static str,
        line: u64,
        reason: String,
    },
    #[error("invalid price {0:?}: a price is a non-negative decimal such as 8.99 or 74000")]
    Price(String),
    #[error("catalog snapshot file {path}: {reason}")]
    File { path: String, reason: String },
}

/// A non-negative decimal amount in major units, kept as its canonical text.
///
/// Prices are never floats: the text is what the store holds, normalised (no leading
/// zeros, no trailing fractional zeros: `8.990` → `8.99`, `74000.00` → `74000`), and
/// ordering compares the digits exactly.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Price(String);

impl Price {
    /// Parses and normalises a decimal string.
    pub fn parse(text: &str) -> Result<Price, CatalogError> {
        let t = text.trim();
        let bad = || CatalogError::Price(text.to_string());
        if t.is_empty() || t.len() > 40 {
            return Err(bad());
        }
        let (int, frac) = match t.split_once('.') {
            Some((i, f)) => (i, f),
            None => (t, ""),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || (t.contains('.') && frac.is_empty()) {
            return Err(bad());
        }
        let int = int.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let frac = frac.trim_end_matches('0');
        let s = if frac.is_empty() {
            int.to_string()
        } else {
            format!("{int}.{frac}")
        };
        Ok(Price(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Price {
    type Error = CatalogError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Price::parse(&s)
    }
}

impl From<Price> for String {
    fn from(p: Price) -> String {
        p.0
    }
}

impl fmt::Debug for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Price({})", self.0)
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ord for Price {
    fn cmp(&self, other: &Self) -> Ordering {
        // Canonical text: no leading zeros, so a longer integer part is a larger number;
        // equal integer parts compare digit by digit, then the fractions do the same.
        let (ai, af) = self.0.split_once('.').unwrap_or((&self.0, ""));
        let (bi, bf) = other.0.split_once('.').unwrap_or((&other.0, ""));
        ai.len()
            .cmp(&bi.len())
            .then_with(|| ai.cmp(bi))
            .then_with(|| af.cmp(bf))
    }
}

impl PartialOrd for Price {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a plan entitles a member to; one row of `plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub max_streams: u32,
    pub max_resolution: String,
    pub download_devices: u32,
    pub ads: bool,
    pub device_classes: Vec<String>,
}

impl Plan {
    /// Whether a device of this class may play on this plan.
    pub fn allows_device(&self, class: &str) -> bool {
        self.device_classes.iter().any(|c| c == class)
    }
}

/// One row of `plan_prices`: a country offers a plan at a price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPrice {
    pub country: String,
    pub plan_id: String,
    pub currency: String,
    pub amount: Price,
}

/// The catalog rows as read from the store in one consistent read, with the store's
/// catalog version. This is also what a node keeps on disk as its last good snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogData {
    pub version: u64,
    pub plans: Vec<Plan>,
    pub prices: Vec<PlanPrice>,
}

impl CatalogData {
    /// The catalog that ships with readtier, from `data/plan-*.csv`.
    pub fn reference() -> Result<CatalogData, CatalogError> {
        Ok(CatalogData {
            version: 1,
            plans: parse_features_csv(REFERENCE_FEATURES_CSV)?,
            prices: parse_prices_csv(REFERENCE_PRICES_CSV)?,
        })
    }

    /// Reads a snapshot file written by [`CatalogData::save`].
    pub fn load(path: &Path) -> Result<CatalogData, CatalogError> {
        let err = |reason: String| CatalogError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| err(e.to_string()))
    }

    /// Writes the snapshot atomically (temporary file, then rename), so a crash never
    /// leaves a torn file behind.
    pub fn save(&self, path: &Path) -> Result<(), CatalogError> {
        let err = |reason: String| CatalogError::File {
            path: path.display().to_string(),
            reason,
        };
        let tmp = path.with_extension("tmp");
        // Serializing plain structs of strings and integers cannot fail.
        let body = serde_json::to_vec(self).expect("catalog data serializes");
        std::fs::write(&tmp, body).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }
}

fn csv_reader(text: &str) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes())
}

fn parse_features_csv(text: &str) -> Result<Vec<Plan>, CatalogError> {
    let file = "plan-features.csv";
    let mut out = Vec::new();
    for (i, rec) in csv_reader(text).records().enumerate() {
        let line = i as u64 + 2;
        let err = |reason: String| CatalogError::Reference { file, line, reason };
        let rec = rec.map_err(|e| err(e.to_string()))?;
        let field = |n: usize| rec.get(n).ok_or_else(|| err(format!("missing column {n}")));
        let num = |n: usize| -> Result<u32, CatalogError> {
            field(n)?
                .parse()
                .map_err(|_| err(format!("column {n} is not a number")))
        };
        out.push(Plan {
            id: field(0)?.to_string(),
            name: field(1)?.to_string(),
            max_streams: num(2)?,
            max_resolution: field(3)?.to_string(),
            download_devices: num(4)?,
            ads: field(5)? == "true",
            device_classes: field(6)?.split('|').map(str::to_string).collect(),
        });
    }
    Ok(out)
}

fn parse_prices_csv(text: &str) -> Result<Vec<PlanPrice>, CatalogError> {
    let file = "plan-prices.csv";
    let mut out = Vec::new();
    for (i, rec) in csv_reader(text).records().enumerate() {
        let line = i as u64 + 2;
        let err = |reason: String| CatalogError::Reference { file, line, reason };
        let rec = rec.map_err(|e| err(e.to_string()))?;
        let field = |n: usize| rec.get(n).ok_or_else(|| err(format!("missing column {n}")));
        out.push(PlanPrice {
            country: field(0)?.to_string(),
            currency: field(2)?.to_string(),
            plan_id: field(3)?.to_string(),
            amount: Price::parse(field(4)?).map_err(|e| err(e.to_string()))?,
        });
    }
    Ok(out)
}

/// Whether `cc` is two ASCII upper-case letters (an ISO 3166-1 alpha-2 shape).
pub fn is_country_code(cc: &[u8]) -> bool {
    cc.len() == 2 && cc.iter().all(u8::is_ascii_uppercase)
}

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
        self.plans
            .binary_search_by(|p| p.plan.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.plans[i])
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
}

impl CatalogHandle {
    pub fn new(first: Snapshot) -> CatalogHandle {
        metrics::gauge!("readtier_catalog_version").set(first.version() as f64);
        CatalogHandle {
            current: ArcSwap::from_pointee(first),
        }
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
            metrics::gauge!("readtier_catalog_version").set(next.version() as f64);
        }
        installed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_normalise_and_order_exactly() {
        assert_eq!(Price::parse("8.990").unwrap().as_str(), "8.99");
        assert_eq!(Price::parse("74000.00").unwrap().as_str(), "74000");
        assert_eq!(Price::parse("007.50").unwrap().as_str(), "7.5");
        assert_eq!(Price::parse("0.00").unwrap().as_str(), "0");
        for bad in ["", "-1", "1.", ".5", "1e3", "8,99", "NaN", "1.2.3"] {
            assert!(Price::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let p = |s| Price::parse(s).unwrap();
        assert!(p("8.99") < p("19.99"));
        assert!(p("9.5") > p("9.49"));
        assert!(p("100") > p("99.999"));
        assert_eq!(p("1.10"), p("1.1"));
    }

    #[test]
    fn reference_catalog_covers_245_countries_and_renders_us_in_price_order() {
        let data = CatalogData::reference().unwrap();
        assert_eq!(data.prices.len(), 812);
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
