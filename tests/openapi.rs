//! The OpenAPI document (`docs/openapi.yaml`, served at `/openapi.json`) against the
//! router: the document lists exactly the routes of `http::ROUTES`, a live node serves
//! exactly those (every one answers something other than the generic 404, its
//! neighbours and the other listener do not, other methods get a 405 whose `Allow` is
//! the table's), and every problem type the code can answer is documented under the
//! status it is answered with. Schemathesis (`scripts/schemathesis.sh`, run by
//! `.ci/run`) checks the answers themselves against the document.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use readtier::http::{openapi, Listener, ROUTES};
use serde_json::Value;

const NOT_FOUND: &str = "urn:readtier:problem:not-found";
const PROBLEM_PREFIX: &str = "urn:readtier:problem:";
const OPERATIONS: [&str; 8] = [
    "get", "head", "post", "put", "delete", "patch", "options", "trace",
];

fn document() -> Value {
    serde_json::from_slice(openapi::document()).expect("the served document is JSON")
}

fn listener_name(l: Listener) -> &'static str {
    match l {
        Listener::Public => "public",
        Listener::Admin => "admin",
    }
}

/// `(METHOD, path, listener)` for every operation of the document, its listeners
/// being its tags.
fn documented_routes(doc: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in OPERATIONS {
            let Some(op) = item.get(method) else { continue };
            let tags: Vec<&str> = op["tags"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} has no tags naming its listeners"))
                .iter()
                .map(|t| t.as_str().expect("tag is a string"))
                .collect();
            assert!(
                !tags.is_empty() && tags.iter().all(|t| ["public", "admin"].contains(t)),
                "{method} {path}: tags must name its listeners (public, admin), got {tags:?}"
            );
            for tag in tags {
                out.insert((method.to_uppercase(), path.clone(), tag.to_string()));
            }
        }
    }
    out
}

fn table_routes() -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in ROUTES {
        for l in r.listeners {
            let new = out.insert((
                r.method.to_string(),
                r.path.to_string(),
                listener_name(*l).to_string(),
            ));
            assert!(new, "ROUTES lists {} {} twice", r.method, r.path);
        }
    }
    out
}

/// Follows a local `$ref` (`#/components/…`), or returns the value itself.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local $refs: {r}"));
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("$ref {r} points at nothing")),
            )
        }
        None => v,
    }
}

/// The operation object for a table row.
fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
    doc["paths"][path]
        .get(method.to_lowercase())
        .unwrap_or_else(|| panic!("{method} {path} is not in the document"))
}

/// Parameters of an operation: the path item's and its own.
fn parameters<'a>(doc: &'a Value, method: &str, path: &str) -> Vec<&'a Value> {
    let item = &doc["paths"][path];
    let op = operation(doc, method, path);
    [item.get("parameters"), op.get("parameters")]
        .into_iter()
        .flatten()
        .flat_map(|ps| ps.as_array().expect("parameters is a list"))
        .map(|p| resolve(doc, p))
        .collect()
}

