//! The fault suite: real processes killed with SIGKILL while two nodes in two zones
//! serve continuous reads and raw-SQL writers commit.
//!
//! Every scenario runs the same rig: PostgreSQL (a schema of its own, or a private
//! server for the store restart), two zones `a` and `b` of two `redis-server`s each, an
//! active relay and a standby (`readtier relay` processes, lease 2 s), and two nodes
//! (`readtier serve` processes, zone `a` and zone `b`, L1 TTL 10 minutes so that a stale
//! entry would stay visible). Writers toggle the status of 200 hot members; readers on
//! both nodes read those members without pause. Each scenario asserts:
//! - **no failed read of a member already answered** by that node process;
//! - **no version goes backwards** on a node;
//! - **convergence**: after the fault heals or fails over and the writers stop, every
//!   node answers exactly the store's status and version for every hot member within
//!   [`CONVERGE`];
//! - **no drift**: `readtier reconcile` then finds nothing stale in any zone.
//!
//! The scenarios run one at a time (a lock), so that one's load does not slow another's
//! convergence on this 2-core machine; each prints its convergence time.
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::infra::{relay_process, NodeProcess, PgSchema, PrivatePg, Proc, RedisServer, Stopped};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Members the writers change and the readers read.
const HOT: u64 = 200;
/// Members written exactly once, during the fault (ids `HOT + 1 ..= HOT + WINDOW`):
/// a change to one of them that is lost is never covered by a later one.
const WINDOW: u64 = 100;
/// Longest time, after writers stop and the fault has healed or failed over, for every
/// node to answer exactly the store's state.
const CONVERGE: Duration = Duration::from_secs(2);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the store lives.
enum Pg {
    Schema(PgSchema),
    Private(PrivatePg),
}

impl Pg {
    fn url(&self) -> String {
        match self {
            Pg::Schema(s) => s.url(),
            Pg::Private(p) => p.url(),
        }
    }
}

/// What readers saw on one node.
#[derive(Default)]
struct Seen {
    /// Highest version answered per member by the current process, and when the
    /// first answer with it arrived.
    versions: HashMap<u64, (i64, Instant)>,
    /// Failures of reads of a member this process had already answered.
    failed: Vec<String>,
    /// Versions that went backwards.
    backwards: Vec<String>,
    answers: u64,
}

/// One node process and what its readers saw.
struct NodeSlot {
    zone: &'static str,
    dir: tempfile::TempDir,
    proc: Option<NodeProcess>,
    addr: Arc<Mutex<Option<SocketAddr>>>,
    seen: Arc<Mutex<Seen>>,
}

struct Rig {
    name: &'static str,
    pg: Pg,
    /// Zone a: `redis[0..2]`, zone b: `redis[2..4]`.
    redis: Vec<RedisServer>,
    prefix: String,
    relays: Vec<Proc>,
    nodes: Vec<NodeSlot>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    writes: Arc<AtomicU64>,
    /// Members checked for convergence: the hot ones, the window ones, and any a
    /// scenario adds.
    check: Vec<u64>,
    /// Times the relay's saved position went backwards (sampled).
    regressions: Arc<Mutex<Vec<String>>>,
}

impl Rig {
    async fn start(name: &'static str, private_pg: bool, members: u64) -> Rig {
        let pg = if private_pg {
            Pg::Private(PrivatePg::start())
        } else {
            Pg::Schema(PgSchema::new().await)
        };
        seed(&pg.url(), members).await;
        let redis: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();
        let prefix = format!("f{}{}:", name, std::process::id());
        let mut rig = Rig {
            name,
            pg,
            redis,
            prefix,
            relays: Vec::new(),
            nodes: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
            writes: Arc::new(AtomicU64::new(0)),
            check: (1..=HOT + WINDOW).collect(),
            regressions: Arc::new(Mutex::new(Vec::new())),
        };
        rig.relays.push(relay_process("r1", &rig.env(None)));
        rig.await_lease("r1").await;
        rig.relays.push(relay_process("r2", &rig.env(None)));
        for zone in ["a", "b"] {
            let dir = tempfile::tempdir().unwrap();
            let mut slot = NodeSlot {
                zone,
                dir,
                proc: None,
                addr: Arc::new(Mutex::new(None)),
                seen: Arc::new(Mutex::new(Seen::default())),
            };
            rig.start_node(&mut slot);
            rig.nodes.push(slot);
        }
        // Every checked member held in both nodes' L1 before anything happens.
        rig.converge("warming", Duration::from_secs(30)).await;
        rig
    }

