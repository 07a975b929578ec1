//! Real sockets on loopback, driving the exported `extern "C"` functions against the reference
//! server. Short intervals; every wait is on the event itself with a generous timeout.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hbws::ffi::hb_heartbeat_kind::*;
use hbws::ffi::hb_reason::*;
use hbws::ffi::hb_state::*;
use hbws::ffi::hb_status::*;
use hbws::ffi::*;
use hbws_server::{DropKind, Server, ServerConfig, ServerEvent};

fn server(ping_interval: Option<Duration>) -> Server {
    Server::start(ServerConfig {
        ping_interval,
        pong_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    })
    .unwrap()
}

#[test]
fn opens_and_measures_heartbeat_rtt() {
    let srv = server(None);
    let cfg = Cfg::fast(100, 100, 3);
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    let log = c.wait_open(1);
    assert_eq!(
        c.rec.states()[0],
        (HB_STATE_CONNECTING as i32, HB_REASON_NONE as i32)
    );
    assert!(has_state(&log, HB_STATE_OPEN, HB_REASON_NONE));
    // Three answered pings, each with a measured round trip.
    let log = c.rec.wait_for("3 pongs", WAIT, |l| {
        l.iter()
            .filter(
                |r| matches!(r, Rec::Heartbeat { kind, .. } if *kind == HB_HEARTBEAT_PONG as i32),
            )
            .count()
            >= 3
    });
    for r in &log {
        if let Rec::Heartbeat { kind, rtt_us, .. } = r {
            if *kind == HB_HEARTBEAT_PONG as i32 {
                assert!(*rtt_us > 0 && *rtt_us < 5_000_000, "rtt {rtt_us}");
            }
        }
    }
    assert!(srv.wait_for(WAIT, |e| e
        .iter()
        .filter(|e| matches!(e, ServerEvent::ClientPing { .. }))
        .count()
        >= 3));
    let s = c.stats();
    assert_eq!(s.state, HB_STATE_OPEN as i32);
    assert!(s.pongs_received >= 3 && s.pings_sent >= 3);
    assert!(s.rtt_last_us > 0 && s.rtt_min_us > 0 && s.rtt_min_us <= s.rtt_mean_us);
    assert_eq!(s.pongs_missed, 0);
    // Heartbeat texts are not application messages.
    assert!(!c
        .rec
        .events()
        .iter()
        .any(|r| matches!(r, Rec::Message { .. })));
    c.close();
    assert!(has_state(
        &c.rec.events(),
        HB_STATE_CLOSED,
        HB_REASON_USER_CLOSE
    ));
    assert_eq!(c.rec.late_callbacks.load(Ordering::SeqCst), 0);
}

#[test]
fn server_text_ping_is_answered_in_milliseconds_and_protocol_pings_too() {
    let srv = server(Some(Duration::from_millis(100)));
    let c = TestClient::connect(&srv.url(), None);
    c.wait_open(1);
    srv.clear_events();
    let t0 = Instant::now();
    srv.send_text_to_all("ping");
    assert!(srv.wait_for(WAIT, |e| e.iter().any(|e| matches!(
        e,
        ServerEvent::PongReceived {
            protocol: false,
            ..
        }
    ))));
    let answered = t0.elapsed();
    assert!(
        answered < Duration::from_millis(500),
        "text ping answered after {answered:?}"
    );
    eprintln!("server text ping answered after {answered:?}");
    // The server's periodic protocol Pings are answered with Pong frames.
    assert!(srv.wait_for(WAIT, |e| e
        .iter()
        .any(|e| matches!(e, ServerEvent::PongReceived { protocol: true, .. }))));
    c.rec.wait_for("server ping events", WAIT, |l| {
        let k = |want: hb_heartbeat_kind| {
            l.iter()
                .any(|r| matches!(r, Rec::Heartbeat { kind, .. } if *kind == want as i32))
        };
        k(HB_HEARTBEAT_SERVER_PING) && k(HB_HEARTBEAT_SERVER_PROTOCOL_PING)
    });
    assert!(c.stats().server_pings_answered >= 2);
    // The server never had to drop us.
    assert!(!srv
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::DroppedUnresponsive { .. })));
    c.close();
}

