//! The library adds exactly one thread to the process by default, however many clients it holds.
//! (Own test binary: other tests' clients and servers would blur the count.)

mod common;

use common::*;
use hbws::ffi::hb_state::*;
use hbws_server::{Server, ServerConfig};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn one_runtime_thread_for_a_hundred_clients() {
    let srv = Server::start(ServerConfig::default()).unwrap();
    let before = threads();
    let cfg = Cfg::fast(200, 100, 3);
    // Start the runtime (its epoll and waker descriptors are a one-time cost), then take the
    // descriptor baseline with no client and no server connection open.
    let warm = TestClient::connect(&srv.url(), Some(&cfg));
    warm.wait_open(1);
    warm.close();
    let server_idle = || {
        let deadline = std::time::Instant::now() + WAIT;
        while srv.connections() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "server connections did not close"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    };
    server_idle();
    let fds_before = fds();
    let clients: Vec<TestClient> = (0..100)
        .map(|_| TestClient::connect(&srv.url(), Some(&cfg)))
        .collect();
    for c in &clients {
        c.wait_open(1);
    }
    // Let heartbeats flow for a couple of intervals before counting.
    for c in &clients {
        c.rec.wait_for("2 pongs", WAIT, |l| {
            l.iter()
                .filter(|r| matches!(r, Rec::Heartbeat { kind: 1, .. }))
                .count()
                >= 2
        });
    }
    let with_clients = threads();
    eprintln!("threads: {before} before hbws started, {with_clients} with 100 open clients");
    assert_eq!(
        with_clients - before,
        1,
        "hbws should add exactly one thread"
    );
    for c in &clients {
        assert_eq!(c.stats().state, HB_STATE_OPEN as i32);
        c.close();
    }
    assert_eq!(threads(), with_clients, "closing clients starts no threads");
    // Back to the baseline once the server's ends of the connections have closed too.
    server_idle();
    let fds_after = fds();
    eprintln!("fds: {fds_before} before, {fds_after} after 100 clients came and went");
    assert_eq!(fds_after, fds_before, "descriptors leaked");
}
