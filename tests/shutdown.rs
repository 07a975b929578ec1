//! `hb_shutdown`: ends every client within its bound, stops the runtime thread, leaves old
//! handles dead and the library usable again; refused inside a callback; and a C program that
//! calls it before exiting while callbacks fire never aborts. (Own test binary: it stops the
//! process's runtime. The tests here take turns.)

mod common;

use std::ffi::c_void;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use hbws::ffi::hb_reason::*;
use hbws::ffi::hb_state::*;
use hbws::ffi::hb_status::*;
use hbws::ffi::*;
use hbws_server::{Server, ServerConfig, ServerEvent};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Threads of this process named "hbws" (the runtime's).
fn hbws_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == "hbws")
        .count()
}

fn pinging_server() -> Server {
    Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(20)),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn shutdown_ends_every_client_and_stops_the_runtime_thread() {
    let _t = turn();
    let srv = pinging_server();
    let cfg = Cfg::fast(50, 40, 3);
    let open: Vec<TestClient> = (0..5)
        .map(|_| TestClient::connect(&srv.url(), Some(&cfg)))
        .collect();
    for c in &open {
        c.wait_open(1);
        assert_eq!(c.send_text("queued before shutdown"), HB_OK);
    }
    // One that keeps retrying a refused port, and one with no callbacks (never started).
    let retrying = TestClient::connect("ws://127.0.0.1:1/", Some(&cfg));
    let mut bare = std::ptr::null_mut();
    let null = std::ptr::null_mut();
    assert_eq!(
        hb_connect(
            c"ws://127.0.0.1:1/".as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            null,
            &mut bare,
            null.cast(),
            0
        ),
        HB_OK
    );
    assert_eq!(hbws_threads(), 1);
    let t0 = Instant::now();
    assert_eq!(hb_shutdown(5_000), HB_OK);
    let took = t0.elapsed();
    eprintln!("hb_shutdown took {took:?}");
    assert!(took < Duration::from_secs(5));
    assert_eq!(hbws_threads(), 0, "the runtime thread is still there");
    for c in open.iter().chain([&retrying]) {
        assert_eq!(c.rec.released.load(Ordering::SeqCst), 1, "release ran once");
        let states = c.rec.states();
        assert_eq!(
            states.last(),
            Some(&(HB_STATE_CLOSED as i32, HB_REASON_USER_CLOSE as i32)),
            "{states:?}"
        );
        assert_eq!(c.send_text("x"), HB_ERR_INVALID_HANDLE);
        assert_eq!(hb_close(c.h), HB_ERR_INVALID_HANDLE);
    }
    assert_eq!(hb_close(bare), HB_ERR_INVALID_HANDLE);
    // Each open client closed properly: its message reached the server, then a Close frame.
    let closes = |ev: &[ServerEvent]| {
        ev.iter()
            .filter(|e| {
                matches!(
                    e,
                    ServerEvent::CloseReceived {
                        code: Some(1000),
                        ..
                    }
                )
            })
            .count()
    };
    assert!(
        srv.wait_for(WAIT, |ev| closes(ev) == 5),
        "{:?}",
        srv.events()
    );
    assert_eq!(
        srv.received_texts()
            .iter()
            .filter(|t| *t == "queued before shutdown")
            .count(),
        5
    );

    // The library works again: a fresh runtime, and a second shutdown.
    let again = TestClient::connect(&srv.url(), Some(&cfg));
    again.wait_open(1);
    assert_eq!(hbws_threads(), 1);
    assert_eq!(hb_shutdown(5_000), HB_OK);
    assert_eq!(again.rec.released.load(Ordering::SeqCst), 1);
    assert_eq!(hbws_threads(), 0);
    // Nothing running: at once.
    assert_eq!(hb_shutdown(0), HB_OK);
}