fn example_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A well-formed request for a route, from the document's examples: path parameters
/// and required query parameters filled in, the request body's example sent.
fn well_formed(doc: &Value, method: &str, path: &str) -> Vec<u8> {
    let mut target = path.to_string();
    let mut query = Vec::new();
    for p in parameters(doc, method, path) {
        let name = p["name"].as_str().expect("parameter name");
        let required = p["required"].as_bool().unwrap_or(false);
        match p["in"].as_str() {
            Some("path") => {
                let ex = p.get("example").unwrap_or_else(|| {
                    panic!("{method} {path}: path parameter {name} needs an example")
                });
                target = target.replace(&format!("{{{name}}}"), &example_text(ex));
            }
            Some("query") if required => {
                let ex = p.get("example").unwrap_or_else(|| {
                    panic!("{method} {path}: required query parameter {name} needs an example")
                });
                query.push(format!("{name}={}", example_text(ex)));
            }
            _ => {}
        }
    }
    assert!(
        !target.contains('{'),
        "{method} {path}: unfilled parameter in {target}"
    );
    if !query.is_empty() {
        target = format!("{target}?{}", query.join("&"));
    }
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    let mut body = Vec::new();
    if let Some(rb) = operation(doc, method, path).get("requestBody") {
        let rb = resolve(doc, rb);
        let (media, content) = rb["content"]
            .as_object()
            .and_then(|c| c.iter().next())
            .unwrap_or_else(|| panic!("{method} {path}: request body without content"));
        let ex = content
            .get("example")
            .unwrap_or_else(|| panic!("{method} {path}: the request body needs an example"));
        body = serde_json::to_vec(ex).expect("example serializes");
        head.push_str(&format!("Content-Type: {media}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut req = head.into_bytes();
    req.extend_from_slice(&body);
    req
}

fn is_generic_not_found(r: &Resp) -> bool {
    r.status == 404
        && serde_json::from_slice::<Value>(&r.body)
            .is_ok_and(|v| v["type"].as_str() == Some(NOT_FOUND))
}

fn bare(method: &str, target: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        .into_bytes()
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_table() {
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "OpenAPI 3.1"
    );
    assert_eq!(
        doc["info"]["version"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "info.version is the crate's version"
    );
    let documented = documented_routes(&doc);
    let table = table_routes();
    let missing: Vec<_> = table.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&table).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "served but not documented: {missing:?}; documented but not in http::ROUTES: {extra:?}"
    );
    // Every route can be refused for its method or an oversized head; a public one can
    // be shed with its connection.
    for r in ROUTES {
        let responses = &operation(&doc, r.method, r.path)["responses"];
        let mut must = vec!["405", "431"];
        if r.listeners.contains(&Listener::Public) {
            must.push("503");
        }
        for status in must {
            assert!(
                responses.get(status).is_some(),
                "{} {} does not document {status}",
                r.method,
                r.path
            );
        }
        // Requests can be built from the document (panics say what is missing).
        well_formed(&doc, r.method, r.path);
    }
}

/// Every `$ref` in the document points at something.
#[test]
fn every_reference_in_the_document_resolves() {
    fn walk(doc: &Value, v: &Value, n: &mut usize) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    resolve(doc, v);
                    *n += 1;
                }
                m.values().for_each(|x| walk(doc, x, n));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(doc, x, n)),
            _ => {}
        }
    }
    let doc = document();
    let mut n = 0;
    walk(&doc, &doc, &mut n);
    assert!(n > 50, "only {n} references: is this the document?");
}

/// `(slug, status)` of every problem the code under `src/http` answers: the
/// `problem(StatusCode::X, "slug", …)` calls (as rustfmt writes them) and the static
/// problem bodies.
fn problems_in_code() -> BTreeSet<(String, u16)> {
    let mut out = BTreeSet::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    for entry in std::fs::read_dir(&dir).expect("src/http") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for (i, _) in text.match_indices("StatusCode::") {
            let rest = &text[i + "StatusCode::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            let after = rest[name.len()..].trim_start();
            let Some(after) = after.strip_prefix(',') else {
                continue;
            };
            let Some(after) = after.trim_start().strip_prefix('"') else {
                continue;
            };
            let slug: String = after.chars().take_while(|c| *c != '"').collect();
            if slug.is_empty() || !slug.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                continue;
            }
            let status = match name.as_str() {
                "BAD_REQUEST" => 400,
                "NOT_FOUND" => 404,
                "METHOD_NOT_ALLOWED" => 405,
                "CONFLICT" => 409,
                "REQUEST_TIMEOUT" => 408,
                "PAYLOAD_TOO_LARGE" => 413,
                "UNSUPPORTED_MEDIA_TYPE" => 415,
                "UNPROCESSABLE_ENTITY" => 422,
                "REQUEST_HEADER_FIELDS_TOO_LARGE" => 431,
                "INTERNAL_SERVER_ERROR" => 500,
                "SERVICE_UNAVAILABLE" => 503,
                other => panic!("{}: add StatusCode::{other} to this test", path.display()),
            };
            out.insert((slug, status));
        }
        // Static bodies: `{"type":"urn:readtier:problem:slug",…,"status":N,…}`.
        for (i, _) in text.match_indices(&format!("\\\"type\\\":\\\"{PROBLEM_PREFIX}")) {
            let rest = &text[i..];
            let slug: String = rest[rest.find(PROBLEM_PREFIX).unwrap() + PROBLEM_PREFIX.len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            let s = &rest[rest
                .find("\\\"status\\\":")
                .expect("static problem has a status")
                + "\\\"status\\\":".len()..];
            let status: u16 = s[..3].parse().expect("status");
            out.insert((slug, status));
        }
    }
    out
}

