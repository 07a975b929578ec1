//! The whole client task on tokio's paused clock, over a real loopback socket: a server that
//! completes the handshake and then never reads again. The heartbeat's detection bound is checked
//! exactly, in virtual time, with the production defaults (30 s interval, 10 s timeout, 3 misses).

use std::sync::Arc;
use std::time::Duration;

use hbws::{Client, Config, Event, EventSink, HeartbeatEvent, Reason, State};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug)]
enum Seen {
    State(State, Reason, Instant),
    Missed(u32),
}

struct Sink(mpsc::UnboundedSender<Seen>);

impl EventSink for Sink {
    fn event(&mut self, e: &Event<'_>) {
        let now = Instant::now();
        let _ = match e {
            Event::State(s) => self.0.send(Seen::State(s.state, s.reason, now)),
            Event::Heartbeat(HeartbeatEvent::Missed { missed }) => {
                self.0.send(Seen::Missed(*missed))
            }
            _ => Ok(()),
        };
    }
}

/// Accepts connections, completes the upgrade, then holds them without ever reading.
async fn silent_server(listener: tokio::net::TcpListener) {
    let mut held = Vec::new();
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        held.push(ws);
    }
}

async fn detection(cfg: Config) -> (Duration, Vec<u32>) {
    detection_with_traffic(cfg, 0).await
}

/// As [`detection`], with `flood` 4 KiB messages queued once the connection is open.
async fn detection_with_traffic(cfg: Config, flood: usize) -> (Duration, Vec<u32>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(silent_server(listener));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Client::connect_on(
        &tokio::runtime::Handle::current(),
        &url,
        Arc::new(cfg),
        Some(Box::new(Sink(tx))),
    )
    .unwrap();
    let mut opened = None;
    let mut misses = Vec::new();
    loop {
        match rx.recv().await.unwrap() {
            Seen::State(State::Open, _, at) => {
                opened = Some(at);
                let chunk = vec![b'x'; 4096];
                for _ in 0..flood {
                    if client.send_binary(&chunk).is_err() {
                        break;
                    }
                }
            }
            Seen::Missed(n) => misses.push(n),
            Seen::State(State::Reconnecting, reason, at) => {
                assert_eq!(reason, Reason::HeartbeatTimeout);
                client.close(false);
                return (at - opened.expect("opened first"), misses);
            }
            Seen::State(s, r, _) if s != State::Connecting => panic!("unexpected {s:?} {r:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn silent_link_is_declared_dead_exactly_at_interval_plus_misses_times_timeout() {
    let (elapsed, misses) = detection(Config::default()).await;
    assert_eq!(misses, vec![1, 2, 3]);
    assert_eq!(
        elapsed,
        Duration::from_secs(30 + 3 * 10),
        "bound is ping_interval + max_missed x pong_timeout"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn without_reprobe_the_bound_is_misses_times_interval_plus_timeout() {
    let cfg = Config {
        reprobe: false,
        ..Config::default()
    };
    let (elapsed, misses) = detection(cfg).await;
    assert_eq!(misses, vec![1, 2, 3]);
    assert_eq!(elapsed, Duration::from_secs(3 * 30 + 10));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn five_misses_at_fifty_seconds() {
    let cfg = Config {
        ping_interval: Duration::from_secs(50),
        pong_timeout: Duration::from_secs(10),
        max_missed: 5,
        ..Config::default()
    };
    let (elapsed, misses) = detection(cfg).await;
    assert_eq!(misses, vec![1, 2, 3, 4, 5]);
    assert_eq!(elapsed, Duration::from_secs(50 + 5 * 10));
}

/// A server that completes the handshake and drops the connection at once, forever.
async fn flaky_server(listener: tokio::net::TcpListener) {
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        drop(tokio_tungstenite::accept_async(tcp).await);
    }
}

struct Attempts(mpsc::UnboundedSender<(State, u32, Duration)>);

impl EventSink for Attempts {
    fn event(&mut self, e: &Event<'_>) {
        if let Event::State(s) = e {
            let _ = self.0.send((s.state, s.attempt, s.delay));
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn accept_then_drop_server_cannot_cause_a_tight_loop() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(flaky_server(listener));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cfg = Config::default();
    let client = Client::connect_on(
        &tokio::runtime::Handle::current(),
        &url,
        Arc::new(cfg.clone()),
        Some(Box::new(Attempts(tx))),
    )
    .unwrap();
    let start = Instant::now();
    let mut retries = Vec::new();
    let mut opens = 0;
    while retries.len() < 8 {
        match rx.recv().await.unwrap() {
            (State::Open, _, _) => opens += 1,
            (State::Reconnecting, attempt, delay) => retries.push((attempt, delay)),
            _ => {}
        }
    }
    client.close(false);
    // Every connection opened, none proved itself, so the count never reset: attempts 1..=8 with
    // delays under a growing ceiling and never below the floor.
    assert!(opens >= 8);
    let attempts: Vec<u32> = retries.iter().map(|r| r.0).collect();
    assert_eq!(attempts, (1..=8).collect::<Vec<_>>());
    for (n, (_, delay)) in retries.iter().enumerate() {
        let ceiling = cfg.backoff_cap.min(cfg.backoff_base * 2u32.pow(n as u32));
        assert!(
            *delay >= cfg.backoff_min && *delay <= ceiling,
            "attempt {}: {delay:?}",
            n + 1
        );
    }
    // Eight reconnects took virtual seconds, not a busy loop.
    // (The eighth delay has only just begun.)
    assert!(Instant::now() - start >= retries[..7].iter().map(|r| r.1).sum::<Duration>());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn full_send_buffer_cannot_delay_the_verdict() {
    // The server never reads, so the client's writes stall once the socket buffers are full; the
    // stalled write must not hold the heartbeat hostage.
    let cfg = Config {
        send_queue_messages: 4096,
        send_queue_bytes: 64 << 20,
        ..Config::default()
    };
    let (elapsed, _) = detection_with_traffic(cfg, 4096).await;
    assert!(elapsed <= Duration::from_secs(60), "{elapsed:?}");
}
