//! After fork(), the child of a process that started hbws may create clients of its own (on a
//! fresh runtime) while its parent's handles answer HB_ERR_FORKED; the parent keeps working.

mod common;

use std::ffi::CString;
use std::time::{Duration, Instant};

use common::*;
use hbws::ffi::hb_state::*;
use hbws::ffi::hb_status::*;
use hbws::ffi::*;
use hbws_server::{Server, ServerConfig};

/// Waits for `pid` with a bound; its exit status.
fn wait_child(pid: libc::pid_t) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
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
    assert!(libc::WIFEXITED(status), "child died: {status:#x}");
    libc::WEXITSTATUS(status)
}

#[test]
fn fork_child_connects_on_its_own_runtime_and_parent_handles_are_forked() {
    let srv = Server::start(ServerConfig {
        echo: true,
        ..Default::default()
    })
    .unwrap();
    let cfg = Cfg::fast(200, 150, 3);
    // The parent's runtime runs, with an open client, when the fork happens.
    let url = srv.url();
    let parent = TestClient::connect(&url, Some(&cfg));
    parent.wait_open(1);

    // SAFETY: the child calls only async-signal-safe functions until the library's own atfork
    // handler has run, then the library (which the test is about) and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // The parent's handle: refused, and not touched.
            if hb_send_text(parent.h, c"x".as_ptr(), 1, std::ptr::null_mut()) != HB_ERR_FORKED {
                return 2;
            }
            let mut s = hb_stats {
                size: std::mem::size_of::<hb_stats>(),
                ..Default::default()
            };
            if hb_get_stats(parent.h, &mut s) != HB_ERR_FORKED {
                return 3;
            }
            if hb_close(parent.h) != HB_ERR_FORKED {
                return 4;
            }
            // A runtime setting is allowed: the child has no runtime yet.
            if hb_runtime_set_threads(1) != HB_OK {
                return 5;
            }
            // A client of its own, on a fresh runtime: connects, and a message goes both ways.
            let child = TestClient::connect(&url, Some(&cfg));
            child.wait_open(1);
            if child.send_text("from the child") != HB_OK {
                return 6;
            }
            child.rec.wait_for("the echo", WAIT, |l| {
                l.iter().any(|r| {
                    matches!(r, Rec::Message { data, .. } if data.as_slice() == b"from the child")
                })
            });
            child.close();
            // Still refused after the child's runtime started.
            if hb_send_text(parent.h, c"x".as_ptr(), 1, std::ptr::null_mut()) != HB_ERR_FORKED {
                return 7;
            }
            0
        }))
        .unwrap_or(10);
        unsafe { libc::_exit(code) };
    }
    assert_eq!(wait_child(pid), 0, "child saw a wrong status (code above)");
    assert!(
        srv.received_texts().iter().any(|t| t == "from the child"),
        "the server did not hear the child"
    );
    // The parent is unaffected: its client is still open, sends, and closes.
    assert_eq!(parent.stats().state, HB_STATE_OPEN as i32);
    assert_eq!(parent.send_text("from the parent"), HB_OK);
    parent.rec.wait_for("the parent's echo", WAIT, |l| {
        l.iter().any(
            |r| matches!(r, Rec::Message { data, .. } if data.as_slice() == b"from the parent"),
        )
    });
    parent.close();
}

#[test]
fn fork_child_of_a_child_works_too() {
    // Connect attempts to a refused port keep the parent's runtime busy across the forks.
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
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut h2 = std::ptr::null_mut();
        let ok = hb_connect(
            url.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            null,
            &mut h2,
            null.cast(),
            0,
        ) == HB_OK
            && hb_send_text(h, c"x".as_ptr(), 1, std::ptr::null_mut()) == HB_ERR_FORKED;
        // A grandchild: both older handles are forked there, its own works.
        let pid2 = unsafe { libc::fork() };
        if pid2 == 0 {
            let mut h3 = std::ptr::null_mut();
            let ok = hb_send_text(h, c"x".as_ptr(), 1, std::ptr::null_mut()) == HB_ERR_FORKED
                && hb_send_text(h2, c"x".as_ptr(), 1, std::ptr::null_mut()) == HB_ERR_FORKED
                && hb_connect(
                    url.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    null,
                    &mut h3,
                    null.cast(),
                    0,
                ) == HB_OK
                && hb_close(h3) == HB_OK;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let ok = ok && pid2 > 0 && wait_child(pid2) == 0 && hb_close(h2) == HB_OK;
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    assert_eq!(wait_child(pid), 0);
    assert_eq!(hb_close(h), HB_OK);
}
