//! `hb_config` through the exported functions: every refusal says why (`hb_config_last_error`,
//! rustls-ffi's buffer convention), `add_header`'s reserved names and caps, subprotocols end to
//! end, `retry_after_max`, and the `backoff_min` floor.

#[path = "common/mod.rs"]
mod common;
#[path = "support/states.rs"]
mod states;

use std::ffi::{c_char, CStr};
use std::time::{Duration, Instant};

use common::{count_state, has_state, Cfg, TestClient, WAIT};
use hbws::ffi::hb_status::{self, *};
use hbws::ffi::*;
use states::{accept_with, header, RawServer};

/// The config's last refusal message, read with a buffer that fits.
fn last_error(cfg: &Cfg) -> String {
    let mut len = usize::MAX;
    assert_eq!(
        hb_config_last_error(cfg.0, std::ptr::null_mut(), 0, &mut len),
        HB_OK
    );
    let mut buf = vec![0x55 as c_char; len + 1];
    let mut again = 0;
    assert_eq!(
        hb_config_last_error(cfg.0, buf.as_mut_ptr(), buf.len(), &mut again),
        HB_OK
    );
    assert_eq!(again, len);
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.len(), len);
    s
}

/// `st` is a refusal with `status`, and the config now explains it with a message containing
/// `why`.
fn refused(cfg: &Cfg, st: hb_status, status: hb_status, why: &str) -> String {
    assert_eq!(st, status, "{why}");
    let m = last_error(cfg);
    assert!(m.contains(why), "{m:?} lacks {why:?}");
    m
}

#[test]
fn last_error_follows_the_buffer_convention() {
    let cfg = Cfg::new();
    let mut len = 7;
    // Nothing refused yet: empty.
    let mut buf = [0x55 as c_char; 16];
    assert_eq!(
        hb_config_last_error(cfg.0, buf.as_mut_ptr(), buf.len(), &mut len),
        HB_OK
    );
    assert_eq!((len, buf[0], buf[1]), (0, 0, 0x55));
    // NULL checks.
    assert_eq!(
        hb_config_last_error(std::ptr::null(), buf.as_mut_ptr(), buf.len(), &mut len),
        HB_ERR_NULL
    );
    assert_eq!(
        hb_config_last_error(cfg.0, buf.as_mut_ptr(), buf.len(), std::ptr::null_mut()),
        HB_ERR_NULL
    );
    assert_eq!(
        hb_config_last_error(cfg.0, std::ptr::null_mut(), 4, &mut len),
        HB_ERR_NULL
    );
    // A refusal, read through a buffer too small: buf_len - 1 bytes and a NUL, full length out.
    assert_eq!(
        hb_config_set_ping_interval_ms(cfg.0, 0),
        HB_ERR_INVALID_ARGUMENT
    );
    let full = last_error(&cfg);
    assert_eq!(
        full,
        "ping_interval must be 1 ..= 86400000 ms (24 h), got 0"
    );
    let mut small = [0x55 as c_char; 10];
    assert_eq!(
        hb_config_last_error(cfg.0, small.as_mut_ptr(), 8, &mut len),
        HB_OK
    );
    assert_eq!(len, full.len());
    let got = unsafe { CStr::from_ptr(small.as_ptr()) }.to_str().unwrap();
    assert_eq!(got, &full[..7]);
    assert_eq!((small[8], small[9]), (0x55, 0x55), "written past buf_len");
    // buf_len 0 with a buffer: nothing written, length reported.
    let mut untouched = [0x55 as c_char; 4];
    assert_eq!(
        hb_config_last_error(cfg.0, untouched.as_mut_ptr(), 0, &mut len),
        HB_OK
    );
    assert_eq!((len, untouched[0]), (full.len(), 0x55));
    // A refused setter leaves the config as it was; a later success clears the message.
    assert_eq!(hb_config_set_ping_interval_ms(cfg.0, 20_000), HB_OK);
    assert_eq!(last_error(&cfg), "");
}

