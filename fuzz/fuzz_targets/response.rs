//! The server's answer to our upgrade request: `parse_response` on arbitrary bytes with a fixed
//! Sec-WebSocket-Key.
//!
//! Invariants: `Ok(Some(n))` implies `n <= len`, the first `n` bytes end with the blank line that
//! ends the headers (CRLF CRLF; bare LF is tolerated, see below), those `n` bytes alone give the same answer, one byte fewer is incomplete
//! (`Ok(None)`), and bytes appended after a complete answer do not change it. A refusal never
//! carries status 101. The parse is deterministic.
#![no_main]

use hbws::connect::{parse_response, ConnectError};
use libfuzzer_sys::fuzz_target;

/// The RFC 6455 sample key; its accept value is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn show(r: &Result<Option<usize>, ConnectError>) -> String {
    format!("{r:?}")
}

fuzz_target!(|data: &[u8]| {
    let r = parse_response(data, KEY);
    assert_eq!(
        show(&r),
        show(&parse_response(data, KEY)),
        "not deterministic"
    );
    match &r {
        Ok(Some(n)) => {
            let n = *n;
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
            assert_eq!(show(&parse_response(head, KEY)), show(&r), "prefix differs");
            assert!(
                matches!(parse_response(&data[..n - 1], KEY), Ok(None)),
                "one byte short of the headers is not incomplete"
            );
            let mut more = data.to_vec();
            more.extend_from_slice(b"\x81\x04pong garbage\r\n\r\n");
            assert_eq!(
                show(&parse_response(&more, KEY)),
                show(&r),
                "suffix changed it"
            );
        }
        Ok(None) => {
            // Incomplete: never claims a complete answer in any prefix either.
            for cut in [data.len() / 2, data.len().saturating_sub(1)] {
                assert!(
                    !matches!(parse_response(&data[..cut], KEY), Ok(Some(_))),
                    "a prefix of an incomplete answer is complete"
                );
            }
        }
        Err(ConnectError::Rejected {
            status,
            retry_after,
        }) => {
            assert_ne!(*status, 101);
            if let Some(d) = retry_after {
                assert!(d.as_secs() <= 9_999_999_999);
            }
        }
        Err(ConnectError::Protocol(m)) => assert!(!m.is_empty()),
        Err(e) => panic!("unexpected error kind from a pure parser: {e:?}"),
    }
});