/// `(slug, status)` of every `Problem…` schema, by schema name.
fn problems_in_document(doc: &Value) -> BTreeMap<String, (String, u16)> {
    let mut out = BTreeMap::new();
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        let Some(ty) = schema["properties"]["type"]["const"].as_str() else {
            continue;
        };
        let slug = ty
            .strip_prefix(PROBLEM_PREFIX)
            .unwrap_or_else(|| panic!("{name}: problem type {ty} is not {PROBLEM_PREFIX}…"));
        let status = schema["properties"]["status"]["const"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} has no status const")) as u16;
        out.insert(name.clone(), (slug.to_string(), status));
    }
    out
}

#[test]
fn every_problem_the_code_answers_is_documented_under_its_status() {
    let doc = document();
    let code = problems_in_code();
    assert!(
        code.len() >= 15,
        "found only {code:?} in src/http: has the scan broken?"
    );
    let documented = problems_in_document(&doc);
    let doc_set: BTreeSet<(String, u16)> = documented.values().cloned().collect();
    let missing: Vec<_> = code.difference(&doc_set).collect();
    let extra: Vec<_> = doc_set.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "answered but not documented: {missing:?}; documented but never answered: {extra:?}"
    );

    // Each problem schema an operation names is under the status it carries, and
    // every problem but the generic 404 (any unknown path) is named by an operation.
    let mut used = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in OPERATIONS {
            let Some(op) = item.get(method) else { continue };
            for (status, resp) in op["responses"].as_object().expect("responses") {
                let resp = resolve(&doc, resp);
                let Some(schema) = resp.pointer("/content/application~1problem+json/schema") else {
                    continue;
                };
                let refs: Vec<&Value> = match schema.get("anyOf") {
                    Some(list) => list.as_array().expect("anyOf").iter().collect(),
                    None => vec![schema],
                };
                for r in refs {
                    let name = r["$ref"]
                        .as_str()
                        .and_then(|s| s.strip_prefix("#/components/schemas/"))
                        .unwrap_or_else(|| panic!("{method} {path} {status}: problem schemas are named Problem… components"));
                    let (slug, want) = documented
                        .get(name)
                        .unwrap_or_else(|| panic!("{name} is not a problem schema"));
                    assert_eq!(
                        status.parse::<u16>().ok(),
                        Some(*want),
                        "{method} {path}: {slug} documented under {status}"
                    );
                    used.insert(name.to_string());
                }
            }
        }
    }
    for (name, (slug, _)) in &documented {
        assert!(
            used.contains(name) || slug == "not-found",
            "{name} is named by no operation"
        );
    }
}

