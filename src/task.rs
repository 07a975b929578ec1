//! The client's task: connect, run a session (`session.rs`), decide what the ending means,
//! back off, connect again; and at the end report every accepted message and release the sink.
//! It owns the sink, so the sink's release runs here, after the last event.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::{Decision, Reconnect};
use crate::client::{bump, Shared};
use crate::config::{Config, LogLevel};
use crate::connect::{self, ConnectError, Target};
use crate::event::{Delivery, Event, EventSink, Reason, State, StateChange};
use crate::session;

/// How a connection (or an attempt at one) ended.
pub(crate) struct Outcome {
    pub(crate) reason: Reason,
    pub(crate) close_code: u16,
    pub(crate) http_status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) fatal: bool,
    pub(crate) detail: String,
}

impl Outcome {
    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Outcome {
            reason,
            close_code: 0,
            http_status: 0,
            retry_after: None,
            fatal: false,
            detail: detail.into(),
        }
    }

    fn user_close() -> Self {
        Outcome::new(Reason::UserClose, "closed by the host")
    }
}

pub(crate) struct Task {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cfg: Arc<Config>,
    pub(crate) target: Target,
    sink: Option<Box<dyn EventSink>>,
    pub(crate) reconnect: Reconnect,
    rng: fastrand::Rng,
    /// Messages handed to the socket so far (the queue is FIFO, so these are ids
    /// `1 ..= written`). Handed over means written, or taken by the wire to be written before
    /// anything else (a large frame, or a batch with `write_buffer_size`): if the link then
    /// dies, such a message is reported UNCONFIRMED, like one the server may or may not have read,
    /// and is not re-sent.
    pub(crate) written: u64,
    /// Messages whose fate has been reported (`1 ..= settled`); the rest of `written` is in
    /// flight on the current connection.
    pub(crate) settled: u64,
}

impl Task {
    pub(crate) fn new(
        shared: Arc<Shared>,
        target: Target,
        sink: Option<Box<dyn EventSink>>,
    ) -> Task {
        let cfg = shared.cfg.clone();
        Task {
            reconnect: Reconnect::new(&cfg),
            rng: fastrand::Rng::new(),
            shared,
            cfg,
            target,
            sink,
            written: 0,
            settled: 0,
        }
    }

    /// Reports messages `settled + 1 ..= upto` as `outcome`.
    pub(crate) fn settle(&mut self, upto: u64, outcome: Delivery) {
        if upto <= self.settled {
            return;
        }
        let (first, count) = (self.settled + 1, upto - self.settled);
        self.settled = upto;
        let c = &self.shared.counters;
        match outcome {
            Delivery::Confirmed => bump(&c.messages_confirmed, count),
            Delivery::Unconfirmed => bump(&c.messages_unconfirmed, count),
            Delivery::Dropped => {}
        }
        self.emit(&Event::Delivery {
            first,
            count,
            outcome,
        });
    }

    pub(crate) fn close_requested(&self) -> bool {
        self.shared.lock().close.is_some()
    }

    /// Resolves once close has been requested.
    async fn wait_close(shared: &Shared) {
        loop {
            if shared.lock().close.is_some() {
                return;
            }
            shared.wake.wait().await;
        }
    }

    /// Switches to a sink set by `set_sink`, releasing the old one (after its last event).
    pub(crate) fn swap_sink(&mut self) {
        if self.shared.sink_pending.load(Relaxed) {
            let new = {
                let mut g = self.shared.lock();
                self.shared.sink_pending.store(false, Relaxed);
                g.pending_sink.take()
            };
            if let Some(new) = new {
                self.sink = Some(new);
            }
        }
    }

    pub(crate) fn emit(&mut self, event: &Event<'_>) {
        self.swap_sink();
        if let Some(sink) = self.sink.as_mut() {
            sink.event(event);
        }
    }

    /// Whether a line at `level` would reach the host (check before formatting anything costly).
    pub(crate) fn logs(&self, level: LogLevel) -> bool {
        level <= self.cfg.log_level
            && (self.sink.is_some() || self.shared.sink_pending.load(Relaxed))
    }

    pub(crate) fn log(&mut self, level: LogLevel, message: fmt::Arguments<'_>) {
        if self.logs(level) {
            let text = message.to_string();
            self.emit(&Event::Log {
                level,
                message: &text,
            });
        }
    }

