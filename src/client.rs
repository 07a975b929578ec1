//! The client: a handle shared with the host's threads, and one task on the runtime that
//! connects, runs the heartbeat, reads, writes, and reconnects.
//!
//! Layout, chosen for many idle clients: the handle and the task share one `Arc<Shared>` holding
//! a mutex-protected queue and a work flag with the task's waker (`Wakeup`; no channel, nothing
//! allocated up front); the task
//! owns the socket, one timer, the heartbeat and backoff state, and the event sink. The connect
//! future is boxed so its handshake state does not stay in the task's layout after it finishes.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

use crate::backoff::{Decision, Reconnect};
use crate::config::{Config, HeartbeatMode, LogLevel};
use crate::connect::{self, ConnectError, Socket, Target, UrlError};
use crate::heartbeat::{Heartbeat, Pong, Tick};
use crate::runtime::{self, RuntimeError};
use crate::wire::{In, WireError, OP_BINARY, OP_PING, OP_TEXT};

/// Connection state as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Open,
    Reconnecting,
    Closing,
    Closed,
}

/// Why a state changed (or messages were dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    None,
    /// The host called close.
    UserClose,
    /// `max_missed` heartbeats in a row went unanswered.
    HeartbeatTimeout,
    /// Reset, EOF or another I/O error on an open connection.
    ConnectionLost,
    /// The server sent a Close frame (code in the event).
    ServerClose,
    /// The server answered the upgrade with a non-101 status (status in the event).
    HandshakeRejected,
    /// TCP connect plus handshake took longer than `connect_timeout`.
    ConnectTimeout,
    /// Name resolution or TCP connect failed.
    ConnectError,
    /// `max_attempts` reconnect attempts in a row failed.
    MaxAttempts,
    /// An inbound message exceeded `max_message_size` (closed with 1009).
    MessageTooBig,
    /// The server broke the WebSocket protocol (closed with 1002 or 1007).
    ProtocolError,
}

/// One state change, with its reason and detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub state: State,
    pub reason: Reason,
    /// Connection attempt number since the last proven connection (0 for the first connect).
    pub attempt: u32,
    /// Delay before the next attempt (RECONNECTING only).
    pub delay: Duration,
    /// WebSocket close code involved, or 0.
    pub close_code: u16,
    /// HTTP status of a refused handshake, or 0.
    pub http_status: u16,
    /// Human-readable detail.
    pub detail: String,
}

/// Heartbeat happenings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// Our ping was answered after `rtt`.
    Pong { rtt: Duration },
    /// The server's ping was answered (text `pong`, or a protocol Pong if `protocol`).
    ServerPing { protocol: bool },
    /// Our ping went unanswered; `missed` in a row.
    Missed { missed: u32 },
}

/// Everything the host hears about.
#[derive(Debug)]
pub enum Event<'a> {
    State(&'a StateChange),
    Message {
        binary: bool,
        data: &'a [u8],
    },
    Heartbeat(HeartbeatEvent),
    /// What became of accepted messages `first ..= first + count - 1`. The n-th message the
    /// client accepts (`send_*` returned `Ok`) has id n, from 1; every id is reported exactly
    /// once, in order.
    Delivery {
        first: u64,
        count: u64,
        outcome: Delivery,
    },
    /// Messages accepted from the host that will never be written (also reported, by id, as
    /// [`Delivery::Dropped`]).
    Dropped {
        count: u64,
        bytes: u64,
        reason: Reason,
    },
    Log {
        level: LogLevel,
        message: &'a str,
    },
}

/// What became of a range of accepted messages ([`Event::Delivery`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The server has read them: it answered a ping written after them (a heartbeat probe, the
    /// host's own text `ping`, or the one `close` sends before its Close frame).
    Confirmed,
    /// Written to a connection that then ended before anything confirmed them: they may or may
    /// not have reached the server. They are not sent again.
    Unconfirmed,
    /// Never written: the client ended with them queued.
    Dropped,
}

/// Receives a client's events, one at a time, on the runtime thread. Dropping the sink is its
/// release: it happens exactly once, after its last event.
pub trait EventSink: Send {
    fn event(&mut self, event: &Event<'_>);
}

/// Why a send was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The client is closed or closing.
    Closed,
    /// The queue is at its bound.
    QueueFull,
    /// The message is larger than `max_message_size`.
    TooBig,
    /// Not OPEN and offline queueing is disabled.
    NotOpen,
}

/// Why a client could not be created.
#[derive(Debug)]
pub enum CreateError {
    Url(UrlError),
    Config(String),
    Runtime(RuntimeError),
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::Url(UrlError::Invalid(m)) => write!(f, "invalid URL: {m}"),
            CreateError::Url(UrlError::Unsupported(m)) => write!(f, "unsupported: {m}"),
            CreateError::Config(m) => write!(f, "invalid configuration: {m}"),
            CreateError::Runtime(RuntimeError::Forked) => {
                write!(
                    f,
                    "hbws was started in the parent process; it cannot be used after fork()"
                )
            }
            CreateError::Runtime(RuntimeError::Start(m)) => {
                write!(f, "runtime failed to start: {m}")
            }
            CreateError::Runtime(RuntimeError::AlreadyStarted) => {
                write!(f, "runtime already started")
            }
        }
    }
}