#[test]
fn silent_server_heartbeat_timeout_then_reconnects() {
    let srv = server(None);
    let (interval, timeout, max) = (200u64, 100u64, 3u32);
    let cfg = Cfg::fast(interval, timeout, max);
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.wait_open(1);
    c.rec.wait_for("first pong", WAIT, |l| {
        l.iter()
            .any(|r| matches!(r, Rec::Heartbeat { kind, .. } if *kind == HB_HEARTBEAT_PONG as i32))
    });
    srv.set_silent(true);
    let log = c.rec.wait_for("heartbeat timeout", WAIT, |l| {
        has_state(l, HB_STATE_RECONNECTING, HB_REASON_HEARTBEAT_TIMEOUT)
    });
    // Exactly max_missed misses, counted 1..=max, before the timeout.
    let misses: Vec<u32> = log
        .iter()
        .filter_map(|r| match r {
            Rec::Heartbeat { kind, missed, .. } if *kind == HB_HEARTBEAT_MISSED as i32 => {
                Some(*missed)
            }
            _ => None,
        })
        .collect();
    assert_eq!(misses, vec![1, 2, 3]);
    // Detection: from the last pong to the verdict, within the documented bound (+ slack for the
    // real clock; the exact bound is tested on the virtual clock).
    let last_pong = log
        .iter()
        .rev()
        .filter_map(|r| match r {
            Rec::Heartbeat { kind, at, .. } if *kind == HB_HEARTBEAT_PONG as i32 => Some(*at),
            _ => None,
        })
        .next()
        .unwrap();
    let dead_at = log
        .iter()
        .find_map(|r| match r {
            Rec::State { state, at, .. } if *state == HB_STATE_RECONNECTING as i32 => Some(*at),
            _ => None,
        })
        .unwrap();
    let observed = dead_at - last_pong;
    let bound = Duration::from_millis(interval + max as u64 * timeout);
    eprintln!("silent server: declared dead {observed:?} after the last pong (bound {bound:?})");
    assert!(
        observed <= bound + Duration::from_millis(500),
        "{observed:?} > {bound:?}"
    );
    assert!(
        observed >= Duration::from_millis(max as u64 * timeout),
        "too early: {observed:?}"
    );
    // While silent, new handshakes hang: the client keeps trying. Then the server answers again.
    srv.set_silent(false);
    c.wait_open(2);
    c.close();
}

#[test]
fn killed_server_is_noticed_at_once_and_client_returns_when_it_is_back() {
    let srv = server(None);
    // Default heartbeat (30 s): noticing the loss must not depend on it.
    let cfg = Cfg::new();
    assert_eq!(hb_config_set_backoff(cfg.0, 20, 200), HB_OK);
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.wait_open(1);
    let t0 = Instant::now();
    srv.stop();
    let log = c.rec.wait_for("loss", WAIT, |l| {
        has_state(l, HB_STATE_RECONNECTING, HB_REASON_CONNECTION_LOST)
    });
    let noticed = t0.elapsed();
    assert!(
        noticed < Duration::from_secs(5),
        "loss noticed after {noticed:?}"
    );
    eprintln!("server stop noticed after {noticed:?}");
    // Attempts while it is down fail with connect errors and back off with growing attempts.
    c.rec.wait_for("failed attempts", WAIT, |l| {
        has_state(l, HB_STATE_RECONNECTING, HB_REASON_CONNECT_ERROR)
    });
    let delays: Vec<u64> = c
        .rec
        .events()
        .iter()
        .filter_map(|r| match r {
            Rec::State {
                state, delay_ms, ..
            } if *state == HB_STATE_RECONNECTING as i32 => Some(*delay_ms),
            _ => None,
        })
        .collect();
    assert!(delays.iter().all(|d| *d >= 10 && *d <= 200), "{delays:?}");
    drop(log);
    srv.restart().unwrap();
    c.wait_open(2);
    assert!(c.stats().connects >= 2);
    c.close();
}

#[test]
fn reset_is_noticed_at_once() {
    let srv = server(None);
    let c = TestClient::connect(&srv.url(), None);
    c.wait_open(1);
    srv.drop_all(DropKind::Rst);
    let log = c.rec.wait_for("reset", WAIT, |l| {
        has_state(l, HB_STATE_RECONNECTING, HB_REASON_CONNECTION_LOST)
    });
    let detail = log.iter().find_map(|r| match r {
        Rec::State { state, detail, .. } if *state == HB_STATE_RECONNECTING as i32 => {
            Some(detail.clone())
        }
        _ => None,
    });
    eprintln!("reset detail: {detail:?}");
    c.wait_open(2);
    c.close();
}

#[test]
fn http_401_closes_without_retry() {
    let srv = server(None);
    srv.refuse_handshakes(Some(401), None);
    let c = TestClient::connect(&srv.url(), None);
    let log = c
        .rec
        .wait_for("closed", WAIT, |l| count_state(l, HB_STATE_CLOSED) == 1);
    let closed = log.iter().find_map(|r| match r {
        Rec::State {
            state,
            reason,
            http_status,
            ..
        } if *state == HB_STATE_CLOSED as i32 => Some((*reason, *http_status)),
        _ => None,
    });
    assert_eq!(closed, Some((HB_REASON_HANDSHAKE_REJECTED as i32, 401)));
    assert_eq!(count_state(&log, HB_STATE_RECONNECTING), 0);
    assert_eq!(c.stats().connect_attempts, 1);
    assert_eq!(c.send_text("late"), HB_ERR_CLOSED);
    // The client ended by itself; the handle stays valid until hb_close, which still succeeds.
    c.close();
    assert_eq!(c.rec.released.load(Ordering::SeqCst), 1);
}

