//! The gRPC listener's accept loop: one task per connection running hyper's HTTP/2
//! connection over tonic's routes, drained with the node's other listeners, at most
//! `grpc_max_connections` at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// HTTP/2 pings on an idle connection: a caller that vanished (a watch stream on a
/// dead network path) is noticed and its connection closed.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Accepts connections until `stop` is cancelled, at most `max_connections` open at
/// once (past it, [`refuse`]d); then each open connection is asked to
/// finish (GOAWAY: calls in flight complete, `WatchCatalog` streams end on the same
/// token) under `tracker`, and is cut when `cut` is cancelled.
pub async fn serve(
    listener: TcpListener,
    routes: tonic::service::Routes,
    max_connections: usize,
    stop: CancellationToken,
    tracker: TaskTracker,
    cut: CancellationToken,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE))
        .keep_alive_timeout(KEEPALIVE);
    let open = Arc::new(AtomicUsize::new(0));
    let refused = super::metrics::refused_connections();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        if open.fetch_add(1, Ordering::AcqRel) >= max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            refused.increment(1);
            tokio::spawn(refuse(stream, builder.clone()));
            continue;
        }
        let slot = Slot(open.clone());
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(routes.clone()),
        );
        let (stop, cut) = (stop.clone(), cut.clone());
        tracker.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stop.cancelled() => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = cut.cancelled() => return,
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "gRPC connection ended with an error");
            }
        });
    }
}

/// A connection past `grpc_max_connections`: its calls are answered UNAVAILABLE ("too
/// many connections", what a gRPC caller retries elsewhere; the HTTP listener's
/// counterpart is one 503 answer), and once one is, the connection is closed (GOAWAY).
/// A second at most, however the client behaves; it never takes a slot.
async fn refuse(stream: TcpStream, builder: http2::Builder<TokioExecutor>) {
    let answered = Arc::new(tokio::sync::Notify::new());
    let service = {
        let answered = answered.clone();
        hyper::service::service_fn(move |_: http::Request<hyper::body::Incoming>| {
            answered.notify_one();
            async {
                // A trailers-only gRPC answer: status in the headers, no body.
                let mut resp = http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                let h = resp.headers_mut();
                h.insert(
                    "content-type",
                    http::HeaderValue::from_static("application/grpc"),
                );
                h.insert("grpc-status", http::HeaderValue::from_static("14"));
                h.insert(
                    "grpc-message",
                    http::HeaderValue::from_static("too many connections"),
                );
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let _ = stream.set_nodelay(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = answered.notified() => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    })
    .await;
}

/// One open connection, counted until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
