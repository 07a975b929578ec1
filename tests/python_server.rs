//! Against a mainstream RFC 6455 server that speaks no text heartbeat: python `websockets`
//! (tests/support/ws_server.py; `.ci/run` installs it). The test fails, never skips, when
//! python3 or the package is missing.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hbws::{Client, Config, Event, EventSink, Reason, State};

const WAIT: Duration = Duration::from_secs(20);

/// The python server, with its stdout lines.
struct PyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    port: u16,
}

impl PyServer {
    fn start(args: &[&str]) -> PyServer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ws_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed (with `pip install websockets`)");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let first = lines
            .recv_timeout(WAIT)
            .expect("the python websockets server did not start: is `websockets` installed?");
        let port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        PyServer {
            child,
            stdin,
            lines,
            port,
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// The next line that starts with `prefix`.
    fn wait_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(_) => panic!("no {prefix:?} line from the python server"),
            }
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        drop(self.stdin.take().map(|mut s| s.flush()));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Log {
    states: Vec<(State, Reason, Instant)>,
    messages: Vec<Vec<u8>>,
    pings_answered: u64,
}

struct Sink(Arc<Mutex<Log>>);

impl EventSink for Sink {
    fn event(&mut self, e: &Event<'_>) {
        let mut g = self.0.lock().unwrap();
        match e {
            Event::State(s) => g.states.push((s.state, s.reason, Instant::now())),
            Event::Message { data, .. } => g.messages.push(data.to_vec()),
            Event::Heartbeat(hbws::HeartbeatEvent::ServerPing { protocol: true }) => {
                g.pings_answered += 1
            }
            _ => {}
        }
    }
}

fn wait(log: &Arc<Mutex<Log>>, what: &str, pred: impl Fn(&Log) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred(&log.lock().unwrap()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Close always sends a Close frame: with the default text heartbeat, against a server that
/// does not answer text pings, the confirming ping may take only its share of the close
/// timeout and the server sees 1000 within the timeout. (f0e9d24: the closing ping waited the
/// whole close timeout for a `pong`, no Close frame was sent, the server saw 1006.)
#[test]
fn close_sends_close_frame_to_plain_server() {
    let py = PyServer::start(&[]);
    let log = Arc::new(Mutex::new(Log::default()));
    let cfg = Config::default();
    let timeout = cfg.close_timeout;
    let c = Client::connect(&py.url(), Arc::new(cfg), Some(Box::new(Sink(log.clone())))).unwrap();
    py.wait_line("open");
    c.send_text("hello").unwrap();
    wait(&log, "the echo", |l| {
        l.messages.iter().any(|m| m == b"hello")
    });
    let t0 = Instant::now();
    c.close(true);
    let took = t0.elapsed();
    let closed = py.wait_line("closed");
    eprintln!("python websockets saw {closed:?}; hb_close took {took:?}");
    assert!(closed.starts_with("closed 1000"), "{closed}");
    assert!(took < timeout, "close took {took:?}");
}

/// A healthy session with a mainstream server: its protocol Pings are answered (it would drop us
/// otherwise: websockets closes with 1011 after an unanswered ping), messages go both ways, and
/// our code and reason reach it.
#[test]
fn plain_server_session_with_protocol_pings() {
    let py = PyServer::start(&["--ping-interval", "0.1"]);
    let log = Arc::new(Mutex::new(Log::default()));
    let cfg = Config {
        heartbeat_mode: hbws::config::HeartbeatMode::Protocol,
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(150),
        ..Config::default()
    };
    let c = Client::connect(&py.url(), Arc::new(cfg), Some(Box::new(Sink(log.clone())))).unwrap();
    py.wait_line("open");
    wait(&log, "server pings answered", |l| l.pings_answered >= 5);
    c.send_binary(&[1, 2, 3]).unwrap();
    wait(&log, "the echo", |l| {
        l.messages.iter().any(|m| m == &[1, 2, 3])
    });
    c.close_with(4001, "done here", true);
    let closed = py.wait_line("closed");
    assert_eq!(closed, "closed 4001 done here");
    let g = log.lock().unwrap();
    assert_eq!(
        g.states.iter().filter(|s| s.0 == State::Open).count(),
        1,
        "one connection throughout"
    );
}
