//! `BatchGetEntitlementsResponse`, encoded straight from the L1 entries.
//!
//! Each member's own fields are encoded once per catalog version and price period and
//! kept in its L1 entry ([`Encoded`], as the HTTP path keeps its JSON), so a batch of
//! L1 hits mostly copies bytes: the plan's fields are encoded once per answer and
//! `served_from` is written between the pieces.
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
use crate::lookup::{Encoded, Entry, ServedFrom};
use crate::member::{self, Member};
use crate::plan::Plan;
use prost::Message as _;

use super::convert;

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
        Self::new_at(ids, found, snapshot, clock_ms())
    }

    /// [`BatchAnswer::new`] with prices taken at `now`.
    fn new_at(
        ids: &[u64],
        found: Vec<(Entry, ServedFrom)>,
        snapshot: Arc<Snapshot>,
        now: i64,
    ) -> Self {
        let version = snapshot.version();
        // What a plan says (fields 6 to 9), encoded once per plan and answer, not per
        // member (~400 instructions a member), and not kept in the members' entries
        // (~40 bytes each).
        let mut frags: Vec<Option<Vec<u8>>> = Vec::new();
        let mut results = Vec::with_capacity(ids.len() * 128);
        for (id, (entry, from)) in ids.iter().zip(found.iter()) {
            let Some(m) = entry.member.as_ref() else {
                let error = if entry.is_unreadable() {
                    UNREADABLE
                } else {
                    UNKNOWN
                };
                let len = varint_len(1, *id) + str_len(3, error) + str_len(4, from.as_str());
                key(1, WireType::LengthDelimited, &mut results);
                varint(len as u64, &mut results);
                put_varint(1, *id, &mut results);
                put_str(3, error, &mut results);
                put_str(4, from.as_str(), &mut results);
                continue;
            };
            // The member's own fields, encoded on the first batch that answers it
            // under this catalog version and price period, then copied.
            let held = entry.encoded.load();
            let fresh;
            let enc: &Encoded = match held.as_deref() {
                Some(e) if e.holds(version, now) => e,
                _ => match Encoded::new(m, &snapshot, now) {
                    Some(e) => {
                        fresh = Arc::new(e);
                        entry.encoded.store(Some(fresh.clone()));
                        &fresh
                    }
                    None => {
                        // A record whose fields do not fit the cuts' 16 bits (a
                        // plan id of 64 KiB): encoded whole, each time, by prost.
                        let ent = convert::entitlement(m, &snapshot, *from, now);
                        open_result(*id, ent.encoded_len(), *from, &mut results);
                        ent.encode_raw(&mut results);
                        put_str(4, from.as_str(), &mut results);
                        continue;
                    }
                },
            };
            let frag: &[u8] = match enc.plan() {
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
            open_result(*id, enc.len(frag, *from), *from, &mut results);
            enc.write(frag, *from, &mut results);
            results.extend_from_slice(served_from_field(4, *from));
        }
        BatchAnswer {
            results,
            count: ids.len(),
            catalog_version: version,
        }
    }
}

