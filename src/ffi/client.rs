//! `hb_client`: connect, callbacks, send, stats, close.

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use super::hb_status::{self, *};
use super::{bytes, callguard, cstr, guard, handle, hb_config, put, text, write_message};
use crate::client::{
    check_close_frame, Client, CreateError, Delivery, Event, EventSink, HeartbeatEvent, Reason,
    SendError, State, Stats,
};
use crate::config::Config;
use crate::connect::UrlError;
use crate::runtime::{self, RuntimeError};

/// An open client. Opaque: C holds `hb_client *` handles that are checked on every call, so a
/// handle used after `hb_close` is an error status, not undefined behaviour.
///
/// A handle is an id, not an address: never dereference it. Its value is odd and never repeats
/// within a process. On 64-bit targets it lies outside every user-space address range (bit 63
/// set, bit 62 clear, bit 55 set: non-canonical on x86_64, kernel half on aarch64 even with
/// tagged pointers), so garbage collectors that scan pointer-typed fields (Go) ignore it. On
/// 32-bit targets no value is safe from every heap: keep it in an integer type there (`uintptr`
/// in Go); a closed handle's id comes back only after 2^29 - 1 more `hb_connect`s.
pub struct hb_client {
    _private: [u8; 0],
}

/// Connection states, as reported in `hb_state_event.state` and `hb_stats.state`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_state {
    HB_STATE_CONNECTING = 1,
    HB_STATE_OPEN = 2,
    HB_STATE_RECONNECTING = 3,
    HB_STATE_CLOSING = 4,
    HB_STATE_CLOSED = 5,
}

/// Why a state changed or messages were dropped (`hb_state_event.reason`, `hb_dropped_cb`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_reason {
    HB_REASON_NONE = 0,
    /// `hb_close` was called.
    HB_REASON_USER_CLOSE = 1,
    /// `max_missed` heartbeats in a row went unanswered.
    HB_REASON_HEARTBEAT_TIMEOUT = 2,
    /// Reset, EOF or I/O error on an open connection.
    HB_REASON_CONNECTION_LOST = 3,
    /// The server sent a Close frame (`close_code`).
    HB_REASON_SERVER_CLOSE = 4,
    /// The upgrade was answered with a non-101 status (`http_status`).
    HB_REASON_HANDSHAKE_REJECTED = 5,
    /// No connection within the connect timeout.
    HB_REASON_CONNECT_TIMEOUT = 6,
    /// Name resolution or TCP connect failed.
    HB_REASON_CONNECT_ERROR = 7,
    /// The maximum number of reconnect attempts failed.
    HB_REASON_MAX_ATTEMPTS = 8,
    /// An inbound message exceeded the max message size (closed with 1009).
    HB_REASON_MESSAGE_TOO_BIG = 9,
    /// The server broke the WebSocket protocol (closed with 1002 or 1007).
    HB_REASON_PROTOCOL_ERROR = 10,
}

/// Kinds of `hb_message_cb` messages.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_message_kind {
    HB_MESSAGE_TEXT = 1,
    HB_MESSAGE_BINARY = 2,
}

/// Kinds of `hb_heartbeat_event`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_heartbeat_kind {
    /// Our ping was answered; `rtt_us` is the round trip.
    HB_HEARTBEAT_PONG = 1,
    /// The server's text `ping` was answered with `pong`.
    HB_HEARTBEAT_SERVER_PING = 2,
    /// The server's protocol Ping frame was answered with a Pong frame.
    HB_HEARTBEAT_SERVER_PROTOCOL_PING = 3,
    /// Our ping got no pong within the pong timeout; `missed` in a row.
    HB_HEARTBEAT_MISSED = 4,
}

/// What became of accepted messages (`hb_delivery_cb`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_delivery {
    /// The server has read them: it answered a ping written after them (a heartbeat ping, the
    /// host's own text `ping`, or the one `hb_close` sends before its Close frame).
    HB_DELIVERY_CONFIRMED = 1,
    /// Written to a connection that then ended before anything confirmed them: they may or may
    /// not have reached the server. hbws does not send them again.
    HB_DELIVERY_UNCONFIRMED = 2,
    /// Never written: the client ended with them queued (also reported by `on_dropped`).
    HB_DELIVERY_DROPPED = 3,
}

