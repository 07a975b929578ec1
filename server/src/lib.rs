//! `hbws-server`: the reference heartbeat WebSocket server for the hbws client library.
//!
//! It implements a text-level heartbeat on top of WebSocket:
//!
//! 1. A client's text `ping` is answered with a text `pong` (optionally after a configurable
//!    delay that does not block reading the connection).
//! 2. Every `ping_interval` the server sends its own text `ping` and, if enabled, an RFC 6455
//!    Ping frame. An answer (text `pong` or Pong frame) must arrive within `pong_timeout`;
//!    every interval without one counts as a miss, and after `max_missed` consecutive misses
//!    the client is dropped.
//! 3. Application messages are recorded in the event log and echoed back if `echo` is set.
//!
//! The [`Server`] type is a synchronous façade over a dedicated one-worker tokio runtime,
//! designed to be driven from plain `#[test]` functions, the demo and benchmarks. It only
//! serves plain `ws://` on the address it is given (normally `127.0.0.1:0`).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, http, Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Callback invoked for every [`ServerEvent`], on the server's runtime thread.
///
/// It must be quick and must not block: it runs inside the connection loop.
pub type EventHook = Arc<dyn Fn(&ServerEvent) + Send + Sync>;

/// Configuration of a [`Server`]. Fixed for the server's lifetime; the knobs that tests change
/// while running are methods on [`Server`].
#[derive(Clone)]
pub struct ServerConfig {
    /// How often the server pings each client. `None` (or a zero duration): the server sends no
    /// pings and drops nobody. Default `Some(30 s)`.
    pub ping_interval: Option<Duration>,
    /// How long a client has to answer a server ping before the interval counts as missed.
    /// Default 10 s. If it is longer than `ping_interval`, the next ping ends the wait.
    pub pong_timeout: Duration,
    /// Consecutive misses after which the client is dropped; 0 = never drop. Default 3.
    pub max_missed: u32,
    /// The heartbeat request text, both directions. Default `"ping"`.
    pub ping_text: String,
    /// The heartbeat answer text, both directions. Default `"pong"`.
    pub pong_text: String,
    /// Also send an RFC 6455 Ping frame with every server ping. Default `true`.
    pub send_protocol_pings: bool,
    /// Echo application messages (text and binary) back to their sender. Default `true`.
    pub echo: bool,
    /// Largest accepted incoming message (and frame). Default 16 MiB.
    pub max_message_size: usize,
    /// tungstenite read buffer size per connection. Default 4096.
    pub read_buffer_size: usize,
    /// tungstenite write buffer size per connection. Default 4096.
    pub write_buffer_size: usize,
    /// Hook called for every event (the demo prints a timeline with it). Default `None`.
    pub on_event: Option<EventHook>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ping_interval: Some(Duration::from_secs(30)),
            pong_timeout: Duration::from_secs(10),
            max_missed: 3,
            ping_text: "ping".to_owned(),
            pong_text: "pong".to_owned(),
            send_protocol_pings: true,
            echo: true,
            max_message_size: 16 << 20,
            read_buffer_size: 4096,
            write_buffer_size: 4096,
            on_event: None,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("max_missed", &self.max_missed)
            .field("ping_text", &self.ping_text)
            .field("pong_text", &self.pong_text)
            .field("send_protocol_pings", &self.send_protocol_pings)
            .field("echo", &self.echo)
            .field("max_message_size", &self.max_message_size)
            .field("read_buffer_size", &self.read_buffer_size)
            .field("write_buffer_size", &self.write_buffer_size)
            .field(
                "on_event",
                &self.on_event.as_ref().map(|_| "Fn(&ServerEvent)"),
            )
            .finish()
    }
}

