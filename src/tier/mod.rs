//! The L2 hash tier: Redis nodes in zones, each member's bucket on one node per zone
//! (consistent hashing within a zone), every zone holding a full replica, as Netflix's
//! EVCache does with memcached.
//!
//! Rules:
//! - **read**: the local zone's node for the member's bucket; on a miss or an error,
//!   each other readable zone in turn. A value found in another zone is written back
//!   to the local zone. Zones marked write-only (warming) are never read.
//! - **write**: every zone, with a versioned set (a Lua script): a record replaces
//!   what is held only if its version is newer, so a slow fill can never overwrite a
//!   newer value, and a deletion is a versioned tombstone, not a bare delete.
//! - **failure**: each node call has a timeout; a node that fails repeatedly has its
//!   circuit opened for a cool-down and is skipped (then probed again), so a dead node
//!   costs nothing per request and no request fails because a node or zone is down.
//!
//! One multiplexed connection per node carries every request to it (pipelined by the
//! client), rather than a connection per request. A zone may instead be a Redis
//! Cluster (`redis+cluster://` seeds): it is one "node" here, whose client routes each
//! bucket key to its slot's master.

pub mod encoding;
pub mod reconcile;
pub mod ring;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};

pub use encoding::TierEntry;
use ring::Ring;

use crate::config::{RedisTopology, TierConfig};

/// Tier failures (per node; the tier itself degrades rather than failing requests).
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("redis node {node}: {op}: {source}")]
    Redis {
        node: String,
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis node {node}: {op}: no answer within {timeout:?}")]
    Timeout {
        node: String,
        op: &'static str,
        timeout: Duration,
    },
    #[error("redis node {node}: circuit open")]
    CircuitOpen { node: String },
    #[error("no zone named {0:?}")]
    NoSuchZone(String),
}

/// The versioned set. KEYS[1] bucket, ARGV: field, version, value, ttl seconds.
/// Returns 1 if written, 0 if what is held is as new or newer.
const SET_IF_NEWER: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local v = tonumber(string.match(cur, '^(%-?%d+)|'))
  if v and v >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"#;

/// Consecutive failures that open a node's circuit, and the state.
struct Breaker {
    failures: AtomicU32,
    /// Milliseconds (since `epoch`) until which the circuit is open.
    open_until: AtomicU64,
    epoch: Instant,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go to the node (closed, or half-open after the cool-down).
    fn allow(&self) -> bool {
        self.now_ms() >= self.open_until.load(Ordering::Relaxed)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.open_until.store(0, Ordering::Relaxed);
    }