#[test]
fn shutdown_stops_a_multi_thread_runtime_too() {
    let _t = turn();
    // Allowed again: no runtime runs between the tests of this binary.
    assert_eq!(hb_runtime_set_threads(3), HB_OK);
    let srv = pinging_server();
    let cfg = Cfg::fast(50, 40, 3);
    let clients: Vec<TestClient> = (0..6)
        .map(|_| TestClient::connect(&srv.url(), Some(&cfg)))
        .collect();
    for c in &clients {
        c.wait_open(1);
    }
    assert_eq!(hb_runtime_set_threads(1), HB_ERR_ALREADY_STARTED);
    // (Not counted exactly: a worker names itself once it runs, which may be later.)
    assert!(hbws_threads() >= 1);
    assert_eq!(hb_shutdown(5_000), HB_OK);
    assert_eq!(hbws_threads(), 0, "worker threads left");
    for c in &clients {
        assert_eq!(c.rec.released.load(Ordering::SeqCst), 1);
        assert_eq!(
            c.rec.states().last(),
            Some(&(HB_STATE_CLOSED as i32, HB_REASON_USER_CLOSE as i32))
        );
    }
    // Back to the default for the other tests.
    assert_eq!(hb_runtime_set_threads(1), HB_OK);
}

static INSIDE: AtomicI32 = AtomicI32::new(1);
static INSIDE_CALLS: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn shutdown_from_callback(_ud: *mut c_void, _ev: *const hb_state_event) {
    if INSIDE_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        INSIDE.store(hb_shutdown(1_000) as i32, Ordering::SeqCst);
    }
}

#[test]
fn shutdown_inside_a_callback_is_refused_not_a_deadlock() {
    let _t = turn();
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(shutdown_from_callback),
        ..Default::default()
    };
    let mut h = std::ptr::null_mut();
    let null = std::ptr::null_mut();
    assert_eq!(
        hb_connect(
            c"ws://127.0.0.1:1/".as_ptr(),
            std::ptr::null(),
            &cb,
            null,
            &mut h,
            null.cast(),
            0
        ),
        HB_OK
    );
    let deadline = Instant::now() + WAIT;
    while INSIDE_CALLS.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no callback");
        std::thread::yield_now();
    }
    assert_eq!(hb_shutdown(5_000), HB_OK);
    assert_eq!(INSIDE.load(Ordering::SeqCst), HB_ERR_IN_CALLBACK as i32);
}

/// Blocks the runtime thread in a callback until the test lets it go.
static BLOCK: Mutex<bool> = Mutex::new(false);
static BLOCK_CV: std::sync::Condvar = std::sync::Condvar::new();
static BLOCKED_RELEASES: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn block_on_closing(_ud: *mut c_void, ev: *const hb_state_event) {
    // CLOSING, or CLOSED when the close came before OPEN.
    let s = (*ev).state;
    if s == HB_STATE_CLOSING as i32 || s == HB_STATE_CLOSED as i32 {
        let g = BLOCK.lock().unwrap();
        let _g = BLOCK_CV
            .wait_timeout_while(g, Duration::from_secs(20), |go| !*go)
            .unwrap();
    }
}

