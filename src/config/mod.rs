//! Layered configuration: the commented `config/default.toml` compiled into the
//! binary, then an optional file, then `READTIER_*` environment variables.
//!
//! The three layers are merged key by key into one TOML table, remembering which
//! layer set each key; serde then reads it into the per-section structs of
//! [`sections`] (unknown keys refused), and [`Config::validate`] checks every range
//! and cross-section rule once, in file order. Every error names the key and the layer
//! it came from. The rest of the program holds a typed [`Config`] and never parses a
//! setting again.

pub mod provenance;
pub mod sections;
pub mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use provenance::{Layer, Provenance};
pub use sections::{
    ChangesConfig, HttpConfig, HttpRuntime, InspectorConfig, L1Config, LogConfig, LogFormat,
    OtelConfig, RelayConfig, TierConfig,
};
pub use values::{
    parse_duration, redis_scheme, CaFile, PgSslMode, PgTarget, PgTls, RedisScheme, RedisTopology,
    StoreUrl, Zone,
};

/// The default file, with every key documented.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "READTIER_";

/// The environment variable naming an optional configuration file.
pub const ENV_CONFIG_FILE: &str = "READTIER_CONFIG";

/// Most answers the inspector may sample per second (`inspector.samples_per_second`).
pub const MAX_INSPECTOR_SAMPLES: u32 = 10_000;

/// A configuration that cannot be used; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration key `{key}` (from {source_name}): {reason}")]
    Invalid {
        key: String,
        source_name: String,
        reason: String,
    },
    #[error("configuration key `{key}` (from {source_name}) is not a known key")]
    Unknown { key: String, source_name: String },
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// The typed configuration of a process.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// The gRPC listener (`grpc_listen`); `None`: no gRPC face.
    pub grpc_listen: Option<SocketAddr>,
    /// Most open connections on the gRPC listener (`grpc_max_connections`).
    pub grpc_max_connections: usize,
    pub data_dir: PathBuf,
    pub store: StoreUrl,
    pub seed_members: u64,
    pub redis: Option<RedisTopology>,
    /// The CAs that `rediss://` servers are checked against (`redis_tls_ca_file`);
    /// `None`: the system's trust store.
    pub redis_tls_ca: Option<CaFile>,
    /// This node's zone (an index into `redis.zones`).
    pub zone: usize,
    pub redis_prefix: String,
    pub l1: L1Config,
    pub l2: TierConfig,
    pub http: HttpConfig,
    pub changes: ChangesConfig,
    pub relay: RelayConfig,
    pub inspector: InspectorConfig,
    /// `[log]`: log format, filter and the sampled access log.
    pub log: LogConfig,
    /// `[otel]`: OpenTelemetry export of the miss path's spans.
    pub otel: OtelConfig,
    /// Every key's value and the layer that set it (`GET /admin/config`).
    pub provenance: std::sync::Arc<Provenance>,
}

/// The merged layers: the value of every key and which layer set it.
struct Layers {
    table: toml::Table,
    source: BTreeMap<String, String>,
    /// The layer that set each key not left at its default.
    layer: BTreeMap<String, Layer>,
}

impl Layers {
    fn source_of(&self, key: &str) -> String {
        self.source
            .get(key)
            .cloned()
            .unwrap_or_else(|| "config/default.toml".to_string())
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            source_name: self.source_of(key),
            reason: reason.into(),
        }
    }

    /// The default's value at a dotted key (every key has one).
    fn default_of<'t>(defaults: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
        let mut parts = key.split('.').peekable();
        let mut table = defaults;
        while let Some(part) = parts.next() {
            let v = table.get(part)?;
            if parts.peek().is_none() {
                return Some(v);
            }
            table = v.as_table()?;
        }
        None
    }

    /// Sets a dotted key, recording where it came from.
    fn set(&mut self, key: &str, value: toml::Value, source: &str, layer: Layer) {
        let mut table = &mut self.table;
        let parts: Vec<&str> = key.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            table = table
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .expect("sections of the default file are tables");
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
        self.source.insert(key.to_string(), source.to_string());
        self.layer.insert(key.to_string(), layer);
    }

    /// Every key of the default file with its merged value and where it came from.
    fn provenance(&self, keys: &[(String, toml::Value)]) -> Provenance {
        Provenance {
            keys: keys
                .iter()
                .map(|(key, default)| provenance::KeySource {
                    key: key.clone(),
                    value: Layers::default_of(&self.table, key)
                        .cloned()
                        .unwrap_or_else(|| default.clone()),
                    layer: self.layer.get(key).copied().unwrap_or(Layer::Default),
                    source: self.source_of(key),
                })
                .collect(),
        }
    }
}

