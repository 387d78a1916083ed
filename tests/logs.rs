//! Logs and traces through the public surface: `readtier serve` as a process writing
//! JSON lines on stderr, W3C `traceparent` on the miss path, OpenTelemetry export to
//! a real OTLP/HTTP receiver on a free port, and the admin endpoints `GET
//! /admin/config` and `GET`/`PUT /admin/log-level`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::infra::*;
use common::*;
use serde_json::Value;

/// Member ids no log line may contain: ten digits each, so that no timestamp,
/// duration or port can hold one by chance.
const MEMBER_A: u64 = 7_351_946_820;
const MEMBER_B: u64 = 6_283_019_475;
const UNKNOWN: u64 = 9_182_736_450;

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

/// A trace id of its own for each use (the time and a counter): 32 hex digits.
fn fresh_trace_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!(
        "{t:016x}{:016x}",
        N.fetch_add(1, Ordering::Relaxed) | 0xabc0_0000
    )
}

async fn send(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> Resp {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw(addr, &req).await
}

/// Every line of the log, each of which must be a JSON object with the four fields
/// every line has.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {l}"));
            for field in ["timestamp", "level", "target", "message"] {
                assert!(v[field].is_string(), "line lacks {field}: {l}");
            }
            v
        })
        .collect()
}

fn access_lines(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l["target"] == "readtier::access")
        .collect()
}

