//! The pricing rules of one country, answered from memory: scheduled price changes,
//! experiment cells and partner offers, pre-rendered per period and per variant.
//!
//! Time is cut into **periods** at every instant where something in a country's
//! catalog changes (a scheduled price takes effect, an experiment or a partner offer
//! starts or ends). A snapshot renders, for the period in force when it is built and
//! for every later one, the plain answer and every variant (the cells of the running
//! experiments × the partner offers). A request picks its country's current period —
//! one compare of the clock against the period's end, and only for a country that has
//! a later period at all — then its variant by index, so a scheduled change takes
//! effect at its instant on every node's own clock, with no write and no rebuild, and
//! every answer is one period's bytes (never a mix of two).
//!
//! A visitor falls in one cell per running experiment by a fixed hash of
//! (experiment, visitor) onto the experiment's cumulative `weight_bp`: the same on
//! every node and across restarts, with no state kept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

use super::PlanEntry;
use crate::plan::{format_instant_ms, CatalogData, PartnerOffer, Price};

/// Basis points in the whole: a visitor's bucket is in `0..BP_TOTAL`.
pub const BP_TOTAL: u32 = 10_000;

/// Most variants pre-rendered per period. A country whose running experiments and
/// partners multiply beyond this renders its variants per request instead (correct,
/// slower; logged when the snapshot is built).
pub const MAX_PRERENDERED_VARIANTS: usize = 4096;

/// The stable allocation hash of a visitor in an experiment: FNV-1a over the
/// experiment id, a separator byte no id contains, and the visitor id, finished by
/// splitmix64's mixer (FNV alone mixes its last bytes poorly). Fixed constants, no
/// per-process seed (never std's `RandomState`), so every node and every restart agree.
pub fn allocation_hash(experiment: &str, visitor: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in experiment
        .as_bytes()
        .iter()
        .chain(std::iter::once(&0xffu8))
        .chain(visitor.as_bytes())
    {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The visitor's bucket in `0..BP_TOTAL` for an experiment (multiply-shift: no modulo
/// bias).
pub fn bucket(experiment: &str, visitor: &str) -> u32 {
    ((u128::from(allocation_hash(experiment, visitor)) * u128::from(BP_TOTAL)) >> 64) as u32
}

/// A visitor or partner id: 1–64 of `A-Za-z0-9_-`.
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why a plans question has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlansError {
    #[error("no plans are offered in {0}")]
    UnknownCountry(String),
    #[error("visitor must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'; got {0:?}")]
    MalformedVisitor(String),
    #[error("partner must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'; got {0:?}")]
    MalformedPartner(String),
    #[error("there is no partner {0:?} (known partners: {1})")]
    UnknownPartner(String, String),
}

/// One answer, rendered: its body, ETag, and the end of the period it belongs to.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The whole JSON body.
    pub body: Bytes,
    /// Strong ETag for `body` (country, catalog version and a hash of the bytes, so
    /// every variant and every period has its own, equal on every node).
    pub etag: HeaderValue,
    /// Milliseconds since the epoch when the next change in this country takes
    /// effect (`i64::MAX`: none scheduled): the answer's `valid_until`.
    pub until_ms: i64,
}

/// An answer: pre-rendered in the snapshot, or (beyond [`MAX_PRERENDERED_VARIANTS`],
/// or a preview) rendered for this request.
#[derive(Debug)]
pub enum PlansAnswer<'a> {
    Ready(&'a Rendered),
    Built(Rendered),
}

impl std::ops::Deref for PlansAnswer<'_> {
    type Target = Rendered;
    fn deref(&self) -> &Rendered {
        match self {
            PlansAnswer::Ready(r) => r,
            PlansAnswer::Built(r) => r,
        }
    }
}

/// A price as the catalog states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    pub currency: String,
    pub amount: Price,
}

/// An experiment's rules: its window and its cells in name order with their
/// cumulative upper bounds in basis points.
#[derive(Debug)]
struct ExperimentRule {
    id: String,
    starts_ms: i64,
    ends_ms: i64,
    cells: Vec<CellRule>,
}