impl ServerConfig {
    /// The tungstenite configuration used for every connection.
    pub fn websocket_config(&self) -> WebSocketConfig {
        let max_write = self
            .write_buffer_size
            .saturating_add(self.max_message_size)
            .saturating_add(1024);
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(self.write_buffer_size)
            .max_write_buffer_size(max_write)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

/// How [`Server::drop_all`] ends connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropKind {
    /// Close the socket normally: the peer sees a TCP FIN (EOF) without a Close frame.
    Fin,
    /// Set `SO_LINGER` to 0 before closing: the peer gets a TCP RST (connection reset).
    Rst,
}

/// How much a [`ServerEvent`] matters, most severe first (so `level <= LogLevel::Info` selects
/// warnings and information). [`ServerEvent::level`] says which each event has; its `Display`
/// form is the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Something failed on the server's side.
    Error,
    /// The peer misbehaved or went quiet: refused or failed handshakes, missed heartbeats,
    /// dropping an unresponsive client.
    Warn,
    /// A connection's life: accepted (peer), handshake done, Close frames and their codes, end.
    Info,
    /// Every heartbeat exchange (pings, pongs with round trip) and message.
    Debug,
}

impl LogLevel {
    /// Upper-case name, as printed by `hbws-server`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            _ => Err(format!(
                "unknown log level {s:?} (error, warn, info, debug)"
            )),
        }
    }
}

/// Everything the server observed, in order. `conn` numbers start at 1 and are assigned when
/// the TCP connection is accepted. Each event is also a log line: see [`ServerEvent::level`]
/// and its `Display`.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    /// A TCP connection was accepted (before the WebSocket handshake).
    Connected {
        /// Connection number.
        conn: u64,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// The client's upgrade request arrived.
    UpgradeRequest {
        /// Connection number.
        conn: u64,
        /// Its request target (path and query).
        path: String,
    },
    /// The handshake failed without an HTTP answer of ours (not HTTP, not an upgrade, I/O).
    HandshakeFailed {
        /// Connection number.
        conn: u64,
        /// What went wrong.
        error: String,
    },
    /// WebSocket handshake completed.
    Accepted {
        /// Connection number.
        conn: u64,
    },
    /// Handshake refused with an HTTP status (see [`Server::refuse_handshakes`]).
    Refused {
        /// Connection number.
        conn: u64,
        /// The HTTP status sent.
        status: u16,
    },
    /// Text ping received from the client.
    ClientPing {
        /// Connection number.
        conn: u64,
    },
    /// Text pong sent in answer to a client ping.
    PongSent {
        /// Connection number.
        conn: u64,
    },
    /// The server's own text ping (plus a Ping frame if enabled) was sent.
    ServerPingSent {
        /// Connection number.
        conn: u64,
    },
    /// Answer to a server ping: a text pong (`protocol == false`) or a Pong frame
    /// (`protocol == true`). Only answers to an outstanding ping are reported.
    PongReceived {
        /// Connection number.
        conn: u64,
        /// Time since the ping was sent.
        rtt: Duration,
        /// Whether the answer was a protocol Pong frame.
        protocol: bool,
    },
    /// A ping interval passed without any answer; `count` consecutive misses so far.
    Missed {
        /// Connection number.
        conn: u64,
        /// Consecutive misses.
        count: u32,
    },
    /// The client missed `max_missed` intervals in a row and was dropped.
    DroppedUnresponsive {
        /// Connection number.
        conn: u64,
    },
    /// Application text received.
    Text {
        /// Connection number.
        conn: u64,
        /// The text.
        text: String,
    },
    /// Application binary received.
    Binary {
        /// Connection number.
        conn: u64,
        /// The payload.
        data: Vec<u8>,
    },
    /// The client sent a Close frame (`code` is `None` for an empty Close frame).
    CloseReceived {
        /// Connection number.
        conn: u64,
        /// The close code, if any.
        code: Option<u16>,
    },
    /// The server sent a Close frame of its own (see [`Server::close_all`]).
    CloseSent {
        /// Connection number.
        conn: u64,
        /// The close code.
        code: u16,
    },
    /// The connection ended, for any reason. Always the last event of a connection that was
    /// [`ServerEvent::Accepted`]; connections that never completed the handshake get none.
    Disconnected {
        /// Connection number.
        conn: u64,
    },
}