/// A snapshot of a client's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub state: Option<State>,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub server_pings_answered: u64,
    pub pongs_missed: u64,
    pub connects: u64,
    pub connect_attempts: u64,
    pub messages_dropped: u64,
    /// Accepted messages reported [`Delivery::Confirmed`] / [`Delivery::Unconfirmed`].
    pub messages_confirmed: u64,
    pub messages_unconfirmed: u64,
    pub queued_messages: u64,
    pub queued_bytes: u64,
    pub rtt_last: Duration,
    pub rtt_min: Duration,
    pub rtt_mean: Duration,
}

#[derive(Default)]
struct Counters {
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    pings_sent: AtomicU64,
    pongs_received: AtomicU64,
    server_pings_answered: AtomicU64,
    pongs_missed: AtomicU64,
    connects: AtomicU64,
    connect_attempts: AtomicU64,
    messages_dropped: AtomicU64,
    messages_confirmed: AtomicU64,
    messages_unconfirmed: AtomicU64,
    rtt_last_us: AtomicU64,
    rtt_min_us: AtomicU64,
    rtt_sum_us: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Relaxed);
}

struct Inner {
    state: State,
    queue: VecDeque<Out>,
    queued_bytes: usize,
    close_requested: bool,
    /// The task has ended (or is ending): nothing more is accepted.
    finished: bool,
    pending_sink: Option<Box<dyn EventSink>>,
}

/// What woke a session's task (see `Task::session`).
enum Turn {
    /// A message was read and handled.
    Read,
    /// The server's text ping was read: answer it.
    ServerPing,
    ServerClosed(Box<Outcome>),
    ReadError(Box<WireError>),
    Timer,
    Wake,
}

/// "There is work": set by the host's threads, taken by the task. A flag and the task's waker,
/// cheaper on the per-message path than a `Notify` (no waiter list to join and leave).
#[derive(Default)]
struct Wakeup {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Wakeup {
    fn wake(&self) {
        if !self.pending.swap(true, AcqRel) {
            self.waker.wake();
        }
    }

    /// Forgets the task's waker while the task runs anyway: a host call from inside a callback
    /// then only sets the flag (taken before the task sleeps) instead of scheduling the task
    /// for one more pass.
    fn running(&self) {
        drop(self.waker.take());
    }

    /// Takes the flag without waiting.
    fn take(&self) -> bool {
        self.pending.load(Acquire) && self.pending.swap(false, AcqRel)
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A wake between the first check and the registration went to the old waker.
        if self.take() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once there is work (at once if some was signalled since the last take).
    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll(cx))
    }
}

/// What the host's threads and the task share.
struct Shared {
    cfg: Arc<Config>,
    inner: Mutex<Inner>,
    /// Wakes the task: a new message, a close request, a new sink.
    wake: Wakeup,
    sink_pending: AtomicBool,
    counters: Counters,
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the data is still consistent
        // enough to close down, so ignore the poison rather than spread the panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A message the host handed over, waiting to be written.
struct Out {
    data: Box<[u8]>,
    binary: bool,
}

/// A running client. Cheap to clone; all clones are the same client.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

impl Client {
    /// Validates `url` and `cfg`, starts the runtime if needed, and spawns the client's task.
    /// With no sink the task waits, without connecting, until [`set_sink`](Self::set_sink), so
    /// no event is ever lost.
    pub fn connect(
        url: &str,
        cfg: Arc<Config>,
        sink: Option<Box<dyn EventSink>>,
    ) -> Result<Client, CreateError> {
        Self::create(None, url, cfg, sink)
    }

    /// Like [`connect`](Self::connect) but on a runtime of the caller's choosing. For tests on
    /// tokio's paused clock; the C API always uses the library's own runtime.
    #[doc(hidden)]
    pub fn connect_on(
        handle: &tokio::runtime::Handle,
        url: &str,
        cfg: Arc<Config>,
        sink: Option<Box<dyn EventSink>>,
    ) -> Result<Client, CreateError> {
        Self::create(Some(handle), url, cfg, sink)
    }

    /// Checks the URL and config before anything starts (a bad URL never starts the runtime).
    fn create(
        handle: Option<&tokio::runtime::Handle>,
        url: &str,
        cfg: Arc<Config>,
        sink: Option<Box<dyn EventSink>>,
    ) -> Result<Client, CreateError> {
        let target = Target::parse(url).map_err(CreateError::Url)?;
        cfg.validate().map_err(CreateError::Config)?;
        let own;
        let handle = match handle {
            Some(h) => h,
            None => {
                own = runtime::handle().map_err(CreateError::Runtime)?;
                &own
            }
        };
        Ok(Self::spawn(handle, target, cfg, sink))
    }

