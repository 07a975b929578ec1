//! `hb_config`: one setter per option, so the ABI grows by adding functions.
//!
//! Each setter checks its own range and returns `HB_ERR_INVALID_ARGUMENT` without changing
//! anything when out of range; options that must agree with each other (pong timeout ≤ interval,
//! backoff cap ≥ base) are checked by `hb_connect`, which reports `HB_ERR_INVALID_CONFIG` with a
//! message. A config is used by one thread at a time; `hb_connect` copies it.

use std::ffi::c_char;
use std::sync::Arc;
use std::time::Duration;

use super::hb_status::{self, *};
use super::{cstr, flag, guard, put, text};
use crate::config::{limits, Config, HeartbeatMode, Liveness, LogLevel};

/// Client options. Create with `hb_config_new`, free with `hb_config_free`.
pub struct hb_config {
    // Shared with the clients created from it; a setter after hb_connect copies on write.
    pub(crate) inner: Arc<Config>,
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

fn with(cfg: *mut hb_config, f: impl FnOnce(&mut Config) -> Result<(), hb_status>) -> hb_status {
    guard(|| {
        if cfg.is_null() {
            return Err(HB_ERR_NULL);
        }
        // SAFETY: non-NULL; the caller promises a live hb_config, used by one thread at a time.
        let cfg = unsafe { &mut *cfg };
        let mut copy = (*cfg.inner).clone();
        f(&mut copy)?;
        cfg.inner = Arc::new(copy);
        Ok(())
    })
}

fn millis(ms: u64) -> Result<Duration, hb_status> {
    let d = Duration::from_millis(ms);
    if ms == 0 || d > limits::MAX_DURATION {
        return Err(HB_ERR_INVALID_ARGUMENT);
    }
    Ok(d)
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
        c.ping_interval = millis(ms)?;
        Ok(())
    })
}

/// Time a ping waits for its pong before it counts as missed, 1 ms ..= 24 h, and not above the
/// interval (checked by `hb_connect`). Default 10000.
#[no_mangle]
pub extern "C" fn hb_config_set_pong_timeout_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.pong_timeout = millis(ms)?;
        Ok(())
    })
}

/// Misses in a row that declare the link dead, 1 ..= 1000. Default 3.
#[no_mangle]
pub extern "C" fn hb_config_set_max_missed(config: *mut hb_config, count: u32) -> hb_status {
    with(config, |c| {
        if count == 0 || count > limits::MAX_MISSED {
            return Err(HB_ERR_INVALID_ARGUMENT);
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
        c.reprobe = flag(enabled)?;
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
        c.ping_text = heartbeat_text(data, len)?;
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
        c.pong_text = heartbeat_text(data, len)?;
        Ok(())
    })
}

fn heartbeat_text(data: *const c_char, len: usize) -> Result<String, hb_status> {
    if len == 0 || len > limits::MAX_HEARTBEAT_TEXT {
        return Err(HB_ERR_INVALID_ARGUMENT);
    }
    Ok(text(data, len)?.to_owned())
}

/// An `hb_liveness`. Default `HB_LIVENESS_PONG_ONLY`.
#[no_mangle]
pub extern "C" fn hb_config_set_liveness(config: *mut hb_config, policy: i32) -> hb_status {
    with(config, |c| {
        c.liveness = match policy {
            0 => Liveness::PongOnly,
            1 => Liveness::AnyInbound,
            _ => return Err(HB_ERR_INVALID_ARGUMENT),
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
            _ => return Err(HB_ERR_INVALID_ARGUMENT),
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
        c.deliver_heartbeats = flag(enabled)?;
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
        c.backoff_base = millis(base_ms)?;
        c.backoff_cap = millis(cap_ms)?;
        Ok(())
    })
}

/// 1: full jitter (default): attempt n waits uniform in `[0, min(cap, base × 2^(n-1))]`;
/// 0: it waits exactly `min(cap, base × 2^(n-1))`. Never less than the backoff floor.
#[no_mangle]
pub extern "C" fn hb_config_set_backoff_jitter(config: *mut hb_config, enabled: i32) -> hb_status {
    with(config, |c| {
        c.backoff_jitter = flag(enabled)?;
        Ok(())
    })
}

/// Floor under every reconnect delay, 0 ..= cap, so attempts are never back to back. Default 50.
#[no_mangle]
pub extern "C" fn hb_config_set_backoff_min_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        let d = Duration::from_millis(ms);
        if d > limits::MAX_DURATION {
            return Err(HB_ERR_INVALID_ARGUMENT);
        }
        c.backoff_min = d;
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
        let d = Duration::from_millis(ms);
        if d > limits::MAX_DURATION {
            return Err(HB_ERR_INVALID_ARGUMENT);
        }
        c.stable_after = d;
        Ok(())
    })
}

/// Bound on TCP connect plus handshake, 1 ms ..= 24 h. Default 10000.
#[no_mangle]
pub extern "C" fn hb_config_set_connect_timeout_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.connect_timeout = millis(ms)?;
        Ok(())
    })
}

/// Bound on `hb_close`'s flush and close handshake, 1 ms ..= 24 h. Default 2000.
#[no_mangle]
pub extern "C" fn hb_config_set_close_timeout_ms(config: *mut hb_config, ms: u64) -> hb_status {
    with(config, |c| {
        c.close_timeout = millis(ms)?;
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
        let v = codes(statuses, count, 100..=599)?;
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
        c.fatal_close_codes = codes(close_codes, count, 1000..=4999)?;
        Ok(())
    })
}

fn codes(
    ptr: *const u16,
    count: usize,
    range: std::ops::RangeInclusive<u16>,
) -> Result<Vec<u16>, hb_status> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(HB_ERR_NULL);
    }
    if count > 1024 {
        return Err(HB_ERR_INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, caller promises `count` readable u16 values.
    let v = unsafe { std::slice::from_raw_parts(ptr, count) }.to_vec();
    if v.iter().any(|c| !range.contains(c)) {
        return Err(HB_ERR_INVALID_ARGUMENT);
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
            return Err(HB_ERR_INVALID_ARGUMENT);
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
        if !(limits::MIN_BUFFER..=limits::MAX_BUFFER).contains(&read) || write > limits::MAX_BUFFER
        {
            return Err(HB_ERR_INVALID_ARGUMENT);
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
            return Err(HB_ERR_INVALID_ARGUMENT);
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
            _ => return Err(HB_ERR_INVALID_ARGUMENT),
        };
        Ok(())
    })
}

/// Adds an HTTP header to the upgrade request (e.g. `Authorization`). `name` is a token,
/// `value` visible ASCII or spaces, both NUL-terminated; the headers the handshake itself sets
/// (Host, Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version) are refused.
#[no_mangle]
pub extern "C" fn hb_config_add_header(
    config: *mut hb_config,
    name: *const c_char,
    value: *const c_char,
) -> hb_status {
    with(config, |c| {
        let name = cstr(name)?;
        let value = cstr(value)?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        let reserved = [
            "host",
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
        ];
        if name.is_empty()
            || !name.bytes().all(token)
            || reserved.iter().any(|r| name.eq_ignore_ascii_case(r))
            || !value
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
            || value.len() > 8192
        {
            return Err(HB_ERR_INVALID_ARGUMENT);
        }
        c.headers.push((name.to_owned(), value.to_owned()));
        Ok(())
    })
}
