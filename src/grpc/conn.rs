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
    let refusing = Arc::new(AtomicUsize::new(0));
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
        let Some(slot) = Slot::take(&open, max_connections) else {
            refused.increment(1);
            // Each refusal holds a descriptor for seconds at most; past
            // MAX_REFUSING of them a connection is closed unanswered at once.
            if let Some(refusing) = Slot::take(&refusing, MAX_REFUSING) {
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _refusing = refusing;
                    refuse(stream, builder).await
                });
            }
            continue;
        };
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

/// Refused connections being answered at once; a flood past this is closed unanswered
/// rather than holding a descriptor each for seconds.
const MAX_REFUSING: usize = 1024;

/// How long a refused connection may take to send its first call: long enough for a
/// caller's handshake and call on a busy node, short enough that connections opened
/// and left idle past the cap do not pile up.
const REFUSE_FIRST_CALL: Duration = Duration::from_secs(2);

/// How long the answer and the GOAWAY that follows it may take to reach the caller
/// (one ping round trip, then the close) before the connection is cut.
const REFUSE_CLOSE: Duration = Duration::from_secs(5);

/// A connection past `grpc_max_connections`: its calls are answered UNAVAILABLE ("too
/// many connections", what a gRPC caller retries elsewhere; the HTTP listener's
/// counterpart is one 503 answer), and once the first answer has been handed to the
/// connection, it is closed gracefully (GOAWAY, then the close once the caller has
/// it). Bounded in time ([`REFUSE_FIRST_CALL`], [`REFUSE_CLOSE`]) however the
/// caller behaves; it never takes a slot.
///
/// The GOAWAY starts only after the answer is queued: started as the call arrived, a
/// caller on a busy node could see the connection end before the answer did (CI saw
/// one such call fail as INTERNAL "GoAway(NO_ERROR)").
async fn refuse(stream: TcpStream, builder: http2::Builder<TokioExecutor>) {
    let answered = Arc::new(tokio::sync::Notify::new());
    let service = {
        let answered = answered.clone();
        hyper::service::service_fn(move |_: http::Request<hyper::body::Incoming>| {
            let answered = answered.clone();
            async move {
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
                // hyper hands the answer to the connection in the same poll that
                // completes this future, so the close below starts after it.
                answered.notify_one();
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let _ = stream.set_nodelay(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let first_call = tokio::time::timeout(REFUSE_FIRST_CALL, async {
        tokio::select! {
            _ = conn.as_mut() => false,
            _ = answered.notified() => true,
        }
    })
    .await;
    let close_within = match first_call {
        Ok(false) => return, // the caller closed it
        Ok(true) => REFUSE_CLOSE,
        // Silent too long: told to go all the same, but not waited on for long.
        Err(_) => REFUSE_FIRST_CALL / 2,
    };
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(close_within, conn).await;
}

/// One open (or refused, being answered) connection, counted until dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot of `count`'s, if fewer than `max` are taken.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
