//! `readtier reconcile`: walk the store and every bucket of the tier, compare, repair.
//!
//! The walk visits every bucket that either the store has members in (store pages in
//! id order) or some zone holds (a SCAN of each zone's nodes), and reads each bucket
//! of each zone once (`HGETALL`). Per member and zone:
//! - **ok**: the tier holds the store's record at the store's version, or a tombstone
//!   for a member the store does not have;
//! - **missing**: the tier holds nothing (normal for a cold member; filled only with
//!   `--fill-missing`, since reads fill on demand);
//! - **stale**: the tier holds an older version, a different record at the same
//!   version, a newer version than the store, an undecodable value, or a record for a
//!   member the store does not have.
//!
//! Repairs never overwrite a newer write made meanwhile (by the relay, or a read's
//! fill). Where the store is newer, a versioned set. Anything else first re-reads the
//! member from the store (the page may be older than the tier: the relay may have
//! written a newer version since, which is not drift) and then replaces the exact
//! value it saw, by compare-and-set. Store rows that cannot be read are left alone.

use std::collections::{BTreeMap, BTreeSet};

use super::encoding::{decode, TierEntry};
use super::{Tier, TierError};
use crate::member::Member;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tier(#[from] TierError),
}

/// Counts for one zone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ZoneCounts {
    pub zone: String,
    pub missing: u64,
    pub stale: u64,
    pub repaired: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Members read from the store.
    pub checked: u64,
    /// Store rows that could not be read (left as the tier holds them).
    pub unreadable: u64,
    /// Buckets visited (held by the store, a zone, or both).
    pub buckets: u64,
    pub zones: Vec<ZoneCounts>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "checked {} members in {} buckets",
            self.checked, self.buckets
        )?;
        if self.unreadable > 0 {
            writeln!(
                f,
                "unreadable store rows: {} (see the log)",
                self.unreadable
            )?;
        }
        for z in &self.zones {
            writeln!(
                f,
                "zone {}: missing {}, stale {}, repaired {}",
                z.zone, z.missing, z.stale, z.repaired
            )?;
        }
        Ok(())
    }
}

/// What the store has for one bucket.
#[derive(Default)]
struct Wanted {
    members: BTreeMap<u64, Member>,
    unreadable: BTreeSet<u64>,
}

/// Walks the store and every zone's buckets, and repairs every zone.
pub async fn reconcile(
    store: &Store,
    tier: &Tier,
    fill_missing: bool,
) -> Result<Report, ReconcileError> {
    const PAGE: i64 = 10_000;
    let mut report = Report {
        zones: tier
            .zones
            .iter()
            .map(|z| ZoneCounts {
                zone: z.name.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let size = tier.bucket_size();
    let mut tier_only: BTreeSet<u64> = BTreeSet::new();
    for zone in 0..tier.zones.len() {
        tier_only.extend(tier.buckets_in(zone).await?);
    }
    let mut from = 1u64;
    loop {
        let page = store.members_range(from, PAGE).await?;
        let Some(last) = page.last() else { break };
        from = match last {
            Ok(m) => m.id,
            Err(bad) => bad.id,
        } + 1;
        report.checked += page.len() as u64;
        let mut buckets: BTreeMap<u64, Wanted> = BTreeMap::new();
        for row in page {
            match row {
                Ok(m) => {
                    buckets
                        .entry(m.id / size)
                        .or_default()
                        .members
                        .insert(m.id, m);
                }
                Err(bad) => {
                    report.unreadable += 1;
                    buckets
                        .entry(bad.id / size)
                        .or_default()
                        .unreadable
                        .insert(bad.id);
                }
            }
        }
        // A bucket can straddle two pages: finish it before moving on.
        if let Some((&b, _)) = buckets.iter().next_back() {
            let end = (b + 1) * size;
            if from < end {
                for row in store.members_range(from, (end - from) as i64).await? {
                    match row {
                        Ok(m) if m.id < end => {
                            buckets.entry(b).or_default().members.insert(m.id, m);
                            report.checked += 1;
                        }
                        Err(bad) if bad.id < end => {
                            report.unreadable += 1;
                            buckets.entry(b).or_default().unreadable.insert(bad.id);
                        }
                        _ => {}
                    }
                }
                from = end;
            }
        }
        for (bucket, wanted) in &buckets {
            tier_only.remove(bucket);
            check_bucket(store, tier, *bucket, wanted, fill_missing, &mut report).await?;
        }
    }
    // Buckets a zone holds where the store has no member at all.
    for bucket in tier_only {
        check_bucket(store, tier, bucket, &Wanted::default(), false, &mut report).await?;
    }
    Ok(report)
}

async fn check_bucket(
    store: &Store,
    tier: &Tier,
    bucket: u64,
    wanted: &Wanted,
    fill_missing: bool,
    report: &mut Report,
) -> Result<(), ReconcileError> {
    report.buckets += 1;
    for zone in 0..tier.zones.len() {
        let held: BTreeMap<u64, Vec<u8>> =
            tier.bucket_in(zone, bucket).await?.into_iter().collect();
        for (id, m) in &wanted.members {
            let want = TierEntry::Member(m.clone());
            let counts = &mut report.zones[zone];
            match held.get(id) {
                None => {
                    counts.missing += 1;
                    if fill_missing {
                        tier.set_in(zone, *id, &want).await?;
                        counts.repaired += 1;
                    }
                }
                Some(raw) => match decode(*id, raw) {
                    Some(entry) if entry == want => {}
                    Some(entry) if entry.version() < m.version => {
                        counts.stale += 1;
                        tier.set_in(zone, *id, &want).await?;
                        counts.repaired += 1;
                    }
                    _ => repair(store, tier, zone, *id, raw, &mut report.zones[zone]).await?,
                },
            }
        }
        // What the zone holds for ids the store did not have in this bucket.
        for (id, raw) in &held {
            if wanted.members.contains_key(id) || wanted.unreadable.contains(id) {
                continue;
            }
            if let Some(TierEntry::Gone { .. }) = decode(*id, raw) {
                continue;
            }
            repair(store, tier, zone, *id, raw, &mut report.zones[zone]).await?;
        }
    }
    Ok(())
}

/// The zone holds `raw` for `id`, which did not match the page read from the store:
/// reads the member again and, if it still does not match, replaces exactly `raw`.
async fn repair(
    store: &Store,
    tier: &Tier,
    zone: usize,
    id: u64,
    raw: &[u8],
    counts: &mut ZoneCounts,
) -> Result<(), ReconcileError> {
    let now = match store.get_member(id).await {
        Ok(m) => m,
        // Unreadable now: leave it.
        Err(StoreError::BadRow(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let held = decode(id, raw);
    let fine = match (&now, &held) {
        (Some(m), Some(TierEntry::Member(h))) => h == m,
        (None, Some(TierEntry::Gone { .. })) => true,
        _ => false,
    };
    if fine {
        return Ok(());
    }
    counts.stale += 1;
    let fixed = match (&now, &held) {
        // The store moved past what the zone holds: a versioned set is safe.
        (Some(m), Some(h)) if m.version > h.version() => {
            tier.set_in(zone, id, &TierEntry::Member(m.clone())).await?
        }
        (Some(m), _) => {
            tier.cas_in(zone, id, raw, Some(&TierEntry::Member(m.clone())))
                .await?
        }
        // A record for a member the store does not have.
        (None, _) => tier.cas_in(zone, id, raw, None).await?,
    };
    if fixed {
        counts.repaired += 1;
    }
    Ok(())
}
