//! The change stream: a Redis Stream that the relay appends every change to and every
//! node reads from its own position ([`StreamId`]).
//!
//! Each entry carries one change: `k` (`m` member, `c` catalog, `r` reseed), `id` and
//! `v` (member id and version, or catalog version), `d` (1 for a deletion), `s` (the
//! change-log seq) and `t` (commit time, ms since the epoch). The stream is capped
//! with `MAXLEN ~`.
//!
//! A node knows it may have missed entries, and reports a gap, when
//! - the stream was trimmed past its position: the first entry still held is newer
//!   than the last one it read, and entries were removed (`entries-added > length`);
//! - it could not reach Redis for longer than its L1 TTL allows;
//! - it could not learn a starting position before it began serving;
//! - the stream's Redis restarted (its `run_id` changed), or the stream vanished:
//!   entries published before and not yet read may be gone. It then reads the new
//!   stream from its start.

use std::time::Duration;

mod publisher;
mod reader;

use redis::Value;

pub use publisher::StreamPublisher;
pub use reader::StreamReader;

use crate::redis_conn::Timeouts;
use crate::store::{ChangeEvent, ChangeKind};

/// Errors talking to the stream's Redis.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("change stream {server}: {op}: {source}")]
    Redis {
        /// `host:port` of the stream's Redis.
        server: String,
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
}

/// How long a read blocks waiting for new entries.
pub(crate) const BLOCK: Duration = Duration::from_millis(1000);
/// Entries per read.
pub(crate) const COUNT: usize = 1000;

pub(crate) fn timeouts(response: Duration) -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(1),
        response,
    }
}

/// A stream entry id, `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Parses `ms-seq` (or `ms`); anything else is `0-0`.
    pub fn parse(id: &str) -> StreamId {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        StreamId {
            ms: ms.parse().unwrap_or(0),
            seq: seq.parse().unwrap_or(0),
        }
    }

    /// One ever-rising number (`ms << 16 | seq`, seq capped), for gauges and tests.
    pub fn progress(&self) -> u64 {
        (self.ms << 16) | self.seq.min(0xffff)
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The stream key of a deployment.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}changes")
}

pub(crate) fn encode(ev: &ChangeEvent) -> Vec<(&'static str, String)> {
    let mut f = Vec::with_capacity(6);
    match &ev.kind {
        ChangeKind::Member {
            id,
            version,
            deleted,
        } => {
            f.push(("k", "m".to_string()));
            f.push(("id", id.to_string()));
            f.push(("v", version.to_string()));
            f.push(("d", if *deleted { "1" } else { "0" }.to_string()));
        }
        ChangeKind::Catalog { version } => {
            f.push(("k", "c".to_string()));
            f.push(("v", version.to_string()));
        }
        ChangeKind::MembersReseeded => f.push(("k", "r".to_string())),
    }
    f.push(("s", ev.seq.to_string()));
    f.push(("t", ev.changed_at_ms.to_string()));
    f
}

fn field<T: std::str::FromStr>(
    map: &std::collections::HashMap<String, Value>,
    name: &str,
) -> Option<T> {
    match map.get(name)? {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(i) => i.to_string().parse().ok(),
        _ => None,
    }
}

pub(crate) fn decode(map: &std::collections::HashMap<String, Value>) -> ChangeEvent {
    let kind = match field::<String>(map, "k").as_deref() {
        Some("m") => match (field(map, "id"), field(map, "v")) {
            (Some(id), Some(version)) => ChangeKind::Member {
                id,
                version,
                deleted: field::<u8>(map, "d") == Some(1),
            },
            // A member entry without an id cannot be applied precisely: forget all.
            _ => ChangeKind::MembersReseeded,
        },
        Some("c") => ChangeKind::Catalog {
            version: field(map, "v").unwrap_or(u64::MAX),
        },
        // "r", or a kind this build does not know: be safe.
        _ => ChangeKind::MembersReseeded,
    };
    ChangeEvent {
        seq: field(map, "s").unwrap_or(0),
        kind,
        changed_at_ms: field(map, "t").unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_stream_fields() {
        let evs = [
            ChangeEvent {
                seq: 7,
                kind: ChangeKind::Member {
                    id: 42,
                    version: 3,
                    deleted: true,
                },
                changed_at_ms: 1_700_000_000_000,
            },
            ChangeEvent {
                seq: 8,
                kind: ChangeKind::Catalog { version: 19 },
                changed_at_ms: 5,
            },
            ChangeEvent {
                seq: 9,
                kind: ChangeKind::MembersReseeded,
                changed_at_ms: 6,
            },
        ];
        for ev in evs {
            let map = encode(&ev)
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::BulkString(v.into_bytes())))
                .collect();
            assert_eq!(decode(&map), ev);
        }
        let unknown = [("k".to_string(), Value::BulkString(b"zz".to_vec()))]
            .into_iter()
            .collect();
        assert_eq!(decode(&unknown).kind, ChangeKind::MembersReseeded);
    }

    #[test]
    fn stream_ids_compare_numerically() {
        let id = StreamId::parse;
        assert!(id("10-0") > id("9-5"));
        assert!(id("9-10") > id("9-9"));
        assert_eq!(id("9-9"), id("9-9"));
        assert_eq!(id("9-9").to_string(), "9-9");
    }
}
