//! Opening a connection: URL parsing, TCP connect, and the HTTP/1.1 upgrade done by our own code.
//!
//! We write the upgrade request and parse the answer ourselves (with tungstenite's key helpers and
//! `httparse`) instead of calling `client_async`: that keeps the handshake's buffers and future out
//! of the connection's long-lived memory, lets the framing start with a small read buffer, and gives
//! us the refused status and `Retry-After` as plain values. `wss://`, proxies and extra transports
//! plug in at [`open`], where the TCP stream is made.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

use crate::config::Config;
use crate::wire::Wire;

/// The transport a connection runs on. A TLS stream joins this when `wss://` lands.
pub type Transport = TcpStream;
/// An open WebSocket on our transport.
pub type Socket = Wire<Transport>;

/// A parsed and checked `ws://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Host, resource and `Host` header, one after the other: one allocation per client
    /// rather than three (see [`host`](Self::host) and the others).
    text: Box<str>,
    host_end: u32,
    resource_end: u32,
    pub port: u16,
}

/// Why a URL was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Not a valid `ws://host[:port][/path]` URL; the text says what is wrong.
    Invalid(String),
    /// Valid, but needs something this build does not do yet (`wss://`).
    Unsupported(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        let bad = |m: &str| Err(UrlError::Invalid(format!("{m}: {url:?}")));
        if url
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return bad("URL contains whitespace or control characters");
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return bad("URL has no scheme (expected ws://)");
        };
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "ws" => 80,
            "wss" => {
                return Err(UrlError::Unsupported(
                    "wss:// (TLS) is not supported by this build yet; use ws://".into(),
                ))
            }
            _ => return bad("URL scheme must be ws://"),
        };
        let (authority, resource) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if resource.contains('#') {
            return bad("URL must not have a fragment");
        }
        if authority.contains('@') {
            return bad("URL must not carry user info (send credentials as a header)");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return bad("unterminated IPv6 address");
            };
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("invalid IPv6 address");
            }
            let port = match after {
                "" => None,
                a => match a.strip_prefix(':') {
                    Some(p) => Some(p),
                    None => return bad("junk after IPv6 address"),
                },
            };
            (h, port)
        } else {
            let (h, p) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return bad("host has characters that are not allowed");
            }
            (h, p)
        };
        if host.is_empty() {
            return bad("URL has no host");
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return bad("port must be 1..=65535"),
            },
        };
        let resource = match resource {
            "" => "/".to_string(),
            r if r.starts_with('/') => r.to_string(),
            r => format!("/{r}"),
        };
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let host_header = if port == default_port {
            host_part
        } else {
            format!("{host_part}:{port}")
        };
        let too_long = || UrlError::Invalid("URL longer than 4 GiB".into());
        let host_end = u32::try_from(host.len()).map_err(|_| too_long())?;
        let resource_end = u32::try_from(host.len() + resource.len()).map_err(|_| too_long())?;
        let mut text = String::with_capacity(host.len() + resource.len() + host_header.len());
        text.push_str(host);
        text.push_str(&resource);
        text.push_str(&host_header);
        Ok(Target {
            text: text.into_boxed_str(),
            host_end,
            resource_end,
            port,
        })
    }

    /// Host as written, without IPv6 brackets.
    pub fn host(&self) -> &str {
        &self.text[..self.host_end as usize]
    }

    /// Path and query, at least `/`.
    pub fn resource(&self) -> &str {
        &self.text[self.host_end as usize..self.resource_end as usize]
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> &str {
        &self.text[self.resource_end as usize..]
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host())
            .field("port", &self.port)
            .field("resource", &self.resource())
            .field("host_header", &self.host_header())
            .finish()
    }
}

/// Why opening a connection failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Name resolution failed or gave no address.
    Resolve(String),
    /// TCP connect or I/O during the handshake failed.
    Io(std::io::Error),
    /// The server answered the upgrade with a status other than 101.
    Rejected {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// The server answered 101 but broke the protocol (bad accept key, headers, garbage).
    Protocol(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Resolve(m) => write!(f, "could not resolve host: {m}"),
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
            ConnectError::Rejected { status, .. } => {
                write!(f, "handshake refused with HTTP {status}")
            }
            ConnectError::Protocol(m) => write!(f, "bad handshake answer: {m}"),
        }
    }
}

/// Largest upgrade answer we read before giving up.
const MAX_RESPONSE: usize = 16 * 1024;
const MAX_HEADERS: usize = 32;

/// Opens TCP, performs the upgrade, returns the framed socket. Bounded by the caller's timeout.
pub async fn open(target: &Target, cfg: &Config) -> Result<Box<Socket>, ConnectError> {
    let tcp = tcp_connect(target).await?;
    tcp.set_nodelay(true).map_err(ConnectError::Io)?;
    keep_unsent_small(&tcp);
    upgrade(tcp, target, cfg).await
}

/// Most of our bytes the kernel may hold unsent (`TCP_NOTSENT_LOWAT`, Linux and Android).
/// Without it, autotuning lets the send buffer swallow megabytes at once: a heartbeat ping
/// written behind them waits out the whole upload in the kernel, where the session cannot see
/// it move, and a slow but live uplink is declared dead. With it, our backlog stays in the wire,
/// where draining is visible ([`crate::heartbeat::Heartbeat::on_progress`]), and at most this
/// much (plus what is in flight) is ahead of a ping. 16 KiB, as widely deployed for HTTP/2;
/// throughput is unaffected as long as the host thread answers writability in time.
const NOTSENT_LOWAT: u32 = 16 << 10;

fn keep_unsent_small(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Best effort: a kernel without the option keeps the old behaviour.
        let _ = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(NOTSENT_LOWAT);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, NOTSENT_LOWAT);
}