    fn spawn(
        handle: &tokio::runtime::Handle,
        target: Target,
        cfg: Arc<Config>,
        sink: Option<Box<dyn EventSink>>,
    ) -> Client {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                state: State::Connecting,
                queue: VecDeque::new(),
                queued_bytes: 0,
                close_requested: false,
                finished: false,
                pending_sink: None,
            }),
            wake: Wakeup::default(),
            sink_pending: AtomicBool::new(false),
            counters: Counters::default(),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
            cfg,
        });
        let task = Task::new(shared.clone(), target, sink);
        // Boxed: the task's state lives once on the heap instead of twice in the future.
        handle.spawn(Box::new(task).run());
        Client { shared }
    }

    /// Queues a text message. Never blocks beyond a short lock.
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.send(text.len(), || Out {
            data: text.as_bytes().into(),
            binary: false,
        })
    }

    /// Queues a binary message. Never blocks beyond a short lock.
    pub fn send_binary(&self, data: &[u8]) -> Result<(), SendError> {
        self.send(data.len(), || Out {
            data: data.into(),
            binary: true,
        })
    }

    fn send(&self, len: usize, make: impl FnOnce() -> Out) -> Result<(), SendError> {
        let cfg = &self.shared.cfg;
        if len > cfg.max_message_size {
            return Err(SendError::TooBig);
        }
        {
            let mut g = self.shared.lock();
            if g.finished || g.close_requested {
                return Err(SendError::Closed);
            }
            let (max_n, max_bytes) = if g.state == State::Open {
                (cfg.send_queue_messages, cfg.send_queue_bytes)
            } else {
                if cfg.offline_queue_messages == 0 {
                    return Err(SendError::NotOpen);
                }
                (cfg.offline_queue_messages, cfg.offline_queue_bytes)
            };
            if g.queue.len() >= max_n || g.queued_bytes.saturating_add(len) > max_bytes {
                return Err(SendError::QueueFull);
            }
            g.queue.push_back(make());
            g.queued_bytes += len;
        }
        self.shared.wake.wake();
        Ok(())
    }

    /// Replaces the event sink. The old one is dropped (released) by the task after its last
    /// event. Fails with `Closed` once the task has ended; the sink is then dropped here.
    pub fn set_sink<S: EventSink + 'static>(&self, sink: S) -> Result<(), (SendError, S)> {
        let replaced = {
            let mut g = self.shared.lock();
            if g.finished {
                return Err((SendError::Closed, sink));
            }
            // A sink set earlier and not yet picked up is replaced; it never saw an event.
            let replaced = g.pending_sink.replace(Box::new(sink));
            self.shared.sink_pending.store(true, Relaxed);
            replaced
        };
        // Released outside the lock: a release hook may call back into the library.
        drop(replaced);
        self.shared.wake.wake();
        Ok(())
    }

    /// Asks the task to close: flush the queue, close handshake bounded by `close_timeout`,
    /// final events, release. With `wait`, blocks until all of that is done.
    /// Returns false if close had already been requested.
    pub fn close(&self, wait: bool) -> bool {
        let first = {
            let mut g = self.shared.lock();
            !std::mem::replace(&mut g.close_requested, true)
        };
        self.shared.wake.wake();
        if wait {
            self.wait_done();
        }
        first
    }

    /// Blocks until the task has ended and released its sink.
    pub fn wait_done(&self) {
        let mut done = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = self
                .shared
                .done_cv
                .wait(done)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn state(&self) -> State {
        self.shared.lock().state
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let (state, queued_messages, queued_bytes) = {
            let g = self.shared.lock();
            (g.state, g.queue.len() as u64, g.queued_bytes as u64)
        };
        let pongs = c.pongs_received.load(Relaxed);
        let us = Duration::from_micros;
        Stats {
            state: Some(state),
            messages_sent: c.messages_sent.load(Relaxed),
            bytes_sent: c.bytes_sent.load(Relaxed),
            messages_received: c.messages_received.load(Relaxed),
            bytes_received: c.bytes_received.load(Relaxed),
            pings_sent: c.pings_sent.load(Relaxed),
            pongs_received: pongs,
            server_pings_answered: c.server_pings_answered.load(Relaxed),
            pongs_missed: c.pongs_missed.load(Relaxed),
            connects: c.connects.load(Relaxed),
            connect_attempts: c.connect_attempts.load(Relaxed),
            messages_dropped: c.messages_dropped.load(Relaxed),
            messages_confirmed: c.messages_confirmed.load(Relaxed),
            messages_unconfirmed: c.messages_unconfirmed.load(Relaxed),
            queued_messages,
            queued_bytes,
            rtt_last: us(c.rtt_last_us.load(Relaxed)),
            rtt_min: if pongs == 0 {
                Duration::ZERO
            } else {
                us(c.rtt_min_us.load(Relaxed))
            },
            rtt_mean: us(c.rtt_sum_us.load(Relaxed).checked_div(pongs).unwrap_or(0)),
        }
    }
}

