//! Connection machinery: the accept loop, one task per connection running hyper's
//! HTTP/1 connection alone, and a watchdog beside it for time limits and draining.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{App, Listener};
use crate::admission::{Face, Path};

/// Accepts connections until `stop` is cancelled, then lets every open connection
/// finish its in-flight request under `tracker`.
///
/// The connection task runs hyper's connection future alone, so a request wakes
/// nothing else. Time limits and shutdown are handled beside it by a per-connection
/// [`Watchdog`] task that wakes a few times per `http.request_timeout`, instead of
/// hyper's per-request header timer and a per-request `select!` (together ~1,300
/// instructions a request under callgrind; docs/PERFORMANCE.md):
/// - a request head that has started to arrive must be complete within
///   `http.request_timeout`, and a connection with no request for `http.idle_timeout`
///   is closed (bodies are bounded inside the handlers);
/// - once draining, answers carry `Connection: close`, and a connection with no
///   request in flight is closed.
///
/// Closing is a `shutdown(2)` of the socket through a duplicate of its descriptor,
/// which the connection future sees as end of stream.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    kind: Listener,
    stop: CancellationToken,
    tracker: TaskTracker,
    cut: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        // Twice the limit: heads up to it are answered by `App::route_now` with a
        // problem JSON; only heads past twice the limit get hyper's bare 431.
        .max_buf_size(app.limits.max_header_bytes.saturating_mul(2).max(8192))
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        // Bounded connections on the public listener: one 503, then close.
        let counted = if kind == Listener::Public {
            if app.connections.fetch_add(1, Ordering::AcqRel) >= app.limits.max_connections {
                app.connections.fetch_sub(1, Ordering::AcqRel);
                app.shed_connection();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut stream = stream;
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        let _ = stream.write_all(super::problem::OVER_CONNECTIONS).await;
                        let _ = stream.shutdown().await;
                    })
                    .await;
                });
                continue;
            }
            Some(ConnectionSlot(app.clone()))
        } else {
            None
        };
        let (stream, closer) = match with_closer(stream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot set up connection");
                continue;
            }
        };
        let state = Arc::new(ConnState::default());
        tokio::spawn(
            Watchdog::new(
                state.clone(),
                closer,
                app.limits.request_timeout,
                app.limits.idle_timeout,
            )
            .run(stop.clone(), cut.clone()),
        );
        let app = app.clone();
        let builder = builder.clone();
        tracker.spawn(async move {
            let svc_state = state.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let in_flight = InFlight::start(svc_state.clone());
                let started = Instant::now();
                // A head over the limit can only come with more bytes than the limit
                // since the last request: two loads and a store on every request, the
                // walk over the headers only then.
                let bytes = svc_state.bytes_in.load(Ordering::Relaxed);
                // Wrapping: the count only grows; were it ever to go back, the huge difference
                // only costs the exact check below (measured: saturating_sub costs ~50
                // instructions a request here, wrapping_sub none).
                let fresh =
                    bytes.wrapping_sub(svc_state.bytes_at_request.swap(bytes, Ordering::Relaxed));
                if fresh > app.limits.max_header_bytes as u64
                    && super::head_size(&req) > app.limits.max_header_bytes
                {
                    let resp = app.finish(
                        crate::telemetry::Route::Other,
                        req.method(),
                        app.head_too_large(),
                        started,
                    );
                    drop(req);
                    drop(in_flight);
                    return Either::Left(std::future::ready(Ok::<_, Infallible>(resp)));
                }
                match app.route_now(&req, kind) {
                    Ok((route, resp)) => {
                        let resp = app.finish(route, req.method(), resp, started);
                        drop(req);
                        drop(in_flight);
                        Either::Left(std::future::ready(Ok::<_, Infallible>(resp)))
                    }
                    Err(later) => {
                        // A member miss waits on Redis or the store: admitted under the
                        // waiting limit, or shed at once (authorize is admitted once its
                        // body names a member not in L1).
                        let admitted = match later {
                            crate::http::Later::Entitlement(id) if kind == Listener::Public => {
                                match app.admit_waiting(id, Face::Http, Path::Entitlement) {
                                    Some(w) => Some(w),
                                    None => {
                                        let resp = app.finish(
                                            later.route(),
                                            req.method(),
                                            super::problem::shed_waiting(),
                                            started,
                                        );
                                        drop(req);
                                        drop(in_flight);
                                        return Either::Left(std::future::ready(
                                            Ok::<_, Infallible>(resp),
                                        ));
                                    }
                                }
                            }
                            _ => None,
                        };
                        let app = app.clone();
                        // Boxed: the service future hyper keeps per request is the
                        // larger of the two arms, and this one (misses, with their
                        // spans, bodies and admin routes) is large; a hit then moves
                        // only a ready answer (an allocation here costs a miss nothing
                        // it would notice).
                        Either::Right(Box::pin(async move {
                            let is_admitted = admitted.is_some();
                            let _admitted = admitted;
                            // Off the hit path: the request is consumed below.
                            let method = req.method().clone();
                            let (route, resp) = app.route_later(req, later, is_admitted).await;
                            let resp = app.finish(route, &method, resp, started);
                            drop(in_flight);
                            Ok::<_, Infallible>(resp)
                        }))
                    }
                }
            });
            let io = TokioIo::new(CountingIo {
                inner: stream,
                state: state.clone(),
            });
            // Served until it ends; at the shutdown timeout the watchdog shuts the
            // socket down, which ends it (no per-poll `select!` here: it costs every
            // request).
            if let Err(e) = builder.serve_connection(io, svc).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            state.closed.store(true, Ordering::Relaxed);
            drop(counted);
        });
    }
}