/// A state change. Pointers in it are valid only during the callback.
#[repr(C)]
pub struct hb_state_event {
    /// An `hb_state`.
    pub state: i32,
    /// An `hb_reason`.
    pub reason: i32,
    /// Connection attempt number since the last proven connection (0: first connect).
    pub attempt: u32,
    /// Close code involved (server close, 1009, 1007, 1002), or 0.
    pub close_code: u16,
    /// HTTP status of a refused handshake, or 0.
    pub http_status: u16,
    /// RECONNECTING: milliseconds until the next attempt.
    pub delay_ms: u64,
    /// Human-readable detail, NUL-terminated UTF-8.
    pub detail: *const c_char,
    /// Length of `detail` in bytes, without the NUL.
    pub detail_len: usize,
}

/// A heartbeat happening.
#[repr(C)]
pub struct hb_heartbeat_event {
    /// An `hb_heartbeat_kind`.
    pub kind: i32,
    /// Misses in a row (`HB_HEARTBEAT_MISSED`), else 0.
    pub missed: u32,
    /// Round-trip time in microseconds (`HB_HEARTBEAT_PONG`), else 0.
    pub rtt_us: u64,
}

/// State changed. `event` is valid only during the call.
pub type hb_state_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const hb_state_event)>;
/// An application message arrived. `kind` is an `hb_message_kind`; `data` (not NUL-terminated,
/// UTF-8 for text) is valid only during the call.
pub type hb_message_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, kind: i32, data: *const u8, len: usize)>;
/// A heartbeat was answered, or missed. `event` is valid only during the call.
pub type hb_heartbeat_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const hb_heartbeat_event)>;
/// `count` messages (`bytes` payload bytes) that `hb_send_*` had accepted will never be sent;
/// `reason` is an `hb_reason`.
pub type hb_dropped_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, count: u64, bytes: u64, reason: i32)>;
/// A log line. `level` is an `hb_log_level`; `message` is NUL-terminated UTF-8, valid only during
/// the call.
pub type hb_log_cb = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: i32, message: *const c_char, len: usize),
>;
/// What became of the accepted messages with ids `first_id` to `first_id + count - 1`;
/// `outcome` is an `hb_delivery`. The n-th message `hb_send_*` accepts (returns `HB_OK`) on a
/// client has id n, counting from 1. Every id is reported exactly once, in increasing order:
/// confirmed about once per heartbeat interval, unconfirmed when a connection ends, dropped
/// when the client ends.
pub type hb_delivery_cb =
    Option<unsafe extern "C" fn(user_data: *mut c_void, first_id: u64, count: u64, outcome: i32)>;
/// Called exactly once with the `user_data`, after the last callback that received it.
pub type hb_release_cb = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The callbacks of one client. Set `size` to `sizeof(hb_callbacks)`; any callback may be NULL.
/// Fields are only ever added at the end: a caller compiled against an older header passes its
/// smaller `size` and the fields it does not have are NULL.
///
/// The struct itself is copied by `hb_connect` / `hb_set_callbacks` and may be freed at once, but
/// the functions its pointers name (and `user_data`) must stay valid until `release` has run:
/// code in a plugin or a binding must not be unloaded, and a binding's callback objects (Python
/// ctypes `CFUNCTYPE`s, for one) must be kept alive until then. Without a `release`, until
/// `hb_close` has returned from outside a callback, or `hb_shutdown` has returned `HB_OK`.
///
/// Callbacks run on the library's runtime thread, one at a time per client, never while the
/// library holds a lock. Any `hb_*` call is allowed inside them, `hb_close` included. They must
/// return normally: no C++ exception or `longjmp` may leave a callback. A thread exit
/// (`pthread_exit`, as CPython does to a thread that asks for the GIL while the interpreter
/// finalizes) does not crash the process, but it stops the runtime thread for good: the thread
/// is parked inside that callback, no client of the process is served any more, and no
/// `release` runs. Call `hb_shutdown` before the host tears down (Python: an `atexit` hook; an
/// interpreter that frees its callback objects while callbacks may still come breaks the rule
/// above). A slow callback delays every client sharing the runtime thread.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct hb_callbacks {
    /// `sizeof(hb_callbacks)` as the caller compiled it, so the struct can grow.
    pub size: usize,
    pub on_state: hb_state_cb,
    pub on_message: hb_message_cb,
    pub on_heartbeat: hb_heartbeat_cb,
    pub on_dropped: hb_dropped_cb,
    pub on_log: hb_log_cb,
    /// Releases `user_data`; runs exactly once, after the last callback (also when these
    /// callbacks are replaced by `hb_set_callbacks`).
    pub release: hb_release_cb,
    /// Added after `release`: a caller that sets a `size` ending at `release` gets NULL here.
    pub on_delivery: hb_delivery_cb,
}

