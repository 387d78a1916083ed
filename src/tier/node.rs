//! One Redis node of a zone (or one Redis Cluster standing for a whole zone): its
//! connection, its per-call timeout and its circuit breaker.
//!
//! A node that fails `l2.breaker_failures` calls in a row has its circuit opened for
//! `l2.breaker_cooldown` and is skipped meanwhile, so a dead node costs nothing per
//! request; after the cool-down calls are let through again and the first success
//! closes it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::TierError;
use crate::config::TierConfig;
use crate::redis_conn::{Conn, RedisConn, Timeouts};
use crate::telemetry::TierNodeMetrics;

/// Consecutive failures that open a node's circuit, and the state.
pub(crate) struct Breaker {
    failures: AtomicU32,
    /// Milliseconds (since `epoch`) until which the circuit is open.
    open_until: AtomicU64,
    epoch: Instant,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            threshold,
            cooldown,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a call may go to the node (closed, or half-open after the cool-down).
    pub(crate) fn allow(&self) -> bool {
        self.now_ms() >= self.open_until.load(Ordering::Relaxed)
    }

    /// Records a success; returns whether the circuit had recorded failures.
    pub(crate) fn success(&self) -> bool {
        let had = self.failures.swap(0, Ordering::Relaxed) > 0;
        self.open_until.store(0, Ordering::Relaxed);
        had
    }

    /// Records a failure; returns whether the circuit is (now) open.
    pub(crate) fn failure(&self) -> bool {
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

/// One Redis node (or one Redis Cluster standing for a whole zone).
pub struct Node {
    /// The connection, made on first use and remade by itself after a loss.
    pub(crate) redis: RedisConn,
    breaker: Breaker,
    /// Longest wait for one call, connecting included.
    timeout: Duration,
    pub(crate) metrics: TierNodeMetrics,
}

impl Node {
    /// A plain node of a ring zone.
    pub(crate) fn single(zone: &str, url: &str, cfg: &TierConfig) -> Result<Node, TierError> {
        let redis = RedisConn::single(url, timeouts(cfg)).map_err(|source| TierError::Redis {
            node: crate::redis_conn::shown(url),
            op: "parse URL",
            source,
        })?;
        Ok(Node::with(zone, redis, cfg))
    }

    /// A Redis Cluster zone: one "node" whose client routes by slot.
    pub(crate) fn cluster(
        zone: &str,
        seeds: &[String],
        cfg: &TierConfig,
    ) -> Result<Node, TierError> {
        let redis =
            RedisConn::cluster(seeds, timeouts(cfg)).map_err(|source| TierError::Redis {
                node: seeds
                    .iter()
                    .map(|s| crate::redis_conn::shown(s))
                    .collect::<Vec<_>>()
                    .join(","),
                op: "parse cluster seeds",
                source,
            })?;
        Ok(Node::with(zone, redis, cfg))
    }

    fn with(zone: &str, redis: RedisConn, cfg: &TierConfig) -> Node {
        Node {
            metrics: TierNodeMetrics::register(zone, redis.shown()),
            redis,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            timeout: cfg.timeout,
        }
    }

    /// `host:port`, for messages.
    pub fn shown(&self) -> &str {
        self.redis.shown()
    }

    /// Runs one call with the node's timeout and circuit breaker.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, TierError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            return Err(TierError::CircuitOpen {
                node: self.shown().to_string(),
            });
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, async {
            let conn = self.redis.get().await.map_err(|source| TierError::Redis {
                node: self.shown().to_string(),
                op: "connect",
                source,
            })?;
            f(conn).await.map_err(|source| TierError::Redis {
                node: self.shown().to_string(),
                op,
                source,
            })
        })
        .await
        .unwrap_or_else(|_| {
            Err(TierError::Timeout {
                node: self.shown().to_string(),
                op,
                timeout: self.timeout,
            })
        });
        self.metrics.latency.record(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                if self.breaker.success() {
                    self.metrics.breaker_open.set(0.0);
                }
            }
            Err(_) => {
                self.metrics.errors.increment(1);
                if self.breaker.failure() {
                    self.metrics.breaker_open.set(1.0);
                }
            }
        }
        result
    }
}

fn timeouts(cfg: &TierConfig) -> Timeouts {
    Timeouts {
        connect: cfg.timeout.max(Duration::from_millis(200)),
        response: cfg.timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_threshold_and_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(60));
        assert!(b.allow());
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure());
        assert!(!b.allow(), "open during the cool-down");
        assert!(b.success());
        assert!(b.allow());
    }
}