#[derive(Debug)]
struct CellRule {
    name: String,
    /// Buckets below this (and at or above the previous cell's) fall in this cell.
    upto_bp: u32,
    /// Its prices: `None` withdraws the plan in this cell.
    prices: Vec<(String, Option<Amount>)>,
}

impl ExperimentRule {
    fn running_at(&self, t: i64) -> bool {
        self.starts_ms <= t && t < self.ends_ms
    }

    /// The cell of a visitor, or `None` when the cells' weights leave its bucket out.
    fn cell_of(&self, visitor: &str) -> Option<usize> {
        let b = bucket(&self.id, visitor);
        self.cells.iter().position(|c| b < c.upto_bp)
    }
}

/// Everything that decides one country's answers at any instant.
#[derive(Debug)]
pub(super) struct CountryRules {
    cc: [u8; 2],
    /// `plan_prices`: plan → price.
    base: BTreeMap<String, Amount>,
    /// `scheduled_prices` by plan, each list in `effective_at` order.
    scheduled: BTreeMap<String, Vec<(i64, Option<Amount>)>>,
    /// Experiments in id order.
    experiments: Vec<ExperimentRule>,
    /// Partner offers by partner (in name order).
    offers: BTreeMap<String, Vec<PartnerOffer>>,
}

fn end(ms: Option<i64>) -> i64 {
    ms.unwrap_or(i64::MAX)
}

impl CountryRules {
    /// Every instant at which something in this country changes, ascending.
    fn instants(&self) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .scheduled
            .values()
            .flat_map(|rows| rows.iter().map(|(t, _)| *t))
            .chain(
                self.experiments
                    .iter()
                    .flat_map(|e| [e.starts_ms, e.ends_ms]),
            )
            .chain(
                self.offers
                    .values()
                    .flatten()
                    .flat_map(|o| [o.starts_at_ms, end(o.ends_at_ms)]),
            )
            .filter(|t| *t != i64::MAX)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first instant after `t` at which something changes (`i64::MAX`: none).
    fn next_after(&self, t: i64) -> i64 {
        self.instants()
            .into_iter()
            .find(|i| *i > t)
            .unwrap_or(i64::MAX)
    }

    /// The catalog prices in force at `t`: the latest scheduled row at or before `t`,
    /// else `plan_prices`.
    fn prices_at(&self, t: i64) -> BTreeMap<String, Amount> {
        let mut out = self.base.clone();
        for (plan, rows) in &self.scheduled {
            let n = rows.partition_point(|(at, _)| *at <= t);
            if n == 0 {
                continue;
            }
            match &rows[n - 1].1 {
                Some(a) => {
                    out.insert(plan.clone(), a.clone());
                }
                None => {
                    out.remove(plan);
                }
            }
        }
        out
    }

    /// The partners with an offer here at `t`, in name order.
    fn partners_at(&self, t: i64) -> Vec<(&str, Vec<&PartnerOffer>)> {
        self.offers
            .iter()
            .filter_map(|(p, rows)| {
                let live: Vec<&PartnerOffer> = rows
                    .iter()
                    .filter(|o| o.starts_at_ms <= t && t < end(o.ends_at_ms))
                    .collect();
                (!live.is_empty()).then_some((p.as_str(), live))
            })
            .collect()
    }
}

/// What one variant applies on top of a period's catalog prices.
struct VariantSpec<'a> {
    /// (experiment, cell) of each experiment the visitor is in.
    cells: Vec<(&'a ExperimentRule, &'a CellRule)>,
    partner: Option<(&'a str, &'a [&'a PartnerOffer])>,
}

#[derive(Serialize)]
struct CountryBody<'a> {
    country: &'a str,
    currency: &'a str,
    catalog_version: u64,
    cells: Vec<CellBody<'a>>,
    partner: Option<PartnerBody<'a>>,
    valid_until: Option<String>,
    plans: Vec<PlanBody<'a>>,
}

