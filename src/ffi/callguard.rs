//! Every call of a host callback goes through a C function of `callguard.c`, which stops a
//! forced unwind (`pthread_exit`, `pthread_cancel`) leaving the callback before it reaches Rust
//! frames: it parks the thread for good instead.
//!
//! Why: CPython (up to 3.13) ends a thread that asks for the GIL while the interpreter finalizes
//! with `pthread_exit`, which on glibc unwinds the thread's stack. Our frames sit between the
//! callback and the thread's start; a forced unwind through Rust frames that own values is
//! undefined behaviour (RFC 2945, "C-unwind"), and in practice it ends in a `catch_unwind` (std's
//! thread start, tokio's task harness) that cannot catch it: "FATAL: exception not rethrown",
//! abort. A Python program that exits while callbacks fire aborted in 10 of 10 runs. Declaring
//! the callback types `extern "C-unwind"` would let the unwind into those frames, which is the
//! undefined case, so the unwind is stopped in C, where a cleanup during a forced unwind is
//! well defined, and the thread never returns into Rust.
//!
//! What remains:
//! - The parked thread is the runtime thread, so every client of the process stops being served
//!   (the process is exiting); `hb_shutdown` then returns `HB_ERR_TIMEOUT` without waiting for
//!   the clients, and a waiting close would wait for good unless it asks [`parked`] too.
//! - The library cannot make a callback whose code is gone safe: CPython frees ctypes callback
//!   thunks while it finalizes, and a runtime thread that was between callbacks when
//!   finalization began then calls freed memory (SIGSEGV, about 1 run in 60 of the test's
//!   program). The header's rule covers it: callback pointers stay valid until `release`, so a
//!   binding either calls `hb_shutdown` from an `atexit` hook (release runs, no thread is left)
//!   or leaks its thunks. With the thunks kept, the program exits cleanly in 150 of 150 runs.
//! - On Windows, and with compilers without the `cleanup` attribute, the call is a plain call.

use std::ffi::{c_char, c_void};

use super::client::{hb_heartbeat_event, hb_state_event};

type StateFn = unsafe extern "C" fn(*mut c_void, *const hb_state_event);
type HeartbeatFn = unsafe extern "C" fn(*mut c_void, *const hb_heartbeat_event);
type MessageFn = unsafe extern "C" fn(*mut c_void, i32, *const u8, usize);
type CountsFn = unsafe extern "C" fn(*mut c_void, u64, u64, i32);
type LogFn = unsafe extern "C" fn(*mut c_void, i32, *const c_char, usize);
type ReleaseFn = unsafe extern "C" fn(*mut c_void);

extern "C" {
    fn hbws__call_state(f: StateFn, ud: *mut c_void, ev: *const hb_state_event);
    fn hbws__call_heartbeat(f: HeartbeatFn, ud: *mut c_void, ev: *const hb_heartbeat_event);
    fn hbws__call_message(f: MessageFn, ud: *mut c_void, kind: i32, data: *const u8, len: usize);
    fn hbws__call_u64_u64_i32(f: CountsFn, ud: *mut c_void, a: u64, b: u64, c: i32);
    fn hbws__call_log(f: LogFn, ud: *mut c_void, level: i32, msg: *const c_char, len: usize);
    fn hbws__call_release(f: ReleaseFn, ud: *mut c_void);
    static hbws__callguard_parked: i32;
}

// SAFETY (all below): the caller's contract is the callee's: `f` is the host's function for
// exactly this call and every pointer is valid for its duration. The C functions only call `f`.

pub(crate) unsafe fn state(f: StateFn, ud: *mut c_void, ev: *const hb_state_event) {
    unsafe { hbws__call_state(f, ud, ev) }
}

pub(crate) unsafe fn heartbeat(f: HeartbeatFn, ud: *mut c_void, ev: *const hb_heartbeat_event) {
    unsafe { hbws__call_heartbeat(f, ud, ev) }
}

pub(crate) unsafe fn message(
    f: MessageFn,
    ud: *mut c_void,
    kind: i32,
    data: *const u8,
    len: usize,
) {
    unsafe { hbws__call_message(f, ud, kind, data, len) }
}

pub(crate) unsafe fn counts(f: CountsFn, ud: *mut c_void, a: u64, b: u64, c: i32) {
    unsafe { hbws__call_u64_u64_i32(f, ud, a, b, c) }
}

pub(crate) unsafe fn log(f: LogFn, ud: *mut c_void, level: i32, msg: *const c_char, len: usize) {
    unsafe { hbws__call_log(f, ud, level, msg, len) }
}

pub(crate) unsafe fn release(f: ReleaseFn, ud: *mut c_void) {
    unsafe { hbws__call_release(f, ud) }
}

/// Whether a thread has been parked in a callback (see the module docs).
pub(crate) fn parked() -> bool {
    // SAFETY: a plain int the C side only ever sets to 1, read once.
    unsafe { std::ptr::read_volatile(&raw const hbws__callguard_parked) != 0 }
}
