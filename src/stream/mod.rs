//! The change stream: Redis Streams the relay appends every batch of changes to and
//! every node reads from its own position.
//!
//! **Copies.** The stream has one copy per zone (on the node the zone's ring picks for
//! the stream key, or the zone's cluster), or one per URL in `changes.stream_url`. The
//! relay appends every entry to every copy with the *same* id, so a node reads its own
//! zone's copy and, if that copy's Redis fails, carries on from another copy at the
//! same id: the loss of any one Redis process loses no change.
//!
//! **Dense ids.** Entry `k` has the id `k-0`, and ids run 1, 2, 3… with no hole: the
//! relay keeps the counter in the store beside its position (never reusing an id, even
//! across a failover). So a reader knows exactly when it missed something: the next
//! entry it reads is not `last + 1` (a copy trimmed past it, or a copy that lost
//! entries and could not be back-filled). Appends go through a script that refuses an
//! id unless the copy's last id is the one before it; a copy that fell behind (it was
//! unreachable, or restarted empty) is back-filled from another copy before it takes
//! the next entry.
//!
//! **Entries.** One entry carries one relay batch: `m` the member changes
//! (`id:version` or `id:version:d` for a deletion, `;`-separated), `c` the newest
//! catalog version, `r` = `1` for a bulk reseed, `t` the newest commit time (ms since
//! the epoch), `o` how many ms before `t` each member change of `m` was committed
//! (`;`-separated, in the order of `m`; left out when all are 0, as in a batch of one
//! transaction: a reader without it takes `t` for every change), or `f` = `1` for a
//! filler (an id a failed relay reserved but never filled: its changes are published
//! again under later ids). An entry this build cannot read is taken as "forget every
//! member"; `o` is written only beside `m`, so a build that does not know `o` reads
//! the entry as before.

mod publisher;
mod reader;

use std::time::Duration;

use redis::Value;

pub use publisher::StreamPublisher;
pub use reader::StreamReader;

use crate::config::Config;
use crate::redis_conn::{RedisConn, Timeouts};
use crate::store::{ChangeEvent, ChangeKind};

/// Errors talking to the stream's Redis.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("change stream copy {server}: {op}: {source}")]
    Redis {
        /// `host:port` of the copy's Redis.
        server: String,
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("change stream copy {server}: {op}: no answer within {timeout:?}")]
    Timeout {
        server: String,
        op: &'static str,
        timeout: Duration,
    },
    #[error("change stream copy {server} already holds entry {id}: another relay is writing")]
    Taken { server: String, id: u64 },
    #[error("no copy of the change stream took entry {id}: {last}")]
    NoCopy { id: u64, last: String },
    #[error("no change stream copies are configured")]
    NoCopies,
}

/// How long a read blocks waiting for new entries.
pub(crate) const BLOCK: Duration = Duration::from_millis(1000);
/// Entries per read.
pub(crate) const COUNT: usize = 100;

/// The stream key of a deployment.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}changes")
}

/// The id of entry `k`.
pub fn entry_id(k: u64) -> String {
    format!("{k}-0")
}

/// The `k` of an entry id `k-0` (anything else: `None`).
pub fn entry_number(id: &str) -> Option<u64> {
    let (k, seq) = id.split_once('-')?;
    (seq == "0").then(|| k.parse().ok()).flatten()
}

/// One copy of the stream.
pub(crate) struct Copy {
    pub redis: RedisConn,
}

/// Where the copies are: `changes.stream_url` if set, else one per zone of
/// `redis_urls`; each connection answers within `response`.
pub(crate) fn copies(cfg: &Config, response: Duration) -> Result<Vec<Copy>, StreamError> {
    let t = Timeouts {
        connect: Duration::from_secs(1),
        response,
    };
    let err = |url: &str| {
        let server = crate::redis_conn::shown(url);
        move |source| StreamError::Redis {
            server,
            op: "parse URL",
            source,
        }
    };
    let ca = cfg.redis_tls_ca.as_ref().map(|c| &c.pem[..]);
    let mut out = Vec::new();
    if !cfg.changes.stream_urls.is_empty() {
        for url in &cfg.changes.stream_urls {
            out.push(Copy {
                redis: RedisConn::single(url, t, ca).map_err(err(url))?,
            });
        }
        return Ok(out);
    }
    let Some(topology) = &cfg.redis else {
        return Ok(out);
    };
    let key = stream_key(&cfg.redis_prefix);
    for z in &topology.zones {
        let redis = if z.cluster {
            RedisConn::cluster(&z.nodes, t, ca).map_err(err(&z.nodes[0]))?
        } else {
            let ring = crate::tier::ring::Ring::new(&z.nodes);
            let url = &z.nodes[ring.node_for(key.as_bytes())];
            RedisConn::single(url, t, ca).map_err(err(url))?
        };
        out.push(Copy { redis });
    }
    Ok(out)
}

