//! Per-message cost: K echo round trips of a 32-byte text message.
//!
//! `echo hbws|raw URL K [--lat]`
//!
//! hbws: through the C ABI; the first message is sent from the main thread once OPEN, every
//! next one with `hb_send_text` from inside the message callback (heartbeat every 24 h, so none
//! in the run; default sizes: read up to 4096 per call, write 0). raw: tokio-tungstenite on a
//! current_thread runtime, read buffer 512 / write 0 (its best: it keeps and zero-fills that
//! buffer), send then read. `--lat` records each round trip's wall time
//! (0.1 µs resolution) and prints p50/p99 (left off for callgrind runs so timing code is not
//! counted).
//! K = 0 connects, opens and closes only: the baseline subtracted under callgrind.

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hbws::ffi::*;
use hbws_bench::*;

const MSG: &str = "0123456789abcdef0123456789abcdef";

static K: AtomicU64 = AtomicU64::new(0);
static GOT: AtomicU64 = AtomicU64::new(0);
static SENT_AT: AtomicU64 = AtomicU64::new(0);
static LAT: AtomicBool = AtomicBool::new(false);
static HIST: Hist = Hist::new();
static DONE: Mutex<(bool, bool)> = Mutex::new((false, false)); // (open, finished)
static CV: Condvar = Condvar::new();
static HANDLE: AtomicU64 = AtomicU64::new(0);

fn signal(f: impl FnOnce(&mut (bool, bool))) {
    let mut g = DONE.lock().unwrap();
    f(&mut g);
    CV.notify_all();
}
fn wait(pred: impl Fn(&(bool, bool)) -> bool) {
    let mut g = DONE.lock().unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pred(&g) {
        assert!(Instant::now() < deadline, "echo timed out");
        g = CV.wait_timeout(g, Duration::from_millis(100)).unwrap().0;
    }
}

unsafe extern "C" fn on_state(_: *mut c_void, ev: *const hb_state_event) {
    if (*ev).state == hb_state::HB_STATE_OPEN as i32 {
        signal(|g| g.0 = true);
    }
}

unsafe extern "C" fn on_message(_: *mut c_void, _kind: i32, _data: *const u8, _len: usize) {
    if LAT.load(Relaxed) {
        HIST.record((now_ns() - SENT_AT.load(Relaxed)) / 100);
    }
    let got = GOT.fetch_add(1, Relaxed) + 1;
    if got < K.load(Relaxed) {
        if LAT.load(Relaxed) {
            SENT_AT.store(now_ns(), Relaxed);
        }
        let h = HANDLE.load(Relaxed) as *mut hb_client;
        let st = hb_send_text(h, MSG.as_ptr() as *const _, MSG.len(), std::ptr::null_mut());
        assert_eq!(st, hb_status::HB_OK);
    } else {
        signal(|g| g.1 = true);
    }
}

fn run_hbws(url: &str, k: u64) {
    let mut cfg = std::ptr::null_mut();
    assert_eq!(hb_config_new(&mut cfg), hb_status::HB_OK);
    assert_eq!(
        hb_config_set_ping_interval_ms(cfg, 86_400_000),
        hb_status::HB_OK
    );
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        on_message: Some(on_message),
        ..Default::default()
    };
    let curl = CString::new(url).unwrap();
    let h = hbws_bench::connect(&curl, cfg, &cb, std::ptr::null_mut());
    hb_config_free(cfg);
    HANDLE.store(h as u64, Relaxed);
    wait(|g| g.0);
    if k > 0 {
        if LAT.load(Relaxed) {
            SENT_AT.store(now_ns(), Relaxed);
        }
        assert_eq!(
            hb_send_text(h, MSG.as_ptr() as *const _, MSG.len(), std::ptr::null_mut()),
            hb_status::HB_OK
        );
        wait(|g| g.1);
    }
    assert_eq!(hb_close(h), hb_status::HB_OK);
}

fn run_raw(url: &str, k: u64) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = url.trim_start_matches("ws://").trim_end_matches('/');
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let cfg = WebSocketConfig::default()
            .read_buffer_size(512)
            .write_buffer_size(0)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg))
            .await
            .unwrap();
        let lat = LAT.load(Relaxed);
        for _ in 0..k {
            let t = if lat { now_ns() } else { 0 };
            ws.send(Message::text(MSG)).await.unwrap();
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(_))) => break,
                    Some(Ok(_)) => {}
                    other => panic!("echo failed: {other:?}"),
                }
            }
            if lat {
                HIST.record((now_ns() - t) / 100);
            }
            GOT.fetch_add(1, Relaxed);
        }
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    });
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (mode, url, k) = (a[1].as_str(), a[2].as_str(), a[3].parse::<u64>().unwrap());
    LAT.store(a.iter().any(|x| x == "--lat"), Relaxed);
    K.store(k, Relaxed);
    now_ns();
    let t0 = Instant::now();
    match mode {
        "hbws" => run_hbws(url, k),
        "raw" => run_raw(url, k),
        _ => panic!("mode hbws|raw"),
    }
    let secs = t0.elapsed().as_secs_f64();
    let lat = LAT.load(Relaxed);
    // The histogram counts in 0.1 µs buckets.
    let pct = |p| {
        if lat {
            HIST.percentile(p) as f64 / 10.0
        } else {
            0.0
        }
    };
    println!(
        "{{\"client\":\"{mode}\",\"k\":{k},\"echoes\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"secs\":{secs:.3}}}",
        GOT.load(Relaxed),
        pct(0.5),
        pct(0.99)
    );
}
