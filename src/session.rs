//! One open connection: a single loop that waits on everything at once — the socket readable,
//! the socket writable while our bytes wait, the timer, the host's wake-ups — and never on one
//! of them alone. A write the socket cannot take yet is a branch of that wait, not a pause of
//! the loop: while it waits, the server's messages are read and delivered, its pings answered,
//! the heartbeat kept, and a close request seen.
//!
//! [`Session::poll`] is the loop, read top to bottom: host work, the timer, reading, writing,
//! the close path; then, with nothing left to do, it registers for all of them and returns
//! `Pending`. Everything it does between two waits is bounded (a batch of messages read, a batch
//! written), so no server and no host can starve the others or the timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use crate::client::{bump, Out};
use crate::config::{HeartbeatMode, LogLevel};
use crate::connect::Socket;
use crate::event::{Delivery, Event, HeartbeatEvent, Reason, State};
use crate::heartbeat::{Heartbeat, Pong, Tick};
use crate::task::{Outcome, Task};
use crate::wire::{In, WireError, OP_BINARY, OP_PING, OP_TEXT};

/// Most queued messages written per loop turn before the session reads and ticks again.
const FLUSH_BATCH: usize = 64;
/// Most inbound messages handled per loop turn before the session writes and ticks again.
const READ_BATCH: usize = 32;
/// Send-queue capacity (in messages) a drained queue may keep; a larger one, left by a burst or
/// an outage, is freed, so a client's memory returns to its resting size.
const QUEUE_KEEP: usize = 16;

/// Runs one open connection until it ends.
/// `detail`: what OPEN says (where, and the subprotocol).
pub(crate) async fn run(task: &mut Task, ws: &mut Socket, detail: String) -> Outcome {
    let now = Instant::now();
    bump(&task.shared.counters.connects, 1);
    let attempt = task.reconnect.failures();
    task.simple_state(State::Open, Reason::None, attempt, detail);
    let mut s = Session {
        hb: Heartbeat::new(&task.cfg, now),
        stable_at: (!task.cfg.stable_after.is_zero()).then(|| now + task.cfg.stable_after),
        task,
        proved: false,
        // Whatever was queued while offline goes out first, in order.
        queue_work: true,
        backlog: false,
        closing: None,
        deadline: now,
    };
    s.deadline = s.wakeup();
    let sleep = tokio::time::sleep_until(s.deadline);
    tokio::pin!(sleep);
    std::future::poll_fn(|cx| s.poll(cx, ws, sleep.as_mut())).await
}

/// The close path: where it stands, and how the session ends once it is done.
struct Closing {
    /// Nothing of the close path runs past this (`close_timeout` from its start).
    deadline: Instant,
    phase: Phase,
    /// What the session returns when the close path ends.
    outcome: Outcome,
    /// Our Close frame, still to be sent (None: nothing to send, the server closed first).
    frame: Option<(u16, Box<str>)>,
    /// Read while closing (the host's close: data is still delivered and pongs confirm);
    /// not after a protocol error, when nothing more from that server is trusted.
    read: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Writing what the host queued before the close.
    Flush,
    /// A ping went out after the last message; its pong, until `until`, confirms them all.
    Confirm { until: Instant },
    /// Our Close is sent: waiting for the server's Close (or EOF).
    Sent,
    /// Only what the wire still holds (our answer to the server's Close) is to be written.
    Drain,
}

struct Session<'t> {
    task: &'t mut Task,
    hb: Heartbeat,
    stable_at: Option<Instant>,
    /// The connection proved itself (a pong answered one of our pings, or `stable_after`).
    proved: bool,
    /// The host may have queued messages: look at the queue (a lock) only then.
    queue_work: bool,
    /// The socket refused bytes of ours that still wait: when it takes some, the peer is reading
    /// (see [`Heartbeat::on_progress`]).
    backlog: bool,
    closing: Option<Box<Closing>>,
    /// When the timer is due next.
    deadline: Instant,
}

/// What one inbound message asks of the loop after it was handled.
enum Then {
    Go,
    /// The server's text ping: answer it now.
    AnswerPing,
    /// The server's Close (already answered by the wire).
    ServerClosed(Outcome),
}