/// The fields of an entry carrying `events`.
pub fn encode(events: &[ChangeEvent]) -> Vec<(&'static str, String)> {
    let mut members = String::new();
    let mut catalog: Option<u64> = None;
    let mut reseed = false;
    let at = events.iter().map(|e| e.changed_at_ms).max().unwrap_or(0);
    // Commit times of the member changes, as offsets before `at` (the commit-to-applied
    // lag of each change is measured from its own commit).
    let mut offsets = String::new();
    let mut offset_nonzero = false;
    for ev in events {
        match ev.kind {
            ChangeKind::Member {
                id,
                version,
                deleted,
            } => {
                if !members.is_empty() {
                    members.push(';');
                    offsets.push(';');
                }
                members.push_str(&format!("{id}:{version}"));
                let offset = (at - ev.changed_at_ms).max(0);
                offset_nonzero |= offset > 0;
                offsets.push_str(&offset.to_string());
                if deleted {
                    members.push_str(":d");
                }
            }
            ChangeKind::Catalog { version } => catalog = catalog.max(Some(version)),
            ChangeKind::MembersReseeded => reseed = true,
        }
    }
    let mut f = Vec::with_capacity(5);
    if !members.is_empty() {
        f.push(("m", members));
        if offset_nonzero {
            f.push(("o", offsets));
        }
    }
    if let Some(v) = catalog {
        f.push(("c", v.to_string()));
    }
    if reseed {
        f.push(("r", "1".to_string()));
    }
    f.push(("t", at.to_string()));
    f
}

/// The fields of a filler entry.
pub(crate) fn filler() -> Vec<(&'static str, String)> {
    vec![("f", "1".to_string())]
}

