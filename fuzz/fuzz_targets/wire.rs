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

use hbws::wire::Wire;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[path = "wire_common.rs"]
mod wire_common;
use wire_common::{client_frames, own, verdict, Got};

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
        match w.poll_recv(&mut cx, own) {
            Poll::Ready(Ok(m)) => got.push(m),
            Poll::Ready(Err(e)) => break verdict(e),
            Poll::Pending => panic!("the in-memory stream never waits"),
        }
        assert!(got.len() <= data.len(), "more messages than bytes");
    };
    let _ = w.poll_flush(&mut cx);
    (got, verdict, w.into_inner().written)
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
