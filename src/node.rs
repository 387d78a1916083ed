//! One serving node, assembled: store, catalog snapshot, L1, change follower, and the
//! public and admin listeners, all stopped through one shutdown handle.
//!
//! Start order matters for "nothing is lost": the change-log position is read
//! *before* the catalog is loaded, so any change committed after the load is at a
//! position the follower has not passed yet.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{CatalogData, CatalogError, CatalogHandle, Snapshot};
use crate::changes::Follower;
use crate::config::Config;
use crate::http::{self, App, Listener};
use crate::members::Members;
use crate::store::seed::MemberGenerator;
use crate::store::{Store, StoreError};
use crate::telemetry;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("no catalog: the store failed ({store}) and there is no snapshot on disk ({disk})")]
    NoCatalog {
        store: Box<StoreError>,
        disk: Box<CatalogError>,
    },
    #[error("{0}")]
    Bind(std::io::Error),
    #[error("startup task failed: {0}")]
    Task(String),
}

/// A started node.
pub struct Running {
    /// The public listener's bound address (useful when configured with port 0).
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub app: Arc<App>,
    /// The change-log position applied so far.
    pub change_position: Arc<std::sync::atomic::AtomicU64>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the node has shut down and drained (after its shutdown handle fired).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Migrates the store, and on a fresh store (no plans at all) seeds the reference
/// catalog and `seed_members` synthetic members.
pub fn prepare_store(store: &Store, seed_members: u64) -> Result<(), NodeError> {
    let Store::Sqlite(s) = store;
    s.migrate()?;
    if s.catalog_is_empty()? {
        let catalog = CatalogData::reference()?;
        s.write_catalog(&catalog)?;
        tracing::info!(
            plans = catalog.plans.len(),
            prices = catalog.prices.len(),
            "seeded the reference catalog"
        );
        if seed_members > 0 {
            seed_members_into(store, &catalog, seed_members)?;
        }
    }
    Ok(())
}

/// Seeds members `1..=n`; returns how long it took.
pub fn seed_members_into(
    store: &Store,
    catalog: &CatalogData,
    n: u64,
) -> Result<std::time::Duration, NodeError> {
    let Store::Sqlite(s) = store;
    let Some(gen) = MemberGenerator::new(catalog) else {
        return Err(NodeError::Task(
            "the catalog offers no plan to seed members with".into(),
        ));
    };
    let started = Instant::now();
    let written = s.write_members((1..=n).map(|id| gen.member(id)))?;
    let took = started.elapsed();
    tracing::info!(
        members = written,
        seconds = took.as_secs_f64(),
        "seeded members"
    );
    Ok(took)
}

/// Starts a node; it runs until `shutdown` is cancelled, then drains and stops.
pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Running, NodeError> {
    let prometheus = telemetry::install();
    let store = {
        let url = cfg.store.clone();
        let seed = cfg.seed_members;
        tokio::task::spawn_blocking(move || -> Result<Store, NodeError> {
            let store = Store::open(&url)?;
            prepare_store(&store, seed)?;
            Ok(store)
        })
        .await
        .map_err(|e| NodeError::Task(e.to_string()))??
    };

    let position = store.log_state().await?.head;
    let snapshot_path = cfg.data_dir.join("catalog-snapshot.json");
    let data = match store.load_catalog().await {
        Ok(data) => {
            let (d, p) = (data.clone(), snapshot_path.clone());
            if let Err(e) = tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(p.parent().unwrap_or(std::path::Path::new("."))).map_err(
                    |e| CatalogError::File {
                        path: p.display().to_string(),
                        reason: e.to_string(),
                    },
                )?;
                d.save(&p)
            })
            .await
            .map_err(|e| NodeError::Task(e.to_string()))?
            {
                tracing::warn!(error = %e, "could not save the catalog snapshot to disk");
            }
            data
        }
        Err(store_err) => match CatalogData::load(&snapshot_path) {
            Ok(data) => {
                tracing::warn!(error = %store_err, version = data.version, "store unavailable: serving the last good catalog snapshot from disk");
                data
            }
            Err(disk) => {
                return Err(NodeError::NoCatalog {
                    store: Box::new(store_err),
                    disk: Box::new(disk),
                })
            }
        },
    };
    let catalog = Arc::new(CatalogHandle::new(Snapshot::build(&data)));
    let members = Arc::new(Members::new(store.clone(), &cfg.l1));
    let app = Arc::new(App::new(
        catalog.clone(),
        members.clone(),
        cfg.http.clone(),
        prometheus.clone(),
    ));

    let public = http::bind(cfg.listen).await.map_err(NodeError::Bind)?;
    let admin = http::bind(cfg.admin_listen)
        .await
        .map_err(NodeError::Bind)?;
    let addr = public.local_addr().map_err(NodeError::Bind)?;
    let admin_addr = admin.local_addr().map_err(NodeError::Bind)?;

    // `background` stops the follower and upkeep; `stop_accepting` closes listeners and
    // asks open connections to finish; `connections` tracks them until they have.
    let background = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let connections = TaskTracker::new();
    telemetry::spawn_upkeep(prometheus, background.clone());
    let follower = Follower::new(
        store,
        members,
        catalog,
        snapshot_path,
        &cfg.changes,
        position,
    );
    let change_position = follower.published_position();
    let follower = tokio::spawn(follower.run(background.clone()));
    let listeners = [
        tokio::spawn(http::serve(
            public,
            app.clone(),
            Listener::Public,
            stop_accepting.clone(),
            connections.clone(),
        )),
        tokio::spawn(http::serve(
            admin,
            app.clone(),
            Listener::Admin,
            stop_accepting.clone(),
            connections.clone(),
        )),
    ];

    let drain_app = app.clone();
    let http_cfg = cfg.http.clone();
    let done = tokio::spawn(async move {
        shutdown.cancelled().await;
        drain_app.draining.store(true, Ordering::Release);
        tracing::info!(drain_delay = ?http_cfg.drain_delay, "draining: /readyz now answers 503");
        tokio::time::sleep(http_cfg.drain_delay).await;
        stop_accepting.cancel();
        for l in listeners {
            let _ = l.await;
        }
        connections.close();
        if tokio::time::timeout(http_cfg.shutdown_timeout, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout");
        }
        background.cancel();
        let _ = follower.await;
        tracing::info!("stopped");
    });

    Ok(Running {
        addr,
        admin_addr,
        app,
        change_position,
        done,
    })
}