/// The smallest `hb_callbacks.size` accepted: the struct up to `release`.
const CALLBACKS_V1_SIZE: usize = std::mem::offset_of!(hb_callbacks, on_delivery);

/// A snapshot of a client's counters. Set `size` to `sizeof(hb_stats)` before the call. Fields
/// are only ever added at the end, so the struct a caller compiled is always a prefix of the
/// library's: `hb_get_stats` writes `min(size, the library's sizeof(hb_stats))` bytes and no
/// more, and sets `size` to that. A caller compiled against an older header (a smaller `size`)
/// gets its own fields only; one compiled against a newer header than the library keeps its
/// extra fields as it set them (zero them first), and learns from the `size` written back which
/// fields the library filled. A `size` smaller than the first version of the struct (up to
/// `rtt_mean_us`) is `HB_ERR_INVALID_ARGUMENT`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct hb_stats {
    /// In: `sizeof(hb_stats)` as the caller compiled it. Out: the number of bytes written.
    pub size: usize,
    /// An `hb_state`.
    pub state: i32,
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    /// Heartbeat pings we sent.
    pub pings_sent: u64,
    /// Our pings that were answered.
    pub pongs_received: u64,
    /// Server pings (text or protocol) we answered.
    pub server_pings_answered: u64,
    /// Our pings that missed their pong.
    pub pongs_missed: u64,
    /// Connections opened (1 + reconnections).
    pub connects: u64,
    /// Connection attempts made.
    pub connect_attempts: u64,
    /// Accepted messages reported through `on_dropped`.
    pub messages_dropped: u64,
    /// Accepted messages not yet written.
    pub queued_messages: u64,
    pub queued_bytes: u64,
    /// Heartbeat round trip: last, minimum, mean, in microseconds (0 before the first pong).
    pub rtt_last_us: u64,
    pub rtt_min_us: u64,
    pub rtt_mean_us: u64,
    /// Accepted messages reported `HB_DELIVERY_CONFIRMED` / `HB_DELIVERY_UNCONFIRMED`.
    pub messages_confirmed: u64,
    pub messages_unconfirmed: u64,
}

/// The smallest `hb_stats.size` accepted: the struct up to `rtt_mean_us`.
const STATS_V1_SIZE: usize = std::mem::offset_of!(hb_stats, messages_confirmed);

struct UserData(*mut c_void);
// SAFETY: the host hands user_data to us to pass back on our thread; making that legal for its
// data is the host's side of the callback contract, stated in the header.
unsafe impl Send for UserData {}

/// The C callbacks as an event sink. Dropping it runs `release`.
struct CSink {
    cb: hb_callbacks,
    user_data: UserData,
}

pub(crate) fn state_code(s: State) -> i32 {
    (match s {
        State::Connecting => hb_state::HB_STATE_CONNECTING,
        State::Open => hb_state::HB_STATE_OPEN,
        State::Reconnecting => hb_state::HB_STATE_RECONNECTING,
        State::Closing => hb_state::HB_STATE_CLOSING,
        State::Closed => hb_state::HB_STATE_CLOSED,
    }) as i32
}

pub(crate) fn reason_code(r: Reason) -> i32 {
    use hb_reason::*;
    (match r {
        Reason::None => HB_REASON_NONE,
        Reason::UserClose => HB_REASON_USER_CLOSE,
        Reason::HeartbeatTimeout => HB_REASON_HEARTBEAT_TIMEOUT,
        Reason::ConnectionLost => HB_REASON_CONNECTION_LOST,
        Reason::ServerClose => HB_REASON_SERVER_CLOSE,
        Reason::HandshakeRejected => HB_REASON_HANDSHAKE_REJECTED,
        Reason::ConnectTimeout => HB_REASON_CONNECT_TIMEOUT,
        Reason::ConnectError => HB_REASON_CONNECT_ERROR,
        Reason::MaxAttempts => HB_REASON_MAX_ATTEMPTS,
        Reason::MessageTooBig => HB_REASON_MESSAGE_TOO_BIG,
        Reason::ProtocolError => HB_REASON_PROTOCOL_ERROR,
    }) as i32
}

