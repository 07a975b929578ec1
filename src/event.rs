//! What the host hears and gets back: states and reasons, events, delivery outcomes, errors,
//! and the counters snapshot. Plain data, shared by the client handle, the task and the C
//! boundary.

use std::fmt;
use std::time::Duration;

use crate::config::LogLevel;
use crate::connect::UrlError;
use crate::runtime::RuntimeError;

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
