//! What a lookup answers: where an answer came from, the L1 entry itself, why a
//! lookup failed, and the limits on store fills.

use std::sync::Arc;
use std::time::Duration;

use crate::member::Member;
use crate::store::StoreError;

/// Where a member answer came from (`x-served-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedFrom {
    L1,
    L2,
    Store,
}

impl ServedFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedFrom::L1 => "l1",
            ServedFrom::L2 => "l2",
            ServedFrom::Store => "store",
        }
    }
}

/// An L1 entry: a record, or the knowledge that there is none, its version, and
/// where it was loaded from (what a coalesced miss reports).
#[derive(Debug)]
pub struct Cached {
    pub member: Option<Member>,
    /// The record's version, or the tombstone's (0: an id the store never had).
    pub version: i64,
    pub origin: ServedFrom,
    /// The entitlement answer for this record, the catalog version it was rendered
    /// under and the instant (ms) until which its price holds (`i64::MAX`: no change
    /// scheduled), kept with the entry so a hit copies bytes instead of rendering;
    /// replaced when a request finds the catalog or the price period has moved on (see
    /// `http::render`).
    pub rendered: arc_swap::ArcSwapOption<(u64, i64, bytes::Bytes)>,
    /// The same answer as the gRPC batch encodes it (protobuf, less the plan's fields
    /// and `served_from`), built on the first `BatchGetEntitlements` that answers this
    /// entry and replaced under the same rules as `rendered` (see `grpc::batch`): a
    /// node that serves only HTTP pays this pointer and nothing more.
    pub encoded: arc_swap::ArcSwapOption<crate::grpc::Encoded>,
}

impl Cached {
    pub fn new(member: Option<Member>, version: i64, origin: ServedFrom) -> Cached {
        Cached {
            member,
            version,
            origin,
            rendered: arc_swap::ArcSwapOption::empty(),
            encoded: arc_swap::ArcSwapOption::empty(),
        }
    }
}

pub type Entry = Arc<Cached>;

/// Why a member could not be looked up (shared by every request coalesced on a load).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("too many store reads in flight ({0}); the tier may be down")]
    Overloaded(usize),
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
}

/// How many store reads may be in flight, and how long a miss waits for one.
#[derive(Debug, Clone, Copy)]
pub struct FillLimits {
    /// Most store reads in flight (`l2.max_store_fills`): a tier outage cannot
    /// flatten the store.
    pub max_in_flight: usize,
    /// Longest wait for a permit, and for a load (`http.request_timeout`).
    pub wait: Duration,
}

impl FillLimits {
    /// The limits a configuration sets.
    pub fn of(cfg: &crate::config::Config) -> FillLimits {
        FillLimits {
            max_in_flight: cfg.l2.max_store_fills,
            wait: cfg.http.request_timeout,
        }
    }
}
