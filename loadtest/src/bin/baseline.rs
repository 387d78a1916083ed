//! The baseline: a bare hyper server that answers every request with the same bytes.
//!
//! `baseline --listen 127.0.0.1:8090 --copy http://127.0.0.1:8080/v1/plans?country=US`
//! fetches that answer once (status, headers and body) and then serves exactly those
//! bytes to every request, with the same hyper, runtime and socket settings readtier
//! uses — the ceiling readtier's hot paths are compared against.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The URL whose answer to copy.
    #[arg(long)]
    copy: String,
    /// Run on a current-thread runtime instead of the multi-thread one.
    #[arg(long)]
    current_thread: bool,
    /// Keep each request alive until its answer is built (as a real handler does),
    /// instead of dropping it unread.
    #[arg(long)]
    hold_request: bool,
    /// Make one Redis call per request before answering (the bare server of the
    /// L2-hit path): `HGET key field` on this server, over one shared pipelined
    /// connection, as readtier reads a member from its zone. Needs `--hget`.
    #[arg(long, requires = "hget")]
    redis: Option<String>,
    /// The hash and field read per request with `--redis`.
    #[arg(long, num_args = 2, value_names = ["KEY", "FIELD"])]
    hget: Option<Vec<String>>,
}

async fn fetch(url: &str) -> anyhow::Result<http::Response<Bytes>> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("http:// URL"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let stream = tokio::net::TcpStream::connect(host).await?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(if path.is_empty() { "/" } else { path })
        .header("host", host)
        .body(Empty::<Bytes>::new())?;
    let resp = s.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    Ok(http::Response::from_parts(
        parts,
        body.collect().await?.to_bytes(),
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        let template = fetch(&args.copy).await?;
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        println!(
            "baseline listening on http://{} copying {}",
            listener.local_addr()?,
            args.copy
        );
        let status = template.status();
        let headers: Vec<(http::HeaderName, http::HeaderValue)> = template
            .headers()
            .iter()
            .filter(|(k, _)| *k != http::header::DATE && *k != http::header::CONTENT_LENGTH)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let body = template.into_body();
        let hold = args.hold_request;
        let redis = match (&args.redis, &args.hget) {
            (Some(url), Some(kf)) => {
                let client = redis::Client::open(url.as_str())?;
                let conn = client.get_multiplexed_async_connection().await?;
                let mut cmd = redis::cmd("HGET");
                cmd.arg(&kf[0]).arg(&kf[1]);
                Some((conn, std::sync::Arc::new(cmd)))
            }
            _ => None,
        };
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let headers = headers.clone();
            let body = body.clone();
            let redis = redis.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut resp = http::Response::new(Full::new(body.clone()));
                    *resp.status_mut() = status;
                    for (k, v) in &headers {
                        resp.headers_mut().insert(k.clone(), v.clone());
                    }
                    let held = if hold { Some(req) } else { None };
                    let redis = redis.clone();
                    async move {
                        if let Some((mut conn, cmd)) = redis {
                            // The answer is the copied bytes whatever Redis says: the
                            // call's cost is what is measured.
                            let _: redis::RedisResult<Option<Vec<u8>>> =
                                cmd.query_async(&mut conn).await;
                        }
                        drop(held);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