#[test]
fn http_503_is_retried_with_retry_after_then_connects() {
    let srv = server(None);
    srv.refuse_handshakes(Some(503), Some(0));
    let c = TestClient::connect(&srv.url(), Some(&Cfg::fast(1000, 500, 3)));
    c.rec.wait_for("two 503 retries", WAIT, |l| {
        l.iter()
            .filter(|r| matches!(r, Rec::State { state, reason, http_status: 503, .. }
                if *state == HB_STATE_RECONNECTING as i32 && *reason == HB_REASON_HANDSHAKE_REJECTED as i32))
            .count()
            >= 2
    });
    srv.refuse_handshakes(None, None);
    c.wait_open(1);
    c.close();
}

#[test]
fn offline_queue_is_flushed_in_order_and_overflow_is_refused() {
    let srv = server(None);
    srv.stop();
    let cfg = Cfg::fast(1000, 500, 3);
    assert_eq!(hb_config_set_offline_queue(cfg.0, 10, 1 << 20), HB_OK);
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.rec.wait_for("reconnecting", WAIT, |l| {
        count_state(l, HB_STATE_RECONNECTING) >= 1
    });
    for i in 0..10 {
        assert_eq!(c.send_text(&format!("offline-{i}")), HB_OK);
    }
    assert_eq!(c.send_text("one too many"), HB_ERR_QUEUE_FULL);
    assert_eq!(c.stats().queued_messages, 10);
    srv.restart().unwrap();
    c.wait_open(1);
    assert!(srv.wait_for(WAIT, |e| e
        .iter()
        .filter(|e| matches!(e, ServerEvent::Text { .. }))
        .count()
        >= 10));
    let want: Vec<String> = (0..10).map(|i| format!("offline-{i}")).collect();
    assert_eq!(srv.received_texts(), want);
    assert_eq!(c.stats().queued_messages, 0);
    // Offline queueing disabled: a send while not OPEN is refused outright.
    let cfg0 = Cfg::fast(1000, 500, 3);
    assert_eq!(hb_config_set_offline_queue(cfg0.0, 0, 0), HB_OK);
    let c0 = TestClient::connect("ws://127.0.0.1:1/", Some(&cfg0));
    assert_eq!(c0.send_text("x"), HB_ERR_NOT_OPEN);
    c0.close();
    c.close();
}

#[test]
fn oversize_inbound_message_closes_with_1009() {
    let srv = server(None);
    let cfg = Cfg::fast(1000, 500, 3);
    assert_eq!(hb_config_set_max_message_size(cfg.0, 1024), HB_OK);
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.wait_open(1);
    srv.send_binary_to_all(&[7u8; 1000]);
    c.rec.wait_for("small message", WAIT, |l| {
        l.iter().any(|r| matches!(r, Rec::Message { .. }))
    });
    srv.send_binary_to_all(&vec![7u8; 4096]);
    let log = c.rec.wait_for("1009", WAIT, |l| {
        has_state(l, HB_STATE_RECONNECTING, HB_REASON_MESSAGE_TOO_BIG)
    });
    assert!(log.iter().any(|r| matches!(
        r,
        Rec::State {
            close_code: 1009,
            ..
        }
    )));
    assert!(srv.wait_for(WAIT, |e| e.iter().any(|e| matches!(
        e,
        ServerEvent::CloseReceived {
            code: Some(1009),
            ..
        }
    ))));
    // Too big to send is refused at the call.
    let big = vec![0u8; 1025];
    assert_eq!(
        hb_send_binary(c.h, big.as_ptr(), big.len(), std::ptr::null_mut()),
        HB_ERR_MESSAGE_TOO_BIG
    );
    c.wait_open(2);
    c.close();
}

#[test]
fn close_from_inside_a_callback() {
    let srv = server(None);
    let c = TestClient::connect(&srv.url(), None);
    *c.rec.close_on.lock().unwrap() = Some(b"close-me".to_vec());
    c.wait_open(1);
    srv.send_text_to_all("close-me");
    let log = c
        .rec
        .wait_for("closed", WAIT, |l| count_state(l, HB_STATE_CLOSED) == 1);
    // One meaning of close on every thread: the waiting close is refused inside a callback
    // (it would deadlock) and leaves the handle valid; the non-waiting one closes.
    assert_eq!(
        *c.rec.waiting_close_inside.lock().unwrap(),
        Some(HB_ERR_IN_CALLBACK)
    );
    assert_eq!(*c.rec.close_status_inside.lock().unwrap(), Some(HB_OK));
    assert!(has_state(&log, HB_STATE_CLOSING, HB_REASON_USER_CLOSE));
    assert!(has_state(&log, HB_STATE_CLOSED, HB_REASON_USER_CLOSE));
    c.rec.wait_for("release", WAIT, |_| {
        c.rec.released.load(Ordering::SeqCst) == 1
    });
    // The handle died with the close inside the callback.
    assert_eq!(hb_close(c.h), HB_ERR_INVALID_HANDLE);
    assert!(srv.wait_for(WAIT, |e| e.iter().any(|e| matches!(
        e,
        ServerEvent::CloseReceived {
            code: Some(1000),
            ..
        }
    ))));
}

