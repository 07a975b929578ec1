//! Integration tests of the reference heartbeat server, driven from plain synchronous tests with
//! a tokio-tungstenite client on its own current-thread runtime.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use hbws_server::{DropKind, Server, ServerConfig, ServerEvent};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use futures_util::{SinkExt, StreamExt};

/// Generous bound for anything that must happen.
const WAIT: Duration = Duration::from_secs(5);
/// Short window used only to show that something does NOT happen.
const QUIET: Duration = Duration::from_millis(300);

struct Client {
    rt: Runtime,
    ws: WebSocketStream<TcpStream>,
}

fn client_rt() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Client {
    fn try_connect(url: &str) -> Result<Client, tungstenite::Error> {
        let rt = client_rt();
        let addr = url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned();
        let ws = rt.block_on(async {
            let tcp = TcpStream::connect(addr).await?;
            let (ws, _resp) = tokio_tungstenite::client_async(url, tcp).await?;
            Ok::<_, tungstenite::Error>(ws)
        })?;
        Ok(Client { rt, ws })
    }

    fn connect(url: &str) -> Client {
        Client::try_connect(url).expect("connect")
    }

    fn send(&mut self, msg: Message) {
        self.rt.block_on(self.ws.send(msg)).expect("send");
    }

    fn send_text(&mut self, text: &str) {
        self.send(Message::Text(text.into()));
    }

    /// `None`: nothing within `timeout`. End of stream is reported as `ConnectionClosed`.
    fn recv(&mut self, timeout: Duration) -> Option<Result<Message, tungstenite::Error>> {
        let ws = &mut self.ws;
        self.rt
            .block_on(async { tokio::time::timeout(timeout, ws.next()).await })
            .ok()
            .map(|m| m.unwrap_or(Err(tungstenite::Error::ConnectionClosed)))
    }

    fn expect_text(&mut self, timeout: Duration) -> String {
        match self.recv(timeout) {
            Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Reads until the stream ends or fails; returns the terminating result.
    fn read_to_end(&mut self, timeout: Duration) -> Result<(), tungstenite::Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                None => panic!("connection still open after {timeout:?}"),
                Some(Ok(_)) => continue,
                Some(Err(tungstenite::Error::ConnectionClosed)) => return Ok(()),
                Some(Err(e)) => return Err(e),
            }
        }
    }
}

fn quiet_cfg() -> ServerConfig {
    ServerConfig {
        ping_interval: None,
        ..ServerConfig::default()
    }
}

fn has(ev: ServerEvent) -> impl Fn(&[ServerEvent]) -> bool {
    move |log| log.contains(&ev)
}

fn count(log: &[ServerEvent], f: impl Fn(&ServerEvent) -> bool) -> usize {
    log.iter().filter(|e| f(e)).count()
}

#[test]
fn text_ping_is_answered_and_messages_echoed() {
    let server = Server::start(quiet_cfg()).unwrap();
    assert!(server.url().starts_with("ws://127.0.0.1:"));
    let mut c = Client::connect(&server.url());
    assert!(server.wait_for(WAIT, has(ServerEvent::Accepted { conn: 1 })));
    assert_eq!(server.connections(), 1);

    c.send_text("ping");
    assert_eq!(c.expect_text(WAIT), "pong");
    assert!(server.wait_for(WAIT, has(ServerEvent::PongSent { conn: 1 })));

    c.send_text("hello");
    assert_eq!(c.expect_text(WAIT), "hello");
    c.send(Message::Binary(vec![1u8, 2, 3].into()));
    match c.recv(WAIT) {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[1, 2, 3]),
        other => panic!("expected binary echo, got {other:?}"),
    }
    assert_eq!(server.received_texts(), vec!["hello".to_owned()]);
    assert!(server.events().contains(&ServerEvent::Binary {
        conn: 1,
        data: vec![1, 2, 3]
    }));

    server.send_text_to_all("news");
    assert_eq!(c.expect_text(WAIT), "news");
    server.send_binary_to_all(b"bin");
    match c.recv(WAIT) {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"bin"),
        other => panic!("expected binary, got {other:?}"),
    }

    c.rt.block_on(c.ws.close(None)).unwrap();
    assert!(server.wait_for(WAIT, has(ServerEvent::Disconnected { conn: 1 })));
    let log = server.events();
    assert!(log.contains(&ServerEvent::CloseReceived {
        conn: 1,
        code: None
    }));
    assert_eq!(log.last(), Some(&ServerEvent::Disconnected { conn: 1 }));
    assert_eq!(server.connections(), 0);
}

