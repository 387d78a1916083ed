//! The relay's side of the stream: appending entry `k` to every copy, each copy only
//! after its entry `k - 1`, back-filling a copy that is behind from another copy.
//!
//! Rules, per copy:
//! - **append**: the script adds `k-0` only if the copy's last entry is `(k-1)-0`;
//! - **behind** (its last entry is older: it was unreachable, or restarted empty):
//!   the missing entries are copied in order from another copy that holds them; an id
//!   no copy holds is written as a filler if it is *fillable* (reserved by a relay that
//!   failed before publishing it: its changes are published again under later ids),
//!   else it is left out, which readers of that copy see as a gap;
//! - **ahead** (it already holds `k`): another relay wrote it (this one was cut off
//!   and replaced): the append fails, and the relay finds its lease gone.
//!
//! An append succeeds when at least one copy holds the entry; copies that failed catch
//! up through the back-fill of a later append.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use redis::{Script, Value};

use super::{copies, entry_id, entry_number, filler, stream_key, Copy, StreamError};
use crate::config::Config;

/// Adds an entry if the copy's last id is ARGV[1] (`*`: any lower id). KEYS[1] the
/// stream; ARGV: expected last id, new id, max length, then field/value pairs.
/// Returns `{outcome, last id}` with outcome `ok`, `behind` or `ahead`.
const APPEND: &str = r#"
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local last = '0-0'
if #top > 0 then last = top[1][1] end
local lastk = tonumber(string.match(last, '^(%d+)-')) or 0
local k = tonumber(string.match(ARGV[2], '^(%d+)-'))
if lastk >= k then return {'ahead', last} end
if ARGV[1] ~= '*' and last ~= ARGV[1] then return {'behind', last} end
local cmd = {'XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], ARGV[2]}
for i = 4, #ARGV do cmd[#cmd + 1] = ARGV[i] end
redis.call(unpack(cmd))
return {'ok', ARGV[2]}
"#;

/// Longest wait for one copy to answer.
const RESPONSE: Duration = Duration::from_secs(2);

/// Once one copy holds an entry, how much longer an append waits for the others
/// before it moves on (they catch up by back-fill on a later append).
const STRAGGLER: Duration = Duration::from_millis(20);

/// A copy that failed is skipped for this long, doubling per failure up to
/// [`MAX_SKIP`]: a dead Redis process costs an append nothing while it is skipped.
const MIN_SKIP: Duration = Duration::from_millis(100);
const MAX_SKIP: Duration = Duration::from_secs(2);

/// What the publisher knows of a copy's health.
#[derive(Default, Clone, Copy)]
struct Health {
    failures: u32,
    skip_until: Option<std::time::Instant>,
}

/// What a copy answered to an append.
enum Outcome {
    Ok,
    /// Its last entry number.
    Behind(u64),
    Ahead,
}

/// Appends entries to every copy of the stream (used by the relay).
pub struct StreamPublisher {
    copies: Vec<Copy>,
    key: String,
    maxlen: u64,
    script: Script,
    /// Ids reserved but never published by this or an earlier relay: a copy that
    /// lacks one may take a filler there.
    fillable: BTreeSet<u64>,
    health: Vec<Health>,
}

type Entry = (u64, Vec<(String, Vec<u8>)>);

impl StreamPublisher {
    pub fn from_config(cfg: &Config) -> Result<StreamPublisher, StreamError> {
        let copies = copies(cfg, RESPONSE)?;
        if copies.is_empty() {
            return Err(StreamError::NoCopies);
        }
        Ok(StreamPublisher {
            health: vec![Health::default(); copies.len()],
            copies,
            key: stream_key(&cfg.redis_prefix),
            maxlen: cfg.changes.stream_maxlen,
            script: Script::new(APPEND),
            fillable: BTreeSet::new(),
        })
    }

    fn err(&self, c: usize, op: &'static str) -> impl Fn(redis::RedisError) -> StreamError {
        let server = self.copies[c].redis.shown().to_string();
        move |source| StreamError::Redis {
            server: server.clone(),
            op,
            source,
        }
    }

    /// Runs one call on copy `c` within the response timeout.
    async fn on<T, F, Fut>(&self, c: usize, op: &'static str, f: F) -> Result<T, StreamError>
    where
        F: FnOnce(crate::redis_conn::Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let call = async {
            let conn = self.copies[c]
                .redis
                .get()
                .await
                .map_err(self.err(c, "connect"))?;
            f(conn).await.map_err(self.err(c, op))
        };
        tokio::time::timeout(RESPONSE, call)
            .await
            .unwrap_or_else(|_| {
                Err(StreamError::Timeout {
                    server: self.copies[c].redis.shown().to_string(),
                    op,
                    timeout: RESPONSE,
                })
            })
    }

    /// The number of the last entry copy `c` holds (0 for none).
    async fn top(&self, c: usize) -> Result<u64, StreamError> {
        let key = &self.key;
        let top: Vec<(String, HashMap<String, Value>)> = self
            .on(c, "XREVRANGE", |mut conn| async move {
                redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(top
            .first()
            .and_then(|(id, _)| entry_number(id))
            .unwrap_or(0))
    }

    async fn try_append(
        &self,
        c: usize,
        expect: Option<u64>,
        k: u64,
        fields: &[(String, Vec<u8>)],
    ) -> Result<Outcome, StreamError> {
        let expect = match expect {
            Some(0) => "0-0".to_string(),
            Some(j) => entry_id(j),
            None => "*".to_string(),
        };
        let mut inv = self.script.prepare_invoke();
        inv.key(&self.key)
            .arg(expect)
            .arg(entry_id(k))
            .arg(self.maxlen);
        for (f, v) in fields {
            inv.arg(f).arg(v);
        }
        let (outcome, last): (String, String) = self
            .on(c, "append", |mut conn| async move {
                inv.invoke_async(&mut conn).await
            })
            .await?;
        Ok(match outcome.as_str() {
            "ok" => Outcome::Ok,
            "ahead" => Outcome::Ahead,
            _ => Outcome::Behind(entry_number(&last).unwrap_or(0)),
        })
    }

    /// Entries `from..=to` as one copy holds them (possibly fewer: trimmed).
    async fn range(&self, c: usize, from: u64, to: u64) -> Result<Vec<Entry>, StreamError> {
        let key = &self.key;
        let rows: Vec<(String, HashMap<String, Value>)> = self
            .on(c, "XRANGE", |mut conn| async move {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(entry_id(from))
                    .arg(entry_id(to))
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, map)| {
                let k = entry_number(&id)?;
                let fields = map
                    .into_iter()
                    .map(|(f, v)| {
                        let bytes = match v {
                            Value::BulkString(b) => b,
                            Value::SimpleString(s) => s.into_bytes(),
                            other => format!("{other:?}").into_bytes(),
                        };
                        (f, bytes)
                    })
                    .collect();
                Some((k, fields))
            })
            .collect())
    }

    /// Brings copy `c` (whose last entry is `top`) up to `to`, from the other copies.
    async fn backfill(&self, c: usize, top: u64, to: u64) -> Result<(), StreamError> {
        let mut last = top;
        let mut next = top + 1;
        while next <= to {
            let upto = to.min(next + 999);
            let mut found: Vec<Entry> = Vec::new();
            for other in (0..self.copies.len()).filter(|o| *o != c) {
                if let Ok(rows) = self.range(other, next, upto).await {
                    if rows.len() > found.len() {
                        found = rows;
                    }
                }
                if found.len() as u64 == upto - next + 1 {
                    break;
                }
            }
            let mut have: HashMap<u64, Vec<(String, Vec<u8>)>> = found.into_iter().collect();
            for j in next..=upto {
                let fields = match have.remove(&j) {
                    Some(f) => f,
                    None if self.fillable.contains(&j) => filler()
                        .into_iter()
                        .map(|(f, v)| (f.to_string(), v.into_bytes()))
                        .collect(),
                    // Nowhere to be had: left out, so readers of this copy see a gap.
                    None => continue,
                };
                let expect = (j == last + 1).then_some(last);
                match self.try_append(c, expect, j, &fields).await? {
                    Outcome::Ok | Outcome::Ahead => last = j,
                    Outcome::Behind(t) => {
                        tracing::warn!(copy = %self.copies[c].redis.shown(), at = t, "change stream copy moved while back-filling");
                        return Ok(());
                    }
                }
            }
            next = upto + 1;
        }
        Ok(())
    }

    /// Appends entry `k` to copy `c`, back-filling it first if it is behind.
    async fn append_to(
        &self,
        c: usize,
        k: u64,
        fields: &[(String, Vec<u8>)],
    ) -> Result<(), StreamError> {
        for _ in 0..3 {
            match self.try_append(c, Some(k - 1), k, fields).await? {
                Outcome::Ok => return Ok(()),
                Outcome::Ahead => return Err(self.taken(c, k)),
                Outcome::Behind(top) => {
                    tracing::info!(copy = %self.copies[c].redis.shown(), at = top, to = k - 1, "change stream copy behind: back-filling");
                    self.backfill(c, top, k - 1).await?;
                }
            }
        }
        // Still not in order (the copy keeps losing entries): add it anyway, readers
        // of this copy see the hole.
        match self.try_append(c, None, k, fields).await? {
            Outcome::Ok | Outcome::Behind(_) => Ok(()),
            Outcome::Ahead => Err(self.taken(c, k)),
        }
    }

    fn taken(&self, c: usize, k: u64) -> StreamError {
        StreamError::Taken {
            server: self.copies[c].redis.shown().to_string(),
            id: k,
        }
    }

    /// Appends entry `k` to the copies `tried` at once; once one holds it, waits at
    /// most [`STRAGGLER`] for the rest.
    async fn append_all(
        &self,
        tried: &[usize],
        k: u64,
        fields: &[(String, Vec<u8>)],
    ) -> Vec<(usize, Result<(), StreamError>)> {
        use futures_util::StreamExt;
        let mut pending: futures_util::stream::FuturesUnordered<_> = tried
            .iter()
            .map(|&c| async move { (c, self.append_to(c, k, fields).await) })
            .collect();
        let mut results: Vec<(usize, Result<(), StreamError>)> = Vec::new();
        let mut held = 0;
        while let Some((c, r)) = pending.next().await {
            held += usize::from(r.is_ok());
            results.push((c, r));
            if held > 0 {
                // Stragglers get a little longer; an append cut short is safe (the
                // next one finds the copy behind or level, and back-fills).
                let rest = tokio::time::timeout(STRAGGLER, async {
                    let mut rest = Vec::new();
                    while let Some(x) = pending.next().await {
                        rest.push(x);
                    }
                    rest
                })
                .await;
                match rest {
                    Ok(rest) => results.extend(rest),
                    Err(_) => {
                        drop(pending);
                        let answered: BTreeSet<usize> = results.iter().map(|(c, _)| *c).collect();
                        for &c in tried.iter().filter(|c| !answered.contains(c)) {
                            results.push((
                                c,
                                Err(StreamError::Timeout {
                                    server: self.copies[c].redis.shown().to_string(),
                                    op: "append",
                                    timeout: STRAGGLER,
                                }),
                            ));
                        }
                    }
                }
                break;
            }
        }
        results
    }

    /// Appends entry `k` to every copy; returns how many hold it. Fails only if none
    /// does (the caller then publishes the batch again under a new id, and `k` becomes
    /// fillable).
    pub async fn append(
        &mut self,
        k: u64,
        fields: &[(&'static str, String)],
    ) -> Result<usize, StreamError> {
        let fields: Vec<(String, Vec<u8>)> = fields
            .iter()
            .map(|(f, v)| (f.to_string(), v.clone().into_bytes()))
            .collect();
        let now = std::time::Instant::now();
        let mut tried: Vec<usize> = (0..self.copies.len())
            .filter(|&c| self.health[c].skip_until.is_none_or(|t| now >= t))
            .collect();
        if tried.is_empty() {
            // Every copy is being skipped: try them all rather than publish nowhere.
            tried = (0..self.copies.len()).collect();
        }
        let results = self.append_all(&tried, k, &fields).await;
        let mut held = 0;
        let mut last_err = String::new();
        let now = std::time::Instant::now();
        for (c, r) in results {
            let h = &mut self.health[c];
            match r {
                Ok(()) => {
                    held += 1;
                    *h = Health::default();
                }
                Err(e) => {
                    tracing::debug!(copy = %self.copies[c].redis.shown(), error = %e, "change stream copy missed an entry");
                    last_err = e.to_string();
                    h.failures = h.failures.saturating_add(1);
                    let skip = MIN_SKIP
                        .saturating_mul(1 << h.failures.min(5))
                        .min(MAX_SKIP);
                    h.skip_until = Some(now + skip / 2);
                }
            }
        }
        if held == 0 {
            self.fillable.insert(k);
            return Err(StreamError::NoCopy {
                id: k,
                last: last_err,
            });
        }
        Ok(held)
    }

    /// At takeover: ids after `saved` up to `reserved` were reserved by a relay that
    /// may have died before publishing them (fillable); every reachable copy is
    /// brought level with the highest id any of them holds. Returns the next id to
    /// use, above every id ever reserved or held.
    pub async fn sync(&mut self, saved: u64, reserved: u64) -> u64 {
        self.fillable.extend(saved + 1..=reserved);
        let mut tops = Vec::new();
        for c in 0..self.copies.len() {
            tops.push(self.top(c).await.ok());
        }
        let highest = tops
            .iter()
            .flatten()
            .copied()
            .max()
            .unwrap_or(0)
            .max(reserved);
        for (c, top) in tops.iter().enumerate() {
            if let Some(top) = *top {
                if top < highest {
                    if let Err(e) = self.backfill(c, top, highest).await {
                        tracing::warn!(error = %e, "change stream copy could not be brought level");
                    }
                }
            }
        }
        highest + 1
    }
}
