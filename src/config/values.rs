//! The values configuration names that need parsing beyond a scalar: the Redis
//! topology (zones of nodes), the store URL, CA files, and durations ("250ms", "5s").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Redis nodes grouped into zones; every zone holds a full replica of the hash tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTopology {
    pub zones: Vec<Zone>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    /// Node URLs (`redis://host:port[/db]`, `rediss://` for TLS), or cluster seeds
    /// when `cluster`.
    pub nodes: Vec<String>,
    /// A Redis Cluster zone (`redis+cluster://` or `rediss+cluster://` seeds): the
    /// cluster routes keys itself.
    pub cluster: bool,
}

/// What a Redis URL's scheme says: TLS or not, one server or a cluster's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisScheme {
    pub tls: bool,
    pub cluster: bool,
}

/// The scheme of a Redis URL with something after it, or why it is not one. A
/// `rediss://` URL must not carry redis-rs's `#insecure` (or any other fragment): an
/// encrypted link to an unverified server is not offered; a private CA is named by
/// `redis_tls_ca_file` instead.
pub fn redis_scheme(url: &str) -> Result<RedisScheme, String> {
    // Messages name the URL by host:port alone: it may carry a password.
    let shown = crate::redis_conn::shown(url);
    let not_redis = || format!("{shown:?} is not a redis:// or rediss:// URL");
    let (scheme, rest) = url.split_once("://").ok_or_else(not_redis)?;
    let (tls, cluster) = match scheme {
        "redis" => (false, false),
        "rediss" => (true, false),
        "redis+cluster" => (false, true),
        "rediss+cluster" => (true, true),
        _ => return Err(not_redis()),
    };
    if rest.is_empty() {
        return Err(format!("{url:?} names no server"));
    }
    if rest.contains('#') {
        return Err(format!(
            "{shown}: a URL fragment (#insecure) is not supported; name the servers' CA in redis_tls_ca_file"
        ));
    }
    Ok(RedisScheme { tls, cluster })
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
            let first = redis_scheme(&nodes[0]).map_err(|e| format!("zone {name:?}: {e}"))?;
            let cluster = first.cluster;
            for n in &nodes {
                let scheme = redis_scheme(n).map_err(|e| format!("zone {name:?}: {e}"))?;
                if scheme != first {
                    return Err(format!(
                        "zone {name:?}: {} does not match the zone's first URL (a cluster zone lists only redis+cluster:// or only rediss+cluster:// seeds; a ring zone only redis:// or rediss:// URLs, and all of one kind)",
                        crate::redis_conn::shown(n)
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
}

/// Where the source of truth lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite database file (the embedded default).
    Sqlite(PathBuf),
    /// A PostgreSQL (wire-compatible) database.
    Postgres(PgTarget),
}

/// A PEM file of CA certificates, read once at start: a missing, unreadable or empty
/// file stops the start naming its key, not the first connection long after.
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    pub path: PathBuf,
    /// The file's bytes (one or more `CERTIFICATE` blocks).
    pub pem: Arc<[u8]>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaFile({})", self.path.display())
    }
}

impl CaFile {
    /// Reads `path` and checks it holds at least one PEM certificate.
    pub fn load(path: &Path) -> Result<CaFile, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut certs = 0;
        for c in CertificateDer::pem_slice_iter(&pem) {
            c.map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
            certs += 1;
        }
        if certs == 0 {
            return Err(format!(
                "{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(CaFile {
            path: path.to_path_buf(),
            pem: pem.into(),
        })
    }
}

/// A PostgreSQL database and the time limits its connections get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub url: String,
    /// `store_connect_timeout`.
    pub connect_timeout: std::time::Duration,
    /// `store_statement_timeout` (zero: none).
    pub statement_timeout: std::time::Duration,
    /// Connections for member reads: `l2.max_store_fills`.
    pub member_reads: usize,
}

/// The store named by `store_url`; empty means the embedded file under `data_dir`.
pub fn parse_store_url(text: &str, data_dir: &Path) -> Result<StoreUrl, String> {
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
        return Ok(StoreUrl::Postgres(PgTarget {
            url: text.to_string(),
            connect_timeout: std::time::Duration::from_secs(5),
            statement_timeout: std::time::Duration::from_secs(10),
            member_reads: 64,
        }));
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

#[cfg(test)]
mod tests {
    use super::*;

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
            "a=rediss://x,redis://y",
            "a=rediss+cluster://x,redis+cluster://y",
            "a=rediss://",
            "a=rediss://:pw@x:1/#insecure",
        ] {
            assert!(RedisTopology::parse(bad).is_err(), "{bad}");
        }
        let tls = RedisTopology::parse("a=rediss://:pw@h1:6380,rediss://h2:6380;b=redis://h3")
            .unwrap()
            .unwrap();
        assert_eq!(tls.zones[0].nodes[0], "rediss://:pw@h1:6380");
        assert!(!tls.zones[0].cluster);
        let c = RedisTopology::parse("rediss+cluster://h1:7000,rediss+cluster://h2:7000")
            .unwrap()
            .unwrap();
        assert!(c.zones[0].cluster);
        // Messages name servers by host:port: never a password.
        let e = RedisTopology::parse("a=rediss://:secret@x:1/#insecure").unwrap_err();
        assert!(e.contains("x:1") && !e.contains("secret"), "{e}");
        let e = RedisTopology::parse("a=rediss://:secret@x:1,redis://:secret@y:2").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn store_urls() {
        let dir = Path::new("/d");
        assert_eq!(
            parse_store_url("", dir).unwrap(),
            StoreUrl::Sqlite(PathBuf::from("/d/readtier.db"))
        );
        assert_eq!(
            parse_store_url("sqlite:///x.db", dir).unwrap(),
            StoreUrl::Sqlite(PathBuf::from("/x.db"))
        );
        assert!(matches!(
            parse_store_url("postgres://u@h/db", dir).unwrap(),
            StoreUrl::Postgres(_)
        ));
        assert!(parse_store_url("mysql://x", dir).is_err());
        assert!(parse_store_url("sqlite://", dir).is_err());
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
