//! Reading what a request asks: the country parameter, member ids, the authorize
//! body (bounded in size and time), and `If-None-Match`. Each parser says exactly what
//! was wrong, for the problem answer's `detail`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::problem::problem;
use super::Body;
use crate::catalog::is_country_code;
use crate::config::HttpConfig;

/// The body of `POST /v1/playback/authorize`.
#[derive(Debug, Deserialize)]
pub struct AuthorizeRequest {
    #[serde(deserialize_with = "whole_number")]
    pub member_id: u64,
    pub device_class: String,
    #[serde(deserialize_with = "whole_number")]
    pub active_streams: u64,
}

/// Above this a JSON number written as a float (`1e16`) may not name the integer its
/// text does: f64 holds every integer up to 2^53 exactly, and no further.
const EXACT_IN_F64: f64 = 9_007_199_254_740_992.0;

/// A non-negative whole JSON number: `7`, and also `7.0` or `7e0`, which JSON Schema
/// (so the OpenAPI document) counts as integers too and some clients' encoders write
/// (Schemathesis sent `2185.0` and got a 400). A fraction, a negative number, and a
/// float above 2^53 (which may have been rounded on the way in: a member id must
/// never be read as its neighbour) are refused.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            if v.fract() == 0.0 && (0.0..=EXACT_IN_F64).contains(&v) {
                // Whole and within 0..=2^53: the cast is exact.
                Ok(v as u64)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_any(Whole)
}

pub fn valid_device_class(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The `country` query parameter, upper-cased; an error says what was wrong.
pub fn country_param(query: Option<&str>) -> Result<[u8; 2], String> {
    let q = query.unwrap_or("").as_bytes();
    // The common case, `country=XX` alone, without walking the pairs.
    if q.len() == 10
        && q.starts_with(b"country=")
        && q[8].is_ascii_alphabetic()
        && q[9].is_ascii_alphabetic()
    {
        return Ok([q[8].to_ascii_uppercase(), q[9].to_ascii_uppercase()]);
    }
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("country="))
        .ok_or_else(|| "the country query parameter is required, as in ?country=US".to_string())?;
    let b = value.as_bytes();
    if b.len() == 2 && b.iter().all(u8::is_ascii_alphabetic) {
        let cc = [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()];
        debug_assert!(is_country_code(&cc));
        return Ok(cc);
    }
    let shown: String = value.chars().take(16).collect();
    Err(format!(
        "country must be a two-letter ISO 3166-1 code such as US; got {shown:?}"
    ))
}

/// The `visitor` and `partner` query parameters of a plans request, as sent (their
/// values are checked by the catalog: a percent-escape is not among the allowed
/// characters, so none needs decoding). The first of each counts.
pub fn plans_params(query: Option<&str>) -> (Option<&str>, Option<&str>) {
    let (mut visitor, mut partner) = (None, None);
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("visitor=") {
            visitor = visitor.or(Some(v));
        } else if let Some(p) = pair.strip_prefix("partner=") {
            partner = partner.or(Some(p));
        }
    }
    (visitor, partner)
}

/// A query parameter's value, percent-decoded (`+` is kept: an RFC 3339 offset such
/// as `+01:00` is sent as is more often than as `%2B`); `None` if absent, an error
/// naming it if the escape is broken or the result is not UTF-8.
pub fn query_value(query: Option<&str>, name: &str) -> Result<Option<String>, String> {
    let Some(raw) = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    else {
        return Ok(None);
    };
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{name} has a broken percent-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| format!("{name} is not UTF-8"))
}

/// A member id: a positive decimal integer that fits a signed 64-bit column.
pub fn parse_member_id(s: &str) -> Result<u64, String> {
    let bad = || {
        let shown: String = s.chars().take(24).collect();
        format!("member id must be a positive integer; got {shown:?}")
    };
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.parse::<u64>() {
        Ok(n) if n > 0 && n <= i64::MAX as u64 => Ok(n),
        _ => Err(bad()),
    }
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, lists, `*`).
pub fn etag_matches(header: &[u8], etag: &[u8]) -> bool {
    header.split(|b| *b == b',').any(|t| {
        let t = t.trim_ascii();
        let t = t.strip_prefix(b"W/").unwrap_or(t);
        t == b"*" || t == etag
    })
}