    /// Every state change is told twice: as the state event, and then as a log line saying why
    /// (before it for CLOSED, which stays the client's last event).
    pub(crate) fn set_state(&mut self, change: StateChange) {
        self.shared.lock().state = change.state;
        let closed = change.state == State::Closed;
        if !closed {
            self.emit(&Event::State(&change));
        }
        if self.logs(LogLevel::Info) {
            let mut line = format!(
                "{} ({})",
                screaming(&format!("{:?}", change.state)),
                screaming(&format!("{:?}", change.reason))
            );
            if change.state == State::Reconnecting {
                line += &format!(
                    " attempt {} in {} ms",
                    change.attempt,
                    change.delay.as_millis()
                );
            }
            if change.close_code != 0 {
                line += &format!(" close code {}", change.close_code);
            }
            if change.http_status != 0 {
                line += &format!(" HTTP {}", change.http_status);
            }
            self.log(LogLevel::Info, format_args!("{line}: {}", change.detail));
        }
        if closed {
            self.emit(&Event::State(&change));
        }
    }

    pub(crate) fn simple_state(
        &mut self,
        state: State,
        reason: Reason,
        attempt: u32,
        detail: impl Into<String>,
    ) {
        self.set_state(StateChange {
            state,
            reason,
            attempt,
            delay: Duration::ZERO,
            close_code: 0,
            http_status: 0,
            detail: detail.into(),
        });
    }

    /// The host asked to close while no connection was open: CLOSING, then the end.
    // The task lives in this box for its whole life (see `Client::spawn`).
    #[allow(clippy::boxed_local)]
    fn closed_by_host(mut self: Box<Self>) {
        self.simple_state(
            State::Closing,
            Reason::UserClose,
            self.reconnect.failures(),
            "close requested by the host",
        );
        self.finish(Outcome::user_close())
    }