#[test]
fn every_refused_setter_says_why() {
    let cfg = Cfg::new();
    let p = cfg.0;
    let nul = std::ptr::null::<c_char>();
    let bad_utf8 = [0xffu8, 0xfe];
    let cases: Vec<(&str, hb_status, hb_status, &str)> = vec![
        (
            "ping_interval",
            hb_config_set_ping_interval_ms(p, 86_400_001),
            HB_ERR_INVALID_ARGUMENT,
            "ping_interval must be",
        ),
        (
            "pong_timeout",
            hb_config_set_pong_timeout_ms(p, 0),
            HB_ERR_INVALID_ARGUMENT,
            "pong_timeout must be",
        ),
        (
            "max_missed",
            hb_config_set_max_missed(p, 0),
            HB_ERR_INVALID_ARGUMENT,
            "max_missed must be 1 ..= 1000, got 0",
        ),
        (
            "reprobe",
            hb_config_set_reprobe(p, 2),
            HB_ERR_INVALID_ARGUMENT,
            "reprobe must be 0 or 1, got 2",
        ),
        (
            "ping_text empty",
            hb_config_set_ping_text(p, c"x".as_ptr(), 0),
            HB_ERR_INVALID_ARGUMENT,
            "ping_text must be 1 ..= 1024 bytes, got 0",
        ),
        (
            "ping_text NULL",
            hb_config_set_ping_text(p, nul, 3),
            HB_ERR_NULL,
            "ping_text: NULL pointer",
        ),
        (
            "pong_text UTF-8",
            hb_config_set_pong_text(p, bad_utf8.as_ptr().cast(), 2),
            HB_ERR_INVALID_UTF8,
            "pong_text: not valid UTF-8",
        ),
        (
            "liveness",
            hb_config_set_liveness(p, 9),
            HB_ERR_INVALID_ARGUMENT,
            "liveness must be",
        ),
        (
            "heartbeat_mode",
            hb_config_set_heartbeat_mode(p, -1),
            HB_ERR_INVALID_ARGUMENT,
            "heartbeat mode must be",
        ),
        (
            "deliver_heartbeats",
            hb_config_set_deliver_heartbeats(p, 5),
            HB_ERR_INVALID_ARGUMENT,
            "deliver_heartbeats must be 0 or 1",
        ),
        (
            "backoff",
            hb_config_set_backoff(p, 0, 10),
            HB_ERR_INVALID_ARGUMENT,
            "backoff base must be",
        ),
        (
            "backoff cap",
            hb_config_set_backoff(p, 10, 0),
            HB_ERR_INVALID_ARGUMENT,
            "backoff cap must be",
        ),
        (
            "backoff_jitter",
            hb_config_set_backoff_jitter(p, 3),
            HB_ERR_INVALID_ARGUMENT,
            "backoff_jitter must be 0 or 1",
        ),
        (
            "backoff_min",
            hb_config_set_backoff_min_ms(p, 4),
            HB_ERR_INVALID_ARGUMENT,
            "backoff_min must be at least 5 ms",
        ),
        (
            "stable_after",
            hb_config_set_stable_after_ms(p, u64::MAX),
            HB_ERR_INVALID_ARGUMENT,
            "stable_after must be 0 ..=",
        ),
        (
            "connect_timeout",
            hb_config_set_connect_timeout_ms(p, 0),
            HB_ERR_INVALID_ARGUMENT,
            "connect_timeout must be",
        ),
        (
            "close_timeout",
            hb_config_set_close_timeout_ms(p, 0),
            HB_ERR_INVALID_ARGUMENT,
            "close_timeout must be",
        ),
        (
            "fatal statuses",
            hb_config_set_fatal_http_statuses(p, [99u16].as_ptr(), 1),
            HB_ERR_INVALID_ARGUMENT,
            "fatal HTTP statuses: each must be 100 ..= 599, got 99",
        ),
        (
            "fatal statuses NULL",
            hb_config_set_fatal_http_statuses(p, std::ptr::null(), 2),
            HB_ERR_NULL,
            "fatal HTTP statuses: NULL pointer",
        ),
        (
            "fatal codes",
            hb_config_set_fatal_close_codes(p, [5000u16].as_ptr(), 1),
            HB_ERR_INVALID_ARGUMENT,
            "fatal close codes: each must be 1000 ..= 4999, got 5000",
        ),
        (
            "max_message_size",
            hb_config_set_max_message_size(p, 0),
            HB_ERR_INVALID_ARGUMENT,
            "max_message_size must be",
        ),
        (
            "read buffer",
            hb_config_set_buffer_sizes(p, 1, 0),
            HB_ERR_INVALID_ARGUMENT,
            "read buffer size must be 256",
        ),
        (
            "write buffer",
            hb_config_set_buffer_sizes(p, 4096, usize::MAX),
            HB_ERR_INVALID_ARGUMENT,
            "write buffer size must be",
        ),
        (
            "send_queue",
            hb_config_set_send_queue(p, 0, 1),
            HB_ERR_INVALID_ARGUMENT,
            "send queue bounds",
        ),
        (
            "log_level",
            hb_config_set_log_level(p, 7),
            HB_ERR_INVALID_ARGUMENT,
            "log level must be",
        ),
        (
            "header",
            hb_config_add_header(p, c"Host".as_ptr(), c"x".as_ptr()),
            HB_ERR_INVALID_ARGUMENT,
            "header Host is set by the handshake",
        ),
        (
            "header NULL",
            hb_config_add_header(p, nul, c"x".as_ptr()),
            HB_ERR_NULL,
            "header name: NULL pointer",
        ),
        (
            "subprotocol",
            hb_config_add_subprotocol(p, c"a b".as_ptr(), 3),
            HB_ERR_INVALID_ARGUMENT,
            "not allowed in an HTTP token",
        ),
        (
            "subprotocol NULL",
            hb_config_add_subprotocol(p, nul, 1),
            HB_ERR_NULL,
            "subprotocol: NULL pointer",
        ),
        (
            "retry_after_max",
            hb_config_set_retry_after_max_ms(p, 86_400_001),
            HB_ERR_INVALID_ARGUMENT,
            "retry_after_max must be 0 ..= 86400000",
        ),
    ];
    // Each call ran in order; the message kept is the last one's. Re-run each to check its own.
    for (what, st, status, _) in &cases {
        assert_eq!(st, status, "{what}");
    }
    assert!(last_error(&cfg).contains("retry_after_max"));
    // Now one at a time, each checked against its own message (the calls are repeated in the
    // same order, so `cases[i]` is the latest when checked).
    let again: Vec<Box<dyn Fn() -> hb_status>> = vec![
        Box::new(move || hb_config_set_ping_interval_ms(p, 86_400_001)),
        Box::new(move || hb_config_set_pong_timeout_ms(p, 0)),
        Box::new(move || hb_config_set_max_missed(p, 0)),
        Box::new(move || hb_config_set_reprobe(p, 2)),
        Box::new(move || hb_config_set_ping_text(p, c"x".as_ptr(), 0)),
        Box::new(move || hb_config_set_ping_text(p, std::ptr::null(), 3)),
        Box::new(move || hb_config_set_pong_text(p, [0xffu8, 0xfe].as_ptr().cast(), 2)),
        Box::new(move || hb_config_set_liveness(p, 9)),
        Box::new(move || hb_config_set_heartbeat_mode(p, -1)),
        Box::new(move || hb_config_set_deliver_heartbeats(p, 5)),
        Box::new(move || hb_config_set_backoff(p, 0, 10)),
        Box::new(move || hb_config_set_backoff(p, 10, 0)),
        Box::new(move || hb_config_set_backoff_jitter(p, 3)),
        Box::new(move || hb_config_set_backoff_min_ms(p, 4)),
        Box::new(move || hb_config_set_stable_after_ms(p, u64::MAX)),
        Box::new(move || hb_config_set_connect_timeout_ms(p, 0)),
        Box::new(move || hb_config_set_close_timeout_ms(p, 0)),
        Box::new(move || hb_config_set_fatal_http_statuses(p, [99u16].as_ptr(), 1)),
        Box::new(move || hb_config_set_fatal_http_statuses(p, std::ptr::null(), 2)),
        Box::new(move || hb_config_set_fatal_close_codes(p, [5000u16].as_ptr(), 1)),
        Box::new(move || hb_config_set_max_message_size(p, 0)),
        Box::new(move || hb_config_set_buffer_sizes(p, 1, 0)),
        Box::new(move || hb_config_set_buffer_sizes(p, 4096, usize::MAX)),
        Box::new(move || hb_config_set_send_queue(p, 0, 1)),
        Box::new(move || hb_config_set_log_level(p, 7)),
        Box::new(move || hb_config_add_header(p, c"Host".as_ptr(), c"x".as_ptr())),
        Box::new(move || hb_config_add_header(p, std::ptr::null(), c"x".as_ptr())),
        Box::new(move || hb_config_add_subprotocol(p, c"a b".as_ptr(), 3)),
        Box::new(move || hb_config_add_subprotocol(p, std::ptr::null(), 1)),
        Box::new(move || hb_config_set_retry_after_max_ms(p, 86_400_001)),
    ];
    assert_eq!(again.len(), cases.len());
    for (call, (what, _, status, why)) in again.iter().zip(&cases) {
        // A success in between clears the message, so each refusal writes its own.
        assert_eq!(hb_config_set_max_attempts(p, 0), HB_OK);
        assert_eq!(last_error(&cfg), "");
        let m = refused(&cfg, call(), *status, why);
        eprintln!("{what}: {m}");
    }
    // Nothing refused changed the config: it still connects with the defaults.
    let mut out = std::ptr::null_mut();
    let mut err = [0 as c_char; 256];
    assert_eq!(
        hb_connect(
            c"ws://127.0.0.1:1/".as_ptr(),
            p,
            std::ptr::null(),
            std::ptr::null_mut(),
            &mut out,
            err.as_mut_ptr(),
            err.len()
        ),
        HB_OK
    );
    assert_eq!(hb_close(out), HB_OK);
}

