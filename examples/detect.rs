//! Detection-time measurement: how long after the server goes silent does a client declare the
//! link dead, against the documented bound `ping_interval + max_missed × pong_timeout`?
//!
//! `cargo run --release --example detect [-- TRIALS]` (default 5 trials; interval 1 s, pong
//! timeout 0.5 s, 3 misses, so the bound is 2.5 s). The client is driven through the C ABI; the
//! time is measured from the last pong (heartbeat callback) to the RECONNECTING state callback.
//! Silence starts right after a pong, so the observed time should equal the bound up to
//! scheduling noise.

use std::ffi::{c_void, CString};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hbws::ffi::*;
use hbws_server::{Server, ServerConfig};

#[derive(Default)]
struct Obs {
    last_pong: Option<Instant>,
    pongs: u32,
    dead_at: Option<Instant>,
    reason: i32,
}

struct Shared {
    obs: Mutex<Obs>,
    cv: Condvar,
}

unsafe extern "C" fn on_heartbeat(ud: *mut c_void, ev: *const hb_heartbeat_event) {
    let s = &*(ud as *const Shared);
    if (*ev).kind == hb_heartbeat_kind::HB_HEARTBEAT_PONG as i32 {
        let mut o = s.obs.lock().unwrap();
        o.last_pong = Some(Instant::now());
        o.pongs += 1;
        s.cv.notify_all();
    }
}

unsafe extern "C" fn on_state(ud: *mut c_void, ev: *const hb_state_event) {
    let s = &*(ud as *const Shared);
    if (*ev).state == hb_state::HB_STATE_RECONNECTING as i32 {
        let mut o = s.obs.lock().unwrap();
        if o.dead_at.is_none() {
            o.dead_at = Some(Instant::now());
            o.reason = (*ev).reason;
        }
        s.cv.notify_all();
    }
}

unsafe extern "C" fn release(ud: *mut c_void) {
    drop(Arc::from_raw(ud as *const Shared));
}

fn wait(s: &Shared, what: &str, pred: impl Fn(&Obs) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut o = s.obs.lock().unwrap();
    while !pred(&o) {
        let now = Instant::now();
        assert!(now < deadline, "timed out waiting for {what}");
        o = s.cv.wait_timeout(o, deadline - now).unwrap().0;
    }
}

fn main() {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let (interval, timeout, max) = (1000u64, 500u64, 3u32);
    let bound = Duration::from_millis(interval + max as u64 * timeout);
    let mut cfg = std::ptr::null_mut();
    assert_eq!(hb_config_new(&mut cfg), hb_status::HB_OK);
    assert_eq!(
        hb_config_set_ping_interval_ms(cfg, interval),
        hb_status::HB_OK
    );
    assert_eq!(
        hb_config_set_pong_timeout_ms(cfg, timeout),
        hb_status::HB_OK
    );
    assert_eq!(hb_config_set_max_missed(cfg, max), hb_status::HB_OK);
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        on_heartbeat: Some(on_heartbeat),
        release: Some(release),
        ..Default::default()
    };
    println!("silent-server detection: interval {interval} ms, pong timeout {timeout} ms, max missed {max}");
    println!("documented bound: {} ms", bound.as_millis());
    let mut observed = Vec::new();
    for trial in 1..=trials {
        let srv = Server::start(ServerConfig {
            ping_interval: None,
            ..Default::default()
        })
        .unwrap();
        let shared = Arc::new(Shared {
            obs: Mutex::default(),
            cv: Condvar::new(),
        });
        let url = CString::new(srv.url()).unwrap();
        let mut h = std::ptr::null_mut();
        let ud = Arc::into_raw(shared.clone()) as *mut c_void;
        let st = hb_connect(url.as_ptr(), cfg, &cb, ud, &mut h, std::ptr::null_mut(), 0);
        assert_eq!(st, hb_status::HB_OK);
        wait(&shared, "first pong", |o| o.pongs >= 1);
        // Go silent right after a pong: the worst case the bound describes.
        let seen = shared.obs.lock().unwrap().pongs;
        wait(&shared, "next pong", |o| o.pongs > seen);
        srv.set_silent(true);
        wait(&shared, "verdict", |o| o.dead_at.is_some());
        let o = shared.obs.lock().unwrap();
        assert_eq!(o.reason, hb_reason::HB_REASON_HEARTBEAT_TIMEOUT as i32);
        let d = o.dead_at.unwrap() - o.last_pong.unwrap();
        drop(o);
        observed.push(d);
        println!(
            "trial {trial}: declared dead {:.1} ms after the last pong ({:+.2}% of the bound)",
            d.as_secs_f64() * 1e3,
            (d.as_secs_f64() / bound.as_secs_f64() - 1.0) * 100.0
        );
        assert_eq!(hb_close(h), hb_status::HB_OK);
    }
    hb_config_free(cfg);
    observed.sort();
    let median = observed[observed.len() / 2];
    println!(
        "median {:.1} ms, max {:.1} ms, bound {} ms",
        median.as_secs_f64() * 1e3,
        observed.last().unwrap().as_secs_f64() * 1e3,
        bound.as_millis()
    );
}