impl Encoded {
    /// Encodes `m` under `snapshot` with its price at `now`, as
    /// [`super::convert::entitlement`] builds it; `None` for a record too long for the
    /// cuts (fields 1 to 5 over 64 KiB).
    fn new(m: &Member, snapshot: &Snapshot, now: i64) -> Option<Encoded> {
        let plan = snapshot.plan_index(&m.plan_id);
        let entry = plan.and_then(|i| snapshot.plan_at(i)).map(|e| &e.plan);
        let mut buf = Vec::with_capacity(96);
        put_varint(1, m.id, &mut buf);
        put_str(2, m.status.as_str(), &mut buf);
        put_str(3, &m.plan_id, &mut buf);
        put_str(4, &m.country, &mut buf);
        put_varint(5, u64::from(member::standing(m, entry).is_ok()), &mut buf);
        let first = buf.len();
        // int64 is written as its two's complement, as prost does.
        put_varint(10, m.version as u64, &mut buf);
        let second = buf.len();
        put_varint(12, snapshot.version(), &mut buf);
        let (price, until_ms) = snapshot.member_price(m, now);
        if let Some(p) = price {
            let len = str_len(1, p.amount) + str_len(2, p.currency) + str_len(3, p.source());
            key(13, WireType::LengthDelimited, &mut buf);
            varint(len as u64, &mut buf);
            put_str(1, p.amount, &mut buf);
            put_str(2, p.currency, &mut buf);
            put_str(3, p.source(), &mut buf);
        }
        let plan = match plan {
            Some(i) => u16::try_from(i).ok().filter(|i| *i != u16::MAX)?,
            None => u16::MAX,
        };
        Some(Encoded {
            catalog_version: snapshot.version(),
            until_ms,
            plan,
            cuts: [u16::try_from(first).ok()?, u16::try_from(second).ok()?],
            bytes: buf.into_boxed_slice(),
        })
    }

    /// Whether this answers under catalog version `version` at `now`.
    #[inline]
    fn holds(&self, version: u64, now: i64) -> bool {
        self.catalog_version == version && now < self.until_ms
    }

    /// The member's plan's index in the snapshot it was built under.
    fn plan(&self) -> Option<usize> {
        (self.plan != u16::MAX).then_some(usize::from(self.plan))
    }

    /// The whole `Entitlement`'s length with the plan's fields `frag` and `from`.
    #[inline]
    fn len(&self, frag: &[u8], from: ServedFrom) -> usize {
        self.bytes.len() + frag.len() + str_len(11, from.as_str())
    }

    /// The whole `Entitlement` (without its key and length).
    #[inline]
    fn write(&self, frag: &[u8], from: ServedFrom, out: &mut Vec<u8>) {
        let [first, second] = self.cuts.map(usize::from);
        out.extend_from_slice(&self.bytes[..first]);
        out.extend_from_slice(frag);
        out.extend_from_slice(&self.bytes[first..second]);
        out.extend_from_slice(served_from_field(11, from));
        out.extend_from_slice(&self.bytes[second..]);
    }
}

