//! `hb_config`: a sequence of setter calls decoded from the input, on one config.
//!
//! Strings come as arbitrary bytes (C strings cut at the first NUL; `(ptr, len)` texts with a
//! length inside the buffer, or NULL with any length); numbers are arbitrary. Invariants: no call
//! ever returns `HB_ERR_PANIC`, each returns only the statuses its documentation lists, a NULL
//! config is `HB_ERR_NULL`, and `hb_config_last_error` explains every refusal (non-empty after
//! one, empty after a success, never written past its buffer). At the end the config may be handed to `hb_connect` (URL 127.0.0.1
//! port 1, NULL callbacks: the client waits without connecting, so no traffic; it is closed at
//! once), which must answer OK or `HB_ERR_INVALID_CONFIG` with a message; then `hb_config_free`.
#![no_main]

use std::ffi::{c_char, CStr, CString};

use hbws::ffi::hb_status::{self, *};
use hbws::ffi::*;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const NUMERIC: &[hb_status] = &[HB_OK, HB_ERR_INVALID_ARGUMENT];
const TEXT: &[hb_status] = &[
    HB_OK,
    HB_ERR_NULL,
    HB_ERR_INVALID_ARGUMENT,
    HB_ERR_INVALID_UTF8,
];

thread_local! {
    /// Whether the current call goes to a NULL config (then only `HB_ERR_NULL` is right).
    static NULL_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn check(what: &str, st: hb_status, allowed: &[hb_status]) {
    assert_ne!(st, HB_ERR_PANIC, "{what}: panicked");
    if NULL_TARGET.with(|n| n.get()) {
        assert_eq!(st, HB_ERR_NULL, "{what}: NULL config not refused");
    } else {
        assert!(allowed.contains(&st), "{what}: unexpected status {st:?}");
    }
}

/// Bytes cut at the first NUL, as a C string.
fn c_string(u: &mut Unstructured) -> Result<CString> {
    let len = u.int_in_range(0..=64)?;
    let b = u.bytes(len)?;
    let cut = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    Ok(CString::new(&b[..cut]).expect("no NUL"))
}

/// A long C string now and then, to hit length limits (header value 8192).
fn maybe_long(u: &mut Unstructured) -> Result<CString> {
    if u.ratio(1, 16)? {
        let n = u.int_in_range(8000..=8400)?;
        let fill = u.int_in_range(0x20..=0x7e)?;
        return Ok(CString::new(vec![fill; n]).expect("no NUL"));
    }
    c_string(u)
}

fn duration_value(u: &mut Unstructured) -> Result<u64> {
    // Mostly near the interesting bounds (0, 1, 24 h), sometimes anything.
    Ok(match u.int_in_range(0..=3)? {
        0 => u.int_in_range(0..=3)?,
        1 => 86_400_000 + u.int_in_range(0..=2)? - 1,
        2 => u.int_in_range(0..=100_000)?,
        _ => u.arbitrary()?,
    })
}

/// Runs the decoded setter calls on `cfg`; counts them in `steps`.
fn run(u: &mut Unstructured, cfg: *mut hb_config, steps: &mut usize) -> Result<()> {
    // Keeps the buffers alive for the whole sequence.
    let mut keep: Vec<Vec<u8>> = Vec::new();
    while !u.is_empty() && *steps < 64 {
        *steps += 1;
        // One call in 32 goes to a NULL config.
        let target = if u.ratio(1, 32)? {
            std::ptr::null_mut()
        } else {
            cfg
        };
        NULL_TARGET.with(|n| n.set(target.is_null()));
        let op: u8 = u.int_in_range(0..=26)?;
        let st = match op {
            0 => {
                let name = maybe_long(u)?;
                let value = maybe_long(u)?;
                let (n, v) = match u.int_in_range(0..=15)? {
                    0 => (std::ptr::null(), value.as_ptr()),
                    1 => (name.as_ptr(), std::ptr::null()),
                    _ => (name.as_ptr(), value.as_ptr()),
                };
                let st = hb_config_add_header(target, n, v);
                check("add_header", st, TEXT);
                st
            }
            1 | 2 => {
                let len = u.int_in_range(0..=1100)?;
                let buf = u.bytes(len.min(u.len()))?.to_vec();
                let (ptr, len) = if u.ratio(1, 16)? {
                    // NULL with an arbitrary length: must be refused, never read.
                    (std::ptr::null::<c_char>(), u.arbitrary::<usize>()?)
                } else {
                    let l = u.int_in_range(0..=buf.len())?;
                    (buf.as_ptr().cast::<c_char>(), l)
                };
                keep.push(buf);
                let st = if op == 1 {
                    hb_config_set_ping_text(target, ptr, len)
                } else {
                    hb_config_set_pong_text(target, ptr, len)
                };
                check("ping/pong text", st, TEXT);
                st
            }
            3 => {
                let st = hb_config_set_ping_interval_ms(target, duration_value(u)?);
                check("ping_interval", st, NUMERIC);
                st
            }
            4 => {
                let st = hb_config_set_pong_timeout_ms(target, duration_value(u)?);
                check("pong_timeout", st, NUMERIC);
                st
            }
            5 => {
                let st = hb_config_set_max_missed(target, u.arbitrary()?);
                check("max_missed", st, NUMERIC);
                st
            }
            6 => {
                let st = hb_config_set_reprobe(target, u.arbitrary()?);
                check("reprobe", st, NUMERIC);
                st
            }
            7 => {
                let st = hb_config_set_liveness(target, u.arbitrary()?);
                check("liveness", st, NUMERIC);
                st
            }
            8 => {
                let st = hb_config_set_heartbeat_mode(target, u.arbitrary()?);
                check("heartbeat_mode", st, NUMERIC);
                st
            }
            9 => {
                let st = hb_config_set_deliver_heartbeats(target, u.arbitrary()?);
                check("deliver_heartbeats", st, NUMERIC);
                st
            }
            10 => {
                let st = hb_config_set_backoff(target, duration_value(u)?, duration_value(u)?);
                check("backoff", st, NUMERIC);
                st
            }
            11 => {
                let st = hb_config_set_backoff_jitter(target, u.arbitrary()?);
                check("backoff_jitter", st, NUMERIC);
                st
            }
            12 => {
                let st = hb_config_set_backoff_min_ms(target, duration_value(u)?);
                check("backoff_min", st, NUMERIC);
                st
            }
            13 => {
                let st = hb_config_set_max_attempts(target, u.arbitrary()?);
                check("max_attempts", st, NUMERIC);
                st
            }
            14 => {
                let st = hb_config_set_stable_after_ms(target, duration_value(u)?);
                check("stable_after", st, NUMERIC);
                st
            }
            15 => {
                let st = hb_config_set_connect_timeout_ms(target, duration_value(u)?);
                check("connect_timeout", st, NUMERIC);
                st
            }
            16 => {
                let st = hb_config_set_close_timeout_ms(target, duration_value(u)?);
                check("close_timeout", st, NUMERIC);
                st
            }
            17 | 18 => {
                let n = u.int_in_range(0..=8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(u.arbitrary::<u16>()?);
                }
                let (ptr, count) = match u.int_in_range(0..=7)? {
                    0 => (std::ptr::null(), u.int_in_range(0..=2000)?),
                    1 => (v.as_ptr(), 0),
                    _ => (v.as_ptr(), v.len()),
                };
                let st = if op == 17 {
                    hb_config_set_fatal_http_statuses(target, ptr, count)
                } else {
                    hb_config_set_fatal_close_codes(target, ptr, count)
                };
                check(
                    "fatal codes",
                    st,
                    &[HB_OK, HB_ERR_NULL, HB_ERR_INVALID_ARGUMENT],
                );
                st
            }
            19 => {
                let st = hb_config_set_max_message_size(target, u.arbitrary()?);
                check("max_message_size", st, NUMERIC);
                st
            }
            20 => {
                let (r, w) = if u.arbitrary()? {
                    (u.arbitrary()?, u.arbitrary()?)
                } else {
                    (
                        u.int_in_range(0..=20_000_000)?,
                        u.int_in_range(0..=20_000_000)?,
                    )
                };
                let st = hb_config_set_buffer_sizes(target, r, w);
                check("buffer_sizes", st, NUMERIC);
                st
            }
            21 => {
                let st = hb_config_set_send_queue(target, u.arbitrary()?, u.arbitrary()?);
                check("send_queue", st, NUMERIC);
                st
            }
            22 => {
                let st = hb_config_set_offline_queue(target, u.arbitrary()?, u.arbitrary()?);
                check("offline_queue", st, NUMERIC);
                st
            }
            23 => {
                let st = hb_config_set_log_level(target, u.arbitrary()?);
                check("log_level", st, NUMERIC);
                st
            }
            24 => {
                let len = u.int_in_range(0..=300)?;
                let buf = u.bytes(len.min(u.len()))?.to_vec();
                let (ptr, len) = if u.ratio(1, 16)? {
                    (std::ptr::null::<c_char>(), u.arbitrary::<usize>()?)
                } else {
                    let l = u.int_in_range(0..=buf.len())?;
                    (buf.as_ptr().cast::<c_char>(), l)
                };
                keep.push(buf);
                let st = hb_config_add_subprotocol(target, ptr, len);
                check("add_subprotocol", st, TEXT);
                st
            }
            25 => {
                let st = hb_config_set_retry_after_max_ms(target, duration_value(u)?);
                check("retry_after_max", st, NUMERIC);
                st
            }
            _ => {
                // Anything else: a known-good heartbeat text, so texts can differ again.
                let t = b"hb-ping";
                let st = hb_config_set_ping_text(target, t.as_ptr().cast(), t.len());
                check("ping_text", st, TEXT);
                st
            }
        };
        if target.is_null() {
            assert_eq!(st, HB_ERR_NULL, "NULL config accepted by op {op}");
        } else {
            check_last_error(cfg, st, op, u.int_in_range(0..=80)?);
        }
    }
    drop(keep);
    Ok(())
}

/// A refusal is explained, a success leaves no message; the buffer convention holds for a
/// buffer of `buf_len` bytes.
fn check_last_error(cfg: *mut hb_config, st: hb_status, op: u8, buf_len: usize) {
    let mut len = usize::MAX;
    assert_eq!(hb_config_last_error(cfg, std::ptr::null_mut(), 0, &mut len), HB_OK);
    if st == HB_OK {
        assert_eq!(len, 0, "op {op}: message left after a success");
    } else {
        assert!(len > 0, "op {op}: refused ({st:?}) without a message");
    }
    let mut buf = [0x55 as c_char; 96];
    let mut n = usize::MAX;
    assert_eq!(hb_config_last_error(cfg, buf.as_mut_ptr(), buf_len, &mut n), HB_OK);
    assert_eq!(n, len);
    assert!(buf[buf_len..].iter().all(|&b| b == 0x55), "op {op}: written past buf_len");
    if buf_len > 0 {
        let msg = CStr::from_bytes_until_nul(unsafe {
            std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf_len)
        })
        .expect("not NUL-terminated within buf_len");
        assert!(msg.to_str().is_ok(), "op {op}: message not UTF-8");
        assert!(msg.to_bytes().len() <= len.min(buf_len - 1));
    }
}

