//! `hb_config`: one setter per option, so the ABI grows by adding functions.
//!
//! Each setter checks its own range and returns `HB_ERR_INVALID_ARGUMENT` without changing
//! anything when out of range, and keeps why in the config for `hb_config_last_error`; options
//! that must agree with each other (pong timeout ≤ interval, backoff cap ≥ base) are checked by
//! `hb_connect`, which reports `HB_ERR_INVALID_CONFIG` with a message. A config is used by one
//! thread at a time; `hb_connect` copies it.

use std::ffi::c_char;
use std::sync::Arc;
use std::time::Duration;

use super::hb_status::{self, *};
use super::{cstr, guard, put, text, write_message};
use crate::config::{limits, Config, HeartbeatMode, Liveness, LogLevel};

/// Client options. Create with `hb_config_new`, free with `hb_config_free`. A setter that refuses
/// its argument leaves the config unchanged and keeps why, for `hb_config_last_error`.
pub struct hb_config {
    // Shared with the clients created from it; a setter after hb_connect copies on write.
    pub(crate) inner: Arc<Config>,
    /// Why the last setter call was refused; empty after one that succeeded.
    last_error: String,
}

/// Liveness policy values for `hb_config_set_liveness`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_liveness {
    /// Only a pong answers a heartbeat ping (default).
    HB_LIVENESS_PONG_ONLY = 0,
    /// Any inbound frame answers it.
    HB_LIVENESS_ANY_INBOUND = 1,
}

/// Heartbeat modes for `hb_config_set_heartbeat_mode`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_heartbeat_mode {
    /// Text `ping`, answered by text `pong` (default).
    HB_HEARTBEAT_TEXT = 0,
    /// RFC 6455 Ping frames; a Pong frame or a text `pong` answers.
    HB_HEARTBEAT_PROTOCOL = 1,
}

/// Log levels for `hb_config_set_log_level` and `hb_log_cb`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_log_level {
    HB_LOG_OFF = 0,
    HB_LOG_ERROR = 1,
    HB_LOG_WARN = 2,
    HB_LOG_INFO = 3,
    HB_LOG_DEBUG = 4,
}

/// A setter's refusal: the status and why.
struct Refused(hb_status, String);

fn invalid(why: impl Into<String>) -> Refused {
    Refused(HB_ERR_INVALID_ARGUMENT, why.into())
}

/// A helper's bare status, explained for the option `what`.
fn explain(what: &str) -> impl Fn(hb_status) -> Refused + '_ {
    move |st| {
        let why = match st {
            HB_ERR_NULL => format!("{what}: NULL pointer"),
            HB_ERR_INVALID_UTF8 => format!("{what}: not valid UTF-8"),
            _ => format!("{what}: invalid argument"),
        };
        Refused(st, why)
    }
}

/// Runs a setter on a copy of the config; keeps the copy on success, the refusal's message on
/// failure (the config itself unchanged).
fn with(cfg: *mut hb_config, f: impl FnOnce(&mut Config) -> Result<(), Refused>) -> hb_status {
    guard(|| {
        if cfg.is_null() {
            return Err(HB_ERR_NULL);
        }
        // SAFETY: non-NULL; the caller promises a live hb_config, used by one thread at a time.
        let cfg = unsafe { &mut *cfg };
        let mut copy = (*cfg.inner).clone();
        match f(&mut copy) {
            Ok(()) => {
                cfg.inner = Arc::new(copy);
                cfg.last_error.clear();
                Ok(())
            }
            Err(Refused(st, why)) => {
                cfg.last_error = why;
                Err(st)
            }
        }
    })
}

fn millis(what: &str, ms: u64) -> Result<Duration, Refused> {
    let d = Duration::from_millis(ms);
    if ms == 0 || d > limits::MAX_DURATION {
        return Err(invalid(format!(
            "{what} must be 1 ..= 86400000 ms (24 h), got {ms}"
        )));
    }
    Ok(d)
}