    /// Records a failure; returns whether the circuit is (now) open.
    fn failure(&self) -> bool {
        let f = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if f >= self.threshold {
            self.open_until.store(
                self.now_ms() + self.cooldown.as_millis() as u64,
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }
}

struct NodeMetrics {
    hits: Counter,
    misses: Counter,
    errors: Counter,
    breaker_open: Gauge,
    latency: Histogram,
}

/// A connection to a node: a plain Redis, or a Redis Cluster (which routes each key
/// to its slot's master itself).
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

enum NodeClient {
    Single(Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// One Redis node (or one Redis Cluster standing for a whole zone).
pub struct Node {
    pub url: String,
    client: NodeClient,
    conn: Mutex<Option<Conn>>,
    breaker: Breaker,
    timeout: Duration,
    metrics: NodeMetrics,
}

impl Node {
    fn new(zone: &str, url: &str, cfg: &TierConfig) -> Result<Node, TierError> {
        let client = Client::open(url).map_err(|source| TierError::Redis {
            node: url.to_string(),
            op: "parse URL",
            source,
        })?;
        Node::with_client(zone, url, NodeClient::Single(client), cfg)
    }

    /// A Redis Cluster zone: one "node" whose client routes by slot.
    fn cluster(zone: &str, seeds: &[String], cfg: &TierConfig) -> Result<Node, TierError> {
        let urls: Vec<String> = seeds
            .iter()
            .map(|s| s.replacen("redis+cluster://", "redis://", 1))
            .collect();
        let shown = seeds.join(",");
        let client = redis::cluster::ClusterClient::builder(urls)
            .connection_timeout(cfg.timeout.max(Duration::from_millis(200)))
            .response_timeout(cfg.timeout)
            .build()
            .map_err(|source| TierError::Redis {
                node: shown.clone(),
                op: "parse cluster seeds",
                source,
            })?;
        Node::with_client(zone, &shown, NodeClient::Cluster(Box::new(client)), cfg)
    }

    fn with_client(
        zone: &str,
        url: &str,
        client: NodeClient,
        cfg: &TierConfig,
    ) -> Result<Node, TierError> {
        let labels = [("zone", zone.to_string()), ("node", url.to_string())];
        Ok(Node {
            url: url.to_string(),
            client,
            conn: Mutex::new(None),
            breaker: Breaker {
                failures: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                epoch: Instant::now(),
                threshold: cfg.breaker_failures,
                cooldown: cfg.breaker_cooldown,
            },
            timeout: cfg.timeout,
            metrics: NodeMetrics {
                hits: metrics::counter!("readtier_l2_hits_total", &labels),
                misses: metrics::counter!("readtier_l2_misses_total", &labels),
                errors: metrics::counter!("readtier_l2_errors_total", &labels),
                breaker_open: metrics::gauge!("readtier_l2_breaker_open", &labels),
                latency: metrics::histogram!("readtier_l2_request_duration_seconds", &labels),
            },
        })
    }

    async fn connection(&self) -> Result<Conn, TierError> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let err = |source| TierError::Redis {
            node: self.url.clone(),
            op: "connect",
            source,
        };
        let c = match &self.client {
            NodeClient::Single(client) => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
                    .set_response_timeout(Some(self.timeout));
                Conn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await
                        .map_err(err)?,
                )
            }
            NodeClient::Cluster(client) => {
                Conn::Cluster(client.get_async_connection().await.map_err(err)?)
            }
        };
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
        Ok(c)
    }

    /// Runs one call with the node's timeout and circuit breaker.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, TierError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            return Err(TierError::CircuitOpen {
                node: self.url.clone(),
            });
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.connection().await?;
            f(conn).await.map_err(|source| TierError::Redis {
                node: self.url.clone(),
                op,
                source,
            })
        })
        .await
        .unwrap_or_else(|_| {
            Err(TierError::Timeout {
                node: self.url.clone(),
                op,
                timeout: self.timeout,
            })
        });
        self.metrics.latency.record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                if self.breaker.failures.load(Ordering::Relaxed) > 0 {
                    self.metrics.breaker_open.set(0.0);
                }
                self.breaker.success();
            }
            Err(_) => {
                self.metrics.errors.increment(1);
                // A broken connection is replaced on the next call.
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if self.breaker.failure() {
                    self.metrics.breaker_open.set(1.0);
                }
            }
        }
        result
    }
}

/// One zone: a ring of nodes.
pub struct ZoneTier {
    pub name: String,
    ring: Ring,
    pub nodes: Vec<Node>,
    /// Warming: written to, never read from.
    pub write_only: bool,
}

impl ZoneTier {
    fn node_for(&self, key: &str) -> &Node {
        &self.nodes[self.ring.node_for(key.as_bytes())]
    }
}

/// The hash tier of a node.
pub struct Tier {
    pub zones: Vec<ZoneTier>,
    /// Index of this node's zone.
    pub local: usize,
    prefix: String,
    bucket_size: u64,
    ttl_secs: u64,
    script: Script,
}

impl Tier {
    pub fn new(
        topology: &RedisTopology,
        local: usize,
        prefix: &str,
        cfg: &TierConfig,
    ) -> Result<Tier, TierError> {
        let mut zones = Vec::new();
        for z in &topology.zones {
            let (nodes, ring) = if z.cluster {
                (
                    vec![Node::cluster(&z.name, &z.nodes, cfg)?],
                    Ring::new(&["cluster"]),
                )
            } else {
                let nodes = z
                    .nodes
                    .iter()
                    .map(|u| Node::new(&z.name, u, cfg))
                    .collect::<Result<Vec<_>, _>>()?;
                (nodes, Ring::new(&z.nodes))
            };
            zones.push(ZoneTier {
                name: z.name.clone(),
                ring,
                nodes,
                write_only: cfg.write_only_zones.contains(&z.name),
            });
        }
        Ok(Tier {
            zones,
            local,
            prefix: prefix.to_string(),
            bucket_size: cfg.bucket_size,
            ttl_secs: cfg.ttl.as_secs().max(1),
            script: Script::new(SET_IF_NEWER),
        })
    }

