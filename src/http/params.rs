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
    pub member_id: u64,
    pub device_class: String,
    pub active_streams: u64,
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
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            &format!("the body may be at most {} bytes", limits.max_body_bytes),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), limits.max_body_bytes);
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
    fn device_classes() {
        assert!(valid_device_class("tv"));
        assert!(valid_device_class("smart-tv_2"));
        assert!(!valid_device_class(""));
        assert!(!valid_device_class("TV"));
        assert!(!valid_device_class(&"a".repeat(33)));
    }
}