#[test]
fn close_while_events_are_in_flight_stops_callbacks() {
    let srv = server(None);
    let c = TestClient::connect(&srv.url(), None);
    c.wait_open(1);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop2 = stop.clone();
        let srv = &srv;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let stop = stop2;
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && n < 20_000 {
                    srv.send_text_to_all(&format!("m{n}"));
                    n += 1;
                }
                n
            });
            c.rec.wait_for("messages flowing", WAIT, |l| {
                l.iter()
                    .filter(|r| matches!(r, Rec::Message { .. }))
                    .count()
                    >= 50
            });
            c.close(); // asserts release ran before it returned
            let seen = c.rec.events().len();
            stop.store(true, Ordering::SeqCst);
            let n = h.join().unwrap();
            (seen, n)
        })
    };
    eprintln!(
        "events seen before close returned: {}, messages pushed: {}",
        flood.0, flood.1
    );
    assert_eq!(c.rec.late_callbacks.load(Ordering::SeqCst), 0);
    assert_eq!(
        c.rec.events().len(),
        flood.0,
        "no callback after hb_close returned"
    );
    assert_eq!(count_state(&c.rec.events(), HB_STATE_CLOSED), 1);
}

#[test]
fn eight_threads_send_while_another_closes_ledger_balances() {
    let srv = server(None);
    let cfg = Cfg::fast(1000, 500, 3);
    assert_eq!(hb_config_set_send_queue(cfg.0, 64, 1 << 20), HB_OK);
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.wait_open(1);
    let accepted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (c, accepted) = (&c, &accepted);
            s.spawn(move || {
                let mut i = 0u64;
                loop {
                    match c.send_text(&format!("t{t}-{i}")) {
                        HB_OK => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            i += 1;
                        }
                        HB_ERR_QUEUE_FULL => std::thread::yield_now(),
                        HB_ERR_CLOSED | HB_ERR_INVALID_HANDLE => break,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            });
        }
        // Let traffic build, then close from this thread.
        assert!(srv.wait_for(WAIT, |e| e
            .iter()
            .filter(|e| matches!(e, ServerEvent::Text { .. }))
            .count()
            >= 500));
        c.close();
    });
    assert!(srv.wait_for(WAIT, |e| e
        .iter()
        .any(|e| matches!(e, ServerEvent::Disconnected { .. }))));
    let received = srv.received_texts().len() as u64;
    let dropped: u64 = c
        .rec
        .events()
        .iter()
        .map(|r| match r {
            Rec::Dropped { count, .. } => *count,
            _ => 0,
        })
        .sum();
    let accepted = accepted.load(Ordering::SeqCst);
    eprintln!("accepted {accepted}, received {received}, reported dropped {dropped}");
    assert_eq!(
        accepted,
        received + dropped,
        "every accepted message is received or reported dropped"
    );
    // Per thread, the server saw each sender's messages in order.
    for t in 0..8 {
        let prefix = format!("t{t}-");
        let seq: Vec<u64> = srv
            .received_texts()
            .iter()
            .filter_map(|s| s.strip_prefix(&prefix).map(|n| n.parse().unwrap()))
            .collect();
        assert!(
            seq.windows(2).all(|w| w[1] == w[0] + 1),
            "thread {t} out of order"
        );
    }
}

