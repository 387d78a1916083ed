//! One serving node, assembled: store, catalog snapshot, L1, change follower, and the
//! public and admin listeners, all stopped through one shutdown handle.
//!
//! Start order matters for "nothing is lost": the change position (stream end or
//! change-log head) is taken *before* the catalog is loaded, so any change committed
//! after the load is at a position the follower has not passed yet. If the position
//! cannot be taken (Redis or the store is down), the node starts anyway and its first
//! successful read of changes counts as a gap: it drops L1 and reloads the catalog.
//! If the store is down too, the node serves the last good catalog snapshot from disk.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{disk, CatalogHandle, Snapshot};
use crate::config::{Config, HttpRuntime};
use crate::follower::{Follower, Source};
use crate::grpc;
use crate::http::{self, App, Listener};
use crate::lookup::inspector::Inspector;
use crate::lookup::{FillLimits, Members};
use crate::plan::{CatalogData, PlanError};
use crate::store::seed::MemberGenerator;
use crate::store::{Store, StoreError};
use crate::stream::{StreamError, StreamReader};
use crate::telemetry;
use crate::tier::{Tier, TierError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] PlanError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error("no catalog: the store failed ({store}) and there is no snapshot on disk ({disk})")]
    NoCatalog {
        store: Box<StoreError>,
        disk: Box<disk::DiskError>,
    },
    #[error("{0}")]
    Bind(std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// A started node.
pub struct Running {
    /// The public listener's bound address (useful when configured with port 0).
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The gRPC listener's bound address, if `grpc_listen` is set.
    pub grpc_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    /// The change position applied so far, as one rising number
    /// ([`crate::follower::Source::progress`]).
    pub change_position: Arc<AtomicU64>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the node has shut down and drained (after its shutdown handle fired).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Migrates the store, and on a fresh store (no plans at all) seeds the reference
/// catalog; on the embedded store also `seed_members` synthetic members (a production
/// store's members come from the service that owns them).
pub async fn prepare_store(store: &Store, seed_members: u64) -> Result<(), NodeError> {
    store.migrate().await?;
    if store.catalog_is_empty().await? {
        let catalog = CatalogData::reference_with_examples()?;
        store.write_catalog(catalog.clone()).await?;
        tracing::info!(
            plans = catalog.plans.len(),
            prices = catalog.prices.len(),
            "seeded the reference catalog"
        );
        if seed_members > 0 && store.is_embedded() {
            seed_members_into(store, &catalog, seed_members).await?;
        }
    }
    Ok(())
}

/// Seeds members `1..=n`; returns how long it took.
pub async fn seed_members_into(
    store: &Store,
    catalog: &CatalogData,
    n: u64,
) -> Result<std::time::Duration, NodeError> {
    let Some(gen) = MemberGenerator::new(catalog) else {
        return Err(NodeError::Other(
            "the catalog offers no plan to seed members with".into(),
        ));
    };
    let started = Instant::now();
    let written = store
        .write_members((1..=n).map(move |id| gen.member(id)))
        .await?;
    let took = started.elapsed();
    tracing::info!(
        members = written,
        seconds = took.as_secs_f64(),
        "seeded members"
    );
    Ok(took)
}

/// Where this node's changes come from, positioned at the current end.
async fn change_source(cfg: &Config, store: &Store) -> Result<Source, NodeError> {
    match cfg.has_stream() {
        true => {
            let mut reader = StreamReader::from_config(cfg, cfg.l1.ttl)?;
            if let Err(e) = reader.start_at_head().await {
                tracing::warn!(error = %e, "change stream unreachable at start; L1 is dropped once it is reached");
            }
            Ok(Source::Stream(Box::new(reader)))
        }
        false => match store.change_reader_at_head().await {
            Ok(r) => Ok(Source::Log(r)),
            Err(e) => {
                tracing::warn!(error = %e, "change log unreachable at start; L1 is dropped once it is reached");
                Ok(Source::Log(store.change_reader(None)))
            }
        },
    }
}

/// The catalog from the store (saved to disk as the last good one), or from disk; and
/// whether it came from disk (to be read from the store once it answers).
async fn first_catalog(
    store: &Store,
    snapshot_path: &std::path::Path,
) -> Result<(CatalogData, bool), NodeError> {
    match store.load_catalog().await {
        Ok(data) => {
            disk::save_in_background(data.clone(), snapshot_path.to_path_buf()).await;
            Ok((data, false))
        }
        Err(store_err) => match disk::load(snapshot_path) {
            Ok(data) => {
                tracing::warn!(error = %store_err, version = data.version, "store unavailable: serving the last good catalog snapshot from disk");
                Ok((data, true))
            }
            Err(disk) => Err(NodeError::NoCatalog {
                store: Box::new(store_err),
                disk: Box::new(disk),
            }),
        },
    }
}

/// The public listener: one socket for the shared runtime, or one per core.
enum Public {
    Shared(tokio::net::TcpListener),
    PerCore(Vec<std::net::TcpListener>),
}

/// Starts a node; it runs until `shutdown` is cancelled, then drains and stops.
pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Running, NodeError> {
    let prometheus = telemetry::install();
    let store = {
        let url = cfg.store.clone();
        tokio::task::spawn_blocking(move || Store::open(&url))
            .await
            .map_err(|e| NodeError::Other(e.to_string()))??
    };
    if let Err(e) = prepare_store(&store, cfg.seed_members).await {
        // The embedded store is a local file: failing to prepare it is fatal.
        if store.is_embedded() {
            return Err(e);
        }
        tracing::warn!(error = %e, "store not ready at start; serving what can be served");
    }

    let source = change_source(&cfg, &store).await?;
    let snapshot_path = disk::snapshot_path(&cfg.data_dir);
    let (data, from_disk) = first_catalog(&store, &snapshot_path).await?;
    let catalog = Arc::new(CatalogHandle::new(Snapshot::build(&data)));
    let tier = Tier::from_config(&cfg)?.map(Arc::new);
    let members = Arc::new(Members::new(
        store.clone(),
        tier,
        &cfg.l1,
        FillLimits::of(&cfg),
    ));
    let (inspector, samples) = Inspector::new(&cfg.inspector);
    let app = Arc::new(
        App::new(
            catalog.clone(),
            members.clone(),
            inspector.clone(),
            cfg.http.clone(),
            prometheus.clone(),
        )
        .with_config(&cfg),
    );

    let public = match cfg.http.runtime {
        HttpRuntime::MultiThread => {
            Public::Shared(http::bind(cfg.listen).await.map_err(NodeError::Bind)?)
        }
        HttpRuntime::PerCore => {
            // One per core this process may run on (the affinity mask, as tokio sizes
            // its multi-thread runtime).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Public::PerCore(
                http::bind_shared(cfg.listen, cores)
                    .await
                    .map_err(NodeError::Bind)?,
            )
        }
    };
    let admin = http::bind(cfg.admin_listen)
        .await
        .map_err(NodeError::Bind)?;
    let grpc_listener = match cfg.grpc_listen {
        Some(a) => Some(http::bind(a).await.map_err(NodeError::Bind)?),
        None => None,
    };
    let addr = match &public {
        Public::Shared(l) => l.local_addr(),
        Public::PerCore(ls) => ls[0].local_addr(),
    }
    .map_err(NodeError::Bind)?;
    let admin_addr = admin.local_addr().map_err(NodeError::Bind)?;
    let grpc_addr = match &grpc_listener {
        Some(l) => Some(l.local_addr().map_err(NodeError::Bind)?),
        None => None,
    };

    // `background` stops the follower and upkeep; `stop_accepting` closes listeners and
    // asks open connections to finish; `connections` tracks them until they have.
    let background = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let connections = TaskTracker::new();
    // Cancelled when the shutdown timeout runs out: connections still open are cut.
    let cut = CancellationToken::new();
    telemetry::spawn_upkeep(prometheus, background.clone());
    // The probe that measures the serving runtimes' queue (`admission`): this runtime
    // now, each per-core runtime as it starts.
    let probe = |e: std::io::Error| NodeError::Other(format!("cannot start the queue probe: {e}"));
    app.admission.start(background.clone()).map_err(probe)?;
    if cfg.http.runtime == HttpRuntime::MultiThread || cfg.grpc_listen.is_some() {
        app.admission.attach().map_err(probe)?;
    }
    tokio::spawn(inspector.run(samples, store.clone(), background.clone()));
    // Warm restarts: the last run's L1 members loaded back, and this run's kept.
    let warm = cfg.l1.warm_start.then(|| {
        let admission = app.admission.clone();
        tokio::spawn(crate::lookup::warm::run(
            members.clone(),
            crate::lookup::warm::path(&cfg.data_dir),
            // Every TTL (what L1 can hold turns over in one), at most every 10 s.
            cfg.l1.ttl.max(Duration::from_secs(10)),
            move || admission.shedding(),
            background.clone(),
        ))
    });
    let lag_store = store.clone();
    let mut follower = Follower::new(source, store, members, catalog, snapshot_path, &cfg.changes);
    if from_disk {
        follower = follower.reload_catalog_soon();
    }
    let change_position = follower.position();
    tokio::spawn(crate::follower::watch_lag(
        follower.applied(),
        lag_store,
        background.clone(),
    ));
    let follower = tokio::spawn(follower.run(background.clone()));
    // Cancelled last: the per-core runtimes stay until the node has stopped.
    let finished = CancellationToken::new();
    let mut listeners = match public {
        Public::Shared(public) => vec![tokio::spawn(http::serve(
            public,
            app.clone(),
            Listener::Public,
            stop_accepting.clone(),
            connections.clone(),
            cut.clone(),
        ))],
        Public::PerCore(publics) => http::serve_per_core(
            publics,
            app.clone(),
            stop_accepting.clone(),
            connections.clone(),
            cut.clone(),
            finished.clone(),
        )
        .map_err(NodeError::Bind)?
        .into_iter()
        .map(|stopped| {
            tokio::spawn(async move {
                let _ = stopped.await;
            })
        })
        .collect(),
    };
    listeners.push(tokio::spawn(http::serve(
        admin,
        app.clone(),
        Listener::Admin,
        stop_accepting.clone(),
        connections.clone(),
        cut.clone(),
    )));
    // The gRPC listener drains with the others: same tokens, same tracker.
    let mut grpc_health = None;
    if let Some(listener) = grpc_listener {
        let face = grpc::face(app.clone(), stop_accepting.clone()).await;
        tokio::spawn(face.feed.clone().run(background.clone()));
        grpc_health = Some(face.health);
        listeners.push(tokio::spawn(grpc::serve(
            listener,
            face.routes,
            cfg.grpc_max_connections,
            stop_accepting.clone(),
            connections.clone(),
            cut.clone(),
        )));
    }

    let drain_app = app.clone();
    let http_cfg = cfg.http.clone();
    let done = tokio::spawn(async move {
        shutdown.cancelled().await;
        drain_app.draining.store(true, Ordering::Release);
        if let Some(health) = &grpc_health {
            health.draining().await;
        }
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
            tracing::warn!(
                "in-flight requests did not finish within the shutdown timeout; cutting them"
            );
            cut.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
        }
        background.cancel();
        let _ = follower.await;
        if let Some(warm) = warm {
            let _ = warm.await;
        }
        finished.cancel();
        tracing::info!("stopped");
    });

    Ok(Running {
        addr,
        admin_addr,
        grpc_addr,
        app,
        change_position,
        done,
    })
}