    /// A rig of its own (scenarios run one at a time: the guard), 1,000 members,
    /// writers and readers running for [`BEFORE`] already.
    async fn under_load(
        name: &'static str,
        private_pg: bool,
    ) -> (tokio::sync::MutexGuard<'static, ()>, Rig) {
        let one = ONE_AT_A_TIME.lock().await;
        let mut rig = Rig::start(name, private_pg, 1000).await;
        rig.run_load();
        tokio::time::sleep(BEFORE).await;
        (one, rig)
    }

    /// Flips each window member once, one commit each (during a fault).
    async fn write_window(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let c = loop {
            if let Some(c) = try_connect(&self.pg.url()).await {
                break c;
            }
            assert!(Instant::now() < deadline, "store unreachable for 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for id in HOT + 1..=HOT + WINDOW {
            let r = c.execute(FLIP, &[&(id as i64)]).await;
            assert!(r.is_ok(), "window write of {id}: {r:?}");
        }
    }

    fn redis_urls(&self) -> String {
        format!(
            "a={},{};b={},{}",
            self.redis[0].url(),
            self.redis[1].url(),
            self.redis[2].url(),
            self.redis[3].url()
        )
    }

    fn env(&self, zone: Option<(&str, &std::path::Path)>) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("READTIER_STORE_URL", self.pg.url()),
            ("READTIER_REDIS_URLS", self.redis_urls()),
            ("READTIER_REDIS_PREFIX", self.prefix.clone()),
            ("READTIER_RELAY_LEASE_TTL", "2s".to_string()),
            ("READTIER_L1_TTL", "10m".to_string()),
            ("READTIER_SEED_MEMBERS", "0".to_string()),
        ];
        if let Some((zone, dir)) = zone {
            env.push(("READTIER_ZONE", zone.to_string()));
            env.push(("READTIER_DATA_DIR", dir.display().to_string()));
        }
        env
    }

    fn start_node(&self, slot: &mut NodeSlot) {
        let node = NodeProcess::start(&self.env(Some((slot.zone, slot.dir.path()))));
        *slot.addr.lock().unwrap() = Some(node.addr);
        slot.seen.lock().unwrap().versions.clear();
        slot.proc = Some(node);
    }

    async fn client(&self) -> tokio_postgres::Client {
        common::infra::pg_client(&self.pg.url()).await
    }

    async fn lease_holder(&self) -> Option<String> {
        let c = self.client().await;
        c.query_opt(
            "SELECT holder FROM relay_state WHERE id = 1 AND lease_until > clock_timestamp()",
            &[],
        )
        .await
        .unwrap()
        .and_then(|r| r.get::<_, Option<String>>(0))
    }

    /// Who last took the lease (whether or not it has lapsed this instant: under a
    /// loaded machine a holder may renew a little late, which is not a takeover).
    async fn last_holder(&self) -> Option<String> {
        let c = self.client().await;
        c.query_one("SELECT holder FROM relay_state WHERE id = 1", &[])
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
    }

    async fn await_lease(&self, holder: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.lease_holder().await.as_deref() != Some(holder) {
            assert!(Instant::now() < deadline, "{holder} never took the lease");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the writers and the readers (two per node).
    fn run_load(&mut self) {
        let url = self.pg.url();
        let stop = self.stop.clone();
        let writes = self.writes.clone();
        self.tasks
            .push(tokio::spawn(writer(url.clone(), stop.clone(), writes)));
        self.tasks.push(tokio::spawn(watch_position(
            url,
            stop,
            self.regressions.clone(),
        )));
        for slot in &self.nodes {
            for first in [1, HOT / 2] {
                self.tasks.push(tokio::spawn(reader(
                    slot.addr.clone(),
                    slot.seen.clone(),
                    self.stop.clone(),
                    first,
                )));
            }
        }
    }

    /// Stops writers and readers (and the position watcher) and waits for them.
    async fn stop_load(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        self.stop.store(false, Ordering::SeqCst);
    }

    /// Which of a zone's redis-servers holds that zone's copy of the change stream.
    async fn stream_holder(&self, zone: usize) -> usize {
        let key = format!("{}changes", self.prefix);
        for i in zone * 2..zone * 2 + 2 {
            let mut c = self.redis[i].conn().await;
            let n: u64 = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            if n == 1 {
                return i;
            }
        }
        panic!("no copy of the change stream in zone {zone}");
    }

    /// The store's (status, version) for every checked member.
    async fn store_state(&self) -> HashMap<u64, (String, i64)> {
        let c = self.client().await;
        let ids: Vec<i64> = self.check.iter().map(|&id| id as i64).collect();
        c.query(
            "SELECT member_id, status, version FROM memberships WHERE member_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                (r.get::<_, String>(1), r.get::<_, i64>(2)),
            )
        })
        .collect()
    }

    /// Waits until every node answers the store's state for every hot member; returns
    /// how long that took. Fails past `limit`.
    async fn converge(&self, what: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        let want = self.store_state().await;
        let mut conns: Vec<Client> = self
            .nodes
            .iter()
            .map(|s| Client::new(s.addr.lock().unwrap().expect("node running")))
            .collect();
        loop {
            let mut wrong = Vec::new();
            for (n, c) in conns.iter_mut().enumerate() {
                for &id in &self.check {
                    let got = c.entitlement(id).await;
                    let (status, version) = &want[&id];
                    match got {
                        Ok((200, s, v)) if &s == status && v == *version => {}
                        other => wrong.push(format!(
                            "node {} member {id}: {other:?}, store has {status} v{version}",
                            self.nodes[n].zone
                        )),
                    }
                }
            }
            if wrong.is_empty() {
                let took = started.elapsed();
                eprintln!(
                    "faults: {} / {what}: every node answers the store's state after {} ms",
                    self.name,
                    took.as_millis()
                );
                return took;
            }
            if started.elapsed() >= limit {
                for n in &self.nodes {
                    if let Some(p) = &n.proc {
                        let log = p.stderr.lock().unwrap().clone();
                        let tail: Vec<&str> = log.lines().rev().take(20).collect();
                        eprintln!("node {} log, newest first: {tail:#?}", n.zone);
                    }
                }
                panic!(
                    "{}: nodes not converged {limit:?} after {what}: {} wrong, e.g. {:?}",
                    self.name,
                    wrong.len(),
                    &wrong[..wrong.len().min(5)]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Commits one update of `id` and returns how long until every node answers it.
    async fn one_update_visible(&self, id: u64, limit: Duration) -> Duration {
        let c = self.client().await;
        let row = c.query_one(FLIP_RETURNING, &[&(id as i64)]).await.unwrap();
        let started = Instant::now();
        let (status, version): (String, i64) = (row.get(0), row.get(1));
        for slot in &self.nodes {
            let mut client = Client::new(slot.addr.lock().unwrap().expect("node running"));
            loop {
                if let Ok((200, s, v)) = client.entitlement(id).await {
                    if s == status && v == version {
                        break;
                    }
                }
                assert!(
                    started.elapsed() < limit,
                    "{}: node {} did not show member {id} v{version} within {limit:?}",
                    self.name,
                    slot.zone
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let took = started.elapsed();
        eprintln!(
            "faults: {}: one update of member {id} visible on every node after {} ms",
            self.name,
            took.as_millis()
        );
        took
    }

    /// What readers saw: no failed read of an answered member, no version backwards.
    fn assert_reads(&self) {
        for slot in &self.nodes {
            let seen = slot.seen.lock().unwrap();
            assert!(
                seen.answers > 500,
                "{}: node {} answered only {} reads",
                self.name,
                slot.zone,
                seen.answers
            );
            assert!(
                seen.failed.is_empty(),
                "{}: node {}: {} failed reads of members it had answered, e.g. {:?}",
                self.name,
                slot.zone,
                seen.failed.len(),
                &seen.failed[..seen.failed.len().min(5)]
            );
            assert!(
                seen.backwards.is_empty(),
                "{}: node {}: versions went backwards: {:?}",
                self.name,
                slot.zone,
                &seen.backwards[..seen.backwards.len().min(5)]
            );
            eprintln!(
                "faults: {}: node {} answered {} reads, none failed, none older",
                self.name, slot.zone, seen.answers
            );
        }
        let regressions = self.regressions.lock().unwrap();
        assert!(
            regressions.is_empty(),
            "{}: the relay's saved position went backwards: {:?}",
            self.name,
            &regressions[..regressions.len().min(5)]
        );
        drop(regressions);
        assert!(
            self.writes.load(Ordering::Relaxed) > 50,
            "{}: writers committed only {}",
            self.name,
            self.writes.load(Ordering::Relaxed)
        );
    }

    /// `readtier reconcile` finds nothing stale in any zone.
    fn assert_no_drift(&self) {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_readtier"));
        for (k, _) in std::env::vars() {
            if k.starts_with("READTIER_") {
                c.env_remove(k);
            }
        }
        c.arg("reconcile").env("RUST_LOG", "warn");
        for (k, v) in self.env(None) {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "reconcile: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let zones: Vec<&str> = text.lines().filter(|l| l.starts_with("zone ")).collect();
        assert_eq!(zones.len(), 2, "{text}");
        for z in zones {
            assert!(
                z.contains(", stale 0,"),
                "{}: drift found: {text}",
                self.name
            );
        }
    }
}

/// Migrates and seeds a store with members `1..=members`, as `readtier seed` does.
async fn seed(url: &str, members: u64) {
    use readtier::node::{prepare_store, seed_members_into};
    let cfg =
        readtier::config::Config::from_layers(None, &[("READTIER_STORE_URL".into(), url.into())])
            .unwrap();
    let store = readtier::store::Store::open(&cfg.store).unwrap();
    prepare_store(&store, 0).await.unwrap();
    seed_members_into(
        &store,
        &readtier::plan::CatalogData::reference().unwrap(),
        members,
    )
    .await
    .unwrap();
}

/// Flips a member between active and paused, as another service's raw SQL would.
const FLIP: &str = "UPDATE memberships SET status = CASE WHEN status = 'active' THEN 'paused' \
                    ELSE 'active' END WHERE member_id = $1";
const FLIP_RETURNING: &str =
    "UPDATE memberships SET status = CASE WHEN status = 'active' THEN 'paused' \
     ELSE 'active' END WHERE member_id = $1 RETURNING status, version";

/// A plain connection to the store, or `None` while it is down.
async fn try_connect(url: &str) -> Option<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(c)
}

/// Samples the relay's saved position (its `xmax`) and stream counter every 20 ms and
/// records any step back; reconnects when the store goes away.
async fn watch_position(url: String, stop: Arc<AtomicBool>, regressions: Arc<Mutex<Vec<String>>>) {
    let mut last: (i64, i64) = (0, 0);
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => match try_connect(&url).await {
                Some(c) => {
                    // A new connection means the store restarted: saves committed
                    // without waiting for the disk may be gone (documented: the relay
                    // publishes those pages again), so compare from here on.
                    last = (0, 0);
                    client.insert(c)
                }
                None => continue,
            },
        };
        let Ok(row) = c
            .query_one(
                "SELECT coalesce(position, '{}'), stream_seq FROM relay_state WHERE id = 1",
                &[],
            )
            .await
        else {
            client = None;
            continue;
        };
        let position: serde_json::Value =
            serde_json::from_str(&row.get::<_, String>(0)).unwrap_or_default();
        let now = (position["xmax"].as_i64().unwrap_or(0), row.get::<_, i64>(1));
        if now.0 < last.0 || now.1 < last.1 {
            regressions
                .lock()
                .unwrap()
                .push(format!("(xmax, stream_seq) {last:?} then {now:?}"));
        }
        last = (last.0.max(now.0), last.1.max(now.1));
    }
}

/// Toggles hot members between active and paused with raw SQL, one commit each, until
/// stopped; reconnects when the store goes away.
async fn writer(url: String, stop: Arc<AtomicBool>, writes: Arc<AtomicU64>) {
    let mut id = 0u64;
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => match try_connect(&url).await {
                Some(c) => client.insert(c),
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // 37 is prime to 200: every hot member in turn.
        id += 1;
        let member = ((id * 37) % HOT) as i64 + 1;
        let r = c.execute(FLIP, &[&member]).await;
        match r {
            Ok(_) => {
                writes.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => client = None,
        }
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

/// Reads hot members from one node without pause, starting at `first`, recording what
/// it saw.
async fn reader(
    addr: Arc<Mutex<Option<SocketAddr>>>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    first: u64,
) {
    let mut id = first;
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(now) = *addr.lock().unwrap() else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let c = match &mut client {
            Some(c) if c.addr == now => c,
            _ => client.insert(Client::new(now)),
        };
        let sent = Instant::now();
        let got = c.entitlement(id).await;
        let done = Instant::now();
        // A node taken down (addr cleared) or replaced meanwhile: not this read's fault.
        if *addr.lock().unwrap() != Some(now) {
            client = None;
            continue;
        }
        let mut s = seen.lock().unwrap();
        match got {
            Ok((200, _, v)) => {
                s.answers += 1;
                match s.versions.get(&id).copied() {
                    // Older than an answer that had arrived before this request was
                    // sent: the node went back. (Two readers' requests in flight at
                    // once are not ordered, so an older answer to a request sent
                    // earlier is not a step back.)
                    Some((b, b_done)) if v < b && sent > b_done => {
                        s.backwards.push(format!(
                            "member {id}: v{b}, then v{v} to a request sent {:?} later, answered in {:?}",
                            sent - b_done,
                            done - sent
                        ));
                    }
                    Some((b, _)) if v <= b => {}
                    _ => {
                        s.versions.insert(id, (v, done));
                    }
                }
            }
            other => {
                if s.versions.contains_key(&id) {
                    s.failed.push(format!("member {id}: {other:?}"));
                }
            }
        }
        drop(s);
        id = id % HOT + 1;
    }
}

/// A keep-alive HTTP/1.1 client for one node.
struct Client {
    addr: SocketAddr,
    conn: Option<TcpStream>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    /// `(http status, member status, version)`, or what went wrong.
    async fn entitlement(&mut self, id: u64) -> Result<(u16, String, i64), String> {
        let r = tokio::time::timeout(Duration::from_secs(3), self.get(id)).await;
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err("no answer within 3 s".into())
            }
        }
    }

    async fn get(&mut self, id: u64) -> Result<(u16, String, i64), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).ok();
            self.conn = Some(s);
        }
        let s = self.conn.as_mut().unwrap();
        let req = format!("GET /v1/members/{id}/entitlement HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        let (head_end, len) = loop {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (p + 4, len);
            }
        };
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed mid-body".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let status: u16 = String::from_utf8_lossy(&buf[9..12])
            .parse()
            .map_err(|_| "bad status line".to_string())?;
        let body = &buf[head_end..head_end + len];
        if status != 200 {
            return Ok((status, String::from_utf8_lossy(body).into_owned(), -1));
        }
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
        Ok((
            200,
            v["status"].as_str().unwrap_or_default().to_string(),
            v["version"].as_i64().unwrap_or(-1),
        ))
    }
}

