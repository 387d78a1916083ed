//! readtier: the read tier in front of a subscription service's membership data.
//!
//! It answers "which plans, at what price, does this country offer?" and "may this
//! member play, on this device, now?" from memory, kept fresh by the store's own
//! change log. README.md has the picture, the API and the production topology.
//!
//! Map of the modules, from the process down; imports only point down the map:
//! - [`cli`]: the `readtier` command line; [`node`]: one serving node assembled,
//!   started and drained through a shutdown handle; [`relay`]: the process that
//!   publishes the store's change log to the Redis tier and the change stream;
//! - [`http`]: listeners, routing, the request path's rules, problem answers;
//!   [`grpc`]: the gRPC face (`readtier.v1.ReadTier`, health, reflection) over the
//!   same lookups, sharing HTTP's `App` (its waiting limit above all);
//!   [`follower`]: applies committed changes to a node's L1 and catalog;
//! - [`admission`]: which lookups that would wait are admitted and which shed: a
//!   standing queue past its target, not a busy core, sheds;
//!   [`lookup`]: member lookups through L1 → L2 → store, with coalescing, and the
//!   consistency inspector that re-checks sampled answers against the store;
//!   [`catalog`]: the immutable, versioned, pre-rendered catalog snapshot, with its
//!   pricing rules (scheduled prices, experiment cells, partner offers);
//! - [`tier`]: the L2 Redis hash tier (zones, consistent hashing, versioned sets);
//!   [`stream`]: the change stream in Redis; [`store`]: the source of truth
//!   (embedded SQLite or PostgreSQL), its change log and seeding;
//! - [`member`] and [`plan`]: the domain records and the playback decision;
//!   [`config`]: layered configuration; [`telemetry`]: Prometheus metrics;
//!   [`redis_conn`]: the one Redis connection type; [`logging`]: the log, its
//!   run-time filter, W3C trace context on the miss path and OpenTelemetry export.

pub mod admission;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod follower;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod lookup;
pub mod member;
pub mod node;
pub mod plan;
pub mod redis_conn;
pub mod relay;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tier;
