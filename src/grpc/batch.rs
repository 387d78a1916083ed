//! `BatchGetEntitlementsResponse`, encoded straight from the L1 entries.
//!
//! Built as generated messages, a batch of 100 L1 hits cost about 0.9 µs of server CPU
//! per member (docs/PERFORMANCE.md, "gRPC (issue 13)"), most of it the ten strings each
//! `Entitlement` copies out of the record and its plan, then frees. This type is the
//! response message instead (`extern_path` in build.rs): it holds the entries and the
//! snapshot, and writes the wire format from them, borrowing every string. The bytes
//! are exactly prost's for the same `Entitlement` ([`super::convert::entitlement`]); a unit
//! test holds them equal, so the two renderings cannot drift.

use std::sync::Arc;

use bytes::{Buf, BufMut};
use prost::encoding::{
    encode_key, encode_varint, encoded_len_varint, key_len, skip_field, DecodeContext, WireType,
};

use crate::catalog::{clock_ms, MemberPrice, Snapshot};
use crate::lookup::{Entry, ServedFrom};
use crate::member::{self, Member};
use crate::plan::Plan;

/// One result per id asked, in order, and the snapshot they were answered with.
#[derive(Default)]
pub struct BatchAnswer {
    results: Vec<Row>,
    snapshot: Option<Arc<Snapshot>>,
    /// The instant every member's price is taken at (ms since the epoch).
    now: i64,
}

/// One `EntitlementResult`, with its lengths worked out once (`encoded_len` and
/// `encode_raw` both need them).
struct Row {
    id: u64,
    entry: Entry,
    from: ServedFrom,
    /// The `EntitlementResult`'s length, and its `Entitlement`'s (0: unknown member).
    len: usize,
    entitlement_len: usize,
    /// The member's plan in the answer's snapshot ([`Snapshot::plan_index`]), found
    /// once for both passes.
    plan: Option<usize>,
}

impl std::fmt::Debug for BatchAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchAnswer")
            .field("results", &self.results.len())
            .finish()
    }
}

impl BatchAnswer {
    pub fn new(ids: &[u64], found: Vec<(Entry, ServedFrom)>, snapshot: Arc<Snapshot>) -> Self {
        let now = clock_ms();
        let results = ids
            .iter()
            .zip(found)
            .map(|(id, (entry, from))| {
                let plan = entry
                    .member
                    .as_ref()
                    .and_then(|m| snapshot.plan_index(&m.plan_id));
                let (len, entitlement_len) = result_len(&snapshot, *id, &entry, from, plan, now);
                Row {
                    id: *id,
                    entry,
                    from,
                    len,
                    entitlement_len,
                    plan,
                }
            })
            .collect();
        BatchAnswer {
            results,
            snapshot: Some(snapshot),
            now,
        }
    }

    fn catalog_version(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.version())
    }
}

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_str_always(tag, s, buf);
    }
}

/// An `optional` string: written when present, even empty.
fn put_str_always(tag: u32, s: &str, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.put_slice(s.as_bytes());
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_varint(tag: u32, v: u64, buf: &mut impl BufMut) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// One member's `Entitlement`, as [`super::convert::entitlement`] builds it.
struct Ent<'a> {
    m: &'a Member,
    plan: Option<&'a Plan>,
    can_stream: bool,
    from: &'static str,
    catalog_version: u64,
    price: Option<MemberPrice<'a>>,
}

