//! Measures Redis memory per cached member for the tier's encoding and two rejected
//! ones, on a private redis-server this program starts (and stops).
//!
//! `cargo run --release --example l2_memory -- [members]` (default 200000).
//!
//! Encodings:
//! - `bucketed hash` (chosen): 100 members per hash, field = id % 100, value
//!   `version|status|country|plan` (what `readtier::tier::encoding` writes), with a TTL
//!   on each bucket;
//! - `key per member`: a string key `h:{id}` per member with the same value and a TTL;
//! - `hash per member`: a hash `m:{id}` with fields status, plan, country, version and
//!   a TTL (the obvious layout).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use readtier::member::Member;
use readtier::plan::CatalogData;
use readtier::store::seed::MemberGenerator;
use readtier::tier::encoding::{encode, locate, TierEntry};

async fn used_memory(c: &mut redis::aio::MultiplexedConnection) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut c)
        .await
        .unwrap();
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let gen = MemberGenerator::new(&CatalogData::reference().unwrap()).unwrap();
    let members: Vec<Member> = (1..=n)
        .map(|id| {
            let (id, status, plan_id, country) = gen.member(id);
            Member {
                id,
                status,
                plan_id,
                country,
                version: 3,
                price_lock: None,
            }
        })
        .collect();
    println!("redis {version}, {n} members, synthetic mix from the reference catalog");
    println!("{:<18} {:>14} {:>10}", "encoding", "bytes/member", "keys");
    for encoding in ["bucketed hash", "key per member", "hash per member"] {
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
        let before = used_memory(&mut c).await;
        for chunk in members.chunks(1000) {
            let mut p = redis::pipe();
            for m in chunk {
                let value = encode(&TierEntry::Member(m.clone()));
                match encoding {
                    "bucketed hash" => {
                        let (key, field) = locate("rt:", 100, m.id);
                        p.cmd("HSET").arg(&key).arg(field).arg(value).ignore();
                        p.cmd("EXPIRE").arg(&key).arg(86400).ignore();
                    }
                    "key per member" => {
                        p.cmd("SET")
                            .arg(format!("rt:m:{}", m.id))
                            .arg(value)
                            .arg("EX")
                            .arg(86400)
                            .ignore();
                    }
                    _ => {
                        let key = format!("rt:m:{}", m.id);
                        p.cmd("HSET")
                            .arg(&key)
                            .arg("status")
                            .arg(m.status.as_str())
                            .arg("plan")
                            .arg(&m.plan_id)
                            .arg("country")
                            .arg(&m.country)
                            .arg("version")
                            .arg(m.version)
                            .ignore();
                        p.cmd("EXPIRE").arg(&key).arg(86400).ignore();
                    }
                }
            }
            let _: () = p.query_async(&mut c).await.unwrap();
        }
        let after = used_memory(&mut c).await;
        let keys: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
        println!(
            "{:<18} {:>14.1} {:>10}",
            encoding,
            (after - before) as f64 / n as f64,
            keys
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