/// Opens the result for member `id` whose `Entitlement` is `ent_len` bytes: the
/// result's key and length, its `member_id`, then field 2's key and length. The
/// entitlement's bytes and `served_from` (field 4) follow, written by the caller.
#[inline(always)]
fn open_result(id: u64, ent_len: usize, from: ServedFrom, out: &mut Vec<u8>) {
    let len = varint_len(1, id)
        + 1
        + encoded_len_varint(ent_len as u64)
        + ent_len
        + str_len(4, from.as_str());
    key(1, WireType::LengthDelimited, out);
    varint(len as u64, out);
    put_varint(1, id, out);
    key(2, WireType::LengthDelimited, out);
    varint(ent_len as u64, out);
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

/// `served_from` as field 4 of an `EntitlementResult` or 11 of an `Entitlement`: key,
/// length and text, written whole (not key, length and text apart: ~40 instructions a
/// member).
#[inline]
fn served_from_field(tag: u8, from: ServedFrom) -> &'static [u8] {
    const KEY_4: u8 = 4 << 3 | 2;
    const KEY_11: u8 = 11 << 3 | 2;
    match (tag, from) {
        (4, ServedFrom::L1) => &[KEY_4, 2, b'l', b'1'],
        (4, ServedFrom::L2) => &[KEY_4, 2, b'l', b'2'],
        (4, ServedFrom::Store) => &[KEY_4, 5, b's', b't', b'o', b'r', b'e'],
        (_, ServedFrom::L1) => &[KEY_11, 2, b'l', b'1'],
        (_, ServedFrom::L2) => &[KEY_11, 2, b'l', b'2'],
        (_, ServedFrom::Store) => &[KEY_11, 5, b's', b't', b'o', b'r', b'e'],
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
/// The error of a member whose store row cannot be read (issue 27).
const UNREADABLE: &str = "unreadable-member";

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

    /// A member of `plan` whose price is locked at 9.99 USD until `until_ms`.
    fn locked(id: u64, plan: &str, until_ms: Option<i64>) -> Entry {
        Arc::new(Cached::new(
            Some(Member {
                price_lock: Some(Box::new(crate::member::PriceLock {
                    amount: crate::plan::Price::parse("9.99").unwrap(),
                    currency: "USD".into(),
                    until_ms,
                })),
                ..entry(id, Status::Active, plan, 2).member.clone().unwrap()
            }),
            2,
            ServedFrom::L1,
        ))
    }

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

    /// `BatchGetEntitlementsResponse` as prost generates it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Response {
        #[prost(message, repeated, tag = "1")]
        results: Vec<Result>,
        #[prost(uint64, tag = "2")]
        catalog_version: u64,
    }

    /// What prost encodes for these results: the generated messages, built by
    /// [`convert::entitlement`] (the single lookup's code).
    fn prost_answer(ids: &[u64], found: &[(Entry, ServedFrom)], s: &Snapshot, now: i64) -> Vec<u8> {
        Response {
            results: ids
                .iter()
                .zip(found)
                .map(|(id, (e, from))| Result {
                    member_id: *id,
                    entitlement: e
                        .member
                        .as_ref()
                        .map(|m| convert::entitlement(m, s, *from, now)),
                    error: if e.member.is_some() {
                        ""
                    } else if e.is_unreadable() {
                        UNREADABLE
                    } else {
                        UNKNOWN
                    }
                    .into(),
                    served_from: from.as_str().into(),
                })
                .collect(),
            catalog_version: s.version(),
        }
        .encode_to_vec()
    }

    fn ours(ids: &[u64], found: &[(Entry, ServedFrom)], s: &Arc<Snapshot>, now: i64) -> Vec<u8> {
        let answer = BatchAnswer::new_at(ids, found.to_vec(), s.clone(), now);
        let bytes = answer.encode_to_vec();
        assert_eq!(bytes.len(), answer.encoded_len());
        bytes
    }

    #[test]
    fn entitlements_encode_as_prost_encodes_the_message_first_and_cached() {
        let snapshot = Arc::new(Snapshot::build(&CatalogData::reference().unwrap()));
        let cases = [
            entry(1, Status::Active, "premium", 7),
            entry(2, Status::OnHold, "basic", 1 << 40),
            entry(3, Status::Grace, "no-such-plan", 1),
            entry(u64::MAX >> 1, Status::Cancelled, "", 0),
            entry(5, Status::Active, "mobile", -3),
            // A locked price (grandfathering) instead of the catalog's.
            locked(6, "premium", None),
        ];
        let unknown: Entry = Arc::new(Cached::new(None, 0, ServedFrom::Store));
        let now = clock_ms();
        let mut ids = Vec::new();
        let mut found = Vec::new();
        for e in &cases {
            for from in [ServedFrom::L1, ServedFrom::L2, ServedFrom::Store] {
                ids.push(e.member.as_ref().unwrap().id);
                found.push((e.clone(), from));
            }
        }
        ids.insert(2, 9);
        found.insert(2, (unknown, ServedFrom::Store));
        let theirs = prost_answer(&ids, &found, &snapshot, now);
        // First: each member encoded and kept in its entry.
        assert!(cases.iter().all(|e| e.encoded.load().is_none()));
        assert_eq!(ours(&ids, &found, &snapshot, now), theirs);
        assert!(cases.iter().all(|e| e.encoded.load().is_some()));
        // Then: the kept bytes, the same answer (whatever each member's served_from).
        let kept: Vec<_> = cases
            .iter()
            .map(|e| e.encoded.load_full().unwrap())
            .collect();
        assert_eq!(ours(&ids, &found, &snapshot, now), theirs);
        for (e, k) in cases.iter().zip(&kept) {
            assert!(Arc::ptr_eq(&e.encoded.load_full().unwrap(), k), "reused");
        }
        // The prices said what they should (the answers above hold them equal).
        let r = Response::decode(&theirs[..]).unwrap();
        let price = |id: u64| {
            let e = r.results.iter().find(|r| r.member_id == id).unwrap();
            let p = e.entitlement.as_ref().unwrap().price.clone().unwrap();
            (p.amount, p.currency, p.source)
        };
        assert_eq!(price(6), ("9.99".into(), "USD".into(), "locked".into()));
        assert_eq!(price(1).2, "catalog");
        assert_eq!(r.results[2].error, "unknown-member");
    }

    #[test]
    fn kept_bytes_are_not_served_under_another_catalog_version_or_past_their_period() {
        let mut data = CatalogData::reference().unwrap();
        let one = Arc::new(Snapshot::build(&data));
        let now = clock_ms();
        let plain = entry(1, Status::Active, "premium", 7);
        let lock_ends = now + 60_000;
        let until = locked(2, "premium", Some(lock_ends));
        let ids = [1, 2];
        let found = vec![
            (plain.clone(), ServedFrom::L1),
            (until.clone(), ServedFrom::L1),
        ];
        assert_eq!(
            ours(&ids, &found, &one, now),
            prost_answer(&ids, &found, &one, now)
        );
        let before = Response::decode(&ours(&ids, &found, &one, now)[..]).unwrap();

        // A new catalog version with the member's plan at another price.
        data.version = 2;
        let us = data
            .prices
            .iter_mut()
            .find(|p| p.country == "US" && p.plan_id == "premium")
            .unwrap();
        us.amount = crate::plan::Price::parse("31.41").unwrap();
        let two = Arc::new(Snapshot::build(&data));
        let answer = ours(&ids, &found, &two, now);
        assert_eq!(answer, prost_answer(&ids, &found, &two, now));
        let after = Response::decode(&answer[..]).unwrap();
        let ent = |r: &Response, i: usize| r.results[i].entitlement.clone().unwrap();
        assert_ne!(ent(&before, 0).price.unwrap().amount, "31.41");
        assert_eq!(ent(&after, 0).price.unwrap().amount, "31.41");
        assert_eq!(
            (ent(&after, 0).catalog_version, after.catalog_version),
            (2, 2)
        );
        // The locked member still pays the lock under the new version...
        assert_eq!(ent(&after, 1).price.unwrap().source, "locked");
        // ...until the lock ends (one millisecond before, the kept bytes answer)...
        let just_before = Response::decode(&ours(&ids, &found, &two, lock_ends - 1)[..]).unwrap();
        assert_eq!(ent(&just_before, 1).price.unwrap().source, "locked");
        let kept = until.encoded.load_full().unwrap();
        // ...from that instant, the catalog's price, encoded again.
        let later = ours(&ids, &found, &two, lock_ends);
        assert_eq!(later, prost_answer(&ids, &found, &two, lock_ends));
        let later = Response::decode(&later[..]).unwrap();
        assert_eq!(ent(&later, 1).price.unwrap().amount, "31.41");
        assert_eq!(ent(&later, 1).price.unwrap().source, "catalog");
        assert!(!Arc::ptr_eq(&kept, &until.encoded.load_full().unwrap()));
    }

    #[test]
    fn a_record_too_long_to_keep_is_encoded_whole_each_time() {
        let snapshot = Arc::new(Snapshot::build(&CatalogData::reference().unwrap()));
        let long = entry(1, Status::Active, &"p".repeat(70_000), 1);
        let ids = [1, 1];
        let found = vec![
            (long.clone(), ServedFrom::L1),
            (long.clone(), ServedFrom::L2),
        ];
        let now = clock_ms();
        assert_eq!(
            ours(&ids, &found, &snapshot, now),
            prost_answer(&ids, &found, &snapshot, now)
        );
        assert!(long.encoded.load().is_none());
    }
}