/// A live node serves exactly the table: each route answers on its listeners and is a
/// generic 404 on the others; neighbouring paths are 404s; other methods get a 405
/// whose `Allow` lists the table's methods for the path. Each answer's status is one
/// the operation documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_node_serves_exactly_the_documented_routes() {
    let node = TestNode::start(&[]).await;
    let doc = document();
    let addr = |l: Listener| match l {
        Listener::Public => node.running.addr,
        Listener::Admin => node.running.admin_addr,
    };
    let all = [Listener::Public, Listener::Admin];

    // The document is served on both listeners, as built.
    for l in all {
        let r = node_get(addr(l), "/openapi.json").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.body,
            openapi::document(),
            "{l:?} serves the built document"
        );
    }

    // (path, listener name) → the table's methods for it.
    let mut methods: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for r in ROUTES {
        let req = well_formed(&doc, r.method, r.path);
        for l in all {
            let resp = raw(addr(l), &req).await;
            if r.listeners.contains(&l) {
                methods
                    .entry((r.path, listener_name(l)))
                    .or_default()
                    .insert(r.method);
                assert!(
                    !is_generic_not_found(&resp),
                    "{} {} on {l:?}: the router does not serve it ({})",
                    r.method,
                    r.path,
                    String::from_utf8_lossy(&resp.body)
                );
                let documented = &operation(&doc, r.method, r.path)["responses"];
                assert!(
                    documented.get(resp.status.to_string()).is_some(),
                    "{} {} on {l:?} answered {}, which it does not document",
                    r.method,
                    r.path,
                    resp.status
                );
            } else if r.method != "HEAD" {
                assert!(
                    is_generic_not_found(&resp),
                    "{} {} on {l:?}: served, but not listed there (status {})",
                    r.method,
                    r.path,
                    resp.status
                );
            } else {
                // A HEAD answer has no body to tell the generic 404 by.
                assert_eq!(resp.status, 404, "HEAD {} on {l:?}", r.path);
            }
        }
        // Neighbours of the path are not routes, on any listener.
        let target = String::from_utf8_lossy(&req)
            .split(' ')
            .nth(1)
            .expect("request target")
            .split('?')
            .next()
            .expect("path")
            .to_string();
        for neighbour in [format!("{target}x"), format!("{target}/x")] {
            for l in all {
                let resp = raw(addr(l), &bare("GET", &neighbour)).await;
                assert!(
                    is_generic_not_found(&resp),
                    "GET {neighbour} on {l:?} is not a route, yet answered {}",
                    resp.status
                );
            }
        }
    }
    assert!(methods.len() >= 10, "{methods:?}");

    // The document's own answers are counted under a route of their own.
    let metrics = String::from_utf8(node_get(node.running.admin_addr, "/metrics").await.body)
        .expect("metrics are text");
    let served: f64 = metrics
        .lines()
        .find(|l| l.starts_with("readtier_http_requests_total{route=\"openapi\",status=\"200\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no openapi 200s counted in:\n{metrics}"));
    assert!(served >= 2.0, "counted {served} openapi answers");

    // Other methods: 405, and `Allow` is the table's.
    for ((path, name), allowed) in &methods {
        let l = all
            .iter()
            .find(|l| listener_name(**l) == *name)
            .expect("listener");
        let req = well_formed(&doc, allowed.iter().next().unwrap(), path);
        let text = String::from_utf8_lossy(&req).to_string();
        let target = text.split(' ').nth(1).expect("target").to_string();
        for other in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if allowed.contains(other) {
                continue;
            }
            let resp = raw(addr(*l), &bare(other, &target)).await;
            let p = resp.assert_problem(405);
            assert_eq!(p["type"], "urn:readtier:problem:method-not-allowed");
            let allow: BTreeSet<&str> = resp
                .header("allow")
                .unwrap_or_else(|| panic!("{other} {target} on {l:?}: 405 without Allow"))
                .split(',')
                .map(str::trim)
                .collect();
            assert_eq!(
                &allow, allowed,
                "{other} {target} on {l:?}: Allow against http::ROUTES"
            );
        }
    }
    node.stop().await;
}

async fn node_get(addr: std::net::SocketAddr, path: &str) -> Resp {
    get(addr, path, &[]).await
}
