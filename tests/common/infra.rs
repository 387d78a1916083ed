//! Real PostgreSQL and private redis-server processes for tests.
//!
//! PostgreSQL: each test gets its own schema in the `test` database (URL from
//! `TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`), dropped at the end.
//! Redis: each test starts its own `redis-server` on a free port, killed at the end.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn pg_base_url() -> String {
    std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A schema of its own for one test.
pub struct PgSchema {
    pub name: String,
}

impl PgSchema {
    pub async fn new() -> PgSchema {
        let name = format!(
            "rt_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        pg_exec(&pg_base_url(), &format!("CREATE SCHEMA {name}")).await;
        PgSchema { name }
    }

    /// A store URL whose connections use this schema.
    pub fn url(&self) -> String {
        let base = pg_base_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options=-csearch_path%3D{}", self.name)
    }

    /// Runs SQL as another service would: a plain connection, schema-qualified names
    /// resolved through this schema's search path.
    pub async fn exec(&self, sql: &str) {
        pg_exec(&self.url(), sql).await
    }

    /// A client of its own, for holding transactions open.
    pub async fn client(&self) -> tokio_postgres::Client {
        pg_client(&self.url()).await
    }

    /// Holds `memberships` locked exclusively (a store whose member reads block)
    /// until [`MembersLocked::release`], or until dropped (the connection closes).
    pub async fn lock_members(&self) -> MembersLocked {
        let c = self.client().await;
        c.batch_execute("BEGIN; LOCK TABLE memberships IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        MembersLocked(c)
    }
}

/// See [`PgSchema::lock_members`].
pub struct MembersLocked(tokio_postgres::Client);

impl MembersLocked {
    pub async fn release(self) {
        self.0.batch_execute("COMMIT").await.unwrap();
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let url = pg_base_url();
        let name = self.name.clone();
        // Drop is synchronous: use a short-lived thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL at {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

pub async fn pg_exec(url: &str, sql: &str) {
    pg_client(url)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Extra arguments (cluster mode).
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            child: None,
            extra: Vec::new(),
        };
        s.spawn();
        s
    }

    /// The server's process id (for signals such as SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// A redis-server started with extra arguments (e.g. `--requirepass`).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            child: None,
            extra: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// A redis-server that speaks TLS only, on `port` (`--port 0 --tls-port P`), with
    /// this certificate and key; client certificates are not asked for.
    pub fn start_tls(pki: &super::pki::TestPki) -> RedisServer {
        let port = free_port();
        let path = |p: &std::path::Path| p.display().to_string();
        let mut s = RedisServer {
            port,
            child: None,
            extra: vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                path(&pki.cert),
                "--tls-key-file".into(),
                path(&pki.key),
                "--tls-ca-cert-file".into(),
                path(&pki.ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        };
        s.spawn();
        s
    }

    /// A node of a Redis Cluster (its cluster state file in `dir`); see [`create_cluster`].
    pub fn start_cluster_node(dir: &std::path::Path) -> RedisServer {
        let port = free_port();
        let conf = dir.join(format!("nodes-{port}.conf")).display().to_string();
        let mut s = RedisServer {
            port,
            child: None,
            extra: vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf,
            ],
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: the process dies at once, with whatever it held.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Joins these servers into one Redis Cluster (masters only) and waits until it
/// answers `cluster_state:ok` everywhere.
pub fn create_cluster(nodes: &[RedisServer]) {
    let mut c = Command::new("redis-cli");
    c.arg("--cluster").arg("create");
    for n in nodes {
        c.arg(format!("127.0.0.1:{}", n.port));
    }
    let out = c
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli is installed");
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = nodes.iter().all(|n| {
            Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                .unwrap_or(false)
        });
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "cluster did not become ok");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (with SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `readtier relay --id ID` as a process with these settings.
pub fn relay_process(id: &str, env: &[(&str, String)]) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_readtier"));
    for (k, _) in std::env::vars() {
        if k.starts_with("READTIER_") {
            c.env_remove(k);
        }
    }
    // RELAY_LOG=<filter> shows the relay's log on the test's stderr (for debugging).
    let log = std::env::var("RELAY_LOG").ok();
    c.args(["relay", "--id", id])
        .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
        .stdout(Stdio::null())
        .stderr(if log.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        c.env(k, v);
    }
    Proc(c.spawn().expect("start relay"))
}

/// A migrated schema of its own with the reference catalog and members `1..=members`,
/// and the store over it: the one way tests seed PostgreSQL.
pub async fn seeded_pg(members: u64) -> (PgSchema, readtier::store::Store) {
    use readtier::node::{prepare_store, seed_members_into};
    let schema = PgSchema::new().await;
    let cfg =
        readtier::config::Config::from_layers(None, &[("READTIER_STORE_URL".into(), schema.url())])
            .unwrap();
    let store = readtier::store::Store::open(&cfg.store).unwrap();
    prepare_store(&store, 0).await.unwrap();
    if members > 0 {
        seed_members_into(
            &store,
            &readtier::plan::CatalogData::reference().unwrap(),
            members,
        )
        .await
        .unwrap();
    }
    (schema, store)
}

/// A relay in this process, built as the CLI builds it; cancel the token to stop it
/// (releasing its lease).
pub fn relay_task(
    cfg: &readtier::config::Config,
    id: &str,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let relay = readtier::relay::Relay::from_config(cfg, id.to_string()).unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(relay.run(token.clone()));
    (token, handle)
}

/// `readtier serve` as a process of its own: its own metrics registry, and a real
/// process to signal or `kill -9`. Killed (SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    /// The gRPC listener's address, when it has one.
    pub grpc: Option<std::net::SocketAddr>,
    /// Everything it printed on stderr so far is appended here by a reader thread.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl NodeProcess {
    /// Starts `readtier serve` with exactly these settings (the test's own
    /// `READTIER_*` variables are not passed on) and waits until it listens.
    pub fn start(env: &[(&str, String)]) -> NodeProcess {
        NodeProcess::start_command(Command::new(env!("CARGO_BIN_EXE_readtier")), env)
    }

    /// [`NodeProcess::start`] with the command that runs the binary given (another
    /// build of it, or it under `taskset`).
    pub fn start_command(mut c: Command, env: &[(&str, String)]) -> NodeProcess {
        use std::io::{BufRead, BufReader, Read};
        for (k, _) in std::env::vars() {
            if k.starts_with("READTIER_") {
                c.env_remove(k);
            }
        }
        c.env(
            "RUST_LOG",
            std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("READTIER_LISTEN", "127.0.0.1:0")
        .env("READTIER_ADMIN_LISTEN", "127.0.0.1:0")
        // Not the default 0.0.0.0:50051: tests run side by side.
        .env("READTIER_GRPC_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("start readtier serve");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addrs: Vec<std::net::SocketAddr> = line
            .split("http://")
            .skip(1)
            .filter_map(|s| {
                s.split(|c: char| c.is_whitespace() || c == ')')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(
            addrs.len(),
            2,
            "serve printed {line:?}; stderr: {}",
            stderr.lock().unwrap()
        );
        // "… (grpc 127.0.0.1:50051)" when the gRPC listener is on.
        let grpc = line
            .split("(grpc ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|a| a.parse().ok());
        NodeProcess {
            child,
            addr: addrs[0],
            admin: addrs[1],
            grpc,
            stderr,
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `STOP`, `CONT`, `KILL`).
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "readtier did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A PostgreSQL server of its own (initdb in a temporary directory, a free port), for
/// tests that kill and restart the store. Runs as the `postgres` user when the tests
/// run as root (PostgreSQL refuses root). Killed when dropped.
pub struct PrivatePg {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    child: Option<Child>,
    /// Settings after the defaults (`-c name=value` pairs; later ones win).
    extra: Vec<String>,
}

/// How a [`PrivatePg`] takes TLS: its certificate and key, and the `pg_hba.conf` lines
/// that replace the default ones.
pub struct PgTlsSetup<'a> {
    pub pki: &'a super::pki::TestPki,
    pub hba: &'a [&'a str],
    /// `listen_addresses` (e.g. `127.0.0.1,127.0.0.2`).
    pub listen: &'a str,
}

impl PrivatePg {
    pub fn start() -> PrivatePg {
        Self::start_inner(None)
    }

    /// A server with `ssl=on`, this certificate and key (copied into its data
    /// directory, owned by the server's user, the key mode 0600) and these `pg_hba.conf`
    /// lines.
    pub fn start_tls(setup: &PgTlsSetup<'_>) -> PrivatePg {
        Self::start_inner(Some(setup))
    }

    fn start_inner(tls: Option<&PgTlsSetup<'_>>) -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (.ci/run installs them)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists())
            .max()
            .expect("a PostgreSQL version under /usr/lib/postgresql");
        let dir = tempfile::Builder::new().prefix("rt-pg").tempdir().unwrap();
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if is_root {
            let ok = Command::new("chown")
                .args(["postgres", &dir.path().display().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the data directory to postgres");
        }
        let data = dir.path().join("data");
        let out = Self::as_pg(is_root, &bin.join("initdb"))
            .args(["-D", &data.display().to_string()])
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut extra = Vec::new();
        if let Some(t) = tls {
            use std::os::unix::fs::PermissionsExt;
            std::fs::copy(&t.pki.cert, data.join("server.crt")).unwrap();
            std::fs::copy(&t.pki.key, data.join("server.key")).unwrap();
            std::fs::write(data.join("pg_hba.conf"), t.hba.join("\n") + "\n").unwrap();
            for f in ["server.crt", "server.key", "pg_hba.conf"] {
                if is_root {
                    let ok = Command::new("chown")
                        .args(["postgres", &data.join(f).display().to_string()])
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "chown {f} to postgres");
                }
            }
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            for setting in [
                "ssl=on".to_string(),
                "ssl_cert_file=server.crt".to_string(),
                "ssl_key_file=server.key".to_string(),
                format!("listen_addresses={}", t.listen),
            ] {
                extra.push("-c".to_string());
                extra.push(setting);
            }
        }
        let mut pg = PrivatePg {
            port: free_port(),
            dir,
            bin,
            child: None,
            extra,
        };
        pg.spawn();
        pg
    }

    /// A tokio-postgres configuration over the server's Unix socket (no TCP, no TLS:
    /// for the test's own looks at the server, such as `pg_stat_ssl`).
    pub fn socket_config(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.dir.path().display(),
            self.port
        )
    }

    fn as_pg(is_root: bool, program: &std::path::Path) -> Command {
        if is_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let data = self.dir.path().join("data").display().to_string();
        let sock = self.dir.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut c = Self::as_pg(is_root, &self.bin.join("postgres"));
            c.args(["-D", &data, "-p", &self.port.to_string(), "-k", &sock])
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "max_connections=200"])
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            let mut child = c.spawn().expect("start postgres");
            // Ready when it accepts a query; a start right after a kill may fail while
            // the old backends exit: try again.
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                let ok = Command::new(self.bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "private postgres did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `postgres` database of this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// SIGKILL to the postmaster and every backend at once (their process group).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data (crash recovery runs first).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends a signal by name (`STOP`, `CONT`, `TERM`, …) to a process.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// A process stopped with SIGSTOP (hung: its connections stay open, nothing is
/// answered); continued with SIGCONT when dropped, so a failing test leaves nothing
/// stopped.
pub struct Stopped(u32);

impl Stopped {
    pub fn new(pid: u32) -> Stopped {
        signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}
