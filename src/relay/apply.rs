//! Applying changes to the hash tier, and repairing what a zone did not take.
//!
//! For a batch: each member's current row (or a tombstone at the deletion's version)
//! is written to every zone with a versioned set, one script call per bucket; a
//! reseed flushes every zone's member buckets. A zone that fails a write gets a
//! durable [`Repair`] (saved before the batch is published). Repairs are retried on
//! later passes; a repair made publishes the member's change again (or a reseed), so
//! a node that read the zone's old value meanwhile drops it.

use std::collections::HashMap;

use crate::store::{ChangeEvent, ChangeKind, Repair, Store, StoreError};
use crate::tier::{Tier, TierEntry};

/// Writes `events` to every zone; returns the repairs for what failed.
pub(super) async fn apply(
    store: &Store,
    tier: &Tier,
    events: &[ChangeEvent],
) -> Result<Vec<Repair>, StoreError> {
    let mut failed = Vec::new();
    if events.iter().any(|e| e.kind == ChangeKind::MembersReseeded) {
        failed.extend(flush(tier, (0..tier.zones.len()).collect()).await);
    }
    let mut latest: HashMap<u64, i64> = HashMap::new();
    for e in events {
        if let ChangeKind::Member { id, version, .. } = e.kind {
            let v = latest.entry(id).or_insert(version);
            *v = (*v).max(version);
        }
    }
    if latest.is_empty() {
        return Ok(failed);
    }
    let entries = current(store, &latest).await?;
    for zone in 0..tier.zones.len() {
        for id in tier.set_many_in(zone, &entries).await {
            failed.push(Repair {
                zone: tier.zones[zone].name.clone(),
                member: id,
                version: latest[&id],
            });
        }
    }
    Ok(failed)
}

/// What the tier must hold for these members (id → at least this version): the row,
/// or a tombstone at that version for a member the store no longer has. Unreadable
/// rows are left out (logged by the store): a tombstone would pass them off as gone.
async fn current(
    store: &Store,
    wanted: &HashMap<u64, i64>,
) -> Result<Vec<(u64, TierEntry)>, StoreError> {
    let mut rows: HashMap<u64, Option<TierEntry>> = HashMap::new();
    for row in store
        .members_by_ids(wanted.keys().copied().collect())
        .await?
    {
        match row {
            Ok(m) => rows.insert(m.id, Some(TierEntry::Member(m))),
            Err(bad) => rows.insert(bad.id, None),
        };
    }
    Ok(wanted
        .iter()
        .filter_map(|(id, version)| match rows.remove(id) {
            Some(Some(entry)) => Some((*id, entry)),
            Some(None) => None,
            None => Some((*id, TierEntry::Gone { version: *version })),
        })
        .collect())
}

/// Flushes the member buckets of these zones; returns repairs for the ones that failed.
async fn flush(tier: &Tier, zones: Vec<usize>) -> Vec<Repair> {
    let mut failed = Vec::new();
    for zone in zones {
        let (removed, errors) = tier.flush_zone(zone).await;
        if errors.is_empty() {
            tracing::info!(zone = %tier.zones[zone].name, buckets = removed, "members reseeded: flushed the zone");
        } else {
            tracing::warn!(zone = %tier.zones[zone].name, failed_nodes = errors.len(), "flushing the zone failed; will retry");
            failed.push(Repair {
                zone: tier.zones[zone].name.clone(),
                member: 0,
                version: 0,
            });
        }
    }
    failed
}

/// Retries repairs; returns the ones made and the events that announce them.
pub(super) async fn repair(
    store: &Store,
    tier: &Tier,
    repairs: &[Repair],
) -> Result<(Vec<Repair>, Vec<ChangeEvent>), StoreError> {
    let mut done = Vec::new();
    let mut events = Vec::new();
    let now = crate::store::now_ms();
    let mut by_zone: HashMap<usize, Vec<&Repair>> = HashMap::new();
    for r in repairs {
        match tier.zone_index(&r.zone) {
            Ok(z) => by_zone.entry(z).or_default().push(r),
            // A zone no longer configured: nothing to repair there.
            Err(_) => done.push(r.clone()),
        }
    }
    for (zone, list) in by_zone {
        if list.iter().any(|r| r.member == 0) {
            if flush(tier, vec![zone]).await.is_empty() {
                done.extend(list.iter().filter(|r| r.member == 0).map(|r| (*r).clone()));
                events.push(ChangeEvent {
                    seq: 0,
                    kind: ChangeKind::MembersReseeded,
                    changed_at_ms: now,
                });
            }
            continue;
        }
        let wanted: HashMap<u64, i64> = list.iter().map(|r| (r.member, r.version)).collect();
        let entries = current(store, &wanted).await?;
        let failed: std::collections::HashSet<u64> =
            tier.set_many_in(zone, &entries).await.into_iter().collect();
        for (id, entry) in &entries {
            if failed.contains(id) {
                continue;
            }
            done.extend(
                list.iter()
                    .filter(|r| r.member == *id)
                    .map(|r| (*r).clone()),
            );
            events.push(ChangeEvent {
                seq: 0,
                kind: ChangeKind::Member {
                    id: *id,
                    version: entry.version(),
                    deleted: matches!(entry, TierEntry::Gone { .. }),
                },
                changed_at_ms: now,
            });
        }
    }
    Ok((done, events))
}
