//! The upgrade handshake over real loopback sockets (RFC 6455 section 4.1): what the client
//! sends, taken from the parsed URL, and what it accepts. A raw server (tests/support/states.rs)
//! answers each request with exactly the bytes a test wants, so each refusal is one departure
//! from a valid 101.
//!
//! The first part uses only the API that existed before the strict handshake, so it also runs
//! against older code; the second (after "Subprotocols") uses `connect::open` and the options
//! added with it.

#[path = "support/states.rs"]
mod states;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hbws::{Client, Config, Reason, State};
use states::{accept_with, header, is, RawServer, States, WAIT};

fn cfg() -> Config {
    Config {
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        backoff_min: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// Connects to `url`, returns the first outcome after CONNECTING, closes.
fn first_outcome(url: &str, cfg: Config) -> hbws::StateChange {
    let rec = States::new();
    let c = Client::connect(url, Arc::new(cfg), rec.sink()).unwrap();
    let (s, _) = rec.first_outcome(WAIT);
    c.close(true);
    s
}

/// The server's 101 breaks RFC 6455 in one way: the attempt fails with PROTOCOL_ERROR whose
/// detail contains `why`.
fn refused_101(extra: &'static str, edit: fn(String) -> String, why: &str) {
    let srv = RawServer::start(move |_, accept| edit(accept_with(accept, extra)));
    let s = first_outcome(&srv.url(), cfg());
    assert!(
        is(&s, State::Reconnecting, Reason::ProtocolError),
        "accepted: {s:?}"
    );
    assert!(s.detail.contains(why), "{:?} lacks {why:?}", s.detail);
    eprintln!("refused: {}", s.detail);
}

#[test]
fn handshake_extension_not_offered_is_refused() {
    refused_101(
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        |a| a,
        "extension we did not offer",
    );
}

#[test]
fn handshake_subprotocol_not_offered_is_refused() {
    refused_101(
        "Sec-WebSocket-Protocol: chat\r\n",
        |a| a,
        "subprotocol \"chat\" but we offered none",
    );
}

#[test]
fn handshake_http_1_0_101_is_refused() {
    refused_101(
        "",
        |a| a.replacen("HTTP/1.1", "HTTP/1.0", 1),
        "RFC 6455 requires HTTP/1.1",
    );
}

#[test]
fn handshake_duplicate_accept_is_refused() {
    // Two Sec-WebSocket-Accept lines, the first one right: still refused.
    refused_101(
        "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
        |a| a,
        "more than one Sec-WebSocket-Accept",
    );
}

#[test]
fn handshake_with_64_headers_is_accepted() {
    let srv = RawServer::start(|_, accept| {
        let filler: String = (0..70)
            .map(|i| format!("X-Filler-{i}: value {i}\r\n"))
            .collect();
        accept_with(accept, &filler)
    });
    let s = first_outcome(&srv.url(), cfg());
    assert!(is(&s, State::Open, Reason::None), "{s:?}");
}

/// The request line and Host header come from the WHATWG-parsed URL: canonical IPv4 (`0x7f.1`
/// is 127.0.0.1), a percent-encoded path and query, the port only when it is not 80.
#[test]
fn handshake_request_comes_from_the_parsed_url() {
    let srv = RawServer::start(|_, accept| accept_with(accept, ""));
    let url = format!("ws://0x7f.1:{}/caf%C3%A9/é?q=ü&r", srv.addr.port());
    let s = first_outcome(&url, cfg());
    assert!(is(&s, State::Open, Reason::None), "{s:?}");
    let req = &srv.requests()[0];
    let line = req.lines().next().unwrap();
    assert_eq!(line, "GET /caf%C3%A9/%C3%A9?q=%C3%BC&r HTTP/1.1");
    assert_eq!(
        header(req, "Host").as_deref(),
        Some(format!("127.0.0.1:{}", srv.addr.port()).as_str())
    );
    assert_eq!(header(req, "Sec-WebSocket-Protocol"), None, "none offered");
    assert_eq!(
        header(req, "Sec-WebSocket-Extensions"),
        None,
        "none offered"
    );
}

/// A refusal's `Retry-After: 120` is waited in full, although the backoff cap is 200 ms.
#[test]
fn retry_after_seconds_beyond_the_backoff_cap_are_honoured() {
    let srv = RawServer::start(|_, _| {
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n".into()
    });
    let s = first_outcome(&srv.url(), cfg());
    assert!(
        is(&s, State::Reconnecting, Reason::HandshakeRejected),
        "{s:?}"
    );
    assert_eq!(s.http_status, 503);
    assert_eq!(s.delay, Duration::from_secs(120), "{s:?}");
}

/// `Retry-After` as an HTTP-date: the time until it.
#[test]
fn retry_after_http_date_is_honoured() {
    let srv = RawServer::start(|_, _| {
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
        format!("HTTP/1.1 429 Too Many Requests\r\nRetry-After: {at}\r\nContent-Length: 0\r\n\r\n")
    });
    let s = first_outcome(&srv.url(), cfg());
    assert!(
        is(&s, State::Reconnecting, Reason::HandshakeRejected),
        "{s:?}"
    );
    // Whole seconds on the wire, and a little time between answer and parse.
    assert!(
        s.delay >= Duration::from_secs(85) && s.delay <= Duration::from_secs(90),
        "{s:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Subprotocols, extra headers, connect::open's report, retry_after_max.

use hbws::connect::{self, ConnectError, ResolverHook, Target};

fn offering(protocols: &[&str]) -> Config {
    let mut c = cfg();
    for p in protocols {
        c.add_subprotocol(p).unwrap();
    }
    c
}

async fn open(url: &str, cfg: &Config) -> Result<connect::Opened, ConnectError> {
    connect::open(&Target::parse(url).unwrap(), cfg).await
}

#[tokio::test]
async fn open_reports_the_chosen_subprotocol_peer_and_status_line() {
    let srv = RawServer::start(|req, accept| {
        assert_eq!(
            header(req, "Sec-WebSocket-Protocol").as_deref(),
            Some("chat.v2, chat.v1")
        );
        accept_with(accept, "Sec-WebSocket-Protocol: chat.v1\r\n")
    });
    let o = open(&srv.url(), &offering(&["chat.v2", "chat.v1"]))
        .await
        .unwrap();
    assert_eq!(o.subprotocol.as_deref(), Some("chat.v1"));
    assert_eq!(o.peer, srv.addr);
    assert_eq!(o.status_line, "HTTP/1.1 101 Switching Protocols");
}

#[tokio::test]
async fn subprotocol_offered_and_none_chosen_is_allowed() {
    let srv = RawServer::start(|_, accept| accept_with(accept, ""));
    let o = open(&srv.url(), &offering(&["chat.v1"])).await.unwrap();
    assert_eq!(o.subprotocol, None);
}

#[tokio::test]
async fn subprotocol_other_than_offered_fails() {
    let srv =
        RawServer::start(|_, accept| accept_with(accept, "Sec-WebSocket-Protocol: chat.v3\r\n"));
    match open(&srv.url(), &offering(&["chat.v2", "chat.v1"])).await {
        Err(ConnectError::Protocol(m)) => {
            assert!(
                m.contains("chat.v3") && m.contains("chat.v2, chat.v1"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Through the client: PROTOCOL_ERROR.
    let s = first_outcome(&srv.url(), offering(&["chat.v1"]));
    assert!(is(&s, State::Reconnecting, Reason::ProtocolError), "{s:?}");
}

/// A Unicode host goes out IDNA-encoded, to the resolver and in Host; extra headers follow the
/// handshake's own.
#[tokio::test]
async fn idna_host_and_extra_headers_are_sent() {
    let srv = RawServer::start(|_, accept| accept_with(accept, ""));
    let port = srv.addr.port();
    let mut c = cfg();
    c.resolver = Some(ResolverHook::new(move |host, p| {
        assert_eq!((host, p), ("xn--bcher-kva.test", port));
        Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], p))])
    }));
    c.add_header("Authorization", "Bearer secret").unwrap();
    c.add_header("X-Trace", "1").unwrap();
    let o = open(&format!("ws://Bücher.test:{port}/"), &c)
        .await
        .unwrap();
    assert_eq!(o.peer, srv.addr);
    let req = &srv.requests()[0];
    assert_eq!(
        header(req, "Host").as_deref(),
        Some(format!("xn--bcher-kva.test:{port}").as_str())
    );
    assert_eq!(
        header(req, "Authorization").as_deref(),
        Some("Bearer secret")
    );
    assert_eq!(header(req, "X-Trace").as_deref(), Some("1"));
}

#[test]
fn retry_after_is_cut_to_retry_after_max() {
    let srv = RawServer::start(|_, _| {
        "HTTP/1.1 503 Busy\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n".into()
    });
    let s = first_outcome(
        &srv.url(),
        Config {
            retry_after_max: Duration::from_secs(7),
            ..cfg()
        },
    );
    assert_eq!(s.delay, Duration::from_secs(7), "{s:?}");
}

#[test]
fn a_101_whose_headers_never_end_is_refused_at_the_cap() {
    let srv = RawServer::start(|_, accept| {
        let filler: String = (0..2000)
            .map(|i| format!("X-{i}: {}\r\n", "v".repeat(20)))
            .collect();
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n{filler}"
        )
    });
    let s = first_outcome(&srv.url(), cfg());
    assert!(is(&s, State::Reconnecting, Reason::ProtocolError), "{s:?}");
    assert!(
        s.detail.contains("more than 100 header lines") || s.detail.contains("larger than"),
        "{:?}",
        s.detail
    );
}
