//! Metrics: one Prometheus recorder per process, and the per-request handles
//! registered once at start so that the request path never hashes a label set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
///
/// In a process that runs several nodes (the integration tests do) they share the
/// recorder: the figures are the process's, which is what a scrape means anyway.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
                0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(APPLIED_LAG.into()),
                        &APPLIED_LAG_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(INSPECTOR_STALE_AGE.into()),
                        &INSPECTOR_AGE_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty");
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    handle
                }
                // Another recorder is already global (an embedding program installed
                // one): keep a private one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Every metric this service records and what it means: the `# HELP` lines of
/// `/metrics` (a test checks none is missing). The request-duration histogram is
/// rendered by [`HttpMetrics::render_latency`], which writes its own.
const HELP: &[(&str, &str)] = &[
    (
        "readtier_catalog_reloads_total",
        "Catalog snapshots installed",
    ),
    (
        "readtier_catalog_version",
        "Version of the catalog snapshot being served",
    ),
    (
        "readtier_change_log_gaps_total",
        "Times the change reader found entries lost and dropped L1",
    ),
    (
        "readtier_change_log_lag_events",
        "Committed changes not yet applied by this node",
    ),
    (
        "readtier_change_log_lag_seconds",
        "Age of the oldest change committed in the store and not yet applied by this node (asked of the store every second)",
    ),
    (
        "readtier_change_log_poll_errors_total",
        "Failed reads of the change log or stream",
    ),
    (
        "readtier_change_log_position",
        "Position of the last change applied by this node",
    ),
    (
        APPLIED_LAG,
        "Time from a change's commit in the store to this node having applied it",
    ),
    (
        "readtier_changes_applied_total",
        "Changes applied to this node's L1 and catalog",
    ),
    (
        "readtier_http_requests_total",
        "HTTP answers by route and status",
    ),
    (
        "readtier_inspector_checked_total",
        "Sampled answers the inspector compared with the store",
    ),
    (
        "readtier_inspector_dropped_total",
        "Sampled answers not checked because the inspector's queue was full",
    ),
    (
        "readtier_inspector_errors_total",
        "Inspector checks that could not read the store",
    ),
    (
        INSPECTOR_STALE_AGE,
        "How long before a stale answer the store had committed a newer version",
    ),
    (
        "readtier_inspector_stale_total",
        "Sampled answers older than the store's version by more than inspector.grace",
    ),
    (
        "readtier_l1_coalesced_total",
        "Misses that waited for another request's load of the same member",
    ),
    ("readtier_l1_entries", "Members held in L1"),
    (
        "readtier_l1_flushes_total",
        "Times L1 was dropped whole because it could be stale",
    ),
    ("readtier_l1_hits_total", "Member lookups answered from L1"),
    (
        "readtier_l1_invalidations_total",
        "L1 entries dropped by a change",
    ),
    ("readtier_l1_misses_total", "Member lookups not in L1"),
    (
        "readtier_l1_negative_entries",
        "Unknown members remembered in L1",
    ),
    (
        "readtier_l2_breaker_open",
        "1 while a Redis node's circuit breaker is open",
    ),
    ("readtier_l2_errors_total", "Failed calls to a Redis node"),
    (
        "readtier_l2_hits_total",
        "Member lookups answered from a Redis zone",
    ),
    (
        "readtier_l2_misses_total",
        "Member lookups no Redis zone could answer",
    ),
    (
        "readtier_l2_request_duration_seconds",
        "Time of one call to a Redis node",
    ),
    (
        "readtier_l2_stale_skipped_total",
        "Redis answers skipped for a version below the member's floor",
    ),
    (
        "readtier_relay_active",
        "1 while this relay holds the lease",
    ),
    (
        "readtier_relay_published_total",
        "Changes the relay published to the stream and the tier",
    ),
    (
        "readtier_relay_tier_repairs_pending",
        "Zone writes the relay still has to repair",
    ),
    (
        "readtier_store_rows_rejected_total",
        "Store rows quarantined because this build cannot read them or no answer could show them (counted once a row), by table",
    ),
    ("readtier_store_errors_total", "Failed store operations"),
    ("readtier_store_reads_total", "Member reads from the store"),
];

/// Registers the `# HELP` text of every metric with the recorder.
fn describe() {
    for (name, help) in HELP {
        // The recorder keeps the text per name whatever the kind; counter is as good
        // as any for the description.
        metrics::describe_counter!(*name, *help);
    }
}