/// Every scalar key of a table, dotted, with its value.
fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            other => out.push((key, other.clone())),
        }
    }
}

/// Whether `name` is one of the variables Kubernetes injects into every pod for a
/// Service named `readtier` (`READTIER_PORT=tcp://…`, `READTIER_PORT_8080_TCP_ADDR`,
/// `READTIER_SERVICE_HOST`, …): not configuration, and no key of ours has that shape
/// (there is no `port` key, and no key under `service`).
fn is_kubernetes_service_variable(name: &str) -> bool {
    let rest = &name[ENV_PREFIX.len()..];
    rest == "PORT" || rest.starts_with("PORT_") || rest.starts_with("SERVICE_")
}

/// `l1.ttl` → `READTIER_L1_TTL`.
pub fn env_name_of(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

impl Config {
    /// Whether changes travel on a stream in Redis (copies named, or zones to hold
    /// them), rather than being read from the store by every node.
    pub fn has_stream(&self) -> bool {
        !self.changes.stream_urls.is_empty() || self.redis.is_some()
    }

    /// Loads the layers from the process: `file` (or `READTIER_CONFIG`), then the
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(ENV_CONFIG_FILE).map(PathBuf::from));
        let file_text = match &file {
            Some(path) => Some((
                path.clone(),
                std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            )),
            None => None,
        };
        Self::from_layers(
            file_text.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
            &env,
        )
    }

    /// Builds a configuration from explicit layers; `env` is a list of
    /// `(name, value)` pairs of which only `READTIER_*` ones are considered.
    pub fn from_layers(
        file: Option<(&Path, &str)>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        // The default file is part of the binary; failing to parse it is a build bug,
        // caught by the unit tests below.
        let defaults: toml::Table = DEFAULT_TOML.parse().expect("config/default.toml parses");
        let mut keys = Vec::new();
        flatten("", &defaults, &mut keys);
        let mut layers = Layers {
            table: defaults.clone(),
            source: BTreeMap::new(),
            layer: BTreeMap::new(),
        };

        if let Some((path, text)) = file {
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: path.to_path_buf(),
                        reason: e.message().to_string(),
                    })?;
            let name = path.display().to_string();
            let mut set = Vec::new();
            flatten("", &table, &mut set);
            for (key, value) in set {
                if Layers::default_of(&defaults, &key).is_none() {
                    return Err(ConfigError::Unknown {
                        key,
                        source_name: name,
                    });
                }
                layers.set(&key, value, &name, Layer::File);
            }
        }

        for (name, text) in env {
            if !name.starts_with(ENV_PREFIX) || name == ENV_CONFIG_FILE {
                continue;
            }
            if is_kubernetes_service_variable(name) {
                tracing::debug!(variable = %name, "ignoring a Kubernetes service variable");
                continue;
            }
            let source_name = format!("environment variable {name}");
            let Some((key, _)) = keys.iter().find(|(k, _)| env_name_of(k) == *name) else {
                return Err(ConfigError::Unknown {
                    key: name[ENV_PREFIX.len()..].to_ascii_lowercase(),
                    source_name,
                });
            };
            // Environment values are text: read them as the type the default has.
            let value = match Layers::default_of(&defaults, key) {
                Some(toml::Value::Integer(_)) => text
                    .trim()
                    .replace('_', "")
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .unwrap_or_else(|_| toml::Value::String(text.clone())),
                Some(toml::Value::Float(_)) => text
                    .trim()
                    .parse::<f64>()
                    .map(toml::Value::Float)
                    .unwrap_or_else(|_| toml::Value::String(text.clone())),
                Some(toml::Value::Boolean(_)) => match text.trim() {
                    "true" | "1" => toml::Value::Boolean(true),
                    "false" | "0" => toml::Value::Boolean(false),
                    _ => toml::Value::String(text.clone()),
                },
                _ => toml::Value::String(text.clone()),
            };
            layers.set(key, value, &source_name, Layer::Env);
        }

        let raw: sections::RawConfig = serde_path_to_error::deserialize(toml::Value::Table(
            layers.table.clone(),
        ))
        .map_err(|e| {
            let key = e.path().to_string();
            let reason = e.inner().message().to_string();
            layers.invalid(&key, reason)
        })?;
        let provenance = std::sync::Arc::new(layers.provenance(&keys));
        let mut config = Self::validate(raw, &layers)?;
        config.provenance = provenance;
        Ok(config)
    }

    /// Checks ranges and cross-section rules, in file order, and resolves what the
    /// sections name (the store, the Redis topology, this node's zone, the stream).
    fn validate(raw: sections::RawConfig, layers: &Layers) -> Result<Config, ConfigError> {
        let positive = |key: &str, n: u64| {
            if n == 0 {
                Err(layers.invalid(key, "must be greater than zero"))
            } else {
                Ok(())
            }
        };
        let nonzero = |key: &str, d: Duration| {
            if d.is_zero() {
                Err(layers.invalid(key, "must be longer than zero"))
            } else {
                Ok(())
            }
        };
        let mut store = values::parse_store_url(&raw.store_url, &raw.data_dir)
            .map_err(|r| layers.invalid("store_url", r))?;
        nonzero("store_connect_timeout", raw.store_connect_timeout)?;
        if let StoreUrl::Postgres(target) = &mut store {
            target.connect_timeout = raw.store_connect_timeout;
            target.statement_timeout = raw.store_statement_timeout;
            target.member_reads = raw.l2.max_store_fills;
        }
        let redis =
            RedisTopology::parse(&raw.redis_urls).map_err(|r| layers.invalid("redis_urls", r))?;
        let redis_tls_ca = match raw.redis_tls_ca_file.trim() {
            "" => None,
            path => Some(
                CaFile::load(Path::new(path))
                    .map_err(|r| layers.invalid("redis_tls_ca_file", r))?,
            ),
        };
        let zone = match (&redis, raw.zone.trim()) {
            (_, "") => 0,
            (None, _) => return Err(layers.invalid("zone", "names a zone but redis_urls is empty")),
            (Some(t), name) => t.zones.iter().position(|z| z.name == name).ok_or_else(|| {
                let names: Vec<&str> = t.zones.iter().map(|z| z.name.as_str()).collect();
                layers.invalid(
                    "zone",
                    format!(
                        "{name:?} is not one of the zones in redis_urls ({})",
                        names.join(", ")
                    ),
                )
            })?,
        };

        positive("l1.capacity", raw.l1.capacity)?;
        positive("l1.negative_capacity", raw.l1.negative_capacity)?;
        nonzero("l1.ttl", raw.l1.ttl)?;

        if raw.l2.ttl < Duration::from_secs(1) {
            return Err(layers.invalid("l2.ttl", "must be at least 1s"));
        }
        nonzero("l2.timeout", raw.l2.timeout)?;
        positive("l2.breaker_failures", raw.l2.breaker_failures as u64)?;
        positive("l2.max_store_fills", raw.l2.max_store_fills as u64)?;
        positive("l2.bucket_size", raw.l2.bucket_size)?;
        for z in &raw.l2.write_only_zones {
            if !redis
                .as_ref()
                .is_some_and(|t| t.zones.iter().any(|zone| zone.name == *z))
            {
                return Err(layers.invalid(
                    "l2.write_only_zones",
                    format!("{z:?} is not a zone in redis_urls"),
                ));
            }
        }
        if let Some(t) = &redis {
            if !raw.l2.write_only_zones.is_empty() && raw.l2.write_only_zones.len() == t.zones.len()
            {
                return Err(
                    layers.invalid("l2.write_only_zones", "at least one zone must be readable")
                );
            }
        }

        if raw.http.max_header_bytes < 8192 {
            return Err(layers.invalid(
                "http.max_header_bytes",
                "must be at least 8192 (the HTTP/1 parser's smallest buffer)",
            ));
        }
        positive("http.max_body_bytes", raw.http.max_body_bytes as u64)?;
        positive("http.max_connections", raw.http.max_connections as u64)?;
        positive("grpc_max_connections", raw.grpc_max_connections as u64)?;
        positive("http.max_waiting", raw.http.max_waiting as u64)?;
        if !(0.0..=1.0).contains(&raw.http.waiting_saturation) {
            return Err(layers.invalid(
                "http.waiting_saturation",
                "must be a number from 0.0 to 1.0",
            ));
        }
        nonzero("http.queue_target", raw.http.queue_target)?;
        nonzero("http.request_timeout", raw.http.request_timeout)?;
        nonzero("http.idle_timeout", raw.http.idle_timeout)?;

        nonzero("changes.poll_interval", raw.changes.poll_interval)?;
        let stream_urls: Vec<String> = raw
            .changes
            .stream_url
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        for u in &stream_urls {
            let scheme = redis_scheme(u).map_err(|r| layers.invalid("changes.stream_url", r))?;
            if scheme.cluster {
                return Err(layers.invalid(
                    "changes.stream_url",
                    format!(
                        "{}: a stream copy is one server (redis:// or rediss://), not a cluster",
                        crate::redis_conn::shown(u)
                    ),
                ));
            }
        }
        positive("changes.stream_maxlen", raw.changes.stream_maxlen)?;

        if raw.relay.lease_ttl < Duration::from_millis(300) {
            return Err(layers.invalid("relay.lease_ttl", "must be at least 300ms"));
        }

        // Each sample is a store read: past this the inspector would be a load test.
        if raw.inspector.samples_per_second > MAX_INSPECTOR_SAMPLES {
            return Err(layers.invalid(
                "inspector.samples_per_second",
                format!("must be at most {MAX_INSPECTOR_SAMPLES} (0 turns the inspector off)"),
            ));
        }
        // A newer version older than the log's retention is known only by its row's
        // write time; a grace that long would hide every such answer.
        if raw.inspector.grace >= raw.changes.retention {
            return Err(layers.invalid("inspector.grace", "must be shorter than changes.retention"));
        }
        sections::check_log_filter(&raw.log.level).map_err(|r| layers.invalid("log.level", r))?;
        if !(0.0..=1.0).contains(&raw.log.access_sample) {
            return Err(layers.invalid(
                "log.access_sample",
                "must be a fraction from 0.0 (off) to 1.0 (every request)",
            ));
        }
        sections::check_otel_endpoint(&raw.otel.endpoint)
            .map_err(|r| layers.invalid("otel.endpoint", r))?;
        if !(0.0..=1.0).contains(&raw.otel.sample_ratio) {
            return Err(layers.invalid("otel.sample_ratio", "must be a number from 0.0 to 1.0"));
        }
        nonzero("otel.timeout", raw.otel.timeout)?;

        let grpc_listen = match raw.grpc_listen.trim() {
            "" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|e| {
                layers.invalid(
                    "grpc_listen",
                    format!("{e}: expected an address such as 0.0.0.0:50051, or empty for none"),
                )
            })?),
        };

        let relay_admin = raw.relay.admin_listen.trim();
        if !relay_admin.is_empty() {
            relay_admin.parse::<SocketAddr>().map_err(|e| {
                layers.invalid(
                    "relay.admin_listen",
                    format!("{e}: expected an address such as 0.0.0.0:9091, or empty for none"),
                )
            })?;
        }

        Ok(Config {
            listen: raw.listen,
            admin_listen: raw.admin_listen,
            grpc_listen,
            grpc_max_connections: raw.grpc_max_connections,
            data_dir: raw.data_dir,
            store,
            seed_members: raw.seed_members,
            redis,
            redis_tls_ca,
            zone,
            redis_prefix: raw.redis_prefix,
            l1: raw.l1,
            l2: raw.l2,
            http: raw.http,
            changes: ChangesConfig {
                poll_interval: raw.changes.poll_interval,
                retention: raw.changes.retention,
                stream_urls,
                stream_maxlen: raw.changes.stream_maxlen,
            },
            relay: raw.relay,
            inspector: raw.inspector,
            log: raw.log,
            otel: raw.otel,
            provenance: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests;