#[test]
fn add_header_refuses_reserved_names_and_bad_values() {
    let cfg = Cfg::new();
    for name in [
        c"Host",
        c"upgrade",
        c"CONNECTION",
        c"Sec-WebSocket-Key",
        c"sec-websocket-version",
        c"Sec-WebSocket-Extensions",
        c"sec-websocket-accept",
        c"Content-Length",
        c"TRANSFER-ENCODING",
    ] {
        refused(
            &cfg,
            hb_config_add_header(cfg.0, name.as_ptr(), c"x".as_ptr()),
            HB_ERR_INVALID_ARGUMENT,
            "is set by the handshake itself",
        );
    }
    refused(
        &cfg,
        hb_config_add_header(cfg.0, c"Sec-WebSocket-Protocol".as_ptr(), c"chat".as_ptr()),
        HB_ERR_INVALID_ARGUMENT,
        "hb_config_add_subprotocol",
    );
    refused(
        &cfg,
        hb_config_add_header(cfg.0, c"X(bad)".as_ptr(), c"x".as_ptr()),
        HB_ERR_INVALID_ARGUMENT,
        "token",
    );
    let m = refused(
        &cfg,
        hb_config_add_header(
            cfg.0,
            c"Authorization".as_ptr(),
            c"Bearer s3cret\r\nX-Evil: 1".as_ptr(),
        ),
        HB_ERR_INVALID_ARGUMENT,
        "control character",
    );
    assert!(!m.contains("s3cret"), "the value is never quoted: {m}");
    // Count cap: 64 headers.
    for i in 0..64 {
        let n = std::ffi::CString::new(format!("X-H{i}")).unwrap();
        assert_eq!(
            hb_config_add_header(cfg.0, n.as_ptr(), c"v".as_ptr()),
            HB_OK
        );
    }
    refused(
        &cfg,
        hb_config_add_header(cfg.0, c"X-One-More".as_ptr(), c"v".as_ptr()),
        HB_ERR_INVALID_ARGUMENT,
        "at most 64 extra headers",
    );
    // Size cap: 8 KiB in all.
    let big = Cfg::new();
    let v = std::ffi::CString::new("v".repeat(8000)).unwrap();
    assert_eq!(
        hb_config_add_header(big.0, c"X-Big".as_ptr(), v.as_ptr()),
        HB_OK
    );
    refused(
        &big,
        hb_config_add_header(big.0, c"X-More".as_ptr(), v.as_ptr()),
        HB_ERR_INVALID_ARGUMENT,
        "at most 8192",
    );
}