/// Like [`millis`] but 0 is allowed.
fn millis0(what: &str, ms: u64) -> Result<Duration, Refused> {
    let d = Duration::from_millis(ms);
    if d > limits::MAX_DURATION {
        return Err(invalid(format!(
            "{what} must be 0 ..= 86400000 ms (24 h), got {ms}"
        )));
    }
    Ok(d)
}

fn flag(what: &str, v: i32) -> Result<bool, Refused> {
    super::flag(v).map_err(|_| invalid(format!("{what} must be 0 or 1, got {v}")))
}

/// Creates a config holding the defaults (see the README's configuration table).
///
/// Ownership: the caller frees it with `hb_config_free`.
/// Errors: `HB_ERR_NULL`.
#[no_mangle]
pub extern "C" fn hb_config_new(config_out: *mut *mut hb_config) -> hb_status {
    guard(|| {
        if config_out.is_null() {
            return Err(HB_ERR_NULL);
        }
        let cfg = Box::new(hb_config {
            inner: Arc::new(Config::default()),
            last_error: String::new(),
        });
        put(config_out, Box::into_raw(cfg))
    })
}

/// Frees a config. NULL is a no-op. Clients created from it are not affected.
///
/// Ownership: consumes `config`.
#[no_mangle]
pub extern "C" fn hb_config_free(config: *mut hb_config) {
    let _ = guard(|| {
        if !config.is_null() {
            // SAFETY: non-NULL and, as the caller promises, from hb_config_new and not yet freed.
            drop(unsafe { Box::from_raw(config) });
        }
        Ok(())
    });
}

/// Heartbeat ping interval, 1 ms ..= 24 h. Default 30000.
#[no_mangle]
pub extern "C" fn hb_config_set_ping_interval_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.ping_interval = millis("ping_interval", ms)?;
        Ok(())
    })
}

/// Time a ping waits for its pong before it counts as missed, 1 ms ..= 24 h, and not above the
/// interval (checked by `hb_connect`). Default 10000.
#[no_mangle]
pub extern "C" fn hb_config_set_pong_timeout_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.pong_timeout = millis("pong_timeout", ms)?;
        Ok(())
    })
}

/// Misses in a row that declare the link dead, 1 ..= 1000. Default 3.
#[no_mangle]
pub extern "C" fn hb_config_set_max_missed(config: *mut hb_config, count: u32) -> hb_status {
    with(config, |c| {
        if count == 0 || count > limits::MAX_MISSED {
            return Err(invalid(format!(
                "max_missed must be 1 ..= {}, got {count}",
                limits::MAX_MISSED
            )));
        }
        c.max_missed = count;
        Ok(())
    })
}

/// 1: after a miss, ping again at once (dead after `interval + max_missed × timeout`);
/// 0: keep the interval (dead after `max_missed × interval + timeout`). Default 1.
#[no_mangle]
pub extern "C" fn hb_config_set_reprobe(config: *mut hb_config, enabled: i32) -> hb_status {
    with(config, |c| {
        c.reprobe = flag("reprobe", enabled)?;
        Ok(())
    })
}

/// Text of the heartbeat ping (`len` bytes of UTF-8, 1 ..= 1024). Default "ping".
#[no_mangle]
pub extern "C" fn hb_config_set_ping_text(
    config: *mut hb_config,
    data: *const c_char,
    len: usize,
) -> hb_status {
    with(config, |c| {
        c.ping_text = heartbeat_text("ping_text", data, len)?;
        Ok(())
    })
}

/// Text of the heartbeat pong (`len` bytes of UTF-8, 1 ..= 1024). Default "pong".
#[no_mangle]
pub extern "C" fn hb_config_set_pong_text(
    config: *mut hb_config,
    data: *const c_char,
    len: usize,
) -> hb_status {
    with(config, |c| {
        c.pong_text = heartbeat_text("pong_text", data, len)?;
        Ok(())
    })
}