/// A NUL-terminated copy for C (interior NULs, possible in a server's close reason, become '?').
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "?")).unwrap_or_default()
}

impl EventSink for CSink {
    fn event(&mut self, event: &Event<'_>) {
        let ud = self.user_data.0;
        // SAFETY (all calls below): the host gave these function pointers for exactly these
        // calls; every pointer we pass is valid for the duration of the call.
        match event {
            Event::State(s) => {
                if let Some(f) = self.cb.on_state {
                    let detail = c_string(&s.detail);
                    let ev = hb_state_event {
                        state: state_code(s.state),
                        reason: reason_code(s.reason),
                        attempt: s.attempt,
                        close_code: s.close_code,
                        http_status: s.http_status,
                        delay_ms: s.delay.as_millis().min(u64::MAX as u128) as u64,
                        detail: detail.as_ptr(),
                        detail_len: detail.as_bytes().len(),
                    };
                    unsafe { callguard::state(f, ud, &ev) };
                }
            }
            Event::Message { binary, data } => {
                if let Some(f) = self.cb.on_message {
                    let kind = if *binary {
                        hb_message_kind::HB_MESSAGE_BINARY
                    } else {
                        hb_message_kind::HB_MESSAGE_TEXT
                    };
                    unsafe { callguard::message(f, ud, kind as i32, data.as_ptr(), data.len()) };
                }
            }
            Event::Heartbeat(h) => {
                if let Some(f) = self.cb.on_heartbeat {
                    use hb_heartbeat_kind::*;
                    let (kind, missed, rtt_us) = match *h {
                        HeartbeatEvent::Pong { rtt } => {
                            (HB_HEARTBEAT_PONG, 0, rtt.as_micros() as u64)
                        }
                        HeartbeatEvent::ServerPing { protocol: false } => {
                            (HB_HEARTBEAT_SERVER_PING, 0, 0)
                        }
                        HeartbeatEvent::ServerPing { protocol: true } => {
                            (HB_HEARTBEAT_SERVER_PROTOCOL_PING, 0, 0)
                        }
                        HeartbeatEvent::Missed { missed } => (HB_HEARTBEAT_MISSED, missed, 0),
                    };
                    let ev = hb_heartbeat_event {
                        kind: kind as i32,
                        missed,
                        rtt_us,
                    };
                    unsafe { callguard::heartbeat(f, ud, &ev) };
                }
            }
            Event::Dropped {
                count,
                bytes,
                reason,
            } => {
                if let Some(f) = self.cb.on_dropped {
                    unsafe { callguard::counts(f, ud, *count, *bytes, reason_code(*reason)) };
                }
            }
            Event::Delivery {
                first,
                count,
                outcome,
            } => {
                if let Some(f) = self.cb.on_delivery {
                    let outcome = match outcome {
                        Delivery::Confirmed => hb_delivery::HB_DELIVERY_CONFIRMED,
                        Delivery::Unconfirmed => hb_delivery::HB_DELIVERY_UNCONFIRMED,
                        Delivery::Dropped => hb_delivery::HB_DELIVERY_DROPPED,
                    };
                    unsafe { callguard::counts(f, ud, *first, *count, outcome as i32) };
                }
            }
            Event::Log { level, message } => {
                if let Some(f) = self.cb.on_log {
                    let m = c_string(message);
                    unsafe { callguard::log(f, ud, *level as i32, m.as_ptr(), m.as_bytes().len()) };
                }
            }
        }
    }
}

impl Drop for CSink {
    fn drop(&mut self) {
        if let Some(release) = self.cb.release {
            // SAFETY: the host's release hook, called once with its own user_data.
            unsafe { callguard::release(release, self.user_data.0) };
        }
    }
}

