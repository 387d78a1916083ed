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