fn heartbeat_text(what: &str, data: *const c_char, len: usize) -> Result<String, Refused> {
    if len == 0 || len > limits::MAX_HEARTBEAT_TEXT {
        return Err(invalid(format!(
            "{what} must be 1 ..= {} bytes, got {len}",
            limits::MAX_HEARTBEAT_TEXT
        )));
    }
    Ok(text(data, len).map_err(explain(what))?.to_owned())
}

/// An `hb_liveness`. Default `HB_LIVENESS_PONG_ONLY`.
#[no_mangle]
pub extern "C" fn hb_config_set_liveness(config: *mut hb_config, policy: i32) -> hb_status {
    with(config, |c| {
        c.liveness = match policy {
            0 => Liveness::PongOnly,
            1 => Liveness::AnyInbound,
            _ => {
                return Err(invalid(format!(
                    "liveness must be an hb_liveness (0 or 1), got {policy}"
                )))
            }
        };
        Ok(())
    })
}

/// An `hb_heartbeat_mode`. Default `HB_HEARTBEAT_TEXT`.
#[no_mangle]
pub extern "C" fn hb_config_set_heartbeat_mode(config: *mut hb_config, mode: i32) -> hb_status {
    with(config, |c| {
        c.heartbeat_mode = match mode {
            0 => HeartbeatMode::Text,
            1 => HeartbeatMode::Protocol,
            _ => {
                return Err(invalid(format!(
                    "heartbeat mode must be an hb_heartbeat_mode (0 or 1), got {mode}"
                )))
            }
        };
        Ok(())
    })
}

/// 1: also deliver heartbeat texts (`ping`, `pong`) to `on_message`. Default 0.
#[no_mangle]
pub extern "C" fn hb_config_set_deliver_heartbeats(
    config: *mut hb_config,
    enabled: i32,
) -> hb_status {
    with(config, |c| {
        c.deliver_heartbeats = flag("deliver_heartbeats", enabled)?;
        Ok(())
    })
}

/// Reconnect backoff. Reconnect attempt n (1, 2, ... counted since the last proven connection:
/// the `attempt` of the RECONNECTING event) waits uniform in `[0, min(cap, base × 2^(n-1))]`
/// with jitter (`hb_config_set_backoff_jitter`), exactly `min(cap, base × 2^(n-1))` without, and
/// never less than the floor `hb_config_set_backoff_min_ms`; a server's `Retry-After` may make
/// it longer. So with the defaults attempt 1 waits up to 1 s, attempt 2 up to 2 s, attempt 6
/// and later up to 30 s. 1 ms ..= 24 h each, `cap >= base` (checked by `hb_connect`).
/// Default 1000, 30000.
#[no_mangle]
pub extern "C" fn hb_config_set_backoff(
    config: *mut hb_config,
    base_ms: u64,
    cap_ms: u64,
) -> hb_status {
    with(config, |c| {
        c.backoff_base = millis("backoff base", base_ms)?;
        c.backoff_cap = millis("backoff cap", cap_ms)?;
        Ok(())
    })
}

/// 1: full jitter (default): attempt n waits uniform in `[0, min(cap, base × 2^(n-1))]`;
/// 0: it waits exactly `min(cap, base × 2^(n-1))`. Never less than the backoff floor.
#[no_mangle]
pub extern "C" fn hb_config_set_backoff_jitter(config: *mut hb_config, enabled: i32) -> hb_status {
    with(config, |c| {
        c.backoff_jitter = flag("backoff_jitter", enabled)?;
        Ok(())
    })
}

/// Floor under every reconnect delay, 5 ..= 86400000 ms, so attempts are never back to back:
/// less than 5 ms is refused. Above the backoff cap the floor wins. Default 50.
#[no_mangle]
pub extern "C" fn hb_config_set_backoff_min_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        let floor = limits::MIN_BACKOFF.as_millis();
        if u128::from(ms) < floor {
            return Err(invalid(format!(
                "backoff_min must be at least {floor} ms (no reconnect loop tighter than that), got {ms}"
            )));
        }
        c.backoff_min = millis("backoff_min", ms)?;
        Ok(())
    })
}