#[test]
fn bad_inputs_get_error_statuses() {
    use std::ffi::CString;
    let srv = server(None);
    let c = TestClient::connect(&srv.url(), None);
    c.wait_open(1);
    // Sends: NULL with a length, invalid UTF-8, empty messages.
    assert_eq!(
        hb_send_text(c.h, std::ptr::null(), 5, std::ptr::null_mut()),
        HB_ERR_NULL
    );
    assert_eq!(
        hb_send_binary(c.h, std::ptr::null(), 5, std::ptr::null_mut()),
        HB_ERR_NULL
    );
    let bad = [0xffu8, 0xfe, 0x41];
    assert_eq!(
        hb_send_text(c.h, bad.as_ptr().cast(), bad.len(), std::ptr::null_mut()),
        HB_ERR_INVALID_UTF8
    );
    assert_eq!(
        hb_send_text(c.h, std::ptr::null(), 0, std::ptr::null_mut()),
        HB_OK
    );
    assert_eq!(
        hb_send_binary(c.h, std::ptr::null(), 0, std::ptr::null_mut()),
        HB_OK
    );
    // Handles: NULL, forged, and stale after close.
    assert_eq!(
        hb_send_text(std::ptr::null_mut(), c"x".as_ptr(), 1, std::ptr::null_mut()),
        HB_ERR_NULL
    );
    for forged in [0x1usize, 0xdead_beef, usize::MAX, (77usize << 32) | 1] {
        let h = forged as *mut hb_client;
        assert_eq!(
            hb_send_text(h, c"x".as_ptr(), 1, std::ptr::null_mut()),
            HB_ERR_INVALID_HANDLE,
            "{forged:#x}"
        );
        assert_eq!(hb_close(h), HB_ERR_INVALID_HANDLE);
    }
    let mut st = hb_stats::default();
    assert_eq!(
        hb_get_stats(c.h, &mut st),
        HB_ERR_INVALID_ARGUMENT,
        "size not set"
    );
    assert_eq!(hb_get_stats(c.h, std::ptr::null_mut()), HB_ERR_NULL);
    assert_eq!(
        hb_set_callbacks(c.h, std::ptr::null(), std::ptr::null_mut()),
        HB_ERR_NULL
    );
    let mut small = callbacks();
    small.size = 8;
    assert_eq!(
        hb_set_callbacks(c.h, &small, std::ptr::null_mut()),
        HB_ERR_INVALID_ARGUMENT
    );
    c.close();
    assert_eq!(hb_close(c.h), HB_ERR_INVALID_HANDLE, "double close");
    assert_eq!(c.send_text("after"), HB_ERR_INVALID_HANDLE);
    assert_eq!(hb_close(std::ptr::null_mut()), HB_ERR_NULL);

    // hb_connect: bad URLs and configs, with readable messages, and no handle.
    let connect = |url: &CString, cfg: *const hb_config| {
        let mut h = std::ptr::null_mut();
        let mut err = [0 as std::ffi::c_char; 128];
        let s = hb_connect(
            url.as_ptr(),
            cfg,
            std::ptr::null(),
            std::ptr::null_mut(),
            &mut h,
            err.as_mut_ptr(),
            err.len(),
        );
        let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        if s != HB_OK {
            assert!(h.is_null(), "no handle on error");
        }
        (s, msg)
    };
    let (s, m) = connect(&CString::new("http://x/").unwrap(), std::ptr::null());
    assert_eq!(s, HB_ERR_INVALID_URL);
    assert!(m.contains("ws://"), "{m}");
    assert_eq!(
        connect(
            &CString::new("wss://example.com/").unwrap(),
            std::ptr::null()
        )
        .0,
        HB_ERR_UNSUPPORTED
    );
    assert_eq!(
        connect(&CString::new("ws://h:99999/").unwrap(), std::ptr::null()).0,
        HB_ERR_INVALID_URL
    );
    let bad_utf8 = CString::new(vec![b'w', b's', 0xff]).unwrap();
    assert_eq!(connect(&bad_utf8, std::ptr::null()).0, HB_ERR_INVALID_UTF8);
    let mut h = std::ptr::null_mut();
    assert_eq!(
        hb_connect(
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null_mut(),
            &mut h,
            std::ptr::null_mut(),
            0
        ),
        HB_ERR_NULL
    );
    let url = CString::new(srv.url()).unwrap();
    assert_eq!(
        hb_connect(
            url.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0
        ),
        HB_ERR_NULL
    );
    let cfg = Cfg::new();
    assert_eq!(hb_config_set_ping_interval_ms(cfg.0, 1000), HB_OK);
    assert_eq!(hb_config_set_pong_timeout_ms(cfg.0, 5000), HB_OK);
    let (s, m) = connect(&url, cfg.0);
    assert_eq!(s, HB_ERR_INVALID_CONFIG);
    assert!(m.contains("pong_timeout"), "{m}");
    // Config setters: NULL config, out-of-range values, bad flags, bad text.
    assert_eq!(
        hb_config_set_ping_interval_ms(std::ptr::null_mut(), 1000),
        HB_ERR_NULL
    );
    assert_eq!(
        hb_config_set_ping_interval_ms(cfg.0, 0),
        HB_ERR_INVALID_ARGUMENT
    );
    assert_eq!(hb_config_set_max_missed(cfg.0, 0), HB_ERR_INVALID_ARGUMENT);
    assert_eq!(hb_config_set_reprobe(cfg.0, 2), HB_ERR_INVALID_ARGUMENT);
    assert_eq!(hb_config_set_liveness(cfg.0, 9), HB_ERR_INVALID_ARGUMENT);
    assert_eq!(
        hb_config_set_ping_text(cfg.0, bad.as_ptr().cast(), bad.len()),
        HB_ERR_INVALID_UTF8
    );
    assert_eq!(
        hb_config_set_ping_text(cfg.0, std::ptr::null(), 0),
        HB_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        hb_config_set_buffer_sizes(cfg.0, 1, 0),
        HB_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        hb_config_set_fatal_close_codes(cfg.0, [999u16].as_ptr(), 1),
        HB_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        hb_config_add_header(cfg.0, c"Host".as_ptr(), c"x".as_ptr()),
        HB_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        hb_config_add_header(cfg.0, c"X-Bad".as_ptr(), c"a\r\nb".as_ptr()),
        HB_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        hb_config_add_header(cfg.0, c"Authorization".as_ptr(), c"Bearer t".as_ptr()),
        HB_OK
    );
    assert_eq!(hb_runtime_set_threads(2), HB_ERR_ALREADY_STARTED);
    assert_eq!(hb_runtime_set_threads(0), HB_ERR_INVALID_ARGUMENT);
    let unknown = unsafe { std::ffi::CStr::from_ptr(hb_status_str(-999)) };
    assert_eq!(unknown.to_str().unwrap(), "unknown status");
    assert_eq!(
        unsafe { std::ffi::CStr::from_ptr(hb_status_str(HB_ERR_INVALID_HANDLE as i32)) }
            .to_str()
            .unwrap(),
        "not a live client handle (closed, stale or forged)"
    );
}

