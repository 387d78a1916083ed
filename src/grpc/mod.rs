//! The gRPC face: service `readtier.v1.ReadTier` (`proto/readtier/v1/readtier.proto`)
//! on a listener of its own (`grpc_listen`, HTTP/2 without TLS), beside the standard
//! health service (`grpc.health.v1`, following readiness) and server reflection.
//!
//! The same answers as the HTTP API from the same lookups: the catalog snapshot for
//! plans, [`crate::lookup::Members`] for members (`get_l1`, then `get` or `get_many`
//! under the node's one waiting limit, shared with HTTP through [`App`]), and
//! [`crate::member`]'s decisions. Only the rendering differs (protobuf messages, not
//! JSON). Facts the HTTP API gives as headers (`x-served-from`, `x-catalog-version`)
//! are fields of the answers. Errors map to status codes in one place
//! ([`error::GrpcError`]).
//!
//! `WatchCatalog` streams the catalog to callers that keep it in their own memory
//! (the `readtier-client` crate): [`feed::CatalogFeed`] turns each installed snapshot
//! into messages once, remembering when each country last changed, so a caller that
//! comes back with the version it holds gets only what changed since.
//!
//! The server is tonic's routes served by hyper's HTTP/2 connection in an accept loop
//! of our own ([`conn`]), not `tonic::transport::Server`: connections are tracked and
//! drained with the node's other listeners, and deadlines are this module's to answer
//! (tonic's server answers an expired `grpc-timeout` with CANCELLED; callers expect
//! DEADLINE_EXCEEDED).

mod batch;
mod conn;
mod convert;
mod deadline;
mod error;
pub mod feed;
mod metrics;
mod service;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

pub use batch::BatchAnswer;
pub use conn::serve;
pub use service::ReadTierService;

use crate::http::App;

/// The messages and the server trait generated from the proto (build.rs).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("readtier.v1");

    /// The encoded FileDescriptorSet of the proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/readtier_descriptor.bin"));
}

/// The name callers and health checks use for the service.
pub const SERVICE_NAME: &str = "readtier.v1.ReadTier";

/// How often a quiet `WatchCatalog` stream carries a heartbeat (the current version,
/// no countries), so a caller can tell a quiet catalog from a dead connection.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// A node's gRPC face, assembled: what [`serve`] answers with, and the handle that
/// turns the health service to NOT_SERVING when the node drains.
pub struct GrpcFace {
    pub routes: tonic::service::Routes,
    pub health: Health,
    /// Keeps the catalog messages current; run by the node until it stops.
    pub feed: Arc<feed::CatalogFeed>,
}

/// The health service's state, following readiness: SERVING once the node serves (it
/// has a catalog by then), NOT_SERVING from the moment it starts draining (when
/// `/readyz` turns 503).
#[derive(Clone)]
pub struct Health(HealthReporter);

impl Health {
    pub async fn draining(&self) {
        for name in ["", SERVICE_NAME] {
            self.0
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
    }
}

/// Builds the gRPC face over the node's shared [`App`]. `stop` ends `WatchCatalog`
/// streams (with UNAVAILABLE, so callers reconnect elsewhere) when the node stops
/// accepting.
pub async fn face(app: Arc<App>, stop: CancellationToken) -> GrpcFace {
    let feed = feed::CatalogFeed::new(app.catalog.clone());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        // The descriptor sets are compiled in; a set that does not decode is a build
        // bug, caught by every test that starts a node.
        .expect("the compiled-in descriptor sets decode");
    let service = ReadTierService::new(app, feed.clone(), stop);
    let routes = tonic::service::Routes::new(pb::read_tier_server::ReadTierServer::new(service))
        .add_service(health_service)
        .add_service(reflection)
        .prepare();
    GrpcFace {
        routes,
        health: Health(reporter),
        feed,
    }
}
