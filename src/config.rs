//! Layered configuration: the commented `config/default.toml` compiled into the
//! binary, then an optional file, then `READTIER_*` environment variables.
//!
//! Every key a layer may set is a key of the default file, so a typo in a file or an
//! environment variable is an error naming it rather than a setting silently ignored.
//! Values are checked here, once, at start: the rest of the program holds a typed
//! [`Config`] and never parses a setting again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The default file, with every key documented.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "READTIER_";

/// The environment variable naming an optional configuration file.
pub const ENV_CONFIG_FILE: &str = "READTIER_CONFIG";

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

/// The typed configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreUrl,
    pub seed_members: u64,
    pub redis: Option<RedisTopology>,
    /// This node's zone (an index into `redis.zones`).
    pub zone: usize,
    pub redis_prefix: String,
    pub l1: L1Config,
    pub l2: TierConfig,
    pub http: HttpConfig,
    pub changes: ChangesConfig,
    pub relay: RelayConfig,
}

/// The Redis hash tier's settings.
#[derive(Debug, Clone)]
pub struct TierConfig {
    pub ttl: Duration,
    pub timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    pub max_store_fills: usize,
    pub bucket_size: u64,
    pub write_only_zones: Vec<String>,
}

/// Redis nodes grouped into zones; every zone holds a full replica of the hash tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTopology {
    pub zones: Vec<Zone>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    /// Node URLs (`redis://host:port[/db]`), or cluster seeds when `cluster`.
    pub nodes: Vec<String>,
    /// A Redis Cluster zone (`redis+cluster://` seeds): the cluster routes keys itself.
    pub cluster: bool,
}

impl RedisTopology {
    /// Parses `a=redis://h1,redis://h2;b=redis://h3` or a single URL.
    pub fn parse(text: &str) -> Result<Option<RedisTopology>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let mut zones = Vec::new();
        for (i, part) in text
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .enumerate()
        {
            let (name, urls) = match part.split_once('=') {
                Some((n, u)) if !n.contains("://") => (n.trim().to_string(), u),
                _ => (
                    if i == 0 {
                        "default".to_string()
                    } else {
                        format!("zone{i}")
                    },
                    part,
                ),
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "zone name {name:?} must be letters, digits, '-' or '_'"
                ));
            }
            if zones.iter().any(|z: &Zone| z.name == name) {
                return Err(format!("zone {name:?} is listed twice"));
            }
            let nodes: Vec<String> = urls
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            if nodes.is_empty() {
                return Err(format!("zone {name:?} has no node URLs"));
            }
            let cluster = nodes[0].starts_with("redis+cluster://");
            for n in &nodes {
                let ok = if cluster {
                    n.starts_with("redis+cluster://")
                } else {
                    n.starts_with("redis://") && n.len() > "redis://".len()
                };
                if !ok {
                    return Err(format!(
                        "zone {name:?}: {n:?} is not a redis:// URL (a cluster zone lists only redis+cluster:// seeds)"
                    ));
                }
            }
            zones.push(Zone {
                name,
                nodes,
                cluster,
            });
        }
        if zones.is_empty() {
            return Ok(None);
        }
        Ok(Some(RedisTopology { zones }))
    }

    /// The URL the change stream lives on by default: the first node of the first zone.
    pub fn first_url(&self) -> String {
        let n = &self.zones[0].nodes[0];
        n.replacen("redis+cluster://", "redis://", 1)
    }
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub lease_ttl: Duration,
}

