//! Generated requests against a real node over HTTP: 100,000 inputs across the path,
//! the query, the authorize body and the headers. Every one must get a well-formed
//! answer in time — a 2xx, a 304, or a 4xx problem JSON whose `status` matches — and
//! never a panic, a hang or a 5xx.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};

/// Cases per property (four properties: 100,000 in all).
const CASES: u32 = 25_000;

/// A blocking keep-alive client that reconnects when the server closes.
struct Client {
    addr: std::net::SocketAddr,
    conn: Option<TcpStream>,
}

/// One parsed answer.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
    close: bool,
}

impl Client {
    fn send(&mut self, request: &[u8]) -> Answer {
        for attempt in 0..2 {
            if self.conn.is_none() {
                let s = TcpStream::connect(self.addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.set_nodelay(true).unwrap();
                self.conn = Some(s);
            }
            match self.try_send(request) {
                Ok(a) => {
                    if a.close {
                        self.conn = None;
                    }
                    return a;
                }
                // The server closed a kept-alive connection between requests: once more.
                Err(e) if attempt == 0 => {
                    let _ = e;
                    self.conn = None;
                }
                Err(e) => panic!("no answer to {:?}: {e}", String::from_utf8_lossy(request)),
            }
        }
        unreachable!()
    }

    fn try_send(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        let s = self.conn.as_mut().unwrap();
        s.write_all(request)?;
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed before an answer"));
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head[9..12].parse().unwrap();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let len: usize = header("content-length:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed mid-body"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(Answer {
            status,
            content_type: header("content-type:").unwrap_or_default(),
            body: buf[head_end..head_end + len].to_vec(),
            close: header("connection:").is_some_and(|v| v == "close"),
        })
    }
}

/// A well-formed answer: 2xx, 304, or a 4xx problem whose `status` is the status.
fn check(a: &Answer, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        (200..300).contains(&a.status) || a.status == 304 || (400..500).contains(&a.status),
        "{what}: status {}",
        a.status
    );
    if a.status >= 400 {
        prop_assert_eq!(&a.content_type, "application/problem+json", "{}", what);
        let v: serde_json::Value = serde_json::from_slice(&a.body)
            .map_err(|e| TestCaseError::fail(format!("{what}: problem body: {e}")))?;
        prop_assert_eq!(v["status"].as_u64(), Some(u64::from(a.status)), "{}", what);
        prop_assert!(v["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:readtier:problem:")));
    }
    Ok(())
}

fn runner() -> TestRunner {
    TestRunner::new(PropConfig {
        cases: CASES,
        failure_persistence: None,
        ..PropConfig::default()
    })
}

/// Strings matching a regular expression.
fn re(pattern: impl AsRef<str>) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern.as_ref())
        .expect("a valid regex")
        .boxed()
}

/// Path and query characters a client may send on the request line.
const URI_CHARS: &str = "[a-zA-Z0-9/%?=&._~:@!$'()*+,;-]";

#[test]
fn generated_requests_always_get_well_formed_answers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = rt.block_on(common::TestNode::start(&[]));
    // `run` takes an `Fn`: the one client sits in a RefCell.
    let c = std::cell::RefCell::new(Client {
        addr: node.addr(),
        conn: None,
    });

    // 1. Paths: anything under the API's prefixes, and anything at all.
    let path = prop_oneof![
        re(format!("/v1/members/{URI_CHARS}{{0,24}}/entitlement")),
        re(format!("/v1/members/{URI_CHARS}{{0,40}}")),
        re(format!("/v1/{URI_CHARS}{{0,40}}")),
        re(format!("/{URI_CHARS}{{0,60}}")),
        re("/v1/members/[0-9]{1,25}/entitlement"),
        re("/v1/members/-?[0-9]{1,20}/entitlement"),
    ];
    runner()
        .run(&path, |p| {
            let req = format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n");
            check(&c.borrow_mut().send(req.as_bytes()), &p)
        })
        .unwrap();

    // 2. Queries on the plans path.
    let query = prop_oneof![
        re(format!("{URI_CHARS}{{0,60}}")),
        re("country=[a-zA-Z]{0,4}"),
        re("(country=[A-Za-z%0-9]{0,5}&?){1,4}"),
    ];
    runner()
        .run(&query, |q| {
            let req = format!("GET /v1/plans?{q} HTTP/1.1\r\nHost: t\r\n\r\n");
            check(&c.borrow_mut().send(req.as_bytes()), &q)
        })
        .unwrap();

    // 3. Authorize bodies: JSON-shaped and not, numbers of every size, any device class.
    let body = prop_oneof![
        (any::<i128>(), re("[ -~]{0,40}"), any::<i64>(),).prop_map(|(id, dev, streams)| format!(
            "{{\"member_id\":{id},\"device_class\":{},\"active_streams\":{streams}}}",
            serde_json::Value::String(dev)
        )),
        (1u64..3000, re("[a-z_-]{0,40}"), 0u64..10).prop_map(|(id, dev, streams)| format!(
            "{{\"member_id\":{id},\"device_class\":\"{dev}\",\"active_streams\":{streams}}}"
        )),
        re("[ -~]{0,200}"),
        proptest::collection::vec(any::<u8>(), 0..300)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    runner()
        .run(&body, |b| {
            let req = format!(
                "POST /v1/playback/authorize HTTP/1.1\r\nHost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
                b.len()
            );
            check(&c.borrow_mut().send(req.as_bytes()), &b)
        })
        .unwrap();

    // 4. Headers: names and values of any printable shape and size, If-None-Match,
    //    Content-Type, on each route.
    let headers = (
        prop_oneof![
            Just("/v1/plans?country=US".to_string()),
            Just("/v1/members/42/entitlement".to_string()),
            Just("/v1/playback/authorize".to_string()),
        ],
        proptest::collection::vec(
            (re("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}"), re("[ -~]{0,100}")),
            0..8,
        ),
        prop_oneof![Just(None), re("[ -~]{0,40}").prop_map(Some)],
        0usize..20_000,
    );
    runner()
        .run(&headers, |(path, pairs, inm, pad)| {
            let method = if path.ends_with("authorize") {
                "POST"
            } else {
                "GET"
            };
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
            for (k, v) in &pairs {
                let k = if k.eq_ignore_ascii_case("content-length")
                    || k.eq_ignore_ascii_case("transfer-encoding")
                    || k.eq_ignore_ascii_case("host")
                {
                    "x-renamed"
                } else {
                    k.as_str()
                };
                req.push_str(&format!("{k}: {}\r\n", v.trim()));
            }
            if let Some(v) = inm {
                req.push_str(&format!("if-none-match: {}\r\n", v.trim()));
            }
            // Sometimes past the header limit (16 KiB): 431, never a crash.
            if pad > 10_000 {
                req.push_str(&format!("x-pad: {}\r\n", "a".repeat(pad)));
            }
            let body = "{\"member_id\":42,\"device_class\":\"tv\",\"active_streams\":0}";
            if method == "POST" {
                req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
            } else {
                req.push_str("\r\n");
            }
            check(&c.borrow_mut().send(req.as_bytes()), &path)
        })
        .unwrap();
    rt.block_on(node.stop());
}
