//! One struct per section of `config/default.toml`, as serde reads it: each component
//! takes its own section (`[l1]` the lookup service, `[l2]` the tier, `[http]` the
//! listeners, `[changes]` the followers, `[relay]` the relay). Unknown keys are refused
//! (`deny_unknown_fields`); values that need more than a type (ranges, cross-section
//! rules) are checked once, by [`super::Config::validate`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The whole file, as merged from the layers, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The gRPC listener; empty turns it off (checked by `Config::validate`).
    pub grpc_listen: String,
    /// Most open connections on the gRPC listener.
    pub grpc_max_connections: usize,
    pub data_dir: PathBuf,
    pub store_url: String,
    #[serde(deserialize_with = "duration")]
    pub store_connect_timeout: std::time::Duration,
    #[serde(deserialize_with = "duration")]
    pub store_statement_timeout: std::time::Duration,
    pub redis_urls: String,
    pub redis_tls_ca_file: String,
    pub zone: String,
    pub redis_prefix: String,
    pub seed_members: u64,
    pub l1: L1Config,
    pub l2: TierConfig,
    pub http: HttpConfig,
    pub changes: ChangesSection,
    pub relay: RelayConfig,
    pub inspector: InspectorConfig,
    pub log: LogConfig,
    pub otel: OtelConfig,
}

/// `[l1]`: the in-process member cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L1Config {
    /// Most entries held.
    pub capacity: u64,
    /// How long a record is served.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// How long "no such member" is served.
    #[serde(deserialize_with = "duration")]
    pub negative_ttl: Duration,
    /// Most "no such member" answers held, apart from the records: a flood of
    /// unknown ids evicts only other unknown ids.
    pub negative_capacity: u64,
    /// Keep the ids L1 holds in the data directory and load them back at start.
    pub warm_start: bool,
}

/// `[l2]`: the Redis hash tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Life of a member bucket after its last write.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// Per-node answer timeout.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive failures that open a node's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open.
    #[serde(deserialize_with = "duration")]
    pub breaker_cooldown: Duration,
    /// Most store reads in flight per node.
    pub max_store_fills: usize,
    /// Members per Redis hash.
    pub bucket_size: u64,
    /// Zones written but not read (warming), comma-separated in the file.
    #[serde(deserialize_with = "list")]
    pub write_only_zones: Vec<String>,
}

/// `[http]`: limits and timing of the listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub drain_delay: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Most open connections on the public listener; past it a new connection gets
    /// one 503 and is closed.
    pub max_connections: usize,
    /// Most lookups waiting on Redis or the store at once; past it such a lookup
    /// gets an immediate 503 (answers from memory are not counted, and not shed).
    pub max_waiting: usize,
    /// Shed misses while a standing queue is over `queue_target` (`admission`).
    pub adaptive_waiting: bool,
    /// The standing queue past which misses are shed.
    #[serde(deserialize_with = "duration")]
    pub queue_target: Duration,
    /// The process's share of its cores below which a runtime queue is not its own
    /// doing, and is not shed (0: any queue is).
    pub waiting_saturation: f64,
    /// How the public listener's connections are run.
    pub runtime: HttpRuntime,
}

/// `http.runtime`: the public listener on the shared multi-thread runtime, or on one
/// current-thread runtime per core, each accepting on its own `SO_REUSEPORT` socket
/// (no work stealing: about 250 fewer instructions a request on this machine,
/// docs/PERFORMANCE.md, "Runtime flavour").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpRuntime {
    MultiThread,
    PerCore,
}

/// `[changes]` as written; [`ChangesConfig`] once the stream URL is resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesSection {
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    pub stream_url: String,
    pub stream_maxlen: u64,
}

/// `[changes]`: how changes are followed.
#[derive(Debug, Clone)]
pub struct ChangesConfig {
    /// Change-log poll period (and the relay's backstop to LISTEN/NOTIFY).
    pub poll_interval: Duration,
    /// Change-log rows older than this are trimmed.
    pub retention: Duration,
    /// Redis URLs of the change stream's copies, one copy each; empty: one copy in
    /// every zone of `redis_urls` (the `stream` module explains why).
    pub stream_urls: Vec<String>,
    /// Entries kept in the stream.
    pub stream_maxlen: u64,
}

/// `[relay]`: the relay's lease.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// The relay's admin listener (`/metrics`, `/healthz`); empty: none.
    pub admin_listen: String,
}

/// `[inspector]`: the continuous consistency inspector (`lookup/inspector.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectorConfig {
    /// Answers sampled per second and checked against the store (0: off). Each is one
    /// indexed store read, off the request path.
    pub samples_per_second: u32,
    /// How far behind the store an answer may be before it counts as stale: the
    /// budget for a writing transaction's own duration, clock skew between node and
    /// store, and normal change propagation.
    #[serde(deserialize_with = "duration")]
    pub grace: Duration,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    super::values::parse_duration(&text).map_err(serde::de::Error::custom)
}

fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let text = String::deserialize(d)?;
    Ok(text
        .split(',')
        .map(|z| z.trim().to_string())
        .filter(|z| !z.is_empty())
        .collect())
}

/// `[log]`: what the process writes on stderr.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// One line per event as text for a terminal, or as a JSON object for a collector.
    pub format: LogFormat,
    /// The filter (tracing-subscriber's `EnvFilter` directives, e.g. `info` or
    /// `warn,readtier=debug`); `RUST_LOG`, when set, is used instead.
    pub level: String,
    /// The share of requests written to the access log (0: none, 1: every one).
    pub access_sample: f64,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[otel]`: OpenTelemetry (OTLP over HTTP) export of the spans of member misses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtelConfig {
    /// The collector's OTLP/HTTP base URL (`http://host:4318`; spans are POSTed to
    /// `/v1/traces` under it). Empty: no export.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The share of misses without a sampled incoming `traceparent` that start a
    /// trace of their own (a caller's sampling decision is always followed).
    pub sample_ratio: f64,
    /// Longest one export may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

/// Checks a filter as the log layer will read it (strictly: a directive that would be
/// dropped with a warning is an error here).
pub fn check_log_filter(text: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(|_| ())
        .map_err(|e| {
            format!("{text:?} is not a log filter such as \"info\" or \"warn,readtier=debug\": {e}")
        })
}

/// Empty, or an `http://host[:port][/path]` URL (the exporter speaks plain HTTP: run
/// a collector beside the node, as OpenTelemetry's deployments do).
pub fn check_otel_endpoint(text: &str) -> Result<(), String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(());
    }
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{}: not a URL: {e}", super::provenance::redact_urls(text)))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "{}: must be http://host:port (plain HTTP to a collector beside the node; https is not supported)",
            super::provenance::redact_urls(text)
        ));
    }
    if uri.query().is_some() {
        return Err("must not carry a query".into());
    }
    Ok(())
}