unsafe extern "C" fn count_release(_ud: *mut c_void) {
    BLOCKED_RELEASES.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn shutdown_is_bounded_when_a_callback_blocks() {
    let _t = turn();
    let srv = pinging_server();
    let cfg = Cfg::fast(50, 40, 3);
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(block_on_closing),
        release: Some(count_release),
        ..Default::default()
    };
    let ok = TestClient::connect(&srv.url(), Some(&cfg));
    ok.wait_open(1);
    let url = std::ffi::CString::new(srv.url()).unwrap();
    let mut h = std::ptr::null_mut();
    let null = std::ptr::null_mut();
    assert_eq!(
        hb_connect(url.as_ptr(), cfg.0, &cb, null, &mut h, null.cast(), 0),
        HB_OK
    );
    assert!(srv.wait_for(WAIT, |ev| ev
        .iter()
        .filter(|e| matches!(e, ServerEvent::Accepted { .. }))
        .count()
        == 2));
    let t0 = Instant::now();
    assert_eq!(hb_shutdown(300), HB_ERR_TIMEOUT);
    let took = t0.elapsed();
    eprintln!("hb_shutdown with a blocked callback took {took:?}");
    assert!(
        took < Duration::from_millis(300 + 100 + 200),
        "not bounded: {took:?}"
    );
    assert_eq!(BLOCKED_RELEASES.load(Ordering::SeqCst), 0);
    // Let the callback return: the runtime thread ends the rest and stops by itself.
    *BLOCK.lock().unwrap() = true;
    BLOCK_CV.notify_all();
    let deadline = Instant::now() + WAIT;
    while BLOCKED_RELEASES.load(Ordering::SeqCst) == 0 || hbws_threads() != 0 {
        assert!(Instant::now() < deadline, "the runtime thread did not stop");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(BLOCKED_RELEASES.load(Ordering::SeqCst), 1);
    assert_eq!(ok.rec.released.load(Ordering::SeqCst), 1);
    assert_eq!(ok.send_text("x"), HB_ERR_INVALID_HANDLE);
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put libhbws.so for this test run (see tests/c_abi.rs).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    if deps.join("libhbws.so").exists() {
        deps.to_path_buf()
    } else {
        deps.parent().unwrap().to_path_buf()
    }
}

const EXIT_WHILE_BUSY_C: &str = r#"
#define _POSIX_C_SOURCE 200809L
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "hbws.h"

static atomic_long events;

static void on_message(void *ud, int32_t kind, const uint8_t *data, size_t len) {
    (void)ud; (void)kind; (void)data; (void)len;
    events++;
}
static void on_heartbeat(void *ud, const hb_heartbeat_event *ev) {
    (void)ud; (void)ev;
    events++;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    hb_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.size = sizeof cb;
    cb.on_message = on_message;
    cb.on_heartbeat = on_heartbeat;
    hb_client *c[4];
    for (int i = 0; i < 4; i++) {
        if (hb_connect(argv[1], NULL, &cb, NULL, &c[i], NULL, 0) != HB_OK) return 3;
    }
    /* Keep callbacks firing: messages echoed back, server pings every few ms. */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        for (int i = 0; i < 4; i++) hb_send_text(c[i], "busy", 4, NULL);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (events < 50 && now.tv_sec - start.tv_sec < 10);
    if (events < 50) return 4;
    for (int i = 0; i < 4; i++) hb_send_text(c[i], "in flight", 9, NULL);
    int32_t s = hb_shutdown(2000);
    if (s != HB_OK) { fprintf(stderr, "hb_shutdown: %s\n", hb_status_str(s)); return 5; }
    return 0; /* exit() with no library thread left */
}
"#;

/// A callback that ends its own thread with pthread_exit (what CPython does to a thread that
/// asks for the GIL while finalizing), then main shuts down and exits.
const THREAD_EXIT_IN_CALLBACK_C: &str = r#"
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "hbws.h"

static atomic_int exiting;

static void on_message(void *ud, int32_t kind, const uint8_t *data, size_t len) {
    (void)ud; (void)kind; (void)data; (void)len;
    atomic_store(&exiting, 1);
    pthread_exit(NULL);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    hb_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.size = sizeof cb;
    cb.on_message = on_message;
    hb_client *c;
    if (hb_connect(argv[1], NULL, &cb, NULL, &c, NULL, 0) != HB_OK) return 3;
    double start = now();
    while (!atomic_load(&exiting) && now() - start < 10) {
        hb_send_text(c, "echo me", 7, NULL);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    if (!atomic_load(&exiting)) return 4;
    double t0 = now();
    int32_t s = hb_shutdown(5000);
    double took = now() - t0;
    /* The runtime thread is parked in the callback: shutdown cannot end the client, says so,
       and does not wait the whole timeout for it. */
    if (s != HB_ERR_TIMEOUT) { fprintf(stderr, "hb_shutdown: %s\n", hb_status_str(s)); return 5; }
    if (took > 1.0) { fprintf(stderr, "hb_shutdown took %.3f s\n", took); return 6; }
    if (hb_send_text(c, "x", 1, NULL) != HB_ERR_INVALID_HANDLE) return 7;
    return 0;
}
"#;

/// Compiles a C program against the header and the built library.
fn compile_c(name: &str, code: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hbws-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, code).unwrap();
    let exe = dir.join(name);
    let lib = lib_dir();
    let out = Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-pthread",
            "-I",
        ])
        .arg(root().join("include"))
        .arg(&src)
        .arg("-L")
        .arg(&lib)
        .arg("-lhbws")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[test]
