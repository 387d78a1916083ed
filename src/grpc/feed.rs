//! The catalog as gRPC messages, kept current with the node's snapshot, and what
//! changed between versions (for `WatchCatalog` and `GetPlans`).
//!
//! Each snapshot the node installs is turned into one [`FeedState`] by one task
//! ([`CatalogFeed::run`], woken by [`CatalogHandle::subscribe`]), never per caller.
//! A state remembers, per country, the version at which its plans last changed as
//! this node saw them, and when countries stopped offering plans. A caller holding
//! version `k` that this node also built a state for needs exactly the countries
//! changed (or removed) after `k`: a country that differs between `k` and now changed
//! at some state after `k`. A `k` this node never saw (it started later, the catalog
//! moved twice between two of its wake-ups, another node's version) gets everything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::convert::country_plans;
use super::pb;
use crate::catalog::{CatalogHandle, Snapshot};

/// How many versions a node remembers having built; a caller further behind is sent
/// the whole catalog (a few tens of kilobytes).
const VERSIONS_KEPT: usize = 4096;

/// One country's plans and the version at which they last changed.
#[derive(Debug)]
struct Tracked {
    plans: Arc<pb::CountryPlans>,
    changed_at: u64,
}

/// The catalog at one version, as messages.
#[derive(Debug)]
pub struct FeedState {
    pub version: u64,
    countries: BTreeMap<[u8; 2], Tracked>,
    /// Countries that offered plans at a version this node saw and no longer do, with
    /// the version at which they stopped.
    removed: BTreeMap<[u8; 2], u64>,
    /// Versions this node built a state for (the newest [`VERSIONS_KEPT`]).
    seen: BTreeSet<u64>,
}

/// Which countries a caller watches: `None` all.
pub type Filter = Option<BTreeSet<[u8; 2]>>;

fn wanted(filter: &Filter, cc: &[u8; 2]) -> bool {
    filter.as_ref().is_none_or(|f| f.contains(cc))
}

fn all_codes() -> impl Iterator<Item = [u8; 2]> {
    (b'A'..=b'Z').flat_map(|a| (b'A'..=b'Z').map(move |b| [a, b]))
}

/// The same plans, whatever version they were rendered at.
fn same_plans(a: &pb::CountryPlans, b: &pb::CountryPlans) -> bool {
    a.currency == b.currency && a.plans == b.plans
}

