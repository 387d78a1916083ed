//! The values configuration names that need parsing beyond a scalar: the Redis
//! topology (zones of nodes), the store URL (with its TLS settings), CA files, and
//! durations ("250ms", "5s").

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

/// libpq's `sslmode`, as far as readtier honours it (`allow` is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, else plain; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is not checked (encryption against a
    /// passive listener, not against an impostor).
    Require,
    /// TLS with the certificate chain checked against the CA; any host name.
    VerifyCa,
    /// TLS with the chain checked and the certificate naming the host connected to.
    VerifyFull,
}

/// How connections to the store are encrypted: the URL's `sslmode` and `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: PgSslMode,
    /// The CAs to check the server against (`sslrootcert=PATH`); `None`: the system's
    /// trust store, for the verify modes.
    pub root_cert: Option<CaFile>,
}

/// A PostgreSQL database and the time limits its connections get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// The URL as tokio-postgres reads it: `sslrootcert` taken out and `sslmode` one
    /// of its own three (`tls` carries what was asked for).
    pub url: String,
    pub tls: PgTls,
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
        let (url, tls) = split_pg_tls(text)?;
        url.parse::<tokio_postgres::Config>()
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        return Ok(StoreUrl::Postgres(PgTarget {
            url,
            tls,
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

/// Takes libpq's `sslmode` and `sslrootcert` out of a PostgreSQL URL's query, which
/// tokio-postgres cannot read as they are (it knows no `verify-ca`/`verify-full` and
/// no `sslrootcert`), and puts back the `sslmode` it knows: `require` for the verify
/// modes, whose checks the TLS connector makes. As in libpq, no `sslmode` means
/// `prefer`; `require` with a `sslrootcert` file checks the chain as `verify-ca` does;
/// `sslrootcert=system` names the system's trust store and makes `verify-full` the
/// default (a weaker mode with it is refused).
fn split_pg_tls(url: &str) -> Result<(String, PgTls), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = Some(percent_decode(v)?),
            "sslrootcert" => root = Some(percent_decode(v)?),
            // libpq's other TLS settings (client certificates, CRLs, …), which
            // tokio-postgres would refuse as an "invalid connection string".
            k if k.starts_with("ssl") && k != "sslnegotiation" => {
                return Err(format!(
                    "{k} is not supported (of libpq's TLS settings only sslmode, sslrootcert and sslnegotiation are)"
                ))
            }
            _ => kept.push(pair),
        }
    }
    let system = root.as_deref() == Some("system");
    let mode =
        match mode.as_deref() {
            None if system => PgSslMode::VerifyFull,
            None | Some("prefer") => PgSslMode::Prefer,
            Some("disable") => PgSslMode::Disable,
            Some("require") => PgSslMode::Require,
            Some("verify-ca") => PgSslMode::VerifyCa,
            Some("verify-full") => PgSslMode::VerifyFull,
            Some("allow") => return Err(
                "sslmode=allow is not supported (use prefer, require, verify-ca or verify-full)"
                    .into(),
            ),
            Some(other) => {
                return Err(format!(
                "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
            ))
            }
        };
    let root_cert = match root.as_deref() {
        None | Some("system") => None,
        Some("") => return Err("sslrootcert is empty".into()),
        Some(path) => Some(CaFile::load(Path::new(path)).map_err(|e| format!("sslrootcert {e}"))?),
    };
    if system && !matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull) {
        return Err(format!(
            "sslrootcert=system needs sslmode verify-ca or verify-full, not {mode:?}"
        ));
    }
    let mode = match (mode, &root_cert) {
        (PgSslMode::Require, Some(_)) => PgSslMode::VerifyCa,
        (m, _) => m,
    };
    kept.push(match mode {
        PgSslMode::Disable => "sslmode=disable",
        PgSslMode::Prefer => "sslmode=prefer",
        _ => "sslmode=require",
    });
    Ok((
        format!("{base}?{}", kept.join("&")),
        PgTls { mode, root_cert },
    ))
}

/// `%2F` → `/` (URL query values; `+` is left as it is, as tokio-postgres does).
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
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

    fn ca_file(dir: &Path) -> PathBuf {
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_string()]).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        path
    }

    fn pg(url: &str) -> Result<PgTarget, String> {
        match parse_store_url(url, Path::new("/d"))? {
            StoreUrl::Postgres(t) => Ok(t),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn postgres_sslmodes_are_read_as_libpq_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let ca_text = ca.display().to_string();
        let base = "postgres://u:pw@h:5432/db";
        let t = pg(base).unwrap();
        assert_eq!(
            (t.tls.mode, &t.url),
            (PgSslMode::Prefer, &format!("{base}?sslmode=prefer"))
        );
        for (mode, want, theirs) in [
            ("disable", PgSslMode::Disable, "disable"),
            ("prefer", PgSslMode::Prefer, "prefer"),
            ("require", PgSslMode::Require, "require"),
            ("verify-ca", PgSslMode::VerifyCa, "require"),
            ("verify-full", PgSslMode::VerifyFull, "require"),
        ] {
            let t = pg(&format!("{base}?options=-cx%3D1&sslmode={mode}")).unwrap();
            assert_eq!(t.tls.mode, want, "{mode}");
            assert_eq!(t.tls.root_cert, None);
            assert_eq!(t.url, format!("{base}?options=-cx%3D1&sslmode={theirs}"));
        }
        // sslrootcert is read at start and taken out of the URL tokio-postgres sees;
        // percent-encoded paths are decoded.
        let encoded = ca_text.replace('/', "%2F");
        let t = pg(&format!(
            "{base}?sslrootcert={encoded}&sslmode=verify-full&application_name=x"
        ))
        .unwrap();
        assert_eq!(t.tls.mode, PgSslMode::VerifyFull);
        assert_eq!(t.tls.root_cert.as_ref().unwrap().path, ca);
        assert_eq!(t.url, format!("{base}?application_name=x&sslmode=require"));
        // libpq: require with a root certificate checks the chain (verify-ca).
        let t = pg(&format!("{base}?sslmode=require&sslrootcert={ca_text}")).unwrap();
        assert_eq!(t.tls.mode, PgSslMode::VerifyCa);
        // sslrootcert=system: the system's store, verify-full by default.
        let t = pg(&format!("{base}?sslrootcert=system")).unwrap();
        assert_eq!((t.tls.mode, t.tls.root_cert), (PgSslMode::VerifyFull, None));
        for (bad, says) in [
            ("sslmode=allow", "allow"),
            ("sslmode=verify_full", "verify_full"),
            ("sslmode=require&sslrootcert=system", "system"),
            ("sslrootcert=", "empty"),
            (
                "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "/nonexistent/ca.pem",
            ),
            ("sslrootcert=%zz", "percent"),
            ("sslcert=/x.pem", "sslcert"),
        ] {
            let e = pg(&format!("{base}?{bad}")).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("pw"), "{bad}: {e}");
        }
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let e = pg(&format!(
            "{base}?sslmode=verify-full&sslrootcert={}",
            not_pem.display()
        ))
        .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
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
