//! The freshness probe: while the load runs, write to the store at a fixed rate and
//! measure, for every target node, the time from the write's commit to the node
//! answering the new version.
//!
//! Each write first reads the member on every node (so it is held in their L1 and only
//! a change event can make them answer differently), then flips its status between
//! `active` and `grace` (both may stream: no effect on the load's answers), commits, and
//! polls every node's entitlement answer until its `version` reaches the committed one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::report::{histogram, Freshness, Percentiles};
use crate::workload::Rng;

/// Gives up on a write not seen within this long (counted as `unseen`).
const GIVE_UP: Duration = Duration::from_secs(10);

enum Writer {
    Postgres(tokio_postgres::Client),
    Sqlite(std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>),
}

impl Writer {
    async fn open(url: &str) -> anyhow::Result<Writer> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Writer::Postgres(c))
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            let c = rusqlite::Connection::open(path)?;
            c.busy_timeout(Duration::from_secs(5))?;
            Ok(Writer::Sqlite(std::sync::Arc::new(std::sync::Mutex::new(
                c,
            ))))
        }
    }

    /// Flips the member's status; returns the committed version.
    async fn flip(&self, id: i64) -> anyhow::Result<Option<i64>> {
        const SQL: &str = "UPDATE memberships SET status = CASE status WHEN 'active' THEN 'grace' ELSE 'active' END
                            WHERE member_id = $1 AND status IN ('active', 'grace') RETURNING version";
        match self {
            Writer::Postgres(c) => Ok(c.query_opt(SQL, &[&id]).await?.map(|r| r.get(0))),
            Writer::Sqlite(c) => {
                let c = c.clone();
                let sql = SQL.replace("$1", "?1");
                tokio::task::spawn_blocking(move || -> anyhow::Result<Option<i64>> {
                    let c = c.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    // The version is raised by an AFTER trigger in SQLite: read it back.
                    let n = c.execute(&sql.replace(" RETURNING version", ""), [id])?;
                    if n == 0 {
                        return Ok(None);
                    }
                    Ok(Some(c.query_row(
                        "SELECT version FROM memberships WHERE member_id = ?1",
                        [id],
                        |r| r.get(0),
                    )?))
                })
                .await?
            }
        }
    }
}

/// The version a node answers for a member (None on any error).
async fn version_on(base: &str, id: i64) -> Option<i64> {
    let host = base.strip_prefix("http://")?.split('/').next()?.to_string();
    let stream = tokio::net::TcpStream::connect(&host).await.ok()?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .uri(format!("/v1/members/{id}/entitlement"))
        .header("host", &host)
        .body(Empty::<bytes::Bytes>::new())
        .ok()?;
    let resp = s.send_request(req).await.ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["version"].as_i64()
}

pub async fn probe(
    url: String,
    targets: Vec<String>,
    rate: f64,
    members: u64,
    from: Instant,
    end: Instant,
) -> anyhow::Result<Freshness> {
    let writer = std::sync::Arc::new(Writer::open(&url).await?);
    let mut all = histogram();
    let mut per_node: BTreeMap<String, hdrhistogram::Histogram<u64>> =
        targets.iter().map(|t| (t.clone(), histogram())).collect();
    let mut rng = Rng::new(0xf7e5);
    let mut writes = 0;
    let mut unseen = 0;
    let mut samples_ms = Vec::new();
    tokio::time::sleep_until(from.into()).await;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    let mut next = Instant::now();
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let id = (rng.next_u64() % members.max(1)) as i64 + 1;
        let writer = writer.clone();
        let targets = targets.clone();
        tasks.push(tokio::spawn(async move {
            for t in &targets {
                version_on(t, id).await;
                version_on(t, id).await;
            }
            let version = writer.flip(id).await.ok().flatten()?;
            let committed = Instant::now();
            let mut seen = Vec::new();
            for t in &targets {
                loop {
                    if version_on(t, id).await.is_some_and(|v| v >= version) {
                        seen.push((t.clone(), Some(committed.elapsed())));
                        break;
                    }
                    if committed.elapsed() > GIVE_UP {
                        seen.push((t.clone(), None));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Some(seen)
        }));
    }
    for t in tasks {
        let Some(seen) = t.await? else { continue };
        writes += 1;
        let mut worst = Duration::ZERO;
        let mut missed = false;
        for (node, d) in seen {
            match d {
                Some(d) => {
                    let _ = per_node
                        .get_mut(&node)
                        .expect("known node")
                        .record((d.as_micros() as u64).max(1));
                    worst = worst.max(d);
                }
                None => missed = true,
            }
        }
        if missed {
            unseen += 1;
        } else {
            let _ = all.record((worst.as_micros() as u64).max(1));
            samples_ms.push(worst.as_secs_f64() * 1000.0);
        }
    }
    Ok(Freshness {
        writes,
        unseen,
        commit_to_visible_ms: Percentiles::of(&all),
        per_node: per_node
            .iter()
            .map(|(k, h)| (k.clone(), Percentiles::of(h)))
            .collect(),
        samples_ms,
    })
}
