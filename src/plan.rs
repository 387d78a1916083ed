//! Plans and prices as the store holds them: the catalog's rows ([`CatalogData`]), the
//! exact decimal [`Price`], and the reference data that ships with readtier.
//!
//! These are plain records, like the member record: the store reads and writes them,
//! the catalog snapshot is built from them, and a node keeps them on disk as its last
//! good catalog.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The reference price list that ships with readtier (see `data/README.md`).
pub const REFERENCE_PRICES_CSV: &str = include_str!("../data/plan-prices.csv");
/// The reference plan features that ship with readtier.
pub const REFERENCE_FEATURES_CSV: &str = include_str!("../data/plan-features.csv");
/// The observed price changes 2023–2026 (`readtier seed --price-history`).
pub const REFERENCE_PRICE_CHANGES_CSV: &str = include_str!("../data/price-changes.csv");

pub mod examples;

/// Problems with catalog rows.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reference data {file}, line {line}: {reason}")]
    Reference {
        file: &'static str,
        line: u64,
        reason: String,
    },
    #[error("invalid price {0:?}: a price is a non-negative decimal such as 8.99 or 74000")]
    Price(String),
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
    pub fn parse(text: &str) -> Result<Price, PlanError> {
        let t = text.trim();
        let bad = || PlanError::Price(text.to_string());
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
    type Error = PlanError;
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

/// One row of `scheduled_prices`: from `effective_at_ms` on, the price of a plan in a
/// country (`amount` `None`: the plan is withdrawn there). Times are milliseconds
/// since the Unix epoch, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledPrice {
    pub country: String,
    pub plan_id: String,
    pub currency: String,
    pub amount: Option<Price>,
    pub effective_at_ms: i64,
}

/// One row of `experiments`: a price experiment running in one country over
/// `[starts_at_ms, ends_at_ms)` (`ends_at_ms` `None`: open-ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: String,
    pub country: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: Option<i64>,
}

/// One row of `experiment_cells`: a cell and the share of visitors it gets, in basis
/// points (10,000 = every visitor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentCell {
    pub experiment_id: String,
    pub cell: String,
    pub weight_bp: u32,
}

/// One row of `experiment_prices`: what a cell charges for a plan (`amount` `None`:
/// the plan is not offered in this cell). A cell with no rows is a control cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExperimentPrice {
    pub experiment_id: String,
    pub cell: String,
    pub plan_id: String,
    pub currency: String,
    pub amount: Option<Price>,
}

/// One row of `partner_offers`: a partner bundle's price for a plan in a country over
/// `[starts_at_ms, ends_at_ms)` (`ends_at_ms` `None`: open-ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerOffer {
    pub partner: String,
    pub country: String,
    pub plan_id: String,
    /// The offer's name as shown to the visitor ("Netflix on Us").
    pub name: String,
    pub currency: String,
    pub amount: Price,
    pub starts_at_ms: i64,
    pub ends_at_ms: Option<i64>,
}

/// The catalog rows as read from the store in one consistent read, with the store's
/// catalog version. This is also what a node keeps on disk as its last good snapshot
/// (the pricing rules default to empty, so a file written before they existed reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogData {
    pub version: u64,
    pub plans: Vec<Plan>,
    pub prices: Vec<PlanPrice>,
    #[serde(default)]
    pub scheduled: Vec<ScheduledPrice>,
    #[serde(default)]
    pub experiments: Vec<Experiment>,
    #[serde(default)]
    pub cells: Vec<ExperimentCell>,
    #[serde(default)]
    pub experiment_prices: Vec<ExperimentPrice>,
    #[serde(default)]
    pub partner_offers: Vec<PartnerOffer>,
}

impl CatalogData {
    /// The catalog that ships with readtier, from `data/plan-*.csv`.
    pub fn reference() -> Result<CatalogData, PlanError> {
        Ok(CatalogData {
            version: 1,
            plans: parse_features_csv(REFERENCE_FEATURES_CSV)?,
            prices: parse_prices_csv(REFERENCE_PRICES_CSV)?,
            scheduled: Vec::new(),
            experiments: Vec::new(),
            cells: Vec::new(),
            experiment_prices: Vec::new(),
            partner_offers: Vec::new(),
        })
    }

    /// The reference catalog with the bundled pricing examples
    /// (`data/pricing-examples.toml`): what `serve` and `seed` load into an empty store.
    pub fn reference_with_examples() -> Result<CatalogData, PlanError> {
        let mut data = CatalogData::reference()?;
        crate::plan::examples::add_examples(&mut data)?;
        Ok(data)
    }
}

fn csv_reader(text: &str) -> csv::Reader<&[u8]> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes())
}

