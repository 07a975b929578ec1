//! A fault-injecting TCP proxy for the torture tests: listens on `127.0.0.1:0`, forwards every
//! accepted connection to `upstream`, and misbehaves on demand. The mode is switched at run time
//! with [`Proxy::set_mode`]; it applies to current connections at once and to new ones.
//!
//! The proxy either runs on its own one-worker runtime ([`Proxy::start`], for real-time tests
//! driven from plain `#[test]` functions) or on the caller's runtime ([`Proxy::spawn`], for tests
//! on tokio's paused clock, where every socket must live on the one runtime whose clock is
//! paused).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both directions as they come.
    Pass,
    /// Forward nothing in either direction while keeping every socket open (a half-open link):
    /// the proxy stops reading, so the peers' socket buffers fill up. New connections are
    /// accepted and frozen the same way. Back to `Pass`, frozen connections resume.
    Blackhole,
    /// Forward every chunk this long after it was read, order kept, both directions.
    Delay(Duration),
    /// Reset every current and new connection, on both sides: `SO_LINGER` 0, then close (RST).
    Rst,
    /// Close every current and new connection, on both sides, with a FIN.
    Fin,
    /// New connections are accepted and held open, but nothing is forwarded (the handshake is
    /// never answered; the upstream is not even dialled). Current connections keep passing.
    NeverForward,
    /// Server-to-client: forward up to the middle of the next WebSocket frame that has a payload
    /// of two bytes or more, then freeze that connection for good (both directions). A connection
    /// already mid-frame freezes at once. Client-to-server passes until then.
    StallMidFrame,
}

/// How [`Proxy::drop_connections`] ends the current connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kill {
    Rst,
    Fin,
}

struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    /// The kill switch of the current generation of connections; replaced on every kill.
    kill: Mutex<watch::Sender<Option<Kill>>>,
    accepted: AtomicU64,
    /// Bytes forwarded client to server, and server to client.
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
    /// Set once a `StallMidFrame` cut happened.
    stalled_once: AtomicBool,
}

/// A running proxy. Dropping it ends the accept loop and every connection.
pub struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
    rt: Option<Runtime>,
}

