//! One lazily connected connection to a Redis server (or a Redis Cluster), shared by
//! every caller: the tier's nodes and the change stream use this type alone.
//!
//! A plain server is reached through redis-rs's `ConnectionManager`: one multiplexed
//! connection that every clone pipelines over, made on first use, and replaced by one
//! reconnect at a time (jittered exponential backoff) when the server drops it, so a
//! Redis restart makes one reconnect, not one per waiting caller. A Redis Cluster is
//! reached through the cluster client, which routes each key to its slot's master and
//! reconnects by itself.
//!
//! The server is named for logs and metrics by `host:port` only ([`RedisConn::shown`]):
//! URLs may carry passwords.
//!
//! TLS: a `rediss://` URL (`rediss+cluster://` for a cluster's seeds) is reached over
//! rustls, the server's certificate checked against the CA certificates given (PEM), or
//! the system's trust store when none are given. The check is never switched off:
//! configuration refuses redis-rs's `#insecure`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Client, IntoConnectionInfo, RedisError, RedisResult, TlsCertificates};

/// How long to wait for a connection and for each answer.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

/// A Redis server or cluster, connected on first use.
pub struct RedisConn {
    shown: String,
    inner: Inner,
    /// Whether the server (or cluster) is reached over TLS, and the CA it is checked
    /// against: for [`RedisConn::peer`].
    tls: bool,
    ca: Option<Vec<u8>>,
}

enum Inner {
    Single(ConnectionManager),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        conn: tokio::sync::OnceCell<ClusterConnection>,
    },
}

/// A handle for one call (cheap to clone; all clones share the connection).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// A plain server at `url` (`redis[s]://[user:password@]host:port[/db]`); a
    /// `rediss://` server's certificate is checked against `ca` (PEM) if given.
    pub fn single(url: &str, t: Timeouts, ca: Option<&[u8]>) -> RedisResult<RedisConn> {
        let client = client(url, ca)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(t.connect))
            .set_response_timeout(Some(t.response))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        Ok(RedisConn {
            shown: shown(url),
            inner: Inner::Single(ConnectionManager::new_lazy_with_config(client, cfg)?),
            tls: url.starts_with("rediss://"),
            ca: ca.map(<[u8]>::to_vec),
        })
    }

    /// A Redis Cluster reached through these seeds (`redis[s]+cluster://` or
    /// `redis[s]://`); over TLS every node's certificate is checked against `ca` if given.
    pub fn cluster(seeds: &[String], t: Timeouts, ca: Option<&[u8]>) -> RedisResult<RedisConn> {
        let urls: Vec<String> = seeds
            .iter()
            .map(|s| {
                s.replacen("rediss+cluster://", "rediss://", 1).replacen(
                    "redis+cluster://",
                    "redis://",
                    1,
                )
            })
            .collect();
        let mut builder = redis::cluster::ClusterClient::builder(urls.clone())
            .connection_timeout(t.connect)
            .response_timeout(t.response);
        let tls = urls.iter().any(|u| u.starts_with("rediss://"));
        if let (Some(pem), true) = (ca, tls) {
            ensure_crypto_provider();
            builder = builder.certs(certificates(pem));
        }
        let client = builder.build()?;
        Ok(RedisConn {
            shown: urls.iter().map(|u| shown(u)).collect::<Vec<_>>().join(","),
            inner: Inner::Cluster {
                client: Box::new(client),
                conn: tokio::sync::OnceCell::new(),
            },
            tls,
            ca: ca.map(<[u8]>::to_vec),
        })
    }

    /// `host:port` (or a list of them for a cluster): safe for logs and labels.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A client of its own for another server of the same deployment (a cluster's
    /// master, learned from `CLUSTER SLOTS`), reached as this one is: over TLS with
    /// the same CA, or plain.
    pub fn peer(&self, host: &str, port: u16) -> RedisResult<Client> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        client(&format!("{scheme}://{host}:{port}"), self.ca.as_deref())
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster { .. })
    }

    /// The connection, made if it was not yet.
    pub async fn get(&self) -> RedisResult<Conn> {
        match &self.inner {
            Inner::Single(m) => Ok(Conn::Single(m.clone())),
            Inner::Cluster { client, conn } => conn
                .get_or_try_init(|| client.get_async_connection())
                .await
                .cloned()
                .map(Conn::Cluster),
        }
    }
}

/// A client for one server: over TLS checked against `ca` for a `rediss://` URL, plain
/// for a `redis://` one (`ca` unused). Also for connections of their own to a server a
/// zone names (the cluster masters an admin SCAN visits).
pub fn client(url: &str, ca: Option<&[u8]>) -> RedisResult<Client> {
    let info = url.into_connection_info()?;
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Client::open(info);
    }
    ensure_crypto_provider();
    match ca {
        Some(pem) => Client::build_with_tls(info, certificates(pem)),
        None => Client::open(info),
    }
}

fn certificates(pem: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// Makes ring rustls's process-wide crypto provider, which redis-rs's TLS
/// configuration takes (`ClientConfig::builder()`), so that it never depends on which
/// providers other crates happen to enable. The first install wins; a later one (or
/// one by another library) is harmless.
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `redis://user:secret@10.0.0.1:6379/2` → `10.0.0.1:6379`.
pub fn shown(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    host.to_string()
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Whether an error means the server or the link is gone (as opposed to a command
/// the server refused).
pub fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_names_host_and_port_without_credentials() {
        assert_eq!(
            shown("redis://user:secret@10.0.0.1:6379/2"),
            "10.0.0.1:6379"
        );
        assert_eq!(shown("redis://:pw@h:1"), "h:1");
        assert_eq!(shown("redis://127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(shown("redis+cluster://h:7000?x=1"), "h:7000");
        assert_eq!(shown("rediss://u:pw@h:6380/#insecure"), "h:6380");
        assert_eq!(shown("rediss://:pw@h:6380#insecure"), "h:6380");
    }
}
