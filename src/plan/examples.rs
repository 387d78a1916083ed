//! The bundled pricing examples (`data/pricing-examples.toml`): a few scheduled
//! changes, two US experiments and two partner offers, shipped as examples of the
//! rules (not real announcements) and loaded with the reference catalog.

use serde::Deserialize;

use super::{
    parse_instant_ms, CatalogData, Experiment, ExperimentCell, ExperimentPrice, PartnerOffer,
    PlanError, Price, ScheduledPrice,
};

/// The examples file, compiled in.
pub const PRICING_EXAMPLES_TOML: &str = include_str!("../../data/pricing-examples.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    scheduled: Vec<Scheduled>,
    #[serde(default)]
    experiment: Vec<Exp>,
    #[serde(default)]
    partner_offer: Vec<Offer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scheduled {
    country: String,
    plan: String,
    currency: String,
    amount: Option<String>,
    effective_at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Exp {
    id: String,
    country: String,
    starts_at: String,
    ends_at: Option<String>,
    cells: Vec<Cell>,
    #[serde(default)]
    prices: Vec<CellPrice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cell {
    cell: String,
    weight_bp: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CellPrice {
    cell: String,
    plan: String,
    currency: Option<String>,
    amount: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Offer {
    partner: String,
    country: String,
    plan: String,
    name: String,
    currency: String,
    amount: String,
    starts_at: String,
    ends_at: Option<String>,
}

fn bad(reason: String) -> PlanError {
    PlanError::Reference {
        file: "pricing-examples.toml",
        line: 0,
        reason,
    }
}

fn price(text: Option<&str>) -> Result<Option<Price>, PlanError> {
    text.map(Price::parse).transpose()
}

fn instant(text: &str) -> Result<i64, PlanError> {
    parse_instant_ms(text).map_err(bad)
}

/// Appends the examples' rows to `data`.
pub fn add_examples(data: &mut CatalogData) -> Result<(), PlanError> {
    let file: File = toml::from_str(PRICING_EXAMPLES_TOML).map_err(|e| bad(e.to_string()))?;
    for s in file.scheduled {
        data.scheduled.push(ScheduledPrice {
            country: s.country,
            plan_id: s.plan,
            currency: s.currency,
            amount: price(s.amount.as_deref())?,
            effective_at_ms: instant(&s.effective_at)?,
        });
    }
    for e in file.experiment {
        data.experiments.push(Experiment {
            id: e.id.clone(),
            country: e.country,
            starts_at_ms: instant(&e.starts_at)?,
            ends_at_ms: e.ends_at.as_deref().map(instant).transpose()?,
        });
        for c in e.cells {
            data.cells.push(ExperimentCell {
                experiment_id: e.id.clone(),
                cell: c.cell,
                weight_bp: c.weight_bp,
            });
        }
        for p in e.prices {
            data.experiment_prices.push(ExperimentPrice {
                experiment_id: e.id.clone(),
                cell: p.cell,
                plan_id: p.plan,
                currency: p.currency.unwrap_or_default(),
                amount: price(p.amount.as_deref())?,
            });
        }
    }
    for o in file.partner_offer {
        data.partner_offers.push(PartnerOffer {
            partner: o.partner,
            country: o.country,
            plan_id: o.plan,
            name: o.name,
            currency: o.currency,
            amount: Price::parse(&o.amount)?,
            starts_at_ms: instant(&o.starts_at)?,
            ends_at_ms: o.ends_at.as_deref().map(instant).transpose()?,
        });
    }
    Ok(())
}

/// A synthetic rule load for measuring the snapshot build: `experiments` experiments
/// (two per country, over the countries in code order, each with three cells, one of
/// them a control, and two priced plans), `scheduled` scheduled prices (spread over the
/// countries, a day apart from `now_ms` on) and a partner offer in every tenth country.
/// Every experiment runs from a day before `now_ms` for a year.
pub fn add_synthetic_rules(
    data: &mut CatalogData,
    experiments: usize,
    scheduled: usize,
    now_ms: i64,
) {
    const DAY: i64 = 86_400_000;
    let mut countries: Vec<(String, String, String, Price)> = data
        .prices
        .iter()
        .map(|p| {
            (
                p.country.clone(),
                p.plan_id.clone(),
                p.currency.clone(),
                p.amount.clone(),
            )
        })
        .collect();
    countries.sort();
    let mut codes: Vec<&str> = countries.iter().map(|c| c.0.as_str()).collect();
    codes.dedup();
    let rows_of = |cc: &str| -> Vec<&(String, String, String, Price)> {
        countries.iter().filter(|c| c.0 == cc).collect()
    };
    for i in 0..experiments {
        let cc = codes[(i / 2) % codes.len()];
        let id = format!("synthetic-{i}");
        data.experiments.push(Experiment {
            id: id.clone(),
            country: cc.to_string(),
            starts_at_ms: now_ms - DAY,
            ends_at_ms: Some(now_ms + 365 * DAY + i as i64 * 1000),
        });
        for (cell, weight_bp) in [("control", 3400), ("a", 3300), ("b", 3300)] {
            data.cells.push(ExperimentCell {
                experiment_id: id.clone(),
                cell: cell.into(),
                weight_bp,
            });
        }
        for (cell, (_, plan, currency, amount)) in ["a", "b"].into_iter().zip(rows_of(cc)) {
            data.experiment_prices.push(ExperimentPrice {
                experiment_id: id.clone(),
                cell: cell.into(),
                plan_id: plan.clone(),
                currency: currency.clone(),
                amount: Price::parse(&format!("{}1", amount.as_str().trim_end_matches('0'))).ok(),
            });
        }
    }
    for k in 0..scheduled {
        let cc = codes[k % codes.len()];
        if let Some((_, plan, currency, amount)) = rows_of(cc).get(k / codes.len() % 3).copied() {
            data.scheduled.push(ScheduledPrice {
                country: cc.to_string(),
                plan_id: plan.clone(),
                currency: currency.clone(),
                amount: Price::parse(&format!("{}9", amount.as_str())).ok(),
                effective_at_ms: now_ms + (k as i64 + 1) * DAY,
            });
        }
    }
    for cc in codes.iter().step_by(10) {
        if let Some((_, plan, currency, _)) = rows_of(cc).first().copied() {
            data.partner_offers.push(PartnerOffer {
                partner: "synthetic-partner".into(),
                country: cc.to_string(),
                plan_id: plan.clone(),
                name: "Synthetic bundle".into(),
                currency: currency.clone(),
                amount: Price::parse("0").unwrap_or_else(|_| unreachable!()),
                starts_at_ms: now_ms - DAY,
                ends_at_ms: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_parse() {
        let data = CatalogData::reference_with_examples().unwrap();
        assert_eq!(data.experiments.len(), 2);
        assert_eq!(data.cells.len(), 5);
        assert_eq!(data.partner_offers.len(), 2);
        assert!(data.scheduled.len() >= 6);
    }
}