#[test]
fn server_pings_arrive_text_and_protocol() {
    let server = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    })
    .unwrap();
    let mut c = Client::connect(&server.url());
    let (mut text, mut proto) = (false, false);
    let deadline = Instant::now() + WAIT;
    while !(text && proto) {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv(left) {
            Some(Ok(Message::Text(t))) if t.as_str() == "ping" => {
                if !text {
                    c.send_text("pong");
                }
                text = true;
            }
            Some(Ok(Message::Ping(_))) => proto = true,
            other => panic!("unexpected {other:?} (text={text}, proto={proto})"),
        }
    }
    // Keep reading so tungstenite flushes its automatic Pong frame.
    let answered = |log: &[ServerEvent]| {
        let n = |p: bool| {
            count(
                log,
                |e| matches!(e, ServerEvent::PongReceived { protocol, .. } if *protocol == p),
            )
        };
        n(true) > 0 && n(false) > 0
    };
    let deadline = Instant::now() + WAIT;
    while !server.wait_for(Duration::from_millis(20), answered) {
        assert!(
            Instant::now() < deadline,
            "pongs not seen: {:?}",
            server.events()
        );
        let _ = c.recv(Duration::from_millis(20));
    }
    assert!(server
        .events()
        .contains(&ServerEvent::ServerPingSent { conn: 1 }));
}

#[test]
fn unresponsive_client_is_dropped_after_max_missed() {
    let server = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Duration::from_millis(50),
        max_missed: 3,
        ..ServerConfig::default()
    })
    .unwrap();
    // Never reads until the server has given up, so it never answers.
    let mut c = Client::connect(&server.url());
    assert!(server.wait_for(WAIT, has(ServerEvent::DroppedUnresponsive { conn: 1 })));
    assert!(server.wait_for(WAIT, has(ServerEvent::Disconnected { conn: 1 })));
    let log = server.events();
    for n in 1..=3 {
        assert!(log.contains(&ServerEvent::Missed { conn: 1, count: n }));
    }
    assert!(!log.contains(&ServerEvent::Missed { conn: 1, count: 4 }));
    assert_eq!(server.connections(), 0);
    // The client sees the pings it ignored, then the end of the connection.
    let _ = c.read_to_end(WAIT);
}

#[test]
fn refused_handshake_gets_http_status() {
    let server = Server::start(quiet_cfg()).unwrap();
    server.refuse_handshakes(Some(401), Some(7));
    match Client::try_connect(&server.url()) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
            assert_eq!(resp.headers().get("Retry-After").unwrap(), "7");
        }
        Err(e) => panic!("expected an HTTP error, got {e:?}"),
        Ok(_) => panic!("handshake should have been refused"),
    }
    assert!(server.wait_for(
        WAIT,
        has(ServerEvent::Refused {
            conn: 1,
            status: 401
        })
    ));
    assert_eq!(server.connections(), 0);

    server.refuse_handshakes(None, None);
    let mut c = Client::connect(&server.url());
    c.send_text("ping");
    assert_eq!(c.expect_text(WAIT), "pong");
}

#[test]
fn silent_server_stops_answering_until_unsilenced() {
    let server = Server::start(quiet_cfg()).unwrap();
    let mut c = Client::connect(&server.url());
    c.send_text("ping");
    assert_eq!(c.expect_text(WAIT), "pong");

    server.set_silent(true);
    c.send_text("ping");
    // Absence check: nothing may come back during a short window.
    assert!(c.recv(QUIET).is_none(), "silent server answered");
    // A new connection's handshake is not answered either.
    let url = server.url();
    let pending = std::thread::spawn(move || Client::connect(&url));
    std::thread::sleep(QUIET); // absence check, see above
    assert!(
        !pending.is_finished(),
        "silent server completed a handshake"
    );
    assert_eq!(server.connections(), 1);
    assert_eq!(
        count(&server.events(), |e| matches!(
            e,
            ServerEvent::ClientPing { .. }
        )),
        1
    );

    server.set_silent(false);
    assert_eq!(c.expect_text(WAIT), "pong");
    let mut c2 = pending.join().unwrap();
    c2.send_text("ping");
    assert_eq!(c2.expect_text(WAIT), "pong");
    assert_eq!(server.connections(), 2);
}