/// Where the source of truth lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite database file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL (wire-compatible) database URL.
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct L1Config {
    pub capacity: u64,
    pub ttl: Duration,
    pub negative_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub drain_delay: Duration,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ChangesConfig {
    pub poll_interval: Duration,
    pub retention: Duration,
    /// Redis URL of the change stream (`None` when there is no Redis).
    pub stream_url: Option<String>,
    pub stream_maxlen: u64,
}

/// One raw value and the layer it came from (for error messages).
#[derive(Debug, Clone)]
struct Raw {
    value: toml::Value,
    source_name: String,
}

impl Config {
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
        let mut values = BTreeMap::new();
        flatten("", &defaults, "config/default.toml", &mut values);

        if let Some((path, text)) = file {
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: path.to_path_buf(),
                        reason: e.message().to_string(),
                    })?;
            let mut layer = BTreeMap::new();
            let name = path.display().to_string();
            flatten("", &table, &name, &mut layer);
            for (key, raw) in layer {
                let Some(default) = values.get(&key) else {
                    return Err(ConfigError::Unknown {
                        key,
                        source_name: name,
                    });
                };
                if std::mem::discriminant(&default.value) != std::mem::discriminant(&raw.value) {
                    return Err(ConfigError::Invalid {
                        key,
                        source_name: name,
                        reason: format!(
                            "expected a {}, found a {}",
                            default.value.type_str(),
                            raw.value.type_str()
                        ),
                    });
                }
                values.insert(key, raw);
            }
        }

        for (name, text) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == ENV_CONFIG_FILE {
                continue;
            }
            let key = values
                .keys()
                .find(|k| env_name_of(k) == *name)
                .cloned()
                .ok_or_else(|| ConfigError::Unknown {
                    key: rest.to_ascii_lowercase(),
                    source_name: format!("environment variable {name}"),
                })?;
            let source_name = format!("environment variable {name}");
            let value = match &values[&key].value {
                toml::Value::Integer(_) => {
                    let n = text.trim().replace('_', "").parse::<i64>().map_err(|_| {
                        ConfigError::Invalid {
                            key: key.clone(),
                            source_name: source_name.clone(),
                            reason: format!("expected a whole number, found {text:?}"),
                        }
                    })?;
                    toml::Value::Integer(n)
                }
                toml::Value::Boolean(_) => match text.trim() {
                    "true" | "1" => toml::Value::Boolean(true),
                    "false" | "0" => toml::Value::Boolean(false),
                    _ => {
                        return Err(ConfigError::Invalid {
                            key,
                            source_name,
                            reason: format!("expected true or false, found {text:?}"),
                        })
                    }
                },
                _ => toml::Value::String(text.clone()),
            };
            values.insert(key, Raw { value, source_name });
        }

        Self::from_values(&values)
    }

    fn from_values(values: &BTreeMap<String, Raw>) -> Result<Config, ConfigError> {
        let get = Getter(values);
        let data_dir = PathBuf::from(get.string("data_dir")?);
        let store_text = get.string("store_url")?;
        let store = parse_store_url(&store_text, &data_dir)
            .map_err(|reason| get.invalid("store_url", reason))?;
        let l1 = L1Config {
            capacity: get.positive("l1.capacity")?,
            ttl: get.duration("l1.ttl")?,
            negative_ttl: get.duration("l1.negative_ttl")?,
        };
        let http = HttpConfig {
            max_header_bytes: get.positive("http.max_header_bytes")? as usize,
            max_body_bytes: get.positive("http.max_body_bytes")? as usize,
            request_timeout: get.duration("http.request_timeout")?,
            idle_timeout: get.duration("http.idle_timeout")?,
            drain_delay: get.duration("http.drain_delay")?,
            shutdown_timeout: get.duration("http.shutdown_timeout")?,
        };
        if http.max_header_bytes < 8192 {
            return Err(get.invalid(
                "http.max_header_bytes",
                "must be at least 8192 (the HTTP/1 parser's smallest buffer)".into(),
            ));
        }
        if l1.ttl.is_zero() {
            return Err(get.invalid("l1.ttl", "must be longer than zero".into()));
        }
        if http.idle_timeout.is_zero() {
            return Err(get.invalid("http.idle_timeout", "must be longer than zero".into()));
        }
        if http.request_timeout.is_zero() {
            return Err(get.invalid("http.request_timeout", "must be longer than zero".into()));
        }
        let redis = RedisTopology::parse(&get.string("redis_urls")?)
            .map_err(|r| get.invalid("redis_urls", r))?;
        let zone_name = get.string("zone")?;
        let zone = match (&redis, zone_name.trim()) {
            (_, "") => 0,
            (None, _) => {
                return Err(get.invalid("zone", "names a zone but redis_urls is empty".into()))
            }
            (Some(t), name) => t.zones.iter().position(|z| z.name == name).ok_or_else(|| {
                get.invalid(
                    "zone",
                    format!(
                        "{name:?} is not one of the zones in redis_urls ({})",
                        t.zones
                            .iter()
                            .map(|z| z.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?,
        };
        let stream_text = get.string("changes.stream_url")?;
        let stream_url = match (stream_text.trim(), &redis) {
            ("", None) => None,
            ("", Some(t)) => Some(t.first_url()),
            (u, _) if u.starts_with("redis://") => Some(u.to_string()),
            (u, _) => {
                return Err(
                    get.invalid("changes.stream_url", format!("{u:?} is not a redis:// URL"))
                )
            }
        };
        let changes = ChangesConfig {
            poll_interval: get.duration("changes.poll_interval")?,
            retention: get.duration("changes.retention")?,
            stream_url,
            stream_maxlen: get.positive("changes.stream_maxlen")?,
        };
        let write_only_zones: Vec<String> = get
            .string("l2.write_only_zones")?
            .split(',')
            .map(|z| z.trim().to_string())
            .filter(|z| !z.is_empty())
            .collect();
        for z in &write_only_zones {
            if !redis
                .as_ref()
                .is_some_and(|t| t.zones.iter().any(|zone| zone.name == *z))
            {
                return Err(get.invalid(
                    "l2.write_only_zones",
                    format!("{z:?} is not a zone in redis_urls"),
                ));
            }
        }
        let l2 = TierConfig {
            ttl: get.duration("l2.ttl")?,
            timeout: get.duration("l2.timeout")?,
            breaker_failures: get.positive("l2.breaker_failures")?.min(u32::MAX as u64) as u32,
            breaker_cooldown: get.duration("l2.breaker_cooldown")?,
            max_store_fills: get.positive("l2.max_store_fills")? as usize,
            bucket_size: get.positive("l2.bucket_size")?,
            write_only_zones,
        };
        if l2.timeout.is_zero() {
            return Err(get.invalid("l2.timeout", "must be longer than zero".into()));
        }
        if l2.ttl < Duration::from_secs(1) {
            return Err(get.invalid("l2.ttl", "must be at least 1s".into()));
        }
        if let Some(t) = &redis {
            if !l2.write_only_zones.is_empty() && l2.write_only_zones.len() == t.zones.len() {
                return Err(get.invalid(
                    "l2.write_only_zones",
                    "at least one zone must be readable".into(),
                ));
            }
        }
        let relay = RelayConfig {
            lease_ttl: get.duration("relay.lease_ttl")?,
        };
        if relay.lease_ttl < Duration::from_millis(300) {
            return Err(get.invalid("relay.lease_ttl", "must be at least 300ms".into()));
        }
        if changes.poll_interval.is_zero() {
            return Err(get.invalid("changes.poll_interval", "must be longer than zero".into()));
        }
        Ok(Config {
            listen: get.addr("listen")?,
            admin_listen: get.addr("admin_listen")?,
            data_dir,
            store,
            seed_members: get.integer("seed_members")?,
            redis,
            zone,
            redis_prefix: get.string("redis_prefix")?,
            l1,
            l2,
            http,
            changes,
            relay,
        })
    }
}

/// `l1.ttl` → `READTIER_L1_TTL`.
pub fn env_name_of(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

fn flatten(prefix: &str, table: &toml::Table, source: &str, out: &mut BTreeMap<String, Raw>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, source, out),
            other => {
                out.insert(
                    key,
                    Raw {
                        value: other.clone(),
                        source_name: source.to_string(),
                    },
                );
            }
        }
    }
}

fn parse_store_url(text: &str, data_dir: &Path) -> Result<StoreUrl, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(StoreUrl::Sqlite(data_dir.join("readtier.db")));
    }
    if let Some(path) = text.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err("sqlite:// needs a file path".into());
        }
        return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
    }
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        text.parse::<tokio_postgres::Config>()
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        return Ok(StoreUrl::Postgres(text.to_string()));
    }
    if text.contains("://") {
        let scheme = text.split("://").next().unwrap_or_default();
        return Err(format!(
            "unsupported store scheme {scheme:?}: use postgres://, sqlite:// or a file path"
        ));
    }
    Ok(StoreUrl::Sqlite(PathBuf::from(text)))
}

