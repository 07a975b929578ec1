//! Library-wide functions: version, status and enum names, runtime settings.

use std::ffi::c_char;

use super::hb_status::{self, *};
use super::{guard, guard_or};
use crate::runtime::{self, RuntimeError};

/// The library version as a static NUL-terminated string, e.g. "0.1.0"; agrees with the
/// `HB_VERSION` macro of the header it was built with.
///
/// Ownership: static; do not free. Thread safety: any thread.
#[no_mangle]
pub extern "C" fn hb_version() -> *const c_char {
    guard_or(std::ptr::null(), || {
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    })
}

/// A static NUL-terminated description of an `hb_status` code ("unknown status" for codes this
/// version does not know).
///
/// Ownership: static; do not free. Thread safety: any thread.
#[no_mangle]
pub extern "C" fn hb_status_str(status: i32) -> *const c_char {
    guard_or(c"internal error".as_ptr(), || {
        let s: &'static std::ffi::CStr = match status {
            0 => c"ok",
            -1 => c"a required pointer argument was NULL",
            -2 => c"an argument is out of its documented range",
            -3 => c"not valid UTF-8",
            -4 => c"invalid URL (expected ws://host[:port][/path])",
            -5 => c"not supported by this build (wss:// is not yet)",
            -6 => c"not a live client handle (closed, stale or forged)",
            -7 => c"the client is closed",
            -8 => c"the send queue is full",
            -9 => c"the message is larger than the max message size",
            -10 => c"not open and offline queueing is disabled",
            -11 => c"the configuration's options contradict each other",
            -12 => c"the library's runtime could not start",
            -13 => c"hbws cannot be used in a fork() child of the process that started it",
            -14 => c"the runtime has already started",
            -15 => c"internal error (panic) in hbws",
            -16 => c"this call waits, and would deadlock inside a callback: nothing was done",
            _ => c"unknown status",
        };
        s.as_ptr()
    })
}

/// A static NUL-terminated name of an `hb_state` ("UNKNOWN" otherwise).
#[no_mangle]
pub extern "C" fn hb_state_str(state: i32) -> *const c_char {
    guard_or(c"UNKNOWN".as_ptr(), || state_name(state).as_ptr())
}

fn state_name(state: i32) -> &'static std::ffi::CStr {
    let s: &'static std::ffi::CStr = match state {
        1 => c"CONNECTING",
        2 => c"OPEN",
        3 => c"RECONNECTING",
        4 => c"CLOSING",
        5 => c"CLOSED",
        _ => c"UNKNOWN",
    };
    s
}

/// A static NUL-terminated name of an `hb_reason` ("UNKNOWN" otherwise).
#[no_mangle]
pub extern "C" fn hb_reason_str(reason: i32) -> *const c_char {
    guard_or(c"UNKNOWN".as_ptr(), || reason_name(reason).as_ptr())
}

fn reason_name(reason: i32) -> &'static std::ffi::CStr {
    let s: &'static std::ffi::CStr = match reason {
        0 => c"NONE",
        1 => c"USER_CLOSE",
        2 => c"HEARTBEAT_TIMEOUT",
        3 => c"CONNECTION_LOST",
        4 => c"SERVER_CLOSE",
        5 => c"HANDSHAKE_REJECTED",
        6 => c"CONNECT_TIMEOUT",
        7 => c"CONNECT_ERROR",
        8 => c"MAX_ATTEMPTS",
        9 => c"MESSAGE_TOO_BIG",
        10 => c"PROTOCOL_ERROR",
        _ => c"UNKNOWN",
    };
    s
}

/// Sets how many threads the library's runtime uses (1 ..= 64; default 1). Only before the
/// first `hb_connect` of the process.
///
/// Thread safety: any thread.
/// Errors: `HB_ERR_INVALID_ARGUMENT`, `HB_ERR_ALREADY_STARTED`, `HB_ERR_FORKED`.
#[no_mangle]
pub extern "C" fn hb_runtime_set_threads(threads: u32) -> hb_status {
    guard(|| {
        if threads == 0 || threads as usize > runtime::MAX_WORKER_THREADS {
            return Err(HB_ERR_INVALID_ARGUMENT);
        }
        if runtime::forked() {
            return Err(HB_ERR_FORKED);
        }
        runtime::set_worker_threads(threads as usize).map_err(|e| match e {
            RuntimeError::Forked => HB_ERR_FORKED,
            RuntimeError::AlreadyStarted => HB_ERR_ALREADY_STARTED,
            RuntimeError::Start(_) => HB_ERR_RUNTIME,
        })
    })
}
