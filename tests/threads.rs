//! The library adds exactly one thread to the process by default, however many clients it holds.
//! (Own test binary: other tests' clients and servers would blur the count.)

mod common;

use common::*;
use hbws::ffi::hb_state::*;
use hbws_server::{Server, ServerConfig};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn one_runtime_thread_for_a_hundred_clients() {
    let srv = Server::start(ServerConfig::default()).unwrap();
    let before = threads();
    let cfg = Cfg::fast(200, 100, 3);
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
}
