//! Test support for the connect tests (tests/handshake.rs, tests/resolve.rs): a recorder of a
//! client's state changes, and a raw upgrade server on loopback that answers with whatever the
//! test writes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hbws::{Event, EventSink, Reason, State, StateChange};

/// Generous bound for waiting on a real-socket event.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct States {
    log: Mutex<Vec<(StateChange, Instant)>>,
    cv: Condvar,
}

struct Sink(Arc<States>);

impl EventSink for Sink {
    fn event(&mut self, e: &Event<'_>) {
        if let Event::State(s) = e {
            self.0
                .log
                .lock()
                .unwrap()
                .push(((*s).clone(), Instant::now()));
            self.0.cv.notify_all();
        }
    }
}

impl States {
    pub fn new() -> Arc<States> {
        Arc::new(States::default())
    }

    pub fn sink(self: &Arc<Self>) -> Option<Box<dyn EventSink>> {
        Some(Box::new(Sink(self.clone())))
    }

    /// Waits for the first state change other than CONNECTING; panics with the log after `t`.
    pub fn first_outcome(&self, t: Duration) -> (StateChange, Duration) {
        self.wait(t, |s| s.state != State::Connecting)
    }

    /// Waits for a state change matching `pred`; returns it and how long after the CONNECTING
    /// before it it came.
    pub fn wait(
        &self,
        t: Duration,
        pred: impl Fn(&StateChange) -> bool,
    ) -> (StateChange, Duration) {
        let deadline = Instant::now() + t;
        let mut g = self.log.lock().unwrap();
        loop {
            let mut connecting = None;
            for (s, at) in g.iter() {
                if s.state == State::Connecting {
                    connecting = Some(*at);
                } else if pred(s) {
                    let since = connecting.map_or(Duration::ZERO, |c| at.duration_since(c));
                    return (s.clone(), since);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let states: Vec<_> = g.iter().map(|(s, _)| s.clone()).collect();
                panic!("timed out; states: {states:#?}");
            }
            g = self.cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    pub fn all(&self) -> Vec<StateChange> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }
}

pub fn is(s: &StateChange, state: State, reason: Reason) -> bool {
    s.state == state && s.reason == reason
}

/// A loopback server that reads each upgrade request and writes `answer(request, accept)`,
/// where `accept` is the right Sec-WebSocket-Accept for the request's key. Connections stay
/// open until the server is dropped (the process ends).
pub struct RawServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl RawServer {
    pub fn start(answer: impl Fn(&str, &str) -> String + Send + 'static) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            for tcp in listener.incoming() {
                let Ok(mut tcp) = tcp else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let key = header(&text, "Sec-WebSocket-Key").unwrap_or_default();
                let accept =
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                let reply = answer(&text, &accept);
                // Recorded before the answer goes out, so a test that saw the answer sees it.
                reqs.lock().unwrap().push(text);
                let _ = tcp.write_all(reply.as_bytes());
                open.push(tcp);
            }
        });
        RawServer { addr, requests }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

/// A header's value in a request (first match, name without case).
pub fn header(req: &str, name: &str) -> Option<String> {
    req.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// A valid 101 with `extra` header lines (each ending in CRLF) after the required ones.
pub fn accept_with(accept: &str, extra: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    )
}