async fn tcp_connect(target: &Target) -> Result<TcpStream, ConnectError> {
    // An IP literal needs no resolver (and no blocking-pool thread).
    if let Ok(ip) = target.host().parse::<IpAddr>() {
        return TcpStream::connect(SocketAddr::new(ip, target.port))
            .await
            .map_err(ConnectError::Io);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host(), target.port))
        .await
        .map_err(|e| ConnectError::Resolve(format!("{}: {e}", target.host())))?
        .collect();
    if addrs.is_empty() {
        return Err(ConnectError::Resolve(format!(
            "{}: no addresses",
            target.host()
        )));
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(ConnectError::Io(
        last.expect("at least one address was tried"),
    ))
}

async fn upgrade(
    mut tcp: Transport,
    target: &Target,
    cfg: &Config,
) -> Result<Box<Socket>, ConnectError> {
    let key = generate_key();
    let mut req = String::with_capacity(256);
    req.push_str("GET ");
    req.push_str(target.resource());
    req.push_str(" HTTP/1.1\r\nHost: ");
    req.push_str(target.host_header());
    req.push_str(
        "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    req.push_str(&key);
    req.push_str("\r\n");
    for (name, value) in &cfg.headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(ConnectError::Io)?;
    drop(req);

    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() >= MAX_RESPONSE {
            return Err(ConnectError::Protocol("response headers too large".into()));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(512));
        }
        let n = tcp.read_buf(&mut buf).await.map_err(ConnectError::Io)?;
        if n == 0 {
            return Err(ConnectError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection during the handshake",
            )));
        }
        let Some(header_len) = parse_response(&buf, &key)? else {
            continue;
        };
        // What followed the headers is the start of the first frames.
        let rest = buf.split_off(header_len);
        drop(buf);
        let ws = Wire::new(
            tcp,
            rest,
            cfg.max_message_size,
            cfg.read_buffer_size,
            cfg.write_buffer_size,
        );
        // Boxed: the socket then lives once on the heap, not in every future that holds it.
        return Ok(Box::new(ws));
    }
}

/// Parses the server's answer to our upgrade request (`key` is our Sec-WebSocket-Key).
/// `Ok(None)`: incomplete, read more. `Ok(Some(n))`: a valid 101, whose headers are the first `n`
/// bytes (what follows is already WebSocket data). Otherwise the refusal or protocol error.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, ConnectError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let parsed = resp
        .parse(buf)
        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
    let httparse::Status::Complete(header_len) = parsed else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    if status != 101 {
        let retry_after = header("retry-after").as_deref().and_then(parse_retry_after);
        return Err(ConnectError::Rejected {
            status,
            retry_after,
        });
    }
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(ConnectError::Protocol(
            "101 without Upgrade: websocket".into(),
        ));
    }
    if header("sec-websocket-accept").as_deref() != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return Err(ConnectError::Protocol(
            "Sec-WebSocket-Accept does not match".into(),
        ));
    }
    Ok(Some(header_len))
}

/// A `Retry-After` value in delta-seconds (an HTTP-date is not honoured: `None`).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upgrade_answers() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x01\x00";
        assert_eq!(
            parse_response(ok.as_bytes(), key).unwrap(),
            Some(ok.len() - 2)
        );
        assert_eq!(parse_response(&ok.as_bytes()[..20], key).unwrap(), None);
        let bad_key = ok.replace("s3pP", "AAAA");
        assert!(matches!(
            parse_response(bad_key.as_bytes(), key),
            Err(ConnectError::Protocol(_))
        ));
        let refused = "HTTP/1.1 503 Busy\r\nRetry-After: 7\r\n\r\n";
        assert!(matches!(
            parse_response(refused.as_bytes(), key),
            Err(ConnectError::Rejected { status: 503, retry_after: Some(d) }) if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            parse_response(b"garbage\r\n\r\n", key),
            Err(ConnectError::Protocol(_))
        ));
    }

    #[test]
    fn retry_after_is_delta_seconds_only() {
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        for v in [
            "",
            "-1",
            "1.5",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "99999999999999999999",
            "+5",
        ] {
            assert_eq!(parse_retry_after(v), None, "{v:?}");
        }
    }

    fn ok(url: &str) -> Target {
        Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e:?}"))
    }

    #[test]
    fn parses_good_urls() {
        let t = ok("ws://example.com/chat?x=1");
        assert_eq!(
            (t.host(), t.port, t.resource()),
            ("example.com", 80, "/chat?x=1")
        );
        assert_eq!(t.host_header(), "example.com");
        let t = ok("ws://127.0.0.1:9001");
        assert_eq!(
            (t.port, t.resource(), t.host_header()),
            (9001, "/", "127.0.0.1:9001")
        );
        let t = ok("WS://[::1]:8080/a");
        assert_eq!(
            (t.host(), t.port, t.host_header()),
            ("::1", 8080, "[::1]:8080")
        );
        let t = ok("ws://h?q");
        assert_eq!(t.resource(), "/?q");
    }

    #[test]
    fn refuses_bad_urls_with_reasons() {
        for url in [
            "",
            "example.com",
            "http://example.com",
            "ws://",
            "ws://:80",
            "ws://h:0",
            "ws://h:65536",
            "ws://h:x",
            "ws://u:p@h/",
            "ws://h/#frag",
            "ws://h h/",
            "ws://[::1",
            "ws://[zz]/",
            "ws://[::1]x/",
            "ws://h\n/",
            "ws://h%41/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(UrlError::Invalid(_))),
                "{url:?} accepted"
            );
        }
        assert!(matches!(
            Target::parse("wss://example.com"),
            Err(UrlError::Unsupported(_))
        ));
    }
}
