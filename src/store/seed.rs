//! Synthetic members for seeding a store: ids `1..=n`, a plausible mix of statuses,
//! countries weighted towards the large markets, and a plan each member's country
//! actually offers. Deterministic in the id, so a member looks the same in every store
//! seeded with the same catalog.

use crate::member::Status;
use crate::plan::CatalogData;

/// Relative weights of the larger markets; every other country weighs 1.
const MARKET_WEIGHTS: &[(&str, u32)] = &[
    ("US", 300),
    ("BR", 80),
    ("GB", 60),
    ("DE", 55),
    ("FR", 50),
    ("CA", 45),
    ("MX", 45),
    ("JP", 30),
    ("KR", 30),
    ("IN", 30),
    ("ES", 30),
    ("IT", 30),
    ("AU", 25),
    ("AR", 25),
    ("CO", 20),
    ("PL", 20),
    ("NL", 15),
    ("TR", 15),
    ("PH", 15),
    ("SE", 10),
];

const PLAN_WEIGHTS: &[(&str, u32)] = &[
    ("mobile", 10),
    ("basic", 25),
    ("standard-with-ads", 30),
    ("standard", 45),
    ("premium", 25),
];

const STATUS_WEIGHTS: &[(Status, u32)] = &[
    (Status::Active, 850),
    (Status::Grace, 30),
    (Status::OnHold, 40),
    (Status::Paused, 30),
    (Status::Cancelled, 50),
];

/// splitmix64: a fast, well-mixed hash of the id (and a salt per attribute).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Weighted<T> {
    items: Vec<T>,
    cumulative: Vec<u64>,
}

impl<T: Clone> Weighted<T> {
    fn new(pairs: impl IntoIterator<Item = (T, u32)>) -> Weighted<T> {
        let mut items = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for (item, w) in pairs {
            if w == 0 {
                continue;
            }
            total += w as u64;
            items.push(item);
            cumulative.push(total);
        }
        Weighted { items, cumulative }
    }

    fn pick(&self, h: u64) -> &T {
        let total = *self.cumulative.last().unwrap_or(&1);
        let x = h % total;
        let i = self.cumulative.partition_point(|c| *c <= x);
        &self.items[i.min(self.items.len() - 1)]
    }
}

/// Generates members from a catalog.
pub struct MemberGenerator {
    countries: Weighted<usize>,
    /// Per country: its code and the plans it offers, weighted.
    offers: Vec<(String, Weighted<String>)>,
    statuses: Weighted<Status>,
}

impl MemberGenerator {
    /// `None` if the catalog offers no plan anywhere.
    pub fn new(catalog: &CatalogData) -> Option<MemberGenerator> {
        let mut by_country: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for p in &catalog.prices {
            if catalog.plans.iter().any(|pl| pl.id == p.plan_id) {
                by_country.entry(&p.country).or_default().push(&p.plan_id);
            }
        }
        if by_country.is_empty() {
            return None;
        }
        let mut offers = Vec::new();
        let mut country_weights = Vec::new();
        for (i, (cc, plans)) in by_country.iter().enumerate() {
            let weight = MARKET_WEIGHTS
                .iter()
                .find(|(c, _)| c == cc)
                .map(|(_, w)| *w)
                .unwrap_or(1);
            country_weights.push((i, weight));
            let plans = Weighted::new(plans.iter().map(|p| {
                let w = PLAN_WEIGHTS
                    .iter()
                    .find(|(id, _)| id == p)
                    .map(|(_, w)| *w)
                    .unwrap_or(10);
                (p.to_string(), w)
            }));
            offers.push((cc.to_string(), plans));
        }
        Some(MemberGenerator {
            countries: Weighted::new(country_weights),
            offers,
            statuses: Weighted::new(STATUS_WEIGHTS.iter().copied()),
        })
    }

    /// The member with this id: (id, status, plan, country).
    pub fn member(&self, id: u64) -> (u64, Status, String, String) {
        let h = mix(id);
        let (cc, plans) = &self.offers[*self.countries.pick(h)];
        let plan = plans.pick(mix(h ^ 0x5151)).clone();
        let status = *self.statuses.pick(mix(h ^ 0xa5a5));
        (id, status, plan, cc.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_have_plans_their_country_offers_and_a_mix_of_statuses() {
        let catalog = CatalogData::reference().unwrap();
        let g = MemberGenerator::new(&catalog).unwrap();
        let mut statuses = std::collections::HashMap::new();
        let mut us = 0;
        for id in 1..=20_000 {
            let (_, status, plan, cc) = g.member(id);
            assert!(
                catalog
                    .prices
                    .iter()
                    .any(|p| p.country == cc && p.plan_id == plan),
                "member {id}: {cc} does not offer {plan}"
            );
            *statuses.entry(status).or_insert(0) += 1;
            us += (cc == "US") as u32;
        }
        assert_eq!(statuses.len(), 5, "every status appears: {statuses:?}");
        assert!(statuses[&Status::Active] > 15_000);
        assert!(us > 2_000 && us < 6_000, "US share {us}");
        assert_eq!(g.member(42), g.member(42));
    }
}
