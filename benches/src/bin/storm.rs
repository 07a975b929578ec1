//! Reconnect storm: N hbws clients on one server process; the server is SIGKILLed, stays down
//! DOWN_MS, and is started again on the same port. Attempt timestamps come from the CONNECTING
//! state callbacks.
//!
//! `storm N JITTER(0|1) DOWN_MS [BASE_MS CAP_MS]` (backoff defaults 1000 / 30000, the library's)
//!
//! Prints one JSON line: time from the kill (and from the restart) until all N are OPEN again,
//! attempts per 100 ms window (peak, the uniform spread = attempts / windows spanned, and the
//! whole histogram for the plot).

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hbws::ffi::*;
use hbws_bench::*;

static OPEN: AtomicU64 = AtomicU64::new(0);
static REOPEN: AtomicU64 = AtomicU64::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
static ATTEMPTS: Mutex<Vec<u64>> = Mutex::new(Vec::new());
static LAST_OPEN_NS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn on_state(_: *mut c_void, ev: *const hb_state_event) {
    let s = (*ev).state;
    if s == hb_state::HB_STATE_OPEN as i32 {
        if ARMED.load(Relaxed) {
            REOPEN.fetch_add(1, Relaxed);
            LAST_OPEN_NS.fetch_max(now_ns(), Relaxed);
        } else {
            OPEN.fetch_add(1, Relaxed);
        }
    } else if s == hb_state::HB_STATE_CONNECTING as i32 && ARMED.load(Relaxed) {
        ATTEMPTS.lock().unwrap().push(now_ns());
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let n: u64 = a[1].parse().unwrap();
    let jitter: i32 = a[2].parse().unwrap();
    let down_ms: u64 = a[3].parse().unwrap();
    let base: u64 = a.get(4).map(|x| x.parse().unwrap()).unwrap_or(1000);
    let cap: u64 = a.get(5).map(|x| x.parse().unwrap()).unwrap_or(30000);
    now_ns();
    ATTEMPTS.lock().unwrap().reserve(n as usize * 16);
    let srv = SpawnedServer::start(0, &[]);
    let port = srv.port;
    let mut cfg = std::ptr::null_mut();
    assert_eq!(hb_config_new(&mut cfg), hb_status::HB_OK);
    assert_eq!(hb_config_set_backoff(cfg, base, cap), hb_status::HB_OK);
    assert_eq!(hb_config_set_backoff_jitter(cfg, jitter), hb_status::HB_OK);
    // Proven after 1 s up, so the storm starts from attempt 1 for everyone.
    assert_eq!(hb_config_set_stable_after_ms(cfg, 1000), hb_status::HB_OK);
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        ..Default::default()
    };
    let url = CString::new(srv.url()).unwrap();
    for i in 0..n {
        // The handle is leaked on purpose: the process exits.
        let _ = hbws_bench::connect(&url, cfg, &cb, std::ptr::null_mut());
        while OPEN.load(Relaxed) + 512 < i + 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while OPEN.load(Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "initial connect stalled at {}",
            OPEN.load(Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1500));
    ARMED.store(true, Relaxed);
    let t_kill = now_ns();
    srv.kill();
    std::thread::sleep(Duration::from_millis(down_ms));
    let srv = SpawnedServer::start(port, &[]);
    let t_up = now_ns();
    let deadline = Instant::now() + Duration::from_millis(cap * 3 + 60_000);
    while REOPEN.load(Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "storm: only {} of {n} back",
            REOPEN.load(Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t_all = LAST_OPEN_NS.load(Relaxed);
    let att = ATTEMPTS.lock().unwrap().clone();
    let first = *att.iter().min().unwrap();
    let last = *att.iter().max().unwrap();
    let win = 100_000_000u64;
    let nwin = ((last - t_kill) / win + 1) as usize;
    let mut hist = vec![0u64; nwin];
    for &t in &att {
        hist[((t - t_kill) / win) as usize] += 1;
    }
    let peak = *hist.iter().max().unwrap();
    // Uniform spread: the same attempts spread evenly over the windows from first to last.
    let spanned = ((last - first) / win + 1) as f64;
    let uniform = att.len() as f64 / spanned;
    let h: Vec<String> = hist.iter().map(|x| x.to_string()).collect();
    println!(
        "{{\"storm_clients\":{n},\"jitter\":{jitter},\"down_ms\":{down_ms},\"backoff_base_ms\":{base},\"backoff_cap_ms\":{cap},\"storm_all_open_ms\":{:.1},\"storm_all_open_after_restart_ms\":{:.1},\"attempts\":{},\"storm_peak_per_100ms\":{peak},\"storm_uniform_per_100ms\":{uniform:.1},\"storm_peak_over_uniform\":{:.2},\"first_attempt_ms\":{:.1},\"last_attempt_ms\":{:.1},\"hist_100ms\":[{}]}}",
        (t_all - t_kill) as f64 / 1e6,
        (t_all.saturating_sub(t_up)) as f64 / 1e6,
        att.len(),
        peak as f64 / uniform,
        (first - t_kill) as f64 / 1e6,
        (last - t_kill) as f64 / 1e6,
        h.join(",")
    );
    drop(srv);
    std::process::exit(0);
}
