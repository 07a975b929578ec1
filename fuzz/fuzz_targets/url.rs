//! URL parsing: `Target::parse` (the `url` crate's WHATWG parser plus RFC 6455's rules) on
//! arbitrary UTF-8, and the C entry `hb_connect` on an arbitrary NUL-terminated byte string with
//! NULL config and callbacks.
//!
//! No network traffic: `hb_connect` is called for every input that does not parse (the error
//! path: status, `err_buf` contents, nothing created), and for parsed URLs only when they point
//! at 127.0.0.1 port 1; with NULL callbacks that client waits without connecting and is closed at
//! once. Every other parsed URL is only checked for invariants.
#![no_main]

use std::ffi::{c_char, CStr, CString};

use hbws::connect::{Target, UrlError};
use hbws::ffi::hb_status::{self, *};
use hbws::ffi::{hb_close, hb_connect};
use libfuzzer_sys::fuzz_target;

fn check_target(url: &str, t: &Target) {
    assert!(!t.host().is_empty(), "{url:?}: empty host");
    assert_ne!(t.port, 0, "{url:?}: port 0");
    assert!(t.resource().starts_with('/'), "{url:?}: {t:?}");
    assert!(!t.resource().contains('#'), "{url:?}: fragment kept: {t:?}");
    // Nothing that could split the request line or a header.
    for s in [t.host(), t.resource(), t.host_header()] {
        assert!(
            !s.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
            "{url:?}: whitespace or control character in {s:?}"
        );
    }
    assert!(!t.host().contains(['/', '?', '#', '@', '[', ']']), "{t:?}");
    // The WHATWG form: ASCII only (IDNA and percent-encoding done), host in lower case.
    for s in [t.host(), t.resource(), t.host_header()] {
        assert!(s.is_ascii(), "{url:?}: not ASCII after parsing: {s:?}");
    }
    assert!(
        !t.host().bytes().any(|b| b.is_ascii_uppercase()),
        "{url:?}: host not lower-cased: {t:?}"
    );
    assert_eq!(
        t.is_ip_literal(),
        t.host().parse::<std::net::IpAddr>().is_ok(),
        "{t:?}"
    );
    let host_part = if t.host().contains(':') {
        assert!(
            t.host().parse::<std::net::Ipv6Addr>().is_ok(),
            "{url:?}: host with ':' is not IPv6: {t:?}"
        );
        format!("[{}]", t.host())
    } else {
        t.host().to_owned()
    };
    assert!(
        t.host_header() == host_part
            || (t.port != 80 && t.host_header() == format!("{host_part}:{}", t.port)),
        "{url:?}: host header {:?} for {t:?}",
        t.host_header()
    );
    // The normalised form parses back to the same target.
    let again = format!("ws://{}{}", t.host_header(), t.resource());
    assert_eq!(
        Target::parse(&again).as_ref(),
        Ok(t),
        "{url:?} -> {again:?}"
    );
}

/// Writes nothing past `len`, always NUL-terminates inside the buffer, and stays UTF-8.
fn check_err_buf(buf: &[c_char], len: usize) {
    if len == 0 {
        assert!(buf.iter().all(|&b| b == 0x55), "err_buf written with len 0");
        return;
    }
    assert!(
        buf[len..].iter().all(|&b| b == 0x55),
        "err_buf written past its length"
    );
    let msg = CStr::from_bytes_until_nul(unsafe {
        std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len)
    })
    .expect("err_buf not NUL-terminated within its length");
    assert!(msg.to_str().is_ok(), "err_buf not UTF-8: {msg:?}");
}

fn c_connect(url: &CStr, err_len: usize) -> (hb_status, *mut hbws::ffi::hb_client, String) {
    let mut buf = [0x55 as c_char; 300];
    let mut out: *mut hbws::ffi::hb_client = std::ptr::null_mut();
    let st = hb_connect(
        url.as_ptr(),
        std::ptr::null(),
        std::ptr::null(),
        std::ptr::null_mut(),
        &mut out,
        buf.as_mut_ptr(),
        err_len,
    );
    if st == HB_OK {
        // Nothing to report: the buffer may be left alone, but never written past its length.
        assert!(buf[err_len..].iter().all(|&b| b == 0x55), "err_buf overrun");
        return (st, out, String::new());
    }
    check_err_buf(&buf, err_len);
    let msg = if err_len == 0 {
        String::new()
    } else {
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (st, out, msg)
}

fuzz_target!(|data: &[u8]| {
    // First byte: the err_buf length handed to hb_connect (0..=255, within a 300-byte buffer).
    let (err_len, url) = match data.split_first() {
        Some((&n, rest)) => (n as usize, rest),
        None => (256, data),
    };

    // The Rust parser on the whole input, if it is UTF-8.
    if let Ok(s) = std::str::from_utf8(url) {
        match Target::parse(s) {
            Ok(t) => check_target(s, &t),
            Err(UrlError::Invalid(m)) | Err(UrlError::Unsupported(m)) => assert!(!m.is_empty()),
        }
    }

    // The C entry: the input up to its first NUL, as a C string.
    let cut = url.iter().position(|&b| b == 0).unwrap_or(url.len());
    let c = CString::new(&url[..cut]).expect("no interior NUL");
    let expected = match std::str::from_utf8(&url[..cut]) {
        Err(_) => Err(HB_ERR_INVALID_UTF8),
        Ok(s) => match Target::parse(s) {
            Err(UrlError::Invalid(_)) => Err(HB_ERR_INVALID_URL),
            Err(UrlError::Unsupported(_)) => Err(HB_ERR_UNSUPPORTED),
            Ok(t) => Ok(t),
        },
    };
    match expected {
        Err(want) => {
            let (st, out, msg) = c_connect(&c, err_len);
            assert_eq!(st, want, "{c:?}: {msg}");
            assert!(out.is_null(), "client_out written on error");
            if err_len > 1 {
                assert!(!msg.is_empty(), "{c:?}: no error message");
            }
        }
        Ok(t) if t.host() == "127.0.0.1" && t.port == 1 => {
            // NULL callbacks: the client waits without connecting; close it at once.
            let (st, out, msg) = c_connect(&c, err_len);
            assert_eq!(st, HB_OK, "{c:?}: {msg}");
            assert!(!out.is_null());
            assert_eq!(hb_close(out), HB_OK);
            assert_eq!(hb_close(out), HB_ERR_INVALID_HANDLE, "second close");
        }
        Ok(_) => {} // Would start a client towards an arbitrary host: invariants only.
    }
});
