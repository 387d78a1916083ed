//! The sampled access log (`log.access_sample`): one INFO event of target
//! `readtier::access` for every N-th answer, with the method, the route's name, the
//! status, the time taken, where the member came from and the caller's trace id.
//!
//! It never names a member: the route is its name (`entitlement`), not the path, and
//! no query, header or body is written. When off (the default) it costs the request
//! path one load and one branch in [`super::App::finish`] (the callgrind guard counts
//! instructions per request there); when on, the N-th answer is picked by a shared
//! counter, so the sample is evenly spread and needs no random numbers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, Response};

use super::render::X_SERVED_FROM;
use super::Body;
use crate::logging::trace::TRACERESPONSE;
use crate::telemetry::Route;

/// The target access lines are written under (a filter can name it).
pub const TARGET: &str = "readtier::access";

pub(crate) struct AccessLog {
    /// Every `every`-th answer is written; 0: none.
    every: u64,
    /// Answers seen while on.
    seen: AtomicU64,
}

impl AccessLog {
    /// From `log.access_sample`, a fraction from 0 to 1: one answer in
    /// `round(1 / fraction)`.
    pub(crate) fn new(sample: f64) -> AccessLog {
        let every = if sample > 0.0 && sample.is_finite() {
            (1.0 / sample.min(1.0)).round().max(1.0) as u64
        } else {
            0
        };
        AccessLog {
            every,
            seen: AtomicU64::new(0),
        }
    }

    #[inline(always)]
    pub(crate) fn on(&self) -> bool {
        self.every != 0
    }

    /// Counts an answer and writes it if it is the N-th.
    #[cold]
    #[inline(never)]
    pub(crate) fn record(
        &self,
        method: &Method,
        route: Route,
        resp: &Response<Body>,
        elapsed: Duration,
    ) {
        if self.every > 1
            && !self
                .seen
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.every)
        {
            return;
        }
        let served_from = resp
            .headers()
            .get(&X_SERVED_FROM)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        // `traceresponse: 00-<trace id>-<span id>-<flags>`: answered on a miss whose
        // request carried a valid traceparent.
        let trace_id = resp
            .headers()
            .get(TRACERESPONSE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.get(3..35));
        tracing::info!(
            target: TARGET,
            method = method.as_str(),
            route = route.name(),
            status = resp.status().as_u16(),
            duration_us = elapsed.as_micros() as u64,
            served_from,
            trace_id,
            "access"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fraction_becomes_one_answer_in_n() {
        assert_eq!(AccessLog::new(0.0).every, 0);
        assert!(!AccessLog::new(0.0).on());
        assert_eq!(AccessLog::new(1.0).every, 1);
        assert_eq!(AccessLog::new(0.5).every, 2);
        assert_eq!(AccessLog::new(0.01).every, 100);
        assert_eq!(AccessLog::new(0.3).every, 3);
        assert_eq!(AccessLog::new(f64::NAN).every, 0);
    }
}