impl ServerEvent {
    /// The connection number the event is about.
    pub fn conn(&self) -> u64 {
        match *self {
            ServerEvent::Connected { conn, .. }
            | ServerEvent::UpgradeRequest { conn, .. }
            | ServerEvent::HandshakeFailed { conn, .. }
            | ServerEvent::CloseSent { conn, .. }
            | ServerEvent::Accepted { conn }
            | ServerEvent::Refused { conn, .. }
            | ServerEvent::ClientPing { conn }
            | ServerEvent::PongSent { conn }
            | ServerEvent::ServerPingSent { conn }
            | ServerEvent::PongReceived { conn, .. }
            | ServerEvent::Missed { conn, .. }
            | ServerEvent::DroppedUnresponsive { conn }
            | ServerEvent::Text { conn, .. }
            | ServerEvent::Binary { conn, .. }
            | ServerEvent::CloseReceived { conn, .. }
            | ServerEvent::Disconnected { conn } => conn,
        }
    }

    /// The event's log level.
    pub fn level(&self) -> LogLevel {
        match self {
            ServerEvent::Connected { .. }
            | ServerEvent::Accepted { .. }
            | ServerEvent::CloseReceived { .. }
            | ServerEvent::CloseSent { .. }
            | ServerEvent::Disconnected { .. } => LogLevel::Info,
            ServerEvent::Refused { .. }
            | ServerEvent::HandshakeFailed { .. }
            | ServerEvent::Missed { .. }
            | ServerEvent::DroppedUnresponsive { .. } => LogLevel::Warn,
            ServerEvent::UpgradeRequest { .. }
            | ServerEvent::ClientPing { .. }
            | ServerEvent::PongSent { .. }
            | ServerEvent::ServerPingSent { .. }
            | ServerEvent::PongReceived { .. }
            | ServerEvent::Text { .. }
            | ServerEvent::Binary { .. } => LogLevel::Debug,
        }
    }
}

/// The log line of the event (without its level), e.g. `conn 3: pong received (text), rtt
/// 0.214 ms`.
impl fmt::Display for ServerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn {}: ", self.conn())?;
        match self {
            ServerEvent::Connected { peer, .. } => write!(f, "TCP connection from {peer}"),
            ServerEvent::UpgradeRequest { path, .. } => write!(f, "upgrade request for {path}"),
            ServerEvent::HandshakeFailed { error, .. } => write!(f, "handshake failed: {error}"),
            ServerEvent::Accepted { .. } => write!(f, "handshake done: 101 Switching Protocols"),
            ServerEvent::Refused { status, .. } => {
                write!(f, "handshake refused with HTTP {status}")
            }
            ServerEvent::ClientPing { .. } => write!(f, "ping received"),
            ServerEvent::PongSent { .. } => write!(f, "pong sent"),
            ServerEvent::ServerPingSent { .. } => write!(f, "ping sent"),
            ServerEvent::PongReceived { rtt, protocol, .. } => write!(
                f,
                "pong received ({}), rtt {:.3} ms",
                if *protocol { "Pong frame" } else { "text" },
                rtt.as_secs_f64() * 1e3
            ),
            ServerEvent::Missed { count, .. } => {
                write!(f, "no pong within the timeout: {count} missed in a row")
            }
            ServerEvent::DroppedUnresponsive { .. } => write!(f, "dropping unresponsive client"),
            ServerEvent::Text { text, .. } => write!(f, "text message, {} bytes", text.len()),
            ServerEvent::Binary { data, .. } => write!(f, "binary message, {} bytes", data.len()),
            ServerEvent::CloseReceived { code: Some(c), .. } => {
                write!(f, "Close frame received, code {c}")
            }
            ServerEvent::CloseReceived { code: None, .. } => {
                write!(f, "Close frame received, no code")
            }
            ServerEvent::CloseSent { code, .. } => write!(f, "Close frame sent, code {code}"),
            ServerEvent::Disconnected { .. } => write!(f, "connection ended"),
        }
    }
}

/// How current connections are to be ended (sent through a watch channel so it is never lost).
#[derive(Clone, Debug)]
enum EndAction {
    None,
    Drop(DropKind),
    Close(u16, String),
}

