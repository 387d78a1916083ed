//! The caller's deadline, from the `grpc-timeout` header (gRPC over HTTP/2: at most
//! eight digits and a unit, `H` `M` `S` `m` `u` `n`).

use std::time::Duration;

/// How long the caller will wait, if it said; a malformed value counts as unsaid (as
/// gRPC servers generally treat it). Read only once a call has to wait (an L1 miss):
/// a hit answers at once.
pub fn of(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse(metadata.get("grpc-timeout")?.to_str().ok()?)
}

fn parse(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "1x", "-1m", "+1m", "1.5S", "é"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