#[test]
fn client_without_callbacks_waits_until_they_are_set_and_loses_nothing() {
    let srv = server(None);
    let url = std::ffi::CString::new(srv.url()).unwrap();
    let mut h = std::ptr::null_mut();
    let s = hb_connect(
        url.as_ptr(),
        std::ptr::null(),
        std::ptr::null(),
        std::ptr::null_mut(),
        &mut h,
        std::ptr::null_mut(),
        0,
    );
    assert_eq!(s, HB_OK);
    // Queued before anything is connected.
    assert_eq!(
        hb_send_text(h, c"early".as_ptr(), 5, std::ptr::null_mut()),
        HB_OK
    );
    let rec = Recorder::new();
    let cb = callbacks();
    assert_eq!(
        hb_set_callbacks(h, &cb, Arc::into_raw(rec.clone()) as *mut _),
        HB_OK
    );
    let log = rec.wait_for("open", WAIT, |l| count_state(l, HB_STATE_OPEN) == 1);
    assert!(
        matches!(log[0], Rec::State { state, .. } if state == HB_STATE_CONNECTING as i32),
        "first event is CONNECTING"
    );
    assert!(srv.wait_for(WAIT, |e| e
        .iter()
        .any(|e| matches!(e, ServerEvent::Text { text, .. } if text == "early"))));
    assert_eq!(srv.received_texts(), ["early"]);
    // Replacing callbacks releases the old user_data exactly once; the new one gets events.
    let rec2 = Recorder::new();
    assert_eq!(
        hb_set_callbacks(h, &cb, Arc::into_raw(rec2.clone()) as *mut _),
        HB_OK
    );
    // The old user_data is released promptly, before any further event.
    rec.wait_for("old release", WAIT, |_| {
        rec.released.load(Ordering::SeqCst) == 1
    });
    srv.send_text_to_all("hello");
    rec2.wait_for("message on new callbacks", WAIT, |l| {
        l.iter().any(|r| matches!(r, Rec::Message { .. }))
    });

    assert_eq!(hb_close(h), HB_OK);
    assert_eq!(rec2.released.load(Ordering::SeqCst), 1);
    assert_eq!(rec.released.load(Ordering::SeqCst), 1);
}

#[test]
fn protocol_ping_mode_counts_pong_frames() {
    let srv = server(None);
    let cfg = Cfg::fast(100, 100, 3);
    assert_eq!(
        hb_config_set_heartbeat_mode(cfg.0, hb_heartbeat_mode::HB_HEARTBEAT_PROTOCOL as i32),
        HB_OK
    );
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.wait_open(1);
    c.rec.wait_for("2 pongs", WAIT, |l| {
        l.iter()
            .filter(
                |r| matches!(r, Rec::Heartbeat { kind, .. } if *kind == HB_HEARTBEAT_PONG as i32),
            )
            .count()
            >= 2
    });
    // No text pings were sent in this mode.
    assert!(!srv
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::ClientPing { .. })));
    c.close();
}

#[test]
fn server_close_code_in_fatal_set_stops_and_others_retry() {
    let srv = server(None);
    let c = TestClient::connect(&srv.url(), Some(&Cfg::fast(1000, 500, 3)));
    c.wait_open(1);
    srv.close_all(1001, "going away");
    c.rec.wait_for("retry after 1001", WAIT, |l| {
        l.iter().any(|r| {
            matches!(r, Rec::State { state, reason, close_code: 1001, .. }
            if *state == HB_STATE_RECONNECTING as i32 && *reason == HB_REASON_SERVER_CLOSE as i32)
        })
    });
    c.wait_open(2);
    srv.close_all(1008, "policy");
    c.rec.wait_for("closed after 1008", WAIT, |l| {
        l.iter().any(|r| {
            matches!(r, Rec::State { state, reason, close_code: 1008, .. }
            if *state == HB_STATE_CLOSED as i32 && *reason == HB_REASON_SERVER_CLOSE as i32)
        })
    });
    c.close();
}

#[test]
fn max_attempts_closes_the_client() {
    let cfg = Cfg::fast(1000, 500, 3);
    assert_eq!(hb_config_set_max_attempts(cfg.0, 2), HB_OK);
    // Port 1 on loopback: connection refused.
    let c = TestClient::connect("ws://127.0.0.1:1/", Some(&cfg));
    let log = c
        .rec
        .wait_for("closed", WAIT, |l| count_state(l, HB_STATE_CLOSED) == 1);
    assert!(has_state(&log, HB_STATE_CLOSED, HB_REASON_MAX_ATTEMPTS));
    assert_eq!(count_state(&log, HB_STATE_RECONNECTING), 2);
    assert_eq!(c.stats().connect_attempts, 3);
    c.close();
}

