//! One Redis node of a zone (or one Redis Cluster standing for a whole zone): its
//! connection, its per-call timeout and its circuit breaker.
//!
//! A node that fails `l2.breaker_failures` calls in a row has its circuit opened for
//! about `l2.breaker_cooldown` (jittered between 0.5× and 1.5×, so a fleet does not
//! probe in step) and is skipped meanwhile, so a dead node costs nothing per request.
//! After the cool-down the circuit is half-open: exactly one call goes through as a
//! probe while the others keep skipping the node for another cool-down; the probe's
//! success closes the circuit, its failure opens it again.

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

    /// A cool-down between 0.5× and 1.5× the configured one.
    fn jittered_ms(&self) -> u64 {
        let base = self.cooldown.as_millis() as u64;
        // Any cheap varying bits do: this spreads nodes and processes apart.
        let mut x = self.epoch.elapsed().as_nanos() as u64 ^ (self as *const _ as u64);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        base / 2 + x % (base + 1)
    }

    /// Whether a call may go to the node: closed, or the one probe of a half-open
    /// circuit.
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < until {
            return false;
        }
        // Half-open: the caller that moves the deadline on is the probe.
        self.open_until
            .compare_exchange(
                until,
                now + self.jittered_ms(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
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
            // At least 1: 0 means closed.
            let until = (self.now_ms() + self.jittered_ms()).max(1);
            self.open_until.store(until, Ordering::Relaxed);
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
    pub(crate) fn single(
        zone: &str,
        url: &str,
        cfg: &TierConfig,
        ca: Option<&[u8]>,
    ) -> Result<Node, TierError> {
        let redis =
            RedisConn::single(url, timeouts(cfg), ca).map_err(|source| TierError::Redis {
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
        ca: Option<&[u8]>,
    ) -> Result<Node, TierError> {
        let redis =
            RedisConn::cluster(seeds, timeouts(cfg), ca).map_err(|source| TierError::Redis {
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

    #[test]
    fn a_half_open_breaker_lets_exactly_one_probe_through() {
        let b = Breaker::new(1, Duration::from_millis(20));
        assert!(b.failure());
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(35));
        let admitted = (0..1000).filter(|_| b.allow()).count();
        assert_eq!(admitted, 1, "one probe, the others keep skipping the node");
        // The probe fails: open again.
        assert!(b.failure());
        assert!(!b.allow());
        std::thread::sleep(Duration::from_millis(35));
        assert!(b.allow(), "the next probe");
        assert!(b.success(), "the probe succeeds: closed");
        assert_eq!((0..100).filter(|_| b.allow()).count(), 100);
    }

    #[test]
    fn cool_downs_are_jittered_within_half_to_one_and_a_half() {
        let b = Breaker::new(1, Duration::from_millis(1000));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let j = b.jittered_ms();
            assert!((500..=1500).contains(&j), "{j}");
            seen.insert(j / 100);
        }
        assert!(seen.len() >= 5, "spread: {seen:?}");
    }
}
