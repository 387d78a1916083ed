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
    pub encoded: arc_swap::ArcSwapOption<Encoded>,
}

/// One member's `Entitlement` as the batch answers it, less what is not the member's:
/// the plan's fields (6 to 9, shared by every member on the plan) and `served_from`
/// (11, this call's). Kept in the member's L1 entry ([`Cached`]`::encoded`) so
/// a batch copies these bytes instead of encoding the member again (callgrind:
/// docs/PERFORMANCE.md, "gRPC (issue 13)"). It follows the same rules as the entry's
/// rendered JSON: built under one catalog version and held until the member's price
/// period ends, so it is never staler than the HTTP answer; a changed member record is
/// a new entry, without it. Defined here, beside the entry that holds it; built and
/// read by `grpc::batch` (which is above this layer), the only code that touches its
/// fields.
#[derive(Debug)]
pub struct Encoded {
    pub(crate) catalog_version: u64,
    /// The instant (ms) the price in it holds until (`i64::MAX`: until the catalog
    /// changes).
    pub(crate) until_ms: i64,
    /// The member's plan's index in the snapshot of `catalog_version`
    /// (`u16::MAX`: a plan the catalog does not offer).
    pub(crate) plan: u16,
    /// Where fields 1 to 5 end and where field 10 ends: the plan's fields go at the
    /// first, `served_from` at the second. Sixteen bits each, so that with `plan` the
    /// entry is 56 bytes with its `Arc`'s counts (one 64-byte allocation, not 80).
    pub(crate) cuts: [u16; 2],
    /// Fields 1 to 5, 10, 12 and 13, in that order.
    pub(crate) bytes: Box<[u8]>,
}

/// [`Cached::version`] of a member whose row the store holds but cannot be read (a
/// value this build does not know, issue 27): an answer of its own, neither the record
/// nor "no such member", never kept in L1 or written to L2.
pub const UNREADABLE: i64 = -1;

impl Cached {
    /// The answer for a member whose row cannot be read (see [`UNREADABLE`]).
    pub fn unreadable(origin: ServedFrom) -> Cached {
        Cached::new(None, UNREADABLE, origin)
    }

    /// Whether this is the answer for a row that cannot be read.
    pub fn is_unreadable(&self) -> bool {
        self.member.is_none() && self.version == UNREADABLE
    }

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