/// How a connection (or an attempt at one) ended.
struct Outcome {
    reason: Reason,
    close_code: u16,
    http_status: u16,
    retry_after: Option<Duration>,
    fatal: bool,
    detail: String,
}

impl Outcome {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Outcome {
            reason,
            close_code: 0,
            http_status: 0,
            retry_after: None,
            fatal: false,
            detail: detail.into(),
        }
    }
}

/// The client's task. Owns the sink, so its release runs here, after the last event.
struct Task {
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    target: Target,
    sink: Option<Box<dyn EventSink>>,
    reconnect: Reconnect,
    rng: fastrand::Rng,
    /// Messages handed to the socket so far (the queue is FIFO, so these are ids
    /// `1 ..= written`). Handed over means written, or taken by the wire to be written before
    /// anything else (a large frame, or a batch with `write_buffer_size`): if the link then
    /// dies, such a message is reported UNCONFIRMED, like one the server may or may not have read,
    /// and is not re-sent.
    written: u64,
    /// Messages whose fate has been reported (`1 ..= settled`); the rest of `written` is in
    /// flight on the current connection.
    settled: u64,
}

/// Most queued messages written per loop turn before the task reads and ticks again.
const FLUSH_BATCH: usize = 64;

/// Send-queue capacity (in messages) a drained queue may keep; a larger one, left by a burst or
/// an outage, is freed, so a client's memory returns to its resting size.
const QUEUE_KEEP: usize = 16;

/// Writes one frame, bounded by `deadline`. A write that cannot complete by then (the peer
/// stopped draining its socket: a black-holed link) ends the connection as a heartbeat timeout,
/// so a full send buffer can never delay the verdict past the heartbeat's bound.
fn write<'a>(ws: &'a mut Socket, op: u8, payload: &'a [u8], deadline: Instant) -> Write<'a> {
    Write {
        ws,
        op,
        payload,
        started: false,
        deadline,
        timer: None,
    }
}

/// The future of [`write`]: small, because it lives in every connection's task. Most writes
/// complete on their first poll; only one that has to wait gets a (boxed) timer.
struct Write<'a> {
    ws: &'a mut Socket,
    op: u8,
    payload: &'a [u8],
    started: bool,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Future for Write<'_> {
    type Output = Result<(), Outcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.started {
            match this.ws.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                step => return bounded(step, &mut this.timer, this.deadline, cx),
            }
            this.ws
                .start_send(cx, this.op, this.payload)
                .map_err(write_failed)?;
            this.started = true;
        }
        bounded(this.ws.poll_flush(cx), &mut this.timer, this.deadline, cx)
    }
}

fn write_failed(e: std::io::Error) -> Outcome {
    Outcome::new(Reason::ConnectionLost, format!("write failed: {e}"))
}

/// One step of a write bounded by `deadline`: a socket error ends the connection; a step that
/// waits is pending until `deadline`, then the verdict (see [`stalled`]).
#[inline]
fn bounded(
    step: Poll<std::io::Result<()>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Outcome>> {
    match step {
        Poll::Ready(r) => Poll::Ready(r.map_err(write_failed)),
        Poll::Pending => stalled(timer, deadline, cx),
    }
}

/// A write step is waiting for the socket: pending until `deadline`, then the verdict. The timer
/// is made (and boxed) only now, so writes that never wait cost none.
#[cold]
fn stalled(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Outcome>> {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(Outcome::new(
            Reason::HeartbeatTimeout,
            "write stalled until the heartbeat deadline: the peer stopped reading",
        ))),
        Poll::Pending => Poll::Pending,
    }
}

/// The frame of heartbeat ping number `n`: the configured text, or a Ping frame carrying `n`
/// (whose bytes `num` holds).
fn ping_frame<'a>(cfg: &'a Config, num: &'a [u8; 8]) -> (u8, &'a [u8]) {
    match cfg.heartbeat_mode {
        HeartbeatMode::Text => (OP_TEXT, cfg.ping_text.as_bytes()),
        HeartbeatMode::Protocol => (OP_PING, num),
    }
}