/// Reconnect attempts in a row without a proven connection before the client gives up (CLOSED,
/// `HB_REASON_MAX_ATTEMPTS`); 0 = never give up (default).
#[no_mangle]
pub extern "C" fn hb_config_set_max_attempts(config: *mut hb_config, attempts: u32) -> hb_status {
    with(config, |c| {
        c.max_attempts = attempts;
        Ok(())
    })
}

/// A connection open this long counts as proven (resets the attempt count) even before its first
/// pong; 0 = only a pong proves it (default).
#[no_mangle]
pub extern "C" fn hb_config_set_stable_after_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.stable_after = millis0("stable_after", ms)?;
        Ok(())
    })
}

/// Bound on TCP connect plus handshake, 1 ms ..= 24 h. Default 10000.
#[no_mangle]
pub extern "C" fn hb_config_set_connect_timeout_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.connect_timeout = millis("connect_timeout", ms)?;
        Ok(())
    })
}

/// Bound on `hb_close`'s flush and close handshake, 1 ms ..= 24 h. Default 2000.
#[no_mangle]
pub extern "C" fn hb_config_set_close_timeout_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.close_timeout = millis("close_timeout", ms)?;
        Ok(())
    })
}

/// HTTP statuses of a refused handshake that stop reconnection (`count` values at `statuses`,
/// each 100 ..= 599; `(NULL, 0)` = retry every status). Default 400, 401, 403, 404, 426.
#[no_mangle]
pub extern "C" fn hb_config_set_fatal_http_statuses(
    config: *mut hb_config,
    statuses: *const u16,
    count: usize,
) -> hb_status {
    with(config, |c| {
        let v = codes("fatal HTTP statuses", statuses, count, 100..=599)?;
        c.fatal_http_statuses = v;
        Ok(())
    })
}

/// Server close codes that stop reconnection (`count` values at `codes`, each 1000 ..= 4999;
/// `(NULL, 0)` = always reconnect). Default 1002, 1003, 1007, 1008, 1010.
#[no_mangle]
pub extern "C" fn hb_config_set_fatal_close_codes(
    config: *mut hb_config,
    close_codes: *const u16,
    count: usize,
) -> hb_status {
    with(config, |c| {
        c.fatal_close_codes = codes("fatal close codes", close_codes, count, 1000..=4999)?;
        Ok(())
    })
}

fn codes(
    what: &str,
    ptr: *const u16,
    count: usize,
    range: std::ops::RangeInclusive<u16>,
) -> Result<Vec<u16>, Refused> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Refused(
            HB_ERR_NULL,
            format!("{what}: NULL pointer with count {count}"),
        ));
    }
    if count > 1024 {
        return Err(invalid(format!("{what}: at most 1024 values, got {count}")));
    }
    // SAFETY: non-NULL, caller promises `count` readable u16 values.
    let v = unsafe { std::slice::from_raw_parts(ptr, count) }.to_vec();
    if let Some(c) = v.iter().find(|c| !range.contains(c)) {
        return Err(invalid(format!(
            "{what}: each must be {} ..= {}, got {c}",
            range.start(),
            range.end()
        )));
    }
    Ok(v)
}

/// Largest message, in bytes, in either direction, 1 ..= 1 GiB. A bigger inbound message closes
/// the connection with 1009; a bigger send is `HB_ERR_MESSAGE_TOO_BIG`. Default 1 MiB.
#[no_mangle]
pub extern "C" fn hb_config_set_max_message_size(
    config: *mut hb_config,
    bytes: usize,
) -> hb_status {
    with(config, |c| {
        if bytes == 0 || bytes > limits::MAX_MESSAGE {
            return Err(invalid(format!(
                "max_message_size must be 1 ..= {} bytes, got {bytes}",
                limits::MAX_MESSAGE
            )));
        }
        c.max_message_size = bytes;
        Ok(())
    })
}

