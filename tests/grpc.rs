//! The gRPC face against real nodes (HTTP and gRPC on port 0): every method answers
//! what the HTTP API answers, errors are status codes, deadlines and the waiting limit
//! hold, the health service follows readiness, and `WatchCatalog` (raw and through the
//! caching client) resumes from the version it holds without missing a change.

mod common;

use std::time::{Duration, Instant};

use common::infra::*;
use common::*;
use readtier_client::pb;
use readtier_client::pb::read_tier_client::ReadTierClient;
use tonic::transport::Channel;
use tonic::Code;

async fn client(node: &TestNode) -> ReadTierClient<Channel> {
    let addr = node.running.grpc_addr.expect("gRPC is on in tests");
    ReadTierClient::connect(format!("http://{addr}"))
        .await
        .expect("connects")
}

/// Opens `WatchCatalog` for these countries from `known_version` (0: nothing held).
async fn watch(
    c: &mut ReadTierClient<Channel>,
    countries: &[&str],
    known_version: u64,
) -> tonic::Streaming<pb::CatalogUpdate> {
    c.watch_catalog(pb::WatchCatalogRequest {
        countries: countries.iter().map(|s| s.to_string()).collect(),
        known_version,
    })
    .await
    .expect("the watch opens")
    .into_inner()
}

/// A client without tonic's own timer: tonic's channel gives up by itself when a
/// request's `grpc-timeout` passes (CANCELLED, "Timeout expired"), racing the node's
/// answer; this one waits for what the node says.
type Raw = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

fn raw_client(node: &TestNode) -> ReadTierClient<Raw> {
    let addr = node.running.grpc_addr.expect("gRPC is on in tests");
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    ReadTierClient::with_origin(c, format!("http://{addr}").parse().unwrap())
}

/// A request with `grpc-timeout` set (in milliseconds).
fn with_deadline<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "grpc-timeout",
        format!("{}m", d.as_millis()).parse().unwrap(),
    );
    r
}