impl Task {
    fn new(shared: Arc<Shared>, target: Target, sink: Option<Box<dyn EventSink>>) -> Task {
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
    fn settle(&mut self, upto: u64, outcome: Delivery) {
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

    fn close_requested(&self) -> bool {
        self.shared.lock().close_requested
    }

    /// Resolves once close has been requested.
    async fn wait_close(shared: &Shared) {
        loop {
            if shared.lock().close_requested {
                return;
            }
            shared.wake.wait().await;
        }
    }

    /// Switches to a sink set by `set_sink`, releasing the old one (after its last event).
    fn swap_sink(&mut self) {
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

    fn emit(&mut self, event: &Event<'_>) {
        self.swap_sink();
        if let Some(sink) = self.sink.as_mut() {
            sink.event(event);
        }
    }

    fn log(&mut self, level: LogLevel, message: fmt::Arguments<'_>) {
        if level <= self.cfg.log_level
            && (self.sink.is_some() || self.shared.sink_pending.load(Relaxed))
        {
            let text = message.to_string();
            self.emit(&Event::Log {
                level,
                message: &text,
            });
        }
    }

    fn set_state(&mut self, change: StateChange) {
        self.shared.lock().state = change.state;
        self.emit(&Event::State(&change));
    }

    fn simple_state(
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

    async fn run(mut self: Box<Self>) {
        // No sink yet: wait for one (or for close) before doing anything the host should hear of.
        while self.sink.is_none() {
            {
                let mut g = self.shared.lock();
                if let Some(s) = g.pending_sink.take() {
                    self.shared.sink_pending.store(false, Relaxed);
                    self.sink = Some(s);
                    break;
                }
                if g.close_requested {
                    break;
                }
            }
            self.shared.wake.wait().await;
        }
        let mut attempt = 0;
        loop {
            if self.close_requested() {
                return self.finish(Outcome::new(Reason::UserClose, "closed by the host"));
            }
            let detail = format!("connecting to {}:{}", self.target.host(), self.target.port);
            self.simple_state(State::Connecting, Reason::None, attempt, detail);
            bump(&self.shared.counters.connect_attempts, 1);
            let shared = self.shared.clone();
            // open() is bounded by the connect timeout itself (ConnectError::Timeout).
            let opened = tokio::select! {
                r = Box::pin(connect::open(&self.target, &self.cfg)) => r,
                () = Self::wait_close(&shared) => {
                    return self.finish(Outcome::new(Reason::UserClose, "closed by the host"));
                }
            };
            let outcome = match opened {
                Err(e) => self.connect_failure(e),
                Ok(opened) => {
                    let mut ws = opened.socket;
                    let o = self.session(&mut ws).await;
                    // Whatever the connection did not confirm is now beyond knowing.
                    self.settle(self.written, Delivery::Unconfirmed);
                    o
                }
            };
            if outcome.reason == Reason::UserClose || outcome.fatal {
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
                    self.log(
                        LogLevel::Debug,
                        format_args!(
                            "reconnect attempt {next} in {} ms: {}",
                            delay.as_millis(),
                            outcome.detail
                        ),
                    );
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
                        () = Self::wait_close(&shared) => {
                            return self.finish(Outcome::new(Reason::UserClose, "closed by the host"));
                        }
                    }
                    attempt = next;
                }
            }
        }
    }

    fn connect_failure(&mut self, e: ConnectError) -> Outcome {
        let detail = e.to_string();
        match e {
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
        }
    }

    /// Runs one open connection until it ends.
    async fn session(&mut self, ws: &mut Socket) -> Outcome {
        let opened_at = Instant::now();
        bump(&self.shared.counters.connects, 1);
        let detail = format!("connected to {}:{}", self.target.host(), self.target.port);
        self.simple_state(State::Open, Reason::None, self.reconnect.failures(), detail);
        let mut hb = Heartbeat::new(&self.cfg, opened_at);
        let stable_at =
            (!self.cfg.stable_after.is_zero()).then(|| opened_at + self.cfg.stable_after);
        let mut proved = false;
        let wakeup = |hb: &Heartbeat, proved: bool| match stable_at {
            Some(at) if !proved => hb.next_wakeup().min(at),
            _ => hb.next_wakeup(),
        };
        let mut deadline = wakeup(&hb, proved);
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        // Registered now, not at its first poll: the select polls the socket first, and a socket
        // that is never drained (a flood from the first byte) would leave the timer unregistered,
        // `is_elapsed` false for ever, and the heartbeat stopped.
        sleep.as_mut().reset(deadline);
        // Whatever was queued while offline goes out first, in order.
        self.shared.wake.wake();
        let shared = self.shared.clone();
        loop {
            // What woke the task, decided first; the work (and its awaits) follows outside the
            // select, so the select's own values are not kept in every task's state.
            let turn = tokio::select! {
                // In this order, without drawing a random number per turn: the socket, the timer,
                // the host's wake-ups. Both of the others are also checked after every inbound
                // message, so a flood of frames holds off neither the heartbeat's verdict nor the
                // host's messages.
                biased;
                // The message is handled where it was read, borrowed from the bytes read.
                read = std::future::poll_fn(|cx| ws.poll_recv(cx, |m| {
                    shared.wake.running();
                    self.inbound(&mut hb, &mut proved, m)
                })) => match read {
                    Ok(Ok(false)) => Turn::Read,
                    Ok(Ok(true)) => Turn::ServerPing,
                    Ok(Err(o)) => Turn::ServerClosed(Box::new(o)),
                    Err(e) => Turn::ReadError(Box::new(e)),
                },
                () = &mut sleep => Turn::Timer,
                () = shared.wake.wait() => Turn::Wake,
            };
            let read = match turn {
                Turn::Read => true,
                Turn::ServerPing => {
                    if let Err(o) = self.answer_server_ping(ws, &mut hb).await {
                        return self.lost(o);
                    }
                    true
                }
                Turn::ServerClosed(o) => {
                    // Our answer to the server's Close is queued; send it.
                    let _ =
                        Box::pin(tokio::time::timeout(self.cfg.close_timeout, ws.flush())).await;
                    return self.lost(*o);
                }
                Turn::ReadError(e) => {
                    let o = Box::pin(self.read_error(ws, &mut hb, *e)).await;
                    return self.lost(o);
                }
                Turn::Timer => {
                    if let Some(o) = self.on_timer(ws, &mut hb, &mut proved, stable_at).await {
                        return o;
                    }
                    false
                }
                Turn::Wake => {
                    if let Some(o) = self.on_wake(ws, &mut hb).await {
                        return o;
                    }
                    false
                }
            };
            if read {
                if sleep.is_elapsed() {
                    if let Some(o) = self.on_timer(ws, &mut hb, &mut proved, stable_at).await {
                        return o;
                    }
                }
                // A reply the host sent from its message callback goes out now, without
                // another turn of the loop.
                if self.shared.wake.take() {
                    if let Some(o) = self.on_wake(ws, &mut hb).await {
                        return o;
                    }
                }
            }
            let next = wakeup(&hb, proved);
            if next != deadline {
                deadline = next;
                sleep.as_mut().reset(deadline);
            }
        }
    }

    /// The session's timer fired: stability proof, heartbeat. Returns how the session ended, if
    /// it did.
    async fn on_timer(
        &mut self,
        ws: &mut Socket,
        hb: &mut Heartbeat,
        proved: &mut bool,
        stable_at: Option<Instant>,
    ) -> Option<Outcome> {
        let now = Instant::now();
        if stable_at.is_some_and(|at| now >= at) && !*proved {
            *proved = true;
            self.reconnect.on_proof();
        }
        match self.tick(ws, hb, now).await {
            Ok(()) => None,
            Err(o) => Some(self.lost(o)),
        }
    }

    /// The host signalled work: new callbacks, a close request, messages to write. Returns how
    /// the session ended, if it did.
    async fn on_wake(&mut self, ws: &mut Socket, hb: &mut Heartbeat) -> Option<Outcome> {
        // New callbacks take over now, so the old user_data is released promptly.
        self.swap_sink();
        if self.close_requested() {
            // Boxed: a rare path that should not size every idle task.
            return Some(Box::pin(self.close_handshake(ws, hb)).await);
        }
        let deadline = hb.dead_by();
        match self.flush_queue(ws, hb, deadline).await {
            Ok(()) => None,
            Err(o) => Some(self.lost(o)),
        }
    }

    /// An open connection ended by itself. The socket is dropped without waiting on it.
    fn lost(&mut self, o: Outcome) -> Outcome {
        self.log(
            LogLevel::Warn,
            format_args!("connection ended: {}", o.detail),
        );
        o
    }

    async fn tick(
        &mut self,
        ws: &mut Socket,
        hb: &mut Heartbeat,
        now: Instant,
    ) -> Result<(), Outcome> {
        let send_ping = match hb.poll(now, self.written) {
            Tick::Idle => false,
            Tick::Ping => true,
            Tick::Missed { missed, ping } => {
                bump(&self.shared.counters.pongs_missed, 1);
                self.emit(&Event::Heartbeat(HeartbeatEvent::Missed { missed }));
                let max = self.cfg.max_missed;
                self.log(
                    LogLevel::Warn,
                    format_args!("heartbeat missed ({missed} of {max})"),
                );
                ping
            }
            Tick::Dead { missed } => {
                bump(&self.shared.counters.pongs_missed, 1);
                self.emit(&Event::Heartbeat(HeartbeatEvent::Missed { missed }));
                let detail = format!(
                    "{missed} heartbeats unanswered (interval {:?}, pong timeout {:?})",
                    self.cfg.ping_interval, self.cfg.pong_timeout
                );
                return Err(Outcome::new(Reason::HeartbeatTimeout, detail));
            }
        };
        if send_ping {
            bump(&self.shared.counters.pings_sent, 1);
            let num = hb.last_ping().to_be_bytes();
            let (op, payload) = ping_frame(&self.cfg, &num);
            write(ws, op, payload, hb.dead_by()).await?;
        }
        Ok(())
    }

    /// Handles one inbound message. `Ok(true)`: it was the server's text ping, to be answered
    /// at once ([`answer_server_ping`](Self::answer_server_ping)). Synchronous, so the awaits
    /// that may follow live in the session once rather than in here.
    fn inbound(
        &mut self,
        hb: &mut Heartbeat,
        proved: &mut bool,
        msg: In<'_>,
    ) -> Result<bool, Outcome> {
        let now = Instant::now();
        let c = &self.shared.counters;
        let pong = match msg {
            In::Text(t) if t == self.cfg.ping_text => return Ok(true),
            _ => self.as_pong(hb, now, &msg),
        };
        if let Some(pong) = pong {
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
                self.emit(&Event::Heartbeat(HeartbeatEvent::Pong { rtt }));
            }
            if let Some(mark) = pong.mark {
                self.settle(mark, Delivery::Confirmed);
            }
            if !*proved {
                *proved = true;
                self.reconnect.on_proof();
            }
            if self.cfg.deliver_heartbeats {
                if let In::Text(t) = msg {
                    self.deliver(false, t.as_bytes());
                }
            }
            return Ok(false);
        }
        hb.on_inbound(now);
        match msg {
            In::Text(t) => self.deliver(false, t.as_bytes()),
            In::Binary(b) => self.deliver(true, b),
            In::Ping(_) => {
                // The wire queued the Pong; it goes out on the next read, which is immediate.
                bump(&self.shared.counters.server_pings_answered, 1);
                self.emit(&Event::Heartbeat(HeartbeatEvent::ServerPing {
                    protocol: true,
                }));
            }
            In::Close(frame) => {
                let (code, reason) = frame.unwrap_or((1005, ""));
                let fatal = self.cfg.fatal_close_codes.contains(&code);
                let detail = format!("server closed with {code} {reason:?}");
                // The wire has queued the answer to the Close; the session flushes it.
                return Err(Outcome {
                    close_code: code,
                    fatal,
                    ..Outcome::new(Reason::ServerClose, detail)
                });
            }
            In::Pong(_) => {}
        }
        Ok(false)
    }

    /// Answers the server's text ping, ahead of anything queued.
    async fn answer_server_ping(
        &mut self,
        ws: &mut Socket,
        hb: &mut Heartbeat,
    ) -> Result<(), Outcome> {
        write(ws, OP_TEXT, self.cfg.pong_text.as_bytes(), hb.dead_by()).await?;
        bump(&self.shared.counters.server_pings_answered, 1);
        hb.on_inbound(Instant::now());
        self.emit(&Event::Heartbeat(HeartbeatEvent::ServerPing {
            protocol: false,
        }));
        if self.cfg.deliver_heartbeats {
            let text = self.cfg.ping_text.clone();
            self.deliver(false, text.as_bytes());
        }
        Ok(())
    }

    fn deliver(&mut self, binary: bool, data: &[u8]) {
        let c = &self.shared.counters;
        bump(&c.messages_received, 1);
        bump(&c.bytes_received, data.len() as u64);
        self.emit(&Event::Message { binary, data });
    }

    /// Maps a read error to an outcome, telling the server why where the protocol says so.
    async fn read_error(&mut self, ws: &mut Socket, hb: &mut Heartbeat, e: WireError) -> Outcome {
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
        if let Some(code) = code {
            // What the host already handed us goes out before our Close (a reply to the message
            // just before the bad frame, say), bounded like a close handshake.
            let deadline = Instant::now() + self.cfg.close_timeout;
            self.flush_all(ws, hb, deadline).await;
            let _ = tokio::time::timeout_at(deadline, ws.close(code)).await;
        }
        Outcome {
            close_code: code.unwrap_or(0),
            ..Outcome::new(reason, detail)
        }
    }

    /// Writes up to a batch of queued messages, in order. A message leaves the queue when the
    /// socket takes it (what the socket does not take at once is kept by the wire and written
    /// before anything else); one the wire refuses (the link failed) goes back to the front, to
    /// be sent whole on the next connection. Writes that cannot finish by `deadline` end the
    /// connection (see [`write`]).
    async fn flush_queue(
        &mut self,
        ws: &mut Socket,
        hb: &mut Heartbeat,
        deadline: Instant,
    ) -> Result<(), Outcome> {
        let mut timer = None;
        let mut batch = 0;
        let host_pings = self.cfg.heartbeat_mode == HeartbeatMode::Text;
        std::future::poll_fn(|cx| loop {
            match ws.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                step => return bounded(step, &mut timer, deadline, cx),
            }
            let msg = if batch < FLUSH_BATCH {
                let mut g = self.shared.lock();
                let next = g.queue.pop_front();
                match &next {
                    Some(m) => g.queued_bytes -= m.data.len(),
                    // Drained after a burst or an outage: give the high-water mark back.
                    None if g.queue.capacity() > QUEUE_KEEP => g.queue = VecDeque::new(),
                    None => {}
                }
                next
            } else {
                // More left: come back after a turn of reading and ticking.
                self.shared.wake.wake();
                None
            };
            let Some(msg) = msg else {
                return bounded(ws.poll_flush(cx), &mut timer, deadline, cx);
            };
            let op = if msg.binary { OP_BINARY } else { OP_TEXT };
            if let Err(e) = ws.start_send(cx, op, &msg.data) {
                let mut g = self.shared.lock();
                g.queued_bytes += msg.data.len();
                g.queue.push_front(msg);
                return Poll::Ready(Err(write_failed(e)));
            }
            batch += 1;
            self.written += 1;
            // The host's own text `ping` is answered by the server like ours (Text mode).
            if host_pings && !msg.binary && *msg.data == *self.cfg.ping_text.as_bytes() {
                hb.extra_ping(Instant::now(), self.written);
            }
            bump(&self.shared.counters.messages_sent, 1);
            bump(&self.shared.counters.bytes_sent, msg.data.len() as u64);
        })
        .await
    }