/// Read and write sizes per connection. `read`, 256 B ..= 16 MiB (default 4096): the most asked
/// for per read from the socket (a frame larger than that is read straight into place). Reads of
/// up to 16 KiB go through the stack, so no buffer is kept between them. `write`, 0 ..= 16 MiB:
/// bytes batched before a write (default 0: each message is written at once).
#[no_mangle]
pub extern "C" fn hb_config_set_buffer_sizes(
    config: *mut hb_config,
    read: usize,
    write: usize,
) -> hb_status {
    with(config, |c| {
        if !(limits::MIN_BUFFER..=limits::MAX_BUFFER).contains(&read) {
            return Err(invalid(format!(
                "read buffer size must be {} ..= {} bytes, got {read}",
                limits::MIN_BUFFER,
                limits::MAX_BUFFER
            )));
        }
        if write > limits::MAX_BUFFER {
            return Err(invalid(format!(
                "write buffer size must be 0 ..= {} bytes, got {write}",
                limits::MAX_BUFFER
            )));
        }
        c.read_buffer_size = read;
        c.write_buffer_size = write;
        Ok(())
    })
}

/// Bound on messages accepted while OPEN and not yet written: at most `messages` (≥ 1) and
/// `bytes` (≥ 1). Beyond it `hb_send_*` returns `HB_ERR_QUEUE_FULL`. Default 1024, 4 MiB.
#[no_mangle]
pub extern "C" fn hb_config_set_send_queue(
    config: *mut hb_config,
    messages: usize,
    bytes: usize,
) -> hb_status {
    with(config, |c| {
        if messages == 0 || bytes == 0 {
            return Err(invalid(format!(
                "send queue bounds must be at least 1 message and 1 byte, got {messages} and {bytes}"
            )));
        }
        c.send_queue_messages = messages;
        c.send_queue_bytes = bytes;
        Ok(())
    })
}

/// Bound on the queue while not OPEN (the offline queue, flushed in order after reconnection).
/// `messages = 0` disables it: sends while not OPEN return `HB_ERR_NOT_OPEN`. Default 256, 1 MiB.
#[no_mangle]
pub extern "C" fn hb_config_set_offline_queue(
    config: *mut hb_config,
    messages: usize,
    bytes: usize,
) -> hb_status {
    with(config, |c| {
        c.offline_queue_messages = messages;
        c.offline_queue_bytes = bytes;
        Ok(())
    })
}

/// An `hb_log_level`: the most verbose level passed to `on_log`. Default `HB_LOG_INFO`.
#[no_mangle]
pub extern "C" fn hb_config_set_log_level(config: *mut hb_config, level: i32) -> hb_status {
    with(config, |c| {
        c.log_level = match level {
            0 => LogLevel::Off,
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            4 => LogLevel::Debug,
            _ => {
                return Err(invalid(format!(
                    "log level must be an hb_log_level (0 ..= 4), got {level}"
                )))
            }
        };
        Ok(())
    })
}

/// Adds an HTTP header to the upgrade request (e.g. `Authorization`). `name` is an RFC 7230
/// token and `value` has no control character (CR, LF, NUL, ...; tab is allowed), both
/// NUL-terminated UTF-8. Refused, compared without case: the headers the handshake sets itself
/// (Host, Upgrade, Connection, Sec-WebSocket-Key, -Version, -Extensions, -Accept), Content-Length,
/// Transfer-Encoding, and Sec-WebSocket-Protocol (use `hb_config_add_subprotocol`). At most 64
/// extra headers, 8192 bytes in all (`name: value` plus 4 each). Headers are sent in the order
/// added.
///
/// Ownership: copies both strings; the caller keeps them.
/// Thread safety: a config is used by one thread at a time.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_UTF8`, `HB_ERR_INVALID_ARGUMENT` (reserved or malformed
/// name, bad value, over a cap; `hb_config_last_error` says which; the value is never quoted).
#[no_mangle]
pub extern "C" fn hb_config_add_header(
    config: *mut hb_config,
    name: *const c_char,
    value: *const c_char,
) -> hb_status {
    with(config, |c| {
        let name = cstr(name).map_err(explain("header name"))?;
        let value = cstr(value).map_err(explain("header value"))?;
        c.add_header(name, value).map_err(invalid)
    })
}