#[derive(Serialize)]
struct CellBody<'a> {
    experiment: &'a str,
    cell: &'a str,
}

#[derive(Serialize)]
struct PartnerBody<'a> {
    id: &'a str,
    name: &'a str,
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

/// FNV-1a, 32 bits, of an answer's bytes: the ETag's last part.
fn body_hash(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Renders one answer: the period's prices, then each cell's, then the partner's.
fn render(
    version: u64,
    cc: [u8; 2],
    prices: &BTreeMap<String, Amount>,
    spec: &VariantSpec<'_>,
    until_ms: i64,
    plans: &[PlanEntry],
) -> Rendered {
    let mut prices: BTreeMap<&str, &Amount> = prices.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (_, cell) in &spec.cells {
        for (plan, price) in &cell.prices {
            match price {
                Some(a) => {
                    prices.insert(plan, a);
                }
                None => {
                    prices.remove(plan.as_str());
                }
            }
        }
    }
    let partner_prices: Vec<(&str, Amount)> = spec
        .partner
        .map(|(_, offers)| {
            offers
                .iter()
                .map(|o| {
                    (
                        o.plan_id.as_str(),
                        Amount {
                            currency: o.currency.clone(),
                            amount: o.amount.clone(),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for (plan, a) in &partner_prices {
        prices.insert(plan, a);
    }
    let plan_of = |id: &str| {
        plans
            .binary_search_by(|p| p.plan.id.as_str().cmp(id))
            .ok()
            .map(|i| &plans[i].plan)
    };
    let mut rows: Vec<(&str, &Amount)> = prices
        .into_iter()
        .filter(|(id, _)| plan_of(id).is_some())
        .collect();
    rows.sort_by(|a, b| a.1.amount.cmp(&b.1.amount).then_with(|| a.0.cmp(b.0)));
    let country = std::str::from_utf8(&cc).unwrap_or("XX");
    let body = CountryBody {
        country,
        currency: rows.first().map(|r| r.1.currency.as_str()).unwrap_or(""),
        catalog_version: version,
        cells: spec
            .cells
            .iter()
            .map(|(e, c)| CellBody {
                experiment: &e.id,
                cell: &c.name,
            })
            .collect(),
        partner: spec.partner.map(|(id, offers)| PartnerBody {
            id,
            name: offers.first().map(|o| o.name.as_str()).unwrap_or(id),
        }),
        valid_until: (until_ms != i64::MAX).then(|| format_instant_ms(until_ms)),
        plans: rows
            .iter()
            .filter_map(|(id, a)| {
                let p = plan_of(id)?;
                Some(PlanBody {
                    id: &p.id,
                    name: &p.name,
                    price: PriceBody {
                        amount: a.amount.as_str(),
                        currency: &a.currency,
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
    let body = Bytes::from(serde_json::to_vec(&body).expect("plans body serializes"));
    let etag = format!("\"{country}-{version}-{:08x}\"", body_hash(&body));
    Rendered {
        body,
        // Built from ASCII letters, digits, '-' and quotes: always a valid header.
        etag: HeaderValue::from_str(&etag).expect("etag is visible ASCII"),
        until_ms,
    }
}

/// A running experiment as a period holds it: its rule and the radix of its digit in
/// the variant index (its cells, plus one for "not in any cell").
#[derive(Debug)]
struct RunningExperiment {
    rule: usize,
    stride: usize,
}

/// One period of a country: from its start (the previous period's end) until
/// `until_ms`, with every answer rendered.
#[derive(Debug)]
pub(super) struct Period {
    /// The instant whose state it holds: its start, or for the first period of a
    /// snapshot the instant the snapshot was built.
    state_ms: i64,
    until_ms: i64,
    /// No visitor, no partner; `None` when no plan is offered in this period.
    plain: Option<Rendered>,
    running: Vec<RunningExperiment>,
    /// Partners with an offer in this period, in name order (variant digit 1 + index).
    partners: Vec<String>,
    /// Indexed by Σ digit × stride over the running experiments, times the partners
    /// plus one, plus the partner's digit; empty when beyond the cap (rendered per
    /// request).
    variants: Vec<Rendered>,
    /// The catalog prices in force (what a member without a price lock pays).
    prices: BTreeMap<String, Amount>,
}

/// One country in a snapshot: its rules, its periods, and which period is current.
#[derive(Debug)]
pub(super) struct CountryCatalog {
    rules: Arc<CountryRules>,
    periods: Vec<Period>,
    /// The index of the period last found current; only moves forward.
    current: AtomicUsize,
    /// The plain answer's own periods: runs of periods with the same prices merged,
    /// so the plain path of a country whose experiments or partner offers end, but
    /// whose prices do not change, never reads the clock. Each: its end, its answer.
    plain: Vec<(i64, Option<Rendered>)>,
    plain_current: AtomicUsize,
}

/// The entry of `list` in force at `now`, from the one last found (`current`, only
/// moved forward): an entry ending never (`i64::MAX`) is taken without reading the
/// clock; otherwise one compare against its end, and on passing it a search forward.
#[inline]
fn pick<'a, T>(
    list: &'a [T],
    end: impl Fn(&T) -> i64,
    current: &AtomicUsize,
    now: impl FnOnce() -> i64,
) -> &'a T {
    let i = current.load(Ordering::Relaxed);
    let p = &list[i];
    let until = end(p);
    if until == i64::MAX {
        return p;
    }
    let t = now();
    if t < until {
        return p;
    }
    let j = (i + list[i..].partition_point(|q| end(q) <= t)).min(list.len() - 1);
    current.fetch_max(j, Ordering::Relaxed);
    &list[j]
}

impl CountryCatalog {
    /// The period in force now (see [`pick`]).
    #[inline]
    pub(super) fn period(&self, now: impl FnOnce() -> i64) -> &Period {
        pick(&self.periods, |p| p.until_ms, &self.current, now)
    }

    /// The plain answer in force now.
    #[inline]
    pub(super) fn plain(&self, now: impl FnOnce() -> i64) -> Option<&Rendered> {
        pick(&self.plain, |p| p.0, &self.plain_current, now)
            .1
            .as_ref()
    }

    /// The catalog price of a plan now, and until when it holds.
    pub(super) fn price(&self, plan: &str, now: impl FnOnce() -> i64) -> (Option<&Amount>, i64) {
        let p = self.period(now);
        (p.prices.get(plan), p.until_ms)
    }

    /// Whether any plan is offered in the period in force when the snapshot was built.
    pub(super) fn has_plans(&self) -> bool {
        self.periods[0].plain.is_some()
    }

    /// The periods rendered (the current one and every later one).
    pub(super) fn period_count(&self) -> usize {
        self.periods.len()
    }

    /// The answer for a visitor and partner (both already checked) in this country now.
    pub(super) fn answer(
        &self,
        version: u64,
        plans: &[PlanEntry],
        visitor: Option<&str>,
        partner: Option<&str>,
        now: impl FnOnce() -> i64,
    ) -> Option<PlansAnswer<'_>> {
        let p = self.period(now);
        let partner_digit = match partner {
            None => 0,
            Some(name) => p
                .partners
                .binary_search_by(|q| q.as_str().cmp(name))
                .map_or(0, |i| i + 1),
        };
        if p.variants.is_empty() {
            // No plan at all, or beyond the cap: render from the rules.
            p.plain.as_ref()?;
            return Some(PlansAnswer::Built(render_at(
                &self.rules,
                version,
                plans,
                p.state_ms,
                p.until_ms,
                visitor,
                partner,
            )?));
        }
        let mut index = 0;
        if let Some(v) = visitor {
            for r in &p.running {
                let rule = &self.rules.experiments[r.rule];
                let digit = rule.cell_of(v).unwrap_or(rule.cells.len());
                index += digit * r.stride;
            }
        } else {
            for r in &p.running {
                index += self.rules.experiments[r.rule].cells.len() * r.stride;
            }
        }
        let at = index * (p.partners.len() + 1) + partner_digit;
        p.variants.get(at).map(PlansAnswer::Ready)
    }

    /// The answer at any instant `at` (a preview), rendered from the rules.
    pub(super) fn answer_at(
        &self,
        version: u64,
        plans: &[PlanEntry],
        at: i64,
        visitor: Option<&str>,
        partner: Option<&str>,
    ) -> Option<Rendered> {
        let until = self.rules.next_after(at);
        render_at(&self.rules, version, plans, at, until, visitor, partner)
    }
}

/// Renders the answer at `t` (a period's start, or a preview's instant) for a visitor
/// and partner: the slow path, shared by previews and countries beyond the cap.
fn render_at(
    rules: &CountryRules,
    version: u64,
    plans: &[PlanEntry],
    t: i64,
    until_ms: i64,
    visitor: Option<&str>,
    partner: Option<&str>,
) -> Option<Rendered> {
    let prices = rules.prices_at(t);
    if prices.is_empty() {
        return None;
    }
    let cells = match visitor {
        None => Vec::new(),
        Some(v) => rules
            .experiments
            .iter()
            .filter(|e| e.running_at(t))
            .filter_map(|e| e.cell_of(v).map(|c| (e, &e.cells[c])))
            .collect(),
    };
    let partners = rules.partners_at(t);
    let chosen = partner.and_then(|name| partners.iter().find(|(p, _)| *p == name));
    let spec = VariantSpec {
        cells,
        partner: chosen.map(|(p, offers)| (*p, offers.as_slice())),
    };
    Some(render(version, rules.cc, &prices, &spec, until_ms, plans))
}

/// Groups the catalog's rows by country into rules.
pub(super) fn rules_by_country(
    data: &CatalogData,
    plans: &[PlanEntry],
    index: impl Fn(&str) -> Option<usize>,
) -> BTreeMap<usize, CountryRules> {
    let known = |plan: &str| {
        plans
            .binary_search_by(|p| p.plan.id.as_str().cmp(plan))
            .is_ok()
    };
    let mut out: BTreeMap<usize, CountryRules> = BTreeMap::new();
    fn entry<'a>(
        out: &'a mut BTreeMap<usize, CountryRules>,
        index: &impl Fn(&str) -> Option<usize>,
        country: &str,
    ) -> Option<&'a mut CountryRules> {
        let i = index(country)?;
        let cc = country.as_bytes();
        Some(out.entry(i).or_insert_with(|| CountryRules {
            cc: [cc[0], cc[1]],
            base: BTreeMap::new(),
            scheduled: BTreeMap::new(),
            experiments: Vec::new(),
            offers: BTreeMap::new(),
        }))
    }
    macro_rules! rules_of {
        ($c:expr) => {
            entry(&mut out, &index, $c)
        };
    }
    for row in &data.prices {
        if !known(&row.plan_id) {
            tracing::warn!(country = %row.country, plan = %row.plan_id, "skipping price row for an unknown plan");
            continue;
        }
        let Some(r) = rules_of!(&row.country) else {
            tracing::warn!(country = %row.country, "skipping price row with a malformed country code");
            continue;
        };
        r.base.insert(
            row.plan_id.clone(),
            Amount {
                currency: row.currency.clone(),
                amount: row.amount.clone(),
            },
        );
    }
    for row in &data.scheduled {
        let Some(r) = rules_of!(&row.country) else {
            tracing::warn!(country = %row.country, "skipping scheduled price with a malformed country code");
            continue;
        };
        r.scheduled.entry(row.plan_id.clone()).or_default().push((
            row.effective_at_ms,
            row.amount.clone().map(|amount| Amount {
                currency: row.currency.clone(),
                amount,
            }),
        ));
    }
    for r in out.values_mut() {
        for rows in r.scheduled.values_mut() {
            rows.sort_by_key(|(t, _)| *t);
        }
    }
    for e in &data.experiments {
        let mut cells: Vec<_> = data
            .cells
            .iter()
            .filter(|c| c.experiment_id == e.id)
            .collect();
        cells.sort_by(|a, b| a.cell.cmp(&b.cell));
        let mut upto = 0u32;
        let cells: Vec<CellRule> = cells
            .into_iter()
            .map(|c| {
                upto = upto.saturating_add(c.weight_bp).min(BP_TOTAL);
                CellRule {
                    name: c.cell.clone(),
                    upto_bp: upto,
                    prices: data
                        .experiment_prices
                        .iter()
                        .filter(|p| p.experiment_id == e.id && p.cell == c.cell)
                        .map(|p| {
                            (
                                p.plan_id.clone(),
                                p.amount.clone().map(|amount| Amount {
                                    currency: p.currency.clone(),
                                    amount,
                                }),
                            )
                        })
                        .collect(),
                }
            })
            .collect();
        if cells.is_empty() {
            tracing::warn!(experiment = %e.id, "skipping an experiment without cells");
            continue;
        }
        let Some(r) = rules_of!(&e.country) else {
            tracing::warn!(experiment = %e.id, country = %e.country, "skipping an experiment with a malformed country code");
            continue;
        };
        r.experiments.push(ExperimentRule {
            id: e.id.clone(),
            starts_ms: e.starts_at_ms,
            ends_ms: end(e.ends_at_ms),
            cells,
        });
    }
    for o in &data.partner_offers {
        if !valid_id(&o.partner) {
            tracing::warn!(partner = %o.partner, "skipping a partner offer with a malformed partner id");
            continue;
        }
        let Some(r) = rules_of!(&o.country) else {
            tracing::warn!(partner = %o.partner, country = %o.country, "skipping a partner offer with a malformed country code");
            continue;
        };
        r.offers
            .entry(o.partner.clone())
            .or_default()
            .push(o.clone());
    }
    for r in out.values_mut() {
        r.experiments.sort_by(|a, b| a.id.cmp(&b.id));
    }
    out
}

/// Renders one period: the state in force at `state_at`, until `until_ms`.
fn build_period(
    rules: &CountryRules,
    version: u64,
    plans: &[PlanEntry],
    state_at: i64,
    until_ms: i64,
    answers_until: (i64, i64),
) -> Period {
    let (plain_until, variants_until) = answers_until;
    let prices = rules.prices_at(state_at);
    let running: Vec<usize> = rules
        .experiments
        .iter()
        .enumerate()
        .filter(|(_, e)| e.running_at(state_at))
        .map(|(i, _)| i)
        .collect();
    let partners = rules.partners_at(state_at);
    let mut stride = 1usize;
    let mut running_exps = Vec::with_capacity(running.len());
    for &i in &running {
        running_exps.push(RunningExperiment { rule: i, stride });
        stride = stride.saturating_mul(rules.experiments[i].cells.len() + 1);
    }
    let total = stride.saturating_mul(partners.len() + 1);
    let empty = VariantSpec {
        cells: Vec::new(),
        partner: None,
    };
    let plain = (!prices.is_empty())
        .then(|| render(version, rules.cc, &prices, &empty, plain_until, plans));
    let mut variants = Vec::new();
    if plain.is_some() && total <= MAX_PRERENDERED_VARIANTS {
        variants.reserve(total);
        for index in 0..stride {
            let mut cells = Vec::new();
            let mut rest = index;
            for &i in &running {
                let e = &rules.experiments[i];
                let radix = e.cells.len() + 1;
                let digit = rest % radix;
                rest /= radix;
                if digit < e.cells.len() {
                    cells.push((e, &e.cells[digit]));
                }
            }
            for partner in 0..=partners.len() {
                let spec = VariantSpec {
                    cells: cells.clone(),
                    partner: partner
                        .checked_sub(1)
                        .map(|k| (partners[k].0, partners[k].1.as_slice())),
                };
                if spec.cells.is_empty() && spec.partner.is_none() {
                    // Same bytes as the plain answer: share them.
                    if let Some(p) = &plain {
                        variants.push(p.clone());
                        continue;
                    }
                }
                variants.push(render(
                    version,
                    rules.cc,
                    &prices,
                    &spec,
                    variants_until,
                    plans,
                ));
            }
        }
    } else if plain.is_some() {
        tracing::warn!(
            country = %String::from_utf8_lossy(&rules.cc),
            variants = total,
            "too many variants to pre-render; this country's visitors and partners are rendered per request"
        );
    }
    Period {
        state_ms: state_at,
        until_ms,
        plain,
        running: running_exps,
        partners: partners.iter().map(|(p, _)| p.to_string()).collect(),
        variants,
        prices,
    }
}

/// A country's catalog from `now` on: the period in force now and every later one.
pub(super) fn build_country(
    rules: CountryRules,
    version: u64,
    plans: &[PlanEntry],
    now: i64,
) -> CountryCatalog {
    let upcoming: Vec<i64> = rules.instants().into_iter().filter(|t| *t > now).collect();
    // Each period's state at its start (the first: now), and its end.
    let starts: Vec<i64> = std::iter::once(now)
        .chain(upcoming.iter().copied())
        .collect();
    let ends: Vec<i64> = upcoming
        .iter()
        .copied()
        .chain(std::iter::once(i64::MAX))
        .collect();
    // `valid_until` is the next change that affects the answer: the plain answer
    // changes only with the prices, a variant also with the running experiments and
    // the partner offers, so a run of periods equal in that respect shares one end.
    let plain_keys: Vec<String> = starts
        .iter()
        .map(|t| format!("{:?}", rules.prices_at(*t)))
        .collect();
    let variant_keys: Vec<String> = starts
        .iter()
        .zip(&plain_keys)
        .map(|(t, prices)| {
            let running: Vec<&str> = rules
                .experiments
                .iter()
                .filter(|e| e.running_at(*t))
                .map(|e| e.id.as_str())
                .collect();
            format!("{prices}{running:?}{:?}", rules.partners_at(*t))
        })
        .collect();
    let run_end = |keys: &[String], i: usize| {
        let mut j = i;
        while j + 1 < keys.len() && keys[j + 1] == keys[i] {
            j += 1;
        }
        ends[j]
    };
    let mut periods = Vec::with_capacity(starts.len());
    for (i, &start) in starts.iter().enumerate() {
        let answers_until = (run_end(&plain_keys, i), run_end(&variant_keys, i));
        periods.push(build_period(
            &rules,
            version,
            plans,
            start,
            ends[i],
            answers_until,
        ));
    }
    let mut plain = Vec::new();
    let mut i = 0;
    while i < periods.len() {
        let end = run_end(&plain_keys, i);
        plain.push((end, periods[i].plain.clone()));
        while i < periods.len() && periods[i].until_ms <= end {
            i += 1;
        }
        if end == i64::MAX {
            break;
        }
    }
    CountryCatalog {
        rules: Arc::new(rules),
        periods,
        current: AtomicUsize::new(0),
        plain,
        plain_current: AtomicUsize::new(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_stable_and_spreads_evenly() {
        assert_eq!(allocation_hash("e", "v1"), allocation_hash("e", "v1"));
        assert_ne!(allocation_hash("e", "v1"), allocation_hash("f", "v1"));
        // Pinned (computed independently): a change of the hash would move every
        // visitor of every running experiment, across nodes and restarts.
        assert_eq!(
            allocation_hash("us-ads-price", "visitor-1"),
            0x3455_0306_e87c_e80e
        );
        assert_eq!(bucket("us-ads-price", "visitor-1"), 2044);
        assert_eq!(bucket("us-premium-ladder", "visitor-42"), 4600);
        assert_eq!(bucket("us-ads-price", "visitor-42"), 6345);
        let mut counts = [0u32; 10];
        for i in 0..100_000 {
            counts[(bucket("x", &format!("v{i}")) / 1000) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn ids() {
        assert!(valid_id("abc-DEF_123"));
        assert!(valid_id(&"a".repeat(64)));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(!valid_id("a b"));
        assert!(!valid_id("é"));
    }
}
