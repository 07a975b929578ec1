//! The WebSocket framing (`hbws::wire`) under backpressure: a stream whose reads and writes
//! return `Pending` and short counts on a schedule the input chooses, while the client sends
//! messages of its own between receives.
//!
//! Input: [read-size byte][schedule length L][L schedule bytes][sends byte][server bytes...].
//! Each read or write takes the next schedule byte: 0 is `Pending`, n is at most n bytes; once
//! the schedule is used up every call is ready and whole. Invariants:
//! - no panic, no hang: polling again after `Pending` always gets on (the schedule ends);
//! - what is received, and the final verdict, are those of the same bytes read whole with no
//!   backpressure;
//! - everything the client wrote is complete, well-formed masked frames: its own messages whole
//!   and in order, Pongs that echo a Ping the server sent, at most one Close of 0 or 2+ bytes.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use hbws::wire::{Wire, OP_BINARY};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[path = "wire_common.rs"]
mod wire_common;
use wire_common::{client_frames, own, verdict, Got};

struct Sched<'a> {
    data: &'a [u8],
    plan: &'a [u8],
    written: Vec<u8>,
}

impl Sched<'_> {
    /// `None`: this call waits; `Some(n)`: at most n bytes.
    fn step(&mut self) -> Option<usize> {
        match self.plan.split_first() {
            None => Some(usize::MAX),
            Some((&b, rest)) => {
                self.plan = rest;
                (b != 0).then_some(usize::from(b))
            }
        }
    }
}

impl AsyncRead for Sched<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(max) = self.step() else {
            return Poll::Pending;
        };
        let n = max.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Sched<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Some(max) = self.step() else {
            return Poll::Pending;
        };
        let n = max.min(buf.len());
        self.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Bounds every "poll again" loop: the schedule is at most 255 steps, so far more than that
/// many Pendings in a row is a hang.
const SPINS: usize = 100_000;

/// Received messages, verdict, the client's writes and the messages it sent.
fn run(data: &[u8], plan: &[u8], read_size: usize, sends: u8) -> (Vec<Got>, String, Vec<u8>, Vec<Vec<u8>>) {
    let io = Sched {
        data,
        plan,
        written: Vec::new(),
    };
    let mut w = Wire::new(io, Vec::new(), 4096, read_size, 0);
    let mut cx = Context::from_waker(Waker::noop());
    let mut got = Vec::new();
    let mut sent = Vec::new();
    let mut spins = 0;
    let verdict = loop {
        // Now and then, one message of ours (sizes across the stack-write limit).
        if sent.len() < usize::from(sends) && got.len() >= sent.len() {
            let msg: Vec<u8> = (0..(sent.len() * 700 + 3)).map(|i| i as u8).collect();
            let mut started = false;
            loop {
                spins += 1;
                assert!(spins < SPINS, "send never got on");
                if !started {
                    match w.poll_ready(&mut cx) {
                        Poll::Pending => continue,
                        Poll::Ready(r) => r.expect("in-memory writes do not fail"),
                    }
                    if w.start_send(&mut cx, OP_BINARY, &msg).is_err() {
                        break; // closing: refused, not sent
                    }
                    started = true;
                    sent.push(msg.clone());
                }
                match w.poll_flush(&mut cx) {
                    Poll::Pending => continue,
                    Poll::Ready(r) => {
                        r.expect("in-memory writes do not fail");
                        break;
                    }
                }
            }
        }
        match w.poll_recv(&mut cx, own) {
            Poll::Ready(Ok(m)) => got.push(m),
            Poll::Ready(Err(e)) => break verdict(e),
            Poll::Pending => {
                spins += 1;
                assert!(spins < SPINS, "receive never got on");
            }
        }
        assert!(got.len() <= data.len(), "more messages than bytes");
    };
    loop {
        spins += 1;
        assert!(spins < SPINS, "flush never got on");
        if let Poll::Ready(r) = w.poll_flush(&mut cx) {
            r.expect("in-memory writes do not fail");
            break;
        }
    }
    assert_eq!(w.unwritten(), 0);
    (got, verdict, w.into_inner().written, sent)
}

fuzz_target!(|input: &[u8]| {
    let [first, plan_len, rest @ ..] = input else {
        return;
    };
    let plan_len = usize::from(*plan_len).min(rest.len());
    let (plan, rest) = rest.split_at(plan_len);
    let Some((&sends, data)) = rest.split_first() else {
        return;
    };
    let read_size = 256 + usize::from(*first) * 64;
    let sends = sends % 4;
    let (got, verdict, written, sent) = run(data, plan, read_size, sends);
    let (plain, plain_verdict, _, _) = run(data, &[], read_size, 0);
    assert_eq!(got, plain, "backpressure changed what was received");
    assert_eq!(verdict, plain_verdict, "backpressure changed the verdict");
    let pings: Vec<&Vec<u8>> = got
        .iter()
        .filter_map(|g| match g {
            Got::Ping(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut ours = Vec::new();
    let mut closes = 0;
    for (op, payload) in client_frames(&written) {
        match op {
            0x2 => ours.push(payload),
            0xA => assert!(pings.contains(&&payload), "a Pong that echoes no Ping"),
            0x8 => {
                closes += 1;
                assert!(payload.is_empty() || payload.len() >= 2);
            }
            other => panic!("unexpected client frame opcode {other}"),
        }
    }
    assert!(closes <= 1, "{closes} Close frames");
    assert_eq!(ours, sent, "our messages, whole and in order");
});