#[test]
fn stop_then_restart_on_same_port() {
    let server = Server::start(quiet_cfg()).unwrap();
    let addr = server.addr();
    let mut c = Client::connect(&server.url());
    assert!(server.wait_for(WAIT, has(ServerEvent::Accepted { conn: 1 })));

    server.stop();
    assert_eq!(server.connections(), 0);
    assert!(server
        .events()
        .contains(&ServerEvent::Disconnected { conn: 1 }));
    // The connection must end (read_to_end panics if it stays open); FIN, no Close frame.
    let _ = c.read_to_end(WAIT);
    let refused = std::net::TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    server.restart().unwrap();
    assert_eq!(server.addr(), addr);
    let mut c = Client::connect(&server.url());
    c.send_text("ping");
    assert_eq!(c.expect_text(WAIT), "pong");
}

#[test]
fn drop_all_rst_resets_and_fin_closes() {
    let server = Server::start(quiet_cfg()).unwrap();
    let mut c = Client::connect(&server.url());
    assert!(server.wait_for(WAIT, has(ServerEvent::Accepted { conn: 1 })));
    server.drop_all(DropKind::Rst);
    match c.read_to_end(WAIT) {
        Err(tungstenite::Error::Io(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        other => panic!("expected a connection reset, got {other:?}"),
    }
    assert!(server.wait_for(WAIT, has(ServerEvent::Disconnected { conn: 1 })));

    let mut c = Client::connect(&server.url());
    assert!(server.wait_for(WAIT, has(ServerEvent::Accepted { conn: 2 })));
    server.drop_all(DropKind::Fin);
    // EOF without a close handshake, not an I/O error.
    if let Err(tungstenite::Error::Io(e)) = c.read_to_end(WAIT) {
        panic!("FIN should not be an I/O error: {e:?}");
    }
    assert!(server.wait_for(WAIT, has(ServerEvent::Disconnected { conn: 2 })));
}

#[test]
fn close_all_sends_close_frame() {
    let server = Server::start(quiet_cfg()).unwrap();
    let mut c = Client::connect(&server.url());
    assert!(server.wait_for(WAIT, has(ServerEvent::Accepted { conn: 1 })));
    server.close_all(4000, "bye");
    match c.recv(WAIT) {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 4000);
            assert_eq!(f.reason.as_str(), "bye");
        }
        other => panic!("expected a Close frame, got {other:?}"),
    }
    let _ = c.read_to_end(WAIT);
    assert!(server.wait_for(WAIT, has(ServerEvent::Disconnected { conn: 1 })));
}

#[test]
fn pong_delay_delays_pong_without_blocking_reads() {
    let server = Server::start(quiet_cfg()).unwrap();
    let delay = Duration::from_millis(300);
    server.set_pong_delay(delay);
    let mut c = Client::connect(&server.url());
    let t0 = Instant::now();
    c.send_text("ping");
    c.send_text("hello");
    // The echo overtakes the delayed pong: the connection keeps reading meanwhile.
    assert_eq!(c.expect_text(WAIT), "hello");
    assert_eq!(c.expect_text(WAIT), "pong");
    assert!(t0.elapsed() >= delay, "pong after {:?}", t0.elapsed());
}

#[test]
fn drop_inside_async_context_does_not_panic() {
    let rt = client_rt();
    rt.block_on(async {
        let server = Server::start(ServerConfig::default()).unwrap();
        let _c = TcpStream::connect(server.addr()).await.unwrap();
        drop(server);
    });
}

