//! Library-wide functions: version, status and enum names, runtime settings, shutdown.

use std::ffi::c_char;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::hb_status::{self, *};
use super::{callguard, guard, guard_or, handle};
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
            -13 => c"the handle belongs to the process this fork() child was made from",
            -14 => c"the runtime has already started",
            -15 => c"internal error (panic) in hbws",
            -16 => c"not allowed inside an hbws callback (it would wait for the callback itself)",
            -17 => c"not finished within the timeout",
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

/// Sets how many threads the library's runtime uses (1 ..= 64; default 1). Only while no
/// runtime runs: before the first `hb_connect` of the process, after `hb_shutdown`, or in a
/// `fork()` child before its first `hb_connect`.
///
/// Thread safety: any thread.
/// Errors: `HB_ERR_INVALID_ARGUMENT`, `HB_ERR_ALREADY_STARTED`.
#[no_mangle]
pub extern "C" fn hb_runtime_set_threads(threads: u32) -> hb_status {
    guard(|| {
        if threads == 0 || threads as usize > runtime::MAX_WORKER_THREADS {
            return Err(HB_ERR_INVALID_ARGUMENT);
        }
        runtime::set_worker_threads(threads as usize).map_err(|e| match e {
            RuntimeError::Forked => HB_ERR_FORKED,
            RuntimeError::AlreadyStarted => HB_ERR_ALREADY_STARTED,
            RuntimeError::Start(_) => HB_ERR_RUNTIME,
        })
    })
}

/// Ends every client of the process and stops the library's runtime: what an `atexit` hook, a
/// plugin's unload or an app extension's teardown calls.
///
/// Every live client is closed as by `hb_close` without waiting (queued messages flushed, close
/// handshake, `on_dropped`/`on_delivery` for what could not be sent, CLOSED, then `release`),
/// all at once; then it waits until they have all ended or `timeout_ms` has passed. A client
/// still running at the deadline is ended at once: it reports what it never sent, its `release`
/// runs, but its CLOSED state may not be reported. Then the runtime's threads stop (given at
/// least 100 ms more to do so, so `timeout_ms = 0` means "end everything now" and still stops
/// the threads); when this returns `HB_OK` no library thread is left, so no library code runs
/// afterwards. Returns within `timeout_ms` + 100 ms, even if a callback blocks: then with
/// `HB_ERR_TIMEOUT`, and the runtime thread stops by itself once that callback returns (it
/// calls `release`s of clients ended at the deadline on its way out). If a callback ended the
/// runtime thread (`pthread_exit`: see `hb_callbacks`) it returns `HB_ERR_TIMEOUT` after 100 ms
/// without waiting for clients that can no longer end.
///
/// Afterwards every old handle is `HB_ERR_INVALID_HANDLE`. A later `hb_connect` starts a fresh
/// runtime (and `hb_runtime_set_threads` is allowed again before it). Clients created by other
/// threads while this runs may end with the runtime (as at the deadline) or live on the next
/// one. In a `fork()` child it ends the child's own clients and runtime only. With no runtime
/// running it returns `HB_OK` at once.
///
/// Python: call it from an `atexit` hook, through a `ctypes.CDLL` (which releases the GIL during
/// the call, so callbacks waiting for the GIL can finish); then no library thread is left to ask
/// for the GIL while the interpreter finalizes.
///
/// Ownership: consumes every client handle of the process (as `hb_close` does); each client's
/// `release` runs before this returns `HB_OK`.
/// Thread safety: any thread, but not inside an hbws callback (`HB_ERR_IN_CALLBACK`). Calls from
/// several threads run one after the other.
/// Errors: `HB_ERR_IN_CALLBACK`; `HB_ERR_TIMEOUT` if a client or the runtime's threads had not
/// ended in time (a callback still running, or a name lookup in the resolver: it finishes on its
/// own thread, which then exits without calling the host).
#[no_mangle]
pub extern "C" fn hb_shutdown(timeout_ms: u32) -> hb_status {
    guard(|| {
        if runtime::on_runtime_thread() {
            return Err(HB_ERR_IN_CALLBACK);
        }
        const STOP_GRACE: Duration = Duration::from_millis(100);
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        let left = || deadline.saturating_duration_since(Instant::now());
        let clients = handle::remove_all();
        for c in &clients {
            c.close(false);
        }
        // A runtime thread parked in a callback (a thread exit, see callguard.rs) will never
        // serve them: stop waiting for what cannot come as soon as that is so.
        let gone = callguard::parked;
        let ended_in_time = |c: &crate::client::Client| loop {
            if gone() {
                return false;
            }
            let slice = left().min(Duration::from_millis(10));
            if c.wait_done_timeout(slice) {
                return true;
            }
            if left().is_zero() {
                return false;
            }
        };
        let mut ended = clients.iter().all(ended_in_time);
        // Tasks the host closed earlier (`hb_close` from a callback) may still be closing.
        ended = ended && runtime::wait_idle(left(), gone);
        let parked = gone();
        drop(clients);
        let stopped = runtime::shutdown(if parked {
            STOP_GRACE
        } else {
            left().max(STOP_GRACE)
        });
        if ended && stopped {
            Ok(())
        } else {
            Err(HB_ERR_TIMEOUT)
        }
    })
}