    pub(crate) async fn run(mut self: Box<Self>) {
        // No sink yet: wait for one (or for close) before doing anything the host should hear of.
        while self.sink.is_none() {
            {
                let mut g = self.shared.lock();
                if let Some(s) = g.pending_sink.take() {
                    self.shared.sink_pending.store(false, Relaxed);
                    self.sink = Some(s);
                    break;
                }
                if g.close.is_some() {
                    break;
                }
            }
            self.shared.wake.wait().await;
        }
        let mut attempt = 0;
        loop {
            if self.close_requested() {
                return self.closed_by_host();
            }
            let detail = format!("connecting to {}:{}", self.target.host(), self.target.port);
            self.simple_state(State::Connecting, Reason::None, attempt, detail);
            bump(&self.shared.counters.connect_attempts, 1);
            let shared = self.shared.clone();
            let started = Instant::now();
            // `open` bounds itself by the connect timeout, naming the step that ran out.
            let opened = tokio::select! {
                r = Box::pin(connect::open(&self.target, &self.cfg)) => r,
                () = Self::wait_close(&shared) => return self.closed_by_host(),
            };
            let outcome = match opened {
                Err(e) => self.connect_failure(e),
                Ok(opened) => {
                    let mut ws = opened.socket;
                    self.log(
                        LogLevel::Debug,
                        format_args!(
                            "handshake with {} done in {} ms: {}",
                            opened.peer,
                            started.elapsed().as_millis(),
                            opened.status_line
                        ),
                    );
                    self.shared.lock().subprotocol = opened.subprotocol.as_deref().map(Into::into);
                    let mut detail = format!(
                        "connected to {}:{} ({})",
                        self.target.host(),
                        self.target.port,
                        opened.peer
                    );
                    if let Some(p) = &opened.subprotocol {
                        detail += &format!(", subprotocol {p}");
                    }
                    let o = session::run(&mut self, &mut ws, detail).await;
                    // Whatever the connection did not confirm is now beyond knowing.
                    self.settle(self.written, Delivery::Unconfirmed);
                    o
                }
            };
            if outcome.reason == Reason::UserClose {
                return self.finish(outcome);
            }
            if self.close_requested() {
                // The connection ended on its own while (or just before) the host asked to
                // close: after a close request only CLOSING and CLOSED are reported.
                return self.closed_by_host();
            }
            if outcome.fatal {
                return self.finish(outcome);
            }
            let decision = self
                .reconnect
                .on_failure(self.rng.f64(), outcome.retry_after);
            match decision {
                Decision::GiveUp { attempts } => {
                    let detail = format!(
                        "gave up after {attempts} attempts; last: {}",
                        outcome.detail
                    );
                    return self.finish(Outcome {
                        reason: Reason::MaxAttempts,
                        detail,
                        ..outcome
                    });
                }
                Decision::Retry {
                    attempt: next,
                    delay,
                } => {
                    self.set_state(StateChange {
                        state: State::Reconnecting,
                        reason: outcome.reason,
                        attempt: next,
                        delay,
                        close_code: outcome.close_code,
                        http_status: outcome.http_status,
                        detail: outcome.detail,
                    });
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = Self::wait_close(&shared) => return self.closed_by_host(),
                    }
                    attempt = next;
                }
            }
        }
    }

    fn connect_failure(&mut self, e: ConnectError) -> Outcome {
        let detail = e.to_string();
        let o = match e {
            ConnectError::Rejected {
                status,
                retry_after,
            } => Outcome {
                http_status: status,
                retry_after,
                fatal: self.cfg.fatal_http_statuses.contains(&status),
                ..Outcome::new(Reason::HandshakeRejected, detail)
            },
            ConnectError::Protocol(_) => Outcome::new(Reason::ProtocolError, detail),
            ConnectError::Timeout(_) => Outcome::new(Reason::ConnectTimeout, detail),
            ConnectError::Resolve(_) | ConnectError::Io(_) => {
                Outcome::new(Reason::ConnectError, detail)
            }
        };
        self.log(
            LogLevel::Warn,
            format_args!("connection attempt failed: {}", o.detail),
        );
        o
    }

    /// Ends the client: refuse further sends, report what will never be written, CLOSED.
    #[allow(clippy::boxed_local)]
    fn finish(mut self: Box<Self>, o: Outcome) {
        let (left, bytes, pending) = {
            let mut g = self.shared.lock();
            g.finished = true;
            let left = std::mem::take(&mut g.queue);
            let bytes = std::mem::take(&mut g.queued_bytes);
            (left, bytes, g.pending_sink.take())
        };
        if let Some(p) = pending {
            self.shared.sink_pending.store(false, Relaxed);
            self.sink = Some(p);
        }
        if !left.is_empty() {
            let count = left.len() as u64;
            // Queued messages follow the written ones, in order.
            self.settle(self.written + count, Delivery::Dropped);
            bump(&self.shared.counters.messages_dropped, count);
            self.log(
                LogLevel::Warn,
                format_args!("{count} queued messages dropped at close"),
            );
            self.emit(&Event::Dropped {
                count,
                bytes: bytes as u64,
                reason: o.reason,
            });
        }
        let reason = o.reason;
        self.set_state(StateChange {
            state: State::Closed,
            reason,
            attempt: self.reconnect.failures(),
            delay: Duration::ZERO,
            close_code: o.close_code,
            http_status: o.http_status,
            detail: o.detail,
        });
        // Drop (below) releases the sink and wakes whoever waits in close.
    }
}

/// `UserClose` → `USER_CLOSE`: the names the C API gives (`hb_reason_str`).
fn screaming(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

impl Drop for Task {
    fn drop(&mut self) {
        // Also reached if the task is torn down early (runtime gone, a bug panicked): the client
        // must still end, refuse sends, report every message it accepted, release its sink
        // exactly once, and wake a waiting close. (After `finish` nothing is left to report.)
        let (left, bytes, pending) = {
            let mut g = self.shared.lock();
            g.finished = true;
            g.state = State::Closed;
            let left = std::mem::take(&mut g.queue).len() as u64;
            (
                left,
                std::mem::take(&mut g.queued_bytes),
                g.pending_sink.take(),
            )
        };
        if let Some(p) = pending {
            self.sink = Some(p);
        }
        self.settle(self.written, Delivery::Unconfirmed);
        if left > 0 {
            bump(&self.shared.counters.messages_dropped, left);
            self.settle(self.written + left, Delivery::Dropped);
            self.emit(&Event::Dropped {
                count: left,
                bytes: bytes as u64,
                reason: Reason::None,
            });
        }
        drop(self.sink.take());
        self.shared.set_done();
    }
}
