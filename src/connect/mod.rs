//! Opening a connection: URL ([`url`]), name resolution ([`resolve`]), TCP connect, and the
//! HTTP/1.1 upgrade ([`upgrade`]) done by our own code.
//!
//! We write the upgrade request and parse the answer ourselves (with tungstenite's key helpers and
//! `httparse`) instead of calling `client_async`: that keeps the handshake's buffers and future out
//! of the connection's long-lived memory, lets the framing start with a small read buffer, and gives
//! us the refused status and `Retry-After` as plain values. `wss://`, proxies and extra transports
//! plug in at [`open`], where the TCP stream is made.

pub mod resolve;
pub mod upgrade;
mod url;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tungstenite::handshake::client::generate_key;

use crate::config::Config;
use crate::wire::Wire;

pub use self::resolve::ResolverHook;
pub use self::upgrade::{parse_response, parse_retry_after, Accepted, Expect};
pub use self::url::{Target, UrlError};

/// The transport a connection runs on. A TLS stream joins this when `wss://` lands.
pub type Transport = TcpStream;
/// An open WebSocket on our transport.
pub type Socket = Wire<Transport>;

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
    /// The connect timeout ran out; the text says in which step.
    Timeout(String),
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
            ConnectError::Timeout(m) => f.write_str(m),
        }
    }
}

/// An open connection and what the handshake settled.
pub struct Opened {
    pub socket: Box<Socket>,
    /// The subprotocol the server chose, one of `Config::subprotocols`; `None` if it chose none.
    pub subprotocol: Option<String>,
    /// The address we are connected to.
    pub peer: SocketAddr,
    /// The server's status line, e.g. `HTTP/1.1 101 Switching Protocols`.
    pub status_line: String,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("subprotocol", &self.subprotocol)
            .field("peer", &self.peer)
            .field("status_line", &self.status_line)
            .finish_non_exhaustive()
    }
}

/// Resolves, connects TCP, performs the upgrade. The whole of it is bounded by
/// `cfg.connect_timeout`; running out is [`ConnectError::Timeout`] naming the step.
pub async fn open(target: &Target, cfg: &Config) -> Result<Opened, ConnectError> {
    let limit = cfg.connect_timeout;
    let deadline = Instant::now() + limit;
    let addrs: std::sync::Arc<[SocketAddr]> = if let Ok(ip) = target.host().parse::<IpAddr>() {
        // An IP literal needs no resolver (and no thread).
        [SocketAddr::new(ip, target.port)].into()
    } else {
        let lookup = resolve::resolve(target.host(), target.port, cfg.resolver.as_ref());
        match timeout_at(deadline, lookup).await {
            Ok(r) => r.map_err(ConnectError::Resolve)?,
            Err(_) => {
                return Err(ConnectError::Timeout(format!(
                    "name resolution of {} did not finish within {limit:?} (the connect timeout)",
                    target.host()
                )))
            }
        }
    };
    let (tcp, peer) = match timeout_at(deadline, tcp_connect(&addrs)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ConnectError::Timeout(format!(
                "no TCP connection to {}:{} within {limit:?} (the connect timeout)",
                target.host(),
                target.port
            )))
        }
    };
    tcp.set_nodelay(true).map_err(ConnectError::Io)?;
    keep_unsent_small(&tcp);
    match timeout_at(deadline, upgrade(tcp, target, cfg)).await {
        Ok(r) => {
            let (socket, accepted) = r?;
            Ok(Opened {
                socket,
                subprotocol: accepted.subprotocol,
                peer,
                status_line: accepted.status_line,
            })
        }
        Err(_) => Err(ConnectError::Timeout(format!(
            "no handshake answer from {peer} within {limit:?} (the connect timeout)"
        ))),
    }
}

/// Most of our bytes the kernel may hold unsent (`TCP_NOTSENT_LOWAT`, Linux and Android).
/// Without it, autotuning lets the send buffer swallow megabytes at once: a heartbeat ping
/// written behind them waits out the whole upload in the kernel, where the session cannot see
/// it move, and a slow but live uplink is declared dead. With it, our backlog stays in the wire,
/// where draining is visible ([`crate::heartbeat::Heartbeat::on_progress`]), and at most this
/// much (plus what is in flight) is ahead of a ping. 16 KiB, as widely deployed for HTTP/2;
/// throughput is unaffected as long as the runtime thread answers writability in time.
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

/// Tries the addresses in order; the first that connects wins.
async fn tcp_connect(addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok((s, addr)),
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
) -> Result<(Box<Socket>, Accepted), ConnectError> {
    let key = generate_key();
    let req = upgrade::request(target, cfg, &key);
    tcp.write_all(req.as_bytes())
        .await
        .map_err(ConnectError::Io)?;
    drop(req);

    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() >= upgrade::MAX_RESPONSE {
            return Err(ConnectError::Protocol(format!(
                "the answer's headers are larger than {} bytes",
                upgrade::MAX_RESPONSE
            )));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(512));
        }
        // Never read past the cap, so the check above sees it.
        let room = upgrade::MAX_RESPONSE - buf.len();
        let n = (&mut tcp)
            .take(room as u64)
            .read_buf(&mut buf)
            .await
            .map_err(ConnectError::Io)?;
        if n == 0 {
            return Err(ConnectError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection during the handshake",
            )));
        }
        let expect = Expect {
            key: &key,
            subprotocols: &cfg.subprotocols,
            now: SystemTime::now(),
        };
        let Some(accepted) = parse_response(&buf, &expect)? else {
            continue;
        };
        // What followed the headers is the start of the first frames.
        let rest = buf.split_off(accepted.header_len);
        drop(buf);
        let ws = Wire::new(
            tcp,
            rest,
            cfg.max_message_size,
            cfg.read_buffer_size,
            cfg.write_buffer_size,
        );
        // Boxed: the socket then lives once on the heap, not in every future that holds it.
        return Ok((Box::new(ws), accepted));
    }
}
