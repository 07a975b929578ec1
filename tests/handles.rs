//! Handle values through the C API: outside every user-space address range, never repeated, a
//! stale one refused; and the first callback of a client never runs before `hb_connect` has
//! written its handle.

use std::collections::HashSet;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use hbws::ffi::hb_status::*;
use hbws::ffi::*;

/// A URL nothing listens on: the client keeps retrying, its first event comes at once.
const REFUSED: &std::ffi::CStr = c"ws://127.0.0.1:1/";

/// The runtime and the threads calling `hb_connect` share one CPU, and the runtime is started
/// (its thread inherits the affinity and the scheduling policy) before any client of this test
/// binary: see `first_callback_runs_after_connect_has_written_the_handle`.
fn one_cpu() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn runtime_started() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        one_cpu();
        let mut h = std::ptr::null_mut();
        let null = std::ptr::null_mut();
        assert_eq!(
            hb_connect(
                REFUSED.as_ptr(),
                std::ptr::null(),
                std::ptr::null(),
                null,
                &mut h,
                null.cast(),
                0
            ),
            HB_OK
        );
        assert_eq!(hb_close(h), HB_OK);
    });
}

fn connect_bare() -> *mut hb_client {
    runtime_started();
    let mut h = std::ptr::null_mut();
    let null = std::ptr::null_mut();
    assert_eq!(
        hb_connect(
            REFUSED.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            null,
            &mut h,
            null.cast(),
            0
        ),
        HB_OK
    );
    h
}

/// No user-space heap of any supported 64-bit target can hold this value: bit 63 set with bit 62
/// clear is non-canonical on x86_64 (4- and 5-level paging), bit 55 is the kernel half on
/// aarch64 whatever its top byte (tagged pointers); and it is odd.
fn outside_every_heap(v: usize) -> bool {
    if usize::BITS == 64 {
        let v = v as u64;
        v >> 62 == 0b10 && (v >> 55) & 1 == 1 && v & 1 == 1
    } else {
        v >> 30 == 0b11 && v & 1 == 1
    }
}

#[test]
fn handle_values_are_outside_every_heap_and_never_repeat() {
    let first = connect_bare();
    assert_eq!(hb_close(first), HB_OK);
    let mut seen = HashSet::from([first as usize]);
    // Today's failure mode: one slot reused again and again walked its value into Go's arena
    // (0xc000000001 after 191 reuses).
    for i in 0..2_000 {
        let h = connect_bare();
        let v = h as usize;
        assert!(
            outside_every_heap(v),
            "cycle {i}: handle {v:#x} could be a heap address"
        );
        assert!(seen.insert(v), "cycle {i}: handle {v:#x} repeated");
        assert_eq!(hb_close(h), HB_OK);
    }
    // The first handle, after 2,000 clients came and went: still refused, not someone else's.
    assert_eq!(
        hb_send_text(first, c"x".as_ptr(), 1, std::ptr::null_mut()),
        HB_ERR_INVALID_HANDLE
    );
    assert_eq!(hb_close(first), HB_ERR_INVALID_HANDLE);
}

/// What the first callback saw in the handle slot `hb_connect` writes.
struct Probe {
    slot: AtomicPtr<hb_client>,
    seen: Mutex<Option<usize>>,
    cv: Condvar,
    released: AtomicUsize,
}

unsafe extern "C" fn first_state(ud: *mut c_void, _ev: *const hb_state_event) {
    let p = &*(ud as *const Probe);
    let mut seen = p.seen.lock().unwrap();
    if seen.is_none() {
        *seen = Some(p.slot.load(Ordering::SeqCst) as usize);
        p.cv.notify_all();
    }
}

unsafe extern "C" fn count_release(ud: *mut c_void) {
    (*(ud as *const Probe))
        .released
        .fetch_add(1, Ordering::SeqCst);
}

#[test]
fn first_callback_runs_after_connect_has_written_the_handle() {
    // Make the race visible: this thread shares the runtime thread's CPU at the lowest
    // priority (SCHED_IDLE), so waking the runtime preempts it at once. Before the fix the
    // wake-up came before the out-param was written, and the callback saw no handle.
    runtime_started();
    one_cpu();
    // SAFETY: sets this thread's own policy; the parameter is read only.
    let param = libc::sched_param { sched_priority: 0 };
    assert_eq!(
        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) },
        0
    );
    let probe = Probe {
        slot: AtomicPtr::new(std::ptr::null_mut()),
        seen: Mutex::new(None),
        cv: Condvar::new(),
        released: AtomicUsize::new(0),
    };
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(first_state),
        release: Some(count_release),
        ..Default::default()
    };
    let mut early = 0;
    let cycles = 300;
    for i in 0..cycles {
        probe.slot.store(std::ptr::null_mut(), Ordering::SeqCst);
        *probe.seen.lock().unwrap() = None;
        let null = std::ptr::null_mut();
        // `client_out` points at the slot the callback reads.
        let st = hb_connect(
            REFUSED.as_ptr(),
            std::ptr::null(),
            &cb,
            &probe as *const Probe as *mut c_void,
            probe.slot.as_ptr(),
            null,
            0,
        );
        assert_eq!(st, HB_OK);
        let h = probe.slot.load(Ordering::SeqCst);
        let seen = {
            let g = probe.seen.lock().unwrap();
            let (g, t) = probe
                .cv
                .wait_timeout_while(g, Duration::from_secs(10), |s| s.is_none())
                .unwrap();
            assert!(!t.timed_out(), "cycle {i}: no first callback");
            g.unwrap()
        };
        if seen != h as usize {
            early += 1;
        }
        assert_eq!(hb_close(h), HB_OK);
        assert_eq!(probe.released.load(Ordering::SeqCst), i + 1);
    }
    assert_eq!(
        early, 0,
        "in {early} of {cycles} cycles the first callback ran before hb_connect wrote the handle"
    );
}