/// Spawns the periodic upkeep that folds histogram samples into their buckets.
pub fn spawn_upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// The routes requests are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Plans = 0,
    Entitlement = 1,
    Authorize = 2,
    Healthz = 3,
    Readyz = 4,
    Metrics = 5,
    Other = 6,
    /// `/admin/…` on the admin listener.
    Admin = 7,
    /// `/openapi.json`, the API's document.
    Openapi = 8,
    /// `POST /v1/entitlements:batch`.
    Batch = 9,
}

impl Route {
    /// The route's name, as in metric labels (and the access log).
    pub fn name(self) -> &'static str {
        ROUTES[self as usize]
    }
}

const ROUTES: [&str; 10] = [
    "plans",
    "entitlement",
    "authorize",
    "healthz",
    "readyz",
    "metrics",
    "other",
    "admin",
    "openapi",
    "batch",
];

/// The statuses this service answers with; anything else is counted as "other".
const STATUSES: [u16; 12] = [200, 304, 400, 404, 405, 408, 413, 415, 431, 500, 503, 0];

/// Upper bounds (seconds) of the request latency buckets.
const LATENCY_BOUNDS: [f64; 17] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A fixed-bucket latency histogram of atomic counters: recording is a comparison
/// walk and two relaxed additions (~40 instructions), where the exporter's own
/// histogram cost ~500 a request under callgrind. Rendered into /metrics as a
/// Prometheus histogram.
struct LatencyHistogram {
    /// One count per bound, then the overflow bucket.
    buckets: [AtomicU64; 18],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    #[inline]
    fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Request counters, one handle per (route, status), and a latency histogram per route.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Vec<Counter>,
    latency: Arc<Vec<LatencyHistogram>>,
    /// Connections refused over `http.max_connections` (lookups shed are counted
    /// by `admission`, in the same family).
    pub shed_connections: Counter,
}

impl HttpMetrics {
    pub fn register() -> HttpMetrics {
        let mut requests = Vec::with_capacity(ROUTES.len() * STATUSES.len());
        for route in ROUTES {
            for status in STATUSES {
                let status = if status == 0 {
                    "other".to_string()
                } else {
                    status.to_string()
                };
                requests.push(metrics::counter!("readtier_http_requests_total", "route" => route, "status" => status));
            }
        }
        let latency = Arc::new(ROUTES.iter().map(|_| LatencyHistogram::new()).collect());
        HttpMetrics {
            requests,
            latency,
            shed_connections: metrics::counter!("readtier_shed_total", "face" => "http", "route" => "connection", "reason" => "connections"),
        }
    }

    #[inline]
    pub fn record(&self, route: Route, status: u16, elapsed: Duration) {
        let si = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[route as usize * STATUSES.len() + si].increment(1);
        self.latency[route as usize].record(elapsed);
    }

    /// Appends `readtier_http_request_duration_seconds` in Prometheus text format.
    pub fn render_latency(&self, out: &mut String) {
        use std::fmt::Write;
        let name = "readtier_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a request's head to its answer, by route"
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (route, h) in ROUTES.iter().zip(self.latency.iter()) {
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BOUNDS.iter().enumerate() {
                cumulative += h.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += h.buckets[LATENCY_BOUNDS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}"
            );
            let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {cumulative}");
        }
    }
}

/// L1 and store counters of the member lookups.
#[derive(Clone)]
pub struct MemberMetrics {
    pub l1_hits: Counter,
    pub l1_misses: Counter,
    pub l1_coalesced: Counter,
    pub l1_invalidations: Counter,
    pub l1_flushes: Counter,
    pub store_reads: Counter,
    pub store_errors: Counter,
}

impl MemberMetrics {
    pub fn register() -> MemberMetrics {
        MemberMetrics {
            l1_hits: metrics::counter!("readtier_l1_hits_total"),
            l1_misses: metrics::counter!("readtier_l1_misses_total"),
            l1_coalesced: metrics::counter!("readtier_l1_coalesced_total"),
            l1_invalidations: metrics::counter!("readtier_l1_invalidations_total"),
            l1_flushes: metrics::counter!("readtier_l1_flushes_total"),
            store_reads: metrics::counter!("readtier_store_reads_total"),
            store_errors: metrics::counter!("readtier_store_errors_total"),
        }
    }
}

/// Change-log follower figures.
#[derive(Clone)]
pub struct ChangeMetrics {
    pub applied: Counter,
    /// Commit-to-applied time of each change ([`APPLIED_LAG`]).
    pub applied_lag: metrics::Histogram,
    pub lag_events: Gauge,
    pub position: Gauge,
    pub poll_errors: Counter,
    pub gaps: Counter,
    pub catalog_reloads: Counter,
}

