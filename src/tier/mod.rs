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

pub mod admin;
pub mod encoding;
pub mod node;
pub mod reconcile;
pub mod ring;

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

pub use encoding::TierEntry;
pub use node::Node;
use ring::Ring;

use crate::config::{CaFile, RedisTopology, TierConfig};

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

/// The versioned set of many members of one bucket. KEYS[1] bucket; ARGV[1] ttl
/// seconds, then (field, version, value) triples. Returns how many were written.
const SET_MANY_IF_NEWER: &str = r#"
local n = 0
for i = 2, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local v = cur and tonumber(string.match(cur, '^(%-?%d+)|'))
  if not (v and v >= tonumber(ARGV[i + 1])) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    n = n + 1
  end
end
if n > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"#;

/// Compare-and-set of one field. KEYS[1] bucket; ARGV: field, expected value, new
/// value (empty: delete the field), ttl seconds. Returns 1 if it matched.
const COMPARE_AND_SET: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return 1
"#;

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
    many: Script,
    cas: Script,
    /// Reads that found a value older than the reader's floor (see [`Tier::get`]).
    stale_skips: metrics::Counter,
}

impl Tier {
    /// The tier over `topology`; `tls_ca` checks `rediss://` servers (`None`: the
    /// system's trust store).
    pub fn new(
        topology: &RedisTopology,
        local: usize,
        prefix: &str,
        cfg: &TierConfig,
        tls_ca: Option<&CaFile>,
    ) -> Result<Tier, TierError> {
        let ca = tls_ca.map(|c| &c.pem[..]);
        let mut zones = Vec::new();
        for z in &topology.zones {
            let (nodes, ring) = if z.cluster {
                (
                    vec![Node::cluster(&z.name, &z.nodes, cfg, ca)?],
                    Ring::new(&["cluster"]),
                )
            } else {
                let nodes = z
                    .nodes
                    .iter()
                    .map(|u| Node::single(&z.name, u, cfg, ca))
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
            many: Script::new(SET_MANY_IF_NEWER),
            cas: Script::new(COMPARE_AND_SET),
            stale_skips: crate::telemetry::l2_stale_skips(),
        })
    }