async fn insert_member(schema: &PgSchema, id: u64) {
    schema
        .exec(&format!(
            "INSERT INTO memberships (member_id, status, plan_id, country) VALUES ({id}, 'active', 'standard', 'US')"
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_trace_and_never_a_secret_or_a_member_id() {
    const REDIS_SECRET: &str = "redis-Pa55word-logs";
    const PG_SECRET: &str = "pg-Pa55word-logs";
    let (schema, _store) = seeded_pg(20).await;
    insert_member(&schema, MEMBER_A).await;
    insert_member(&schema, MEMBER_B).await;
    let mut redis = RedisServer::start_with(&["--requirepass", REDIS_SECRET]);
    let store_url = schema
        .url()
        .replacen("postgres@", &format!("postgres:{PG_SECRET}@"), 1);
    assert!(store_url.contains(PG_SECRET));
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(&[
        ("READTIER_STORE_URL", store_url),
        (
            "READTIER_REDIS_URLS",
            format!("redis://:{REDIS_SECRET}@127.0.0.1:{}", redis.port),
        ),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_LOG_FORMAT", "json".into()),
        ("READTIER_LOG_ACCESS_SAMPLE", "1".into()),
        (
            "READTIER_LOG_LEVEL",
            "info,readtier=debug,tokio_postgres=warn".into(),
        ),
        // The harness sets RUST_LOG, which would win over log.level: unset it.
        ("RUST_LOG", String::new()),
    ]);

    // A miss with a trace: answered from the store, naming this node's span.
    let (t1, t2, t3) = (fresh_trace_id(), fresh_trace_id(), fresh_trace_id());
    let parent = "00f067aa0ba902b7";
    let r = get(
        node.addr,
        &format!("/v1/members/{MEMBER_A}/entitlement"),
        &[("traceparent", &traceparent(&t1, parent))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-from"), Some("store"));
    let answered = r
        .header("traceresponse")
        .expect("a miss answers traceresponse");
    assert!(answered.starts_with(&format!("00-{t1}-")), "{answered}");
    assert!(
        answered.ends_with("-01") && answered.len() == 55,
        "{answered}"
    );
    assert!(
        !answered.contains(parent),
        "this node's span, not the caller's"
    );
    // A hit: the hit path does not look at the header.
    let r = get(
        node.addr,
        &format!("/v1/members/{MEMBER_A}/entitlement"),
        &[("traceparent", &traceparent(&fresh_trace_id(), parent))],
    )
    .await;
    assert_eq!(r.header("x-served-from"), Some("l1"));
    assert_eq!(r.header("traceresponse"), None);
    // A malformed traceparent is ignored, not refused.
    let r = get(
        node.addr,
        "/v1/members/3/entitlement",
        &[("traceparent", "00-zz-yy-01")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("traceresponse"), None);

    // Errors: Redis dies; the next miss fails over to the store under its trace.
    redis.kill9();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get(
        node.addr,
        &format!("/v1/members/{MEMBER_B}/entitlement"),
        &[("traceparent", &traceparent(&t2, parent))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served-from"), Some("store"));
    // Authorize and an unknown member, with traces too.
    let body = format!("{{\"member_id\":{UNKNOWN},\"device_class\":\"tv\",\"active_streams\":0}}");
    let mut req = format!(
        "POST /v1/playback/authorize HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\ntraceparent: {}\r\nContent-Length: {}\r\n\r\n",
        traceparent(&t3, parent),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    let r = raw(node.addr, &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["reason"], "not_a_member");
    assert!(r.header("traceresponse").unwrap().contains(&t3));
    let r = get(
        node.addr,
        &format!("/v1/members/{UNKNOWN}/entitlement"),
        &[],
    )
    .await;
    assert_eq!(r.status, 404);

    node.signal("TERM");
    node.wait_exit(Duration::from_secs(15));
    let log = node.stderr.lock().unwrap().clone();
    let lines = json_lines(&log);
    let access = access_lines(&lines);
    assert!(access.len() >= 6, "one access line per request: {log}");
    for a in &access {
        for field in ["method", "route", "status", "duration_us", "served_from"] {
            assert!(
                !a["fields"][field].is_null(),
                "access line lacks {field}: {a}"
            );
        }
    }
    let first = access
        .iter()
        .find(|a| a["fields"]["trace_id"] == t1.as_str())
        .unwrap_or_else(|| panic!("no access line names the trace: {log}"));
    assert_eq!(first["fields"]["route"], "entitlement");
    assert_eq!(first["fields"]["method"], "GET");
    assert_eq!(first["fields"]["status"], 200);
    assert_eq!(first["fields"]["served_from"], "store");
    assert!(access
        .iter()
        .any(|a| a["fields"]["served_from"] == "l1" && a["fields"]["trace_id"].is_null()));
    assert!(access
        .iter()
        .any(|a| a["fields"]["route"] == "authorize" && a["fields"]["trace_id"] == t3.as_str()));
    // The lines written while the dead Redis was read carry the request's trace.
    let traced: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] != "readtier::access" && l["trace_id"] == t2.as_str())
        .collect();
    assert!(
        !traced.is_empty(),
        "no line written under the miss names its trace: {log}"
    );
    assert!(traced
        .iter()
        .all(|l| l["span_id"].is_string() && l["spans"][0] == "member_miss"));
    for secret in [REDIS_SECRET, PG_SECRET] {
        assert!(
            !log.contains(secret),
            "a password reached the log: {}",
            log.lines().find(|l| l.contains(secret)).unwrap()
        );
    }
    for id in [MEMBER_A, MEMBER_B, UNKNOWN] {
        let id = id.to_string();
        assert!(
            !log.contains(&id),
            "a member id reached the log: {}",
            log.lines().find(|l| l.contains(&id)).unwrap()
        );
    }
}

/// A real OTLP/HTTP receiver: a hyper server on a free port that keeps the body of
/// every `POST /v1/traces` and answers 200.
struct Receiver {
    addr: std::net::SocketAddr,
    bodies: Arc<Mutex<Vec<bytes::Bytes>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies: Arc<Mutex<Vec<bytes::Bytes>>> = Arc::default();
        let keep = bodies.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let keep = keep.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let keep = keep.clone();
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await?.to_bytes();
                                let status = if path == "/v1/traces" {
                                    keep.lock().unwrap().push(body);
                                    200
                                } else {
                                    404
                                };
                                let mut resp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::new(),
                                ));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                resp.headers_mut().insert(
                                    "content-type",
                                    hyper::header::HeaderValue::from_static(
                                        "application/x-protobuf",
                                    ),
                                );
                                Ok::<_, hyper::Error>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, bodies }
    }

    /// Every span received: (resource's service.name, span).
    fn spans(&self) -> Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)> {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let mut out = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
            for rs in req.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        out.push((service.clone(), span));
                    }
                }
            }
        }
        out
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_exported_over_otlp_as_a_child_of_the_callers_span() {
    let receiver = Receiver::start().await;
    let (schema, _store) = seeded_pg(20).await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::start(&[
        ("READTIER_STORE_URL", schema.url()),
        ("READTIER_REDIS_URLS", redis.url()),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        (
            "READTIER_OTEL_ENDPOINT",
            format!("http://{}", receiver.addr),
        ),
        ("READTIER_OTEL_SERVICE_NAME", "readtier-under-test".into()),
    ]);
    let trace = fresh_trace_id();
    let parent = "b7ad6b7169203331";
    let r = get(
        node.addr,
        "/v1/members/7/entitlement",
        &[("traceparent", &traceparent(&trace, parent))],
    )
    .await;
    assert_eq!(r.status, 200);
    let answered = r.header("traceresponse").unwrap().to_string();
    let our_span = &answered[36..52];
    // A hit makes no span, whatever it carries; a miss without a trace starts none
    // (otel.sample_ratio is 0 by default).
    let r = get(
        node.addr,
        "/v1/members/7/entitlement",
        &[("traceparent", &traceparent(&fresh_trace_id(), parent))],
    )
    .await;
    assert_eq!(r.header("x-served-from"), Some("l1"));
    assert_eq!(
        get(node.addr, "/v1/members/8/entitlement", &[])
            .await
            .status,
        200
    );
    // Shutting down flushes what the batch has not exported yet.
    node.signal("TERM");
    node.wait_exit(Duration::from_secs(15));

    let spans = receiver.spans();
    assert!(!spans.is_empty(), "nothing was exported");
    assert!(spans
        .iter()
        .all(|(service, _)| service.contains("readtier-under-test")));
    let misses: Vec<_> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "member_miss")
        .collect();
    assert_eq!(misses.len(), 1, "one traced miss: {spans:?}");
    let miss = misses[0];
    assert_eq!(miss.trace_id, unhex(&trace));
    assert_eq!(
        miss.parent_span_id,
        unhex(parent),
        "a child of the caller's span"
    );
    assert_eq!(
        miss.span_id,
        unhex(our_span),
        "traceresponse names the exported span"
    );
    // The Redis read and the store read are in the same trace, beneath the miss.
    let by_id: std::collections::HashMap<Vec<u8>, &opentelemetry_proto::tonic::trace::v1::Span> =
        spans.iter().map(|(_, s)| (s.span_id.clone(), s)).collect();
    let under_miss = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
        let mut at = s;
        for _ in 0..8 {
            if at.parent_span_id == miss.span_id {
                return true;
            }
            match by_id.get(&at.parent_span_id) {
                Some(p) => at = p,
                None => return false,
            }
        }
        false
    };
    for name in ["member_load", "redis.get", "store.read_member"] {
        let s = spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span exported: {spans:?}"));
        assert_eq!(s.trace_id, unhex(&trace), "{name}");
        assert!(under_miss(s), "{name} is not beneath the miss span");
    }
    assert!(
        spans.iter().all(|(_, s)| s.trace_id == unhex(&trace)),
        "only the caller's trace was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_config_names_each_keys_layer_and_hides_every_secret() {
    const REDIS_SECRET: &str = "redis-Pa55word-config";
    const PG_SECRET: &str = "pg-Pa55word-config";
    let (schema, _store) = seeded_pg(10).await;
    let redis = RedisServer::start_with(&["--requirepass", REDIS_SECRET]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readtier.toml");
    std::fs::write(
        &file,
        format!(
            "redis_urls = \"a=redis://:{REDIS_SECRET}@127.0.0.1:{}\"\n[l1]\nttl = \"30s\"\n",
            redis.port
        ),
    )
    .unwrap();
    let store_url = schema
        .url()
        .replacen("postgres@", &format!("postgres:{PG_SECRET}@"), 1);
    let node = NodeProcess::start(&[
        ("READTIER_CONFIG", file.display().to_string()),
        ("READTIER_STORE_URL", store_url),
        ("READTIER_REDIS_PREFIX", format!("{}:", schema.name)),
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_LOG_FORMAT", "json".into()),
    ]);
    let r = get(node.admin, "/admin/config", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    for secret in [REDIS_SECRET, PG_SECRET] {
        assert!(!text.contains(secret), "a secret in /admin/config: {text}");
    }
    let keys = &r.json()["keys"];
    let key = |k: &str| keys[k].clone();
    assert_eq!(key("l1.ttl")["value"], "30s");
    assert_eq!(key("l1.ttl")["layer"], "file");
    assert_eq!(key("l1.ttl")["source"], file.display().to_string());
    assert_eq!(key("redis_urls")["layer"], "file");
    assert_eq!(
        key("redis_urls")["value"],
        format!("a=redis://:***@127.0.0.1:{}", redis.port)
    );
    assert_eq!(key("store_url")["layer"], "env");
    assert_eq!(
        key("store_url")["source"],
        "environment variable READTIER_STORE_URL"
    );
    assert!(key("store_url")["value"]
        .as_str()
        .unwrap()
        .starts_with("postgres://postgres:***@"));
    assert_eq!(key("log.format")["value"], "json");
    assert_eq!(key("log.format")["layer"], "env");
    assert_eq!(key("l2.timeout")["value"], "50ms");
    assert_eq!(key("l2.timeout")["layer"], "default");
    assert_eq!(key("l2.timeout")["source"], "config/default.toml");
    assert_eq!(
        key("l1.capacity")["value"],
        1_000_000,
        "typed values stay typed"
    );
    assert_eq!(key("http.adaptive_waiting")["value"], true);
    // Every key of the default file is listed, and nothing else.
    let all = readtier::config::Config::from_layers(None, &[]).unwrap();
    let listed: Vec<&String> = keys.as_object().unwrap().keys().collect();
    let known: Vec<&String> = all.provenance.keys.iter().map(|k| &k.key).collect();
    assert_eq!(listed, known);
    for k in keys.as_object().unwrap().values() {
        assert!(["default", "file", "env"].contains(&k["layer"].as_str().unwrap()));
    }
    // GET only; admin listener only.
    let r = send(node.admin, "POST", "/admin/config", b"{}").await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    get(node.addr, "/admin/config", &[])
        .await
        .assert_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_changes_at_run_time_and_bad_filters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&[
        ("READTIER_DATA_DIR", dir.path().display().to_string()),
        ("READTIER_SEED_MEMBERS", "100".into()),
        ("READTIER_LOG_FORMAT", "json".into()),
        ("READTIER_LOG_ACCESS_SAMPLE", "1.0".into()),
        ("READTIER_LOG_LEVEL", "warn".into()),
        ("RUST_LOG", String::new()),
    ]);
    let r = get(node.admin, "/admin/log-level", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"filter": "warn"}));
    let access_count = || access_lines(&json_lines(&node.stderr.lock().unwrap())).len();
    // At warn, access lines (INFO) are filtered out.
    assert_eq!(
        get(node.addr, "/v1/plans?country=US", &[]).await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(access_count(), 0);

    let r = send(
        node.admin,
        "PUT",
        "/admin/log-level",
        br#"{"filter":"warn,readtier::access=info"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        serde_json::json!({"filter": "warn,readtier::access=info", "previous": "warn"})
    );
    assert_eq!(
        get(node.addr, "/v1/plans?country=US", &[]).await.status,
        200
    );
    // The PUT's own answer is the first line written under the new filter.
    eventually(
        Duration::from_secs(5),
        "access lines once enabled",
        || async { (access_count() >= 2).then_some(()) },
    )
    .await;
    let lines = json_lines(&node.stderr.lock().unwrap());
    let access = access_lines(&lines);
    assert_eq!(access[0]["fields"]["route"], "admin");
    assert_eq!(access[0]["fields"]["method"], "PUT");
    assert_eq!(access[1]["fields"]["route"], "plans");
    assert_eq!(access[1]["fields"]["served_from"], "snapshot");
    assert_eq!(access[1]["fields"]["status"], 200);
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "log filter changed" && l["level"] == "WARN"),
        "the change itself is logged"
    );

    // A level name; the driver stays at warn.
    let r = send(
        node.admin,
        "PUT",
        "/admin/log-level",
        br#"{"level":"DEBUG"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["filter"], "debug,tokio_postgres=warn");
    assert_eq!(r.json()["previous"], "warn,readtier::access=info");
    let r = get(node.admin, "/admin/log-level", &[]).await;
    assert_eq!(r.json()["filter"], "debug,tokio_postgres=warn");

    // Bad values are 400 problems, and change nothing.
    for (body, kind) in [
        (&br#"{"level":"loud"}"#[..], "invalid-log-level"),
        (br#"{"filter":"info,readtier=loud"}"#, "invalid-log-filter"),
        (br#"{"filter":"=info"}"#, "invalid-log-filter"),
        (b"debug", "malformed-body"),
        (b"{}", "malformed-body"),
        (br#"{"level":"info","filter":"info"}"#, "malformed-body"),
        (br#"{"levl":"info"}"#, "malformed-body"),
        (br#"{"level":3}"#, "malformed-body"),
    ] {
        let r = send(node.admin, "PUT", "/admin/log-level", body).await;
        let p = r.assert_problem(400);
        assert_eq!(
            p["type"],
            format!("urn:readtier:problem:{kind}"),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let r = get(node.admin, "/admin/log-level", &[]).await;
    assert_eq!(r.json()["filter"], "debug,tokio_postgres=warn");
    let big = format!("{{\"filter\":\"{}\"}}", "a".repeat(10_000));
    send(node.admin, "PUT", "/admin/log-level", big.as_bytes())
        .await
        .assert_problem(413);
    let r = send(node.admin, "DELETE", "/admin/log-level", b"").await;
    r.assert_problem(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
    send(node.addr, "PUT", "/admin/log-level", br#"{"level":"info"}"#)
        .await
        .assert_problem(404);
}

/// In a process that embeds readtier (this test binary), the subscriber is not
/// readtier's: the log level cannot be changed, and says why; the configuration is
/// still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_answers_its_config_but_not_its_log_level() {
    let node = TestNode::start(&[("READTIER_L1_TTL", "9s")]).await;
    let admin = node.running.admin_addr;
    let r = get(admin, "/admin/config", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["keys"]["l1.ttl"]["value"], "9s");
    assert_eq!(r.json()["keys"]["l1.ttl"]["layer"], "env");
    get(admin, "/admin/log-level", &[])
        .await
        .assert_problem(409);
    send(admin, "PUT", "/admin/log-level", br#"{"level":"info"}"#)
        .await
        .assert_problem(409);
    node.stop().await;
}

#[test]
fn bad_log_and_otel_settings_stop_the_start_naming_the_key() {
    for (var, value, key) in [
        ("READTIER_LOG_FORMAT", "xml", "log.format"),
        ("READTIER_LOG_LEVEL", "info,readtier=loud", "log.level"),
        ("READTIER_LOG_ACCESS_SAMPLE", "2", "log.access_sample"),
        (
            "READTIER_OTEL_ENDPOINT",
            "https://collector:4318",
            "otel.endpoint",
        ),
        ("READTIER_OTEL_SAMPLE_RATIO", "-1", "otel.sample_ratio"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_readtier"))
            .arg("migrate")
            .env("READTIER_DATA_DIR", dir.path())
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{var}={value}: {err}");
    }
}
