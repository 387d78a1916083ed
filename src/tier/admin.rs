//! The tier's administrative operations, off the request path: reading and writing
//! whole buckets, scanning every bucket a node holds, warming a zone from another, and
//! flushing all members (after a bulk reseed). `reconcile` builds on these.

use super::{encoding, Node, Tier, TierEntry, TierError};
use crate::redis_conn::Conn;

impl Tier {
    /// Compare-and-set in one zone: if the member's field still holds `expected`,
    /// replace it with `new` (or delete it). Returns whether it did. Reconcile repairs
    /// this way, so a newer value written meanwhile is never overwritten.
    pub async fn cas_in(
        &self,
        zone: usize,
        id: u64,
        expected: &[u8],
        new: Option<&TierEntry>,
    ) -> Result<bool, TierError> {
        let (key, field) = encoding::locate(&self.prefix, self.bucket_size, id);
        let value = new.map(encoding::encode).unwrap_or_default();
        let ttl = self.ttl_secs;
        let node = self.zones[zone].node_for(&key);
        let cas = &self.cas;
        let done: i64 = node
            .call("compare-and-set", |mut c| async move {
                cas.key(&key)
                    .arg(&field)
                    .arg(expected)
                    .arg(&value)
                    .arg(ttl)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(done == 1)
    }

    /// The raw value one zone holds for a member (`None`: nothing), undecoded, so a
    /// caller can show what is there and compare-and-set against exactly it.
    pub async fn raw_in(&self, zone: usize, id: u64) -> Result<Option<Vec<u8>>, TierError> {
        let (key, field) = encoding::locate(&self.prefix, self.bucket_size, id);
        let node = self.zones[zone].node_for(&key);
        node.call("HGET", |mut c| async move {
            redis::cmd("HGET")
                .arg(&key)
                .arg(&field)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Every bucket number one zone holds (SCAN of each of its nodes).
    pub async fn buckets_in(&self, zone: usize) -> Result<Vec<u64>, TierError> {
        let mut out = Vec::new();
        for node in 0..self.zones[zone].nodes.len() {
            for key in self.bucket_keys(zone, node).await? {
                out.extend(encoding::bucket_of(&self.prefix, &key));
            }
        }
        Ok(out)
    }

    /// Everything one zone holds in one bucket: member id → raw value.
    pub async fn bucket_in(
        &self,
        zone: usize,
        bucket: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, TierError> {
        let key = encoding::bucket_key(&self.prefix, bucket);
        let node = self.zones[zone].node_for(&key);
        let fields: Vec<(String, Vec<u8>)> = node
            .call("HGETALL", |mut c| async move {
                redis::cmd("HGETALL").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(fields
            .into_iter()
            .filter_map(|(f, v)| Some((encoding::member_of(self.bucket_size, bucket, &f)?, v)))
            .collect())
    }

    pub fn bucket_size(&self) -> u64 {
        self.bucket_size
    }

    /// Every bucket key held by one node (SCAN), for warming and flushing.
    async fn bucket_keys(&self, zone: usize, node: usize) -> Result<Vec<String>, TierError> {
        let n = &self.zones[zone].nodes[node];
        if n.redis.is_cluster() {
            return self.cluster_bucket_keys(n).await;
        }
        let pattern = encoding::bucket_pattern(&self.prefix);
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
                        if let Some(port) = master.get(1).and_then(|p| match p {
                            redis::Value::Int(p) => u16::try_from(*p).ok(),
                            _ => None,
                        }) {
                            masters.insert((host, port));
                        }
                    }
                }
            }
        }
        let mut keys = Vec::new();
        for (host, port) in masters {
            let err = |op| {
                let node = format!("{host}:{port}");
                move |source| TierError::Redis { node, op, source }
            };
            let client = n.redis.peer(&host, port).map_err(err("master URL"))?;
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .map_err(err("connect to master"))?;
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(encoding::bucket_pattern(&self.prefix))
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
                let Some(bucket) = encoding::bucket_of(&self.prefix, &key) else {
                    continue;
                };
                let k = key.clone();
                let fields: Vec<(String, Vec<u8>)> = self.zones[from].nodes[node]
                    .call("HGETALL", |mut c| async move {
                        redis::cmd("HGETALL").arg(&k).query_async(&mut c).await
                    })
                    .await?;
                for (field, value) in fields {
                    let Some(id) = encoding::member_of(self.bucket_size, bucket, &field) else {
                        continue;
                    };
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
            let (n, e) = self.flush_zone(zone).await;
            removed += n;
            errors.extend(e);
        }
        (removed, errors)
    }

    /// Deletes every member bucket of one zone.
    pub async fn flush_zone(&self, zone: usize) -> (u64, Vec<TierError>) {
        let mut removed = 0;
        let mut errors = Vec::new();
        for node in 0..self.zones[zone].nodes.len() {
            let keys = match self.bucket_keys(zone, node).await {
                Ok(keys) => keys,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            for chunk in keys.chunks(500) {
                let chunk = chunk.to_vec();
                let n = chunk.len() as u64;
                let unlinked = self.zones[zone].nodes[node]
                    .call("UNLINK", |mut c| async move {
                        // One key per command, and no pipeline on a cluster: it refuses
                        // keys of several slots in either.
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
                    .await;
                match unlinked {
                    Ok(()) => removed += n,
                    Err(e) => errors.push(e),
                }
            }
        }
        (removed, errors)
    }
}
