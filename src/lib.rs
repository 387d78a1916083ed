//! readtier: the read tier in front of a subscription service's membership data.
//!
//! It answers "which plans, at what price, does this country offer?" and "may this
//! member play, on this device, now?" from memory, kept fresh by the store's own
//! change log. See `DESIGN.md` in the shared folder and README.md for the picture.
//!
//! Map of the modules, in the order a request meets them:
//! - [`http`]: listeners, routing, the request path's rules, problem answers;
//! - [`catalog`]: the immutable, versioned, pre-rendered plan catalog snapshot;
//! - [`members`]: member records, the entitlement decision, the L1 cache;
//! - [`tier`]: the L2 Redis hash tier (zones, consistent hashing, versioned sets);
//! - [`store`]: the source of truth (embedded SQLite), its schema, triggers and seeding;
//! - [`changes`]: the follower that applies committed changes to L1 and the catalog;
//! - [`node`]: one serving node assembled, started and drained through a shutdown handle;
//! - [`config`]: layered configuration (default file, file, `READTIER_*`);
//! - [`telemetry`]: Prometheus metrics with handles registered once;
//! - [`cli`]: the `readtier` command line.

pub mod catalog;
pub mod changes;
pub mod cli;
pub mod config;
pub mod http;
pub mod members;
pub mod node;
pub mod store;
pub mod telemetry;
pub mod tier;
