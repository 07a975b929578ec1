//! Test support: a recorder of C-ABI callbacks, and helpers to drive the exported functions.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hbws::ffi::*;

/// Generous bound for waiting on a real-socket event.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq)]
pub enum Rec {
    State {
        state: i32,
        reason: i32,
        attempt: u32,
        close_code: u16,
        http_status: u16,
        delay_ms: u64,
        detail: String,
        at: Instant,
    },
    Message {
        kind: i32,
        data: Vec<u8>,
    },
    Heartbeat {
        kind: i32,
        missed: u32,
        rtt_us: u64,
        at: Instant,
    },
    Dropped {
        count: u64,
        bytes: u64,
        reason: i32,
    },
    Log {
        level: i32,
        message: String,
    },
    Delivery {
        first: u64,
        count: u64,
        outcome: i32,
    },
}

/// What a client's callbacks saw. Passed as `user_data` (an `Arc` turned into a raw pointer and
/// given back by `release`).
#[derive(Default)]
pub struct Recorder {
    pub log: Mutex<Vec<Rec>>,
    pub cv: Condvar,
    pub released: AtomicUsize,
    /// Set once `hb_close` has returned; any callback after that is a violation.
    pub close_returned: AtomicBool,
    pub late_callbacks: AtomicUsize,
    /// Handle to close from inside the message callback when a text equals `close_on`.
    pub self_handle: AtomicUsize,
    pub close_on: Mutex<Option<Vec<u8>>>,
    pub close_status_inside: Mutex<Option<hb_status>>,
    /// What the waiting `hb_close` said inside the callback, tried first.
    pub waiting_close_inside: Mutex<Option<hb_status>>,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    fn push(&self, r: Rec) {
        if self.close_returned.load(Ordering::SeqCst) {
            self.late_callbacks.fetch_add(1, Ordering::SeqCst);
        }
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        self.cv.notify_all();
    }

    pub fn events(&self) -> Vec<Rec> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `pred` holds on the log; panics with the log after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Rec]) -> bool,
    ) -> Vec<Rec> {
        let deadline = Instant::now() + timeout;
        let mut g = self.log.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if pred(&g) {
                return g.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let events = g.clone();
                drop(g);
                panic!("timed out waiting for {what}; events: {events:#?}");
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn states(&self) -> Vec<(i32, i32)> {
        self.events()
            .into_iter()
            .filter_map(|r| match r {
                Rec::State { state, reason, .. } => Some((state, reason)),
                _ => None,
            })
            .collect()
    }
}

pub fn count_state(log: &[Rec], want: hb_state) -> usize {
    log.iter()
        .filter(|r| matches!(r, Rec::State { state, .. } if *state == want as i32))
        .count()
}

pub fn has_state(log: &[Rec], want: hb_state, why: hb_reason) -> bool {
    log.iter().any(|r| matches!(r, Rec::State { state, reason, .. } if *state == want as i32 && *reason == why as i32))
}

fn rec(ud: *mut c_void) -> &'static Recorder {
    // SAFETY: user_data is always an Arc<Recorder> raw pointer kept alive until release.
    unsafe { &*(ud as *const Recorder) }
}

unsafe extern "C" fn on_state(ud: *mut c_void, ev: *const hb_state_event) {
    let ev = &*ev;
    let detail = CStr::from_ptr(ev.detail).to_str().unwrap().to_owned();
    assert_eq!(detail.len(), ev.detail_len);
    rec(ud).push(Rec::State {
        state: ev.state,
        reason: ev.reason,
        attempt: ev.attempt,
        close_code: ev.close_code,
        http_status: ev.http_status,
        delay_ms: ev.delay_ms,
        detail,
        at: Instant::now(),
    });
}

unsafe extern "C" fn on_message(ud: *mut c_void, kind: i32, data: *const u8, len: usize) {
    let data = if len == 0 {
        Vec::new()
    } else {
        std::slice::from_raw_parts(data, len).to_vec()
    };
    let r = rec(ud);
    let close_now = r
        .close_on
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_deref()
        == Some(&data[..]);
    r.push(Rec::Message { kind, data });
    if close_now {
        let h = r.self_handle.load(Ordering::SeqCst) as *mut hb_client;
        *r.waiting_close_inside
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(hb_close(h));
        *r.close_status_inside
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            Some(hb_close_start(h, 1000, std::ptr::null(), 0));
    }
}

unsafe extern "C" fn on_heartbeat(ud: *mut c_void, ev: *const hb_heartbeat_event) {
    let ev = &*ev;
    rec(ud).push(Rec::Heartbeat {
        kind: ev.kind,
        missed: ev.missed,
        rtt_us: ev.rtt_us,
        at: Instant::now(),
    });
}