/// Offers a subprotocol in `Sec-WebSocket-Protocol`, after those already added (the order is
/// the order of preference). `name` is `len` bytes (no NUL needed): an RFC 7230 token of
/// 1 ..= 256 bytes, not already offered; at most 32. The server must choose one of those offered
/// or none (then OPEN reports none); any other choice fails the attempt with
/// `HB_REASON_PROTOCOL_ERROR`. Default: none offered.
///
/// Ownership: copies the name; the caller keeps it.
/// Thread safety: a config is used by one thread at a time.
/// Errors: `HB_ERR_NULL` (`name` NULL with `len > 0`), `HB_ERR_INVALID_UTF8`,
/// `HB_ERR_INVALID_ARGUMENT` (not a token, empty, too long, a duplicate, more than 32;
/// `hb_config_last_error` says which).
#[no_mangle]
pub extern "C" fn hb_config_add_subprotocol(
    config: *mut hb_config,
    name: *const c_char,
    len: usize,
) -> hb_status {
    with(config, |c| {
        let name = text(name, len).map_err(explain("subprotocol"))?;
        c.add_subprotocol(name).map_err(invalid)
    })
}

/// Ceiling on the wait a server's `Retry-After` can impose (delta-seconds or HTTP-date, on a
/// refused handshake), 0 ..= 86400000 ms (24 h); 0 ignores Retry-After. The next attempt waits
/// the longer of the backoff delay and the server's wait cut to this ceiling; `backoff_cap` does
/// not cut it. Default 3600000 (1 h).
///
/// Ownership: none.
/// Thread safety: a config is used by one thread at a time.
/// Errors: `HB_ERR_NULL`, `HB_ERR_INVALID_ARGUMENT` (over 24 h).
#[no_mangle]
pub extern "C" fn hb_config_set_retry_after_max_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.retry_after_max = millis0("retry_after_max", ms)?;
        Ok(())
    })
}

/// Why the last setter call on `config` was refused, as UTF-8 text: copies up to `buf_len - 1`
/// bytes of it and a NUL into `buf` (cut on a character boundary), and writes its full length in
/// bytes (without the NUL) to `*out_len`, so a caller can size a buffer by passing
/// `(NULL, 0)` first. Empty (length 0) when the last setter call succeeded or none was made. The
/// message of `hb_connect`'s `HB_ERR_INVALID_CONFIG` goes to its own `err_buf`, not here.
///
/// Ownership: writes into the caller's buffer; keeps nothing.
/// Thread safety: a config is used by one thread at a time; the message is per config, not per
/// thread, so it works from Go and from any thread that holds the config.
/// Errors: `HB_ERR_NULL` (`config` or `out_len` NULL, or `buf` NULL with `buf_len > 0`).
#[no_mangle]
pub extern "C" fn hb_config_last_error(
    config: *const hb_config,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> hb_status {
    guard(|| {
        if config.is_null() || out_len.is_null() || (buf.is_null() && buf_len > 0) {
            return Err(HB_ERR_NULL);
        }
        // SAFETY: non-NULL; the caller promises a live hb_config not used by another thread now.
        let msg = &unsafe { &*config }.last_error;
        write_message(buf, buf_len, msg);
        put(out_len, msg.len())
    })
}