/// Reads the host's callbacks struct, checking its declared size.
fn read_callbacks(cb: *const hb_callbacks) -> Result<hb_callbacks, hb_status> {
    if cb.is_null() {
        return Err(HB_ERR_NULL);
    }
    // SAFETY: non-NULL; the first field is the caller's declared size.
    let size = unsafe { cb.cast::<usize>().read_unaligned() };
    if size < CALLBACKS_V1_SIZE {
        return Err(HB_ERR_INVALID_ARGUMENT);
    }
    // Every callback NULL until copied from the caller's fields.
    let mut out = hb_callbacks::default();
    // Whole fields only (all are pointer-sized): a size that ends inside a field leaves that
    // field NULL rather than half a function pointer.
    let field = std::mem::size_of::<usize>();
    let n = size.min(std::mem::size_of::<hb_callbacks>()) / field * field;
    // SAFETY: the caller declared `size` readable bytes; we copy no more than that, no more than
    // our struct holds, and whole fields only; every field is a size or a nullable function
    // pointer, so caller-written fields over NULLs make a valid value.
    unsafe {
        std::ptr::copy_nonoverlapping(cb.cast::<u8>(), (&raw mut out).cast::<u8>(), n);
    }
    out.size = std::mem::size_of::<hb_callbacks>();
    Ok(out)
}

fn sink(cb: hb_callbacks, user_data: *mut c_void) -> CSink {
    CSink {
        cb,
        user_data: UserData(user_data),
    }
}

/// Creates a client for `url` and starts connecting in the background; returns at once.
///
/// `url`: NUL-terminated `ws://host[:port][/path][?query]`. `config`: NULL for defaults; it is
/// copied, so it may be changed or freed afterwards. `callbacks`: NULL, or the client's callbacks
/// with `user_data`. No event is lost: with callbacks the first event (CONNECTING) comes after
/// `*client_out` has been written, so a callback may read the handle from where `client_out`
/// points; with NULL the client waits, without connecting, until `hb_set_callbacks`.
/// On success `*client_out` receives the handle. On error nothing is created, `release` is not
/// called, and if `err_buf` is not NULL a NUL-terminated message (truncated to `err_buf_len`)
/// says what was wrong: safe to read from any thread or goroutine.
///
/// Ownership: the handle belongs to the caller until `hb_close`.
/// Thread safety: any thread.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_UTF8`, `HB_ERR_INVALID_URL`, `HB_ERR_UNSUPPORTED`
/// (`wss://`), `HB_ERR_INVALID_ARGUMENT` (callbacks size), `HB_ERR_INVALID_CONFIG`,
/// `HB_ERR_RUNTIME`. In a `fork()` child it works as anywhere: the child's first client starts
/// a runtime of its own (the parent's clients are `HB_ERR_FORKED` there). After `hb_shutdown` it
/// starts a fresh runtime.
#[no_mangle]
pub extern "C" fn hb_connect(
    url: *const c_char,
    config: *const hb_config,
    callbacks: *const hb_callbacks,
    user_data: *mut c_void,
    client_out: *mut *mut hb_client,
    err_buf: *mut c_char,
    err_buf_len: usize,
) -> hb_status {
    let status = guard(|| {
        let fail = |s: hb_status, m: &str| {
            write_message(err_buf, err_buf_len, m);
            Err(s)
        };
        if client_out.is_null() {
            return fail(HB_ERR_NULL, "client_out is NULL");
        }
        let url = match cstr(url) {
            Ok(u) => u,
            Err(HB_ERR_NULL) => return fail(HB_ERR_NULL, "url is NULL"),
            Err(s) => return fail(s, "url is not valid UTF-8"),
        };
        let cfg: Arc<Config> = if config.is_null() {
            Arc::new(Config::default())
        } else {
            // SAFETY: non-NULL; the caller promises a live hb_config from hb_config_new.
            unsafe { &*config }.inner.clone()
        };
        let cb = if callbacks.is_null() {
            None
        } else {
            match read_callbacks(callbacks) {
                Ok(cb) => Some(cb),
                Err(s) => {
                    return fail(
                        s,
                        "callbacks->size is too small: set it to sizeof(hb_callbacks)",
                    )
                }
            }
        };
        let client = match Client::connect(url, cfg, None) {
            Ok(c) => c,
            Err(e) => {
                let status = match &e {
                    CreateError::Url(UrlError::Invalid(_)) => HB_ERR_INVALID_URL,
                    CreateError::Url(UrlError::Unsupported(_)) => HB_ERR_UNSUPPORTED,
                    CreateError::Config(_) => HB_ERR_INVALID_CONFIG,
                    CreateError::Runtime(RuntimeError::Forked) => HB_ERR_FORKED,
                    CreateError::Runtime(_) => HB_ERR_RUNTIME,
                };
                return fail(status, &e.to_string());
            }
        };
        let value = match handle::insert(client.clone()) {
            Ok(v) => v,
            Err(s) => {
                client.close(false);
                return fail(s, "too many clients");
            }
        };
        // The handle is written first and the sink goes in only then: the task waits for a
        // sink before it reports anything, so no callback (and no release) runs before the host
        // has its handle, and none is lost.
        put(client_out, value as *mut hb_client)?;
        if let Some(cb) = cb {
            // Cannot fail: only the host, still inside this call, knows the handle.
            let _ = client.set_sink(sink(cb, user_data));
        }
        Ok(())
    });
    if status == HB_ERR_PANIC {
        write_message(err_buf, err_buf_len, "internal error (panic) in hb_connect");
    }
    status
}

