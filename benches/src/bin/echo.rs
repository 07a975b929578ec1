//! Per-message cost: K echo round trips of a 32-byte text message.
//!
//! `echo hbws|raw|hbws-host|raw-host URL K [--lat]`
//!
//! hbws: through the C ABI; the first message is sent from the main thread once OPEN, every
//! next one with `hb_send_text` from inside the message callback (heartbeat every 24 h, so none
//! in the run; default sizes: read up to 4096 per call, write 0). raw: tokio-tungstenite on a
//! current_thread runtime, read buffer 512 / write 0 (its best: it keeps and zero-fills that
//! buffer), send then read.
//!
//! Host-thread style (`-host`, the README's quick start): every message is sent from the main
//! thread, which then waits for its echo and repeats. The wait is the host's own and is counted:
//! a `std` Mutex + Condvar (futex), signalled from the message callback (hbws) or from the
//! connection's task (raw). hbws-host: `hb_send_text` on the main thread, the client's runtime
//! thread does the rest. raw-host: the same tokio-tungstenite connection driven by a
//! current_thread runtime on a thread of its own; the main thread hands each message to its task
//! through a tokio mpsc channel (the usual way into a task from outside) and waits on the condvar.
//!
//! `--lat` records each round trip's wall time
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
/// Host-thread style: echoes received so far, and its condvar.
static HOST_MODE: AtomicBool = AtomicBool::new(false);
static ECHOED: Mutex<u64> = Mutex::new(0);
static ECHO_CV: Condvar = Condvar::new();

/// The host thread's wait for echo number `n` (the futex wait a host pays per message).
fn wait_echo(n: u64) {
    let mut g = ECHOED.lock().unwrap();
    while *g < n {
        g = ECHO_CV.wait(g).unwrap();
    }
}
fn echoed(n: u64) {
    *ECHOED.lock().unwrap() = n;
    ECHO_CV.notify_one();
}

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
    if HOST_MODE.load(Relaxed) {
        echoed(got);
        return;
    }
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
    if HOST_MODE.load(Relaxed) {
        let lat = LAT.load(Relaxed);
        for i in 1..=k {
            if lat {
                SENT_AT.store(now_ns(), Relaxed);
            }
            assert_eq!(
                hb_send_text(h, MSG.as_ptr() as *const _, MSG.len(), std::ptr::null_mut()),
                hb_status::HB_OK
            );
            wait_echo(i);
        }
    } else if k > 0 {
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

/// raw-host: the connection's task runs on a thread of its own; the main thread sends through a
/// channel and waits on the condvar.
fn run_raw_host(url: &str, k: u64) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    use tokio_tungstenite::tungstenite::Message;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let (open_tx, open_rx) = std::sync::mpsc::channel::<()>();
    let url = url.to_string();
    let net = std::thread::spawn(move || {
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
            let (mut ws, _) = tokio_tungstenite::client_async_with_config(&url, tcp, Some(cfg))
                .await
                .unwrap();
            open_tx.send(()).unwrap();
            // Full duplex, as an application's connection task is: whatever comes first, a
            // message from the host or one from the server.
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => ws.send(Message::text(m)).await.unwrap(),
                        None => break,
                    },
                    m = ws.next() => match m {
                        Some(Ok(Message::Text(_))) => {
                            let got = GOT.fetch_add(1, Relaxed) + 1;
                            if LAT.load(Relaxed) {
                                HIST.record((now_ns() - SENT_AT.load(Relaxed)) / 100);
                            }
                            echoed(got);
                        }
                        Some(Ok(_)) => {}
                        other => panic!("echo failed: {other:?}"),
                    },
                }
            }
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        });
    });
    open_rx.recv().unwrap();
    let lat = LAT.load(Relaxed);
    for i in 1..=k {
        if lat {
            SENT_AT.store(now_ns(), Relaxed);
        }
        tx.send(MSG).unwrap();
        wait_echo(i);
    }
    drop(tx);
    net.join().unwrap();
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (mode, url, k) = (a[1].as_str(), a[2].as_str(), a[3].parse::<u64>().unwrap());
    LAT.store(a.iter().any(|x| x == "--lat"), Relaxed);
    K.store(k, Relaxed);
    now_ns();
    let t0 = Instant::now();
    HOST_MODE.store(mode.ends_with("-host"), Relaxed);
    match mode {
        "hbws" | "hbws-host" => run_hbws(url, k),
        "raw" => run_raw(url, k),
        "raw-host" => run_raw_host(url, k),
        _ => panic!("mode hbws|raw|hbws-host|raw-host"),
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
