//! A node's side of the stream: reading from its position, and knowing when it
//! cannot be sure it saw every entry.

use std::time::{Duration, Instant};

use redis::streams::StreamReadReply;
use redis::Value;

use super::{decode, timeouts, StreamError, StreamId, BLOCK, COUNT};
use crate::redis_conn::{Conn, RedisConn};
use crate::store::ChangeBatch;

/// A node's reader of the stream.
pub struct StreamReader {
    redis: RedisConn,
    key: String,
    /// The last entry applied; `None` until a position is known.
    last_id: Option<StreamId>,
    /// Set after any failure: the next read re-checks the server (restart, trim,
    /// vanished stream) before trusting the position.
    recheck: bool,
    /// When Redis was last found unreachable (cleared on a good read).
    lost_since: Option<Instant>,
    /// The `run_id` of the Redis server the position belongs to: a different one
    /// (a restart) may have lost entries this node never read.
    server: Option<String>,
    /// An outage longer than this is reported as a gap.
    max_outage: Duration,
}

impl StreamReader {
    pub fn new(url: &str, key: String, max_outage: Duration) -> Result<StreamReader, StreamError> {
        let redis =
            RedisConn::single(url, timeouts(BLOCK + Duration::from_secs(2))).map_err(|source| {
                StreamError::Redis {
                    server: crate::redis_conn::shown(url),
                    op: "parse URL",
                    source,
                }
            })?;
        Ok(StreamReader {
            redis,
            key,
            last_id: None,
            recheck: true,
            lost_since: None,
            server: None,
            max_outage,
        })
    }

    fn err(&self, op: &'static str) -> impl Fn(redis::RedisError) -> StreamError + '_ {
        move |source| StreamError::Redis {
            server: self.redis.shown().to_string(),
            op,
            source,
        }
    }

    /// The last entry read.
    pub fn position(&self) -> Option<StreamId> {
        self.last_id
    }

    /// Learns the current end of the stream, so that every later entry is read. Call
    /// before loading anything the stream's changes apply to.
    pub async fn start_at_head(&mut self) -> Result<(), StreamError> {
        let mut conn = self.redis.get().await.map_err(self.err("connect"))?;
        let info = xinfo(&mut conn, &self.key)
            .await
            .map_err(self.err("XINFO STREAM"))?;
        self.server = run_id(&mut conn).await.ok();
        self.last_id = Some(info.map(|i| i.last_generated).unwrap_or_default());
        self.recheck = false;
        Ok(())
    }

    fn lost(&mut self, e: StreamError) -> StreamError {
        self.recheck = true;
        self.lost_since.get_or_insert_with(Instant::now);
        e
    }

    /// After a failure, or before the first read: whether the position can still be
    /// trusted on this server; `Ok(true)` means entries may have been missed.
    async fn check_server(&mut self, conn: &mut Conn) -> Result<bool, StreamError> {
        let mut gap = false;
        let info = xinfo(conn, &self.key)
            .await
            .map_err(|e| self.err("XINFO STREAM")(e))?;
        let server = run_id(conn).await.map_err(|e| self.err("INFO server")(e))?;
        if let Some(since) = self.lost_since {
            if since.elapsed() > self.max_outage {
                tracing::warn!(outage = ?since.elapsed(), "change stream was unreachable longer than the L1 TTL");
                gap = true;
            }
        }
        let origin = StreamId::default();
        if self.server.as_ref().is_some_and(|known| *known != server) && self.last_id.is_some() {
            // A restarted server: entries published before the restart and not yet
            // read are gone, and the new stream's ids owe nothing to the old ones.
            tracing::warn!("the change stream's Redis restarted");
            gap = true;
            self.last_id = Some(origin);
        } else if info.is_none() && self.last_id.is_some_and(|l| l != origin) {
            // The stream vanished under a known position.
            gap = true;
            self.last_id = Some(origin);
        }
        self.server = Some(server);
        match self.last_id {
            None => {
                // Serving began without a known position: anything may have been missed.
                gap = true;
                self.last_id = Some(info.map(|i| i.last_generated).unwrap_or_default());
            }
            Some(last) => gap |= info.is_some_and(|i| i.trimmed_past(last)),
        }
        Ok(gap)
    }

    /// Waits (up to a second) for entries after the position and returns them.
    pub async fn next_batch(&mut self) -> Result<ChangeBatch, StreamError> {
        let mut conn = match self.redis.get().await {
            Ok(c) => c,
            Err(e) => {
                let e = self.err("connect")(e);
                return Err(self.lost(e));
            }
        };
        let mut gap = false;
        if self.recheck || self.last_id.is_none() {
            gap = match self.check_server(&mut conn).await {
                Ok(gap) => gap,
                Err(e) => return Err(self.lost(e)),
            };
        }
        // Known: `check_server` sets it when it was not.
        let Some(last) = self.last_id else {
            return Ok(ChangeBatch::default());
        };
        let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(last.to_string())
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                let e = self.err("XREAD")(e);
                return Err(self.lost(e));
            }
        };
        let mut events = Vec::new();
        let mut reached = last;
        if let Some(reply) = reply {
            for k in reply.keys {
                for entry in k.ids {
                    events.push(decode(&entry.map));
                    reached = StreamId::parse(&entry.id);
                }
            }
        }
        if events.len() == COUNT {
            // Far behind: check that nothing between the old position and these entries
            // was trimmed away, before moving the position past them.
            match xinfo(&mut conn, &self.key).await {
                Ok(info) => gap |= info.is_some_and(|i| i.trimmed_past(last)),
                Err(e) => {
                    let e = self.err("XINFO STREAM")(e);
                    return Err(self.lost(e));
                }
            }
        }
        self.last_id = Some(reached);
        self.recheck = false;
        self.lost_since = None;
        Ok(ChangeBatch {
            more: events.len() == COUNT,
            gap,
            behind: None,
            events,
        })
    }
}

/// The server's `run_id` (changes when it restarts).
async fn run_id(conn: &mut Conn) -> redis::RedisResult<String> {
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
    last_generated: StreamId,
    first_entry: Option<StreamId>,
    length: i64,
    entries_added: i64,
}

impl StreamInfo {
    /// Whether entries after `last` may have been trimmed away unread.
    fn trimmed_past(&self, last: StreamId) -> bool {
        self.entries_added > self.length && self.first_entry.is_some_and(|f| f > last)
    }
}

async fn xinfo(conn: &mut Conn, key: &str) -> redis::RedisResult<Option<StreamInfo>> {
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
        Some(Value::Array(e)) if !e.is_empty() => {
            text(Some(e[0].clone())).map(|t| StreamId::parse(&t))
        }
        _ => None,
    };
    Ok(Some(StreamInfo {
        last_generated: text(get("last-generated-id"))
            .map(|t| StreamId::parse(&t))
            .unwrap_or_default(),
        first_entry,
        length: int(get("length")),
        entries_added: int(get("entries-added")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_past_the_position_is_seen() {
        let id = StreamId::parse;
        let info = StreamInfo {
            last_generated: id("20-0"),
            first_entry: Some(id("15-0")),
            length: 5,
            entries_added: 9,
        };
        assert!(info.trimmed_past(id("12-0")));
        assert!(!info.trimmed_past(id("15-0")));
        let never_trimmed = StreamInfo {
            entries_added: 5,
            ..info
        };
        assert!(!never_trimmed.trimmed_past(id("0-0")));
    }
}