/// Sets (or replaces) the client's callbacks and `user_data`. The previous callbacks' `release`
/// runs after their last callback. The first call on a client created without callbacks starts
/// its connection.
///
/// Ownership: on success the library owns `user_data` until it calls `release`; on error it does
/// not take it and never calls this `release`.
/// Thread safety: any thread, including inside a callback.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_ARGUMENT` (size), `HB_ERR_INVALID_HANDLE`,
/// `HB_ERR_CLOSED` (the client has ended), `HB_ERR_FORKED`.
#[no_mangle]
pub extern "C" fn hb_set_callbacks(
    client: *mut hb_client,
    callbacks: *const hb_callbacks,
    user_data: *mut c_void,
) -> hb_status {
    guard(|| {
        let c = handle::get(client as usize)?;
        let cb = read_callbacks(callbacks)?;
        match c.set_sink(sink(cb, user_data)) {
            Ok(()) => Ok(()),
            Err((_, mut rejected)) => {
                // Not ours: hand it back without calling release.
                rejected.cb.release = None;
                Err(HB_ERR_CLOSED)
            }
        }
    })
}

fn send_status(e: SendError) -> hb_status {
    match e {
        SendError::Closed => HB_ERR_CLOSED,
        SendError::QueueFull => HB_ERR_QUEUE_FULL,
        SendError::TooBig => HB_ERR_MESSAGE_TOO_BIG,
        SendError::NotOpen => HB_ERR_NOT_OPEN,
    }
}

/// Writes a send's id to `id_out` (which may be NULL: the caller does not want it).
fn sent(id: u64, id_out: *mut u64) -> Result<(), hb_status> {
    if !id_out.is_null() {
        // SAFETY: non-NULL; the caller promises a writable uint64_t.
        unsafe { id_out.write_unaligned(id) };
    }
    Ok(())
}

/// Queues a text message (`len` bytes of UTF-8 at `data`; `(NULL, 0)` is the empty message).
/// The bytes are copied; the call never blocks. While not OPEN the message waits in the offline
/// queue and goes out, in order, after (re)connection. On success `*id_out` (if `id_out` is not
/// NULL) receives the message's id: the n-th message this client accepted has id n, from 1, and
/// `on_delivery` reports every id exactly once. A refused message gets no id.
///
/// Ownership: the bytes are copied; nothing is kept.
/// Thread safety: any thread, including inside a callback; concurrent senders each learn their
/// own id.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_UTF8`, `HB_ERR_INVALID_HANDLE`, `HB_ERR_CLOSED`,
/// `HB_ERR_QUEUE_FULL`, `HB_ERR_MESSAGE_TOO_BIG`, `HB_ERR_NOT_OPEN`, `HB_ERR_FORKED`.
#[no_mangle]
pub extern "C" fn hb_send_text(
    client: *mut hb_client,
    data: *const c_char,
    len: usize,
    id_out: *mut u64,
) -> hb_status {
    guard(|| {
        let c = handle::get(client as usize)?;
        let t = text(data, len)?;
        sent(c.send_text(t).map_err(send_status)?, id_out)
    })
}