fn parse_features_csv(text: &str) -> Result<Vec<Plan>, PlanError> {
    let file = "plan-features.csv";
    let mut out = Vec::new();
    for (i, rec) in csv_reader(text).records().enumerate() {
        let line = i as u64 + 2;
        let err = |reason: String| PlanError::Reference { file, line, reason };
        let rec = rec.map_err(|e| err(e.to_string()))?;
        let field = |n: usize| rec.get(n).ok_or_else(|| err(format!("missing column {n}")));
        let num = |n: usize| -> Result<u32, PlanError> {
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

fn parse_prices_csv(text: &str) -> Result<Vec<PlanPrice>, PlanError> {
    let file = "plan-prices.csv";
    let mut out = Vec::new();
    for (i, rec) in csv_reader(text).records().enumerate() {
        let line = i as u64 + 2;
        let err = |reason: String| PlanError::Reference { file, line, reason };
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

/// Parses an RFC 3339 instant (any offset) to milliseconds since the Unix epoch.
pub fn parse_instant_ms(text: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 timestamp ({e})"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Which end of a span an instant is: its meaning at ±infinity differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A rule's start or a price's effective time: `-infinity` is since always
    /// (`i64::MIN`), `infinity` never (`i64::MAX`: the rule never applies).
    Start,
    /// A rule's or a lock's end: `infinity` is no end (`None`), `-infinity` ended
    /// always (`i64::MIN`).
    End,
}

/// An instant as the stores hold it: RFC 3339, or `infinity` / `-infinity` (as
/// PostgreSQL writes them; the embedded store takes the same words), in milliseconds
/// since the epoch by [`Bound`]'s meaning.
pub fn parse_bound(text: &str, bound: Bound) -> Result<Option<i64>, String> {
    match (text.trim(), bound) {
        ("infinity" | "+infinity", Bound::Start) => Ok(Some(i64::MAX)),
        ("infinity" | "+infinity", Bound::End) => Ok(None),
        ("-infinity", _) => Ok(Some(i64::MIN)),
        (t, _) => parse_instant_ms(t).map(Some),
    }
}

/// An instant as RFC 3339 in UTC: `2027-01-15T00:00:00Z`, with milliseconds only when
/// it has some (`…00.250Z`). Written by hand (days to civil date, Howard Hinnant's
/// algorithm) so the snapshot build needs no formatting feature of `time`.
pub fn format_instant_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    if milli == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
    }
}

/// The reference price changes (`data/price-changes.csv`, 2023-04-19 to 2026-07-02) as
/// `scheduled_prices` rows: each observed new price from its date on (midnight UTC),
/// and a withdrawal where a plan had an old price and no new one. Loaded by
/// `readtier seed --price-history`: past rows, so they are history (the latest is
/// the price in force, which agrees with `plan-prices.csv`).
pub fn reference_price_history() -> Result<Vec<ScheduledPrice>, PlanError> {
    let file = "price-changes.csv";
    const PLANS: [&str; 5] = [
        "mobile",
        "basic",
        "standard-with-ads",
        "standard",
        "premium",
    ];
    let mut out = Vec::new();
    for (i, rec) in csv_reader(REFERENCE_PRICE_CHANGES_CSV)
        .records()
        .enumerate()
    {
        let line = i as u64 + 2;
        let err = |reason: String| PlanError::Reference { file, line, reason };
        let rec = rec.map_err(|e| err(e.to_string()))?;
        let field = |n: usize| rec.get(n).ok_or_else(|| err(format!("missing column {n}")));
        let at = parse_instant_ms(&format!("{}T00:00:00Z", field(0)?)).map_err(err)?;
        let country = field(1)?.to_string();
        let currency = field(14)?.to_string();
        for (k, plan) in PLANS.iter().enumerate() {
            let (old, new) = (field(3 + k)?, field(8 + k)?);
            let amount = match (old.is_empty(), new.is_empty()) {
                (_, false) => Some(Price::parse(new).map_err(|e| err(e.to_string()))?),
                (false, true) => None,
                (true, true) => continue,
            };
            out.push(ScheduledPrice {
                country: country.clone(),
                plan_id: plan.to_string(),
                currency: currency.clone(),
                amount,
                effective_at_ms: at,
            });
        }
    }
    Ok(out)
}

/// Whether `cc` is two ASCII upper-case letters (an ISO 3166-1 alpha-2 shape).
pub fn is_country_code(cc: &[u8]) -> bool {
    cc.len() == 2 && cc.iter().all(u8::is_ascii_uppercase)
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
    fn instants_round_trip() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2027-01-15T00:00:00Z",
            "2024-02-29T23:59:59.250Z",
            "2099-12-31T12:34:56Z",
        ] {
            let ms = parse_instant_ms(text).unwrap();
            assert_eq!(format_instant_ms(ms), text);
        }
        assert_eq!(
            parse_instant_ms("2027-01-15T01:00:00+01:00").unwrap(),
            parse_instant_ms("2027-01-15T00:00:00Z").unwrap()
        );
        assert!(parse_instant_ms("tomorrow").is_err());
    }

    #[test]
    fn price_history_ends_at_the_reference_prices() {
        let history = reference_price_history().unwrap();
        let data = CatalogData::reference().unwrap();
        assert!(history.len() > 1000, "{}", history.len());
        // The latest observed row of each (country, plan) is the price in force.
        let mut latest: std::collections::BTreeMap<(&str, &str), &ScheduledPrice> =
            Default::default();
        for r in &history {
            let e = latest.entry((&r.country, &r.plan_id)).or_insert(r);
            if r.effective_at_ms >= e.effective_at_ms {
                *e = r;
            }
        }
        let us = latest[&("US", "premium")];
        assert_eq!(us.amount.as_ref().unwrap().as_str(), "26.99");
        let offered = latest.values().filter(|r| r.amount.is_some()).count();
        assert!(offered >= data.prices.len() * 9 / 10, "{offered}");
    }

    #[test]
    fn reference_data_has_812_prices_in_245_countries() {
        let data = CatalogData::reference().unwrap();
        assert_eq!(data.prices.len(), 812);
        let countries: std::collections::BTreeSet<_> =
            data.prices.iter().map(|p| p.country.as_str()).collect();
        assert_eq!(countries.len(), 245);
        assert!(countries.iter().all(|c| is_country_code(c.as_bytes())));
    }
}