fn text(map: &std::collections::HashMap<String, Value>, name: &str) -> Option<String> {
    match map.get(name)? {
        Value::BulkString(b) => std::str::from_utf8(b).ok().map(str::to_string),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The changes an entry carries (`seq` is the entry number).
pub fn decode(k: u64, map: &std::collections::HashMap<String, Value>) -> Vec<ChangeEvent> {
    let at = text(map, "t").and_then(|t| t.parse().ok()).unwrap_or(0);
    let ev = |kind| ChangeEvent {
        seq: k,
        kind,
        changed_at_ms: at,
    };
    if text(map, "f").is_some() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut understood = false;
    if let Some(m) = text(map, "m") {
        understood = true;
        // Each member change's own commit time, when the entry says (else `t`).
        let offsets: Vec<i64> = text(map, "o")
            .map(|o| o.split(';').map(|x| x.parse().unwrap_or(0)).collect())
            .unwrap_or_default();
        for (i, item) in m.split(';').filter(|s| !s.is_empty()).enumerate() {
            let mut parts = item.split(':');
            let id = parts.next().and_then(|p| p.parse().ok());
            let version = parts.next().and_then(|p| p.parse().ok());
            match (id, version) {
                (Some(id), Some(version)) => out.push(ChangeEvent {
                    changed_at_ms: at - offsets.get(i).copied().unwrap_or(0),
                    ..ev(ChangeKind::Member {
                        id,
                        version,
                        deleted: parts.next() == Some("d"),
                    })
                }),
                // A member change that cannot be read precisely: forget all.
                _ => out.push(ev(ChangeKind::MembersReseeded)),
            }
        }
    }
    if let Some(c) = text(map, "c") {
        understood = true;
        out.push(ev(ChangeKind::Catalog {
            version: c.parse().unwrap_or(u64::MAX),
        }));
    }
    if text(map, "r").is_some() {
        understood = true;
        out.push(ev(ChangeKind::MembersReseeded));
    }
    if !understood && map.keys().any(|k| k != "t") {
        // Written by another build: be safe.
        out.push(ev(ChangeKind::MembersReseeded));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: Vec<(&'static str, String)>) -> std::collections::HashMap<String, Value> {
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.into_bytes())))
            .collect()
    }

    #[test]
    fn batches_round_trip_through_entry_fields() {
        let ev = |seq, kind| ChangeEvent {
            seq,
            kind,
            changed_at_ms: 1_700_000_000_000,
        };
        let events = [
            ev(
                7,
                ChangeKind::Member {
                    id: 42,
                    version: 3,
                    deleted: true,
                },
            ),
            ev(
                8,
                ChangeKind::Member {
                    id: 43,
                    version: 9,
                    deleted: false,
                },
            ),
            ev(9, ChangeKind::Catalog { version: 19 }),
            ev(10, ChangeKind::Catalog { version: 18 }),
            ev(11, ChangeKind::MembersReseeded),
        ];
        let back = decode(5, &map(encode(&events)));
        let kinds: Vec<_> = back.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::Member {
                    id: 42,
                    version: 3,
                    deleted: true
                },
                ChangeKind::Member {
                    id: 43,
                    version: 9,
                    deleted: false
                },
                ChangeKind::Catalog { version: 19 },
                ChangeKind::MembersReseeded,
            ]
        );
        assert!(back
            .iter()
            .all(|e| e.seq == 5 && e.changed_at_ms == 1_700_000_000_000));
        // All committed at one instant (one transaction): no offsets are written.
        assert!(encode(&events).iter().all(|(k, _)| *k != "o"));
        assert!(decode(6, &map(filler())).is_empty());
        let unknown = map(vec![("zz", "1".into())]);
        assert_eq!(decode(7, &unknown)[0].kind, ChangeKind::MembersReseeded);
        let broken = map(vec![("m", "42:x".into())]);
        assert_eq!(decode(7, &broken)[0].kind, ChangeKind::MembersReseeded);
    }

    #[test]
    fn each_member_change_keeps_its_own_commit_time() {
        let member = |seq, id, at| ChangeEvent {
            seq,
            kind: ChangeKind::Member {
                id,
                version: seq as i64,
                deleted: false,
            },
            changed_at_ms: at,
        };
        let events = [
            member(1, 42, 1_700_000_000_000),
            member(2, 43, 1_700_000_002_500),
            ChangeEvent {
                seq: 3,
                kind: ChangeKind::Catalog { version: 7 },
                changed_at_ms: 1_700_000_003_000,
            },
            member(4, 44, 1_700_000_003_000),
        ];
        let fields = encode(&events);
        assert!(
            fields.contains(&("o", "3000;500;0".to_string())),
            "{fields:?}"
        );
        let back = decode(9, &map(fields.clone()));
        let at: Vec<i64> = back.iter().map(|e| e.changed_at_ms).collect();
        assert_eq!(
            at,
            [
                1_700_000_000_000,
                1_700_000_002_500,
                1_700_000_003_000,
                1_700_000_003_000
            ]
        );
        // A reader that does not know `o` sees an entry it understands (`m` beside
        // it), and one written without `o` gives every change the entry's time.
        let without: Vec<_> = fields.into_iter().filter(|(k, _)| *k != "o").collect();
        let back = decode(9, &map(without));
        assert_eq!(back.len(), 4);
        assert!(back.iter().all(|e| e.changed_at_ms == 1_700_000_003_000));
        // A reseed alone carries no offsets (an older reader would take an entry with
        // only unknown fields as "forget everything").
        let reseed = encode(&[ChangeEvent {
            seq: 5,
            kind: ChangeKind::MembersReseeded,
            changed_at_ms: 1,
        }]);
        assert!(reseed.iter().all(|(k, _)| *k != "o"));
    }

    #[test]
    fn entry_ids_are_dense_numbers() {
        assert_eq!(entry_id(17), "17-0");
        assert_eq!(entry_number("17-0"), Some(17));
        assert_eq!(entry_number("17-1"), None);
        assert_eq!(entry_number("1700000000000-3"), None);
        assert_eq!(entry_number("x"), None);
    }
}
