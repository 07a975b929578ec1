//! The WebSocket framing (`hbws::wire`) on arbitrary bytes from the server.
//!
//! The first input byte picks the read size; the rest is what the server sends, delivered in
//! reads of that size by an in-memory stream. Invariants:
//! - no panic, no hang: every poll either hands something over, fails, or ends at end of input;
//! - the same bytes read whole, and read one byte at a time, give the same messages in the same
//!   order and the same final verdict (buffering never changes what is received);
//! - everything the client writes back (Pongs, the Close answer) is a well-formed masked client
//!   frame, and a Pong echoes a Ping the server sent.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use hbws::wire::{In, Wire, WireError};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Serves `data` in reads of at most `chunk` bytes, then EOF; keeps what is written.
struct Mem<'a> {
    data: &'a [u8],
    chunk: usize,
    written: Vec<u8>,
}

impl AsyncRead for Mem<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Mem<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// Everything received, the verdict (its kind), and the client's writes.
fn run(data: &[u8], chunk: usize, read_size: usize) -> (Vec<Got>, String, Vec<u8>) {
    let io = Mem {
        data,
        chunk,
        written: Vec::new(),
    };
    let mut w = Wire::new(io, Vec::new(), 4096, read_size, 0);
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    let verdict = loop {
        match w.poll_recv(&mut cx, |m| match m {
            In::Text(t) => Got::Text(t.into()),
            In::Binary(b) => Got::Binary(b.into()),
            In::Ping(p) => Got::Ping(p.into()),
            In::Pong(p) => Got::Pong(p.into()),
            In::Close(c) => Got::Close(c.map(|(c, r)| (c, r.into()))),
        }) {
            Poll::Ready(Ok(m)) => got.push(m),
            Poll::Ready(Err(e)) => {
                break match e {
                    WireError::Io(_) => "io".to_string(),
                    WireError::Reset => "reset".to_string(),
                    WireError::Closed => "closed".to_string(),
                    WireError::Protocol(p) => format!("protocol: {p}"),
                    WireError::TooBig { size, max } => format!("too big {size} {max}"),
                    WireError::Utf8 => "utf8".to_string(),
                }
            }
            Poll::Pending => panic!("the in-memory stream never waits"),
        }
        assert!(got.len() <= data.len(), "more messages than bytes");
    };
    let _ = w.poll_flush(&mut cx);
    (got, verdict, w.into_inner().written)
}

/// Parses the client's writes: masked frames, unmasked payloads.
fn client_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 2);
        assert_eq!(b[0] & 0xF0, 0x80, "FIN set, no reserved bits");
        assert_eq!(b[1] & 0x80, 0x80, "client frames are masked");
        let (hl, len) = match b[1] & 0x7F {
            126 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
            127 => (10, u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize),
            n => (2, n as usize),
        };
        let key = &b[hl..hl + 4];
        let p: Vec<u8> = b[hl + 4..hl + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ key[i % 4])
            .collect();
        out.push((b[0] & 0x0F, p));
        b = &b[hl + 4 + len..];
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let read_size = 256 + usize::from(first) * 64;
    let (got, verdict, written) = run(data, usize::MAX, read_size);
    let (got1, verdict1, _) = run(data, 1, read_size);
    assert_eq!(got, got1, "messages depend on how the bytes were split");
    assert_eq!(verdict, verdict1, "verdict depends on how the bytes were split");
    let pings: Vec<&Vec<u8>> = got
        .iter()
        .filter_map(|g| match g {
            Got::Ping(p) => Some(p),
            _ => None,
        })
        .collect();
    for (op, payload) in client_frames(&written) {
        match op {
            0xA => assert!(pings.contains(&&payload), "a Pong that echoes no Ping"),
            0x8 => assert!(payload.is_empty() || payload.len() == 2),
            other => panic!("unexpected client frame opcode {other}"),
        }
    }
});