impl Session<'_> {
    /// The loop (see the module doc).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut Socket,
        mut sleep: Pin<&mut Sleep>,
    ) -> Poll<Outcome> {
        loop {
            let now = Instant::now();
            // 1. The host: new callbacks, a close request, messages to write.
            if self.task.shared.wake.take() {
                self.host_work(now);
            }
            // 2. The timer: heartbeat, stability, the close path's deadlines.
            if now >= self.deadline {
                if let Err(o) = self.on_timer(cx, ws, now) {
                    return Poll::Ready(o);
                }
            }
            // 3. Reading, a batch at most.
            let mut again = false;
            if self.closing.as_ref().is_none_or(|c| c.read) {
                // The wire writes what it holds before it reads: that is progress too.
                let before = ws.unwritten();
                let r = self.read(cx, ws, now);
                self.progress(before, ws.unwritten(), now);
                match r {
                    Ok(more) => again |= more,
                    Err(o) => return Poll::Ready(o),
                }
            }
            // 4. Writing: what the wire holds, then the queue, a batch at most.
            match self.write(cx, ws, now) {
                Ok(more) => again |= more,
                Err(o) => return Poll::Ready(o),
            }
            // 5. The close path moves on once its step is done.
            if self.closing.is_some() {
                match self.advance_close(cx, ws, now) {
                    Ok(more) => again |= more,
                    Err(o) => return Poll::Ready(o),
                }
            }
            let next = self.wakeup();
            if next != self.deadline {
                self.deadline = next;
                sleep.as_mut().reset(next);
            }
            if again {
                continue;
            }
            // Nothing left to do: wait for the socket (registered by the reads and writes
            // above), the timer, or the host.
            if sleep.as_mut().poll(cx).is_ready() {
                continue;
            }
            if self.task.shared.wake.poll(cx).is_ready() {
                // The wake flag was taken by `poll`: handle it now.
                self.host_work(Instant::now());
                continue;
            }
            return Poll::Pending;
        }
    }

    /// When the loop must wake next.
    fn wakeup(&self) -> Instant {
        if let Some(c) = &self.closing {
            return match c.phase {
                Phase::Confirm { until } => until.min(c.deadline),
                _ => c.deadline,
            };
        }
        match self.stable_at {
            Some(at) if !self.proved => self.hb.next_wakeup().min(at),
            _ => self.hb.next_wakeup(),
        }
    }

    /// The host signalled: new callbacks take over now (so the old user_data is released
    /// promptly); a close request starts the close path; messages may wait in the queue.
    fn host_work(&mut self, now: Instant) {
        self.task.swap_sink();
        self.queue_work = true;
        if self.closing.is_none() {
            let frame = self.task.shared.lock().close.clone();
            if let Some(frame) = frame {
                self.begin_user_close(now, frame);
            }
        }
    }

    fn begin_user_close(&mut self, now: Instant, frame: (u16, Box<str>)) {
        self.task.simple_state(
            State::Closing,
            Reason::UserClose,
            0,
            "close requested by the host",
        );
        self.closing = Some(Box::new(Closing {
            deadline: now + self.task.cfg.close_timeout,
            phase: Phase::Flush,
            outcome: Outcome::new(Reason::UserClose, "closed by the host"),
            frame: Some(frame),
            read: true,
        }));
    }

    /// The connection failed on the server's side or ours with a reason to tell the server:
    /// what the host already queued goes out, then our Close with `code`, all within
    /// `close_timeout`; then the session ends with `outcome`.
    fn begin_error_close(&mut self, now: Instant, code: u16, outcome: Outcome) {
        self.queue_work = true;
        self.closing = Some(Box::new(Closing {
            deadline: now + self.task.cfg.close_timeout,
            phase: Phase::Flush,
            outcome,
            frame: Some((code, "".into())),
            read: false,
        }));
    }

    fn on_timer(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut Socket,
        now: Instant,
    ) -> Result<(), Outcome> {
        if let Some(deadline) = self.closing.as_ref().map(|c| c.deadline) {
            if now >= deadline {
                let c = self.closing.take().expect("closing");
                let limit = self.task.cfg.close_timeout;
                self.task.log(
                    LogLevel::Warn,
                    format_args!(
                        "close not finished within close_timeout ({limit:?}): socket dropped"
                    ),
                );
                return Err(c.outcome);
            }
            // A confirming ping's time is up: the step is taken by `advance_close`.
            return Ok(());
        }
        if !self.proved && self.stable_at.is_some_and(|at| now >= at) {
            self.prove();
        }
        let tick = self.hb.poll(now, self.task.written);
        let ping = match tick {
            Tick::Idle => false,
            Tick::Ping => true,
            Tick::Missed { missed, ping } => {
                bump(&self.task.shared.counters.pongs_missed, 1);
                self.task
                    .emit(&Event::Heartbeat(HeartbeatEvent::Missed { missed }));
                let max = self.task.cfg.max_missed;
                self.task.log(
                    LogLevel::Warn,
                    format_args!("heartbeat missed ({missed} of {max})"),
                );
                ping
            }
            Tick::Dead { missed } => {
                bump(&self.task.shared.counters.pongs_missed, 1);
                self.task
                    .emit(&Event::Heartbeat(HeartbeatEvent::Missed { missed }));
                let cfg = &self.task.cfg;
                let mut detail = format!(
                    "{missed} heartbeats unanswered (interval {:?}, pong timeout {:?})",
                    cfg.ping_interval, cfg.pong_timeout
                );
                if ws.unwritten() > 0 {
                    detail += &format!(
                        "; {} bytes of ours unwritten: the peer stopped reading",
                        ws.unwritten()
                    );
                }
                return Err(self.lost(Outcome::new(Reason::HeartbeatTimeout, detail)));
            }
        };
        if ping {
            bump(&self.task.shared.counters.pings_sent, 1);
            let n = self.hb.last_ping();
            self.send_ping(cx, ws, n)?;
            self.task
                .log(LogLevel::Debug, format_args!("heartbeat ping {n} sent"));
        }
        Ok(())
    }

    /// Writes heartbeat ping number `n` (the configured text, or a Ping frame carrying `n`),
    /// behind whatever the wire holds.
    fn send_ping(&mut self, cx: &mut Context<'_>, ws: &mut Socket, n: u64) -> Result<(), Outcome> {
        let num = n.to_be_bytes();
        let (op, payload) = match self.task.cfg.heartbeat_mode {
            HeartbeatMode::Text => (OP_TEXT, self.task.cfg.ping_text.as_bytes()),
            HeartbeatMode::Protocol => (OP_PING, &num[..]),
        };
        ws.start_send(cx, op, payload).map_err(write_failed)
    }

    fn prove(&mut self) {
        self.proved = true;
        self.task.reconnect.on_proof();
    }

    /// Reads and handles up to a batch of messages. `Ok(true)`: more may be waiting.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut Socket,
        now: Instant,
    ) -> Result<bool, Outcome> {
        for _ in 0..READ_BATCH {
            let got = ws.poll_recv(cx, |m| self.inbound(now, m));
            match got {
                Poll::Pending => return Ok(false),
                Poll::Ready(Ok(Then::Go)) => {}
                Poll::Ready(Ok(Then::AnswerPing)) => self.answer_server_ping(cx, ws, now)?,
                Poll::Ready(Ok(Then::ServerClosed(o))) => {
                    if self.closing.is_none() {
                        // Our answer is queued in the wire: write it, then end.
                        self.task.log(LogLevel::Info, format_args!("{}", o.detail));
                        self.closing = Some(Box::new(Closing {
                            deadline: now + self.task.cfg.close_timeout,
                            phase: Phase::Drain,
                            outcome: o,
                            frame: None,
                            read: false,
                        }));
                    } else if let Some(c) = &mut self.closing {
                        // Closing ourselves: the server's Close (ours crossed it, or answered
                        // it) ends the handshake once what the wire holds is written.
                        c.phase = Phase::Drain;
                        c.frame = None;
                        c.read = false;
                    }
                    return Ok(true);
                }
                Poll::Ready(Err(e)) => return self.read_error(now, e).map(|()| true),
            }
            if self.task.shared.wake.take() {
                // The host queued something (a reply from its message callback): it goes out
                // now, before more is read.
                self.host_work(now);
                return Ok(true);
            }
        }
        Ok(true)
    }

    /// Handles one inbound message, borrowed from the bytes read.
    fn inbound(&mut self, now: Instant, msg: In<'_>) -> Then {
        // Host calls from the callbacks below only set the flag: the loop takes it after this.
        self.task.shared.wake.running();
        if let In::Text(t) = msg {
            if t == self.task.cfg.ping_text {
                if self.closing.is_some() {
                    return Then::Go;
                }
                return Then::AnswerPing;
            }
        }
        if let Some(pong) = self.as_pong(now, &msg) {
            self.on_pong(pong);
            if self.task.cfg.deliver_heartbeats && self.closing.is_none() {
                if let In::Text(t) = msg {
                    self.deliver(false, t.as_bytes());
                }
            }
            return Then::Go;
        }
        self.hb.on_inbound(now);
        match msg {
            In::Text(t) => self.deliver(false, t.as_bytes()),
            In::Binary(b) => self.deliver(true, b),
            In::Ping(_) => {
                // The wire queued the Pong; it goes out with the next write.
                bump(&self.task.shared.counters.server_pings_answered, 1);
                self.task
                    .emit(&Event::Heartbeat(HeartbeatEvent::ServerPing {
                        protocol: true,
                    }));
                self.task
                    .log(LogLevel::Debug, format_args!("server Ping answered"));
            }
            In::Close(frame) => {
                let (code, reason) = frame.unwrap_or((1005, ""));
                let fatal = self.task.cfg.fatal_close_codes.contains(&code);
                let detail = format!("server closed with {code} {reason:?}");
                return Then::ServerClosed(Outcome {
                    close_code: code,
                    fatal,
                    ..Outcome::new(Reason::ServerClose, detail)
                });
            }
            In::Pong(_) => {}
        }
        Then::Go
    }

    /// If `m` answers our pings (a text pong in Text mode, a Pong frame echoing one of our ping
    /// numbers in Protocol mode), records it and says what it answered.
    fn as_pong(&mut self, now: Instant, m: &In<'_>) -> Option<Pong> {
        match (self.task.cfg.heartbeat_mode, m) {
            (HeartbeatMode::Text, In::Text(t)) if *t == self.task.cfg.pong_text => {
                Some(self.hb.on_pong(now))
            }
            (HeartbeatMode::Protocol, In::Pong(p)) => self.hb.on_protocol_pong(now, p),
            _ => None,
        }
    }

    /// A pong: its round trip, what it confirms, and proof of the connection if it answered
    /// one of our pings (an unsolicited one proves nothing).
    fn on_pong(&mut self, pong: Pong) {
        let c = &self.task.shared.counters;
        if let Some(rtt) = pong.rtt {
            bump(&c.pongs_received, 1);
            let us = rtt.as_micros().min(u64::MAX as u128) as u64;
            c.rtt_last_us.store(us, Relaxed);
            c.rtt_sum_us.fetch_add(us, Relaxed);
            if c.pongs_received.load(Relaxed) == 1 {
                c.rtt_min_us.store(us, Relaxed);
            } else {
                c.rtt_min_us.fetch_min(us, Relaxed);
            }
            self.task
                .emit(&Event::Heartbeat(HeartbeatEvent::Pong { rtt }));
            self.task.log(
                LogLevel::Debug,
                format_args!("heartbeat pong, round trip {} us", us),
            );
        }
        if let Some(mark) = pong.mark {
            self.task.settle(mark, Delivery::Confirmed);
        }
        if !self.proved && (pong.rtt.is_some() || pong.mark.is_some()) {
            self.prove();
        }
    }

    /// Answers the server's text ping, ahead of anything queued.
    fn answer_server_ping(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut Socket,
        now: Instant,
    ) -> Result<(), Outcome> {
        let cfg = self.task.cfg.clone();
        ws.start_send(cx, OP_TEXT, cfg.pong_text.as_bytes())
            .map_err(|e| self.lost(write_failed(e)))?;
        bump(&self.task.shared.counters.server_pings_answered, 1);
        self.hb.on_inbound(now);
        self.task
            .emit(&Event::Heartbeat(HeartbeatEvent::ServerPing {
                protocol: false,
            }));
        self.task
            .log(LogLevel::Debug, format_args!("server ping answered"));
        if cfg.deliver_heartbeats {
            self.deliver(false, cfg.ping_text.as_bytes());
        }
        Ok(())
    }

    fn deliver(&mut self, binary: bool, data: &[u8]) {
        let c = &self.task.shared.counters;
        bump(&c.messages_received, 1);
        bump(&c.bytes_received, data.len() as u64);
        self.task.emit(&Event::Message { binary, data });
    }

    /// A read failed. Where the protocol says so, the server is told why (our Close with a
    /// code, after what the host queued); the close code decides, like a server's would, whether
    /// retrying can help (`fatal_close_codes`).
    fn read_error(&mut self, now: Instant, e: WireError) -> Result<(), Outcome> {
        let (reason, code, detail) = match e {
            WireError::TooBig { size, max } => (
                Reason::MessageTooBig,
                Some(1009),
                format!("inbound message of {size} bytes exceeds max_message_size {max}"),
            ),
            WireError::Utf8 => (
                Reason::ProtocolError,
                Some(1007),
                "invalid UTF-8 in a text message".into(),
            ),
            WireError::Reset => (
                Reason::ConnectionLost,
                None,
                "connection closed by the server without a close frame (EOF)".into(),
            ),
            WireError::Protocol(p) => (Reason::ProtocolError, Some(1002), p.to_string()),
            WireError::Io(e) => (
                Reason::ConnectionLost,
                None,
                format!("connection lost: {e}"),
            ),
            WireError::Closed => (Reason::ConnectionLost, None, "connection closed".into()),
        };
        if let Some(c) = self.closing.take() {
            // On the close path already: the connection is over, as the close path meant.
            if reason != Reason::ConnectionLost {
                self.task
                    .log(LogLevel::Warn, format_args!("while closing: {detail}"));
            }
            return Err(c.outcome);
        }
        let Some(code) = code else {
            return Err(self.lost(Outcome::new(reason, detail)));
        };
        self.task.log(
            LogLevel::Warn,
            format_args!("closing with {code}: {detail}"),
        );
        let outcome = Outcome {
            close_code: code,
            fatal: self.task.cfg.fatal_close_codes.contains(&code),
            ..Outcome::new(reason, detail)
        };
        self.begin_error_close(now, code, outcome);
        Ok(())
    }

    /// Moves our bytes toward the socket: what the wire holds, then queued messages while the
    /// wire takes them (a batch at most), then a flush. `Ok(true)`: more may be written now.
    fn write(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut Socket,
        now: Instant,
    ) -> Result<bool, Outcome> {
        // While frames already read wait to be handled, answers to them (a Ping flood's Pongs)
        // are left to the wire, which writes them once, before its next read. (Not once reading
        // has stopped: then the bytes left unread will never be handled.)
        let reading = self.closing.as_ref().is_none_or(|c| c.read);
        if ws.unwritten() > 0 && (ws.buffered() == 0 || !reading) {
            let before = ws.unwritten();
            let r = ws.poll_flush(cx);
            self.progress(before, ws.unwritten(), now);
            match r {
                Poll::Ready(Ok(())) => self.backlog = false,
                Poll::Ready(Err(e)) => return Err(self.lost(write_failed(e))),
                Poll::Pending => {
                    // Waits for the socket (registered); the loop goes on with everything else.
                    self.backlog = true;
                    return Ok(false);
                }
            }
        }
        let sending = match &self.closing {
            None => true,
            Some(c) => c.phase == Phase::Flush,
        };
        if !self.queue_work || !sending {
            return Ok(false);
        }
        let host_pings = self.task.cfg.heartbeat_mode == HeartbeatMode::Text;
        let mut batch = 0;
        loop {
            let before = ws.unwritten();
            let r = ws.poll_ready(cx);
            self.progress(before, ws.unwritten(), now);
            match r {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(self.lost(write_failed(e))),
                Poll::Pending => {
                    self.backlog = true;
                    return Ok(false);
                }
            }
            if batch == FLUSH_BATCH {
                // More left: come back after a turn of reading and ticking.
                return Ok(true);
            }
            let Some(msg) = self.pop() else {
                self.queue_work = false;
                break;
            };
            let op = if msg.binary { OP_BINARY } else { OP_TEXT };
            if let Err(e) = ws.start_send(cx, op, &msg.data) {
                let mut g = self.task.shared.lock();
                g.queued_bytes += msg.data.len();
                g.queue.push_front(msg);
                drop(g);
                return Err(self.lost(write_failed(e)));
            }
            batch += 1;
            self.task.written += 1;
            // The host's own text `ping` is answered by the server like ours (Text mode).
            if host_pings && !msg.binary && *msg.data == *self.task.cfg.ping_text.as_bytes() {
                self.hb.extra_ping(now, self.task.written);
            }
            let c = &self.task.shared.counters;
            bump(&c.messages_sent, 1);
            bump(&c.bytes_sent, msg.data.len() as u64);
        }
        if batch > 0 || ws.unwritten() > 0 {
            let before = ws.unwritten();
            let r = ws.poll_flush(cx);
            self.progress(before, ws.unwritten(), now);
            match r {
                // All taken: no backlog, so a later write the socket takes at once is no
                // evidence of a reading peer.
                Poll::Ready(Ok(())) => self.backlog = false,
                Poll::Ready(Err(e)) => return Err(self.lost(write_failed(e))),
                Poll::Pending => self.backlog = true,
            }
        }
        Ok(false)
    }

    /// Bytes that waited for the socket were taken: the peer is reading.
    fn progress(&mut self, before: usize, after: usize, now: Instant) {
        if self.backlog && after < before {
            self.hb.on_progress(now);
        }
    }

    /// The next queued message, if any.
    fn pop(&mut self) -> Option<Out> {
        let mut g = self.task.shared.lock();
        let next = g.queue.pop_front();
        match &next {
            Some(m) => g.queued_bytes -= m.data.len(),
            // Drained after a burst or an outage: give the high-water mark back.
            None if g.queue.capacity() > QUEUE_KEEP => g.queue = Default::default(),
            None => {}
        }
        next
    }

    /// The close path's next step, once the current one is done. `Ok(true)`: it moved on.
    fn advance_close(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut Socket,
        now: Instant,
    ) -> Result<bool, Outcome> {
        let Some(c) = self.closing.as_deref() else {
            return Ok(false);
        };
        let (phase, user, deadline) = (c.phase, c.read, c.deadline);
        match phase {
            Phase::Flush => {
                if self.queue_work || ws.unwritten() > 0 {
                    return Ok(false);
                }
                if user && self.task.written > self.task.settled && self.confirm_useful() {
                    // A ping after the last message: its pong confirms everything written. It
                    // gets half of what is left, so our Close always has its share.
                    let n = self.hb.extra_ping(now, self.task.written);
                    self.send_ping(cx, ws, n)?;
                    let until = now + deadline.saturating_duration_since(now) / 2;
                    self.set_phase(Phase::Confirm { until });
                    return Ok(true);
                }
                self.send_close(cx, ws)
            }
            Phase::Confirm { until } => {
                if self.task.settled < self.task.written && now < until {
                    return Ok(false);
                }
                self.send_close(cx, ws)
            }
            Phase::Sent => {
                if !user && ws.unwritten() == 0 {
                    // After an error we do not wait for the server's answer.
                    return Err(self.closing.take().expect("closing").outcome);
                }
                Ok(false)
            }
            Phase::Drain => {
                if ws.unwritten() == 0 {
                    return Err(self.closing.take().expect("closing").outcome);
                }
                Ok(false)
            }
        }
    }

    /// Whether the confirming ping can be answered: not by a server that never answered one of
    /// our text pings on this connection (a plain RFC 6455 server does not speak them).
    fn confirm_useful(&self) -> bool {
        let (answered, sent) = self.hb.answered();
        self.task.cfg.heartbeat_mode == HeartbeatMode::Protocol || answered > 0 || sent == 0
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(c) = &mut self.closing {
            c.phase = phase;
        }
    }

    /// Sends our Close frame and waits for the server's.
    fn send_close(&mut self, cx: &mut Context<'_>, ws: &mut Socket) -> Result<bool, Outcome> {
        let c = self.closing.as_deref_mut().expect("closing");
        let Some((code, reason)) = c.frame.take() else {
            c.phase = Phase::Drain;
            return Ok(true);
        };
        c.phase = Phase::Sent;
        if let Err(e) = ws.start_close_reason(cx, code, &reason) {
            let c = self.closing.take().expect("closing");
            self.task.log(
                LogLevel::Warn,
                format_args!("could not send our Close: {e}"),
            );
            return Err(c.outcome);
        }
        self.task
            .log(LogLevel::Debug, format_args!("Close {code} sent"));
        Ok(true)
    }

    /// An open connection ended by itself. The socket is dropped without waiting on it.
    fn lost(&mut self, o: Outcome) -> Outcome {
        if let Some(c) = self.closing.take() {
            // On the close path, an ending is the close path's.
            return c.outcome;
        }
        self.task.log(
            LogLevel::Warn,
            format_args!("connection ended: {}", o.detail),
        );
        o
    }
}

fn write_failed(e: std::io::Error) -> Outcome {
    Outcome::new(Reason::ConnectionLost, format!("write failed: {e}"))
}