/// The entitlement HTTP answers, with the headers' facts, as the gRPC message reads.
fn http_entitlement(r: &Resp) -> pb::Entitlement {
    let v = r.json();
    pb::Entitlement {
        member_id: v["member_id"].as_u64().unwrap(),
        status: v["status"].as_str().unwrap().into(),
        plan: v["plan"].as_str().unwrap().into(),
        country: v["country"].as_str().unwrap().into(),
        can_stream: v["can_stream"].as_bool().unwrap(),
        max_streams: v["max_streams"].as_u64().unwrap() as u32,
        max_resolution: v["max_resolution"].as_str().map(String::from),
        download_devices: v["download_devices"].as_u64().unwrap() as u32,
        device_classes: v["device_classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect(),
        version: v["version"].as_i64().unwrap(),
        served_from: r.header("x-served-from").unwrap().into(),
        catalog_version: r.header("x-catalog-version").unwrap().parse().unwrap(),
        price: (!v["price"].is_null()).then(|| pb::MemberPrice {
            amount: v["price"]["amount"].as_str().unwrap().into(),
            currency: v["price"]["currency"].as_str().unwrap().into(),
            source: v["price"]["source"].as_str().unwrap().into(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_answer_what_http_answers() {
    let node = TestNode::start(&[]).await;
    let mut c = client(&node).await;
    // The plain answer, and a visitor's with a partner's offer (the bundled example
    // rules: whatever cells and offer apply today, both faces must name the same).
    for (query, visitor, partner) in [
        ("", "", ""),
        ("&visitor=v-1&partner=tmobile", "v-1", "tmobile"),
    ] {
        let http = node.get(&format!("/v1/plans?country=US{query}")).await;
        assert_eq!(http.status, 200);
        let v = http.json();
        for asked in ["US", "us"] {
            let us = c
                .get_plans(pb::GetPlansRequest {
                    country: asked.into(),
                    visitor: visitor.into(),
                    partner: partner.into(),
                })
                .await
                .unwrap()
                .into_inner();
            let cells: Vec<serde_json::Value> = us
                .cells
                .iter()
                .map(|c| serde_json::json!({"experiment": c.experiment, "cell": c.cell}))
                .collect();
            assert_eq!(serde_json::Value::from(cells), v["cells"], "{query}");
            match &us.partner {
                Some(p) => {
                    assert_eq!(p.id, v["partner"]["id"], "{query}");
                    assert_eq!(p.name, v["partner"]["name"], "{query}");
                }
                None => assert!(v["partner"].is_null(), "{query}"),
            }
            assert_eq!(
                us.valid_until_ms == 0,
                v["valid_until"].is_null(),
                "{query}"
            );
            assert_eq!(us.country, "US");
            assert_eq!(us.currency, v["currency"]);
            assert_eq!(us.catalog_version, v["catalog_version"].as_u64().unwrap());
            assert_eq!(us.plans.len(), v["plans"].as_array().unwrap().len());
            for (p, j) in us.plans.iter().zip(v["plans"].as_array().unwrap()) {
                assert_eq!(p.id, j["id"]);
                assert_eq!(p.name, j["name"]);
                assert_eq!(p.price.as_ref().unwrap().amount, j["price"]["amount"]);
                assert_eq!(p.price.as_ref().unwrap().currency, j["price"]["currency"]);
                assert_eq!(p.max_streams as u64, j["max_streams"].as_u64().unwrap());
                assert_eq!(p.max_resolution, j["max_resolution"]);
                assert_eq!(p.ads, j["ads"]);
                assert_eq!(
                    p.device_classes.len(),
                    j["device_classes"].as_array().unwrap().len()
                );
            }
        }
    }
    // Bad variants are INVALID_ARGUMENT with the HTTP problem's detail.
    for (visitor, partner, says) in [
        ("not a visitor!", "", "visitor"),
        ("", "no-such-partner", "no-such-partner"),
    ] {
        let e = c
            .get_plans(pb::GetPlansRequest {
                country: "US".into(),
                visitor: visitor.into(),
                partner: partner.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(says), "{e:?}");
    }
    let zz = c
        .get_plans(pb::GetPlansRequest {
            country: "ZZ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(zz.code(), Code::NotFound, "{zz:?}");
    assert!(zz.message().contains("ZZ"), "{zz:?}");
    for bad in ["usa", "", "U1"] {
        let e = c
            .get_plans(pb::GetPlansRequest {
                country: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entitlement_and_authorize_answer_what_http_answers() {
    let node = TestNode::start(&[]).await;
    let mut c = client(&node).await;
    // Member 42's first read comes from the store, over gRPC; HTTP then hits L1.
    let first = c
        .get_entitlement(pb::GetEntitlementRequest { member_id: 42 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.served_from, "store");
    let http = node.get("/v1/members/42/entitlement").await;
    assert_eq!(http.status, 200);
    let mut expected = http_entitlement(&http);
    assert_eq!(expected.served_from, "l1");
    expected.served_from = "store".into();
    assert_eq!(first, expected);
    assert!(first.price.is_some(), "member 42 pays a price: {first:?}");
    let again = c
        .get_entitlement(pb::GetEntitlementRequest { member_id: 42 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.served_from, "l1");

    let unknown = c
        .get_entitlement(pb::GetEntitlementRequest {
            member_id: 999_999_999_999,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    for bad in [0, 1u64 << 63] {
        let e = c
            .get_entitlement(pb::GetEntitlementRequest { member_id: bad })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
    }

    // Authorize: the same decisions as HTTP, denials are answers.
    sql(
        &node.db(),
        "UPDATE memberships SET status='on_hold' WHERE member_id=7",
    );
    node.caught_up().await;
    for (id, device, streams) in [
        (42u64, "tv", 0u64),
        (42, "tv", 9),
        (42, "toaster", 0),
        (7, "tv", 0),
        (999_999_999_999, "tv", 0),
    ] {
        let body =
            format!(r#"{{"member_id":{id},"device_class":"{device}","active_streams":{streams}}}"#);
        let http = node.authorize(&body).await;
        assert_eq!(http.status, 200);
        let v = http.json();
        let g = c
            .authorize_playback(pb::AuthorizePlaybackRequest {
                member_id: id,
                device_class: device.into(),
                active_streams: streams,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.allowed, v["allowed"], "{body}");
        assert_eq!(g.reason, v["reason"], "{body}");
        assert_eq!(g.max_streams as u64, v["max_streams"].as_u64().unwrap());
        assert_eq!(g.max_resolution.as_deref(), v["max_resolution"].as_str());
        assert_eq!(
            g.catalog_version.to_string(),
            http.header("x-catalog-version").unwrap()
        );
        assert!(["l1", "l2", "store"].contains(&g.served_from.as_str()));
    }
    let e = c
        .authorize_playback(pb::AuthorizePlaybackRequest {
            member_id: 42,
            device_class: "TV!".into(),
            active_streams: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_equal_the_single_lookups_in_order() {
    let node = TestNode::start(&[]).await;
    let mut c = client(&node).await;
    let ids = vec![5u64, 999_999_999_999, 3, 5, 1999, 1];
    // Some in L1 before, some not: both paths of the batch.
    let _ = c
        .get_entitlement(pb::GetEntitlementRequest { member_id: 3 })
        .await
        .unwrap();
    let batch = c
        .batch_get_entitlements(pb::BatchGetEntitlementsRequest {
            member_ids: ids.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), ids.len());
    for (id, r) in ids.iter().zip(&batch.results) {
        assert_eq!(r.member_id, *id);
        let single = c
            .get_entitlement(pb::GetEntitlementRequest { member_id: *id })
            .await;
        match single {
            Ok(single) => {
                let mut single = single.into_inner();
                // Where each came from may differ (the batch filled L1).
                let mut from_batch = r.entitlement.clone().expect("an entitlement");
                assert!(r.error.is_empty());
                assert_eq!(from_batch.served_from, r.served_from);
                from_batch.served_from.clear();
                single.served_from.clear();
                assert_eq!(from_batch, single);
            }
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound);
                assert_eq!(r.error, "unknown-member");
                assert!(r.entitlement.is_none());
            }
        }
    }
    assert_eq!(batch.results[2].served_from, "l1");
    assert_eq!(
        batch.catalog_version,
        batch.results[0]
            .entitlement
            .as_ref()
            .unwrap()
            .catalog_version
    );
    // All in L1 now: the whole batch from memory.
    let hot = c
        .batch_get_entitlements(pb::BatchGetEntitlementsRequest {
            member_ids: ids.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hot.results.iter().all(|r| r.served_from == "l1"));

    // 1,000 is the most; past it, empty, or a bad id: INVALID_ARGUMENT.
    let most: Vec<u64> = (1..=1000).collect();
    let r = c
        .batch_get_entitlements(pb::BatchGetEntitlementsRequest { member_ids: most })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.results.len(), 1000);
    for (bad, says) in [
        ((1..=1001).collect::<Vec<u64>>(), "1001"),
        (vec![], "got 0"),
        (vec![1, 0], "member_ids[1]"),
    ] {
        let e = c
            .batch_get_entitlements(pb::BatchGetEntitlementsRequest { member_ids: bad })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(says), "{e:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_honoured_and_overload_is_unavailable() {
    let (schema, _store) = seeded_pg(100).await;
    let node = TestNode::start(&[
        ("READTIER_STORE_URL", &schema.url()),
        ("READTIER_HTTP_MAX_WAITING", "1"),
        ("READTIER_HTTP_REQUEST_TIMEOUT", "20s"),
    ])
    .await;
    let mut c = client(&node).await;
    let _ = c
        .get_entitlement(pb::GetEntitlementRequest { member_id: 1 })
        .await
        .unwrap();
    // A deadline of one millisecond (what gRPC core sends for anything less, rounded
    // up) on a miss: DEADLINE_EXCEEDED before the store is asked, however fast it
    // would have answered.
    let e = raw_client(&node)
        .get_entitlement(with_deadline(
            pb::GetEntitlementRequest { member_id: 5 },
            Duration::from_millis(1),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    // The store stops answering member reads.
    let locker = schema.lock_members().await;

    // A caller's deadline passes: DEADLINE_EXCEEDED from the node, on time.
    let mut raw = raw_client(&node);
    let started = Instant::now();
    let e = raw
        .get_entitlement(with_deadline(
            pb::GetEntitlementRequest { member_id: 2 },
            Duration::from_millis(300),
        ))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "{took:?}"
    );
    for req in [
        raw.batch_get_entitlements(with_deadline(
            pb::BatchGetEntitlementsRequest {
                member_ids: vec![1, 3],
            },
            Duration::from_millis(200),
        ))
        .await
        .map(|_| ())
        .unwrap_err(),
        raw.authorize_playback(with_deadline(
            pb::AuthorizePlaybackRequest {
                member_id: 4,
                device_class: "tv".into(),
                active_streams: 0,
            },
            Duration::from_millis(200),
        ))
        .await
        .map(|_| ())
        .unwrap_err(),
    ] {
        assert_eq!(req.code(), Code::DeadlineExceeded, "{req:?}");
    }

    // One miss waits (the limit is 1): the next is shed at once, UNAVAILABLE.
    let mut waiting_client = c.clone();
    let waiting = tokio::spawn(async move {
        waiting_client
            .get_entitlement(pb::GetEntitlementRequest { member_id: 5 })
            .await
    });
    // Member 5 holds the one place once the node counts one request waiting.
    let admin = node.running.admin_addr;
    eventually(
        Duration::from_secs(5),
        "member 5 to be waiting",
        || async move {
            let m = get(admin, "/metrics", &[]).await;
            String::from_utf8_lossy(&m.body)
                .lines()
                .any(|l| l == "readtier_http_waiting 1")
                .then_some(())
        },
    )
    .await;
    let started = Instant::now();
    let e = c
        .get_entitlement(pb::GetEntitlementRequest { member_id: 6 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("overloaded"), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    let shed_batch = c
        .batch_get_entitlements(pb::BatchGetEntitlementsRequest {
            member_ids: vec![1, 7],
        })
        .await
        .unwrap_err();
    assert_eq!(shed_batch.code(), Code::Unavailable);
    // Memory answers are never shed.
    let hit = c
        .get_entitlement(pb::GetEntitlementRequest { member_id: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.served_from, "l1");
    c.get_plans(pb::GetPlansRequest {
        country: "US".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    locker.release().await;
    let waited = waiting.await.unwrap().unwrap().into_inner();
    assert_eq!(waited.member_id, 5);
    assert_eq!(waited.served_from, "store");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness_and_reflection_lists_the_service() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let node = TestNode::start(&[("READTIER_HTTP_DRAIN_DELAY", "2s")]).await;
    let addr = node.running.grpc_addr.unwrap();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "readtier.v1.ReadTier"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Reflection names the service.
    {
        use futures_util::StreamExt;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let mut reflection = ServerReflectionClient::new(channel.clone());
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = reflection
            .server_reflection_info(futures_util::stream::iter([ask]))
            .await
            .unwrap()
            .into_inner();
        let first = answers.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("{first:?}")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"readtier.v1.ReadTier"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    }

    // Draining: /readyz turns 503, and health NOT_SERVING, at once.
    node.shutdown.cancel();
    eventually(Duration::from_secs(2), "health to turn NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let r = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?
                .into_inner();
            (r.status() == ServingStatus::NotServing).then_some(())
        }
    })
    .await;
    assert_eq!(get(node.running.addr, "/readyz", &[]).await.status, 503);
    node.running.wait().await;
}

/// What a caller holds after applying updates, by country.
#[derive(Default)]
struct Held {
    version: u64,
    countries: std::collections::BTreeMap<String, pb::CountryPlans>,
}

impl Held {
    fn apply(&mut self, u: pb::CatalogUpdate) {
        if u.full {
            self.countries.clear();
        }
        for c in u.countries {
            self.countries.insert(c.country.clone(), c);
        }
        for cc in u.removed {
            self.countries.remove(&cc);
        }
        self.version = u.version;
    }

    fn price(&self, cc: &str, plan: &str) -> Option<String> {
        let c = self.countries.get(cc)?;
        let p = c.plans.iter().find(|p| p.id == plan)?;
        Some(p.price.as_ref()?.amount.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_the_catalog_then_changes_and_resumes_from_known_version() {
    let node = TestNode::start(&[]).await;
    let mut c = client(&node).await;
    let mut stream = watch(&mut c, &[], 0).await;
    let mut held = Held::default();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.full);
    assert_eq!(first.countries.len(), 245);
    held.apply(first);
    let v0 = held.version;
    assert_eq!(held.price("US", "standard").as_deref(), Some("19.99"));

    // A price change in raw SQL reaches the open stream, alone.
    sql(
        &node.db(),
        "UPDATE plan_prices SET amount='20.49' WHERE country='US' AND plan_id='standard'",
    );
    let u = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the change arrives")
        .unwrap()
        .unwrap();
    assert!(!u.full);
    assert!(u.version > v0);
    let changed: Vec<_> = u.countries.iter().map(|c| c.country.as_str()).collect();
    assert_eq!(changed, ["US"]);
    held.apply(u);
    assert_eq!(held.price("US", "standard").as_deref(), Some("20.49"));
    let v1 = held.version;

    // Disconnect; three changes (one a country dropping out) while away.
    drop(stream);
    sql(
        &node.db(),
        "UPDATE plan_prices SET amount='21.99' WHERE country='US' AND plan_id='standard';
         UPDATE plan_prices SET amount='15.49' WHERE country='FR' AND plan_id='standard';
         DELETE FROM plan_prices WHERE country='JP';",
    );
    node.caught_up().await;
    // The node's HTTP answer, for comparison once resumed.
    let http_fr = node.get("/v1/plans?country=FR").await.json();
    let mut resumed = watch(&mut c, &[], v1).await;
    // The node may still be installing the last of them: read until it is current.
    let target: u64 = http_fr["catalog_version"].as_u64().unwrap();
    let first = resumed.message().await.unwrap().unwrap();
    assert!(!first.full, "a version this node built: only the changes");
    let mut names: Vec<_> = first.countries.iter().map(|c| c.country.clone()).collect();
    names.sort();
    held.apply(first);
    while held.version < target {
        let u = tokio::time::timeout(Duration::from_secs(5), resumed.message())
            .await
            .expect("the node catches up")
            .unwrap()
            .unwrap();
        held.apply(u);
    }
    assert!(names.iter().all(|n| n == "US" || n == "FR"), "{names:?}");
    assert_eq!(held.price("US", "standard").as_deref(), Some("21.99"));
    assert_eq!(held.price("FR", "standard").as_deref(), Some("15.49"));
    assert!(!held.countries.contains_key("JP"));
    assert_eq!(held.countries.len(), 244);
    // Everything held equals what GetPlans answers now.
    for (cc, plans) in &held.countries {
        let now = c
            .get_plans(pb::GetPlansRequest {
                country: cc.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(now.plans, plans.plans, "{cc}");
    }

    // Up to date: an empty, non-full update; a filter; a bad filter.
    let mut current = watch(&mut c, &["fr", "JP"], held.version).await;
    let u = current.message().await.unwrap().unwrap();
    assert!(!u.full && u.countries.is_empty() && u.removed.is_empty());
    assert_eq!(u.version, held.version);
    let only = watch(&mut c, &["fr", "JP"], 0)
        .await
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(only.full);
    assert_eq!(only.countries.len(), 1);
    assert_eq!(only.countries[0].country, "FR");
    let bad = c
        .watch_catalog(pb::WatchCatalogRequest {
            countries: vec!["FRA".into()],
            known_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    drop(current);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caching_client_follows_changes_and_reconnects_to_a_restarted_node() {
    let dir = tempfile::tempdir().unwrap();
    let start = |grpc: String| {
        let cfg = test_config(dir.path(), &[("READTIER_GRPC_LISTEN", grpc.as_str())]);
        async move {
            let shutdown = tokio_util::sync::CancellationToken::new();
            let running = readtier::node::start(cfg, shutdown.clone()).await.unwrap();
            (running, shutdown)
        }
    };
    let (running, shutdown) = start("127.0.0.1:0".into()).await;
    let grpc = running.grpc_addr.unwrap();
    let db = dir.path().join("readtier.db");

    let cache = readtier_client::CatalogCache::start(&format!("http://{grpc}"), &[]).unwrap();
    tokio::time::timeout(Duration::from_secs(10), cache.ready())
        .await
        .unwrap();
    let s = cache.staleness();
    assert!(s.connected);
    assert!(s.since_last_message.unwrap() < Duration::from_secs(6));
    let price = |cc: &str| {
        cache.plans(cc).and_then(|p| {
            p.plans
                .iter()
                .find(|p| p.id == "standard")
                .and_then(|p| p.price.clone())
                .map(|p| p.amount)
        })
    };
    assert_eq!(price("US").as_deref(), Some("19.99"));
    assert!(cache.plans("ZZ").is_none());

    sql(
        &db,
        "UPDATE plan_prices SET amount='20.49' WHERE country='US' AND plan_id='standard'",
    );
    eventually(
        Duration::from_secs(5),
        "the cache to see the change",
        || async { (price("US").as_deref() == Some("20.49")).then_some(()) },
    )
    .await;
    let before = cache.version();

    // The node goes away; the cache keeps answering, and says it is disconnected.
    shutdown.cancel();
    running.wait().await;
    eventually(Duration::from_secs(5), "the cache to notice", || async {
        (!cache.staleness().connected).then_some(())
    })
    .await;
    assert_eq!(price("US").as_deref(), Some("20.49"));
    // Changed while no node runs; a node on the same address comes back.
    sql(
        &db,
        "UPDATE plan_prices SET amount='22.99' WHERE country='US' AND plan_id='standard';
         DELETE FROM plan_prices WHERE country='JP';",
    );
    let (running, shutdown) = start(grpc.to_string()).await;
    eventually(
        Duration::from_secs(15),
        "the cache to reconnect and catch up",
        || async {
            (price("US").as_deref() == Some("22.99") && cache.staleness().connected).then_some(())
        },
    )
    .await;
    assert!(cache.version() > before);
    assert!(cache.plans("JP").is_none());
    assert!(cache.plans("FR").is_some());
    shutdown.cancel();
    running.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_trouble_is_unavailable_while_the_catalog_is_served() {
    let node = TestNode::start_store_down(77).await;
    let mut c = client(&node).await;
    let us = c
        .get_plans(pb::GetPlansRequest {
            country: "US".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(us.catalog_version, 77);
    for e in [
        c.get_entitlement(pb::GetEntitlementRequest { member_id: 42 })
            .await
            .map(|_| ())
            .unwrap_err(),
        c.authorize_playback(pb::AuthorizePlaybackRequest {
            member_id: 42,
            device_class: "tv".into(),
            active_streams: 0,
        })
        .await
        .map(|_| ())
        .unwrap_err(),
        c.batch_get_entitlements(pb::BatchGetEntitlementsRequest {
            member_ids: vec![1, 2],
        })
        .await
        .map(|_| ())
        .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }
    let first = c
        .watch_catalog(pb::WatchCatalogRequest::default())
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(first.full && first.version == 77);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_a_scheduled_change_at_its_instant_with_no_write_then() {
    let node = TestNode::start(&[]).await;
    let mut c = client(&node).await;
    // A change scheduled 1.5 s ahead, written now (the write bumps the catalog once).
    let at = readtier::catalog::clock_ms() + 1_500;
    sql(
        &node.db(),
        &format!(
            "INSERT INTO scheduled_prices VALUES ('DE', 'standard', 'EUR', '77.77', '{}')",
            readtier::plan::format_instant_ms(at)
        ),
    );
    node.caught_up().await;
    let mut stream = watch(&mut c, &["DE", "US"], 0).await;
    let mut held = Held::default();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.full);
    let mut until = first.valid_until_ms;
    held.apply(first);
    // The node's feed may build its state of the new version just after the stream
    // opened: then the next message brings DE with its new `valid_until_ms`.
    while held.countries["DE"].valid_until_ms != at {
        let u = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the new schedule arrives")
            .unwrap()
            .unwrap();
        until = u.valid_until_ms;
        held.apply(u);
    }
    assert_eq!(
        until, at,
        "the update says when the watched countries next change"
    );
    let version = held.version;
    assert_ne!(held.price("DE", "standard").as_deref(), Some("77.77"));
    assert_eq!(held.countries["DE"].valid_until_ms, at);

    // At the instant: an update of DE alone, under the same version (no write, no
    // install), never before the instant.
    let u = loop {
        let u = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the switch arrives")
            .unwrap()
            .unwrap();
        if !u.countries.is_empty() {
            break u;
        }
        // A heartbeat: nothing changed yet.
        assert_eq!(u.version, version);
    };
    let seen = readtier::catalog::clock_ms();
    assert!(seen >= at, "an update {} ms before the instant", at - seen);
    assert!(!u.full);
    assert_eq!(u.version, version);
    assert_eq!(
        u.countries
            .iter()
            .map(|c| c.country.as_str())
            .collect::<Vec<_>>(),
        ["DE"]
    );
    held.apply(u);
    assert_eq!(held.price("DE", "standard").as_deref(), Some("77.77"));
    // GetPlans agrees, and so does HTTP.
    let de = c
        .get_plans(pb::GetPlansRequest {
            country: "DE".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let p = de.plans.iter().find(|p| p.id == "standard").unwrap();
    assert_eq!(p.price.as_ref().unwrap().amount, "77.77");
    let http = node.get("/v1/plans?country=DE").await.json();
    assert!(http["plans"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "standard" && p["price"]["amount"] == "77.77"));

    // A caller resuming with that version may not have seen the switch: it is sent DE.
    let mut again = watch(&mut c, &["DE", "US"], version).await;
    let r = again.message().await.unwrap().unwrap();
    assert!(!r.full);
    assert_eq!(
        r.countries
            .iter()
            .map(|c| c.country.as_str())
            .collect::<Vec<_>>(),
        ["DE"]
    );
    node.stop().await;
}

/// Member `id`'s entitlement in a batch of it alone.
async fn batched(c: &mut ReadTierClient<Channel>, id: u64) -> pb::Entitlement {
    let r = c
        .batch_get_entitlements(pb::BatchGetEntitlementsRequest {
            member_ids: vec![id],
        })
        .await
        .unwrap()
        .into_inner();
    r.results[0].entitlement.clone().expect("a member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_answers_follow_price_and_member_changes_as_the_single_lookup_does() {
    let node = TestNode::start(&[]).await;
    let mut c = client(&node).await;
    // A member paying the catalog's price (not a locked one), its answer kept in L1:
    // the second batch is answered from the bytes the first kept.
    let mut member = None;
    for id in 1..=50u64 {
        let e = batched(&mut c, id).await;
        if e.can_stream && e.price.as_ref().is_some_and(|p| p.source == "catalog") {
            member = Some(e);
            break;
        }
    }
    let first = member.expect("a member who can stream, on the catalog's price, among 1..=50");
    let id = first.member_id;
    let mut again = batched(&mut c, id).await;
    assert_eq!(again.served_from, "l1");
    again.served_from = first.served_from.clone();
    assert_eq!(again, first);
    let single = |c: &mut ReadTierClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.get_entitlement(pb::GetEntitlementRequest { member_id: id })
                .await
                .unwrap()
                .into_inner()
        }
    };
    // Both faces agree (where it came from aside) before and after each change.
    let same = |mut a: pb::Entitlement, mut b: pb::Entitlement| {
        a.served_from.clear();
        b.served_from.clear();
        assert_eq!(a, b);
    };
    same(batched(&mut c, id).await, single(&mut c).await);

    // The member's plan changes price in its country (raw SQL): a new catalog version.
    let old = first.price.clone().unwrap().amount;
    let new = if old == "77.01" { "77.02" } else { "77.01" };
    sql(
        &node.db(),
        &format!(
            "UPDATE plan_prices SET amount='{new}' WHERE country='{}' AND plan_id='{}'",
            first.country, first.plan
        ),
    );
    let after = eventually(
        Duration::from_secs(10),
        "the batch answers the new price",
        || {
            let mut c = c.clone();
            async move {
                let e = batched(&mut c, id).await;
                (e.price.as_ref().unwrap().amount == new).then_some(e)
            }
        },
    )
    .await;
    assert!(after.catalog_version > first.catalog_version);
    assert_eq!(after.served_from, "l1", "the same L1 entry, answered anew");
    same(after.clone(), single(&mut c).await);
    let http = http_entitlement(&node.get(&format!("/v1/members/{id}/entitlement")).await);
    same(after.clone(), http);

    // The member's row changes: a new record, answered as such.
    sql(
        &node.db(),
        &format!("UPDATE memberships SET status='on_hold' WHERE member_id={id}"),
    );
    let held = eventually(
        Duration::from_secs(10),
        "the batch answers the new status",
        || {
            let mut c = c.clone();
            async move {
                let e = batched(&mut c, id).await;
                (e.status == "on_hold").then_some(e)
            }
        },
    )
    .await;
    assert!(!held.can_stream);
    assert!(held.version > after.version);
    assert_eq!(held.price, after.price);
    same(held, single(&mut c).await);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_grpc_max_connections_are_refused_while_the_open_ones_keep_working() {
    let node = TestNode::start(&[("READTIER_GRPC_MAX_CONNECTIONS", "2")]).await;
    let addr = node.running.grpc_addr.expect("gRPC is on in tests");
    let ask = |c: &mut ReadTierClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.get_entitlement(pb::GetEntitlementRequest { member_id: 42 })
                .await
                .map(|r| r.into_inner().member_id)
        }
    };
    // Two connections, each answered once (so the node has counted both).
    let mut open = vec![client(&node).await, client(&node).await];
    for c in &mut open {
        assert_eq!(ask(c).await.unwrap(), 42);
    }

    // A third: its call is answered UNAVAILABLE, and the connection closed.
    let mut third = client(&node).await;
    let refused = ask(&mut third).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "too many connections");
    // One that asks nothing is closed all the same (and, as the refused ones, took
    // no slot: see below).
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut idle, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    // Closed with unread bytes, the socket may be reset rather than ended: either.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut got),
    )
    .await
    .expect("the node closes an idle refused connection");

    // The open ones keep working.
    for c in &mut open {
        assert_eq!(ask(c).await.unwrap(), 42);
    }
    // One closes: a new connection is served again.
    open.pop();
    eventually(Duration::from_secs(10), "a slot frees up", || async {
        let mut c = ReadTierClient::connect(format!("http://{addr}"))
            .await
            .ok()?;
        ask(&mut c).await.ok()
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_version_newer_than_the_nodes_waits_until_the_node_reaches_it() {
    let node = TestNode::start(&[]).await;
    let mut c = client(&node).await;
    let v = watch(&mut c, &["US"], 0)
        .await
        .message()
        .await
        .unwrap()
        .unwrap()
        .version;
    // The caller holds v + 1, from a node further ahead than this one. Nothing is
    // changed yet, so a node that answered with its own catalog would send version v
    // (full) now; this one sends a heartbeat naming the caller's version (after
    // HEARTBEAT, 5 s) and nothing else.
    let mut ahead = watch(&mut c, &["US"], v + 1).await;
    let first = tokio::time::timeout(Duration::from_secs(30), ahead.message())
        .await
        .expect("a heartbeat")
        .unwrap()
        .unwrap();
    assert!(
        !first.full && first.countries.is_empty() && first.removed.is_empty(),
        "{first:?}"
    );
    assert_eq!(first.version, v + 1);

    // The node reaches v + 1 and passes it: the stream resumes, never older than v + 1.
    let plans_version = || async {
        let r = node.get("/v1/plans?country=US").await;
        r.header("x-catalog-version")
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    sql(
        &node.db(),
        "UPDATE plan_prices SET amount='30.01' WHERE country='US' AND plan_id='standard'",
    );
    eventually(
        Duration::from_secs(10),
        "the node reaches v + 1",
        || async { (plans_version().await > v).then_some(()) },
    )
    .await;
    sql(
        &node.db(),
        "UPDATE plan_prices SET amount='30.02' WHERE country='US' AND plan_id='standard'",
    );
    let mut held = Held {
        version: v + 1,
        ..Default::default()
    };
    while held.price("US", "standard").as_deref() != Some("30.02") {
        let u = tokio::time::timeout(Duration::from_secs(30), ahead.message())
            .await
            .expect("the change arrives")
            .unwrap()
            .unwrap();
        assert!(u.version > v, "older than the caller's version: {u:?}");
        held.apply(u);
    }
    assert!(held.version >= v + 2, "{}", held.version);
    node.stop().await;
}