    /// Writes the whole queue, each write bounded by `deadline`. False if a write failed (what
    /// was not written stays queued).
    async fn flush_all(&mut self, ws: &mut Socket, hb: &mut Heartbeat, deadline: Instant) -> bool {
        while !self.shared.lock().queue.is_empty() {
            if self.flush_queue(ws, hb, deadline).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The host closed: flush, learn what the server has read, close handshake, all bounded by
    /// `close_timeout`.
    async fn close_handshake(&mut self, ws: &mut Socket, hb: &mut Heartbeat) -> Outcome {
        self.simple_state(
            State::Closing,
            Reason::UserClose,
            0,
            "close requested by the host",
        );
        let deadline = Instant::now() + self.cfg.close_timeout;
        let _ = tokio::time::timeout_at(deadline, async {
            if !self.flush_all(ws, hb, deadline).await {
                return;
            }
            // A ping after the last message: its pong confirms everything written. (The server's
            // Close cannot: one it sent on its own may cross ours, after it stopped reading.)
            if self.written > self.settled {
                let num = hb.extra_ping(Instant::now(), self.written).to_be_bytes();
                let (op, payload) = ping_frame(&self.cfg, &num);
                if write(ws, op, payload, deadline).await.is_err() {
                    return;
                }
                while self.settled < self.written {
                    match self.read_while_closing(ws, hb).await {
                        Ok(false) => {}
                        Ok(true) => {
                            // The server closed first: send the answer the wire queued.
                            let _ = ws.flush().await;
                            return;
                        }
                        Err(_) => return,
                    }
                }
            }
            if ws.close(1000).await.is_err() {
                return;
            }
            // Until the server's Close (or EOF); data arriving meanwhile is still delivered.
            while let Ok(false) = self.read_while_closing(ws, hb).await {}
        })
        .await;
        Outcome::new(Reason::UserClose, "closed by the host")
    }

    /// Reads one message while closing (see [`while_closing`](Self::while_closing)). True for the
    /// server's Close.
    async fn read_while_closing(
        &mut self,
        ws: &mut Socket,
        hb: &mut Heartbeat,
    ) -> Result<bool, WireError> {
        std::future::poll_fn(|cx| ws.poll_recv(cx, |m| self.while_closing(hb, m))).await
    }

    /// A message read while closing: a pong confirms what it answers; data is delivered. True
    /// for the server's Close.
    fn while_closing(&mut self, hb: &mut Heartbeat, m: In<'_>) -> bool {
        if let Some(pong) = self.as_pong(hb, Instant::now(), &m) {
            if let Some(mark) = pong.mark {
                self.settle(mark, Delivery::Confirmed);
            }
            return false;
        }
        match m {
            In::Text(t) if t != self.cfg.ping_text => self.deliver(false, t.as_bytes()),
            In::Binary(b) => self.deliver(true, b),
            In::Close(_) => return true,
            _ => {}
        }
        false
    }

    /// If `m` answers our pings (a text pong in Text mode, a Pong frame echoing one of our ping
    /// numbers in Protocol mode), records it and says what it answered.
    fn as_pong(&self, hb: &mut Heartbeat, now: Instant, m: &In<'_>) -> Option<Pong> {
        match (self.cfg.heartbeat_mode, m) {
            (HeartbeatMode::Text, In::Text(t)) if *t == self.cfg.pong_text => Some(hb.on_pong(now)),
            (HeartbeatMode::Protocol, In::Pong(p)) => hb.on_protocol_pong(now, p),
            _ => None,
        }
    }

    /// Ends the client: refuse further sends, report what will never be written, CLOSED.
    // The task lives in this box for its whole life (see `spawn`); unboxing to end it would copy it.
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
        *self.shared.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.done_cv.notify_all();
    }
}
