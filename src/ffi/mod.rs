//! The C boundary. One file per C object: [`client`] (`hb_client`), [`config`] (`hb_config`),
//! [`misc`] (version, status strings, the runtime). Every export runs its body inside [`guard`],
//! checks every pointer and length, and returns an [`hb_status`].
//!
//! Pointers from C can only be checked for NULL; a non-NULL pointer must point where the
//! function's documentation says. Client handles are different: they are ids looked up in a
//! table ([`handle`]), never dereferenced, so a stale, closed twice or forged handle is an error
//! status, never undefined behaviour.
#![allow(non_camel_case_types, clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

mod callguard;
pub mod client;
pub mod config;
mod handle;
pub mod misc;

pub use client::*;
pub use config::*;
pub use misc::*;

/// Result of every fallible `hb_*` function. `HB_OK` is 0, errors are negative. Codes are never
/// reused or renumbered; new ones are only added.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum hb_status {
    /// Success.
    HB_OK = 0,
    /// A required pointer argument was NULL.
    HB_ERR_NULL = -1,
    /// An argument is out of its documented range.
    HB_ERR_INVALID_ARGUMENT = -2,
    /// A string or text message is not valid UTF-8.
    HB_ERR_INVALID_UTF8 = -3,
    /// The URL is not a valid `ws://` URL.
    HB_ERR_INVALID_URL = -4,
    /// Valid, but not supported by this build (for now: `wss://`).
    HB_ERR_UNSUPPORTED = -5,
    /// The client handle is NULL-free but not a live client: closed, stale or forged.
    HB_ERR_INVALID_HANDLE = -6,
    /// The client has closed (by `hb_close`, or by itself: fatal error, max attempts).
    HB_ERR_CLOSED = -7,
    /// The send queue (or offline queue) is at its bound; the message was not taken.
    HB_ERR_QUEUE_FULL = -8,
    /// The message is larger than the configured max message size.
    HB_ERR_MESSAGE_TOO_BIG = -9,
    /// Not OPEN, and offline queueing is disabled.
    HB_ERR_NOT_OPEN = -10,
    /// The configuration's options contradict each other (see the error message).
    HB_ERR_INVALID_CONFIG = -11,
    /// The library's runtime could not start.
    HB_ERR_RUNTIME = -12,
    /// The handle belongs to the process this one was `fork()`ed from. (A child may create
    /// clients of its own; its parent's are left alone.)
    HB_ERR_FORKED = -13,
    /// A runtime setting came after the runtime had started.
    HB_ERR_ALREADY_STARTED = -14,
    /// A bug in hbws panicked; the call had no effect that can be relied on.
    HB_ERR_PANIC = -15,
    /// A call that waits was made from inside a callback (on the library's thread), where it
    /// would wait for the callback itself; it did nothing. Use the non-waiting form
    /// (`hb_close_start`).
    HB_ERR_IN_CALLBACK = -16,
    /// The call did what it could, but what it waits for had not finished within its timeout.
    HB_ERR_TIMEOUT = -17,
}

use hb_status::*;

/// Runs an export's body: catches panics and turns `Err` into its status.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), hb_status>) -> hb_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => HB_OK,
        Ok(Err(s)) => s,
        Err(_) => HB_ERR_PANIC,
    }
}

/// Like [`guard`] for functions that cannot report a status; returns `fallback` on panic.
pub(crate) fn guard_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// `(ptr, len)` as a byte slice; `(NULL, 0)` is empty, `(NULL, n>0)` is an error.
pub(crate) fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], hb_status> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(HB_ERR_NULL);
    }
    if len > isize::MAX as usize {
        return Err(HB_ERR_INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL, caller promises `len` readable bytes, length fits in isize.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// `(ptr, len)` as UTF-8 text.
pub(crate) fn text<'a>(ptr: *const c_char, len: usize) -> Result<&'a str, hb_status> {
    std::str::from_utf8(bytes(ptr.cast(), len)?).map_err(|_| HB_ERR_INVALID_UTF8)
}

/// A NUL-terminated UTF-8 string.
pub(crate) fn cstr<'a>(ptr: *const c_char) -> Result<&'a str, hb_status> {
    if ptr.is_null() {
        return Err(HB_ERR_NULL);
    }
    // SAFETY: non-NULL; caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| HB_ERR_INVALID_UTF8)
}

/// Writes `msg` into a caller's buffer as a NUL-terminated string, truncated on a character
/// boundary to fit. `(NULL, any)` and `(any, 0)` write nothing.
pub(crate) fn write_message(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let mut n = msg.len().min(len - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: caller promises `len` writable bytes at `buf`; we write n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

/// Writes an out-param if it is not NULL.
pub(crate) fn put<T>(out: *mut T, value: T) -> Result<(), hb_status> {
    if out.is_null() {
        return Err(HB_ERR_NULL);
    }
    // SAFETY: non-NULL; caller promises it points to a writable T.
    unsafe { out.write(value) };
    Ok(())
}

/// Reads a `0`/`1` flag.
pub(crate) fn flag(v: i32) -> Result<bool, hb_status> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(HB_ERR_INVALID_ARGUMENT),
    }
}
