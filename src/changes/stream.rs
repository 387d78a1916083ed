//! The change stream: a Redis Stream that the relay appends every change to and every
//! node reads from its own position.
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

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::StreamReadReply;
use redis::{AsyncConnectionConfig, Client, Value};

use super::Batch;
use crate::store::{ChangeEvent, ChangeKind};

/// Errors talking to the stream's Redis.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("change stream {url}: {op}: {source}")]
    Redis {
        url: String,
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
}

/// How long a read blocks waiting for new entries.
const BLOCK: Duration = Duration::from_millis(1000);
/// Entries per read.
const COUNT: usize = 1000;

fn connection_config(response: Duration) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response))
}

/// The stream key of a deployment.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}changes")
}

fn encode(ev: &ChangeEvent) -> Vec<(&'static str, String)> {
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

fn decode(map: &std::collections::HashMap<String, Value>) -> ChangeEvent {
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

/// Appends changes to the stream (used by the relay).
pub struct StreamPublisher {
    url: String,
    client: Client,
    conn: Option<MultiplexedConnection>,
    key: String,
    maxlen: u64,
}

impl StreamPublisher {
    pub fn new(url: &str, key: String, maxlen: u64) -> Result<StreamPublisher, StreamError> {
        let client = Client::open(url).map_err(|source| StreamError::Redis {
            url: url.to_string(),
            op: "parse URL",
            source,
        })?;
        Ok(StreamPublisher {
            url: url.to_string(),
            client,
            conn: None,
            key,
            maxlen,
        })
    }

    fn err(&self, op: &'static str) -> impl Fn(redis::RedisError) -> StreamError + '_ {
        move |source| StreamError::Redis {
            url: self.url.clone(),
            op,
            source,
        }
    }

    /// Appends the events in order, in one pipeline.
    pub async fn publish(&mut self, events: &[ChangeEvent]) -> Result<(), StreamError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.conn.is_none() {
            let conn = self
                .client
                .get_multiplexed_async_connection_with_config(&connection_config(
                    Duration::from_secs(5),
                ))
                .await
                .map_err(self.err("connect"))?;
            self.conn = Some(conn);
        }
        let mut pipe = redis::pipe();
        for ev in events {
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.maxlen)
                .arg("*");
            for (k, v) in encode(ev) {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
        }
        let conn = self.conn.as_mut().expect("connected above");
        let result: redis::RedisResult<()> = pipe.query_async(conn).await;
        if let Err(e) = result {
            self.conn = None;
            return Err(self.err("append")(e));
        }
        Ok(())
    }
}

/// A node's reader of the stream.
pub struct StreamReader {
    url: String,
    client: Client,
    conn: Option<MultiplexedConnection>,
    key: String,
    /// The id of the last entry applied; `None` until a position is known.
    last_id: Option<String>,
    /// When Redis was last found unreachable (cleared on reconnect).
    lost_since: Option<Instant>,
    /// The `run_id` of the Redis server the position belongs to: a different one
    /// (a restart) may have lost entries this node never read.
    server: Option<String>,
    /// An outage longer than this is reported as a gap.
    max_outage: Duration,
}

impl StreamReader {
    pub fn new(url: &str, key: String, max_outage: Duration) -> Result<StreamReader, StreamError> {
        let client = Client::open(url).map_err(|source| StreamError::Redis {
            url: url.to_string(),
            op: "parse URL",
            source,
        })?;
        Ok(StreamReader {
            url: url.to_string(),
            client,
            conn: None,
            key,
            last_id: None,
            lost_since: None,
            server: None,
            max_outage,
        })
    }

    fn err(&self, op: &'static str) -> impl Fn(redis::RedisError) -> StreamError + '_ {
        move |source| StreamError::Redis {
            url: self.url.clone(),
            op,
            source,
        }
    }

    /// The id of the last entry read, folded into a number ([`id_to_u64`]).
    pub fn position(&self) -> Option<u64> {
        self.last_id.as_deref().map(id_to_u64)
    }

    /// Learns the current end of the stream, so that every later entry is read. Call
    /// before loading anything the stream's changes apply to.
    pub async fn start_at_head(&mut self) -> Result<(), StreamError> {
        let key = self.key.clone();
        let conn = self.connect().await?;
        let info = xinfo(conn, &key).await;
        let info = info.map_err(|e| self.err("XINFO STREAM")(e))?;
        let conn = self.conn.as_mut().expect("connected above");
        self.server = run_id(conn).await.ok();
        self.last_id = Some(
            info.map(|i| i.last_generated)
                .unwrap_or_else(|| "0-0".to_string()),
        );
        Ok(())
    }

    async fn connect(&mut self) -> Result<&mut MultiplexedConnection, StreamError> {
        if self.conn.is_none() {
            let cfg = connection_config(BLOCK + Duration::from_secs(2));
            match self
                .client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
            {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.lost_since.get_or_insert_with(Instant::now);
                    return Err(self.err("connect")(e));
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn lost(&mut self, e: StreamError) -> StreamError {
        self.conn = None;
        self.lost_since.get_or_insert_with(Instant::now);
        e
    }

    /// Waits (up to a second) for entries after the position and returns them.
    pub async fn next_batch(&mut self) -> Result<Batch, StreamError> {
        let mut gap = false;
        if self.conn.is_none() || self.last_id.is_none() {
            let key = self.key.clone();
            let conn = match self.connect().await {
                Ok(c) => c,
                Err(e) => return Err(e),
            };
            let info = match xinfo(conn, &key).await {
                Ok(i) => i,
                Err(e) => {
                    let e = self.err("XINFO STREAM")(e);
                    return Err(self.lost(e));
                }
            };
            if let Some(since) = self.lost_since.take() {
                if since.elapsed() > self.max_outage {
                    tracing::warn!(outage = ?since.elapsed(), "change stream was unreachable longer than the L1 TTL");
                    gap = true;
                }
            }
            let server = match run_id(self.conn.as_mut().expect("connected above")).await {
                Ok(id) => id,
                Err(e) => {
                    let e = self.err("INFO server")(e);
                    return Err(self.lost(e));
                }
            };
            if self.server.as_ref().is_some_and(|known| *known != server) && self.last_id.is_some()
            {
                // A restarted server: entries published before the restart and not yet
                // read are gone, and the new stream's ids owe nothing to the old ones.
                tracing::warn!("the change stream's Redis restarted");
                gap = true;
                self.last_id = Some("0-0".into());
            } else if info.is_none() && self.last_id.as_deref().is_some_and(|l| l != "0-0") {
                // The stream vanished under a known position.
                gap = true;
                self.last_id = Some("0-0".into());
            }
            self.server = Some(server);
            match &self.last_id {
                None => {
                    // Serving began without a known position: anything may have been missed.
                    gap = true;
                    self.last_id = Some(
                        info.as_ref()
                            .map(|i| i.last_generated.clone())
                            .unwrap_or_else(|| "0-0".into()),
                    );
                }
                Some(last) => gap |= info.as_ref().is_some_and(|i| i.trimmed_past(last)),
            }
        }
        let last = self.last_id.clone().expect("position known above");
        let key = self.key.clone();
        let conn = self.conn.as_mut().expect("connected above");
        let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async(conn)
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                let e = self.err("XREAD")(e);
                return Err(self.lost(e));
            }
        };
        let mut events = Vec::new();
        if let Some(reply) = reply {
            for k in reply.keys {
                for entry in k.ids {
                    events.push(decode(&entry.map));
                    self.last_id = Some(entry.id);
                }
            }
        }
        if events.len() == COUNT {
            // Far behind: check that nothing between the old position and these entries
            // was trimmed away.
            let conn = self.conn.as_mut().expect("connected above");
            match xinfo(conn, &key).await {
                Ok(info) => gap |= info.is_some_and(|i| i.trimmed_past(&last)),
                Err(e) => {
                    let e = self.err("XINFO STREAM")(e);
                    return Err(self.lost(e));
                }
            }
        }
        Ok(Batch {
            more: events.len() == COUNT,
            gap,
            behind: None,
            events,
        })
    }
}

/// The server's `run_id` (changes when it restarts).
async fn run_id(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .unwrap_or("")
        .trim()
        .to_string())
}

/// What a node needs from `XINFO STREAM`.
#[derive(Debug)]
struct StreamInfo {
    last_generated: String,
    first_entry: Option<String>,
    length: i64,
    entries_added: i64,
}

impl StreamInfo {
    /// Whether entries after `last` may have been trimmed away unread.
    fn trimmed_past(&self, last: &str) -> bool {
        self.entries_added > self.length
            && self
                .first_entry
                .as_deref()
                .is_some_and(|f| id_after(f, last))
    }
}

/// A stream id `ms-seq` as one ordered number (`ms << 16 | seq`, seq capped), for
/// progress gauges and tests.
pub fn id_to_u64(id: &str) -> u64 {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let ms: u64 = ms.parse().unwrap_or(0);
    let seq: u64 = seq.parse().unwrap_or(0);
    (ms << 16) | seq.min(0xffff)
}

/// `a > b` for stream ids `ms-seq`.
fn id_after(a: &str, b: &str) -> bool {
    fn parse(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parse(a) > parse(b)
}

async fn xinfo(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<Option<StreamInfo>> {
    let v: redis::RedisResult<Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(conn)
        .await;
    let v = match v {
        Ok(v) => v,
        // No such key: nothing was ever written (or it was deleted).
        Err(e) if e.to_string().contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    let pairs: Vec<(String, Value)> = match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| match (&c[0], c.get(1)) {
                (Value::BulkString(k), Some(v)) => {
                    Some((String::from_utf8_lossy(k).into_owned(), v.clone()))
                }
                (Value::SimpleString(k), Some(v)) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .into_iter()
            .filter_map(|(k, v)| match k {
                Value::BulkString(k) => Some((String::from_utf8_lossy(&k).into_owned(), v)),
                Value::SimpleString(k) => Some((k, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let text = |v: Option<Value>| match v {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
        Some(Value::SimpleString(s)) => Some(s),
        _ => None,
    };
    let int = |v: Option<Value>| match v {
        Some(Value::Int(i)) => i,
        _ => 0,
    };
    let first_entry = match get("first-entry") {
        Some(Value::Array(e)) if !e.is_empty() => text(Some(e[0].clone())),
        _ => None,
    };
    Ok(Some(StreamInfo {
        last_generated: text(get("last-generated-id")).unwrap_or_else(|| "0-0".into()),
        first_entry,
        length: int(get("length")),
        entries_added: int(get("entries-added")),
    }))
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
        assert!(id_after("10-0", "9-5"));
        assert!(id_after("9-10", "9-9"));
        assert!(!id_after("9-9", "9-9"));
        let info = StreamInfo {
            last_generated: "20-0".into(),
            first_entry: Some("15-0".into()),
            length: 5,
            entries_added: 9,
        };
        assert!(info.trimmed_past("12-0"));
        assert!(!info.trimmed_past("15-0"));
        let never_trimmed = StreamInfo {
            entries_added: 5,
            ..info
        };
        assert!(!never_trimmed.trimmed_past("0-0"));
    }
}