/// Messages pushed to every connection (bounded broadcast; a connection that lags loses some).
#[derive(Clone, Debug)]
enum Cmd {
    Text(Utf8Bytes),
    Binary(Bytes),
}

/// Capacity of the per-server command broadcast channel.
const CMD_CAPACITY: usize = 1024;
/// At most this many delayed pongs are queued per connection; further pings are not answered.
const MAX_DUE_PONGS: usize = 1024;
/// How long `close_all` waits for the client's Close reply before dropping the socket.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Bound on every blocking wait in `stop` / `Drop`.
const STOP_WAIT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared between the façade and the runtime's tasks.
struct Shared {
    cfg: ServerConfig,
    log: Mutex<Vec<ServerEvent>>,
    log_cv: Condvar,
    /// Number of live connection tasks (handshaken or not).
    tasks: Mutex<usize>,
    tasks_cv: Condvar,
    pong_delay_nanos: AtomicU64,
    refuse: Mutex<Option<(u16, Option<u32>)>>,
    silent: watch::Sender<bool>,
    ender: watch::Sender<EndAction>,
    cmds: broadcast::Sender<Cmd>,
    connections: AtomicUsize,
    next_conn: AtomicU64,
}

impl Shared {
    fn new(cfg: ServerConfig) -> Shared {
        Shared {
            cfg,
            log: Mutex::new(Vec::new()),
            log_cv: Condvar::new(),
            tasks: Mutex::new(0),
            tasks_cv: Condvar::new(),
            pong_delay_nanos: AtomicU64::new(0),
            refuse: Mutex::new(None),
            silent: watch::Sender::new(false),
            ender: watch::Sender::new(EndAction::None),
            cmds: broadcast::Sender::new(CMD_CAPACITY),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
        }
    }

    fn emit(&self, ev: ServerEvent) {
        if let Some(hook) = &self.cfg.on_event {
            hook(&ev);
        }
        lock(&self.log).push(ev);
        self.log_cv.notify_all();
    }

    fn pong_delay(&self) -> Duration {
        Duration::from_nanos(self.pong_delay_nanos.load(Ordering::Relaxed))
    }

    fn wait_tasks_done(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut n = lock(&self.tasks);
        while *n > 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            n = self
                .tasks_cv
                .wait_timeout(n, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Spawns the task for a freshly accepted TCP connection. Must run inside the runtime.
    fn spawn_connection(self: &Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.emit(ServerEvent::Connected { conn, peer });
        let guard = TaskGuard::new(self.clone());
        let ender = self.ender.subscribe();
        let silent = self.silent.subscribe();
        let cmds = self.cmds.subscribe();
        let shared = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            connection(shared, tcp, conn, ender, silent, cmds).await;
        });
    }
}

/// Counts a live connection task; decremented when the task ends or is dropped.
struct TaskGuard(Arc<Shared>);

