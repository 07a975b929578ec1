//! Scale benchmark: N heartbeating clients in one process, driven through the C ABI.
//!
//! `cargo run --release --example scale -- URL N [INTERVAL_MS]` against a server in another
//! process (e.g. `cargo run --release -p hbws-server -- --port 9001 --interval-ms 0`). Prints one
//! JSON line: connections, RSS per client (KiB, RSS after all are open and two heartbeat intervals
//! have passed, minus RSS before the first client), threads, pongs, misses.

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hbws::ffi::*;

static OPEN: AtomicU64 = AtomicU64::new(0);
static PONGS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn on_state(_: *mut c_void, ev: *const hb_state_event) {
    match (*ev).state {
        s if s == hb_state::HB_STATE_OPEN as i32 => {
            OPEN.fetch_add(1, Relaxed);
        }
        s if s == hb_state::HB_STATE_RECONNECTING as i32 => {
            LOST.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}

unsafe extern "C" fn on_heartbeat(_: *mut c_void, ev: *const hb_heartbeat_event) {
    match (*ev).kind {
        k if k == hb_heartbeat_kind::HB_HEARTBEAT_PONG as i32 => {
            PONGS.fetch_add(1, Relaxed);
        }
        k if k == hb_heartbeat_kind::HB_HEARTBEAT_MISSED as i32 => {
            MISSES.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn wait_until(what: &str, timeout: Duration, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: scale URL N [INTERVAL_MS]");
    let n: u64 = args.next().and_then(|a| a.parse().ok()).expect("N");
    let interval: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);

    let mut cfg = std::ptr::null_mut();
    assert_eq!(hb_config_new(&mut cfg), hb_status::HB_OK);
    assert_eq!(
        hb_config_set_ping_interval_ms(cfg, interval),
        hb_status::HB_OK
    );
    assert_eq!(
        hb_config_set_pong_timeout_ms(cfg, interval.min(10_000)),
        hb_status::HB_OK
    );
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        on_heartbeat: Some(on_heartbeat),
        ..Default::default()
    };
    let curl = CString::new(url).unwrap();
    let rss0 = status_kib("VmRSS:");
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut h = std::ptr::null_mut();
        let st = hb_connect(
            curl.as_ptr(),
            cfg,
            &cb,
            std::ptr::null_mut(),
            &mut h,
            std::ptr::null_mut(),
            0,
        );
        assert_eq!(st, hb_status::HB_OK);
        handles.push(h as usize);
        // Do not outrun the server's accept backlog.
        while OPEN.load(Relaxed) + 512 < handles.len() as u64 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    wait_until("all open", Duration::from_secs(120), || {
        OPEN.load(Relaxed) >= n
    });
    let connect_s = t0.elapsed().as_secs_f64();
    // Two full heartbeat intervals with every client pinging.
    let pongs0 = PONGS.load(Relaxed);
    wait_until(
        "two heartbeats each",
        Duration::from_millis(interval * 4 + 60_000),
        || PONGS.load(Relaxed) >= pongs0 + 2 * n,
    );
    let rss1 = status_kib("VmRSS:");
    let kib_per_conn = (rss1 - rss0) as f64 / n as f64;
    println!(
        "{{\"conns\":{n},\"kib_per_conn\":{kib_per_conn:.2},\"rss0_kib\":{rss0},\"rss1_kib\":{rss1},\"threads\":{},\"pongs\":{},\"false_misses\":{},\"lost\":{},\"connect_s\":{connect_s:.2}}}",
        threads(),
        PONGS.load(Relaxed),
        MISSES.load(Relaxed),
        LOST.load(Relaxed)
    );
    for h in handles {
        hb_close(h as *mut hb_client);
    }
    hb_config_free(cfg);
}
