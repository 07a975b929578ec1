//! Name resolution never holds a client up for another's sake, and never past the connect
//! timeout. A resolver hook (`Config::resolver`, for tests) makes names hang on purpose; the
//! lookups run where the system resolver's would.

#[path = "support/states.rs"]
mod states;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hbws::connect::ResolverHook;
use hbws::{Client, Config, Reason, State};
use hbws_server::{Server, ServerConfig};
use states::{is, States, WAIT};

/// A resolver whose names hang until [`Gate::open`] (never, in these tests' lifetime, unless
/// the test opens it), counting the lookups that started.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    entered: AtomicUsize,
}

impl Gate {
    fn hook(self: &Arc<Self>) -> ResolverHook {
        let g = self.clone();
        ResolverHook::new(move |_host, _port| {
            g.entered.fetch_add(1, SeqCst);
            let mut open = g.open.lock().unwrap();
            while !*open {
                open = g.cv.wait(open).unwrap();
            }
            Err(std::io::Error::other("released at the end of the test"))
        })
    }

    fn wait_entered(&self, n: usize) {
        let t0 = Instant::now();
        while self.entered.load(SeqCst) < n {
            assert!(
                t0.elapsed() < WAIT,
                "{} lookups started, not {n}",
                self.entered.load(SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

fn hanging_cfg(gate: &Arc<Gate>, connect_timeout: Duration) -> Config {
    Config {
        connect_timeout,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        backoff_min: Duration::from_millis(10),
        resolver: Some(gate.hook()),
        ..Config::default()
    }
}

/// Five clients aimed at five names that hang (each stuck in its lookup) while a sixth resolves
/// `localhost` with the system resolver: the sixth opens at once. (Before, lookups ran on the
/// runtime's four blocking threads and were never cancelled: four hanging names kept every
/// other lookup waiting for good.)
#[test]
fn resolve_hanging_names_never_delay_another() {
    let srv = Server::start(ServerConfig::default()).unwrap();
    let gate = Arc::new(Gate::default());
    let mut stuck = Vec::new();
    for i in 0..5 {
        let c = Client::connect(
            &format!("ws://hang-{i}.test:9/"),
            Arc::new(hanging_cfg(&gate, Duration::from_secs(60))),
            States::new().sink(),
        )
        .unwrap();
        stuck.push(c);
    }
    // Four are enough to fill a pool of four blocking threads (the old design).
    gate.wait_entered(4);
    let rec = States::new();
    let t0 = Instant::now();
    let url = format!("ws://localhost:{}/", srv.addr().port());
    let ok = Client::connect(
        &url,
        Arc::new(Config {
            connect_timeout: Duration::from_secs(60),
            ..Config::default()
        }),
        rec.sink(),
    )
    .unwrap();
    let (s, _) = rec.first_outcome(WAIT);
    assert!(is(&s, State::Open, Reason::None), "{s:?}");
    eprintln!(
        "localhost opened {:?} after the start, with 5 lookups hanging",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    ok.close(true);
    // All five lookups run at once, each on its own thread.
    gate.wait_entered(5);
    for c in &stuck {
        c.close(true);
    }
    gate.release();
}

/// A lookup that hangs ends the attempt at the connect timeout with CONNECT_TIMEOUT and a detail
/// naming the step; the next attempts join the same lookup instead of starting another.
#[test]
fn resolve_hanging_lookup_ends_the_attempt_within_the_connect_timeout() {
    let gate = Arc::new(Gate::default());
    let timeout = Duration::from_millis(400);
    let rec = States::new();
    let c = Client::connect(
        "ws://hang-timeout.test/",
        Arc::new(hanging_cfg(&gate, timeout)),
        rec.sink(),
    )
    .unwrap();
    let (s, took) = rec.first_outcome(WAIT);
    assert!(is(&s, State::Reconnecting, Reason::ConnectTimeout), "{s:?}");
    assert!(
        s.detail
            .contains("name resolution of hang-timeout.test did not finish within 400ms"),
        "{:?}",
        s.detail
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "{took:?}"
    );
    // Two more attempts time out the same way, on the lookup already in flight.
    let (_, _) = rec.wait(WAIT, |s| s.state == State::Reconnecting && s.attempt >= 3);
    assert_eq!(gate.entered.load(SeqCst), 1, "one lookup for all attempts");
    c.close(true);
    gate.release();
}

/// An IP literal never reaches the resolver (a hook that panics is never called), and a name
/// the hook answers connects to what it said.
#[test]
fn resolve_uses_the_answer_and_skips_ip_literals() {
    let srv = Server::start(ServerConfig::default()).unwrap();
    let port = srv.addr().port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = asked.clone();
    let cfg = Config {
        resolver: Some(ResolverHook::new(move |host, p| {
            a.lock().unwrap().push(host.to_owned());
            // First an address nobody listens on, then the server: the second is tried.
            Ok(vec![
                SocketAddr::from(([127, 0, 0, 1], 1)),
                SocketAddr::from(([127, 0, 0, 1], p)),
            ])
        })),
        ..Config::default()
    };
    for url in [
        format!("ws://127.0.0.1:{port}/"),
        format!("ws://Server.Test:{port}/"),
    ] {
        let rec = States::new();
        let c = Client::connect(&url, Arc::new(cfg.clone()), rec.sink()).unwrap();
        let (s, _) = rec.first_outcome(WAIT);
        assert!(is(&s, State::Open, Reason::None), "{url}: {s:?}");
        c.close(true);
    }
    assert_eq!(*asked.lock().unwrap(), ["server.test"]);
}
