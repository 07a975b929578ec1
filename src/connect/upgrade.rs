//! The HTTP/1.1 upgrade (RFC 6455 section 4.1): the request we write and a strict check of the
//! answer. Pure code: the parser takes bytes and the time (for a `Retry-After` date) as input.

use std::time::{Duration, SystemTime};

use tungstenite::handshake::derive_accept_key;

use super::{ConnectError, Target};
use crate::config::Config;

/// Largest upgrade answer we read before giving up.
pub const MAX_RESPONSE: usize = 32 * 1024;
/// Most header lines the answer may have (RFC 6455 sets none; 64 is what we promise).
pub const MAX_HEADERS: usize = 100;

/// The upgrade request for `target` with Sec-WebSocket-Key `key`.
pub fn request(target: &Target, cfg: &Config, key: &str) -> String {
    let extra: usize = cfg.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let mut req = String::with_capacity(192 + target.resource().len() + extra);
    req.push_str("GET ");
    req.push_str(target.resource());
    req.push_str(" HTTP/1.1\r\nHost: ");
    req.push_str(target.host_header());
    req.push_str(
        "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    req.push_str(key);
    req.push_str("\r\n");
    if !cfg.subprotocols.is_empty() {
        req.push_str("Sec-WebSocket-Protocol: ");
        for (i, p) in cfg.subprotocols.iter().enumerate() {
            if i > 0 {
                req.push_str(", ");
            }
            req.push_str(p);
        }
        req.push_str("\r\n");
    }
    for (name, value) in &cfg.headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req
}

/// What the answer is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// Our Sec-WebSocket-Key.
    pub key: &'a str,
    /// The subprotocols we offered, in order.
    pub subprotocols: &'a [String],
    /// Now, for a `Retry-After` given as a date.
    pub now: SystemTime,
}

/// A valid 101 answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Length of the headers; what follows is already WebSocket data.
    pub header_len: usize,
    /// The subprotocol the server chose (one we offered), if any.
    pub subprotocol: Option<String>,
    /// e.g. `HTTP/1.1 101 Switching Protocols`.
    pub status_line: String,
}

fn protocol(m: impl Into<String>) -> ConnectError {
    ConnectError::Protocol(m.into())
}

/// Parses the server's answer to our upgrade request. `Ok(None)`: incomplete, read more.
/// `Ok(Some(_))`: a valid 101. Otherwise the refusal (`Rejected`, any status but 101) or why the
/// 101 breaks RFC 6455 section 4.1 (`Protocol`).
pub fn parse_response(buf: &[u8], expect: &Expect<'_>) -> Result<Option<Accepted>, ConnectError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = match resp.parse(buf) {
        Ok(p) => p,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(protocol(format!(
                "the answer has more than {MAX_HEADERS} header lines"
            )))
        }
        Err(e) => return Err(protocol(format!("the answer is not HTTP/1.x ({e})"))),
    };
    let httparse::Status::Complete(header_len) = parsed else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(0);
    let all = |name: &'static str| {
        resp.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let one = |name: &'static str| -> Result<Option<String>, ConnectError> {
        let mut it = all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(protocol(format!("the 101 has more than one {name} header")));
        }
        Ok(first)
    };
    if status != 101 {
        let retry_after = all("Retry-After")
            .next()
            .and_then(|v| parse_retry_after(&v, expect.now));
        return Err(ConnectError::Rejected {
            status,
            retry_after,
        });
    }
    if version != 1 {
        return Err(protocol(format!(
            "the 101 is HTTP/1.{version}; RFC 6455 requires HTTP/1.1"
        )));
    }
    let has_token = |name: &'static str, token: &str| {
        all(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Upgrade", "websocket") {
        return Err(protocol("the 101 has no Upgrade: websocket"));
    }
    if !has_token("Connection", "upgrade") {
        return Err(protocol("the 101 has no Connection: Upgrade"));
    }
    match one("Sec-WebSocket-Accept")? {
        None => return Err(protocol("the 101 has no Sec-WebSocket-Accept")),
        Some(v) if v != derive_accept_key(expect.key.as_bytes()) => {
            return Err(protocol("Sec-WebSocket-Accept does not match our key"))
        }
        Some(_) => {}
    }
    // We offer no extension, so any the server says it uses is one we did not offer.
    if let Some(ext) = all("Sec-WebSocket-Extensions").find(|v| !v.is_empty()) {
        return Err(protocol(format!(
            "the server uses an extension we did not offer: {}",
            shorten(&ext)
        )));
    }
    let subprotocol = match one("Sec-WebSocket-Protocol")? {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(p) => {
            if !expect.subprotocols.contains(&p) {
                return Err(protocol(if expect.subprotocols.is_empty() {
                    format!(
                        "the server chose subprotocol {} but we offered none",
                        shorten(&p)
                    )
                } else {
                    format!(
                        "the server chose subprotocol {}, not one we offered ({})",
                        shorten(&p),
                        expect.subprotocols.join(", ")
                    )
                }));
            }
            Some(p)
        }
    };
    let reason = resp.reason.unwrap_or("");
    let status_line = format!("HTTP/1.1 101 {reason}").trim_end().to_string();
    Ok(Some(Accepted {
        header_len,
        subprotocol,
        status_line,
    }))
}