/// The (first, count, outcome) delivery reports in a log.
fn deliveries(log: &[Rec]) -> Vec<(u64, u64, i32)> {
    log.iter()
        .filter_map(|r| match r {
            Rec::Delivery {
                first,
                count,
                outcome,
            } => Some((*first, *count, *outcome)),
            _ => None,
        })
        .collect()
}

/// Ids reported with `outcome`, checking that reports come in order without gaps or overlaps.
fn reported(log: &[Rec], outcome: hb_delivery) -> u64 {
    let mut next = 1;
    let mut n = 0;
    for (first, count, o) in deliveries(log) {
        assert_eq!(
            first,
            next,
            "reports in order, no gap: {:?}",
            deliveries(log)
        );
        assert!(count > 0);
        next = first + count;
        if o == outcome as i32 {
            n += count;
        }
    }
    n
}

#[test]
fn pongs_and_the_close_handshake_confirm_delivery_by_id() {
    let srv = server(None);
    let cfg = Cfg::fast(200, 200, 5);
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.wait_open(1);
    for i in 1..=50 {
        assert_eq!(c.send_text(&format!("m{i}")), HB_OK);
    }
    // The next ping goes out after them; its pong vouches for all 50.
    let log = c.rec.wait_for("50 confirmed", WAIT, |l| {
        reported(l, hb_delivery::HB_DELIVERY_CONFIRMED) >= 50
    });
    assert_eq!(reported(&log, hb_delivery::HB_DELIVERY_CONFIRMED), 50);
    let s = c.stats();
    assert_eq!((s.messages_confirmed, s.messages_unconfirmed), (50, 0));
    let texts = srv.received_texts();
    assert_eq!(texts.len(), 50);
    // Sent and closed at once: the pong of the ping hb_close sends after them confirms them.
    for i in 51..=55 {
        assert_eq!(c.send_text(&format!("m{i}")), HB_OK);
    }
    c.close();
    let log = c.rec.events();
    assert_eq!(reported(&log, hb_delivery::HB_DELIVERY_CONFIRMED), 55);
    let last = deliveries(&log).last().copied();
    assert_eq!(
        last.map(|(f, n, o)| (f + n - 1, o)),
        Some((55, hb_delivery::HB_DELIVERY_CONFIRMED as i32))
    );
    assert_eq!(srv.received_texts().len(), 55);
}

#[test]
fn messages_written_into_a_dying_link_are_reported_unconfirmed() {
    // The server stops answering, so no pong vouches for anything written after the last one;
    // the verdict reports those as unconfirmed, by id, before RECONNECTING.
    let srv = server(None);
    let cfg = Cfg::fast(100, 100, 2);
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.wait_open(1);
    c.rec.wait_for("a pong", WAIT, |l| {
        l.iter()
            .any(|r| matches!(r, Rec::Heartbeat { kind, .. } if *kind == HB_HEARTBEAT_PONG as i32))
    });
    srv.set_silent(true);
    for i in 1..=20 {
        assert_eq!(c.send_text(&format!("m{i}")), HB_OK);
    }
    let log = c.rec.wait_for("reconnecting", WAIT, |l| {
        count_state(l, HB_STATE_RECONNECTING) >= 1
    });
    // A silent server still reads: the messages arrived, but nothing said so.
    assert_eq!(reported(&log, hb_delivery::HB_DELIVERY_UNCONFIRMED), 20);
    let at = log
        .iter()
        .position(|r| matches!(r, Rec::Delivery { .. }))
        .unwrap();
    let reconnecting = log
        .iter()
        .position(
            |r| matches!(r, Rec::State { state, .. } if *state == HB_STATE_RECONNECTING as i32),
        )
        .unwrap();
    assert!(at < reconnecting, "reported before RECONNECTING");
    assert_eq!(c.stats().messages_unconfirmed, 20);
    c.close();
}

