//! The catalog as gRPC messages, kept current with the node's snapshot and its clock,
//! and what changed between states (for `WatchCatalog`).
//!
//! Each snapshot the node installs, and each instant a scheduled price change takes
//! effect in it (issue 12: no install, each node switches on its own clock), is turned
//! into one [`FeedState`] by one task ([`CatalogFeed::run`], woken by
//! [`CatalogHandle::subscribe`] or by a timer at the state's next switch), never per
//! caller. States are numbered by an *epoch* that grows with every build; a state
//! remembers, per country, the epoch at which its plans last changed as this node saw
//! them, when countries stopped offering plans, and the first epoch of each catalog
//! version it built. A stream holding epoch `e` needs exactly the countries changed
//! after `e`. A caller resuming with `known_version` `k` that this node built needs the
//! countries changed after `k`'s first epoch (a switch it may have seen already is
//! sent again: a replace, harmless). A `k` this node never saw (it started later, the
//! catalog moved twice between two of its wake-ups, another node's version) gets
//! everything. A `k` newer than this node's version (the caller last watched a node
//! further ahead) gets nothing but heartbeats until this node has caught up to it
//! (`service::Watch`): an older catalog would take the caller back in time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::convert::country_plans;
use super::pb;
use crate::catalog::{clock_ms, CatalogHandle, Snapshot};

/// How many versions a node remembers having built; a caller further behind is sent
/// the whole catalog (a few tens of kilobytes).
const VERSIONS_KEPT: usize = 4096;

/// One country's plans and the epoch at which they last changed.
#[derive(Debug)]
struct Tracked {
    plans: Arc<pb::CountryPlans>,
    changed_at: u64,
}

/// The catalog at one version and instant, as messages.
#[derive(Debug)]
pub struct FeedState {
    pub version: u64,
    /// Grows by one with every state built.
    pub epoch: u64,
    /// When the plans of some country next change by schedule (ms since the epoch;
    /// `i64::MAX`: never): the feed builds its next state then.
    pub next_switch_ms: i64,
    countries: BTreeMap<[u8; 2], Tracked>,
    /// Countries that offered plans in a state this node built and no longer do, with
    /// the epoch at which they stopped.
    removed: BTreeMap<[u8; 2], u64>,
    /// Versions this node built a state for (the newest [`VERSIONS_KEPT`]), with the
    /// epoch of the first state it built for each.
    seen: BTreeMap<u64, u64>,
}

/// Which countries a caller watches: `None` all.
pub type Filter = Option<BTreeSet<[u8; 2]>>;

fn wanted(filter: &Filter, cc: &[u8; 2]) -> bool {
    filter.as_ref().is_none_or(|f| f.contains(cc))
}

fn all_codes() -> impl Iterator<Item = [u8; 2]> {
    (b'A'..=b'Z').flat_map(|a| (b'A'..=b'Z').map(move |b| [a, b]))
}

/// The same plans until the same instant, whatever version they were rendered at (a
/// newly scheduled change alters `valid_until_ms` alone, and callers hear of it).
fn same_plans(a: &pb::CountryPlans, b: &pb::CountryPlans) -> bool {
    a.currency == b.currency && a.plans == b.plans && a.valid_until_ms == b.valid_until_ms
}