/// A header value quoted for a message, cut to 64 characters.
fn shorten(v: &str) -> String {
    let mut s: String = v.chars().take(64).collect();
    if s.len() < v.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// A `Retry-After` value (RFC 9110 section 10.2.3): delta-seconds, or an HTTP-date, which is
/// the time from `now` to it (zero for a date in the past). `None` for anything else. Not capped
/// here: `Config::retry_after_max` does that.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit()) {
        // A number too large for u64 is as good as forever.
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(v).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn expect(protos: &[String]) -> Expect<'_> {
        Expect {
            key: KEY,
            subprotocols: protos,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480),
        }
    }

    fn answer(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
        )
    }

    fn refused(a: &str, protos: &[String]) -> String {
        match parse_response(a.as_bytes(), &expect(protos)) {
            Err(ConnectError::Protocol(m)) => m,
            other => panic!("{a:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn parses_upgrade_answers() {
        let ok = format!("{}\x01\x00", answer(""));
        let a = parse_response(ok.as_bytes(), &expect(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(a.header_len, ok.len() - 2);
        assert_eq!(a.subprotocol, None);
        assert_eq!(a.status_line, "HTTP/1.1 101 Switching Protocols");
        assert_eq!(
            parse_response(&ok.as_bytes()[..20], &expect(&[])).unwrap(),
            None
        );
        let bad_key = ok.replace("s3pP", "AAAA");
        assert!(refused(&bad_key, &[]).contains("does not match"));
        let refused_503 = "HTTP/1.1 503 Busy\r\nRetry-After: 7\r\n\r\n";
        assert!(matches!(
            parse_response(refused_503.as_bytes(), &expect(&[])),
            Err(ConnectError::Rejected { status: 503, retry_after: Some(d) }) if d == Duration::from_secs(7)
        ));
        assert!(refused("garbage\r\n\r\n", &[]).contains("not HTTP"));
    }

    #[test]
    fn a_101_must_follow_rfc_6455_section_4_1() {
        let m = refused(&answer("").replace("HTTP/1.1", "HTTP/1.0"), &[]);
        assert!(m.contains("HTTP/1.0") && m.contains("HTTP/1.1"), "{m}");
        let m = refused(&answer("").replace("Upgrade: websocket\r\n", ""), &[]);
        assert!(m.contains("Upgrade: websocket"), "{m}");
        let m = refused(&answer("").replace("Connection: Upgrade\r\n", ""), &[]);
        assert!(m.contains("Connection: Upgrade"), "{m}");
        let m = refused(
            &answer("").replace(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n"), ""),
            &[],
        );
        assert!(m.contains("no Sec-WebSocket-Accept"), "{m}");
        let m = refused(&answer(&format!("sec-websocket-accept: {ACCEPT}\r\n")), &[]);
        assert!(m.contains("more than one Sec-WebSocket-Accept"), "{m}");
        let m = refused(
            &answer("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
            &[],
        );
        assert!(
            m.contains("extension we did not offer") && m.contains("permessage-deflate"),
            "{m}"
        );
        // An empty extensions header names none.
        assert!(parse_response(
            answer("Sec-WebSocket-Extensions: \r\n").as_bytes(),
            &expect(&[])
        )
        .unwrap()
        .is_some());
        // Tokens are compared without case and in lists.
        let lists = answer("").replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE");
        assert!(parse_response(lists.as_bytes(), &expect(&[]))
            .unwrap()
            .is_some());
    }

    #[test]
    fn subprotocol_must_be_one_we_offered() {
        let offered = ["chat.v2".to_string(), "chat.v1".to_string()];
        let a = answer("Sec-WebSocket-Protocol: chat.v1\r\n");
        let got = parse_response(a.as_bytes(), &expect(&offered))
            .unwrap()
            .unwrap();
        assert_eq!(got.subprotocol.as_deref(), Some("chat.v1"));
        // None chosen is allowed.
        let got = parse_response(answer("").as_bytes(), &expect(&offered))
            .unwrap()
            .unwrap();
        assert_eq!(got.subprotocol, None);
        let m = refused(&answer("Sec-WebSocket-Protocol: chat.v3\r\n"), &offered);
        assert!(
            m.contains("chat.v3") && m.contains("chat.v2, chat.v1"),
            "{m}"
        );
        let m = refused(&answer("Sec-WebSocket-Protocol: chat.v1\r\n"), &[]);
        assert!(m.contains("offered none"), "{m}");
        // Exactly one, compared exactly.
        let m = refused(
            &answer("Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n"),
            &offered,
        );
        assert!(m.contains("not one we offered"), "{m}");
        refused(&answer("Sec-WebSocket-Protocol: CHAT.V1\r\n"), &offered);
        let two = answer("Sec-WebSocket-Protocol: chat.v1\r\nSec-WebSocket-Protocol: chat.v1\r\n");
        assert!(refused(&two, &offered).contains("more than one Sec-WebSocket-Protocol"));
    }

    #[test]
    fn at_least_64_headers_and_a_size_cap() {
        let many: String = (0..64).map(|i| format!("X-Filler-{i}: {i}\r\n")).collect();
        let a = answer(&many);
        assert!(parse_response(a.as_bytes(), &expect(&[]))
            .unwrap()
            .is_some());
        let too_many: String = (0..MAX_HEADERS)
            .map(|i| format!("X-F{i}: {i}\r\n"))
            .collect();
        let m = refused(&answer(&too_many), &[]);
        assert!(m.contains("more than 100 header lines"), "{m}");
        // The size cap is enforced by the reader (open): MAX_RESPONSE bytes without an end.
        const { assert!(MAX_RESPONSE >= 16 * 1024) };
    }

    #[test]
    fn the_request_carries_what_we_offer() {
        let cfg = Config {
            subprotocols: vec!["a".into(), "b.v2".into()],
            headers: vec![("Authorization".into(), "Bearer t".into())],
            ..Config::default()
        };
        let t = Target::parse("ws://[::1]:9000/p?q=1").unwrap();
        let r = request(&t, &cfg, KEY);
        assert!(
            r.starts_with("GET /p?q=1 HTTP/1.1\r\nHost: [::1]:9000\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\nSec-WebSocket-Protocol: a, b.v2\r\n"), "{r}");
        assert!(r.contains("\r\nAuthorization: Bearer t\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"));
        let r = request(&t, &Config::default(), KEY);
        assert!(!r.contains("Sec-WebSocket-Protocol"), "{r}");
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 UTC
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        // All three HTTP-date forms; the date is 2 minutes after `now`.
        for d in [
            "Wed, 21 Oct 2015 07:30:00 GMT",
            "Wednesday, 21-Oct-15 07:30:00 GMT",
            "Wed Oct 21 07:30:00 2015",
        ] {
            assert_eq!(
                parse_retry_after(d, now),
                Some(Duration::from_secs(120)),
                "{d}"
            );
        }
        // A date in the past means now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for v in [
            "",
            "-1",
            "1.5",
            "+5",
            "soon",
            "Wed, 21 Oct 2015 25:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
    }
}