/// Queues a binary message (`len` bytes at `data`; `(NULL, 0)` is the empty message). As
/// `hb_send_text` otherwise.
///
/// Ownership: the bytes are copied; nothing is kept.
/// Thread safety: any thread, including inside a callback.
/// Errors: as `hb_send_text`, without `HB_ERR_INVALID_UTF8`.
#[no_mangle]
pub extern "C" fn hb_send_binary(
    client: *mut hb_client,
    data: *const u8,
    len: usize,
    id_out: *mut u64,
) -> hb_status {
    guard(|| {
        let c = handle::get(client as usize)?;
        let b = bytes(data, len)?;
        sent(c.send_binary(b).map_err(send_status)?, id_out)
    })
}

/// Closes the client with code 1000 and waits until it has closed: `hb_close_with(client, 1000,
/// NULL, 0)`.
///
/// Ownership: consumes the handle on success; any later use of it is `HB_ERR_INVALID_HANDLE`.
/// Thread safety: any thread but the library's own: inside a callback it is refused
/// (`HB_ERR_IN_CALLBACK`, the handle stays valid): use `hb_close_start` there.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_HANDLE` (also for a second close), `HB_ERR_IN_CALLBACK`,
/// `HB_ERR_TIMEOUT` (the library's thread was lost to a callback that exited it: see
/// `hb_callbacks`), `HB_ERR_FORKED`.
#[no_mangle]
pub extern "C" fn hb_close(client: *mut hb_client) -> hb_status {
    guard(|| close(client, 1000, std::ptr::null(), 0, true))
}

/// Closes the client with Close `code` (1000, or 3000-4999) and `reason` (`reason_len` bytes of
/// UTF-8, at most 123; `(NULL, 0)` for none), and waits until it has closed. From the call on,
/// the client is on its close path, bounded by the close timeout (default 2 s) whatever the
/// link does: queued messages are flushed, one more ping learns what the server has read, the
/// Close handshake runs (it always gets a share of the time, so the server sees our code); what
/// was not sent is reported through `on_dropped` and `on_delivery`; the last state is CLOSED;
/// then `release` runs, and only then does this return: no callback of this client starts after
/// it returns. After the request only CLOSING and CLOSED are reported.
///
/// Ownership: consumes the handle on success; any later use of it is `HB_ERR_INVALID_HANDLE`.
/// Thread safety: any thread but the library's own: inside a callback it is refused
/// (`HB_ERR_IN_CALLBACK`, nothing done, the handle stays valid). A second close of the same
/// handle, even while the first waits, is `HB_ERR_INVALID_HANDLE` at once: it did not close
/// anything, and the first close's return (or `release`) tells when the client has ended.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_ARGUMENT` (code, reason length), `HB_ERR_INVALID_UTF8`,
/// `HB_ERR_INVALID_HANDLE`, `HB_ERR_IN_CALLBACK`, `HB_ERR_TIMEOUT` (as `hb_close`),
/// `HB_ERR_FORKED`.
#[no_mangle]
pub extern "C" fn hb_close_with(
    client: *mut hb_client,
    code: u16,
    reason: *const c_char,
    reason_len: usize,
) -> hb_status {
    guard(|| close(client, code, reason, reason_len, true))
}

/// Starts closing the client (as `hb_close_with`) and returns at once, from any thread,
/// including inside a callback. The close completes on the library's thread: its end is the
/// CLOSED state event, followed by `release(user_data)`; free what the callbacks use in
/// `release`, not after this call.
///
/// Ownership: consumes the handle on success; any later use of it is `HB_ERR_INVALID_HANDLE`.
/// Thread safety: any thread, including inside a callback.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_ARGUMENT` (code, reason length), `HB_ERR_INVALID_UTF8`,
/// `HB_ERR_INVALID_HANDLE` (also for a second close), `HB_ERR_FORKED`.
#[no_mangle]
pub extern "C" fn hb_close_start(
    client: *mut hb_client,
    code: u16,
    reason: *const c_char,
    reason_len: usize,
) -> hb_status {
    guard(|| close(client, code, reason, reason_len, false))
}

