//! The WebSocket framing (RFC 6455) of one client connection, over any byte stream.
//!
//! Why our own and not tokio-tungstenite's `WebSocketStream` (which the first versions used):
//! per connection at rest, this keeps no buffer at all (received bytes are read into a buffer on
//! the stack and parsed there; a frame is encoded on the stack and written straight to the
//! socket; only what a read or a write leaves over goes to the heap, freed once used), and per
//! message it neither zero-fills a read buffer nor allocates: a message reaches the host as a
//! slice of the bytes read. That is about half of the library's memory per idle connection and a
//! quarter of its instructions per echo (`BENCHMARKS.md`). The handshake (`connect.rs`) still uses
//! tungstenite's key helpers, and the Autobahn suite (`conformance/`) checks this code.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Frame opcodes.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest read into the stack (when nothing is carried over); a larger `read_size` reads into
/// the heap buffer instead.
const STACK_READ: usize = 16 * 1024;
/// Frames up to this size are encoded on the stack and written straight to the socket.
const STACK_WRITE: usize = 1024;
/// The most reserved ahead for a frame not yet read: a larger one grows as its bytes arrive, so
/// a header that merely claims a large frame costs no memory.
const RESERVE_AHEAD: usize = 256 * 1024;
/// Unsent Pongs kept in a row before a newer one replaces the last (see `State::pong_at`).
const PONGS_KEPT: u8 = 16;
/// Largest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// One message or control frame received, borrowed from the bytes read.
#[derive(Debug, PartialEq, Eq)]
pub enum In<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    /// Already answered: its Pong is queued and goes out before the next read.
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The server's Close (code and reason; `None` without a code). Already answered if the
    /// server started the close; nothing more is read after it.
    Close(Option<(u16, &'a str)>),
}

/// Why reading or writing failed.
#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    /// The server closed TCP without a close handshake.
    Reset,
    /// The close handshake is over; nothing more to read.
    Closed,
    /// The server broke the protocol.
    Protocol(&'static str),
    /// A message larger than `max_message_size`.
    TooBig {
        size: u64,
        max: usize,
    },
    /// A text message that is not UTF-8.
    Utf8,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Reset => f.write_str("connection closed without a close handshake"),
            WireError::Closed => f.write_str("connection closed"),
            WireError::Protocol(p) => write!(f, "protocol error: {p}"),
            WireError::TooBig { size, max } => {
                write!(f, "message of {size} bytes exceeds the limit of {max}")
            }
            WireError::Utf8 => f.write_str("invalid UTF-8 in a text message"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Closing {
    Open,
    /// We sent Close; the server's answer is awaited.
    Sent,
    /// The server sent Close (and was answered, or answered ours). Nothing more is read.
    Received,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug)]
struct Header {
    fin: bool,
    op: u8,
    /// Header bytes.
    len: usize,
    /// Payload bytes.
    payload: usize,
}

/// Parses a frame header from the start of `buf`. `Ok(None)`: incomplete. `held`: bytes of a
/// fragmented message already assembled, which a continuation's declared length adds to: a
/// message over `max` is refused by its header, before its payload is read.
fn parse_header(buf: &[u8], max: usize, held: usize) -> Result<Option<Header>, WireError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WireError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    if b1 & 0x80 != 0 {
        return Err(WireError::Protocol("masked frame from the server"));
    }
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0F;
    let (len, payload) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (4, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let n = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if n >> 63 != 0 {
                return Err(WireError::Protocol("frame length has its top bit set"));
            }
            (10, n)
        }
        n => (2, u64::from(n)),
    };
    match op {
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(WireError::Protocol("fragmented control frame"));
            }
            if payload > 125 {
                return Err(WireError::Protocol("control frame longer than 125 bytes"));
            }
        }
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {
            let size = payload.saturating_add(held as u64);
            if size > max as u64 {
                return Err(WireError::TooBig { size, max });
            }
        }
        _ => return Err(WireError::Protocol("reserved opcode")),
    }
    Ok(Some(Header {
        fin,
        op,
        len,
        payload: payload as usize,
    }))
}