/// Parses "250ms", "5s", "2m", "1h" (and "0").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (use ms, s, m or h)"))?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like \"250ms\" or \"5s\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    Ok(d)
}

struct Getter<'a>(&'a BTreeMap<String, Raw>);

impl Getter<'_> {
    fn raw(&self, key: &str) -> &Raw {
        // Every key read here is in config/default.toml; the unit tests load it.
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("config/default.toml lacks key {key}"))
    }

    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_string(),
            source_name: self.raw(key).source_name.clone(),
            reason,
        }
    }

    fn string(&self, key: &str) -> Result<String, ConfigError> {
        match &self.raw(key).value {
            toml::Value::String(s) => Ok(s.clone()),
            other => Err(self.invalid(key, format!("expected a string, found {other}"))),
        }
    }

    fn integer(&self, key: &str) -> Result<u64, ConfigError> {
        match &self.raw(key).value {
            toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
            other => Err(self.invalid(
                key,
                format!("expected a non-negative whole number, found {other}"),
            )),
        }
    }

    fn positive(&self, key: &str) -> Result<u64, ConfigError> {
        match self.integer(key)? {
            0 => Err(self.invalid(key, "must be greater than zero".into())),
            n => Ok(n),
        }
    }

    fn duration(&self, key: &str) -> Result<Duration, ConfigError> {
        let s = self.string(key)?;
        parse_duration(&s).map_err(|reason| self.invalid(key, reason))
    }

    fn addr(&self, key: &str) -> Result<SocketAddr, ConfigError> {
        let s = self.string(key)?;
        s.trim()
            .parse()
            .map_err(|_| self.invalid(key, format!("{s:?} is not an address like 127.0.0.1:8080")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_name_the_embedded_store() {
        let c = Config::from_layers(None, &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            c.store,
            StoreUrl::Sqlite(PathBuf::from("./var/readtier.db"))
        );
        assert_eq!(c.l1.ttl, Duration::from_secs(60));
        assert_eq!(c.http.max_body_bytes, 4096);
    }

    #[test]
    fn every_default_key_has_a_comment_above_it() {
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with('[') {
                continue;
            }
            assert!(
                i > 0 && lines[i - 1].trim().starts_with('#'),
                "key line {l:?} has no comment above it"
            );
        }
    }

    #[test]
    fn file_then_env_override_in_order() {
        let file = "data_dir = \"/tmp/x\"\n[l1]\nttl = \"5s\"\n";
        let c = Config::from_layers(
            Some((Path::new("f.toml"), file)),
            &env(&[
                ("READTIER_L1_TTL", "7s"),
                ("READTIER_LISTEN", "127.0.0.1:0"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.l1.ttl, Duration::from_secs(7));
        assert_eq!(c.listen.port(), 0);
        assert_eq!(
            c.store,
            StoreUrl::Sqlite(PathBuf::from("/tmp/x/readtier.db"))
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (env(&[("READTIER_LISTEN", "nope")]), "`listen`"),
            (env(&[("READTIER_L1_TTL", "5 parsecs")]), "`l1.ttl`"),
            (env(&[("READTIER_L1_CAPACITY", "-1")]), "`l1.capacity`"),
            (env(&[("READTIER_L1_CAPACITY", "0")]), "`l1.capacity`"),
            (env(&[("READTIER_NO_SUCH_KEY", "1")]), "`no_such_key`"),
            (env(&[("READTIER_STORE_URL", "mysql://x")]), "`store_url`"),
            (
                env(&[("READTIER_HTTP_MAX_HEADER_BYTES", "100")]),
                "`http.max_header_bytes`",
            ),
        ];
        for (e, needle) in cases {
            let err = Config::from_layers(None, &e).unwrap_err().to_string();
            assert!(err.contains(needle), "{err} should name {needle}");
        }
        let err = Config::from_layers(Some((Path::new("f.toml"), "[l1]\ncapacty = 3\n")), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`l1.capacty`"), "{err}");
        let err = Config::from_layers(Some((Path::new("f.toml"), "listen = 3\n")), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`listen`") && err.contains("expected a string"),
            "{err}"
        );
    }

    #[test]
    fn redis_topologies() {
        let t = RedisTopology::parse(
            "a=redis://10.0.0.1:6379,redis://10.0.0.2:6379;b=redis://10.0.1.1:6379",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.zones.len(), 2);
        assert_eq!(t.zones[0].name, "a");
        assert_eq!(t.zones[0].nodes.len(), 2);
        assert_eq!(t.zones[1].nodes, ["redis://10.0.1.1:6379"]);
        let one = RedisTopology::parse("redis://127.0.0.1:6379")
            .unwrap()
            .unwrap();
        assert_eq!(one.zones[0].name, "default");
        assert!(RedisTopology::parse("").unwrap().is_none());
        let c = RedisTopology::parse("a=redis+cluster://h1:7000,redis+cluster://h2:7000")
            .unwrap()
            .unwrap();
        assert!(c.zones[0].cluster);
        for bad in [
            "a=",
            "a=http://x",
            "a=redis://x;a=redis://y",
            "a b=redis://x",
            "a=redis+cluster://x,redis://y",
        ] {
            assert!(RedisTopology::parse(bad).is_err(), "{bad}");
        }
        let env = vec![
            (
                "READTIER_REDIS_URLS".to_string(),
                "a=redis://h:1;b=redis://h:2".to_string(),
            ),
            ("READTIER_ZONE".to_string(), "b".to_string()),
        ];
        let c = Config::from_layers(None, &env).unwrap();
        assert_eq!(c.zone, 1);
        assert_eq!(c.changes.stream_url.as_deref(), Some("redis://h:1"));
        let env = vec![
            (
                "READTIER_REDIS_URLS".to_string(),
                "a=redis://h:1".to_string(),
            ),
            ("READTIER_ZONE".to_string(), "c".to_string()),
        ];
        assert!(Config::from_layers(None, &env)
            .unwrap_err()
            .to_string()
            .contains("`zone`"));
        let env = vec![(
            "READTIER_STORE_URL".to_string(),
            "postgres://u@127.0.0.1:5432/db".to_string(),
        )];
        assert!(matches!(
            Config::from_layers(None, &env).unwrap().store,
            StoreUrl::Postgres(_)
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
