//! The server's answer to our upgrade request: `parse_response` on arbitrary bytes with a fixed
//! Sec-WebSocket-Key, two offered subprotocols and a fixed clock.
//!
//! Invariants: `Ok(Some(n))` implies `n <= len`, the first `n` bytes end with the blank line that
//! ends the headers (CRLF CRLF; bare LF is tolerated, see below), those `n` bytes alone give the same answer, one byte fewer is incomplete
//! (`Ok(None)`), and bytes appended after a complete answer do not change it. A refusal never
//! carries status 101. An accepted answer's subprotocol is one we offered and its status line is
//! `HTTP/1.1 101`. The parse is deterministic.
#![no_main]

use std::time::{Duration, SystemTime};

use hbws::connect::{parse_response, Accepted, ConnectError, Expect};
use libfuzzer_sys::fuzz_target;

/// The RFC 6455 sample key; its accept value is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn show(r: &Result<Option<Accepted>, ConnectError>) -> String {
    format!("{r:?}")
}

fn parse(data: &[u8]) -> Result<Option<Accepted>, ConnectError> {
    let offered = ["chat".to_string(), "superchat".to_string()];
    let expect = Expect {
        key: KEY,
        subprotocols: &offered,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    };
    parse_response(data, &expect)
}

fuzz_target!(|data: &[u8]| {
    let r = parse(data);
    assert_eq!(show(&r), show(&parse(data)), "not deterministic");
    match &r {
        Ok(Some(a)) => {
            if let Some(p) = &a.subprotocol {
                assert!(p == "chat" || p == "superchat", "not offered: {p:?}");
            }
            assert!(a.status_line.starts_with("HTTP/1.1 101"), "{a:?}");
            let n = a.header_len;
            assert!(n <= data.len(), "header length {n} > input {}", data.len());
            let head = &data[..n];
            // CRLF CRLF, or the bare-LF forms httparse also accepts (RFC 9112 section 2.2: a
            // recipient MAY recognise a single LF as a line terminator). A bare-LF answer was the
            // first thing this target found; it is kept as seeds/response/bare-lf-terminator.
            assert!(
                head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
                "headers do not end with a blank line: {:?}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(show(&parse(head)), show(&r), "prefix differs");
            assert!(
                matches!(parse(&data[..n - 1]), Ok(None)),
                "one byte short of the headers is not incomplete"
            );
            let mut more = data.to_vec();
            more.extend_from_slice(b"\x81\x04pong garbage\r\n\r\n");
            assert_eq!(
                show(&parse(&more)),
                show(&r),
                "suffix changed it"
            );
        }
        Ok(None) => {
            // Incomplete: never claims a complete answer in any prefix either.
            for cut in [data.len() / 2, data.len().saturating_sub(1)] {
                assert!(
                    !matches!(parse(&data[..cut]), Ok(Some(_))),
                    "a prefix of an incomplete answer is complete"
                );
            }
        }
        Err(ConnectError::Rejected {
            status,
            retry_after,
        }) => {
            assert_ne!(*status, 101);
            let _ = retry_after; // any length: the ceiling is applied by the backoff
        }
        Err(ConnectError::Protocol(m)) => assert!(!m.is_empty()),
        Err(e) => panic!("unexpected error kind from a pure parser: {e:?}"),
    }
});