/// Close codes a peer may send (RFC 6455 §7.4, plus 1012–1014 from the IANA registry).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `data` with the 4-byte mask `key`, starting at mask offset 0.
fn mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Writes a masked frame header for `payload_len` bytes into `out`; returns its length.
fn encode_header(out: &mut [u8; MAX_HEADER], op: u8, payload_len: usize, key: [u8; 4]) -> usize {
    out[0] = 0x80 | op;
    let n = if payload_len < 126 {
        out[1] = 0x80 | payload_len as u8;
        2
    } else if payload_len <= usize::from(u16::MAX) {
        out[1] = 0x80 | 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = 0x80 | 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    out[n..n + 4].copy_from_slice(&key);
    n + 4
}

/// Everything but the stream and the received bytes: what a frame's handling changes.
struct State {
    /// A fragmented message being assembled (opcode, bytes, how many are known to be UTF-8).
    msg_op: u8,
    msg: Vec<u8>,
    msg_utf8: usize,
    /// Bytes to write: `tx[tx_pos..]`. Empty (unallocated) at rest.
    tx: Vec<u8>,
    tx_pos: usize,
    /// Where the last of the unsent Pongs at the end of `tx` starts, and how many there are in a
    /// row: past [`PONGS_KEPT`], a newer Ping's answer replaces the last (RFC 6455 §5.5.3 lets a
    /// peer answer only the latest), so a Ping flood costs bounded memory and one write per
    /// read, while a few Pings each get their own Pong.
    pong_at: Option<usize>,
    pongs: u8,
    closing: Closing,
    max_message: usize,
    /// Frames are gathered in `tx` until it holds this many bytes (0: each is written at once).
    write_batch: usize,
}

impl State {
    /// Appends a masked frame to `tx`.
    fn queue(&mut self, op: u8, payload: &[u8]) {
        let mut head = [0u8; MAX_HEADER];
        let key = mask_key();
        let n = encode_header(&mut head, op, payload.len(), key);
        self.tx.reserve(n + payload.len());
        self.tx.extend_from_slice(&head[..n]);
        let start = self.tx.len();
        self.tx.extend_from_slice(payload);
        mask(&mut self.tx[start..], key);
    }

    /// Handles one complete frame: what it carried (a data message once complete, or a control
    /// frame), or `None` for a fragment kept. A message assembled from fragments is borrowed
    /// from `msg`; [`release_message`](Self::release_message) frees it once handed over.
    fn frame<'a>(&'a mut self, h: Header, payload: &'a [u8]) -> Result<Option<In<'a>>, WireError> {
        match h.op {
            OP_PING => {
                if self.closing == Closing::Open {
                    match self.pong_at {
                        Some(at) if self.pongs >= PONGS_KEPT => self.tx.truncate(at),
                        Some(_) => self.pongs += 1,
                        None => self.pongs = 1,
                    }
                    self.pong_at = Some(self.tx.len());
                    self.queue(OP_PONG, payload);
                }
                Ok(Some(In::Ping(payload)))
            }
            OP_PONG => Ok(Some(In::Pong(payload))),
            OP_CLOSE => {
                let close = match payload {
                    [] => None,
                    [_] => return Err(WireError::Protocol("close frame of one byte")),
                    [a, b, reason @ ..] => {
                        let code = u16::from_be_bytes([*a, *b]);
                        let Ok(reason) = std::str::from_utf8(reason) else {
                            return Err(WireError::Protocol("close reason is not UTF-8"));
                        };
                        Some((code, reason))
                    }
                };
                if let Some((code, _)) = close {
                    if !close_code_allowed(code) {
                        // A protocol error, not a close: the caller closes with 1002 (and the
                        // wire is still open for that).
                        return Err(WireError::Protocol(
                            "close frame with an invalid close code",
                        ));
                    }
                }
                if self.closing == Closing::Open {
                    // Answered with its code.
                    self.pong_at = None;
                    match close {
                        None => self.queue(OP_CLOSE, &[]),
                        Some((code, _)) => self.queue(OP_CLOSE, &code.to_be_bytes()),
                    }
                }
                self.closing = Closing::Received;
                Ok(Some(In::Close(close)))
            }
            op => {
                // Data: a whole message, or a fragment of one.
                if op == OP_CONTINUATION {
                    if self.msg_op == 0 {
                        return Err(WireError::Protocol("continuation without a message"));
                    }
                } else if self.msg_op != 0 {
                    return Err(WireError::Protocol("new message inside a fragmented one"));
                }
                if op != OP_CONTINUATION && h.fin {
                    // The common case: a whole message in one frame, handed over in place.
                    return Ok(Some(if op == OP_TEXT {
                        In::Text(std::str::from_utf8(payload).map_err(|_| WireError::Utf8)?)
                    } else {
                        In::Binary(payload)
                    }));
                }
                let size = self.msg.len() as u64 + payload.len() as u64;
                if size > self.max_message as u64 {
                    return Err(WireError::TooBig {
                        size,
                        max: self.max_message,
                    });
                }
                if op != OP_CONTINUATION {
                    self.msg_op = op;
                }
                self.msg.extend_from_slice(payload);
                if self.msg_op == OP_TEXT {
                    // Checked as it arrives, so a bad fragment fails at once; a character split
                    // across fragments waits for the rest.
                    match std::str::from_utf8(&self.msg[self.msg_utf8..]) {
                        Ok(_) => self.msg_utf8 = self.msg.len(),
                        Err(e) if e.error_len().is_none() && !h.fin => {
                            self.msg_utf8 += e.valid_up_to()
                        }
                        Err(_) => return Err(WireError::Utf8),
                    }
                }
                if !h.fin {
                    return Ok(None);
                }
                let op = std::mem::replace(&mut self.msg_op, 0);
                self.msg_utf8 = 0;
                Ok(Some(if op == OP_TEXT {
                    // Validated above, fragment by fragment; `str` needs it once more whole.
                    In::Text(std::str::from_utf8(&self.msg).map_err(|_| WireError::Utf8)?)
                } else {
                    In::Binary(&self.msg)
                }))
            }
        }
    }

    /// After a message was handed over: a message assembled from fragments is freed, so nothing
    /// is kept at rest.
    fn release_message(&mut self) {
        if self.msg_op == 0 && self.msg.capacity() != 0 {
            self.msg = Vec::new();
        }
    }
}

/// A fresh masking key (RFC 6455 §5.3: from a strong source of entropy; rand's thread-local
/// ChaCha generator, which tungstenite uses too).
fn mask_key() -> [u8; 4] {
    rand::random()
}

/// The framing of one client connection over `S`.
pub struct Wire<S> {
    io: S,
    /// Bytes received but not yet parsed: `rx[rx_pos..]`. Empty (unallocated) at rest.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Bytes to ask for per read into `rx`.
    read_size: usize,
    st: State,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// `rest`: bytes already read after the handshake (the start of the first frames).
    pub fn new(
        io: S,
        rest: Vec<u8>,
        max_message: usize,
        read_size: usize,
        write_batch: usize,
    ) -> Self {
        Wire {
            io,
            rx: if rest.is_empty() { Vec::new() } else { rest },
            rx_pos: 0,
            read_size: read_size.max(MAX_HEADER),
            st: State {
                msg_op: 0,
                msg: Vec::new(),
                msg_utf8: 0,
                tx: Vec::new(),
                tx_pos: 0,
                pong_at: None,
                pongs: 0,
                closing: Closing::Open,
                max_message,
                write_batch,
            },
        }
    }

    /// Reads until one message or control frame is complete and hands it to `f`, borrowed from
    /// the bytes read. Answers to the server's Ping and Close are queued here and go out before
    /// the next read (or write).
    pub fn poll_recv<T, F: FnOnce(In<'_>) -> T>(
        &mut self,
        cx: &mut Context<'_>,
        f: F,
    ) -> Poll<Result<T, WireError>> {
        if self.st.closing == Closing::Received {
            return Poll::Ready(Err(WireError::Closed));
        }
        loop {
            if self.rx_pos < self.rx.len() {
                // Bytes carried over from an earlier read.
                let avail = &self.rx[self.rx_pos..];
                let mut want = self.read_size;
                if let Some(h) = parse_header(avail, self.st.max_message, self.st.msg.len())? {
                    let total = h.len + h.payload;
                    if avail.len() >= total {
                        let start = self.rx_pos;
                        self.rx_pos += total;
                        let payload = &self.rx[start + h.len..start + total];
                        if let Some(m) = self.st.frame(h, payload)? {
                            let t = f(m);
                            self.st.release_message();
                            self.release_rx();
                            return Poll::Ready(Ok(t));
                        }
                        self.release_rx();
                        continue;
                    }
                    // Room for the rest of this frame, read straight into place.
                    want = total - avail.len();
                }
                self.flush_before_read(cx)?;
                std::task::ready!(self.poll_fill(cx, want))?;
                continue;
            }
            // No complete frame left: answers queued for the frames just handled (the latest
            // Pong of a Ping flood, RFC 6455 §5.5.3) go out in one write before the next read.
            self.flush_before_read(cx)?;
            if self.read_size > STACK_READ {
                std::task::ready!(self.poll_fill(cx, self.read_size))?;
                continue;
            }
            // Nothing carried over: read into the stack, hand a whole frame over from there.
            let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
            let mut rb = ReadBuf::uninit(&mut stack[..self.read_size]);
            std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))
                .map_err(WireError::Io)?;
            let got = rb.filled();
            if got.is_empty() {
                return Poll::Ready(Err(self.eof()));
            }
            if let Some(h) = parse_header(got, self.st.max_message, self.st.msg.len())? {
                let total = h.len + h.payload;
                if got.len() >= total {
                    if got.len() > total {
                        self.rx.extend_from_slice(&got[total..]);
                    }
                    if let Some(m) = self.st.frame(h, &got[h.len..total])? {
                        let t = f(m);
                        self.st.release_message();
                        return Poll::Ready(Ok(t));
                    }
                    continue;
                }
                self.rx.reserve(total.min(RESERVE_AHEAD));
            }
            self.rx.extend_from_slice(got);
        }
    }

    /// Writes what earlier frames left (answers included) before a read system call; a write
    /// that has to wait does not hold up reading.
    fn flush_before_read(&mut self, cx: &mut Context<'_>) -> Result<(), WireError> {
        if self.st.tx_pos < self.st.tx.len() {
            if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
                return Err(WireError::Io(e));
            }
        }
        Ok(())
    }

    /// Bytes read but not yet parsed: more frames may be complete without another read.
    pub fn buffered(&self) -> usize {
        self.rx.len() - self.rx_pos
    }

    /// Reads at least one more byte into `rx` (room for `want` more, up to [`RESERVE_AHEAD`], is
    /// made first; the buffer grows geometrically, so a large frame is copied O(1) times).
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<(), WireError>> {
        if self.rx_pos > 0 {
            self.rx.drain(..self.rx_pos);
            self.rx_pos = 0;
        }
        self.rx.reserve(want.min(RESERVE_AHEAD));
        let len = self.rx.len();
        let spare = self.rx.spare_capacity_mut();
        let spare_len = spare.len();
        let mut rb = ReadBuf::uninit(spare);
        let start = rb.filled().as_ptr();
        std::task::ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb)).map_err(WireError::Io)?;
        // A stream that swapped the ReadBuf for another would make `set_len` unsound: refuse.
        assert_eq!(
            start,
            rb.filled().as_ptr(),
            "poll_read replaced the read buffer"
        );
        let n = rb.filled().len();
        assert!(n <= spare_len);
        if n == 0 {
            return Poll::Ready(Err(self.eof()));
        }
        // SAFETY: `rb` is still the spare capacity (checked above) and `poll_read` initialized
        // its first `n <= spare_len` bytes (ReadBuf's contract), so `len + n` bytes are
        // initialized and within capacity.
        unsafe { self.rx.set_len(len + n) };
        Poll::Ready(Ok(()))
    }

    /// Once every byte carried over is used: back to no buffer at rest.
    fn release_rx(&mut self) {
        if self.rx_pos == self.rx.len() {
            self.rx = Vec::new();
            self.rx_pos = 0;
        }
    }

    fn eof(&self) -> WireError {
        if self.st.closing == Closing::Sent {
            // After our Close, the server may end with TCP alone.
            WireError::Closed
        } else {
            WireError::Reset
        }
    }

    /// Ready when another frame may be started: what earlier frames left unwritten is written
    /// (in batching mode, only once it reaches the batch size; then all of it).
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let pending = self.st.tx.len() - self.st.tx_pos;
        if pending != 0 && pending >= self.st.write_batch {
            return self.poll_drain(cx);
        }
        Poll::Ready(Ok(()))
    }

    /// Starts a data or ping frame: written to the socket at once where it takes it, the rest
    /// kept to be written by [`poll_flush`](Self::poll_flush) or the next
    /// [`poll_ready`](Self::poll_ready). Never waits; call after `poll_ready`.
    pub fn start_send(&mut self, cx: &mut Context<'_>, op: u8, payload: &[u8]) -> io::Result<()> {
        if self.st.closing != Closing::Open {
            return Err(io::Error::other("the connection is closing"));
        }
        self.start(cx, op, payload)
    }

    /// Starts our Close (code `code`, no reason); the server's answer ends reading. Once only.
    pub fn start_close(&mut self, cx: &mut Context<'_>, code: u16) -> io::Result<()> {
        self.start_close_reason(cx, code, "")
    }

    /// Starts our Close with `code` and `reason` (cut to the 123 bytes a control frame holds,
    /// at a character boundary). Once only.
    pub fn start_close_reason(
        &mut self,
        cx: &mut Context<'_>,
        code: u16,
        reason: &str,
    ) -> io::Result<()> {
        if self.st.closing != Closing::Open {
            return Ok(());
        }
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = [0u8; 125];
        payload[..2].copy_from_slice(&code.to_be_bytes());
        payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
        self.st.pong_at = None;
        self.start(cx, OP_CLOSE, &payload[..2 + cut])?;
        self.st.closing = Closing::Sent;
        Ok(())
    }

    fn start(&mut self, cx: &mut Context<'_>, op: u8, payload: &[u8]) -> io::Result<()> {
        let st = &mut self.st;
        // A Pong queued before this frame is no longer last in `tx`: a newer Ping's answer
        // must not replace it (that would cut this frame off too).
        st.pong_at = None;
        if st.tx_pos < st.tx.len() || st.write_batch != 0 || payload.len() > STACK_WRITE {
            st.queue(op, payload);
            return Ok(());
        }
        // Encoded on the stack (no zero-fill) and written straight to the socket.
        let mut stack = [MaybeUninit::<u8>::uninit(); MAX_HEADER + STACK_WRITE];
        let mut frame = ReadBuf::uninit(&mut stack);
        let mut head = [0u8; MAX_HEADER];
        let key = mask_key();
        let n = encode_header(&mut head, op, payload.len(), key);
        frame.put_slice(&head[..n]);
        frame.put_slice(payload);
        let frame = frame.filled_mut();
        mask(&mut frame[n..], key);
        let written = match Pin::new(&mut self.io).poll_write(cx, frame) {
            Poll::Ready(Ok(w)) => w,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => 0,
        };
        if written < frame.len() {
            st.tx.extend_from_slice(&frame[written..]);
        }
        Ok(())
    }

    /// Writes everything started, then flushes the stream.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes everything started (answers the wire queued included) and flushes the stream.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Sends our Close with `code` (see [`start_close`](Self::start_close)) and flushes it.
    pub async fn close(&mut self, code: u16) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            std::task::ready!(self.poll_ready(cx))?;
            self.start_close(cx, code)?;
            self.poll_flush(cx)
        })
        .await
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let st = &mut self.st;
        while st.tx_pos < st.tx.len() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &st.tx[st.tx_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            st.tx_pos += n;
            if st.pong_at.is_some_and(|at| at < st.tx_pos) {
                st.pong_at = None;
            }
        }
        if st.tx.capacity() != 0 {
            // All written: back to no buffer at rest.
            st.tx = Vec::new();
            st.tx_pos = 0;
            st.pong_at = None;
        }
        Poll::Ready(Ok(()))
    }

    /// The stream, for tests and fuzzing.
    pub fn into_inner(self) -> S {
        self.io
    }

    /// Bytes started but not yet written.
    pub fn unwritten(&self) -> usize {
        self.st.tx.len() - self.st.tx_pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const MAX: usize = 1 << 20;

    /// A client wire and the raw server end of a loopback connection.
    async fn pair(read_size: usize, write_batch: usize) -> (Wire<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (Wire::new(c, Vec::new(), MAX, read_size, write_batch), s)
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    async fn recv(w: &mut Wire<TcpStream>) -> Result<Got, WireError> {
        std::future::poll_fn(|cx| {
            w.poll_recv(cx, |m| match m {
                In::Text(t) => Got::Text(t.into()),
                In::Binary(b) => Got::Binary(b.into()),
                In::Ping(p) => Got::Ping(p.into()),
                In::Pong(p) => Got::Pong(p.into()),
                In::Close(c) => Got::Close(c.map(|(c, r)| (c, r.into()))),
            })
        })
        .await
    }

    async fn send(w: &mut Wire<TcpStream>, op: u8, payload: &[u8]) {
        let mut started = false;
        std::future::poll_fn(|cx| {
            if !started {
                std::task::ready!(w.poll_ready(cx))?;
                w.start_send(cx, op, payload)?;
                started = true;
            }
            w.poll_flush(cx)
        })
        .await
        .unwrap();
    }

    /// A server frame (unmasked).
    fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | op];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xFFFF => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Reads one client frame on the server side: (fin, opcode, unmasked payload).
    async fn read_client_frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.unwrap();
        assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
        let len = match h[1] & 0x7F {
            126 => u64::from(s.read_u16().await.unwrap()),
            127 => s.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut key = [0u8; 4];
        s.read_exact(&mut key).await.unwrap();
        let mut p = vec![0u8; len as usize];
        s.read_exact(&mut p).await.unwrap();
        for (i, b) in p.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        (h[0] & 0x80 != 0, h[0] & 0x0F, p)
    }

    #[test]
    fn headers_are_checked() {
        let p = |b: &[u8]| parse_header(b, 1000, 0);
        assert!(matches!(p(&[0x81]), Ok(None)));
        assert!(matches!(p(&[0x81, 126, 0]), Ok(None)));
        let h = p(&[0x82, 126, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.fin, h.op, h.len, h.payload), (true, OP_BINARY, 4, 256));
        let h = p(&[0x01, 5]).unwrap().unwrap();
        assert_eq!((h.fin, h.op, h.len, h.payload), (false, OP_TEXT, 2, 5));
        let err = |b: &[u8]| match p(b) {
            Err(WireError::Protocol(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(&[0xC1, 0]).contains("reserved bits"));
        assert!(err(&[0x81, 0x80]).contains("masked"));
        assert!(err(&[0x83, 0]).contains("reserved opcode"));
        assert!(err(&[0x8B, 0]).contains("reserved opcode"));
        assert!(err(&[0x09, 0]).contains("fragmented control"));
        assert!(err(&[0x89, 126, 0, 126]).contains("125"));
        assert!(err(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]).contains("top bit"));
        assert!(matches!(
            p(&[0x82, 126, 0x03, 0xE9]),
            Err(WireError::TooBig {
                size: 1001,
                max: 1000
            })
        ));
    }

    #[test]
    fn masking_round_trips_at_every_length_and_offset() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut m = data.clone();
            mask(&mut m, key);
            for (i, (a, b)) in m.iter().zip(&data).enumerate() {
                assert_eq!(*a, b ^ key[i % 4]);
            }
            mask(&mut m, key);
            assert_eq!(m, data);
        }
    }

    #[test]
    fn close_codes_follow_the_registry() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn frames_split_and_joined_arrive_whole_and_in_order() {
        let (mut w, mut s) = pair(16, 0).await;
        // Two frames in one write, a third split byte by byte, a large one.
        let mut bytes = frame(true, OP_TEXT, b"one");
        bytes.extend(frame(true, OP_BINARY, &[1, 2, 3]));
        s.write_all(&bytes).await.unwrap();
        assert_eq!(recv(&mut w).await.unwrap(), Got::Text("one".into()));
        assert_eq!(recv(&mut w).await.unwrap(), Got::Binary(vec![1, 2, 3]));
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let server = tokio::spawn(async move {
            for b in frame(true, OP_TEXT, "héllo".as_bytes()) {
                s.write_all(&[b]).await.unwrap();
                s.flush().await.unwrap();
            }
            s.write_all(&frame(
                true,
                OP_BINARY,
                &(0..300_000u32).map(|i| i as u8).collect::<Vec<_>>(),
            ))
            .await
            .unwrap();
            s
        });
        assert_eq!(recv(&mut w).await.unwrap(), Got::Text("héllo".into()));
        assert_eq!(recv(&mut w).await.unwrap(), Got::Binary(big));
        drop(server.await.unwrap());
        assert!(matches!(recv(&mut w).await, Err(WireError::Reset)));
        // At rest, no buffer is kept.
        assert_eq!(
            (w.rx.capacity(), w.st.msg.capacity(), w.st.tx.capacity()),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_claimed_large_frame_reserves_memory_as_it_arrives() {
        let (mut w, mut s) = pair(4096, 0).await;
        let full = frame(true, OP_BINARY, &vec![7u8; MAX - 1]);
        s.write_all(&full[..1000]).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while w.rx.len() < 1000 {
            assert!(std::time::Instant::now() < deadline, "bytes never arrived");
            let pending =
                std::future::poll_fn(|cx| Poll::Ready(w.poll_recv(cx, |_| ()).is_pending())).await;
            assert!(pending);
            tokio::task::yield_now().await;
        }
        assert!(w.rx.capacity() <= 2 * RESERVE_AHEAD, "{}", w.rx.capacity());
        s.write_all(&full[1000..]).await.unwrap();
        assert_eq!(recv(&mut w).await.unwrap(), Got::Binary(vec![7u8; MAX - 1]));
    }

    #[tokio::test]
    async fn fragments_join_with_pings_between_and_pings_are_answered() {
        let (mut w, mut s) = pair(4096, 0).await;
        let e_acute = "\u{e9}".as_bytes();
        let mut bytes = frame(false, OP_TEXT, b"h");
        bytes.extend(frame(true, OP_PING, b"p1"));
        // The é is split across fragments.
        bytes.extend(frame(false, OP_CONTINUATION, &e_acute[..1]));
        bytes.extend(frame(true, OP_CONTINUATION, &e_acute[1..]));
        s.write_all(&bytes).await.unwrap();
        assert_eq!(recv(&mut w).await.unwrap(), Got::Ping(b"p1".to_vec()));
        assert_eq!(recv(&mut w).await.unwrap(), Got::Text("h\u{e9}".into()));
        // The answer waits for the next write or read system call.
        w.flush().await.unwrap();
        assert_eq!(
            read_client_frame(&mut s).await,
            (true, OP_PONG, b"p1".to_vec())
        );
        // A few Pings read together each get their Pong, in one write.
        let mut bytes = frame(true, OP_PING, b"a");
        bytes.extend(frame(true, OP_PING, b"b"));
        bytes.extend(frame(true, OP_TEXT, b"after"));
        s.write_all(&bytes).await.unwrap();
        assert_eq!(recv(&mut w).await.unwrap(), Got::Ping(b"a".to_vec()));
        assert_eq!(recv(&mut w).await.unwrap(), Got::Ping(b"b".to_vec()));
        assert_eq!(recv(&mut w).await.unwrap(), Got::Text("after".into()));
        send(&mut w, OP_TEXT, b"x").await;
        assert_eq!(
            read_client_frame(&mut s).await,
            (true, OP_PONG, b"a".to_vec())
        );
        assert_eq!(
            read_client_frame(&mut s).await,
            (true, OP_PONG, b"b".to_vec())
        );
        assert_eq!(
            read_client_frame(&mut s).await,
            (true, OP_TEXT, b"x".to_vec())
        );
    }

    /// A fragmented message is refused by the header that takes it past `max_message_size`,
    /// before that frame's payload is read (f0e9d24: the payload was buffered first, so a
    /// 64 MiB limit let memory grow by 131 MiB).
    #[tokio::test]
    async fn a_fragmented_message_is_refused_by_its_header() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let mut w = Wire::new(c, Vec::new(), 100_000, 4096, 0);
        let mut bytes = frame(false, OP_BINARY, &[1u8; 60_000]);
        // The next fragment's header alone: 60,000 more bytes declared, none sent.
        bytes.extend_from_slice(&[0x00, 126, 0xEA, 0x60]);
        s.write_all(&bytes).await.unwrap();
        match recv(&mut w).await {
            Err(WireError::TooBig { size, max }) => {
                assert_eq!((size, max), (120_000, 100_000));
            }
            other => panic!("{other:?}"),
        }
        assert!(w.st.msg.capacity() < 100_000 + 4096);
        assert!(w.rx.capacity() < 4096 + MAX_HEADER);
    }

    /// A Ping flood costs one write per read, not one per Ping (f0e9d24: 20,000 pings, 20,004
    /// `sendto`), and at most 16 Pongs per read, the last one echoing the last Ping; a ping that
    /// arrives alone is still answered at the next read.
    #[tokio::test]
    async fn a_ping_flood_gets_one_pong_per_read() {
        let (mut w, mut s) = pair(4096, 0).await;
        let mut flood = Vec::new();
        for i in 0..20_000u32 {
            flood.extend(frame(true, OP_PING, &i.to_be_bytes()));
        }
        flood.extend(frame(true, OP_TEXT, b"end"));
        let writer = tokio::spawn(async move {
            s.write_all(&flood).await.unwrap();
            s
        });
        let mut pings = 0;
        loop {
            match recv(&mut w).await.unwrap() {
                Got::Ping(_) => pings += 1,
                Got::Text(t) if t == "end" => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pings, 20_000);
        w.flush().await.unwrap();
        let mut s = writer.await.unwrap();
        // Count the Pongs up to a text marker we send after the flood's answers.
        send(&mut w, OP_TEXT, b"marker").await;
        let mut pongs = Vec::new();
        loop {
            let (_, op, payload) = read_client_frame(&mut s).await;
            if op == OP_TEXT {
                break;
            }
            assert_eq!(op, OP_PONG);
            pongs.push(payload);
        }
        eprintln!("20000 pings: {} pongs", pongs.len());
        assert!(!pongs.is_empty() && pongs.len() < 2_000, "{}", pongs.len());
        assert_eq!(pongs.last().unwrap(), &19_999u32.to_be_bytes());
        // One at a time, each is answered at the next read.
        for i in 0..3u8 {
            s.write_all(&frame(true, OP_PING, &[i])).await.unwrap();
            assert_eq!(recv(&mut w).await.unwrap(), Got::Ping(vec![i]));
            s.write_all(&frame(true, OP_TEXT, b"t")).await.unwrap();
            assert_eq!(recv(&mut w).await.unwrap(), Got::Text("t".into()));
            assert_eq!(read_client_frame(&mut s).await, (true, OP_PONG, vec![i]));
        }
    }

    #[tokio::test]
    async fn a_newer_pong_replaces_only_an_unsent_pong_that_is_last() {
        let (mut w, mut s) = pair(4096, 0).await;
        // A frame the socket cannot take at once (the server is not reading yet).
        let big = vec![9u8; 32 << 20];
        send_started(&mut w, OP_BINARY, &big).await;
        assert!(w.unwritten() > 0);
        // Ping "a" is answered behind it; then a data frame; then Ping "b".
        s.write_all(&frame(true, OP_PING, b"a")).await.unwrap();
        assert_eq!(recv(&mut w).await.unwrap(), Got::Ping(b"a".to_vec()));
        send_started(&mut w, OP_TEXT, b"DATA").await;
        s.write_all(&frame(true, OP_PING, b"b")).await.unwrap();
        assert_eq!(recv(&mut w).await.unwrap(), Got::Ping(b"b".to_vec()));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..4 {
                let (_, op, p) = read_client_frame(&mut s).await;
                got.push((
                    op,
                    if p.len() > 16 {
                        p.len().to_be_bytes().to_vec()
                    } else {
                        p
                    },
                ));
            }
            got
        });
        w.flush().await.unwrap();
        drop(w);
        // Bounded: a frame cut off would leave the reader waiting (or misreading) for ever.
        let got = tokio::time::timeout(std::time::Duration::from_secs(60), reader)
            .await
            .expect("the four frames never all arrived")
            .unwrap();
        let expect = vec![
            (OP_BINARY, (32usize << 20).to_be_bytes().to_vec()),
            (OP_PONG, b"a".to_vec()),
            (OP_TEXT, b"DATA".to_vec()),
            (OP_PONG, b"b".to_vec()),
        ];
        assert_eq!(got, expect);
    }

    /// Starts a frame without waiting for it to be written.
    async fn send_started(w: &mut Wire<TcpStream>, op: u8, payload: &[u8]) {
        std::future::poll_fn(|cx| Poll::Ready(w.start_send(cx, op, payload)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bad_input_fails_with_the_right_error() {
        // Invalid UTF-8 fails at its fragment, before the message ends.
        let (mut w, mut s) = pair(4096, 0).await;
        s.write_all(&frame(false, OP_TEXT, &[b'a', 0xFF]))
            .await
            .unwrap();
        assert!(matches!(recv(&mut w).await, Err(WireError::Utf8)));
        let cases: [(Vec<u8>, &str); 4] = [
            (frame(true, OP_CONTINUATION, b"x"), "continuation"),
            (
                [frame(false, OP_TEXT, b"a"), frame(true, OP_BINARY, b"b")].concat(),
                "inside",
            ),
            (frame(true, OP_CLOSE, &[3]), "one byte"),
            (frame(true, OP_CLOSE, &[3, 232, 0xFF]), "not UTF-8"),
        ];
        for (bytes, want) in cases {
            let (mut w, mut s) = pair(4096, 0).await;
            s.write_all(&bytes).await.unwrap();
            match recv(&mut w).await {
                Err(WireError::Protocol(m)) => assert!(m.contains(want), "{m} vs {want}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        // A fragmented message beyond the limit.
        let (mut w, mut s) = pair(4096, 0).await;
        let part = vec![0u8; MAX / 2 + 1];
        let bytes = [
            frame(false, OP_BINARY, &part),
            frame(true, OP_CONTINUATION, &part),
        ]
        .concat();
        let server = tokio::spawn(async move {
            let _ = s.write_all(&bytes).await;
            s
        });
        assert!(matches!(recv(&mut w).await, Err(WireError::TooBig { .. })));
        drop(server);
    }

    #[tokio::test]
    async fn close_handshakes_both_ways() {
        // The server closes: answered with its code, then nothing more is read.
        let (mut w, mut s) = pair(4096, 0).await;
        s.write_all(&frame(true, OP_CLOSE, &[0x03, 0xE8, b'b', b'y', b'e']))
            .await
            .unwrap();
        assert_eq!(
            recv(&mut w).await.unwrap(),
            Got::Close(Some((1000, "bye".into())))
        );
        w.flush().await.unwrap();
        assert_eq!(
            read_client_frame(&mut s).await,
            (true, OP_CLOSE, vec![0x03, 0xE8])
        );
        assert!(matches!(recv(&mut w).await, Err(WireError::Closed)));
        // A code not allowed on the wire is a protocol error, and the wire stays open for our
        // Close 1002; 1014 (IANA) is an ordinary close.
        for bad in [1005u16, 1006, 1004, 999, 1016, 2999, 5000] {
            let (mut w, mut s) = pair(4096, 0).await;
            s.write_all(&frame(true, OP_CLOSE, &bad.to_be_bytes()))
                .await
                .unwrap();
            assert!(
                matches!(recv(&mut w).await, Err(WireError::Protocol(_))),
                "{bad}"
            );
            w.close(1002).await.unwrap();
            assert_eq!(read_client_frame(&mut s).await.2, 1002u16.to_be_bytes());
        }
        let (mut w, mut s) = pair(4096, 0).await;
        s.write_all(&frame(true, OP_CLOSE, &1014u16.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(
            recv(&mut w).await.unwrap(),
            Got::Close(Some((1014, String::new())))
        );
        w.flush().await.unwrap();
        assert_eq!(read_client_frame(&mut s).await.2, 1014u16.to_be_bytes());
        // We close: data still arrives until the server's Close; writes are refused.
        let (mut w, mut s) = pair(4096, 0).await;
        w.close(1000).await.unwrap();
        assert_eq!(
            read_client_frame(&mut s).await,
            (true, OP_CLOSE, vec![0x03, 0xE8])
        );
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(w.start_send(cx, OP_TEXT, b"late")))
                .await
                .is_err()
        );
        let bytes = [frame(true, OP_TEXT, b"late"), frame(true, OP_CLOSE, &[])].concat();
        s.write_all(&bytes).await.unwrap();
        assert_eq!(recv(&mut w).await.unwrap(), Got::Text("late".into()));
        assert_eq!(recv(&mut w).await.unwrap(), Got::Close(None));
        assert!(matches!(recv(&mut w).await, Err(WireError::Closed)));
        // EOF after our Close is the end of the handshake, not a reset.
        let (mut w, mut s) = pair(4096, 0).await;
        w.close(1000).await.unwrap();
        // Read before closing, so the server's end sends FIN, not RST.
        read_client_frame(&mut s).await;
        drop(s);
        assert!(matches!(recv(&mut w).await, Err(WireError::Closed)));
    }

    #[tokio::test]
    async fn large_and_batched_writes_arrive_whole() {
        for batch in [0, 4096] {
            let (mut w, mut s) = pair(4096, batch).await;
            let big: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7) as u8).collect();
            let expect = big.clone();
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..3 {
                    got.push(read_client_frame(&mut s).await);
                }
                got
            });
            // The socket cannot take 4 MB at once: the rest waits in the wire.
            send(&mut w, OP_BINARY, &big).await;
            send(&mut w, OP_TEXT, b"small").await;
            send(&mut w, OP_PING, &7u64.to_be_bytes()).await;
            let got = reader.await.unwrap();
            assert_eq!(got[0], (true, OP_BINARY, expect));
            assert_eq!(got[1], (true, OP_TEXT, b"small".to_vec()));
            assert_eq!(got[2], (true, OP_PING, 7u64.to_be_bytes().to_vec()));
            assert_eq!(w.unwritten(), 0);
            assert_eq!(w.st.tx.capacity(), 0);
        }
    }
}