impl ChangeMetrics {
    pub fn register() -> ChangeMetrics {
        ChangeMetrics {
            applied: metrics::counter!("readtier_changes_applied_total"),
            applied_lag: metrics::histogram!(APPLIED_LAG),
            lag_events: metrics::gauge!("readtier_change_log_lag_events"),
            position: metrics::gauge!("readtier_change_log_position"),
            poll_errors: metrics::counter!("readtier_change_log_poll_errors_total"),
            gaps: metrics::counter!("readtier_change_log_gaps_total"),
            catalog_reloads: metrics::counter!("readtier_catalog_reloads_total"),
        }
    }
}

/// One Redis node's figures, labelled by zone and `host:port` (never the URL, which
/// may carry a password).
pub struct TierNodeMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub errors: Counter,
    pub breaker_open: Gauge,
    pub latency: metrics::Histogram,
}

impl TierNodeMetrics {
    pub fn register(zone: &str, node: &str) -> TierNodeMetrics {
        let labels = [("zone", zone.to_string()), ("node", node.to_string())];
        TierNodeMetrics {
            hits: metrics::counter!("readtier_l2_hits_total", &labels),
            misses: metrics::counter!("readtier_l2_misses_total", &labels),
            errors: metrics::counter!("readtier_l2_errors_total", &labels),
            breaker_open: metrics::gauge!("readtier_l2_breaker_open", &labels),
            latency: metrics::histogram!("readtier_l2_request_duration_seconds", &labels),
        }
    }
}

/// The relay's figures.
pub struct RelayMetrics {
    pub published: Counter,
    pub active: Gauge,
    pub repairs_pending: Gauge,
}

impl RelayMetrics {
    pub fn register() -> RelayMetrics {
        RelayMetrics {
            published: metrics::counter!("readtier_relay_published_total"),
            active: metrics::gauge!("readtier_relay_active"),
            repairs_pending: metrics::gauge!("readtier_relay_tier_repairs_pending"),
        }
    }
}

/// The catalog version a node serves (`readtier_catalog_version`).
pub fn set_catalog_version(version: u64) {
    metrics::gauge!("readtier_catalog_version").set(version as f64);
}

/// What L1 holds: records (and floors), and "no such member" answers.
pub fn set_l1_sizes(entries: u64, negative: u64) {
    metrics::gauge!("readtier_l1_entries").set(entries as f64);
    metrics::gauge!("readtier_l1_negative_entries").set(negative as f64);
}

/// Tier reads that skipped a zone holding a version below the member's floor.
pub fn l2_stale_skips() -> Counter {
    metrics::counter!("readtier_l2_stale_skipped_total")
}

// --- Operability: build info, process metrics, commit-to-applied lag ---

mod process;
pub use process::{render as render_process, ProcessStats, COMMIT, VERSION};

/// The histogram of the staleness this product sells: from a change's commit in the
/// store (the change log's `changed_at`, store clock) to this node having applied it
/// (its L1 entry dropped, or the catalog swapped), one sample per change.
pub const APPLIED_LAG: &str = "readtier_change_commit_to_applied_seconds";

/// Its buckets: milliseconds when all is well (p99 ~5 ms under load on loopback),
/// seconds through a failover or a large transaction, minutes in an outage.
const APPLIED_LAG_BUCKETS: [f64; 16] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
];

/// The inspector's staleness-age histogram: its own buckets, since a stale answer is
/// at least `inspector.grace` old and may be hours old.
const INSPECTOR_STALE_AGE: &str = "readtier_inspector_stale_age_seconds";
const INSPECTOR_AGE_BUCKETS: [f64; 14] = [
    0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// The consistency inspector's figures (see `lookup::inspector`).
#[derive(Clone)]
pub struct InspectorMetrics {
    pub checked: Counter,
    pub stale: Counter,
    pub stale_age: metrics::Histogram,
    pub dropped: Counter,
    pub errors: Counter,
}

impl InspectorMetrics {
    pub fn register() -> InspectorMetrics {
        InspectorMetrics {
            checked: metrics::counter!("readtier_inspector_checked_total"),
            stale: metrics::counter!("readtier_inspector_stale_total"),
            stale_age: metrics::histogram!(INSPECTOR_STALE_AGE),
            dropped: metrics::counter!("readtier_inspector_dropped_total"),
            errors: metrics::counter!("readtier_inspector_errors_total"),
        }
    }
}
