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
    pub fn reference() -> Result<CatalogData, PlanError> {
        Ok(CatalogData {
            version: 1,
            plans: parse_features_csv(REFERENCE_FEATURES_CSV)?,
            prices: parse_prices_csv(REFERENCE_PRICES_CSV)?,
        })
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
    fn reference_data_has_812_prices_in_245_countries() {
        let data = CatalogData::reference().unwrap();
        assert_eq!(data.prices.len(), 812);
        let countries: std::collections::BTreeSet<_> =
            data.prices.iter().map(|p| p.country.as_str()).collect();
        assert_eq!(countries.len(), 245);
        assert!(countries.iter().all(|c| is_country_code(c.as_bytes())));
    }
}