impl<'a> Ent<'a> {
    /// `plan`: the member's plan's index in `snapshot`, if it offers it.
    fn new(
        m: &'a Member,
        snapshot: &'a Snapshot,
        from: ServedFrom,
        plan: Option<usize>,
        now: i64,
    ) -> Ent<'a> {
        let plan = plan.and_then(|i| snapshot.plan_at(i)).map(|e| &e.plan);
        Ent {
            m,
            plan,
            can_stream: member::standing(m, plan).is_ok(),
            from: from.as_str(),
            catalog_version: snapshot.version(),
            price: snapshot.member_price(m, now).0,
        }
    }

    fn price_len(&self) -> Option<usize> {
        self.price
            .map(|p| str_len(1, p.amount) + str_len(2, p.currency) + str_len(3, p.source()))
    }

    fn len(&self) -> usize {
        let (m, p) = (self.m, self.plan);
        varint_len(1, m.id)
            + str_len(2, m.status.as_str())
            + str_len(3, &m.plan_id)
            + str_len(4, &m.country)
            + varint_len(5, self.can_stream as u64)
            + varint_len(6, p.map_or(0, |p| p.max_streams) as u64)
            + p.map_or(0, |p| message_len(7, p.max_resolution.len()))
            + varint_len(8, p.map_or(0, |p| p.download_devices) as u64)
            + p.map_or(0, |p| {
                p.device_classes
                    .iter()
                    .map(|d| message_len(9, d.len()))
                    .sum()
            })
            + varint_len(10, m.version as u64)
            + str_len(11, self.from)
            + varint_len(12, self.catalog_version)
            + self.price_len().map_or(0, |n| message_len(13, n))
    }

    fn put(&self, buf: &mut impl BufMut) {
        let (m, p) = (self.m, self.plan);
        put_varint(1, m.id, buf);
        put_str(2, m.status.as_str(), buf);
        put_str(3, &m.plan_id, buf);
        put_str(4, &m.country, buf);
        put_varint(5, self.can_stream as u64, buf);
        put_varint(6, p.map_or(0, |p| p.max_streams) as u64, buf);
        if let Some(p) = p {
            put_str_always(7, &p.max_resolution, buf);
        }
        put_varint(8, p.map_or(0, |p| p.download_devices) as u64, buf);
        if let Some(p) = p {
            for d in &p.device_classes {
                put_str_always(9, d, buf);
            }
        }
        // int64 is written as its two's complement, as prost does.
        put_varint(10, m.version as u64, buf);
        put_str(11, self.from, buf);
        put_varint(12, self.catalog_version, buf);
        if let (Some(p), Some(n)) = (self.price, self.price_len()) {
            encode_key(13, WireType::LengthDelimited, buf);
            encode_varint(n as u64, buf);
            put_str(1, p.amount, buf);
            put_str(2, p.currency, buf);
            put_str(3, p.source(), buf);
        }
    }
}

const UNKNOWN: &str = "unknown-member";

/// One `EntitlementResult`'s length, and its entitlement's (0 when unknown).
fn result_len(
    snapshot: &Snapshot,
    id: u64,
    entry: &Entry,
    from: ServedFrom,
    plan: Option<usize>,
    now: i64,
) -> (usize, usize) {
    match entry.member.as_ref() {
        Some(m) => {
            let inner = Ent::new(m, snapshot, from, plan, now).len();
            (
                varint_len(1, id) + message_len(2, inner) + str_len(4, from.as_str()),
                inner,
            )
        }
        None => (
            varint_len(1, id) + str_len(3, UNKNOWN) + str_len(4, from.as_str()),
            0,
        ),
    }
}