fn a_callback_that_exits_its_thread_does_not_abort_the_process() {
    let _t = turn();
    let exe = compile_c("thread_exit", THREAD_EXIT_IN_CALLBACK_C);
    let srv = Server::start(ServerConfig::default()).unwrap();
    for run in 0..5 {
        let out = Command::new(&exe).arg(srv.url()).output().unwrap();
        // On f0e9d24: "FATAL: exception not rethrown", SIGABRT.
        assert!(
            out.status.success(),
            "run {run}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_c_program_that_shuts_down_and_exits_while_callbacks_fire_never_aborts() {
    let _t = turn();
    let dir = std::env::temp_dir().join(format!("hbws-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("exit_busy.c");
    std::fs::write(&src, EXIT_WHILE_BUSY_C).unwrap();
    let exe = dir.join("exit_busy");
    let lib = lib_dir();
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I"])
        .arg(root().join("include"))
        .arg(&src)
        .arg("-L")
        .arg(&lib)
        .arg("-lhbws")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srv = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(5)),
        ..Default::default()
    })
    .unwrap();
    for run in 0..20 {
        let out = Command::new(&exe).arg(srv.url()).output().unwrap();
        assert!(
            out.status.success(),
            "run {run}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A ctypes program with callbacks on four clients, exiting while they fire (argv: library, url,
/// and optionally "shutdown" to call hb_shutdown from an atexit hook). On f0e9d24 it aborted in
/// 6 of 6 runs without the hook ("FATAL: exception not rethrown": CPython's pthread_exit of the
/// runtime thread unwinding into Rust frames).
const EXIT_WHILE_BUSY_PY: &str = r#"
import ctypes, sys, time, os
lib = ctypes.CDLL(sys.argv[1])
url = sys.argv[2].encode()
use_shutdown = len(sys.argv) > 3 and sys.argv[3] == "shutdown"

STATE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
MSG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_size_t)
HB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
LOG = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t)
DROP = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int32)
REL = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
DELIV = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int32)

class Callbacks(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("on_state", STATE), ("on_message", MSG),
                ("on_heartbeat", HB), ("on_dropped", DROP), ("on_log", LOG),
                ("release", REL), ("on_delivery", DELIV)]

events = [0]
def on_message(ud, kind, data, n):
    events[0] += 1
def on_heartbeat(ud, ev):
    events[0] += 1
def on_state(ud, ev):
    events[0] += 1
keep = [STATE(on_state), MSG(on_message), HB(on_heartbeat)]
# The header's rule: callback function pointers stay valid until release runs. Without
# hb_shutdown release never runs, so the ctypes thunks are leaked (never freed, not even while
# the interpreter finalizes) rather than freed under the runtime thread's feet.
for k in keep:
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(k))
cb = Callbacks()
cb.size = ctypes.sizeof(Callbacks)
cb.on_state, cb.on_message, cb.on_heartbeat = keep
lib.hb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(Callbacks), ctypes.c_void_p,
                           ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_size_t]
lib.hb_send_text.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
hs = []
for i in range(4):
    h = ctypes.c_void_p()
    assert lib.hb_connect(url, None, ctypes.byref(cb), None, ctypes.byref(h), None, 0) == 0
    hs.append(h)
t0 = time.time()
while events[0] < 50 and time.time() - t0 < 10:
    for h in hs:
        lib.hb_send_text(h, b"busy", 4, None)
    time.sleep(0.001)
for h in hs:
    for _ in range(200):
        lib.hb_send_text(h, b"in flight", 9, None)
if use_shutdown:
    import atexit
    lib.hb_shutdown.argtypes = [ctypes.c_uint32]
    atexit.register(lambda: lib.hb_shutdown(2000) == 0 or os._exit(5))
# Exit while callbacks fire: CPython ends the runtime thread with pthread_exit when a callback
# asks for the GIL during finalization (unless hb_shutdown ran first).
"#;

fn python_exits(with_shutdown: bool) {
    let dir = std::env::temp_dir().join(format!("hbws-pyexit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("exit_busy.py");
    std::fs::write(&script, EXIT_WHILE_BUSY_PY).unwrap();
    let so = lib_dir().join("libhbws.so");
    let srv = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(2)),
        ..Default::default()
    })
    .unwrap();
    for run in 0..20 {
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(&so).arg(srv.url());
        if with_shutdown {
            cmd.arg("shutdown");
        }
        let out = cmd
            .output()
            .expect("python3 (the system's) is needed for this test");
        assert!(
            out.status.success(),
            "run {run}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_python_program_that_exits_while_callbacks_fire_never_aborts() {
    let _t = turn();
    python_exits(false);
}

#[test]
fn a_python_program_that_shuts_down_at_exit_never_aborts() {
    let _t = turn();
    python_exits(true);
}
