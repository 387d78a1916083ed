//! OpenTelemetry export (`otel.endpoint`): the miss path's spans as OTLP/HTTP
//! protobuf to a collector, batched by the SDK's own thread.
//!
//! Why these pieces: `tracing-opentelemetry` turns the `tracing` spans the code
//! already makes into OpenTelemetry spans, so nothing is instrumented twice; the OTLP
//! exporter is the HTTP/protobuf one (no gRPC stack, no tonic); and its HTTP client is
//! [`PlainHttp`], hyper's HTTP/1 client connection driven by a one-thread Tokio
//! runtime of its own, instead of reqwest (a second HTTP stack and its TLS). The
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
use http_body_util::BodyExt;
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

    async fn send(
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let uri = request.uri().clone();
        let host = uri.host().ok_or("endpoint has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((host, port)).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let (mut parts, body) = request.into_parts();
        // An HTTP/1 request line carries the path; the authority goes in Host.
        parts.uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()?;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        parts
            .headers
            .insert(http::header::HOST, http::HeaderValue::from_str(authority)?);
        let response = sender
            .send_request(http::Request::from_parts(
                parts,
                http_body_util::Full::new(body),
            ))
            .await?;
        let (parts, body) = response.into_parts();
        // Collectors answer a few bytes (a partial-success message at most).
        let body = http_body_util::Limited::new(body, 4 << 20)
            .collect()
            .await?
            .to_bytes();
        conn.abort();
        Ok(http::Response::from_parts(parts, body))
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