impl FeedState {
    /// The state of `snapshot`, following `prev` (the node's previous state, if any).
    fn build(snapshot: &Snapshot, prev: Option<&FeedState>) -> FeedState {
        let version = snapshot.version();
        let mut countries = BTreeMap::new();
        for cc in all_codes() {
            let Some(answer) = snapshot.country(cc) else {
                continue;
            };
            // The body is the snapshot's own rendering of a struct of strings and
            // numbers; it always decodes (a unit test holds that), but a country
            // that did not would be left out rather than stop the feed.
            let plans = match country_plans(&answer.body) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    tracing::error!(country = %String::from_utf8_lossy(&cc), error = %e, "cannot decode a rendered plans answer");
                    continue;
                }
            };
            let changed_at = match prev.and_then(|p| p.countries.get(&cc)) {
                Some(t) if same_plans(&t.plans, &plans) => t.changed_at,
                _ => version,
            };
            countries.insert(cc, Tracked { plans, changed_at });
        }
        let mut removed = prev.map(|p| p.removed.clone()).unwrap_or_default();
        removed.retain(|cc, _| !countries.contains_key(cc));
        if let Some(p) = prev {
            for cc in p.countries.keys() {
                if !countries.contains_key(cc) {
                    removed.insert(*cc, version);
                }
            }
        }
        let mut seen = prev.map(|p| p.seen.clone()).unwrap_or_default();
        seen.insert(version);
        while seen.len() > VERSIONS_KEPT {
            seen.pop_first();
        }
        FeedState {
            version,
            countries,
            removed,
            seen,
        }
    }

    /// A country's plans at this version.
    pub fn country(&self, cc: &[u8; 2]) -> Option<&pb::CountryPlans> {
        self.countries.get(cc).map(|t| &*t.plans)
    }

    /// What a caller holding `known` (if anything) needs to hold this version, of the
    /// countries it watches.
    pub fn update_since(&self, known: Option<u64>, filter: &Filter) -> pb::CatalogUpdate {
        let mut update = pb::CatalogUpdate {
            version: self.version,
            ..Default::default()
        };
        match known {
            // Up to date: an empty update says so.
            Some(k) if k == self.version => {}
            Some(k) if k < self.version && self.seen.contains(&k) => {
                update.countries = self
                    .countries
                    .iter()
                    .filter(|(cc, t)| t.changed_at > k && wanted(filter, cc))
                    .map(|(_, t)| (*t.plans).clone())
                    .collect();
                update.removed = self
                    .removed
                    .iter()
                    .filter(|(cc, at)| **at > k && wanted(filter, cc))
                    .map(|(cc, _)| String::from_utf8_lossy(cc).into_owned())
                    .collect();
            }
            _ => {
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

/// The node's catalog as messages, one state per installed snapshot.
pub struct CatalogFeed {
    catalog: Arc<CatalogHandle>,
    /// The newest state: read by `GetPlans` (a load) and by watchers once woken.
    current: ArcSwap<FeedState>,
    /// The newest state's version, sent after `current` is stored: watchers wake on
    /// it (a watch keeps only the newest value, so a slow watcher skips versions but
    /// always reads the newest state).
    notify: watch::Sender<u64>,
}

impl CatalogFeed {
    pub fn new(catalog: Arc<CatalogHandle>) -> Arc<CatalogFeed> {
        let first = FeedState::build(&catalog.load(), None);
        Arc::new(CatalogFeed {
            notify: watch::Sender::new(first.version),
            current: ArcSwap::from_pointee(first),
            catalog,
        })
    }

    /// Follows the node's installed snapshots until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut installed = self.catalog.subscribe();
        loop {
            tokio::select! {
                changed = installed.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
            self.refresh();
        }
    }

    /// Builds the state of the current snapshot if it is newer than the feed's.
    pub fn refresh(&self) {
        let snapshot = self.catalog.load();
        let prev = self.current.load_full();
        if snapshot.version() <= prev.version {
            return;
        }
        let next = FeedState::build(&snapshot, Some(&prev));
        let version = next.version;
        self.current.store(Arc::new(next));
        self.notify.send_replace(version);
    }

    /// The newest state.
    pub fn current(&self) -> Arc<FeedState> {
        self.current.load_full()
    }

    /// Wakes when a newer state is stored.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// A country's plans from `snapshot` (the one the caller answers from): the
    /// feed's message when the feed has caught up with it, else decoded on the spot
    /// (the moment between an install and the feed's refresh).
    pub fn plans(&self, snapshot: &Snapshot, cc: [u8; 2]) -> Option<pb::CountryPlans> {
        let answer = snapshot.country(cc)?;
        let state = self.current.load();
        if state.version == snapshot.version() {
            if let Some(p) = state.country(&cc) {
                return Some(p.clone());
            }
        }
        country_plans(&answer.body).ok()
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

    #[test]
    fn updates_carry_only_what_changed_since_a_seen_version() {
        let mut d = data(10);
        let s10 = FeedState::build(&Snapshot::build(&d), None);
        set_price(&mut d, "US", "standard", "20.49");
        d.version = 11;
        let s11 = FeedState::build(&Snapshot::build(&d), Some(&s10));
        d.prices.retain(|r| r.country != "JP");
        set_price(&mut d, "FR", "standard", "15.99");
        d.version = 12;
        let s12 = FeedState::build(&Snapshot::build(&d), Some(&s11));

        let all = s12.update_since(None, &None);
        assert!(all.full);
        assert_eq!(all.countries.len(), 244);
        assert!(all.countries.iter().all(|c| c.catalog_version == 12));

        let from10 = s12.update_since(Some(10), &None);
        assert!(!from10.full);
        assert_eq!(codes(&from10), ["FR", "US"]);
        assert_eq!(from10.removed, ["JP"]);

        let from11 = s12.update_since(Some(11), &None);
        assert_eq!(codes(&from11), ["FR"]);
        assert_eq!(from11.removed, ["JP"]);

        let current = s12.update_since(Some(12), &None);
        assert!(!current.full && current.countries.is_empty() && current.removed.is_empty());

        // Never seen here: everything.
        assert!(s12.update_since(Some(9), &None).full);
        assert!(s12.update_since(Some(13), &None).full);

        let only_us: Filter = Some([*b"US", *b"JP"].into_iter().collect());
        let f = s12.update_since(Some(11), &only_us);
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
        let s13 = FeedState::build(&Snapshot::build(&d13), Some(&s12));
        assert!(s13.removed.is_empty());
        assert_eq!(codes(&s13.update_since(Some(12), &only_us)), ["JP", "US"]);
    }
}
