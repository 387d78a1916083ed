//! How member records are stored in Redis.
//!
//! Chosen encoding: members are grouped into buckets of `bucket_size` consecutive ids,
//! one Redis hash per bucket (`{prefix}h:{id / bucket_size}`), one field per member
//! (`{id % bucket_size}`), and a short text value:
//!
//! - a record: `version|status|country|plan`, e.g. `3|a|US|premium`
//!   (status: `a` active, `g` grace, `h` on hold, `p` paused, `c` cancelled);
//! - a record with a price lock (grandfathering): the same, then
//!   `|amount|currency|until` (`until` in ms since the epoch, empty: no end date),
//!   e.g. `3|a|US|premium|22.99|USD|1798761600000`; members without one pay nothing
//!   for it;
//! - a tombstone (the member is deleted, or was never there): `version|x`.
//!
//! Small hashes are stored by Redis as listpacks (no per-key dictionary entry, object
//! header, or expiry record per member), so a member costs a few tens of bytes instead
//! of the ~90 of a key of its own; docs/PERFORMANCE.md and README give the measured
//! figures (`cargo run --release --example l2_memory`). The version comes first so the
//! versioned-set script can compare it without decoding the rest.

use crate::member::{Member, PriceLock, Status};
use crate::plan::Price;

/// What the tier holds for a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierEntry {
    Member(Member),
    /// Deleted (or never existed) as of `version`.
    Gone {
        version: i64,
    },
}

impl TierEntry {
    pub fn version(&self) -> i64 {
        match self {
            TierEntry::Member(m) => m.version,
            TierEntry::Gone { version } => *version,
        }
    }
}

fn status_code(s: Status) -> char {
    match s {
        Status::Active => 'a',
        Status::Grace => 'g',
        Status::OnHold => 'h',
        Status::Paused => 'p',
        Status::Cancelled => 'c',
    }
}

fn status_of(c: &str) -> Option<Status> {
    Some(match c {
        "a" => Status::Active,
        "g" => Status::Grace,
        "h" => Status::OnHold,
        "p" => Status::Paused,
        "c" => Status::Cancelled,
        _ => return None,
    })
}

/// The key of bucket `bucket`.
pub fn bucket_key(prefix: &str, bucket: u64) -> String {
    format!("{prefix}h:{bucket}")
}

/// The `SCAN MATCH` pattern of every bucket key under `prefix`.
pub fn bucket_pattern(prefix: &str) -> String {
    format!("{prefix}h:*")
}

/// The bucket a key names, if it is a bucket key under `prefix`.
pub fn bucket_of(prefix: &str, key: &str) -> Option<u64> {
    key.strip_prefix(prefix)?.strip_prefix("h:")?.parse().ok()
}

/// The bucket key and field of a member.
pub fn locate(prefix: &str, bucket_size: u64, id: u64) -> (String, String) {
    (
        bucket_key(prefix, id / bucket_size),
        (id % bucket_size).to_string(),
    )
}

/// The member a field of a bucket stands for.
pub fn member_of(bucket_size: u64, bucket: u64, field: &str) -> Option<u64> {
    let offset: u64 = field.parse().ok()?;
    (offset < bucket_size).then(|| bucket * bucket_size + offset)
}

pub fn encode(e: &TierEntry) -> String {
    match e {
        TierEntry::Member(m) => {
            let mut s = format!(
                "{}|{}|{}|{}",
                m.version,
                status_code(m.status),
                m.country,
                m.plan_id
            );
            if let Some(l) = &m.price_lock {
                s.push('|');
                s.push_str(l.amount.as_str());
                s.push('|');
                s.push_str(&l.currency);
                s.push('|');
                if let Some(u) = l.until_ms {
                    s.push_str(&u.to_string());
                }
            }
            s
        }
        TierEntry::Gone { version } => format!("{version}|x"),
    }
}

/// Decodes a value; `None` for anything malformed (treated as a miss).
pub fn decode(id: u64, v: &[u8]) -> Option<TierEntry> {
    let s = std::str::from_utf8(v).ok()?;
    let mut parts = s.splitn(4, '|');
    let version: i64 = parts.next()?.parse().ok()?;
    let status = parts.next()?;
    if status == "x" {
        return Some(TierEntry::Gone { version });
    }
    let status = status_of(status)?;
    let country = parts.next()?.to_string();
    let rest = parts.next()?;
    // Plan ids hold no '|': anything after one is the price lock.
    let (plan_id, price_lock) = match rest.split_once('|') {
        None => (rest.to_string(), None),
        Some((plan, lock)) => {
            let mut l = lock.splitn(3, '|');
            let amount = Price::parse(l.next()?).ok()?;
            let currency = l.next()?.to_string();
            let until = l.next()?;
            let until_ms = if until.is_empty() {
                None
            } else {
                Some(until.parse().ok()?)
            };
            (
                plan.to_string(),
                Some(Box::new(PriceLock {
                    amount,
                    currency,
                    until_ms,
                })),
            )
        }
    };
    Some(TierEntry::Member(Member {
        id,
        status,
        plan_id,
        country,
        version,
        price_lock,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for status in Status::ALL {
            let e = TierEntry::Member(Member {
                id: 4242,
                status,
                plan_id: "standard-with-ads".into(),
                country: "US".into(),
                version: 17,
                price_lock: None,
            });
            assert_eq!(decode(4242, encode(&e).as_bytes()), Some(e));
            for until_ms in [None, Some(1_798_761_600_000)] {
                let locked = TierEntry::Member(Member {
                    id: 4242,
                    status,
                    plan_id: "premium".into(),
                    country: "US".into(),
                    version: 18,
                    price_lock: Some(Box::new(PriceLock {
                        amount: Price::parse("22.99").unwrap(),
                        currency: "USD".into(),
                        until_ms,
                    })),
                });
                assert_eq!(decode(4242, encode(&locked).as_bytes()), Some(locked));
            }
        }
        let g = TierEntry::Gone { version: 9 };
        assert_eq!(decode(1, encode(&g).as_bytes()), Some(g));
        assert_eq!(encode(&TierEntry::Gone { version: 9 }), "9|x");
        for bad in ["", "x|a|US|p", "1|q|US|p", "1|a|US", "1"] {
            assert_eq!(decode(1, bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(
            locate("rt:", 100, 4242),
            ("rt:h:42".to_string(), "42".to_string())
        );
        assert_eq!(bucket_of("rt:", "rt:h:42"), Some(42));
        assert_eq!(bucket_of("rt:", "other:h:42"), None);
        assert_eq!(member_of(100, 42, "42"), Some(4242));
        assert_eq!(member_of(100, 42, "100"), None);
    }
}
