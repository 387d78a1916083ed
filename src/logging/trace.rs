//! W3C Trace Context on the miss path: an incoming `traceparent` is read only once a
//! member lookup has missed L1, and the lookup's work (the Redis reads, the store
//! read, the fill) runs under one span that continues the caller's trace.
//!
//! The hit path never looks at the header: an L1 hit costs what it did before
//! tracing existed (the callgrind guard counts it). A miss already waits on Redis or
//! the store, so a span and a parsed header cost it nothing a caller can see.
//!
//! The miss span (`member_miss`) records `trace_id` and `span_id`, so every log line
//! written beneath it carries them ([`super::json`]); its children (`member_load`,
//! `redis.get`, `store.read_member`, `redis.fill`, made in `lookup`) are DEBUG spans,
//! which cost nothing unless the log filter or the OpenTelemetry layer wants them. The
//! miss span itself is WARN, so that a warning on the miss path carries the trace at
//! the levels operators run. It is opened only when there is a trace: the request
//! brought a `traceparent`, or OpenTelemetry export is on (which starts one); a miss
//! with neither runs under no span.
//!
//! With OpenTelemetry export on, the ids are the exported span's, its parent the
//! caller's span; without it, the trace id is the caller's and the span id a fresh
//! random one, as a tracing system would assign. The answer then carries
//! `traceresponse: 00-{trace_id}-{span_id}-{flags}` (W3C Trace Context Level 2), so
//! the caller can find this node's part of its trace.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::Empty;

/// The request header a caller's trace arrives in.
pub const TRACEPARENT: &str = "traceparent";
/// The answer header naming this node's span of the caller's trace.
pub const TRACERESPONSE: &str = "traceresponse";

/// Whether the OpenTelemetry layer is installed (spans then take their ids from it).
static OTEL: AtomicBool = AtomicBool::new(false);

pub(super) fn otel_installed() {
    OTEL.store(true, Ordering::Release);
}

/// A parsed `traceparent` header (version `00`, or a later version read as `00`
/// reads it, as the specification asks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case hex, ids
    /// not all zero; `None` for anything else (the request is then traced as if it
    /// carried no header, never refused).
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        if value.len() < 55 {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        // Version ff is forbidden; 00 is exactly 55 bytes; a later version may append
        // fields after a dash.
        if version == 0xff || (version == 0 && value.len() != 55) {
            return None;
        }
        if value.len() > 55 && value[55] != b'-' {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the caller recorded its span (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// Two lower-case hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(two[0])? << 4 | d(two[1])?)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The span a member miss runs under, and the `traceresponse` to answer with.
pub struct MissTrace {
    pub span: tracing::Span,
    /// `Some` when the request carried a valid `traceparent`.
    pub response: Option<String>,
}

/// Opens the span of a member miss on `route`, continuing the caller's trace when
/// `traceparent` (the raw header) is valid.
pub fn miss_span(route: &'static str, traceparent: Option<&[u8]>) -> MissTrace {
    let incoming = traceparent.and_then(TraceParent::parse);
    if incoming.is_none() && !OTEL.load(Ordering::Acquire) {
        // No trace to continue and none to export: the span would carry only the
        // route, and it is not free at WARN (opening it formats its fields, and every
        // poll beneath it enters and leaves it): about 6,000 of the 43,000 user-space
        // instructions of an L2 hit (docs/PERFORMANCE.md, "The L2-hit path").
        return MissTrace {
            span: tracing::Span::none(),
            response: None,
        };
    }
    let span = tracing::warn_span!("member_miss", route, trace_id = Empty, span_id = Empty);
    if span.is_disabled() {
        return MissTrace {
            span,
            response: None,
        };
    }
    let ids = if OTEL.load(Ordering::Acquire) {
        super::otel::adopt(&span, incoming.as_ref())
    } else {
        incoming.map(|tp| (tp.trace_id_hex(), hex(&random_span_id())))
    };
    let Some((trace_id, span_id)) = ids else {
        return MissTrace {
            span,
            response: None,
        };
    };
    span.record("trace_id", trace_id.as_str());
    span.record("span_id", span_id.as_str());
    let response = incoming.map(|tp| format!("00-{trace_id}-{span_id}-{:02x}", tp.flags & 1));
    MissTrace { span, response }
}

/// Eight random bytes, never all zero (a span id of zeros is invalid).
fn random_span_id() -> [u8; 8] {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id() as u64);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        // xorshift64*: plenty for ids that only need to differ.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (if v == 0 { 1 } else { v }).to_be_bytes()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_read_as_the_specification_writes_it() {
        let tp = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert!(!TraceParent::parse(GOOD.replace("-01", "-00").as_bytes())
            .unwrap()
            .sampled());
        // A later version may carry more after a dash; 00 may not.
        assert!(TraceParent::parse(format!("cc{}-what", &GOOD[2..]).as_bytes()).is_some());
        for bad in [
            "",
            &GOOD[..54],
            &format!("{GOOD}-x"),
            &format!("cc{}x", &GOOD[2..]),
            &GOOD.replace("00-4b", "ff-4b"),
            &GOOD.to_uppercase(),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn span_ids_are_random_and_never_zero() {
        let a = random_span_id();
        let b = random_span_id();
        assert_ne!(a, b);
        assert_ne!(a, [0; 8]);
    }

    #[test]
    fn a_miss_span_continues_the_callers_trace() {
        // A subscriber that enables every span, so the span is not disabled.
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let t = miss_span("entitlement", Some(GOOD.as_bytes()));
            let resp = t.response.unwrap();
            assert!(
                resp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{resp}"
            );
            assert!(resp.ends_with("-01"));
            assert_eq!(resp.len(), 55);
            assert_ne!(&resp[36..52], "00f067aa0ba902b7", "a span of its own");
            assert!(!t.span.is_none(), "a trace to continue: a span");
            // No trace to continue and no exporter: no span at all, though the
            // subscriber would take one.
            let junk = miss_span("entitlement", Some(b"junk"));
            assert!(junk.response.is_none() && junk.span.is_none());
            let none = miss_span("entitlement", None);
            assert!(none.response.is_none() && none.span.is_none());
        });
    }
}
