//! The gRPC listener's accept loop: one task per connection running hyper's HTTP/2
//! connection over tonic's routes, drained with the node's other listeners.

use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// HTTP/2 pings on an idle connection: a caller that vanished (a watch stream on a
/// dead network path) is noticed and its connection closed.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Accepts connections until `stop` is cancelled; then each open connection is asked
/// to finish (GOAWAY: calls in flight complete, `WatchCatalog` streams end on the same
/// token) under `tracker`, and is cut when `cut` is cancelled.
pub async fn serve(
    listener: TcpListener,
    routes: tonic::service::Routes,
    stop: CancellationToken,
    tracker: TaskTracker,
    cut: CancellationToken,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE))
        .keep_alive_timeout(KEEPALIVE);
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
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(routes.clone()),
        );
        let (stop, cut) = (stop.clone(), cut.clone());
        tracker.spawn(async move {
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