impl TaskGuard {
    fn new(shared: Arc<Shared>) -> TaskGuard {
        *lock(&shared.tasks) += 1;
        TaskGuard(shared)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        *lock(&self.0.tasks) -= 1;
        self.0.tasks_cv.notify_all();
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Why the connection loop ended.
enum Exit {
    /// Peer closed, I/O or protocol error.
    Gone,
    /// Ended by a server command.
    End(EndAction),
    /// Too many missed pings.
    Unresponsive,
}

fn end_exit(r: Result<(), watch::error::RecvError>, rx: &mut watch::Receiver<EndAction>) -> Exit {
    match r {
        Ok(()) => Exit::End(rx.borrow_and_update().clone()),
        Err(_) => Exit::End(EndAction::Drop(DropKind::Fin)),
    }
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends one message, giving up if an end command arrives meanwhile (a client that does not
/// read must not wedge the connection task).
async fn send(
    ws: &mut Ws,
    ender: &mut watch::Receiver<EndAction>,
    msg: Message,
) -> Result<(), Exit> {
    tokio::select! {
        r = ws.send(msg) => r.map_err(|_| Exit::Gone),
        r = ender.changed() => Err(end_exit(r, ender)),
    }
}

/// Builds the refusal response for [`Server::refuse_handshakes`].
fn refusal(status: u16, retry_after: Option<u32>) -> ErrorResponse {
    let mut b = http::Response::builder()
        .status(status)
        .header("Connection", "close")
        .header("Content-Length", "0");
    if let Some(secs) = retry_after {
        b = b.header("Retry-After", secs.to_string());
    }
    b.body(None).unwrap_or_else(|_| {
        let mut r = ErrorResponse::new(None);
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// One TCP connection from accept to close.
async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    conn: u64,
    mut ender: watch::Receiver<EndAction>,
    mut silent: watch::Receiver<bool>,
    mut cmds: broadcast::Receiver<Cmd>,
) {
    let _ = tcp.set_nodelay(true);
    // A silent server accepts TCP but does not answer the handshake.
    loop {
        if !*silent.borrow_and_update() {
            break;
        }
        tokio::select! {
            r = silent.changed() => if r.is_err() { return },
            r = ender.changed() => {
                if let Exit::End(EndAction::Drop(DropKind::Rst)) = end_exit(r, &mut ender) {
                    let _ = tcp.set_zero_linger();
                }
                return;
            }
        }
    }

    let refuse_from = shared.clone();
    // The signature is tungstenite's `Callback`; the large error type is theirs.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        refuse_from.emit(ServerEvent::UpgradeRequest {
            conn,
            path: req.uri().to_string(),
        });
        match *lock(&refuse_from.refuse) {
            None => Ok(resp),
            Some((status, retry_after)) => Err(refusal(status, retry_after)),
        }
    };
    let config = Some(shared.cfg.websocket_config());
    let mut ws = tokio::select! {
        r = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, config) => match r {
            Ok(ws) => ws,
            Err(tungstenite::Error::Http(resp)) => {
                shared.emit(ServerEvent::Refused { conn, status: resp.status().as_u16() });
                return;
            }
            Err(e) => {
                shared.emit(ServerEvent::HandshakeFailed { conn, error: e.to_string() });
                return;
            }
        },
        _ = ender.changed() => return,
    };

    shared.connections.fetch_add(1, Ordering::SeqCst);
    shared.emit(ServerEvent::Accepted { conn });
    let exit = run(&shared, conn, &mut ws, &mut ender, &mut silent, &mut cmds).await;
    match exit {
        Exit::End(EndAction::Drop(DropKind::Rst)) => {
            let _ = ws.get_ref().set_zero_linger();
        }
        Exit::End(EndAction::Close(code, reason)) => {
            shared.emit(ServerEvent::CloseSent { conn, code });
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let closing = async {
                if ws.close(Some(frame)).await.is_err() {
                    return;
                }
                // Wait for the client's Close reply (or EOF), then drop the socket.
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Close(f) = msg {
                        let code = f.map(|f| u16::from(f.code));
                        shared.emit(ServerEvent::CloseReceived { conn, code });
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::timeout(CLOSE_WAIT, closing) => {}
                _ = ender.changed() => {}
            }
        }
        Exit::Unresponsive => shared.emit(ServerEvent::DroppedUnresponsive { conn }),
        Exit::End(EndAction::Drop(DropKind::Fin)) | Exit::End(EndAction::None) | Exit::Gone => {}
    }
    drop(ws);
    shared.connections.fetch_sub(1, Ordering::SeqCst);
    shared.emit(ServerEvent::Disconnected { conn });
}

/// The heartbeat loop of a handshaken connection.
async fn run(
    shared: &Shared,
    conn: u64,
    ws: &mut Ws,
    ender: &mut watch::Receiver<EndAction>,
    silent: &mut watch::Receiver<bool>,
    cmds: &mut broadcast::Receiver<Cmd>,
) -> Exit {
    let cfg = &shared.cfg;
    let mut ticker = cfg.ping_interval.filter(|d| !d.is_zero()).map(|d| {
        let mut t = tokio::time::interval_at(Instant::now() + d, d);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let ping_text: Utf8Bytes = cfg.ping_text.as_str().into();
    let pong_text: Utf8Bytes = cfg.pong_text.as_str().into();
    let mut missed: u32 = 0;
    let mut answered = true;
    // When the outstanding server ping's answer is due (None: nothing to evaluate).
    let mut deadline: Option<Instant> = None;
    let mut text_ping_at: Option<Instant> = None;
    let mut proto_ping_at: Option<Instant> = None;
    // Due times of delayed pongs, non-decreasing.
    let mut due_pongs: VecDeque<Instant> = VecDeque::new();

    macro_rules! try_send {
        ($msg:expr) => {
            if let Err(e) = send(ws, ender, $msg).await {
                return e;
            }
        };
    }
    // Counts a miss; returns from `run` once the client is to be dropped.
    macro_rules! miss {
        () => {{
            missed += 1;
            shared.emit(ServerEvent::Missed {
                conn,
                count: missed,
            });
            if cfg.max_missed > 0 && missed >= cfg.max_missed {
                return Exit::Unresponsive;
            }
        }};
    }

    loop {
        if *silent.borrow_and_update() {
            // Hung: read nothing (not even protocol pings), answer nothing, ping nobody.
            loop {
                tokio::select! {
                    biased;
                    r = ender.changed() => return end_exit(r, ender),
                    r = silent.changed() => {
                        if r.is_err() {
                            return Exit::Gone;
                        }
                        if !*silent.borrow_and_update() {
                            break;
                        }
                    }
                    r = cmds.recv() => {
                        // Pushes while silent are discarded.
                        if let Err(RecvError::Closed) = r {
                            return Exit::Gone;
                        }
                    }
                }
            }
            // Start the heartbeat afresh.
            if let Some(t) = ticker.as_mut() {
                t.reset();
            }
            missed = 0;
            answered = true;
            deadline = None;
            text_ping_at = None;
            proto_ping_at = None;
            continue;
        }

        let next_pong = due_pongs.front().copied();
        // Biased: commands and silence must win over traffic that is ready at the same time.
        tokio::select! {
            biased;
            r = ender.changed() => return end_exit(r, ender),
            r = silent.changed() => {
                if r.is_err() {
                    return Exit::Gone;
                }
                // The loop head looks at the new value.
            }
            _ = tick(&mut ticker) => {
                if deadline.take().is_some() && !answered {
                    miss!();
                }
                try_send!(Message::Text(ping_text.clone()));
                if cfg.send_protocol_pings {
                    try_send!(Message::Ping(Bytes::new()));
                }
                let now = Instant::now();
                shared.emit(ServerEvent::ServerPingSent { conn });
                text_ping_at = Some(now);
                proto_ping_at = cfg.send_protocol_pings.then_some(now);
                answered = false;
                deadline = Some(now + cfg.pong_timeout);
            }
            _ = sleep_until_opt(deadline) => {
                deadline = None;
                if !answered {
                    miss!();
                }
            }
            _ = sleep_until_opt(next_pong) => {
                due_pongs.pop_front();
                try_send!(Message::Text(pong_text.clone()));
                shared.emit(ServerEvent::PongSent { conn });
            }
            r = cmds.recv() => match r {
                Ok(Cmd::Text(t)) => {
                    if t == ping_text && text_ping_at.is_none() {
                        text_ping_at = Some(Instant::now());
                    }
                    try_send!(Message::Text(t));
                }
                Ok(Cmd::Binary(b)) => try_send!(Message::Binary(b)),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Exit::Gone,
            },
            m = ws.next() => {
                let msg = match m {
                    Some(Ok(msg)) => msg,
                    None | Some(Err(_)) => return Exit::Gone,
                };
                match msg {
                    Message::Text(t) if t == ping_text => {
                        shared.emit(ServerEvent::ClientPing { conn });
                        let delay = shared.pong_delay();
                        if delay.is_zero() && due_pongs.is_empty() {
                            try_send!(Message::Text(pong_text.clone()));
                            shared.emit(ServerEvent::PongSent { conn });
                        } else if due_pongs.len() < MAX_DUE_PONGS {
                            let mut due = Instant::now() + delay;
                            if let Some(&last) = due_pongs.back() {
                                due = due.max(last);
                            }
                            due_pongs.push_back(due);
                        }
                    }
                    Message::Text(t) if t == pong_text => {
                        answered = true;
                        missed = 0;
                        if let Some(at) = text_ping_at.take() {
                            let rtt = at.elapsed();
                            shared.emit(ServerEvent::PongReceived { conn, rtt, protocol: false });
                        }
                    }
                    Message::Text(t) => {
                        shared.emit(ServerEvent::Text { conn, text: t.as_str().to_owned() });
                        if cfg.echo {
                            try_send!(Message::Text(t));
                        }
                    }
                    Message::Binary(b) => {
                        shared.emit(ServerEvent::Binary { conn, data: b.to_vec() });
                        if cfg.echo {
                            try_send!(Message::Binary(b));
                        }
                    }
                    Message::Pong(_) => {
                        answered = true;
                        missed = 0;
                        if let Some(at) = proto_ping_at.take() {
                            let rtt = at.elapsed();
                            shared.emit(ServerEvent::PongReceived { conn, rtt, protocol: true });
                        }
                    }
                    Message::Close(f) => {
                        // tungstenite queues the Close reply; the stream then ends.
                        let code = f.map(|f| u16::from(f.code));
                        shared.emit(ServerEvent::CloseReceived { conn, code });
                    }
                    // Protocol pings are answered by tungstenite itself.
                    Message::Ping(_) | Message::Frame(_) => {}
                }
            }
        }
    }
}

/// Accepts connections until told to stop; then closes the listener and reports it.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: oneshot::Receiver<()>,
    done: std::sync::mpsc::SyncSender<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => shared.spawn_connection(tcp, peer),
                Err(_) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    let _ = done.send(());
}

/// Handle on a running accept loop.
struct ListenerCtl {
    stop: oneshot::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

/// The reference heartbeat server: a synchronous façade over its own one-worker tokio runtime.
///
/// Dropping it stops everything (listener, connections, tasks) without blocking for long and
/// without panicking, also when dropped inside another tokio runtime.
pub struct Server {
    shared: Arc<Shared>,
    rt: Option<Runtime>,
    addr: SocketAddr,
    listener: Mutex<Option<ListenerCtl>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts a server on `127.0.0.1` with an OS-chosen port.
    pub fn start(cfg: ServerConfig) -> io::Result<Server> {
        Server::start_on(
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            cfg,
        )
    }

    /// Starts a server listening on `addr` (port 0: OS-chosen; [`Server::addr`] tells which).
    pub fn start_on(addr: SocketAddr, cfg: ServerConfig) -> io::Result<Server> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hbws-server")
            .enable_all()
            .build()?;
        let mut server = Server {
            shared: Arc::new(Shared::new(cfg)),
            rt: Some(rt),
            addr,
            listener: Mutex::new(None),
        };
        // On error `server` is dropped, which shuts the runtime down safely.
        server.addr = server.listen(addr)?;
        Ok(server)
    }

    /// Binds `addr` and spawns the accept loop; returns the bound address.
    fn listen(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let mut ctl = lock(&self.listener);
        let rt = self.rt.as_ref().expect("runtime present until drop");
        // std sets SO_REUSEADDR on Unix, so the same port can be bound again right after stop.
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let bound = std_listener.local_addr()?;
        let listener = {
            let _enter = rt.enter();
            TcpListener::from_std(std_listener)?
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(accept_loop(self.shared.clone(), listener, stop_rx, done_tx));
        *ctl = Some(ListenerCtl {
            stop: stop_tx,
            done: done_rx,
        });
        Ok(bound)
    }

    /// The address the server listens on (kept across [`Server::stop`] / [`Server::restart`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Silent (`true`): every current and new connection stops reading, answering and pinging
    /// while the TCP connection stays open, like a hung server. New TCP connections are
    /// accepted but their handshake is not answered. `false` resumes normal processing of the
    /// connections still open (their heartbeat restarts from zero misses). Messages pushed with
    /// `send_*_to_all` while silent are discarded.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.send_replace(silent);
    }

    /// Delay before answering a client's text ping (simulates slow pongs). Does not block
    /// reading the connection; pongs keep their order.
    pub fn set_pong_delay(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.shared.pong_delay_nanos.store(nanos, Ordering::Relaxed);
    }

    /// `Some(status)`: answer every new upgrade request with that HTTP status (it must not be a
    /// 2xx; an invalid status becomes 500) plus `Retry-After: secs` if given, then close.
    /// `None`: accept normally.
    pub fn refuse_handshakes(&self, status: Option<u16>, retry_after_secs: Option<u32>) {
        *lock(&self.shared.refuse) = status.map(|s| (s, retry_after_secs));
    }

    /// Abruptly closes every current connection, without a Close frame.
    pub fn drop_all(&self, how: DropKind) {
        self.shared.ender.send_replace(EndAction::Drop(how));
    }

    /// Sends a Close frame with `code` and `reason` to every client, waits (up to 2 s) for the
    /// client's Close reply, then ends the connection.
    pub fn close_all(&self, code: u16, reason: &str) {
        self.shared
            .ender
            .send_replace(EndAction::Close(code, reason.to_owned()));
    }

    /// Sends a text message to every current client (e.g. `"ping"` or an application message).
    /// Sending the ping text makes the client's next text pong reportable as `PongReceived`.
    pub fn send_text_to_all(&self, text: &str) {
        let _ = self.shared.cmds.send(Cmd::Text(text.into()));
    }

    /// Sends a binary message to every current client.
    pub fn send_binary_to_all(&self, data: &[u8]) {
        let _ = self
            .shared
            .cmds
            .send(Cmd::Binary(Bytes::copy_from_slice(data)));
    }

    /// Closes the listener and drops all connections (FIN). Returns once the listening socket
    /// is closed and the connection tasks have ended (each wait bounded to 5 s). Idempotent.
    pub fn stop(&self) {
        let ctl = lock(&self.listener).take();
        if let Some(ctl) = ctl {
            let _ = ctl.stop.send(());
            let _ = ctl.done.recv_timeout(STOP_WAIT);
        }
        self.shared
            .ender
            .send_replace(EndAction::Drop(DropKind::Fin));
        self.shared.wait_tasks_done(STOP_WAIT);
    }

    /// Binds the same address again and serves, after [`Server::stop`]. A no-op if the server
    /// is already listening. Silence, pong delay and refusal settings are kept.
    pub fn restart(&self) -> io::Result<()> {
        if lock(&self.listener).is_some() {
            return Ok(());
        }
        self.listen(self.addr).map(|_| ())
    }

    /// Currently open (handshaken) connections.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The whole event log so far.
    pub fn events(&self) -> Vec<ServerEvent> {
        lock(&self.shared.log).clone()
    }

    /// The event log as log lines (`LEVEL message`), keeping those at `max` or more severe.
    pub fn log_lines(&self, max: LogLevel) -> Vec<String> {
        lock(&self.shared.log)
            .iter()
            .filter(|e| e.level() <= max)
            .map(|e| format!("{} {e}", e.level().as_str()))
            .collect()
    }

    /// Empties the event log (e.g. between benchmark rounds).
    pub fn clear_events(&self) {
        // Release the memory too: a long run that clears after every round must stay flat.
        *lock(&self.shared.log) = Vec::new();
    }

    /// Blocks until `pred(log)` is true (checked now and after every new event) or `timeout`
    /// passes; returns whether it became true.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[ServerEvent]) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut log = lock(&self.shared.log);
        loop {
            if pred(&log) {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            log = self
                .shared
                .log_cv
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Application texts received, in arrival order, from all connections.
    pub fn received_texts(&self) -> Vec<String> {
        lock(&self.shared.log)
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Text { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