impl prost::Message for BatchAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let Some(snapshot) = self.snapshot.as_deref() else {
            return;
        };
        for row in &self.results {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(row.len as u64, buf);
            put_varint(1, row.id, buf);
            match row.entry.member.as_ref() {
                Some(m) => {
                    encode_key(2, WireType::LengthDelimited, buf);
                    encode_varint(row.entitlement_len as u64, buf);
                    Ent::new(m, snapshot, row.from, row.plan, self.now).put(buf);
                }
                None => put_str(3, UNKNOWN, buf),
            }
            put_str(4, row.from.as_str(), buf);
        }
        put_varint(2, self.catalog_version(), buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever encoded by this server; a decoder has nothing to keep.
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.results
            .iter()
            .map(|row| message_len(1, row.len))
            .sum::<usize>()
            + varint_len(2, self.catalog_version())
    }

    fn clear(&mut self) {
        self.results.clear();
        self.snapshot = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::convert;
    use super::*;
    use crate::lookup::Cached;
    use crate::member::Status;
    use crate::plan::CatalogData;
    use prost::Message;

    fn entry(id: u64, status: Status, plan: &str, version: i64) -> Entry {
        Arc::new(Cached::new(
            Some(Member {
                id,
                status,
                plan_id: plan.into(),
                country: "US".into(),
                version,
                price_lock: None,
            }),
            version,
            ServedFrom::L1,
        ))
    }

    #[test]
    fn entitlements_encode_as_prost_encodes_the_message() {
        let snapshot = Arc::new(Snapshot::build(&CatalogData::reference().unwrap()));
        let cases = [
            entry(1, Status::Active, "premium", 7),
            entry(2, Status::OnHold, "basic", 1 << 40),
            entry(3, Status::Grace, "no-such-plan", 1),
            entry(u64::MAX >> 1, Status::Cancelled, "", 0),
            entry(5, Status::Active, "mobile", -3),
            // A locked price (grandfathering) instead of the catalog's.
            Arc::new(Cached::new(
                Some(Member {
                    price_lock: Some(Box::new(crate::member::PriceLock {
                        amount: crate::plan::Price::parse("9.99").unwrap(),
                        currency: "USD".into(),
                        until_ms: None,
                    })),
                    ..entry(6, Status::Active, "premium", 2)
                        .member
                        .clone()
                        .unwrap()
                }),
                2,
                ServedFrom::L1,
            )),
        ];
        let now = clock_ms();
        for e in &cases {
            for from in [ServedFrom::L1, ServedFrom::L2, ServedFrom::Store] {
                let m = e.member.as_ref().unwrap();
                let mut ours = Vec::new();
                let plan = snapshot.plan_index(&m.plan_id);
                let ent = Ent::new(m, &snapshot, from, plan, now);
                ent.put(&mut ours);
                let theirs = convert::entitlement(m, &snapshot, from, now);
                if m.id == 6 {
                    let p = theirs.price.as_ref().expect("a locked price");
                    assert_eq!((p.amount.as_str(), p.source.as_str()), ("9.99", "locked"));
                } else if m.id == 1 {
                    let p = theirs.price.as_ref().expect("the catalog price");
                    assert_eq!((p.currency.as_str(), p.source.as_str()), ("USD", "catalog"));
                }
                let theirs = theirs.encode_to_vec();
                assert_eq!(ours, theirs, "{m:?}");
                assert_eq!(ent.len(), theirs.len());
            }
        }
        // The whole answer decodes as the generated response would (field by field).
        let unknown: Entry = Arc::new(Cached::new(None, 0, ServedFrom::Store));
        let ids = [1, 9, 2];
        let found = vec![
            (cases[0].clone(), ServedFrom::L1),
            (unknown, ServedFrom::Store),
            (cases[1].clone(), ServedFrom::L2),
        ];
        let answer = BatchAnswer::new(&ids, found, snapshot.clone());
        let bytes = answer.encode_to_vec();
        assert_eq!(bytes.len(), answer.encoded_len());
        #[derive(Clone, PartialEq, prost::Message)]
        struct Result {
            #[prost(uint64, tag = "1")]
            member_id: u64,
            #[prost(message, optional, tag = "2")]
            entitlement: Option<super::super::pb::Entitlement>,
            #[prost(string, tag = "3")]
            error: String,
            #[prost(string, tag = "4")]
            served_from: String,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct Response {
            #[prost(message, repeated, tag = "1")]
            results: Vec<Result>,
            #[prost(uint64, tag = "2")]
            catalog_version: u64,
        }
        let r = Response::decode(&bytes[..]).unwrap();
        assert_eq!(r.catalog_version, snapshot.version());
        assert_eq!(
            r.results.iter().map(|x| x.member_id).collect::<Vec<_>>(),
            ids
        );
        assert_eq!(
            r.results[0].entitlement,
            Some(convert::entitlement(
                cases[0].member.as_ref().unwrap(),
                &snapshot,
                ServedFrom::L1,
                answer.now,
            ))
        );
        assert_eq!(r.results[1].entitlement, None);
        assert_eq!(r.results[1].error, "unknown-member");
        assert_eq!(r.results[1].served_from, "store");
        assert_eq!(r.results[2].served_from, "l2");
    }
}
