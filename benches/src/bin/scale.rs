//! Scale: N heartbeating clients in one process, hbws (through the C ABI) or the raw
//! tokio-tungstenite client (current_thread runtime, one task per connection, same buffers).
//!
//! `scale hbws|raw URL N INTERVAL_MS [--idle SECS]`
//!
//! Prints one JSON line. RSS per client = (RSS after all are open and two heartbeat rounds have
//! been answered − RSS before the first client) / N. A counting global allocator reports the live
//! heap per client and allocations per heartbeat. `--idle SECS`: instead of waiting for
//! heartbeats, wait 2 s after the last connection and count the context switches of every
//! thread but main over SECS seconds (wake-ups of an idle process between heartbeats).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hbws_bench::*;

struct Counting;
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE_BLOCKS: AtomicU64 = AtomicU64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as u64, Relaxed);
        LIVE_BLOCKS.fetch_add(1, Relaxed);
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as u64, Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(n as u64, Relaxed);
        LIVE_BYTES.fetch_sub(l.size() as u64, Relaxed);
        ALLOCS.fetch_add(1, Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

static OPEN: AtomicU64 = AtomicU64::new(0);
static PONGS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static LOST: AtomicU64 = AtomicU64::new(0);
static RTT: Hist = Hist::new();

struct Snap {
    rss: u64,
    cpu: f64,
    t: Instant,
    heap: u64,
    blocks: u64,
    allocs: u64,
    pongs: u64,
}
fn snap() -> Snap {
    Snap {
        rss: status_kib("VmRSS:"),
        cpu: cpu_seconds(),
        t: Instant::now(),
        heap: LIVE_BYTES.load(Relaxed),
        blocks: LIVE_BLOCKS.load(Relaxed),
        allocs: ALLOCS.load(Relaxed),
        pongs: PONGS.load(Relaxed),
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mode = a[1].clone();
    let url = a[2].clone();
    let n: u64 = a[3].parse().unwrap();
    let interval: u64 = a[4].parse().unwrap();
    let idle: Option<u64> = a
        .iter()
        .position(|x| x == "--idle")
        .map(|i| a[i + 1].parse().unwrap());
    // Touch the histogram's pages before the baseline so they are not counted per client.
    RTT.record(0);
    let base_rtt_count = 1;
    let s0 = snap();
    let t_start = Instant::now();
    match mode.as_str() {
        "hbws" => hbws_clients(&url, n, interval),
        "raw" => {
            let url2 = url.clone();
            std::thread::Builder::new()
                .name("raw-rt".into())
                .spawn(move || raw_runtime(url2, n, interval))
                .unwrap();
        }
        _ => panic!("mode hbws|raw"),
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while OPEN.load(Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "not all open: {}",
            OPEN.load(Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let connect_s = t_start.elapsed().as_secs_f64();
    let main_tid = std::process::id();
    let mut extra = String::new();
    let s1;
    let s2;
    if let Some(secs) = idle {
        std::thread::sleep(Duration::from_secs(2));
        s1 = snap();
        let c0 = ctx_switches(Some(main_tid));
        std::thread::sleep(Duration::from_secs(secs));
        let c1 = ctx_switches(Some(main_tid));
        s2 = snap();
        extra = format!(
            ",\"idle_window_s\":{secs},\"wakeups_per_s\":{:.2}",
            (c1 - c0) as f64 / secs as f64
        );
    } else {
        s1 = snap();
        let deadline = Instant::now() + Duration::from_millis(interval * 4 + 60_000);
        // Two full heartbeat rounds: every client answered twice more, and two intervals passed.
        while PONGS.load(Relaxed) < s1.pongs + 2 * n
            || s1.t.elapsed() < Duration::from_millis(2 * interval)
        {
            assert!(Instant::now() < deadline, "heartbeats stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
        s2 = snap();
    }
    let wall = (s2.t - s1.t).as_secs_f64();
    let pongs_window = s2.pongs - s1.pongs;
    let rtt_n = RTT.count() - base_rtt_count;
    println!(
        "{{\"client\":\"{mode}\",\"conns\":{n},\"interval_ms\":{interval},\"kib_per_conn\":{:.3},\"rss0_kib\":{},\"rss1_kib\":{},\"heap_bytes_per_conn\":{:.0},\"heap_blocks_per_conn\":{:.2},\"allocs_per_pong\":{:.2},\"threads\":{},\"cpu_pct\":{:.2},\"rtt_p50_us\":{},\"rtt_p99_us\":{},\"rtt_samples\":{rtt_n},\"pongs\":{},\"false_misses\":{},\"lost\":{},\"connect_s\":{connect_s:.2}{extra}}}",
        (s2.rss as f64 - s0.rss as f64) / n as f64,
        s0.rss,
        s2.rss,
        (s2.heap as f64 - s0.heap as f64) / n as f64,
        (s2.blocks as f64 - s0.blocks as f64) / n as f64,
        if pongs_window > 0 { (s2.allocs - s1.allocs) as f64 / pongs_window as f64 } else { 0.0 },
        threads(),
        (s2.cpu - s1.cpu) / wall * 100.0,
        RTT.percentile(0.5),
        RTT.percentile(0.99),
        PONGS.load(Relaxed),
        MISSES.load(Relaxed),
        LOST.load(Relaxed),
    );
    // Exit without closing 15k clients one by one; the OS closes the sockets.
    std::process::exit(0);
}

// ---------------------------------------------------------------- hbws through the C ABI

mod hb {
    pub use hbws::ffi::*;
}
use hb::*;

unsafe extern "C" fn on_state(_: *mut c_void, ev: *const hb_state_event) {
    let s = (*ev).state;
    if s == hb_state::HB_STATE_OPEN as i32 {
        OPEN.fetch_add(1, Relaxed);
    } else if s == hb_state::HB_STATE_RECONNECTING as i32 {
        LOST.fetch_add(1, Relaxed);
    }
}

unsafe extern "C" fn on_heartbeat(_: *mut c_void, ev: *const hb_heartbeat_event) {
    let k = (*ev).kind;
    if k == hb_heartbeat_kind::HB_HEARTBEAT_PONG as i32 {
        RTT.record((*ev).rtt_us);
        PONGS.fetch_add(1, Relaxed);
    } else if k == hb_heartbeat_kind::HB_HEARTBEAT_MISSED as i32 {
        MISSES.fetch_add(1, Relaxed);
    }
}

fn hbws_clients(url: &str, n: u64, interval: u64) {
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
    for i in 0..n {
        let _ = hbws_bench::connect(&curl, cfg, &cb, std::ptr::null_mut());
        // Handles are leaked on purpose (the process exits); do not outrun the accept backlog.
        while OPEN.load(Relaxed) + 512 < i + 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    hb_config_free(cfg);
}

// ---------------------------------------------------------------- raw tokio-tungstenite

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

fn raw_runtime(url: String, n: u64, interval: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let addr = url
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned();
        for i in 0..n {
            let (url, addr) = (url.clone(), addr.clone());
            tokio::spawn(raw_client(url, addr, interval));
            while OPEN.load(Relaxed) + 512 < i + 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        std::future::pending::<()>().await;
    });
}

pub fn raw_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

async fn raw_client(url: String, addr: String, interval: u64) {
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let _ = tcp.set_nodelay(true);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(raw_config()))
            .await
            .expect("handshake");
    OPEN.fetch_add(1, Relaxed);
    let every = Duration::from_millis(interval);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let mut sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if sent.is_some() {
                    MISSES.fetch_add(1, Relaxed);
                }
                if ws.send(Message::text("ping")).await.is_err() {
                    break;
                }
                sent = Some(Instant::now());
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) if t.as_str() == "pong" => {
                    if let Some(at) = sent.take() {
                        RTT.record(at.elapsed().as_micros() as u64);
                        PONGS.fetch_add(1, Relaxed);
                    }
                }
                Some(Ok(Message::Text(t))) if t.as_str() == "ping" => {
                    if ws.send(Message::text("pong")).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
    LOST.fetch_add(1, Relaxed);
}