    /// The tier a configuration describes, or `None` without `redis_urls`.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Option<Tier>, TierError> {
        match &cfg.redis {
            Some(t) => Ok(Some(Tier::new(t, cfg.zone, &cfg.redis_prefix, &cfg.l2)?)),
            None => Ok(None),
        }
    }

    pub fn zone_index(&self, name: &str) -> Result<usize, TierError> {
        self.zones
            .iter()
            .position(|z| z.name == name)
            .ok_or_else(|| TierError::NoSuchZone(name.to_string()))
    }

    /// The zones to read, local first, write-only ones left out.
    fn read_order(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.local)
            .chain((0..self.zones.len()).filter(move |z| *z != self.local))
            .filter(|z| !self.zones[*z].write_only)
    }

    /// Reads a member from one zone: `Ok(None)` is a miss.
    pub async fn get_from(&self, zone: usize, id: u64) -> Result<Option<TierEntry>, TierError> {
        let (key, field) = encoding::locate(&self.prefix, self.bucket_size, id);
        let node = self.zones[zone].node_for(&key);
        let raw: Option<Vec<u8>> = node
            .call("HGET", |mut c| async move {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg(&field)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let entry = raw.and_then(|v| encoding::decode(id, &v));
        if entry.is_some() {
            node.metrics.hits.increment(1);
        } else {
            node.metrics.misses.increment(1);
        }
        Ok(entry)
    }

    /// Reads a member: local zone, then the others. `Ok(None)` means no readable zone
    /// holds it (some may have failed: that is not an error for the caller, who goes
    /// to the store).
    pub async fn get(self: &Arc<Self>, id: u64) -> Option<TierEntry> {
        for zone in self.read_order() {
            match self.get_from(zone, id).await {
                Ok(Some(entry)) => {
                    if zone != self.local {
                        // Write back so the next read here stays in the zone.
                        let tier = self.clone();
                        let e = entry.clone();
                        let local = self.local;
                        tokio::spawn(async move {
                            let _ = tier.set_in(local, id, &e).await;
                        });
                    }
                    return Some(entry);
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "tier read failed; trying the next zone");
                    continue;
                }
            }
        }
        None
    }

    /// Versioned set in one zone; `Ok(true)` if written, `Ok(false)` if what is held
    /// is as new or newer.
    pub async fn set_in(&self, zone: usize, id: u64, entry: &TierEntry) -> Result<bool, TierError> {
        let (key, field) = encoding::locate(&self.prefix, self.bucket_size, id);
        let value = encoding::encode(entry);
        let version = entry.version();
        let ttl = self.ttl_secs;
        let node = self.zones[zone].node_for(&key);
        let script = &self.script;
        let written: i64 = node
            .call("set-if-newer", |mut c| async move {
                script
                    .key(&key)
                    .arg(&field)
                    .arg(version)
                    .arg(&value)
                    .arg(ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(written == 1)
    }

    /// Versioned set in every zone (write-only ones included), concurrently. Returns
    /// the zones that failed.
    pub async fn set_all(&self, id: u64, entry: &TierEntry) -> Vec<(usize, TierError)> {
        let sets =
            (0..self.zones.len()).map(|z| async move { (z, self.set_in(z, id, entry).await) });
        futures_util::future::join_all(sets)
            .await
            .into_iter()
            .filter_map(|(z, r)| r.err().map(|e| (z, e)))
            .collect()
    }

    /// Unconditional write in one zone (reconcile's repair of a value that is wrong
    /// at the same or a higher version than the store's).
    pub async fn force_in(&self, zone: usize, id: u64, entry: &TierEntry) -> Result<(), TierError> {
        let (key, field) = encoding::locate(&self.prefix, self.bucket_size, id);
        let value = encoding::encode(entry);
        let ttl = self.ttl_secs;
        let node = self.zones[zone].node_for(&key);
        node.call("HSET", |mut c| async move {
            redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg(&field)
                .arg(&value)
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// Everything one zone holds in one bucket: member id → raw value.
    pub async fn bucket_in(
        &self,
        zone: usize,
        bucket: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, TierError> {
        let key = format!("{}h:{bucket}", self.prefix);
        let node = self.zones[zone].node_for(&key);
        let fields: Vec<(String, Vec<u8>)> = node
            .call("HGETALL", |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(fields
            .into_iter()
            .filter_map(|(f, v)| {
                f.parse::<u64>()
                    .ok()
                    .map(|o| (bucket * self.bucket_size + o, v))
            })
            .collect())
    }

    /// Removes a member's field in one zone (reconcile: a record the store lacks).
    pub async fn remove_in(&self, zone: usize, id: u64) -> Result<(), TierError> {
        let (key, field) = encoding::locate(&self.prefix, self.bucket_size, id);
        let node = self.zones[zone].node_for(&key);
        node.call("HDEL", |mut c| async move {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(&field)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    pub fn bucket_size(&self) -> u64 {
        self.bucket_size
    }

    /// Every bucket key held by one node (SCAN), for warming and flushing.
    async fn bucket_keys(&self, zone: usize, node: usize) -> Result<Vec<String>, TierError> {
        let n = &self.zones[zone].nodes[node];
        if let NodeClient::Cluster(_) = n.client {
            return self.cluster_bucket_keys(n).await;
        }
        let pattern = format!("{}h:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let p = pattern.clone();
            let (next, batch): (u64, Vec<String>) = n
                .call("SCAN", |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&p)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// A cluster's bucket keys: SCAN on each master (learned from `CLUSTER SLOTS`),
    /// over a plain connection of its own.
    async fn cluster_bucket_keys(&self, n: &Node) -> Result<Vec<String>, TierError> {
        let slots: redis::Value = n
            .call("CLUSTER SLOTS", |mut c| async move {
                redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await
            })
            .await?;
        let mut masters = std::collections::BTreeSet::new();
        if let redis::Value::Array(ranges) = slots {
            for r in ranges {
                if let redis::Value::Array(parts) = r {
                    if let Some(redis::Value::Array(master)) = parts.get(2) {
                        let host = match master.first() {
                            Some(redis::Value::BulkString(h)) => {
                                String::from_utf8_lossy(h).into_owned()
                            }
                            Some(redis::Value::SimpleString(h)) => h.clone(),
                            _ => continue,
                        };
                        if let Some(redis::Value::Int(port)) = master.get(1) {
                            masters.insert(format!("redis://{host}:{port}"));
                        }
                    }
                }
            }
        }
        let mut keys = Vec::new();
        for url in masters {
            let err = |op| {
                let url = url.clone();
                move |source| TierError::Redis {
                    node: url,
                    op,
                    source,
                }
            };
            let client = Client::open(url.as_str()).map_err(err("parse master URL"))?;
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .map_err(err("connect to master"))?;
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{}h:*", self.prefix))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await
                    .map_err(err("SCAN"))?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// Copies every member held in zone `from` into zone `to` (versioned, so newer
    /// values already in `to` win). Returns (members copied, members skipped as not newer).
    pub async fn warm(&self, from: usize, to: usize) -> Result<(u64, u64), TierError> {
        let (mut copied, mut skipped) = (0, 0);
        for node in 0..self.zones[from].nodes.len() {
            for key in self.bucket_keys(from, node).await? {
                let Some(bucket) = key
                    .strip_prefix(&format!("{}h:", self.prefix))
                    .and_then(|b| b.parse::<u64>().ok())
                else {
                    continue;
                };
                let k = key.clone();
                let fields: Vec<(String, Vec<u8>)> = self.zones[from].nodes[node]
                    .call("HGETALL", |mut c| async move {
                        redis::cmd("HGETALL").arg(&k).query_async(&mut c).await
                    })
                    .await?;
                for (field, value) in fields {
                    let Ok(offset) = field.parse::<u64>() else {
                        continue;
                    };
                    let id = bucket * self.bucket_size + offset;
                    let Some(entry) = encoding::decode(id, &value) else {
                        continue;
                    };
                    if self.set_in(to, id, &entry).await? {
                        copied += 1;
                    } else {
                        skipped += 1;
                    }
                }
            }
        }
        Ok((copied, skipped))
    }

    /// Deletes every member bucket in every zone (after a bulk reseed of the store,
    /// whose rows replaced versions the tier cannot compare against). Returns the
    /// buckets removed; nodes that fail are reported.
    pub async fn flush_members(&self) -> (u64, Vec<TierError>) {
        let mut removed = 0;
        let mut errors = Vec::new();
        for zone in 0..self.zones.len() {
            for node in 0..self.zones[zone].nodes.len() {
                match self.bucket_keys(zone, node).await {
                    Ok(keys) => {
                        for chunk in keys.chunks(500) {
                            let chunk = chunk.to_vec();
                            let n = chunk.len() as u64;
                            match self.zones[zone].nodes[node]
                                .call("UNLINK", |mut c| async move {
                                    // One key per command, and no pipeline on a cluster:
                                    // it refuses keys of several slots in either.
                                    if let Conn::Cluster(_) = c {
                                        for k in &chunk {
                                            redis::cmd("UNLINK")
                                                .arg(k)
                                                .query_async::<i64>(&mut c)
                                                .await?;
                                        }
                                        return Ok(());
                                    }
                                    let mut p = redis::pipe();
                                    for k in &chunk {
                                        p.cmd("UNLINK").arg(k).ignore();
                                    }
                                    p.query_async::<()>(&mut c).await
                                })
                                .await
                            {
                                Ok(_) => removed += n,
                                Err(e) => errors.push(e),
                            }
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        (removed, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_closes_on_success() {
        let b = Breaker {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            threshold: 3,
            cooldown: Duration::from_secs(60),
        };
        assert!(b.allow());
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure());
        assert!(!b.allow(), "open during the cool-down");
        b.success();
        assert!(b.allow());
    }
}