/// One counted connection of the public listener; uncounted when dropped.
struct ConnectionSlot(Arc<App>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The stream, and a duplicate of its socket that can shut it down from elsewhere.
fn with_closer(
    stream: tokio::net::TcpStream,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let std_stream = stream.into_std()?;
    let closer = std_stream.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(std_stream)?, closer))
}

/// What a connection's watchdog watches: counters updated on the request path with
/// single relaxed atomic operations.
#[derive(Default)]
struct ConnState {
    bytes_in: AtomicU64,
    /// `bytes_in` when the last request started (for the head-size check).
    bytes_at_request: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    closed: AtomicBool,
}

/// Marks a request in flight until dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(state: Arc<ConnState>) -> InFlight {
        state.requests.fetch_add(1, Ordering::Relaxed);
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes a connection whose request head is too slow, that sits idle too long, or
/// that is idle while the node drains.
struct Watchdog {
    state: Arc<ConnState>,
    closer: std::net::TcpStream,
    period: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
    last_requests: u64,
    last_bytes: u64,
    quiet_since: Instant,
    partial_since: Option<Instant>,
}

impl Watchdog {
    fn new(
        state: Arc<ConnState>,
        closer: std::net::TcpStream,
        request_timeout: Duration,
        idle_timeout: Duration,
    ) -> Watchdog {
        Watchdog {
            state,
            closer,
            period: (request_timeout.min(idle_timeout) / 4).max(Duration::from_millis(25)),
            request_timeout,
            idle_timeout,
            last_requests: 0,
            last_bytes: 0,
            quiet_since: Instant::now(),
            partial_since: None,
        }
    }

    async fn run(mut self, stop: CancellationToken, cut: CancellationToken) {
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.period, self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled(), if !draining => draining = true,
                _ = cut.cancelled() => {
                    // The shutdown timeout ran out: close whatever is still open.
                    let _ = self.closer.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
            if self.state.closed.load(Ordering::Relaxed) {
                return;
            }
            if let Some(reason) = self.check(draining) {
                tracing::debug!(reason, "closing connection");
                let _ = self.closer.shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    }

    /// `Some(reason)` means close the connection now.
    fn check(&mut self, draining: bool) -> Option<&'static str> {
        let now = Instant::now();
        let requests = self.state.requests.load(Ordering::Relaxed);
        let bytes = self.state.bytes_in.load(Ordering::Relaxed);
        let busy = self.state.in_flight.load(Ordering::Relaxed) > 0;
        if busy || requests != self.last_requests {
            // Handlers bound their own time; a new request means progress.
            self.last_requests = requests;
            self.last_bytes = bytes;
            self.quiet_since = now;
            self.partial_since = None;
            return None;
        }
        if bytes != self.last_bytes {
            // Bytes arrived but no request started: a head is on its way.
            self.last_bytes = bytes;
            self.partial_since.get_or_insert(now);
        }
        match self.partial_since {
            Some(since) if now - since >= self.request_timeout => {
                Some("request head not complete in time")
            }
            Some(_) => None,
            None if draining => Some("draining"),
            None if now - self.quiet_since >= self.idle_timeout => Some("idle"),
            None => None,
        }
    }
}

/// The connection's socket, counting bytes received for the watchdog.
struct CountingIo {
    inner: tokio::net::TcpStream,
    state: Arc<ConnState>,
}

impl tokio::io::AsyncRead for CountingIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.state
                .bytes_in
                .fetch_add(read as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl tokio::io::AsyncWrite for CountingIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// Binds a listener, reporting the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Binds `n` listeners on one address with `SO_REUSEPORT` (the kernel spreads new
/// connections over them), for [`serve_per_core`]. With port 0 the first picks the
/// port and the others join it. Returned deregistered (as std listeners), since each
/// is registered with the runtime that will accept on it.
pub async fn bind_shared(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let one = |at: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(at)?;
        // The backlog tokio's `TcpListener::bind` uses.
        socket.listen(1024)?.into_std()
    };
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
    let first = one(addr).map_err(named)?;
    let at = first.local_addr().map_err(named)?;
    let mut all = vec![first];
    for _ in 1..n.max(1) {
        all.push(one(at).map_err(named)?);
    }
    Ok(all)
}

/// Serves the public listener on one current-thread runtime per listener, each on a
/// thread of its own (`http.runtime = "per_core"`): a connection's request, its
/// lookup and its answer run on one thread, with no work-stealing queues between them.
///
/// Each thread runs [`serve`] on its listener; the receiver it returns resolves when
/// that accept loop has stopped (the node drains as with one listener). Connections
/// are tracked by `tracker` as usual. Each runtime is kept until `finished` is
/// cancelled, which the node does last: a Redis connection made on first use by one of
/// these runtimes runs its driver task there, and other threads may still use it.
pub fn serve_per_core(
    listeners: Vec<std::net::TcpListener>,
    app: Arc<App>,
    stop: CancellationToken,
    tracker: TaskTracker,
    cut: CancellationToken,
    finished: CancellationToken,
) -> std::io::Result<Vec<tokio::sync::oneshot::Receiver<()>>> {
    let mut stopped = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, rx) = tokio::sync::oneshot::channel();
        let (app, stop, tracker, cut, finished) = (
            app.clone(),
            stop.clone(),
            tracker.clone(),
            cut.clone(),
            finished.clone(),
        );
        std::thread::Builder::new()
            .name(format!("readtier-http-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    if let Err(e) = app.admission.attach() {
                        tracing::error!(error = %e, "cannot measure this core's queue");
                    }
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            serve(listener, app, Listener::Public, stop, tracker, cut).await
                        }
                        Err(e) => tracing::error!(error = %e, "cannot accept on this core"),
                    }
                    let _ = done.send(());
                    finished.cancelled().await;
                });
            })?;
        stopped.push(rx);
    }
    Ok(stopped)
}