unsafe extern "C" fn on_dropped(ud: *mut c_void, count: u64, bytes: u64, reason: i32) {
    rec(ud).push(Rec::Dropped {
        count,
        bytes,
        reason,
    });
}

unsafe extern "C" fn on_delivery(ud: *mut c_void, first: u64, count: u64, outcome: i32) {
    rec(ud).push(Rec::Delivery {
        first,
        count,
        outcome,
    });
}

unsafe extern "C" fn on_log(ud: *mut c_void, level: i32, msg: *const c_char, len: usize) {
    let m = CStr::from_ptr(msg).to_str().unwrap().to_owned();
    assert_eq!(m.len(), len);
    rec(ud).push(Rec::Log { level, message: m });
}

unsafe extern "C" fn release(ud: *mut c_void) {
    let r = Arc::from_raw(ud as *const Recorder);
    r.released.fetch_add(1, Ordering::SeqCst);
    r.cv.notify_all();
}

pub fn callbacks() -> hb_callbacks {
    hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        on_message: Some(on_message),
        on_heartbeat: Some(on_heartbeat),
        on_dropped: Some(on_dropped),
        on_log: Some(on_log),
        release: Some(release),
        on_delivery: Some(on_delivery),
    }
}

/// A config built through the C setters.
pub struct Cfg(pub *mut hb_config);

impl Cfg {
    pub fn new() -> Cfg {
        let mut p = std::ptr::null_mut();
        assert_eq!(hb_config_new(&mut p), hb_status::HB_OK);
        Cfg(p)
    }
    /// Short heartbeat for real-socket tests.
    pub fn fast(interval_ms: u64, timeout_ms: u64, max_missed: u32) -> Cfg {
        let c = Cfg::new();
        assert_eq!(
            hb_config_set_ping_interval_ms(c.0, interval_ms),
            hb_status::HB_OK
        );
        assert_eq!(
            hb_config_set_pong_timeout_ms(c.0, timeout_ms),
            hb_status::HB_OK
        );
        assert_eq!(hb_config_set_max_missed(c.0, max_missed), hb_status::HB_OK);
        assert_eq!(hb_config_set_backoff(c.0, 20, 200), hb_status::HB_OK);
        assert_eq!(hb_config_set_backoff_min_ms(c.0, 10), hb_status::HB_OK);
        assert_eq!(
            hb_config_set_connect_timeout_ms(c.0, 2000),
            hb_status::HB_OK
        );
        c
    }
}

impl Drop for Cfg {
    fn drop(&mut self) {
        hb_config_free(self.0);
    }
}

/// A client connected through `hb_connect` with a recorder.
pub struct TestClient {
    pub h: *mut hb_client,
    pub rec: Arc<Recorder>,
}

// The handle is an id; sending it across threads is what the API promises to allow.
unsafe impl Send for TestClient {}
unsafe impl Sync for TestClient {}

impl TestClient {
    pub fn connect(url: &str, cfg: Option<&Cfg>) -> TestClient {
        let rec = Recorder::new();
        let ud = Arc::into_raw(rec.clone()) as *mut c_void;
        let url = CString::new(url).unwrap();
        let cb = callbacks();
        let mut h = std::ptr::null_mut();
        let mut err = [0 as c_char; 256];
        let s = hb_connect(
            url.as_ptr(),
            cfg.map_or(std::ptr::null(), |c| c.0),
            &cb,
            ud,
            &mut h,
            err.as_mut_ptr(),
            err.len(),
        );
        assert_eq!(s, hb_status::HB_OK, "{:?}", unsafe {
            CStr::from_ptr(err.as_ptr())
        });
        rec.self_handle.store(h as usize, Ordering::SeqCst);
        TestClient { h, rec }
    }

    pub fn wait_open(&self, n: usize) -> Vec<Rec> {
        self.rec.wait_for(&format!("OPEN #{n}"), WAIT, |l| {
            count_state(l, hb_state::HB_STATE_OPEN) >= n
        })
    }

    pub fn send_text(&self, s: &str) -> hb_status {
        hb_send_text(self.h, s.as_ptr().cast(), s.len(), std::ptr::null_mut())
    }

    pub fn stats(&self) -> hb_stats {
        let mut s = hb_stats {
            size: std::mem::size_of::<hb_stats>(),
            ..Default::default()
        };
        assert_eq!(hb_get_stats(self.h, &mut s), hb_status::HB_OK);
        s
    }

    /// `hb_close` from this (non-runtime) thread; checks that release ran before it returned.
    pub fn close(&self) {
        assert_eq!(hb_close(self.h), hb_status::HB_OK);
        self.rec.close_returned.store(true, Ordering::SeqCst);
        assert_eq!(
            self.rec.released.load(Ordering::SeqCst),
            1,
            "release must run before hb_close returns"
        );
    }
}