pub async fn read_body(
    req: Request<Incoming>,
    limits: &HttpConfig,
) -> Result<Bytes, Response<Body>> {
    read_body_up_to(req, limits.max_body_bytes, limits).await
}

/// [`read_body`] with a limit of its own (`max` bytes; a batch needs more than one
/// member's request), timed by `http.request_timeout` all the same.
pub async fn read_body_up_to(
    req: Request<Incoming>,
    max: usize,
    limits: &HttpConfig,
) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            &format!("the body may be at most {max} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), max);
    match tokio::time::timeout(limits.request_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => Err(problem(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "Unreadable body",
            &e.to_string(),
        )),
        Err(_) => Err(problem(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            &format!(
                "the body did not arrive within {:?}",
                limits.request_timeout
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_parameter() {
        assert_eq!(country_param(Some("country=US")).unwrap(), *b"US");
        assert_eq!(country_param(Some("x=1&country=jp")).unwrap(), *b"JP");
        for bad in [
            None,
            Some(""),
            Some("country=usa"),
            Some("country=U1"),
            Some("country="),
            Some("country=%55S"),
        ] {
            assert!(country_param(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plans_parameters() {
        assert_eq!(plans_params(Some("country=US")), (None, None));
        assert_eq!(
            plans_params(Some("country=US&visitor=v-1&partner=tmobile&visitor=x")),
            (Some("v-1"), Some("tmobile"))
        );
        assert_eq!(plans_params(Some("visitor=")), (Some(""), None));
        assert_eq!(
            query_value(Some("country=US&at=2027-01-01T00%3A00%3A00%2B01:00"), "at").unwrap(),
            Some("2027-01-01T00:00:00+01:00".to_string())
        );
        assert_eq!(query_value(Some("country=US"), "at").unwrap(), None);
        assert!(query_value(Some("at=%zz"), "at").is_err());
    }

    #[test]
    fn member_ids() {
        assert_eq!(parse_member_id("42").unwrap(), 42);
        assert_eq!(parse_member_id("999999999999").unwrap(), 999_999_999_999);
        for bad in [
            "abc",
            "-5",
            "0",
            "",
            "+5",
            "1.5",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(parse_member_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn etags() {
        assert!(etag_matches(b"\"US-1\"", b"\"US-1\""));
        assert!(etag_matches(b"W/\"US-1\"", b"\"US-1\""));
        assert!(etag_matches(b"\"a\", \"US-1\"", b"\"US-1\""));
        assert!(etag_matches(b"*", b"\"US-1\""));
        assert!(!etag_matches(b"\"US-2\"", b"\"US-1\""));
    }

    #[test]
    fn whole_numbers_written_as_floats_are_integers() {
        let parse = |body: &str| serde_json::from_str::<AuthorizeRequest>(body);
        let ok = parse(r#"{"member_id":42.0,"device_class":"tv","active_streams":2e0}"#)
            .expect("whole floats are integers");
        assert_eq!((ok.member_id, ok.active_streams), (42, 2));
        let ok =
            parse(r#"{"member_id":9007199254740992.0,"device_class":"tv","active_streams":0}"#)
                .expect("2^53 is exact");
        assert_eq!(ok.member_id, 1 << 53);
        let big = parse(r#"{"member_id":18446744073709551615,"device_class":"tv","active_streams":18446744073709551615}"#)
            .expect("integers keep their full range");
        assert_eq!(big.active_streams, u64::MAX);
        for bad in [
            r#"{"member_id":42.5,"device_class":"tv","active_streams":0}"#,
            r#"{"member_id":-1,"device_class":"tv","active_streams":0}"#,
            r#"{"member_id":-1.0,"device_class":"tv","active_streams":0}"#,
            // Above 2^53 a float may have been rounded: 9007199254740993.0 reads as ...992.
            r#"{"member_id":9007199254740993.0,"device_class":"tv","active_streams":0}"#,
            r#"{"member_id":1e300,"device_class":"tv","active_streams":0}"#,
            r#"{"member_id":"42","device_class":"tv","active_streams":0}"#,
            r#"{"member_id":42,"device_class":"tv","active_streams":1.5}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_classes() {
        assert!(valid_device_class("tv"));
        assert!(valid_device_class("smart-tv_2"));
        assert!(!valid_device_class(""));
        assert!(!valid_device_class("TV"));
        assert!(!valid_device_class(&"a".repeat(33)));
    }
}
