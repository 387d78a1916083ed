//! A node's side of the stream: reading its own zone's copy from its position, moving
//! to another copy at the same id when that copy's Redis fails, and knowing exactly
//! when it may have missed an entry.
//!
//! A node reports a gap (and so drops its L1) when
//! - the next entry it reads is not `last + 1`: the copy was trimmed past it, or lost
//!   entries no other copy could give back;
//! - it could not reach any copy for longer than its L1 TTL;
//! - it could not learn a starting position before it began serving.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::streams::StreamReadReply;
use redis::Value;

use super::{copies, decode, entry_id, entry_number, stream_key, Copy, StreamError, BLOCK, COUNT};
use crate::config::Config;
use crate::store::ChangeBatch;

/// How long a node reads another zone's copy before trying its own again.
const RETURN_AFTER: Duration = Duration::from_secs(10);

/// How long this zone's copy may take to answer a probe before a return to it.
const PROBE: Duration = Duration::from_millis(100);

/// A node's reader of the stream.
pub struct StreamReader {
    copies: Vec<Copy>,
    key: String,
    /// This node's own copy (its zone's).
    preferred: usize,
    /// The copy being read.
    current: usize,
    /// When reading moved off the preferred copy.
    away_since: Option<Instant>,
    /// The last entry applied; `None` until a position is known.
    last: Option<u64>,
    /// When no copy could be read (cleared on a good read).
    lost_since: Option<Instant>,
    /// An outage longer than this is reported as a gap.
    max_outage: Duration,
}

impl StreamReader {
    /// A reader of the copies a configuration names, preferring the copy of zone
    /// `cfg.zone`; an outage longer than `max_outage` counts as a gap.
    pub fn from_config(cfg: &Config, max_outage: Duration) -> Result<StreamReader, StreamError> {
        let copies = copies(cfg, BLOCK + Duration::from_secs(2))?;
        if copies.is_empty() {
            return Err(StreamError::NoCopies);
        }
        let preferred = if copies.len() == cfg.redis.as_ref().map_or(0, |t| t.zones.len()) {
            cfg.zone
        } else {
            0
        };
        Ok(StreamReader {
            copies,
            key: stream_key(&cfg.redis_prefix),
            preferred,
            current: preferred,
            away_since: None,
            last: None,
            lost_since: None,
            max_outage,
        })
    }

    fn err(&self, op: &'static str) -> impl Fn(redis::RedisError) -> StreamError + '_ {
        move |source| StreamError::Redis {
            server: self.copies[self.current].redis.shown().to_string(),
            op,
            source,
        }
    }

    /// The last entry read.
    pub fn position(&self) -> Option<u64> {
        self.last
    }

    /// The number of the last entry of the copy being read (0 for none).
    async fn top(&self) -> Result<u64, StreamError> {
        let mut conn = self.copies[self.current]
            .redis
            .get()
            .await
            .map_err(self.err("connect"))?;
        let top: Vec<(String, HashMap<String, Value>)> = redis::cmd("XREVRANGE")
            .arg(&self.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(self.err("XREVRANGE"))?;
        Ok(top
            .first()
            .and_then(|(id, _)| entry_number(id))
            .unwrap_or(0))
    }

    /// Learns the current end of the stream (from the first copy that answers), so
    /// that every later entry is read. Call before loading anything the stream's
    /// changes apply to.
    pub async fn start_at_head(&mut self) -> Result<(), StreamError> {
        let mut last_err = StreamError::NoCopies;
        for _ in 0..self.copies.len() {
            match self.top().await {
                Ok(top) => {
                    self.last = Some(top);
                    return Ok(());
                }
                Err(e) => {
                    last_err = e;
                    self.move_on();
                }
            }
        }
        Err(last_err)
    }

    /// Reads the next copy from now on.
    fn move_on(&mut self) {
        self.current = (self.current + 1) % self.copies.len();
        if self.current == self.preferred {
            self.away_since = None;
        } else {
            self.away_since.get_or_insert_with(Instant::now);
        }
    }

    fn lost(&mut self, e: StreamError) -> StreamError {
        self.lost_since.get_or_insert_with(Instant::now);
        tracing::debug!(error = %e, "change stream copy failed; moving to the next copy");
        self.move_on();
        e
    }

    /// Waits (up to a second) for entries after the position and returns them.
    pub async fn next_batch(&mut self) -> Result<ChangeBatch, StreamError> {
        if self
            .away_since
            .is_some_and(|since| since.elapsed() > RETURN_AFTER)
        {
            // Back to this zone's copy only if it answers at once: a copy still down
            // must not stall reading for its reconnect backoff.
            let copy = &self.copies[self.preferred].redis;
            let probe = tokio::time::timeout(PROBE, async {
                let mut conn = copy.get().await?;
                redis::cmd("PING").query_async::<()>(&mut conn).await
            })
            .await;
            if matches!(probe, Ok(Ok(()))) {
                self.current = self.preferred;
                self.away_since = None;
            } else {
                self.away_since = Some(Instant::now());
            }
        }
        let mut gap = false;
        let last = match self.last {
            Some(last) => last,
            None => {
                // Serving began without a known position: anything may have been missed.
                let top = match self.top().await {
                    Ok(t) => t,
                    Err(e) => return Err(self.lost(e)),
                };
                self.last = Some(top);
                self.lost_since = None;
                return Ok(ChangeBatch {
                    gap: true,
                    ..ChangeBatch::default()
                });
            }
        };
        let conn = self.copies[self.current].redis.get().await;
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                let e = self.err("connect")(e);
                return Err(self.lost(e));
            }
        };
        let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(entry_id(last))
            .query_async(&mut conn)
            .await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                let e = self.err("XREAD")(e);
                return Err(self.lost(e));
            }
        };
        if let Some(since) = self.lost_since.take() {
            if since.elapsed() > self.max_outage {
                tracing::warn!(outage = ?since.elapsed(), "no change stream copy answered for longer than the L1 TTL");
                gap = true;
            }
        }
        let mut events = Vec::new();
        let mut reached = last;
        let mut entries = 0;
        for k in reply.into_iter().flat_map(|r| r.keys) {
            for entry in k.ids {
                entries += 1;
                let Some(n) = entry_number(&entry.id) else {
                    // Not an id this relay writes: the position means nothing here.
                    gap = true;
                    continue;
                };
                if n != reached + 1 {
                    tracing::warn!(
                        expected = reached + 1,
                        got = n,
                        copy = %self.copies[self.current].redis.shown(),
                        "change stream entries missing"
                    );
                    gap = true;
                }
                reached = n.max(reached);
                events.extend(decode(n, &entry.map));
            }
        }
        self.last = Some(reached);
        Ok(ChangeBatch {
            more: entries == COUNT,
            gap,
            behind: None,
            events,
        })
    }
}
