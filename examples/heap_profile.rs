//! Heap profile of N idle clients: live heap blocks per client, by size, through a counting
//! global allocator (the memory target's profiler; see BENCHMARKS.md).
//!
//! `cargo run --release --example heap_profile -- URL N` against a server in another process
//! (`cargo run --release -p hbws-server -- --port 9001 --interval-ms 0`). Prints live bytes per
//! client and the blocks per client by exact size. With `HEAP_TRACE=1` it also prints, for the
//! sizes a connection is known to hold, the first few allocation sites (build with
//! `CARGO_PROFILE_RELEASE_DEBUG=1` for symbols).
use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hbws::ffi::*;

const MAXS: usize = 8192;
struct Counting;
static BY_SIZE: [AtomicI64; MAXS + 1] = [const { AtomicI64::new(0) }; MAXS + 1];
static LIVE: AtomicI64 = AtomicI64::new(0);

static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static SEEN: [AtomicU64; MAXS + 1] = [const { AtomicU64::new(0) }; MAXS + 1];
thread_local! { static IN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) }; }
fn trace(size: usize) {
    if !TRACE.load(Relaxed)
        || IN.with(|i| i.get())
        || ![1usize, 10, 18, 40, 64, 72, 256, 312, 1024].contains(&size)
        || SEEN[size.min(MAXS)].fetch_add(1, Relaxed) >= 3
    {
        return;
    }
    IN.with(|i| {
        if i.get() {
            return;
        }
        i.set(true);
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        let frames: Vec<&str> = bt
            .lines()
            .filter(|l| {
                !l.trim_start().starts_with("at ")
                    && (l.contains("hbws")
                        || l.contains("tungstenite")
                        || l.contains("tokio::")
                        || l.contains("bytes"))
            })
            .take(8)
            .collect();
        eprintln!("=== size {size}:\n{}", frames.join("\n"));
        i.set(false);
    });
}
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        trace(l.size());
        BY_SIZE[l.size().min(MAXS)].fetch_add(1, Relaxed);
        LIVE.fetch_add(l.size() as i64, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BY_SIZE[l.size().min(MAXS)].fetch_sub(1, Relaxed);
        LIVE.fetch_sub(l.size() as i64, Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        BY_SIZE[l.size().min(MAXS)].fetch_sub(1, Relaxed);
        trace(n);
        BY_SIZE[n.min(MAXS)].fetch_add(1, Relaxed);
        LIVE.fetch_add(n as i64 - l.size() as i64, Relaxed);
        System.realloc(p, l, n)
    }
}
#[global_allocator]
static A: Counting = Counting;

static OPEN: AtomicU64 = AtomicU64::new(0);
unsafe extern "C" fn on_state(_: *mut c_void, ev: *const hb_state_event) {
    if (*ev).state == hb_state::HB_STATE_OPEN as i32 {
        OPEN.fetch_add(1, Relaxed);
    }
}

fn snap() -> Vec<i64> {
    BY_SIZE.iter().map(|a| a.load(Relaxed)).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = CString::new(args[1].clone()).unwrap();
    let n: usize = args[2].parse().unwrap();
    let mut cfg = std::ptr::null_mut();
    hb_config_new(&mut cfg);
    hb_config_set_ping_interval_ms(cfg, 1000);
    hb_config_set_pong_timeout_ms(cfg, 1000);
    // warm the runtime with one client
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        ..Default::default()
    };
    let mut hs = Vec::new();
    let mut h = std::ptr::null_mut();
    hb_connect(
        url.as_ptr(),
        cfg,
        &cb,
        std::ptr::null_mut(),
        &mut h,
        std::ptr::null_mut(),
        0,
    );
    hs.push(h);
    while OPEN.load(Relaxed) < 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (b0, l0) = (snap(), LIVE.load(Relaxed));
    TRACE.store(std::env::var_os("HEAP_TRACE").is_some(), Relaxed);
    for _ in 0..n {
        let mut h = std::ptr::null_mut();
        let s = hb_connect(
            url.as_ptr(),
            cfg,
            &cb,
            std::ptr::null_mut(),
            &mut h,
            std::ptr::null_mut(),
            0,
        );
        assert_eq!(s, hb_status::HB_OK);
        hs.push(h);
    }
    while OPEN.load(Relaxed) < n as u64 + 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    TRACE.store(false, Relaxed);
    std::thread::sleep(Duration::from_millis(2500));
    let (b1, l1) = (snap(), LIVE.load(Relaxed));
    println!("live bytes per client: {:.1}", (l1 - l0) as f64 / n as f64);
    let mut total = 0.0;
    for (size, (a, b)) in b0.iter().zip(&b1).enumerate() {
        let d = (b - a) as f64 / n as f64;
        if d.abs() >= 0.05 {
            total += d;
            println!(
                "  size {size:5}: {d:6.2} blocks/client = {:7.1} B",
                d * size as f64
            );
        }
    }
    println!("blocks per client: {total:.2}");
}