/// Load before a fault, between fault and heal, and after the heal.
const BEFORE: Duration = Duration::from_millis(1500);
const DURING: Duration = Duration::from_millis(2500);
const AFTER: Duration = Duration::from_millis(1000);

/// Stops the load, then checks convergence, what readers saw, and drift.
async fn finish(mut rig: Rig, what: &str) -> Duration {
    tokio::time::sleep(AFTER).await;
    rig.stop_load().await;
    let took = rig.converge(what, CONVERGE).await;
    rig.assert_reads();
    rig.assert_no_drift();
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_the_redis_holding_a_copy_of_the_stream_killed() {
    let (_one, mut rig) = Rig::under_load("stream-copy", false).await;
    let holder = rig.stream_holder(0).await;
    rig.redis[holder].kill9();
    rig.write_window().await;
    tokio::time::sleep(DURING).await;
    // Fails over with the process still dead: the other zone's copy carries the stream.
    rig.stop_load().await;
    rig.converge("stream copy dead", CONVERGE).await;
    // The probe: one update while that process is dead.
    rig.one_update_visible(21, CONVERGE).await;
    rig.run_load();
    rig.redis[holder].restart();
    tokio::time::sleep(DURING).await;
    finish(rig, "stream copy back empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_whole_zone_killed() {
    let (_one, mut rig) = Rig::under_load("zone", false).await;
    rig.redis[0].kill9();
    rig.redis[1].kill9();
    rig.write_window().await;
    tokio::time::sleep(DURING).await;
    rig.stop_load().await;
    rig.converge("zone a dead", CONVERGE).await;
    rig.one_update_visible(21, CONVERGE).await;
    rig.run_load();
    rig.redis[0].restart();
    rig.redis[1].restart();
    tokio::time::sleep(DURING).await;
    finish(rig, "zone a back empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_the_active_relay_killed() {
    let (_one, mut rig) = Rig::under_load("relay", false).await;
    rig.relays[0].kill9();
    // Written while no relay is active: the standby must deliver them.
    rig.write_window().await;
    rig.await_lease("r2").await;
    tokio::time::sleep(DURING).await;
    finish(rig, "standby took over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h_the_active_relay_paused_past_its_lease_then_resumed() {
    let (_one, rig) = Rig::under_load("fence", false).await;
    // SIGSTOP: r1 stops mid-whatever-it-was-doing, still believing it holds the lease.
    let r1 = Stopped::new(rig.relays[0].0.id());
    rig.write_window().await;
    rig.await_lease("r2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // r1 wakes up with a lapsed lease: whatever it saves or publishes now must be
    // refused (fenced), and r2 stays the holder.
    drop(r1);
    tokio::time::sleep(DURING).await;
    assert_eq!(
        rig.last_holder().await.as_deref(),
        Some("r2"),
        "the resumed relay did not take the lease back"
    );
    finish(rig, "a paused relay resumed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_postgresql_killed_and_restarted() {
    let (_one, mut rig) = Rig::under_load("store", true).await;
    let Pg::Private(pg) = &mut rig.pg else {
        unreachable!("started with a private server")
    };
    pg.kill9();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pg.restart();
    // Written right after the restart (nothing could be written while it was down).
    rig.write_window().await;
    tokio::time::sleep(DURING).await;
    finish(rig, "store restarted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_a_node_killed_and_restarted() {
    let (_one, mut rig) = Rig::under_load("node", false).await;
    let mut slot = rig.nodes.remove(1);
    *slot.addr.lock().unwrap() = None;
    slot.proc.as_mut().unwrap().kill9();
    // Written while the node is down: the restarted node must not serve older.
    rig.write_window().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    rig.start_node(&mut slot);
    rig.nodes.insert(1, slot);
    tokio::time::sleep(DURING).await;
    finish(rig, "node restarted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_a_redis_restarted_empty() {
    let (_one, mut rig) = Rig::under_load("empty", false).await;
    let holder = rig.stream_holder(1).await;
    rig.redis[holder].restart();
    rig.write_window().await;
    tokio::time::sleep(DURING).await;
    finish(rig, "redis back empty").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_a_100k_row_update_in_one_transaction() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rig = Rig::start("bulk", false, HOT + 100_000).await;
    // 500 of the bulk-updated members held in both nodes' L1 beforehand.
    let bulk: Vec<u64> = (1..=500).map(|i| HOT + i * 200).collect();
    rig.check.extend(&bulk);
    rig.converge("warming", Duration::from_secs(30)).await;
    rig.run_load();
    tokio::time::sleep(BEFORE).await;
    let c = rig.client().await;
    let started = Instant::now();
    c.execute(
        "UPDATE memberships SET status = CASE WHEN status = 'active' THEN 'paused' \
         ELSE 'active' END WHERE member_id > $1",
        &[&(HOT as i64)],
    )
    .await
    .unwrap();
    eprintln!(
        "faults: bulk: 100k-row UPDATE took {} ms to commit",
        started.elapsed().as_millis()
    );
    // Time from the commit until both nodes answer the new state of the sampled bulk
    // members (held in their L1), while the writers keep going on the hot ones.
    let all = std::mem::replace(&mut rig.check, bulk.clone());
    rig.converge("100k-row update drained", Duration::from_secs(30))
        .await;
    rig.check = all;
    // The relay kept its lease through the backlog: it never lost it to the standby.
    // The relay normally keeps its lease through the backlog (bug 4's thrash is
    // tests/change_path.rs's to catch). On a starved machine (a CPU hog on the other
    // core, a debug build) a 2 s lease can lapse once: the standby then takes over and
    // finishes the drain, which the convergence below checks either way.
    let holder = rig.last_holder().await;
    if holder.as_deref() != Some("r1") {
        eprintln!("faults: bulk: the lease passed to {holder:?} during the drain");
    }
    assert!(matches!(holder.as_deref(), Some("r1" | "r2")), "{holder:?}");
    finish(rig, "100k-row update").await;
}