impl FeedState {
    /// The state of `snapshot` at `now` (ms since the epoch), following `prev` (the
    /// node's previous state, if any).
    fn build(snapshot: &Snapshot, now: i64, prev: Option<&FeedState>) -> FeedState {
        let version = snapshot.version();
        let epoch = prev.map_or(1, |p| p.epoch + 1);
        let mut countries = BTreeMap::new();
        let mut next_switch_ms = i64::MAX;
        for cc in all_codes() {
            let Ok(answer) = snapshot.plans(cc, None, None, || now) else {
                continue;
            };
            next_switch_ms = next_switch_ms.min(answer.until_ms);
            // The body is the snapshot's own rendering of a struct of strings and
            // numbers; it always decodes (a unit test holds that), but a country
            // that did not would be left out rather than stop the feed.
            let plans = match country_plans(&answer.body, answer.until_ms) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    tracing::error!(country = %String::from_utf8_lossy(&cc), error = %e, "cannot decode a rendered plans answer");
                    continue;
                }
            };
            let changed_at = match prev.and_then(|p| p.countries.get(&cc)) {
                Some(t) if same_plans(&t.plans, &plans) => t.changed_at,
                _ => epoch,
            };
            countries.insert(cc, Tracked { plans, changed_at });
        }
        let mut removed = prev.map(|p| p.removed.clone()).unwrap_or_default();
        removed.retain(|cc, _| !countries.contains_key(cc));
        if let Some(p) = prev {
            for cc in p.countries.keys() {
                if !countries.contains_key(cc) {
                    removed.insert(*cc, epoch);
                }
            }
        }
        let mut seen = prev.map(|p| p.seen.clone()).unwrap_or_default();
        seen.entry(version).or_insert(epoch);
        while seen.len() > VERSIONS_KEPT {
            seen.pop_first();
        }
        FeedState {
            version,
            epoch,
            next_switch_ms,
            countries,
            removed,
            seen,
        }
    }

    /// A country's plans in this state.
    pub fn country(&self, cc: &[u8; 2]) -> Option<&pb::CountryPlans> {
        self.countries.get(cc).map(|t| &*t.plans)
    }

    /// The epoch a caller holding catalog version `known` has seen for certain: the
    /// first state this node built for it (`None`: never built here).
    pub fn epoch_of(&self, known: u64) -> Option<u64> {
        self.seen.get(&known).copied()
    }

    /// What a caller that has seen this node's state `held` (an epoch; `None`:
    /// nothing) needs to hold this state, of the countries it watches.
    pub fn update_since(&self, held: Option<u64>, filter: &Filter) -> pb::CatalogUpdate {
        let mut update = pb::CatalogUpdate {
            version: self.version,
            // The earliest scheduled change among the watched countries (0: none).
            valid_until_ms: self
                .countries
                .iter()
                .filter(|(cc, t)| t.plans.valid_until_ms != 0 && wanted(filter, cc))
                .map(|(_, t)| t.plans.valid_until_ms)
                .min()
                .unwrap_or(0),
            ..Default::default()
        };
        match held {
            // Up to date: an empty update says so.
            Some(e) if e >= self.epoch => {}
            Some(e) => {
                update.countries = self
                    .countries
                    .iter()
                    .filter(|(cc, t)| t.changed_at > e && wanted(filter, cc))
                    .map(|(_, t)| (*t.plans).clone())
                    .collect();
                update.removed = self
                    .removed
                    .iter()
                    .filter(|(cc, at)| **at > e && wanted(filter, cc))
                    .map(|(cc, _)| String::from_utf8_lossy(cc).into_owned())
                    .collect();
            }
            None => {
                update.full = true;
                update.countries = self
                    .countries
                    .iter()
                    .filter(|(cc, _)| wanted(filter, cc))
                    .map(|(_, t)| (*t.plans).clone())
                    .collect();
            }
        }
        update
    }
}

/// The node's catalog as messages, one state per installed snapshot and per
/// scheduled switch.
pub struct CatalogFeed {
    catalog: Arc<CatalogHandle>,
    /// The newest state: read by watchers once woken.
    current: ArcSwap<FeedState>,
    /// The newest state's epoch, sent after `current` is stored: watchers wake on it
    /// (a watch keeps only the newest value, so a slow watcher skips states but always
    /// reads the newest).
    notify: watch::Sender<u64>,
}

impl CatalogFeed {
    pub fn new(catalog: Arc<CatalogHandle>) -> Arc<CatalogFeed> {
        let first = FeedState::build(&catalog.load(), clock_ms(), None);
        Arc::new(CatalogFeed {
            notify: watch::Sender::new(first.epoch),
            current: ArcSwap::from_pointee(first),
            catalog,
        })
    }