#[test]
fn retry_after_max_and_backoff_min_ranges() {
    let cfg = Cfg::new();
    assert_eq!(hb_config_set_retry_after_max_ms(cfg.0, 0), HB_OK);
    assert_eq!(hb_config_set_retry_after_max_ms(cfg.0, 86_400_000), HB_OK);
    refused(
        &cfg,
        hb_config_set_retry_after_max_ms(cfg.0, u64::MAX),
        HB_ERR_INVALID_ARGUMENT,
        "retry_after_max",
    );
    for ms in [0, 1, 4] {
        refused(
            &cfg,
            hb_config_set_backoff_min_ms(cfg.0, ms),
            HB_ERR_INVALID_ARGUMENT,
            "at least 5 ms",
        );
    }
    assert_eq!(hb_config_set_backoff_min_ms(cfg.0, 5), HB_OK);
    assert_eq!(
        hb_config_add_subprotocol(std::ptr::null_mut(), c"a".as_ptr(), 1),
        HB_ERR_NULL
    );
    assert_eq!(
        hb_config_set_retry_after_max_ms(std::ptr::null_mut(), 1),
        HB_ERR_NULL
    );
}

/// backoff(1, 1) against a port that refuses at once: at most one attempt per 5 ms (the floor),
/// where it used to loop as fast as connect() fails.
#[test]
fn backoff_1_1_is_no_tight_loop() {
    let cfg = Cfg::new();
    assert_eq!(hb_config_set_backoff(cfg.0, 1, 1), HB_OK);
    assert_eq!(
        hb_config_set_backoff_min_ms(cfg.0, 0),
        HB_ERR_INVALID_ARGUMENT
    );
    assert_eq!(hb_config_set_backoff_min_ms(cfg.0, 5), HB_OK);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", closed.local_addr().unwrap());
    drop(closed);
    let c = TestClient::connect(&url, Some(&cfg));
    let t0 = Instant::now();
    c.rec.wait_for("attempts", WAIT, |l| {
        count_state(l, hb_state::HB_STATE_RECONNECTING) >= 20
    });
    std::thread::sleep(Duration::from_millis(500));
    let attempts = c.stats().connect_attempts;
    let took = t0.elapsed();
    c.close();
    let most = took.as_millis() as u64 / 5 + 2;
    eprintln!("{attempts} attempts in {took:?} (at most {most})");
    assert!(attempts <= most, "{attempts} attempts in {took:?}");
}

