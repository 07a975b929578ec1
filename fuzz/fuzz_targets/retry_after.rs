//! `Retry-After` parsing: `parse_retry_after` on arbitrary UTF-8, checked against a reference
//! model (delta-seconds only: 1..=10 ASCII digits after trimming whitespace), plus the round trip
//! of every number the input encodes.
#![no_main]

use std::time::Duration;

use hbws::connect::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fn model(v: &str) -> Option<Duration> {
    let t = v.trim();
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(
        t.bytes().fold(0u64, |a, b| a * 10 + u64::from(b - b'0')),
    ))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let got = parse_retry_after(s);
        assert_eq!(got, model(s), "{s:?}");
        if let Some(d) = got {
            assert!(d.as_secs() <= 9_999_999_999);
        }
    }
    // Round trip of an arbitrary number, bare and padded.
    let mut n = [0u8; 8];
    let k = data.len().min(8);
    n[..k].copy_from_slice(&data[..k]);
    let n = u64::from_le_bytes(n) % 100_000_000_000;
    let want = (n <= 9_999_999_999).then(|| Duration::from_secs(n));
    assert_eq!(parse_retry_after(&n.to_string()), want, "{n}");
    assert_eq!(parse_retry_after(&format!(" \t{n}\r\n")), want, "{n}");
});