fn close(
    client: *mut hb_client,
    code: u16,
    reason: *const c_char,
    reason_len: usize,
    wait: bool,
) -> Result<(), hb_status> {
    if client.is_null() {
        return Err(HB_ERR_NULL);
    }
    let reason = text(reason, reason_len)?;
    check_close_frame(code, reason).map_err(|_| HB_ERR_INVALID_ARGUMENT)?;
    if wait && runtime::on_runtime_thread() {
        // Checked before the handle is taken, so the refused call leaves it valid.
        handle::get(client as usize)?;
        return Err(HB_ERR_IN_CALLBACK);
    }
    let c = handle::remove(client as usize)?;
    c.close_with(code, reason, false);
    if wait {
        // Until the client has ended; not for ever if the library's thread was parked in a
        // callback that exited its thread (see `callguard`): then nothing will end it.
        while !c.wait_done_timeout(std::time::Duration::from_millis(100)) {
            if callguard::parked() {
                return Err(HB_ERR_TIMEOUT);
            }
        }
    }
    Ok(())
}

/// Fills `*out` with the client's counters. Set `out->size = sizeof(hb_stats)` first; see
/// `hb_stats` for what an older or newer caller's `size` gets.
///
/// Thread safety: any thread, including inside a callback.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_ARGUMENT` (size), `HB_ERR_INVALID_HANDLE`,
/// `HB_ERR_FORKED`.
#[no_mangle]
pub extern "C" fn hb_get_stats(client: *const hb_client, out: *mut hb_stats) -> hb_status {
    guard(|| {
        if out.is_null() {
            return Err(HB_ERR_NULL);
        }
        // SAFETY: non-NULL; the first field is the caller's declared size.
        let size = unsafe { out.cast::<usize>().read_unaligned() };
        if size < STATS_V1_SIZE {
            return Err(HB_ERR_INVALID_ARGUMENT);
        }
        let n = size.min(std::mem::size_of::<hb_stats>());
        let c = handle::get(client as usize)?;
        let s: Stats = c.stats();
        let us = |d: std::time::Duration| d.as_micros().min(u64::MAX as u128) as u64;
        // Zeroed first, so the padding after `state` copies out as zeros, not stack bytes.
        // SAFETY: hb_stats is integers only; all-zero is a valid value.
        let mut stats: hb_stats = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
        stats.size = n;
        stats.state = s.state.map_or(0, state_code);
        stats.messages_sent = s.messages_sent;
        stats.bytes_sent = s.bytes_sent;
        stats.messages_received = s.messages_received;
        stats.bytes_received = s.bytes_received;
        stats.pings_sent = s.pings_sent;
        stats.pongs_received = s.pongs_received;
        stats.server_pings_answered = s.server_pings_answered;
        stats.pongs_missed = s.pongs_missed;
        stats.connects = s.connects;
        stats.connect_attempts = s.connect_attempts;
        stats.messages_dropped = s.messages_dropped;
        stats.queued_messages = s.queued_messages;
        stats.queued_bytes = s.queued_bytes;
        stats.rtt_last_us = us(s.rtt_last);
        stats.rtt_min_us = us(s.rtt_min);
        stats.rtt_mean_us = us(s.rtt_mean);
        stats.messages_confirmed = s.messages_confirmed;
        stats.messages_unconfirmed = s.messages_unconfirmed;
        // SAFETY: `out` is non-NULL and the caller declared `size` >= n writable bytes; the
        // caller's struct is a prefix of ours.
        unsafe {
            std::ptr::copy_nonoverlapping((&raw const stats).cast::<u8>(), out.cast::<u8>(), n);
        }
        Ok(())
    })
}

/// The subprotocol the server chose on the client's current (or last) connection, as UTF-8:
/// copies up to `buf_len - 1` bytes and a NUL into `buf` and writes its full length (without the
/// NUL) to `*out_len`; length 0 when none was offered or chosen, or before the first OPEN. The
/// OPEN state's detail names it too.
///
/// Ownership: writes into the caller's buffer; keeps nothing.
/// Thread safety: any thread, including inside a callback.
/// Errors: `HB_ERR_NULL` (`out_len` NULL, or `buf` NULL with `buf_len > 0`),
/// `HB_ERR_INVALID_HANDLE`, `HB_ERR_FORKED`.
#[no_mangle]
pub extern "C" fn hb_get_subprotocol(
    client: *const hb_client,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> hb_status {
    guard(|| {
        if out_len.is_null() || (buf.is_null() && buf_len > 0) {
            return Err(HB_ERR_NULL);
        }
        let c = handle::get(client as usize)?;
        let p = c.subprotocol().unwrap_or_default();
        write_message(buf, buf_len, &p);
        put(out_len, p.len())
    })
}
