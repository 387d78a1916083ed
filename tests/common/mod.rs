//! Shared test harness: nodes on port 0 in their own temporary data directory, a tiny
//! HTTP/1.1 client that can also send malformed requests, and raw SQL as another
//! service would write it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use readtier::config::Config;
use readtier::node::{self, Running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub running: Running,
    pub shutdown: CancellationToken,
}

/// Configuration for a test node: loopback port 0, its own data directory, a small
/// seeded member base, a fast change poll; `extra` adds or overrides `READTIER_*` pairs.
pub fn test_config(dir: &Path, extra: &[(&str, &str)]) -> Config {
    let mut env: Vec<(String, String)> = vec![
        ("READTIER_LISTEN".into(), "127.0.0.1:0".into()),
        ("READTIER_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
        // Not the default 0.0.0.0:50051: tests run side by side.
        ("READTIER_GRPC_LISTEN".into(), "127.0.0.1:0".into()),
        ("READTIER_DATA_DIR".into(), dir.display().to_string()),
        ("READTIER_SEED_MEMBERS".into(), "2000".into()),
        ("READTIER_CHANGES_POLL_INTERVAL".into(), "20ms".into()),
    ];
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    Config::from_layers(None, &env).expect("test configuration is valid")
}

/// A configuration from `READTIER_*` pairs alone (no defaults added but a gRPC
/// listener on port 0, as tests run side by side), as the tests that run several
/// processes against one store build theirs.
pub fn config_of(env: &[(&str, String)]) -> Config {
    let mut pairs: Vec<(String, String)> =
        vec![("READTIER_GRPC_LISTEN".into(), "127.0.0.1:0".into())];
    pairs.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Config::from_layers(None, &pairs).expect("test configuration is valid")
}

impl TestNode {
    /// [`TestNode::start`] with owned values.
    pub async fn start_with(env: &[(&str, String)]) -> TestNode {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        TestNode::start(&pairs).await
    }

    pub async fn start(extra: &[(&str, &str)]) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = test_config(dir.path(), extra);
        let shutdown = CancellationToken::new();
        let running = node::start(cfg, shutdown.clone())
            .await
            .expect("node starts");
        TestNode {
            dir,
            running,
            shutdown,
        }
    }

    /// A node whose store cannot be reached (nothing listens on port 9: every store
    /// call fails at once), serving the reference catalog as version `version` from
    /// the disk snapshot it finds in its data directory.
    pub async fn start_store_down(version: u64) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut data = readtier::catalog::CatalogData::reference().unwrap();
        data.version = version;
        readtier::catalog::disk::save(&data, &readtier::catalog::disk::snapshot_path(dir.path()))
            .unwrap();
        let cfg = test_config(
            dir.path(),
            &[("READTIER_STORE_URL", "postgres://postgres@127.0.0.1:9/none")],
        );
        let shutdown = CancellationToken::new();
        let running = node::start(cfg, shutdown.clone())
            .await
            .expect("node starts from its disk snapshot");
        TestNode {
            dir,
            running,
            shutdown,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("readtier.db")
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.running.addr
    }

    pub async fn get(&self, path: &str) -> Resp {
        get(self.running.addr, path, &[]).await
    }

    /// [`TestNode::get`] owning its path, for many requests joined at once.
    pub fn get_owned(&self, path: String) -> impl std::future::Future<Output = Resp> {
        let addr = self.running.addr;
        async move { get(addr, &path, &[]).await }
    }

    pub async fn authorize(&self, body: &str) -> Resp {
        post(
            self.running.addr,
            "/v1/playback/authorize",
            "application/json",
            body.as_bytes(),
        )
        .await
    }

    /// Waits until the node has applied every change committed so far.
    pub async fn caught_up(&self) {
        let db = self.db();
        let head: i64 = tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(db).unwrap();
            c.query_row("SELECT coalesce(max(seq), 0) FROM change_log", [], |r| {
                r.get(0)
            })
            .unwrap()
        })
        .await
        .unwrap();
        let pos = self.running.change_position.clone();
        eventually(
            Duration::from_secs(10),
            "the follower to catch up",
            || async {
                (pos.load(std::sync::atomic::Ordering::Acquire) >= head as u64).then_some(())
            },
        )
        .await;
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.running.wait().await;
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an RFC 9457 problem answer with this status; returns its JSON.
    pub fn assert_problem(&self, status: u16) -> serde_json::Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let v = self.json();
        assert_eq!(v["status"], status);
        for field in ["type", "title", "detail"] {
            assert!(
                v[field].as_str().is_some_and(|s| !s.is_empty()),
                "problem lacks {field}: {v}"
            );
        }
        v
    }
}

/// Sends raw bytes, reads the answer until the server closes the connection.
pub async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    read_response(&mut s).await
}

pub async fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("answer within 20 s")
        .expect("read answer");
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    }
}

pub async fn get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes()).await
}

pub async fn post(addr: std::net::SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Resp {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(addr, &req).await
}

/// Runs raw SQL against an SQLite store file, as another service would.
pub fn sql(db: &Path, statements: &str) {
    let c = rusqlite::Connection::open(db).expect("open store file");
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.execute_batch(statements)
        .unwrap_or_else(|e| panic!("{statements}: {e}"));
}

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
/// Used for eventual visibility (liveness), never to assert speed.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "not seen within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
pub mod infra;
pub mod pki;