impl Proxy {
    /// Starts the proxy on its own runtime (for real-time tests).
    pub fn start(upstream: SocketAddr) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let mut p = Proxy::launch(rt.handle(), upstream);
        p.rt = Some(rt);
        p
    }

    /// Starts the proxy on the current runtime (for tests on the paused clock).
    pub fn spawn(upstream: SocketAddr) -> Proxy {
        Proxy::launch(&Handle::current(), upstream)
    }

    fn launch(handle: &Handle, upstream: SocketAddr) -> Proxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy addr");
        let listener = {
            let _enter = handle.enter();
            TcpListener::from_std(std_listener).expect("proxy listener")
        };
        let shared = Arc::new(Shared {
            upstream,
            mode: watch::Sender::new(Mode::Pass),
            kill: Mutex::new(watch::Sender::new(None)),
            accepted: AtomicU64::new(0),
            up_bytes: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
            stalled_once: AtomicBool::new(false),
        });
        let accept = handle.spawn(accept_loop(shared.clone(), listener));
        Proxy {
            shared,
            addr,
            accept,
            rt: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/`, to hand to the client.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// Ends every current connection (both sides) without changing the mode for new ones.
    pub fn drop_connections(&self, how: Kill) {
        let mut kill = self.shared.kill.lock().unwrap_or_else(|p| p.into_inner());
        kill.send_replace(Some(how));
        *kill = watch::Sender::new(None);
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from client to server so far.
    pub fn up_bytes(&self) -> u64 {
        self.shared.up_bytes.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from server to client so far.
    pub fn down_bytes(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::SeqCst)
    }

    /// Whether a `StallMidFrame` cut has happened.
    pub fn stalled(&self) -> bool {
        self.shared.stalled_once.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections(Kill::Fin);
        self.shared.mode.send_replace(Mode::Fin);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let kill = shared
            .kill
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .subscribe();
        tokio::spawn(connection(shared.clone(), client, kill));
    }
}

fn zero_linger(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

/// One proxied connection from accept to close.
async fn connection(
    shared: Arc<Shared>,
    client: TcpStream,
    mut kill: watch::Receiver<Option<Kill>>,
) {
    let _ = client.set_nodelay(true);
    let mut mode = shared.mode.subscribe();
    // Decide what to do with a fresh connection.
    let fresh = *mode.borrow_and_update();
    match fresh {
        Mode::Rst => return zero_linger(&client),
        Mode::Fin => return,
        Mode::NeverForward => {
            // Held open, never answered, until the mode changes to one that ends it or the
            // connection is killed. (Back to `Pass`, it stays held: its handshake is lost.)
            loop {
                tokio::select! {
                    r = mode.changed() => {
                        if r.is_err() { return; }
                        match *mode.borrow_and_update() {
                            Mode::Rst => return zero_linger(&client),
                            Mode::Fin => return,
                            _ => {}
                        }
                    }
                    r = kill.changed() => {
                        if r.is_err() { return; }
                        if *kill.borrow() == Some(Kill::Rst) { zero_linger(&client); }
                        return;
                    }
                }
            }
        }
        _ => {}
    }
    let server = match TcpStream::connect(shared.upstream).await {
        Ok(s) => s,
        Err(_) => return zero_linger(&client),
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let frozen = Arc::new(watch::Sender::new(false));
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    let ctl = |kill: &watch::Receiver<Option<Kill>>| Ctl {
        mode: shared.mode.subscribe(),
        kill: kill.clone(),
        frozen: frozen.subscribe(),
    };
    let tasks = [
        tokio::spawn(reader(cr, up_tx, ctl(&kill))),
        tokio::spawn(reader(sr, down_tx, ctl(&kill))),
        tokio::spawn(writer(
            sw,
            up_rx,
            ctl(&kill),
            shared.clone(),
            Dir::Up,
            frozen.clone(),
        )),
        tokio::spawn(writer(
            cw,
            down_rx,
            ctl(&kill),
            shared.clone(),
            Dir::Down,
            frozen.clone(),
        )),
    ];
    for t in tasks {
        let _ = t.await;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

/// What a pump watches besides its socket.
struct Ctl {
    mode: watch::Receiver<Mode>,
    kill: watch::Receiver<Option<Kill>>,
    /// This connection was cut mid-frame: frozen for good.
    frozen: watch::Receiver<bool>,
}

/// What a pump is to do now.
enum Verdict {
    Go(Option<Duration>),
    Wait,
    End(Kill),
}

impl Ctl {
    fn verdict(&mut self) -> Verdict {
        if let Some(k) = *self.kill.borrow_and_update() {
            return Verdict::End(k);
        }
        match *self.mode.borrow_and_update() {
            Mode::Rst => return Verdict::End(Kill::Rst),
            Mode::Fin => return Verdict::End(Kill::Fin),
            _ => {}
        }
        if *self.frozen.borrow_and_update() {
            return Verdict::Wait;
        }
        match *self.mode.borrow() {
            Mode::Blackhole => Verdict::Wait,
            Mode::Delay(d) => Verdict::Go(Some(d)),
            _ => Verdict::Go(None),
        }
    }

    /// Resolves when anything this pump watches changes.
    async fn changed(&mut self) {
        tokio::select! {
            _ = self.mode.changed() => {}
            _ = self.kill.changed() => {}
            _ = self.frozen.changed() => {}
        }
    }
}

/// A chunk read at an instant, or `None`: the source was reset.
type Chunk = Option<(Instant, Vec<u8>)>;

/// Reads chunks from one socket and hands them, stamped with their read time, to the writer of
/// the other. Stops reading while the link is black-holed or frozen.
async fn reader(mut src: OwnedReadHalf, out: mpsc::UnboundedSender<Chunk>, mut ctl: Ctl) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match ctl.verdict() {
            Verdict::End(k) => {
                if k == Kill::Rst {
                    zero_linger(src.as_ref());
                }
                return;
            }
            Verdict::Wait => {
                ctl.changed().await;
                continue;
            }
            Verdict::Go(_) => {}
        }
        tokio::select! {
            r = src.read(&mut buf) => match r {
                Ok(0) => return, // EOF: the writer shuts the other side down once drained.
                Ok(n) => {
                    if out.send(Some((Instant::now(), buf[..n].to_vec()))).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    // Reset by the peer: the writer passes the reset on.
                    let _ = out.send(None);
                    return;
                }
            },
            () = ctl.changed() => {}
        }
    }
}

/// Writes what the reader of the other socket read, applying delay, black hole and mid-frame
/// stall. Ends the socket (FIN or RST) when told to or when the other side ended.
async fn writer(
    mut dst: OwnedWriteHalf,
    mut input: mpsc::UnboundedReceiver<Chunk>,
    mut ctl: Ctl,
    shared: Arc<Shared>,
    dir: Dir,
    frozen: Arc<watch::Sender<bool>>,
) {
    let mut frames = FrameCursor::default();
    let end = |dst: &OwnedWriteHalf, k: Kill| {
        if k == Kill::Rst {
            zero_linger(dst.as_ref());
        }
    };
    loop {
        // Next chunk, unless told to end first.
        let (read_at, mut chunk) = loop {
            if let Verdict::End(k) = ctl.verdict() {
                return end(&dst, k);
            }
            tokio::select! {
                c = input.recv() => match c {
                    Some(Some(c)) => break c,
                    Some(None) => return end(&dst, Kill::Rst),
                    None => {
                        let _ = dst.shutdown().await;
                        return;
                    }
                },
                () = ctl.changed() => {}
            }
        };
        // Wait until it may go out.
        loop {
            match ctl.verdict() {
                Verdict::End(k) => return end(&dst, k),
                Verdict::Wait => ctl.changed().await,
                Verdict::Go(delay) => {
                    if let Some(d) = delay {
                        let at = read_at + d;
                        if Instant::now() < at {
                            tokio::select! {
                                () = tokio::time::sleep_until(at) => {}
                                () = ctl.changed() => continue,
                            }
                        }
                    }
                    break;
                }
            }
        }
        let mut freeze_after = false;
        if dir == Dir::Down && *ctl.mode.borrow() == Mode::StallMidFrame {
            match frames.cut(&chunk) {
                Some(cut) => {
                    chunk.truncate(cut);
                    freeze_after = true;
                }
                None => frames.advance(&chunk),
            }
        } else if dir == Dir::Down {
            frames.advance(&chunk);
        }
        if !chunk.is_empty() {
            tokio::select! {
                r = dst.write_all(&chunk) => {
                    if r.is_err() {
                        return;
                    }
                }
                () = async {
                    loop {
                        ctl.changed().await;
                        if let Verdict::End(_) = ctl.verdict() {
                            return;
                        }
                    }
                } => {
                    if let Verdict::End(k) = ctl.verdict() {
                        return end(&dst, k);
                    }
                }
            }
            let counter = match dir {
                Dir::Up => &shared.up_bytes,
                Dir::Down => &shared.down_bytes,
            };
            counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        if freeze_after {
            shared.stalled_once.store(true, Ordering::SeqCst);
            frozen.send_replace(true);
        }
    }
}

/// Tracks WebSocket frame boundaries in a byte stream (either direction: masked or not).
#[derive(Default)]
struct FrameCursor {
    /// Header bytes of the current frame seen so far (while the header is incomplete).
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come (after its header).
    remaining: u64,
}

/// Length of a complete frame header at the start of `h` and its payload length, if complete.
fn parse_header(h: &[u8]) -> Option<(usize, u64)> {
    if h.len() < 2 {
        return None;
    }
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    let (len_bytes, len) = match h[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let total = 2 + len_bytes + mask;
    if h.len() < total {
        return None;
    }
    let len = len.unwrap_or_else(|| {
        h[2..2 + len_bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    });
    Some((total, len))
}

impl FrameCursor {
    fn mid_frame(&self) -> bool {
        !self.header.is_empty() || self.remaining > 0
    }

    /// Moves past `data`, tracking where frames start and end.
    fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            self.header.push(data[0]);
            data = &data[1..];
            if let Some((_, len)) = parse_header(&self.header) {
                self.header.clear();
                self.remaining = len;
            }
        }
    }

    /// Where to cut `data` so that what is forwarded ends in the middle of a frame's payload;
    /// `None` if no such point is in `data` (forward it all and look again in the next chunk).
    fn cut(&mut self, data: &[u8]) -> Option<usize> {
        if self.mid_frame() {
            return Some(0);
        }
        let mut pos = 0;
        while pos < data.len() {
            let Some((hlen, len)) = parse_header(&data[pos..]) else {
                // A header split across chunks: forward up to it and stall there (mid-frame).
                return Some(pos + 1);
            };
            if len >= 2 {
                let mid = pos + hlen + (len / 2) as usize;
                return Some(mid.min(data.len()));
            }
            pos += hlen + len as usize;
        }
        None
    }
}