/// Validates the whole config through hb_connect (no traffic: NULL callbacks).
fn validate(cfg: *mut hb_config) {
    let url = c"ws://127.0.0.1:1/";
    let mut out: *mut hb_client = std::ptr::null_mut();
    let mut err = [0 as c_char; 256];
    let st = hb_connect(
        url.as_ptr(),
        cfg,
        std::ptr::null(),
        std::ptr::null_mut(),
        &mut out,
        err.as_mut_ptr(),
        err.len(),
    );
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) };
    check("hb_connect", st, &[HB_OK, HB_ERR_INVALID_CONFIG]);
    if st == HB_OK {
        assert_eq!(hb_close(out), HB_OK);
    } else {
        assert!(out.is_null());
        assert!(
            !msg.to_bytes().is_empty(),
            "INVALID_CONFIG without a message"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cfg: *mut hb_config = std::ptr::null_mut();
    assert_eq!(hb_config_new(&mut cfg), HB_OK);
    assert!(!cfg.is_null());
    let mut u = Unstructured::new(data);
    let mut steps = 0;
    // Running out of input ends the sequence early; the config is freed all the same.
    let _ = run(&mut u, cfg, &mut steps);
    NULL_TARGET.with(|n| n.set(false));
    // Now and then (starting a client costs more than a setter), check it as a whole.
    if steps % 4 == 0 {
        validate(cfg);
    }
    hb_config_free(cfg);
});
