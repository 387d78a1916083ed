//! What only the relay needs from PostgreSQL: its lease (one active relay, fenced), its
//! durable position, and wake-ups on commit (LISTEN/NOTIFY). The relay holds a
//! [`RelayStore`]; nothing else touches these.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::NoTls;

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
            .connect(NoTls)
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

    /// The relay's durable position: every change of a transaction below it has been
    /// delivered.
    pub async fn saved_position(&self) -> Result<PgPosition, StoreError> {
        let c = self.pg.client().await?;
        let horizon: i64 = c
            .query_one("SELECT cursor_txid FROM relay_state WHERE id = 1", &[])
            .await
            .map_err(self.pg.err("read relay position"))?
            .get(0);
        Ok(PgPosition { horizon })
    }

    /// Saves the position only while `holder` holds a live lease (a fenced write), so a
    /// relay that lost its lease cannot move the position under the new holder.
    pub async fn save_position(&self, holder: &str, at: PgPosition) -> Result<bool, StoreError> {
        let c = self.pg.client().await?;
        let n = c
            .execute(
                "UPDATE relay_state SET cursor_txid = GREATEST(cursor_txid, $2)
                  WHERE id = 1 AND holder = $1 AND lease_until > clock_timestamp()",
                &[&holder, &at.horizon],
            )
            .await
            .map_err(self.pg.err("save relay position"))?;
        Ok(n == 1)
    }
}
