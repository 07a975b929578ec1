//! After fork(), the child of a process that started hbws gets HB_ERR_FORKED, not a hang.

use std::ffi::CString;
use std::time::{Duration, Instant};

use hbws::ffi::hb_status::*;
use hbws::ffi::*;

#[test]
fn fork_child_gets_a_clear_error() {
    // Start the runtime in the parent with a client that keeps retrying a refused port.
    let url = CString::new("ws://127.0.0.1:1/").unwrap();
    let mut h = std::ptr::null_mut();
    let null = std::ptr::null_mut();
    assert_eq!(
        hb_connect(
            url.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            null,
            &mut h,
            null.cast(),
            0
        ),
        HB_OK
    );

    // SAFETY: the child only calls hbws functions that check the pid first, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mut h2 = std::ptr::null_mut();
        let mut err = [0 as std::ffi::c_char; 128];
        let ok = hb_connect(
            url.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            null,
            &mut h2,
            err.as_mut_ptr(),
            err.len(),
        ) == HB_ERR_FORKED
            && h2.is_null()
            && unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
                .to_bytes()
                .windows(4)
                .any(|w| w == b"fork")
            && hb_send_text(h, c"x".as_ptr(), 1, std::ptr::null_mut()) == HB_ERR_FORKED
            && hb_close(h) == HB_ERR_FORKED
            && hb_runtime_set_threads(2) == HB_ERR_FORKED;
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    loop {
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("fork child hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child saw wrong statuses: {status}"
    );
    // The parent is unaffected.
    assert_eq!(hb_close(h), HB_OK);
}
