//! OpenTelemetry export (`otel.endpoint`): the miss path's spans as OTLP/HTTP
//! protobuf to a collector, batched by the SDK's own thread.
//!
//! Why these pieces: `tracing-opentelemetry` turns the `tracing` spans the code
//! already makes into OpenTelemetry spans, so nothing is instrumented twice; the OTLP
//! exporter is the HTTP/protobuf one (no gRPC stack, no tonic); and its HTTP client is
//! [`PlainHttp`], one HTTP/1.1 POST per export on a one-thread Tokio runtime of its
//! own, instead of reqwest (a second HTTP stack and its TLS). The
//! SDK's batch processor exports from a thread of its own with a blocking executor, so
//! the client needs a runtime that is not the node's: export never takes a worker
//! from requests. Plain HTTP only, as from a node to a collector beside it.
//!
//! The standard `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS`
//! variables add headers to every export (a collector's token stays out of readtier's
//! own configuration and out of `GET /admin/config`).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::trace::TraceParent;
use super::LoggingError;
use crate::config::OtelConfig;

/// The exporter and the tracer provider behind it.
pub struct Exporter {
    provider: SdkTracerProvider,
    /// Longest the final flush may take at shutdown.
    timeout: Duration,
}

impl Exporter {
    pub fn new(cfg: &OtelConfig) -> Result<Exporter, LoggingError> {
        let base = cfg.endpoint.trim().trim_end_matches('/');
        let endpoint = format!("{base}/v1/traces");
        let fail = |reason: String| LoggingError::Otel {
            endpoint: crate::config::provenance::redact_urls(&endpoint),
            reason,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_timeout(cfg.timeout)
            .with_http_client(PlainHttp::new(cfg.timeout))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // A caller's decision is followed; a trace of our own starts for
            // `sample_ratio` of the misses that carry none.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Exporter {
            provider,
            timeout: cfg.timeout,
        })
    }

    pub fn tracer(&self) -> Tracer {
        self.provider.tracer("readtier")
    }

    /// Exports what is still queued and stops the batch thread.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(self.timeout) {
            eprintln!("readtier: OpenTelemetry exporter shutdown: {e}");
        }
    }
}

/// Makes `span` a child of the caller's span (when `incoming` is given) and returns
/// the OpenTelemetry ids it got: `(trace_id, span_id)` in lower-case hex.
pub(super) fn adopt(
    span: &tracing::Span,
    incoming: Option<&TraceParent>,
) -> Option<(String, String)> {
    if let Some(tp) = incoming {
        let remote = SpanContext::new(
            TraceId::from_bytes(tp.trace_id),
            SpanId::from_bytes(tp.parent_id),
            TraceFlags::new(tp.flags & 1),
            true,
            TraceState::NONE,
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The exporter's HTTP client: one HTTP/1.1 request per export over a fresh
/// connection, on a one-thread runtime made on first use (in the SDK's batch thread).
#[derive(Debug)]
pub struct PlainHttp {
    runtime: OnceLock<Result<tokio::runtime::Runtime, String>>,
    timeout: Duration,
}

impl PlainHttp {
    pub fn new(timeout: Duration) -> PlainHttp {
        PlainHttp {
            runtime: OnceLock::new(),
            timeout,
        }
    }

    /// One POST over a fresh connection (`Connection: close`), the answer read to
    /// the end. HTTP/1.1 written by hand rather than with hyper's client: the client
    /// feature changes how hyper's shared server code is compiled, and the callgrind
    /// guard counted ~100 more instructions a request on the hit path with it.
    async fn send(
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let uri = request.uri().clone();
        let host = uri.host().ok_or("endpoint has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let (parts, body) = request.into_parts();
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\ncontent-length: {}\r\n",
            parts.method,
            body.len()
        );
        for (name, value) in &parts.headers {
            if name == http::header::HOST || name == http::header::CONTENT_LENGTH {
                continue;
            }
            head.push_str(name.as_str());
            head.push_str(": ");
            head.push_str(value.to_str()?);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        // Collectors answer a few bytes (a partial-success message at most).
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut answer)
            .await?;
        if answer.len() > MAX_ANSWER {
            return Err(Box::new(opentelemetry_http::ResponseBodyTooLarge::new()));
        }
        parse_answer(&answer)
    }
}

/// The most of an answer read from a collector.
const MAX_ANSWER: usize = 4 << 20;

/// An HTTP/1.1 answer read to the end of its connection: status, headers, and the
/// body (by `content-length`, de-chunked, or to the end).
fn parse_answer(answer: &[u8]) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the collector's answer has no complete head")?;
    let head = std::str::from_utf8(&answer[..split])?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("the collector's answer has no status line")?;
    let mut response = http::Response::builder().status(status);
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
        response = response.header(name, value);
    }
    let rest = &answer[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) => rest
                .get(..n)
                .ok_or("the answer ended before its body")?
                .to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok(response.body(Bytes::from(body))?)
}

/// A chunked body, joined.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, opentelemetry_http::HttpError> {
    let mut body = Vec::new();
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("malformed chunk")?;
        let size = std::str::from_utf8(&rest[..end])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        rest = &rest[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("truncated chunk")?);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for PlainHttp {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let runtime = self
            .runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| format!("exporter runtime: {e}"))?;
        let timeout = self.timeout;
        runtime.block_on(async move {
            tokio::time::timeout(timeout, Self::send(request))
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_length_chunked_or_to_the_end() {
        let r =
            parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx: y\r\n\r\nokEXTRA").unwrap();
        assert_eq!((r.status().as_u16(), r.body().as_ref()), (200, &b"ok"[..]));
        assert_eq!(r.headers()["x"], "y");
        let r = parse_answer(
            b"HTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.body().as_ref()),
            (400, &b"abcde"[..])
        );
        let r = parse_answer(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.status().as_u16(), 204);
        for bad in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"nonsense\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nab",
        ] {
            assert!(
                parse_answer(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
