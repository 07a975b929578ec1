//! The client handle: what the host's threads hold. It shares one `Arc<Shared>` with the
//! client's task (`task.rs`): a mutex-protected queue and a work flag with the task's waker
//! (`Wakeup`; no channel, nothing allocated up front), and the counters.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;

use crate::config::Config;
use crate::connect::Target;
// The event types, where the client's users have always found them.
pub use crate::event::{
    CreateError, Delivery, Event, EventSink, HeartbeatEvent, Reason, SendError, State, StateChange,
    Stats,
};
use crate::runtime;
use crate::task::Task;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) pings_sent: AtomicU64,
    pub(crate) pongs_received: AtomicU64,
    pub(crate) server_pings_answered: AtomicU64,
    pub(crate) pongs_missed: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) messages_dropped: AtomicU64,
    pub(crate) messages_confirmed: AtomicU64,
    pub(crate) messages_unconfirmed: AtomicU64,
    pub(crate) rtt_last_us: AtomicU64,
    pub(crate) rtt_min_us: AtomicU64,
    pub(crate) rtt_sum_us: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Relaxed);
}

pub(crate) struct Inner {
    pub(crate) state: State,
    pub(crate) queue: VecDeque<Out>,
    pub(crate) queued_bytes: usize,
    /// Messages accepted so far: the last one's id.
    pub(crate) accepted: u64,
    /// The host asked to close, with this Close code and reason.
    pub(crate) close: Option<(u16, Box<str>)>,
    /// The task has ended (or is ending): nothing more is accepted.
    pub(crate) finished: bool,
    pub(crate) pending_sink: Option<Box<dyn EventSink>>,
    /// The subprotocol the server chose on the current (or last) connection.
    pub(crate) subprotocol: Option<Box<str>>,
}

/// "There is work": set by the host's threads, taken by the task. A flag and the task's waker,
/// cheaper on the per-message path than a `Notify` (no waiter list to join and leave).
#[derive(Default)]
pub(crate) struct Wakeup {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Wakeup {
    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, AcqRel) {
            self.waker.wake();
        }
    }

    /// Forgets the task's waker while the task runs anyway: a host call from inside a callback
    /// then only sets the flag (taken before the task sleeps) instead of scheduling the task
    /// for one more pass.
    pub(crate) fn running(&self) {
        drop(self.waker.take());
    }

    /// Takes the flag without waiting.
    pub(crate) fn take(&self) -> bool {
        self.pending.load(Acquire) && self.pending.swap(false, AcqRel)
    }

    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
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
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll(cx))
    }
}

/// What the host's threads and the task share.
pub(crate) struct Shared {
    pub(crate) cfg: Arc<Config>,
    inner: Mutex<Inner>,
    /// Wakes the task: a new message, a close request, a new sink.
    pub(crate) wake: Wakeup,
    pub(crate) sink_pending: AtomicBool,
    pub(crate) counters: Counters,
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl Shared {
    /// The task has ended and released its sink: wake whoever waits in close.
    pub(crate) fn set_done(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.done_cv.notify_all();
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the data is still consistent
        // enough to close down, so ignore the poison rather than spread the panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A message the host handed over, waiting to be written.
pub(crate) struct Out {
    pub(crate) data: Box<[u8]>,
    pub(crate) binary: bool,
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
                accepted: 0,
                close: None,
                finished: false,
                pending_sink: None,
                subprotocol: None,
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

    /// Queues a text message and returns its id (the n-th message accepted has id n). Never
    /// blocks beyond a short lock.
    pub fn send_text(&self, text: &str) -> Result<u64, SendError> {
        self.send(text.len(), || Out {
            data: text.as_bytes().into(),
            binary: false,
        })
    }

    /// Queues a binary message and returns its id. Never blocks beyond a short lock.
    pub fn send_binary(&self, data: &[u8]) -> Result<u64, SendError> {
        self.send(data.len(), || Out {
            data: data.into(),
            binary: true,
        })
    }

    fn send(&self, len: usize, make: impl FnOnce() -> Out) -> Result<u64, SendError> {
        let cfg = &self.shared.cfg;
        if len > cfg.max_message_size {
            return Err(SendError::TooBig);
        }
        let id = {
            let mut g = self.shared.lock();
            if g.finished || g.close.is_some() {
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
            g.accepted += 1;
            g.accepted
        };
        self.shared.wake.wake();
        Ok(id)
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

    /// Asks the task to close with code 1000 (see [`close_with`](Self::close_with)).
    pub fn close(&self, wait: bool) -> bool {
        self.close_with(1000, "", wait)
    }

    /// Asks the task to close: from now on the client is on its close path, bounded by
    /// `close_timeout`: flush the queue, learn what the server has read, the close handshake
    /// with `code` and `reason` (see [`check_close_frame`]), final events, release. With `wait`,
    /// blocks until all of that is done (never from the runtime's own thread: that would
    /// deadlock; the C boundary refuses it). Returns false if close had already been requested
    /// (the first request's code stands).
    pub fn close_with(&self, code: u16, reason: &str, wait: bool) -> bool {
        let first = {
            let mut g = self.shared.lock();
            let first = g.close.is_none();
            if first {
                g.close = Some((code, reason.into()));
            }
            first
        };
        self.shared.wake.wake();
        if wait {
            self.wait_done();
        }
        first
    }

    /// The subprotocol the server chose on the current (or last) connection.
    pub fn subprotocol(&self) -> Option<String> {
        self.shared.lock().subprotocol.as_deref().map(str::to_owned)
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

    /// Like [`wait_done`](Self::wait_done), for at most `timeout`; true if the task has ended
    /// and released its sink. (`Duration::ZERO` asks without waiting.)
    pub fn wait_done_timeout(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut done = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self
                .shared
                .done_cv
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Whether the host may close with `code` and `reason` (RFC 6455 §7.4: 1000, or 3000–4999 for
/// applications; a reason of at most 123 bytes, so the frame fits a control frame).
pub fn check_close_frame(code: u16, reason: &str) -> Result<(), &'static str> {
    if code != 1000 && !(3000..=4999).contains(&code) {
        return Err("close code must be 1000 or in 3000-4999");
    }
    if reason.len() > 123 {
        return Err("close reason is longer than 123 bytes");
    }
    Ok(())
}
