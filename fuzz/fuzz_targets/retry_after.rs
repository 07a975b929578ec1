//! `Retry-After` parsing: `parse_retry_after` on arbitrary UTF-8 at a fixed clock, checked
//! against a reference model (after trimming whitespace: ASCII digits are delta-seconds,
//! saturating; anything else is an HTTP-date or nothing, and a date is never more than its
//! distance from now), plus round trips of every number and date the input encodes.
#![no_main]

use std::time::{Duration, SystemTime};

use hbws::connect::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn digits(v: &str) -> Option<Duration> {
    let t = v.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = t.bytes().try_fold(0u64, |a, b| {
        a.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    });
    Some(Duration::from_secs(secs.unwrap_or(u64::MAX)))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let got = parse_retry_after(s, now());
        match digits(s) {
            Some(d) => assert_eq!(got, Some(d), "{s:?}"),
            None => {
                // Not digits: an HTTP-date (what httpdate accepts) or nothing.
                let date = httpdate::parse_http_date(s.trim()).ok();
                assert_eq!(got.is_some(), date.is_some(), "{s:?}");
                if let (Some(g), Some(d)) = (got, date) {
                    assert_eq!(g, d.duration_since(now()).unwrap_or(Duration::ZERO), "{s:?}");
                }
            }
        }
    }
    // Round trips of an arbitrary number, bare and padded, and of a date that many seconds
    // away (either side of now).
    let mut n = [0u8; 8];
    let k = data.len().min(8);
    n[..k].copy_from_slice(&data[..k]);
    let n = u64::from_le_bytes(n);
    let want = Some(Duration::from_secs(n));
    assert_eq!(parse_retry_after(&n.to_string(), now()), want, "{n}");
    assert_eq!(parse_retry_after(&format!(" \t{n}\r\n"), now()), want, "{n}");
    let off = Duration::from_secs(n % (100 * 365 * 86_400));
    let later = httpdate::fmt_http_date(now() + off);
    assert_eq!(parse_retry_after(&later, now()), Some(off), "{later}");
    let earlier = httpdate::fmt_http_date(now() - off.min(Duration::from_secs(1_600_000_000)));
    assert_eq!(parse_retry_after(&earlier, now()), Some(Duration::ZERO), "{earlier}");
});
