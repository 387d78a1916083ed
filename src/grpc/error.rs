//! Why a gRPC call failed, and its status code: mapped here, in one place.

use tonic::{Code, Status};

use crate::lookup::LookupError;

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// A malformed request (the detail says what, as the HTTP API's 400s do).
    #[error("{0}")]
    InvalidArgument(String),
    /// A country without plans, an unknown member.
    #[error("{0}")]
    NotFound(String),
    /// Over the node's waiting limit (`http.max_waiting`): shed at once.
    #[error("this node is overloaded; retry shortly")]
    Shed,
    /// The member could not be read (store or tier trouble, store fills over
    /// `l2.max_store_fills`).
    #[error("the member could not be read; retry shortly: {0}")]
    Lookup(#[from] LookupError),
    /// The lookup outlived `http.request_timeout`.
    #[error("the member could not be read in time; retry shortly")]
    TooSlow,
    /// The member's store row cannot be read (issue 27): not a failure a retry could
    /// cure.
    #[error("the store's row for member {0} holds a value this node cannot read; it is quarantined until it is fixed")]
    Unreadable(u64),
    /// The caller's `grpc-timeout` passed first.
    #[error("the deadline passed before the member could be read")]
    DeadlineExceeded,
    /// The node is shutting down (ends `WatchCatalog` streams).
    #[error("this node is shutting down; reconnect")]
    Draining,
    /// A fault of the node's own (a rendering that does not decode).
    #[error("{0}")]
    Internal(String),
}

impl GrpcError {
    pub fn code(&self) -> Code {
        match self {
            GrpcError::InvalidArgument(_) => Code::InvalidArgument,
            GrpcError::NotFound(_) => Code::NotFound,
            GrpcError::Unreadable(_) => Code::FailedPrecondition,
            GrpcError::Shed | GrpcError::Lookup(_) | GrpcError::TooSlow | GrpcError::Draining => {
                Code::Unavailable
            }
            GrpcError::DeadlineExceeded => Code::DeadlineExceeded,
            GrpcError::Internal(_) => Code::Internal,
        }
    }
}

impl From<GrpcError> for Status {
    fn from(e: GrpcError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