#[test]
fn callbacks_and_stats_structs_from_an_older_header_are_accepted() {
    let srv = server(None);
    let rec = Recorder::new();
    let url = std::ffi::CString::new(srv.url()).unwrap();
    let mut cb = callbacks();
    let mut h = std::ptr::null_mut();
    let ud = Arc::into_raw(rec.clone()) as *mut std::ffi::c_void;
    let mut connect_with = |size: usize| {
        cb.size = size;
        let (null_cfg, null_err) = (std::ptr::null(), std::ptr::null_mut());
        hb_connect(url.as_ptr(), null_cfg, &cb, ud, &mut h, null_err, 0)
    };
    // One byte short of the struct as it was before `on_delivery`: refused.
    let older = std::mem::offset_of!(hb_callbacks, on_delivery);
    assert_eq!(connect_with(older - 1), HB_ERR_INVALID_ARGUMENT);
    // The older struct: accepted, and the field it does not have is taken as NULL (the
    // callback after `release` in memory is never read).
    assert_eq!(connect_with(older), HB_OK);
    let c = TestClient { h, rec };
    c.wait_open(1);
    assert_eq!(c.send_text("x"), HB_OK);
    // The older stats struct: its fields are filled, nothing past its size is written.
    let mut buf = [0xA5u8; std::mem::size_of::<hb_stats>()];
    let old = std::mem::offset_of!(hb_stats, messages_confirmed);
    buf[..std::mem::size_of::<usize>()].copy_from_slice(&old.to_ne_bytes());
    assert_eq!(hb_get_stats(c.h, buf.as_mut_ptr().cast()), HB_OK);
    assert!(
        buf[old..].iter().all(|&b| b == 0xA5),
        "wrote past the caller's size"
    );
    let stats: hb_stats = unsafe { buf.as_ptr().cast::<hb_stats>().read_unaligned() };
    assert_eq!(stats.size, old);
    assert_eq!(stats.state, HB_STATE_OPEN as i32);
    let mut short = hb_stats {
        size: old - 1,
        ..Default::default()
    };
    assert_eq!(hb_get_stats(c.h, &mut short), HB_ERR_INVALID_ARGUMENT);
    c.close();
    assert!(!c
        .rec
        .events()
        .iter()
        .any(|r| matches!(r, Rec::Delivery { .. })));
}

/// `on_log` tells the story of a healthy session at `HB_LOG_DEBUG` (f0e9d24: 0 lines): each
/// state change and why, the handshake, every ping and pong with its round trip, the server's
/// pings answered, the close; and an `Authorization` value never appears.
#[test]
fn log_tells_the_story() {
    let srv = server(Some(Duration::from_millis(50)));
    let cfg = Cfg::fast(60, 50, 3);
    assert_eq!(
        hb_config_set_log_level(cfg.0, hb_log_level::HB_LOG_DEBUG as i32),
        HB_OK
    );
    assert_eq!(
        hb_config_add_header(
            cfg.0,
            c"Authorization".as_ptr(),
            c"Bearer s3cr3t-t0ken".as_ptr()
        ),
        HB_OK
    );
    let c = TestClient::connect(&srv.url(), Some(&cfg));
    c.wait_open(1);
    c.rec.wait_for("pongs and server pings", WAIT, |l| {
        let pongs = l
            .iter()
            .filter(|e| matches!(e, Rec::Heartbeat { kind, .. } if *kind == HB_HEARTBEAT_PONG as i32))
            .count();
        let pings = l
            .iter()
            .filter(|e| matches!(e, Rec::Heartbeat { kind, .. } if *kind == HB_HEARTBEAT_SERVER_PING as i32))
            .count();
        pongs >= 2 && pings >= 2
    });
    c.close();
    let lines: Vec<(i32, String)> = c
        .rec
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Rec::Log { level, message } => Some((level, message)),
            _ => None,
        })
        .collect();
    for (level, l) in &lines {
        eprintln!("{level} {l}");
    }
    let has = |level: hb_log_level, needle: &str| {
        lines
            .iter()
            .any(|(lv, l)| *lv == level as i32 && l.contains(needle))
    };
    use hbws::ffi::hb_log_level::*;
    assert!(has(HB_LOG_INFO, "CONNECTING"), "connect attempt");
    assert!(has(HB_LOG_INFO, "OPEN"), "open");
    assert!(has(HB_LOG_DEBUG, "handshake"), "handshake");
    assert!(has(HB_LOG_DEBUG, "heartbeat ping"), "our ping");
    assert!(
        has(HB_LOG_DEBUG, "round trip"),
        "its pong with the round trip"
    );
    assert!(has(HB_LOG_DEBUG, "server ping answered"), "server ping");
    assert!(has(HB_LOG_INFO, "CLOSING (USER_CLOSE)"), "closing, and why");
    assert!(has(HB_LOG_INFO, "CLOSED (USER_CLOSE)"), "closed, and why");
    assert!(
        !lines.iter().any(|(_, l)| l.contains("s3cr3t")),
        "a header value was logged"
    );
}

/// Each send returns its own id, so concurrent senders need no lock to know theirs: four
/// threads send 250 messages each; the ids they got are exactly 1..=1000, and each id's
/// delivery report matches the message that got it.
#[test]
fn send_ids_are_returned_to_each_sender() {
    let srv = server(None);
    let c = TestClient::connect(&srv.url(), Some(&Cfg::fast(50, 50, 3)));
    c.wait_open(1);
    let h = c.h as usize;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..250 {
                    let text = format!("t{t}-{i}");
                    let mut id = 0u64;
                    assert_eq!(
                        hb_send_text(
                            h as *mut hb_client,
                            text.as_ptr().cast(),
                            text.len(),
                            &mut id
                        ),
                        HB_OK
                    );
                    mine.push((id, text));
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(
        all.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );
    // The server received them in id order (the queue is FIFO by id).
    assert!(srv.wait_for(WAIT, |e| e
        .iter()
        .filter(|e| matches!(e, ServerEvent::Text { .. }))
        .count()
        >= 1000));
    let got = srv.received_texts();
    let want: Vec<String> = all.into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, want);
    c.close();
}
