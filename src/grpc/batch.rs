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
    encode_varint, encoded_len_varint, key_len, skip_field, DecodeContext, WireType,
};

use crate::catalog::{clock_ms, Snapshot};
use crate::lookup::{Entry, ServedFrom};
use crate::member::{self, Member};
use crate::plan::Plan;

/// The results, encoded once when the answer is built: every result in order
/// (field 1 of the response, repeated), and the catalog version they were answered
/// with.
#[derive(Default)]
pub struct BatchAnswer {
    /// The results' wire bytes, keys and lengths included.
    results: Vec<u8>,
    count: usize,
    catalog_version: u64,
}

impl std::fmt::Debug for BatchAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchAnswer")
            .field("results", &self.count)
            .finish()
    }
}

impl BatchAnswer {
    /// Encodes one result per id (`found[i]` answers `ids[i]`), as
    /// [`super::convert::entitlement`] would build each, prices taken now.
    pub fn new(ids: &[u64], found: Vec<(Entry, ServedFrom)>, snapshot: Arc<Snapshot>) -> Self {
        let now = clock_ms();
        // What a plan says (fields 6 to 9), encoded once per plan, not per member.
        let mut frags: Vec<Option<Vec<u8>>> = Vec::new();
        // Each result is written into plain `Vec`s, its one-byte keys and lengths
        // inline, and each length-delimited part copied out once its length is known.
        let mut results = Vec::with_capacity(ids.len() * 160);
        let (mut one, mut ent) = (Vec::with_capacity(256), Vec::with_capacity(256));
        for (id, (entry, from)) in ids.iter().zip(found.iter()) {
            one.clear();
            put_varint(1, *id, &mut one);
            match entry.member.as_ref() {
                Some(m) => {
                    let plan = snapshot.plan_index(&m.plan_id);
                    let frag: &[u8] = match plan {
                        Some(i) => {
                            if frags.len() <= i {
                                frags.resize(i + 1, None);
                            }
                            frags[i].get_or_insert_with(|| {
                                snapshot
                                    .plan_at(i)
                                    .map(|e| plan_fragment(&e.plan))
                                    .unwrap_or_default()
                            })
                        }
                        None => &[],
                    };
                    ent.clear();
                    put_entitlement(m, &snapshot, *from, plan, frag, now, &mut ent);
                    key(2, WireType::LengthDelimited, &mut one);
                    varint(ent.len() as u64, &mut one);
                    one.extend_from_slice(&ent);
                }
                None => put_str(3, UNKNOWN, &mut one),
            }
            put_str(4, from.as_str(), &mut one);
            key(1, WireType::LengthDelimited, &mut results);
            varint(one.len() as u64, &mut results);
            results.extend_from_slice(&one);
        }
        BatchAnswer {
            results,
            count: ids.len(),
            catalog_version: snapshot.version(),
        }
    }
}

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// A varint, its one-byte case inline (every key and nearly every length here).
#[inline(always)]
fn varint(v: u64, out: &mut Vec<u8>) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        encode_varint(v, out);
    }
}

/// A field's key; every tag here is below 16, so one byte.
#[inline(always)]
fn key(tag: u32, wire: WireType, out: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | wire as u32), out);
}

fn put_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
    if !s.is_empty() {
        put_str_always(tag, s, buf);
    }
}

/// An `optional` string: written when present, even empty.
fn put_str_always(tag: u32, s: &str, buf: &mut Vec<u8>) {
    key(tag, WireType::LengthDelimited, buf);
    varint(s.len() as u64, buf);
    buf.put_slice(s.as_bytes());
}

fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        key(tag, WireType::Varint, buf);
        varint(v, buf);
    }
}

/// One member's `Entitlement`, as [`super::convert::entitlement`] builds it: `plan` is
/// the member's plan's index in `snapshot` (if it offers it) and `frag` that plan's
/// [`plan_fragment`] (empty without a plan); the price is taken at `now`.
fn put_entitlement(
    m: &Member,
    snapshot: &Snapshot,
    from: ServedFrom,
    plan: Option<usize>,
    frag: &[u8],
    now: i64,
    buf: &mut Vec<u8>,
) {
    let plan = plan.and_then(|i| snapshot.plan_at(i)).map(|e| &e.plan);
    debug_assert_eq!(frag.is_empty(), plan.is_none());
    put_varint(1, m.id, buf);
    put_str(2, m.status.as_str(), buf);
    put_str(3, &m.plan_id, buf);
    put_str(4, &m.country, buf);
    put_varint(5, u64::from(member::standing(m, plan).is_ok()), buf);
    buf.extend_from_slice(frag);
    // int64 is written as its two's complement, as prost does.
    put_varint(10, m.version as u64, buf);
    put_str(11, from.as_str(), buf);
    put_varint(12, snapshot.version(), buf);
    if let Some(p) = snapshot.member_price(m, now).0 {
        let len = str_len(1, p.amount) + str_len(2, p.currency) + str_len(3, p.source());
        key(13, WireType::LengthDelimited, buf);
        varint(len as u64, buf);
        put_str(1, p.amount, buf);
        put_str(2, p.currency, buf);
        put_str(3, p.source(), buf);
    }
}

/// Fields 6 to 9 of an `Entitlement` (`max_streams`, `max_resolution`,
/// `download_devices`, `device_classes`): the plan's, the same for every member on it,
/// so encoded once per plan and answer, not per member (~400 instructions a member).
fn plan_fragment(p: &Plan) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put_varint(6, u64::from(p.max_streams), &mut out);
    put_str_always(7, &p.max_resolution, &mut out);
    put_varint(8, u64::from(p.download_devices), &mut out);
    for d in &p.device_classes {
        put_str_always(9, d, &mut out);
    }
    out
}

const UNKNOWN: &str = "unknown-member";

impl prost::Message for BatchAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.results);
        if self.catalog_version != 0 {
            let mut v = Vec::with_capacity(11);
            put_varint(2, self.catalog_version, &mut v);
            buf.put_slice(&v);
        }
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
        self.results.len() + varint_len(2, self.catalog_version)
    }

    fn clear(&mut self) {
        self.results.clear();
        self.count = 0;
        self.catalog_version = 0;
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
                let frag = plan
                    .and_then(|i| snapshot.plan_at(i))
                    .map(|e| plan_fragment(&e.plan))
                    .unwrap_or_default();
                put_entitlement(m, &snapshot, from, plan, &frag, now, &mut ours);
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
        let now = clock_ms();
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
                now,
            ))
        );
        assert_eq!(r.results[1].entitlement, None);
        assert_eq!(r.results[1].error, "unknown-member");
        assert_eq!(r.results[1].served_from, "store");
        assert_eq!(r.results[2].served_from, "l2");
    }
}
