//! What only the relay needs from PostgreSQL: its lease (one active relay, fenced), its
//! durable position, and wake-ups on commit (LISTEN/NOTIFY). The relay holds a
//! [`RelayStore`]; nothing else touches these.

use std::sync::Arc;
use std::time::Duration;

use super::PgStore;
use crate::store::{PgPosition, StoreError};

/// Wake-ups for each commit that wrote the change log (see [`RelayStore::listen`]).
pub struct ChangeListener {
    pub notify: Arc<tokio::sync::Notify>,
    /// False once the listening connection is gone (poll, and listen again).
    pub alive: Arc<std::sync::atomic::AtomicBool>,
    _client: tokio_postgres::Client,
}

/// The relay's handle on the store.
#[derive(Clone)]
pub struct RelayStore {
    pub(crate) pg: Arc<PgStore>,
}

impl RelayStore {
    /// Listens for the change triggers' `pg_notify` on a connection of its own, so
    /// the relay reads as soon as a change commits instead of at its next poll.
    pub async fn listen(&self) -> Result<ChangeListener, StoreError> {
        let (client, mut conn) = self
            .pg
            .config
            .connect(self.pg.tls.clone())
            .await
            .map_err(self.pg.err("connect for LISTEN"))?;
        let notify = Arc::new(tokio::sync::Notify::new());
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (n, a) = (notify.clone(), alive.clone());
        // This task drives the connection (so the LISTEN below completes) and turns
        // notifications into wake-ups.
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = futures_util::StreamExt::next(&mut messages).await {
                if let tokio_postgres::AsyncMessage::Notification(_) = m {
                    n.notify_one();
                }
            }
            a.store(false, std::sync::atomic::Ordering::Relaxed);
            n.notify_one();
        });
        client
            .batch_execute("LISTEN readtier_changes")
            .await
            .map_err(self.pg.err("LISTEN"))?;
        Ok(ChangeListener {
            notify,
            alive,
            _client: client,
        })
    }

    /// Takes or renews the relay lease for `holder`; returns whether `holder` holds it.
    pub async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let c = self.pg.client().await?;
        let ms = ttl.as_millis() as f64;
        let n = c
            .execute(
                "UPDATE relay_state SET holder = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
                  WHERE id = 1 AND (holder = $1 OR holder IS NULL OR lease_until < clock_timestamp())",
                &[&holder, &ms],
            )
            .await
            .map_err(self.pg.err("acquire relay lease"))?;
        Ok(n == 1)
    }

    /// Gives the lease up at once (clean shutdown), so a standby need not wait it out.
    pub async fn release_lease(&self, holder: &str) -> Result<(), StoreError> {
        let c = self.pg.client().await?;
        c.execute(
            "UPDATE relay_state SET holder = NULL, lease_until = NULL WHERE id = 1 AND holder = $1",
            &[&holder],
        )
        .await
        .map_err(self.pg.err("release relay lease"))?;
        Ok(())
    }

    /// The relay's durable state. A store last written by an older build (a bare
    /// cursor) resumes from that cursor, which re-delivers at most what it covered.
    pub async fn saved_state(&self) -> Result<RelayState, StoreError> {
        let c = self.pg.client().await?;
        let row = c
            .query_one(
                "SELECT position, cursor_txid, stream_seq, stream_reserved FROM relay_state WHERE id = 1",
                &[],
            )
            .await
            .map_err(self.pg.err("read relay state"))?;
        let text: Option<String> = row.get(0);
        let cursor: i64 = row.get(1);
        let position = text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(PgPosition {
                xmax: cursor,
                pending: Vec::new(),
                scan: None,
            });
        Ok(RelayState {
            position,
            stream_seq: row.get::<_, i64>(2).max(0) as u64,
            stream_reserved: row.get::<_, i64>(3).max(0) as u64,
        })
    }

    /// Saves the relay's progress in one transaction, only while `holder` holds a live
    /// lease (a fenced write), so a relay that lost its lease cannot move anything
    /// under the new holder. Returns whether it held the lease.
    ///
    /// A save that records new repairs waits for the disk: the zone writes they stand
    /// for are announced right after, and must not be forgotten if PostgreSQL itself
    /// crashes. Any other save commits without waiting (`synchronous_commit = off`):
    /// a crash of PostgreSQL may then roll the saved position back by its last
    /// unflushed saves, so the relay publishes those pages again (at least once; nodes
    /// apply events idempotently), and repairs it already made are simply made again.
    ///
    /// The transaction holds `relay_state`'s row lock from its fenced update to its
    /// commit. A relay paused in between (SIGSTOP, a stalled VM) would hold it for as
    /// long as it is paused, and the standby's lease takeover, an update of the same
    /// row, would wait behind it however long ago the lease lapsed (the fault suite's
    /// paused-relay scenario once saw "r2 never took the lease" in 15 s). So the
    /// server ends the transaction once it has sat idle for `lease_ttl`: a relay idle
    /// that long inside its own save has lost its lease anyway, and its save fails and
    /// is made again (measured with psql: a takeover behind a holder idle in its
    /// transaction waited out the holder's whole 4 s pause; with the timeout at 500 ms
    /// it went through in 0.11 s).
    pub async fn save(
        &self,
        holder: &str,
        lease_ttl: Duration,
        p: &Progress<'_>,
    ) -> Result<bool, StoreError> {
        let mut c = self.pg.client().await?;
        let tx = c
            .transaction()
            .await
            .map_err(self.pg.err("save relay state"))?;
        // One round trip for both settings.
        let mut settings = format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            lease_ttl.as_millis().max(1)
        );
        if p.failed.is_empty() {
            settings.push_str("; SET LOCAL synchronous_commit = off");
        }
        tx.batch_execute(&settings)
            .await
            .map_err(self.pg.err("save relay state"))?;
        let position = serde_json::to_string(p.position).expect("a position serializes");
        let n = tx
            .execute(
                "UPDATE relay_state SET position = $2, cursor_txid = $3,
                        stream_seq = GREATEST(stream_seq, $4),
                        stream_reserved = GREATEST(stream_reserved, $5)
                  WHERE id = 1 AND holder = $1 AND lease_until > clock_timestamp()",
                &[
                    &holder,
                    &position,
                    &p.position.low_water(),
                    &(p.stream_seq as i64),
                    &(p.stream_reserved as i64),
                ],
            )
            .await
            .map_err(self.pg.err("save relay position"))?;
        if n != 1 {
            return Ok(false);
        }
        if !p.failed.is_empty() {
            let (zones, ids, versions) = columns(p.failed);
            tx.execute(
                "INSERT INTO relay_repairs (zone, member_id, version)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                 ON CONFLICT (zone, member_id)
                 DO UPDATE SET version = GREATEST(relay_repairs.version, excluded.version)",
                &[&zones, &ids, &versions],
            )
            .await
            .map_err(self.pg.err("record tier repairs"))?;
        }
        if !p.repaired.is_empty() {
            let (zones, ids, versions) = columns(p.repaired);
            // Only as far as repaired: a newer failure for the member stays.
            tx.execute(
                "DELETE FROM relay_repairs r USING unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(zone, member_id, version)
                  WHERE r.zone = d.zone AND r.member_id = d.member_id AND r.version <= d.version",
                &[&zones, &ids, &versions],
            )
            .await
            .map_err(self.pg.err("clear tier repairs"))?;
        }
        tx.commit().await.map_err(self.pg.err("save relay state"))?;
        Ok(true)
    }

    /// Up to `limit` pending tier repairs, oldest first, and how many are pending.
    pub async fn repairs(&self, limit: i64) -> Result<(Vec<Repair>, u64), StoreError> {
        let c = self.pg.client().await?;
        let total: i64 = c
            .query_one("SELECT count(*) FROM relay_repairs", &[])
            .await
            .map_err(self.pg.err("count tier repairs"))?
            .get(0);
        let rows = c
            .query(
                "SELECT zone, member_id, version FROM relay_repairs
                  ORDER BY since, zone, member_id LIMIT $1",
                &[&limit],
            )
            .await
            .map_err(self.pg.err("read tier repairs"))?;
        let total = total as u64;
        Ok((
            rows.iter()
                .map(|r| Repair {
                    zone: r.get(0),
                    member: r.get::<_, i64>(1) as u64,
                    version: r.get(2),
                })
                .collect(),
            total,
        ))
    }
}

fn columns(repairs: &[Repair]) -> (Vec<&str>, Vec<i64>, Vec<i64>) {
    (
        repairs.iter().map(|r| r.zone.as_str()).collect(),
        repairs.iter().map(|r| r.member as i64).collect(),
        repairs.iter().map(|r| r.version).collect(),
    )
}

/// What the relay keeps in the store besides its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayState {
    /// Where in the change log everything before has been published.
    pub position: PgPosition,
    /// The last change-stream entry whose changes `position` covers.
    pub stream_seq: u64,
    /// The highest change-stream entry id ever reserved (maybe never published).
    pub stream_reserved: u64,
}

/// A tier write that failed in a zone, kept until a later pass makes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repair {
    pub zone: String,
    /// The member; 0: the zone's member buckets must be flushed (a reseed).
    pub member: u64,
    /// The version the zone must hold at least (a deletion's tombstone version).
    pub version: i64,
}

/// One save of the relay's progress.
pub struct Progress<'a> {
    pub position: &'a PgPosition,
    pub stream_seq: u64,
    pub stream_reserved: u64,
    /// Tier writes that failed: to be repaired.
    pub failed: &'a [Repair],
    /// Repairs made.
    pub repaired: &'a [Repair],
}