    /// The tier a configuration describes, or `None` without `redis_urls`.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Option<Tier>, TierError> {
        match &cfg.redis {
            Some(t) => Ok(Some(Tier::new(
                t,
                cfg.zone,
                &cfg.redis_prefix,
                &cfg.l2,
                cfg.redis_tls_ca.as_ref(),
            )?)),
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

    /// Reads a member: local zone, then the others, taking only a value at or above
    /// `floor` (the newest version this node has answered or been told of: a zone
    /// still holding an older one is behind, and is passed over). `None` means no
    /// readable zone holds it (some may have failed: that is not an error for the
    /// caller, who goes to the store).
    pub async fn get(self: &Arc<Self>, id: u64, floor: i64) -> Option<TierEntry> {
        for zone in self.read_order() {
            match self.get_from(zone, id).await {
                Ok(Some(entry)) if entry.version() < floor => {
                    self.stale_skips.increment(1);
                    continue;
                }
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

    /// Reads many members in one zone: per node, one `HMGET` per bucket, the node's
    /// commands pipelined into one round trip (one by one on a cluster, which refuses
    /// pipelines across slots). Returns what was found; misses, and members whose node
    /// failed (its breaker and metrics note the failure), are absent.
    pub async fn get_many_from(&self, zone: usize, ids: &[u64]) -> Vec<(u64, TierEntry)> {
        let z = &self.zones[zone];
        // Per node: bucket key -> (fields, members), in a stable order.
        type Buckets = std::collections::BTreeMap<String, (Vec<String>, Vec<u64>)>;
        let mut plan: Vec<Buckets> = (0..z.nodes.len()).map(|_| Default::default()).collect();
        for id in ids {
            let (key, field) = encoding::locate(&self.prefix, self.bucket_size, *id);
            let node = z.ring.node_for(key.as_bytes());
            let (fields, members) = plan[node].entry(key).or_default();
            fields.push(field);
            members.push(*id);
        }
        let calls = plan.into_iter().enumerate().map(|(n, buckets)| async move {
            if buckets.is_empty() {
                return Vec::new();
            }
            let node = &z.nodes[n];
            let cluster = node.redis.is_cluster();
            let result = node
                .call("hmget-many", |mut c| {
                    let buckets = &buckets;
                    async move {
                        if cluster {
                            let mut out = Vec::with_capacity(buckets.len());
                            for (key, (fields, _)) in buckets {
                                let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                                    .arg(key)
                                    .arg(fields)
                                    .query_async(&mut c)
                                    .await?;
                                out.push(values);
                            }
                            return Ok(out);
                        }
                        let mut pipe = redis::pipe();
                        for (key, (fields, _)) in buckets {
                            pipe.cmd("HMGET").arg(key).arg(fields);
                        }
                        pipe.query_async::<Vec<Vec<Option<Vec<u8>>>>>(&mut c).await
                    }
                })
                .await;
            let asked: usize = buckets.values().map(|(_, m)| m.len()).sum();
            match result {
                Ok(values) => {
                    let mut found = Vec::new();
                    for ((_, (_, members)), values) in buckets.iter().zip(values) {
                        for (id, raw) in members.iter().zip(values) {
                            if let Some(entry) = raw.and_then(|v| encoding::decode(*id, &v)) {
                                found.push((*id, entry));
                            }
                        }
                    }
                    node.metrics.hits.increment(found.len() as u64);
                    node.metrics.misses.increment((asked - found.len()) as u64);
                    found
                }
                Err(e) => {
                    tracing::debug!(zone = %z.name, error = %e, "tier batch read failed");
                    Vec::new()
                }
            }
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Reads many members, each at or above its floor (`wanted`: id, floor), as
    /// [`Tier::get`] does one: the local zone first, then each other readable zone for
    /// what is still missing, at most one round trip per node per zone read. Values
    /// found in another zone are written back to the local one. What no zone holds is
    /// absent from the answer (the caller reads the store).
    pub async fn get_many(
        self: &Arc<Self>,
        wanted: &[(u64, i64)],
    ) -> std::collections::HashMap<u64, TierEntry> {
        let floors: std::collections::HashMap<u64, i64> = wanted.iter().copied().collect();
        let mut missing: Vec<u64> = wanted.iter().map(|(id, _)| *id).collect();
        let mut out = std::collections::HashMap::with_capacity(missing.len());
        let zones: Vec<usize> = self.read_order().collect();
        for zone in zones {
            if missing.is_empty() {
                break;
            }
            let found = self.get_many_from(zone, &missing).await;
            let mut back = Vec::new();
            for (id, entry) in found {
                if entry.version() < floors.get(&id).copied().unwrap_or(0) {
                    self.stale_skips.increment(1);
                    continue;
                }
                if zone != self.local {
                    back.push((id, entry.clone()));
                }
                out.insert(id, entry);
            }
            if !back.is_empty() {
                // Write back so the next reads here stay in the zone.
                let tier = self.clone();
                let local = self.local;
                tokio::spawn(async move {
                    let _ = tier.set_many_in(local, &back).await;
                });
            }
            missing.retain(|id| !out.contains_key(id));
        }
        out
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

    /// Versioned sets of many members in one zone: one script call per bucket, the
    /// calls to a node pipelined (one by one on a cluster, which refuses pipelines
    /// across slots). Returns the members whose node failed.
    pub async fn set_many_in(&self, zone: usize, entries: &[(u64, TierEntry)]) -> Vec<u64> {
        let z = &self.zones[zone];
        // Per node: bucket key -> (the members, the script's arguments).
        type Buckets = std::collections::BTreeMap<String, (Vec<u64>, Vec<String>)>;
        let mut plan: Vec<Buckets> = (0..z.nodes.len()).map(|_| Default::default()).collect();
        for (id, entry) in entries {
            let (key, field) = encoding::locate(&self.prefix, self.bucket_size, *id);
            let node = z.ring.node_for(key.as_bytes());
            let (ids, args) = plan[node].entry(key).or_default();
            ids.push(*id);
            args.extend([field, entry.version().to_string(), encoding::encode(entry)]);
        }
        let calls = plan.into_iter().enumerate().map(|(n, buckets)| async move {
            if buckets.is_empty() {
                return Vec::new();
            }
            let node = &z.nodes[n];
            let ttl = self.ttl_secs;
            let many = &self.many;
            let cluster = node.redis.is_cluster();
            let result = node
                .call("set-many-if-newer", |mut c| {
                    let buckets = &buckets;
                    async move {
                        if cluster {
                            for (key, (_, args)) in buckets {
                                let mut inv = many.key(key);
                                inv.arg(ttl).arg(args);
                                inv.invoke_async::<i64>(&mut c).await?;
                            }
                            return Ok(());
                        }
                        let mut pipe = redis::pipe();
                        for (key, (_, args)) in buckets {
                            pipe.cmd("EVALSHA")
                                .arg(many.get_hash())
                                .arg(1)
                                .arg(key)
                                .arg(ttl)
                                .arg(args)
                                .ignore();
                        }
                        match pipe.query_async::<()>(&mut c).await {
                            Err(e)
                                if e.kind()
                                    == redis::ErrorKind::Server(
                                        redis::ServerErrorKind::NoScript,
                                    ) =>
                            {
                                many.prepare_invoke().load_async(&mut c).await?;
                                pipe.query_async::<()>(&mut c).await
                            }
                            other => other,
                        }
                    }
                })
                .await;
            match result {
                Ok(()) => Vec::new(),
                Err(e) => {
                    tracing::debug!(zone = %z.name, error = %e, "tier batch write failed");
                    buckets.into_values().flat_map(|(ids, _)| ids).collect()
                }
            }
        });
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}