    /// Follows the node's installed snapshots, and the clock to each scheduled switch,
    /// until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut installed = self.catalog.subscribe();
        loop {
            let next = self.current.load().next_switch_ms;
            // Sleeps to the switch instant in whole ms, then a ms more: the state is
            // built at an instant the snapshot's answers have already switched at.
            let wait =
                u64::try_from(next.saturating_sub(clock_ms()).saturating_add(1)).unwrap_or(0);
            tokio::select! {
                changed = installed.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(std::time::Duration::from_millis(wait)), if next != i64::MAX => {}
                _ = stop.cancelled() => return,
            }
            self.refresh();
        }
    }

    /// Builds a new state if the node's snapshot is newer than the feed's, or a
    /// scheduled switch has come.
    pub fn refresh(&self) {
        let snapshot = self.catalog.load();
        let prev = self.current.load_full();
        let now = clock_ms();
        if snapshot.version() <= prev.version && now < prev.next_switch_ms {
            return;
        }
        let next = FeedState::build(&snapshot, now, Some(&prev));
        let epoch = next.epoch;
        self.current.store(Arc::new(next));
        self.notify.send_replace(epoch);
    }

    /// The newest state.
    pub fn current(&self) -> Arc<FeedState> {
        self.current.load_full()
    }

    /// Wakes when a newer state is stored.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{CatalogData, Price};

    fn data(version: u64) -> CatalogData {
        let mut d = CatalogData::reference().unwrap();
        d.version = version;
        d
    }

    fn set_price(d: &mut CatalogData, country: &str, plan: &str, amount: &str) {
        let row = d
            .prices
            .iter_mut()
            .find(|r| r.country == country && r.plan_id == plan)
            .unwrap();
        row.amount = Price::parse(amount).unwrap();
    }

    fn codes(u: &pb::CatalogUpdate) -> Vec<String> {
        u.countries.iter().map(|c| c.country.clone()).collect()
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn updates_carry_only_what_changed_since_a_seen_version() {
        let mut d = data(10);
        let s10 = FeedState::build(&Snapshot::build(&d), NOW, None);
        set_price(&mut d, "US", "standard", "20.49");
        d.version = 11;
        let s11 = FeedState::build(&Snapshot::build(&d), NOW, Some(&s10));
        d.prices.retain(|r| r.country != "JP");
        set_price(&mut d, "FR", "standard", "15.99");
        d.version = 12;
        let s12 = FeedState::build(&Snapshot::build(&d), NOW, Some(&s11));
        assert_eq!((s10.epoch, s11.epoch, s12.epoch), (1, 2, 3));

        let all = s12.update_since(None, &None);
        assert!(all.full);
        assert_eq!(all.countries.len(), 244);
        assert!(all.countries.iter().all(|c| c.catalog_version == 12));
        assert_eq!(all.valid_until_ms, 0, "nothing scheduled");

        let from10 = s12.update_since(s12.epoch_of(10), &None);
        assert!(!from10.full);
        assert_eq!(codes(&from10), ["FR", "US"]);
        assert_eq!(from10.removed, ["JP"]);

        let from11 = s12.update_since(s12.epoch_of(11), &None);
        assert_eq!(codes(&from11), ["FR"]);
        assert_eq!(from11.removed, ["JP"]);

        let current = s12.update_since(s12.epoch_of(12), &None);
        assert!(!current.full && current.countries.is_empty() && current.removed.is_empty());

        // Never seen here: everything.
        assert_eq!(s12.epoch_of(9), None);
        assert!(s12.update_since(s12.epoch_of(13), &None).full);

        let only_us: Filter = Some([*b"US", *b"JP"].into_iter().collect());
        let f = s12.update_since(s12.epoch_of(11), &only_us);
        assert!(f.countries.is_empty());
        assert_eq!(f.removed, ["JP"]);
        let f = s12.update_since(None, &only_us);
        assert_eq!(codes(&f), ["US"]);
        let us = f.countries[0]
            .plans
            .iter()
            .find(|p| p.id == "standard")
            .unwrap();
        assert_eq!(us.price.as_ref().unwrap().amount, "20.49");

        // A country that comes back is no longer removed.
        let d13 = data(13);
        let s13 = FeedState::build(&Snapshot::build(&d13), NOW, Some(&s12));
        assert!(s13.removed.is_empty());
        let f = s13.update_since(s13.epoch_of(12), &only_us);
        assert_eq!(codes(&f), ["JP", "US"]);
    }

    #[test]
    fn a_scheduled_switch_is_a_new_state_of_the_same_version() {
        let mut d = data(20);
        let at = NOW + 5_000;
        d.scheduled.push(crate::plan::ScheduledPrice {
            country: "DE".into(),
            plan_id: "standard".into(),
            currency: "EUR".into(),
            amount: Some(Price::parse("99.99").unwrap()),
            effective_at_ms: at,
        });
        let snapshot = Snapshot::build(&d);
        let before = FeedState::build(&snapshot, NOW, None);
        assert_eq!(before.next_switch_ms, at);
        let first = before.update_since(None, &None);
        assert_eq!(first.valid_until_ms, at);
        let de = |u: &pb::CatalogUpdate| {
            let c = u.countries.iter().find(|c| c.country == "DE").unwrap();
            let p = c.plans.iter().find(|p| p.id == "standard").unwrap();
            (p.price.as_ref().unwrap().amount.clone(), c.valid_until_ms)
        };
        assert_ne!(de(&first).0, "99.99");
        assert_eq!(de(&first).1, at);

        // At the instant: the same snapshot and version, a new state holding the new
        // price; a stream at the old state gets DE alone, as does a caller resuming
        // with the version (it may not have seen the switch).
        let after = FeedState::build(&snapshot, at, Some(&before));
        assert_eq!(after.version, before.version);
        assert_eq!(after.next_switch_ms, i64::MAX);
        let u = after.update_since(Some(before.epoch), &None);
        assert_eq!(codes(&u), ["DE"]);
        assert_eq!(de(&u), ("99.99".to_string(), 0));
        assert_eq!(
            codes(&after.update_since(after.epoch_of(20), &None)),
            ["DE"]
        );
        assert!(after
            .update_since(Some(after.epoch), &None)
            .countries
            .is_empty());
    }
}
