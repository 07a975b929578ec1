//! Detection and reset, through the C ABI, against the bench server in a separate process.
//!
//! `detect TRIALS`
//!
//! Silent link: interval 1 s, pong timeout 0.5 s, 3 misses (bound 2500 ms). The server goes
//! silent (`set_silent(true)`: TCP open, nothing answered) right after a pong; observed = last
//! pong callback → RECONNECTING callback. Reset: the server is told to RST every connection
//! (`drop_all(DropKind::Rst)`); observed = writing that command to the server's stdin →
//! RECONNECTING callback (an upper bound on RST → callback: it includes the pipe and the server's
//! wake-up). One server process per trial. Prints one JSON line.

use std::ffi::{c_void, CString};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hbws::ffi::*;
use hbws_bench::*;

#[derive(Default)]
struct Obs {
    last_pong: Option<Instant>,
    pongs: u32,
    open: bool,
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
    let now = Instant::now();
    let s = &*(ud as *const Shared);
    let mut o = s.obs.lock().unwrap();
    if (*ev).state == hb_state::HB_STATE_OPEN as i32 {
        o.open = true;
    }
    if (*ev).state == hb_state::HB_STATE_RECONNECTING as i32 && o.dead_at.is_none() {
        o.dead_at = Some(now);
        o.reason = (*ev).reason;
    }
    s.cv.notify_all();
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

fn client(cfg: *const hb_config, url: &str) -> (*mut hb_client, Arc<Shared>) {
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        on_heartbeat: Some(on_heartbeat),
        release: Some(release),
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        obs: Mutex::default(),
        cv: Condvar::new(),
    });
    let url = CString::new(url).unwrap();
    let mut h = std::ptr::null_mut();
    let ud = Arc::into_raw(shared.clone()) as *mut c_void;
    assert_eq!(
        hb_connect(url.as_ptr(), cfg, &cb, ud, &mut h, std::ptr::null_mut(), 0),
        hb_status::HB_OK
    );
    (h, shared)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    let list: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    format!(
        "{{\"median\":{med:.2},\"min\":{:.2},\"max\":{:.2},\"all\":[{}]}}",
        v[0],
        v[v.len() - 1],
        list.join(",")
    )
}

fn main() {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let (interval, timeout, max) = (1000u64, 500u64, 3u32);
    let bound = interval + max as u64 * timeout;
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

    // Silent-link detection: trials run two at a time (separate servers) to halve the wall time.
    let mut detect = Vec::new();
    let mut t = 0;
    while t < trials {
        let batch = (trials - t).min(2);
        let mut runs = Vec::new();
        for _ in 0..batch {
            let srv = SpawnedServer::start(0, &[]);
            let (h, sh) = client(cfg, &srv.url());
            runs.push((srv, h, sh));
        }
        // Stagger the two so their verdicts do not coincide.
        for (srv, h, sh) in runs.iter_mut() {
            wait(sh, "first pong", |o| o.pongs >= 1);
            let seen = sh.obs.lock().unwrap().pongs;
            wait(sh, "next pong", |o| o.pongs > seen);
            srv.cmd("silent");
            let _ = h;
        }
        for (srv, h, sh) in runs {
            wait(&sh, "verdict", |o| o.dead_at.is_some());
            let o = sh.obs.lock().unwrap();
            assert_eq!(o.reason, hb_reason::HB_REASON_HEARTBEAT_TIMEOUT as i32);
            detect.push(ms(o.dead_at.unwrap() - o.last_pong.unwrap()));
            drop(o);
            srv.kill();
            hb_close(h);
        }
        t += batch;
    }

    // Reset: RST from the server while OPEN.
    let mut reset = Vec::new();
    let mut srv = SpawnedServer::start(0, &[]);
    for _ in 0..trials {
        let (h, sh) = client(cfg, &srv.url());
        wait(&sh, "open", |o| o.open);
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        srv.cmd("rst");
        wait(&sh, "reset noticed", |o| o.dead_at.is_some());
        let o = sh.obs.lock().unwrap();
        assert_eq!(o.reason, hb_reason::HB_REASON_CONNECTION_LOST as i32);
        reset.push(ms(o.dead_at.unwrap() - t0));
        drop(o);
        hb_close(h);
    }
    drop(srv);
    hb_config_free(cfg);
    let med = {
        let mut v = detect.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "{{\"trials\":{trials},\"interval_ms\":{interval},\"pong_timeout_ms\":{timeout},\"max_missed\":{max},\"detect_bound_ms\":{bound},\"detect_ms\":{},\"detect_over_bound_pct\":{:.3},\"reset_ms\":{}}}",
        stats(detect),
        (med / bound as f64 - 1.0) * 100.0,
        stats(reset)
    );
}
