//! `readtier_grpc_requests_total{method, code}`: every call by method and status code,
//! from handles registered once (no label lookup per call, as `telemetry::HttpMetrics`).

use metrics::Counter;
use tonic::Code;

#[derive(Debug, Clone, Copy)]
pub enum Method {
    GetPlans,
    GetEntitlement,
    AuthorizePlayback,
    BatchGetEntitlements,
    WatchCatalog,
}

const METHODS: [(Method, &str); 5] = [
    (Method::GetPlans, "GetPlans"),
    (Method::GetEntitlement, "GetEntitlement"),
    (Method::AuthorizePlayback, "AuthorizePlayback"),
    (Method::BatchGetEntitlements, "BatchGetEntitlements"),
    (Method::WatchCatalog, "WatchCatalog"),
];

/// The codes this service answers; anything else would count as `other`.
const CODES: [(Code, &str); 6] = [
    (Code::Ok, "OK"),
    (Code::InvalidArgument, "INVALID_ARGUMENT"),
    (Code::NotFound, "NOT_FOUND"),
    (Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (Code::Unavailable, "UNAVAILABLE"),
    (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
];

/// The counter of connections refused over `grpc_max_connections`, beside the gRPC
/// listener's other metrics.
pub fn refused_connections() -> Counter {
    metrics::counter!("readtier_shed_total", "face" => "grpc", "route" => "connection", "reason" => "connections")
}

pub struct GrpcMetrics {
    /// `METHODS.len() × (CODES.len() + 1)`, the last of each row `other`.
    requests: Vec<Counter>,
}

impl GrpcMetrics {
    pub fn register() -> GrpcMetrics {
        metrics::describe_counter!(
            "readtier_grpc_requests_total",
            "gRPC calls answered, by method and status code (a WatchCatalog stream counts when it starts or is refused)"
        );
        let mut requests = Vec::with_capacity(METHODS.len() * (CODES.len() + 1));
        for (_, method) in METHODS {
            for (_, code) in CODES {
                requests.push(metrics::counter!("readtier_grpc_requests_total", "method" => method, "code" => code));
            }
            requests.push(
                metrics::counter!("readtier_grpc_requests_total", "method" => method, "code" => "other"),
            );
        }
        GrpcMetrics { requests }
    }

    pub fn record(&self, method: Method, code: Code) {
        let row = method as usize * (CODES.len() + 1);
        let col = CODES
            .iter()
            .position(|(c, _)| *c == code)
            .unwrap_or(CODES.len());
        self.requests[row + col].increment(1);
    }
}