/// Asserts that `want` (line prefixes) appear in `lines` in this order (other lines may come
/// between them).
fn assert_story(lines: &[String], want: &[&str]) {
    let mut it = lines.iter();
    for w in want {
        assert!(
            it.any(|l| l.starts_with(w)),
            "no line {w:?} (in order) in:\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn log_tells_the_story_of_one_healthy_session() {
    let server = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    })
    .unwrap();
    let mut c = Client::connect(&server.url());
    // The client's heartbeat: a text ping, answered.
    c.send_text("ping");
    assert_eq!(c.expect_text(WAIT), "pong");
    // The server's: a text ping (answered with a text pong) and a Ping frame (answered by
    // tungstenite with a Pong frame, flushed on the next read).
    let (mut text, mut proto) = (false, false);
    let deadline = Instant::now() + WAIT;
    while !(text && proto) {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv(left) {
            Some(Ok(Message::Text(t))) if t.as_str() == "ping" => {
                if !text {
                    c.send_text("pong");
                }
                text = true;
            }
            Some(Ok(Message::Ping(_))) => proto = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    let answered =
        |log: &[ServerEvent]| count(log, |e| matches!(e, ServerEvent::PongReceived { .. })) >= 2;
    let deadline = Instant::now() + WAIT;
    while !server.wait_for(Duration::from_millis(20), answered) {
        assert!(Instant::now() < deadline, "{:?}", server.events());
        let _ = c.recv(Duration::from_millis(20));
    }
    c.send_text("hello");
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv(left) {
            Some(Ok(Message::Text(t))) if t.as_str() == "hello" => break,
            Some(Ok(_)) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
    c.rt.block_on(c.ws.close(None)).expect("close");
    let _ = c.read_to_end(WAIT);
    assert!(server.wait_for(WAIT, has(ServerEvent::Disconnected { conn: 1 })));

    let debug = server.log_lines(hbws_server::LogLevel::Debug);
    assert_story(
        &debug,
        &[
            "INFO conn 1: TCP connection from 127.0.0.1:",
            "DEBUG conn 1: upgrade request for /",
            "INFO conn 1: handshake done: 101 Switching Protocols",
            "DEBUG conn 1: ping received",
            "DEBUG conn 1: pong sent",
            "DEBUG conn 1: ping sent",
            "DEBUG conn 1: text message, 5 bytes",
            "INFO conn 1: Close frame received, no code",
            "INFO conn 1: connection ended",
        ],
    );
    for kind in ["(text), rtt ", "(Pong frame), rtt "] {
        assert!(
            debug
                .iter()
                .any(|l| l.starts_with("DEBUG conn 1: pong received ") && l.contains(kind)),
            "no pong {kind} line in:\n{}",
            debug.join("\n")
        );
    }
    assert!(
        !debug
            .iter()
            .any(|l| l.starts_with("WARN") || l.starts_with("ERROR")),
        "a healthy session warned:\n{}",
        debug.join("\n")
    );
    // INFO keeps the connection's life only.
    let info = server.log_lines(hbws_server::LogLevel::Info);
    assert_eq!(info.len(), 4, "{info:#?}");
    assert!(info.iter().all(|l| l.starts_with("INFO conn 1: ")));
}

#[test]
fn log_warns_of_misses_and_dropping_an_unresponsive_client() {
    let server = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Duration::from_millis(50),
        max_missed: 2,
        ..ServerConfig::default()
    })
    .unwrap();
    let mut c = Client::connect(&server.url());
    assert!(server.wait_for(WAIT, has(ServerEvent::Disconnected { conn: 1 })));
    assert_eq!(
        server.log_lines(hbws_server::LogLevel::Warn),
        [
            "WARN conn 1: no pong within the timeout: 1 missed in a row",
            "WARN conn 1: no pong within the timeout: 2 missed in a row",
            "WARN conn 1: dropping unresponsive client",
        ]
    );
    let _ = c.read_to_end(WAIT);
}

#[test]
fn log_reports_the_close_code_the_server_sends() {
    let server = Server::start(quiet_cfg()).unwrap();
    let mut c = Client::connect(&server.url());
    assert!(server.wait_for(WAIT, has(ServerEvent::Accepted { conn: 1 })));
    server.close_all(4001, "bye");
    let _ = c.read_to_end(WAIT);
    assert!(server.wait_for(WAIT, has(ServerEvent::Disconnected { conn: 1 })));
    assert_story(
        &server.log_lines(hbws_server::LogLevel::Info),
        &[
            "INFO conn 1: Close frame sent, code 4001",
            "INFO conn 1: Close frame received, code 4001",
            "INFO conn 1: connection ended",
        ],
    );
}