/// Subprotocols through the C API: offered in order, the chosen one accepted; a server that
/// chooses another is PROTOCOL_ERROR.
#[test]
fn subprotocols_end_to_end() {
    let good = RawServer::start(|req, accept| {
        let offered = header(req, "Sec-WebSocket-Protocol").unwrap_or_default();
        assert_eq!(offered, "mqtt, chat.v1");
        accept_with(accept, "Sec-WebSocket-Protocol: chat.v1\r\n")
    });
    let cfg = Cfg::fast(1000, 500, 3);
    assert_eq!(hb_config_add_subprotocol(cfg.0, c"mqtt".as_ptr(), 4), HB_OK);
    assert_eq!(
        hb_config_add_subprotocol(cfg.0, c"chat.v1xyz".as_ptr(), 7),
        HB_OK
    );
    refused(
        &cfg,
        hb_config_add_subprotocol(cfg.0, c"mqtt".as_ptr(), 4),
        HB_ERR_INVALID_ARGUMENT,
        "already offered",
    );
    let c = TestClient::connect(&good.url(), Some(&cfg));
    let log = c.wait_open(1);
    // The server's choice: named by OPEN, and readable afterwards.
    assert!(log
        .iter()
        .any(|e| matches!(e, common::Rec::State { state, detail, .. }
        if *state == hb_state::HB_STATE_OPEN as i32 && detail.contains("subprotocol chat.v1"))));
    let mut buf = [0 as std::ffi::c_char; 16];
    let mut n = 0usize;
    assert_eq!(
        hb_get_subprotocol(c.h, buf.as_mut_ptr(), buf.len(), &mut n),
        HB_OK
    );
    assert_eq!(n, 7);
    assert_eq!(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .unwrap(),
        "chat.v1"
    );
    assert_eq!(
        hb_get_subprotocol(c.h, std::ptr::null_mut(), 0, &mut n),
        HB_OK
    );
    assert_eq!(n, 7);
    assert_eq!(
        hb_get_subprotocol(c.h, std::ptr::null_mut(), 4, &mut n),
        HB_ERR_NULL
    );
    c.close();
    let bad =
        RawServer::start(|_, accept| accept_with(accept, "Sec-WebSocket-Protocol: other\r\n"));
    let c = TestClient::connect(&bad.url(), Some(&cfg));
    c.rec.wait_for("protocol error", WAIT, |l| {
        has_state(
            l,
            hb_state::HB_STATE_RECONNECTING,
            hb_reason::HB_REASON_PROTOCOL_ERROR,
        )
    });
    assert!(!has_state(
        &c.rec.events(),
        hb_state::HB_STATE_OPEN,
        hb_reason::HB_REASON_NONE
    ));
    c.close();
}
