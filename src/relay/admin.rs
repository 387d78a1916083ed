//! The relay's admin listener (`relay.admin_listen`): `GET /metrics` (its
//! `readtier_relay_*` figures and the process's) and `GET /healthz`, which fails while
//! the active relay holds a backlog and makes no progress, so a probe can restart it
//! and an alert can page (a relay stuck on one page once stopped delivery to every
//! node while every node looked healthy: issue 27).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::{now_ms, Store};

/// How long the active relay may hold a backlog without a successful step before
/// `/healthz` fails.
pub const STALL: Duration = Duration::from_secs(30);

/// What the listener reports of the relay, kept by its run loop.
#[derive(Debug)]
pub struct Health {
    active: AtomicBool,
    /// The newest commit time (ms, store clock) the relay knows it has published
    /// everything up to (0: it has not caught up since it started).
    through_ms: AtomicI64,
    /// When its last step succeeded (ms), 0: none yet.
    last_step_ms: AtomicI64,
    /// The age of the oldest change committed and not published, as last asked (ms).
    lag_ms: AtomicI64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            active: AtomicBool::new(false),
            through_ms: AtomicI64::new(0),
            last_step_ms: AtomicI64::new(0),
            lag_ms: AtomicI64::new(0),
        }
    }
}

impl Health {
    pub(super) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// A step that published changes committed up to `newest_ms` (if any) succeeded
    /// at `started_ms`; `caught_up`: nothing more was waiting then.
    pub(super) fn stepped(&self, started_ms: i64, newest_ms: Option<i64>, caught_up: bool) {
        self.last_step_ms.store(now_ms(), Ordering::Relaxed);
        if let Some(n) = newest_ms {
            self.through_ms.fetch_max(n, Ordering::Relaxed);
        }
        if caught_up {
            // Everything committed a second before the step began was in its snapshot.
            self.through_ms
                .fetch_max(started_ms - 1000, Ordering::Relaxed);
        }
    }

    /// Why the relay is unhealthy, if it is: active, a change committed and not
    /// published for over [`STALL`], and no successful step for as long.
    fn stalled(&self) -> Option<String> {
        let stall = STALL.as_millis() as i64;
        let lag = self.lag_ms.load(Ordering::Relaxed);
        let since_step = now_ms() - self.last_step_ms.load(Ordering::Relaxed);
        (self.active.load(Ordering::Relaxed) && lag > stall && since_step > stall).then(|| {
            format!(
                "the oldest change not yet published was committed {:.1} s ago and no step has succeeded for {:.1} s",
                lag as f64 / 1000.0,
                since_step as f64 / 1000.0
            )
        })
    }
}

/// Sets `readtier_relay_lag_seconds` every second, until `stop`: the age of the
/// oldest change committed after what the relay has published (one indexed read).
pub async fn watch_lag(health: Arc<Health>, store: Store, stop: CancellationToken) {
    let gauge = metrics::gauge!("readtier_relay_lag_seconds");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !health.active.load(Ordering::Relaxed) {
            health.lag_ms.store(0, Ordering::Relaxed);
            gauge.set(0.0);
            continue;
        }
        let through = health.through_ms.load(Ordering::Relaxed);
        if let Ok(first) = store.first_change_after(through).await {
            let lag = first.map_or(0, |at| (now_ms() - at).max(0));
            health.lag_ms.store(lag, Ordering::Relaxed);
            gauge.set(lag as f64 / 1000.0);
        }
    }
}

type Body = Full<Bytes>;

fn answer(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> http::Response<Body> {
    let mut resp = http::Response::new(Full::new(body.into()));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn problem(status: u16, slug: &str, title: &str, detail: &str) -> http::Response<Body> {
    let body = serde_json::json!({
        "type": format!("urn:readtier:problem:{slug}"),
        "title": title,
        "status": status,
        "detail": detail,
    });
    answer(status, "application/problem+json", body.to_string())
}

fn route(
    req: &http::Request<hyper::body::Incoming>,
    health: &Health,
    prometheus: &PrometheusHandle,
) -> http::Response<Body> {
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let mut resp = problem(405, "method-not-allowed", "Method Not Allowed", "only GET");
        resp.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return resp;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut text = prometheus.render();
            crate::telemetry::render_process(&mut text);
            answer(200, "text/plain; version=0.0.4", text)
        }
        "/healthz" => match health.stalled() {
            Some(why) => problem(503, "relay-stalled", "Relay stalled", &why),
            None => {
                let role = if health.active.load(Ordering::Relaxed) {
                    "active"
                } else {
                    "standby"
                };
                let lag = health.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0;
                answer(
                    200,
                    "application/json",
                    serde_json::json!({"status": "ok", "role": role, "lag_seconds": lag})
                        .to_string(),
                )
            }
        },
        path => problem(
            404,
            "not-found",
            "Not Found",
            &format!("no resource at {path}"),
        ),
    }
}

/// Serves the listener until `stop`.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    prometheus: PrometheusHandle,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let (health, prometheus) = (health.clone(), prometheus.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&req, &health, &prometheus);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            // An admin scrape is small: one that takes longer is cut.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}
