//! `readtier reconcile`: walk the store, compare every zone of the tier, repair drift.
//!
//! The walk goes through the store's members in id order, a page at a time, and reads
//! each bucket of each zone once (`HGETALL`). Per member and zone:
//! - **ok**: the tier holds the store's record at the store's version;
//! - **missing**: the tier holds nothing (normal for a cold member; filled only with
//!   `--fill-missing`, since reads fill on demand);
//! - **stale**: the tier holds an older version, a different record at the same
//!   version, a newer version than the store (a tombstone shadowing a re-inserted id),
//!   an undecodable value, or a record for a member the store does not have. Stale
//!   values are repaired: a versioned set where the store's version is newer, an
//!   unconditional write or a field delete otherwise.
//!
//! Buckets in which the store has no member at all are not visited.

use std::collections::BTreeMap;

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
    pub zones: Vec<ZoneCounts>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "checked {} members", self.checked)?;
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

/// Walks the store and repairs every zone.
pub async fn reconcile(
    store: &Store,
    tier: &Tier,
    fill_missing: bool,
) -> Result<Report, ReconcileError> {
    const PAGE: i64 = 10_000;
    let mut report = Report {
        checked: 0,
        unreadable: 0,
        zones: tier
            .zones
            .iter()
            .map(|z| ZoneCounts {
                zone: z.name.clone(),
                ..Default::default()
            })
            .collect(),
    };
    let size = tier.bucket_size();
    let mut from = 1u64;
    loop {
        let page = store.members_range(from, PAGE).await?;
        let Some(last) = page.last() else { break };
        from = match last {
            Ok(m) => m.id,
            Err(bad) => bad.id,
        } + 1;
        report.checked += page.len() as u64;
        let mut buckets: BTreeMap<u64, Vec<Member>> = BTreeMap::new();
        let mut unreadable = std::collections::BTreeSet::new();
        for row in page {
            match row {
                Ok(m) => buckets.entry(m.id / size).or_default().push(m),
                // Left as the tier has it: the store logged it, and it is not absent.
                Err(bad) => {
                    report.unreadable += 1;
                    unreadable.insert(bad.id);
                }
            }
        }
        for (bucket, members) in &buckets {
            for zone in 0..tier.zones.len() {
                let held: BTreeMap<u64, Vec<u8>> =
                    tier.bucket_in(zone, *bucket).await?.into_iter().collect();
                let counts = &mut report.zones[zone];
                for m in members {
                    let want = TierEntry::Member(m.clone());
                    match held.get(&m.id).map(|v| decode(m.id, v)) {
                        None => {
                            counts.missing += 1;
                            if fill_missing {
                                tier.set_in(zone, m.id, &want).await?;
                                counts.repaired += 1;
                            }
                        }
                        Some(Some(entry)) if entry == want => {}
                        Some(Some(entry)) if entry.version() < m.version => {
                            counts.stale += 1;
                            tier.set_in(zone, m.id, &want).await?;
                            counts.repaired += 1;
                        }
                        Some(_) => {
                            counts.stale += 1;
                            tier.force_in(zone, m.id, &want).await?;
                            counts.repaired += 1;
                        }
                    }
                }
                // Records for ids the store does not have in this bucket.
                for (id, value) in &held {
                    if members.iter().any(|m| m.id == *id) || unreadable.contains(id) {
                        continue;
                    }
                    if let Some(TierEntry::Gone { .. }) = decode(*id, value) {
                        continue;
                    }
                    counts.stale += 1;
                    tier.remove_in(zone, *id).await?;
                    counts.repaired += 1;
                }
            }
        }
    }
    Ok(report)
}
