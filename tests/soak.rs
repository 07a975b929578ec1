//! Soak / chaos: many clients through several fault-injecting proxies (tests/support/proxy.rs) in
//! front of the reference server, random faults for a number of rounds while every client keeps
//! sending numbered messages; then every fault is cleared and the books are checked.
//!
//! - `soak_chaos` (CI, about a minute): 200 clients, 8 proxies, 10 warm-up rounds + 20 rounds.
//! - `soak_chaos_long` (ignored): `HBWS_SOAK_CLIENTS` clients (default 1,000) for `HBWS_SOAK_SECS`
//!   seconds of chaos after the warm-up (default 3,600):
//!   `cargo test --release --test soak -- --ignored --nocapture`.
//!
//! Both print their seed; `HBWS_SOAK_SEED=N` replays a schedule, `HBWS_SOAK_RATE` sets the
//! messages per second per client, `HBWS_SOAK_WARMUP` the warm-up rounds, `HBWS_SOAK_ROUNDS` the
//! short test's rounds.
//!
//! A round is a fault phase (timed: the chaos schedule) and a heal phase: every proxy back to
//! `Pass`, then a barrier that sends each client a marker message and waits (on the server's
//! events) until every marker has arrived, re-sending a marker whose connection died meanwhile.
//! Past the barrier, every message sent before the marker has arrived, been reported dropped, or
//! was lost in a connection that died earlier.
//!
//! The ledger, per client, from the client's delivery reports (`Event::Delivery`: message n
//! is the n-th accepted, reported exactly once, in order): every *confirmed* message was received
//! by the server when the report came; no *dropped* message ever was; every message the server
//! did not receive was reported dropped or *unconfirmed* (written to a connection that died
//! before a pong vouched for it). Nothing is both received and dropped, nothing is neither
//! received nor reported, and no sequence number arrives twice.
//!
//! Resources: descriptors, threads and memory are measured after the warm-up rounds with
//! everything settled (every client OPEN, the server holding exactly one connection per client,
//! the count stable) and again at the end. Descriptors and threads must be equal. Heap in use
//! (`mallinfo2`: what the allocator handed out and did not get back) is the leak check: within
//! +5 %. RSS after `malloc_trim` also carries fragmentation of glibc's per-thread arenas under
//! constant reconnection, so it gets +30 %, enough to catch anything unbounded. Both bounds
//! leave out what the test's own books grew by (a bit per message, a range per unconfirmed
//! report).
//!
//! Nothing waits on a guessed sleep: waits are on client and server events (with generous
//! timeouts); only the fault phases are timed, and /proc is polled until it settles.

#[path = "support/proxy.rs"]
mod proxy;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hbws::{Client, Config, Delivery, Event, EventSink, HeartbeatEvent, SendError, State};
use hbws_server::{EventHook, Server, ServerConfig, ServerEvent};
use proxy::{Kill, Mode, Proxy};

/// The two soaks share the process-wide runtime and the /proc counters: never at the same time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Generous bound on any wait for events (a thousand clients reconnecting on two shared cores).
const WAIT: Duration = Duration::from_secs(120);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Parameters, PRNG, process figures.

#[derive(Clone, Debug)]
struct Params {
    clients: usize,
    proxies: usize,
    /// Stop after this many rounds (after the warm-up round) ...
    rounds: Option<usize>,
    /// ... or once the chaos has run this long.
    duration: Option<Duration>,
    /// Rounds before the baseline is taken.
    warmup_rounds: usize,
    fault_time: Duration,
    /// Messages per second per client.
    rate: f64,
    seed: u64,
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn seed() -> u64 {
    env("HBWS_SOAK_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id())
    })
}

/// SplitMix64: small, seedable, good enough for a fault schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

#[derive(Clone, Copy, Debug)]
struct Figures {
    fds: usize,
    threads: usize,
    /// RSS as found, and after `malloc_trim(0)` handed the allocator's free pages back.
    rss_kb: u64,
    rss_trimmed_kb: u64,
    /// Bytes glibc's allocator has handed out and not got back (`mallinfo2`, all arenas).
    heap_kb: u64,
}

fn figures() -> Figures {
    let rss_kb = rss_kb();
    // glibc keeps freed memory in its per-thread arenas (connection churn leaves peaks behind);
    // trimming first makes RSS track live memory, which is what a leak check needs.
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe { libc::malloc_trim(0) };
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    // In the arenas, and in blocks of their own (large allocations are mapped separately).
    let heap = (m.uordblks + m.hblkhd) as u64;
    Figures {
        fds: fds(),
        threads: threads(),
        rss_kb,
        rss_trimmed_kb: self::rss_kb(),
        heap_kb: heap / 1024,
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Both directions frozen, sockets open; resumes on heal.
    Blackhole,
    /// 15 ms each way: under the pong timeout, nothing should die.
    Lag,
    /// 300 ms each way: every ping misses, connections die and reconnect slowly.
    SlowLink,
    /// Every current and new connection reset.
    Rst,
    /// Every current and new connection closed with a FIN.
    Fin,
    /// Current connections reset, new handshakes never answered (connect timeouts).
    Partition,
    /// Server-to-client frozen in the middle of the next frame, for good.
    StallMidFrame,
    /// Current connections reset once, new ones pass.
    KillRst,
    /// Current connections closed with a FIN once, new ones pass.
    KillFin,
}

const FAULTS: [Fault; 9] = [
    Fault::Blackhole,
    Fault::Lag,
    Fault::SlowLink,
    Fault::Rst,
    Fault::Fin,
    Fault::Partition,
    Fault::StallMidFrame,
    Fault::KillRst,
    Fault::KillFin,
];

impl Fault {
    fn pick(rng: &mut Rng) -> Fault {
        // Two in five proxies stay healthy in a round.
        if rng.below(5) < 2 {
            Fault::None
        } else {
            FAULTS[rng.below(FAULTS.len() as u64) as usize]
        }
    }

    fn apply(self, px: &Proxy) {
        match self {
            Fault::None => {}
            Fault::Blackhole => px.set_mode(Mode::Blackhole),
            Fault::Lag => px.set_mode(Mode::Delay(Duration::from_millis(15))),
            Fault::SlowLink => px.set_mode(Mode::Delay(Duration::from_millis(300))),
            Fault::Rst => px.set_mode(Mode::Rst),
            Fault::Fin => px.set_mode(Mode::Fin),
            Fault::Partition => {
                px.set_mode(Mode::NeverForward);
                px.drop_connections(Kill::Rst);
            }
            Fault::StallMidFrame => px.set_mode(Mode::StallMidFrame),
            Fault::KillRst => px.drop_connections(Kill::Rst),
            Fault::KillFin => px.drop_connections(Kill::Fin),
        }
    }

    fn heal(self, px: &Proxy) {
        px.set_mode(Mode::Pass);
        // Held handshakes and connections frozen mid-frame never recover by themselves: end them
        // (after `Pass`, so that no new connection is caught in the fault).
        if matches!(self, Fault::Partition | Fault::StallMidFrame) {
            px.drop_connections(Kill::Fin);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The books.

/// Everything known about one client's messages and connection, behind one mutex.
struct Book {
    /// The next sequence number; also the number of messages the client accepted.
    next_seq: u64,
    /// The next message id a delivery report must start at (id = sequence number + 1).
    next_report: u64,
    /// Reports that did not start at `next_report`.
    bad_reports: u64,
    /// Messages reported confirmed, and of those, not received by the server at the time.
    confirmed: u64,
    confirmed_not_received: u64,
    /// `[lo, hi)` sequence-number ranges reported unconfirmed / dropped (adjacent ones merged).
    unconfirmed: Vec<(u64, u64)>,
    dropped_ranges: Vec<(u64, u64)>,
    /// Received sequence numbers, a bit each.
    received: Vec<u64>,
    received_n: u64,
    duplicates: u64,
    /// Received, never accepted (or unparseable).
    unknown: u64,
    /// Sends refused with `QueueFull` (not accepted: no sequence number used).
    refused: u64,
    /// Any other refusal: a failure.
    send_errors: Vec<String>,
    // What the client reported.
    state: State,
    opens: u64,
    deaths: u64,
    dropped: u64,
    pongs: u64,
    /// The barrier's marker: its sequence number and `deaths` when it was sent.
    marker: Option<(u64, u64)>,
}

impl Book {
    fn new() -> Book {
        Book {
            next_seq: 0,
            next_report: 1,
            bad_reports: 0,
            confirmed: 0,
            confirmed_not_received: 0,
            unconfirmed: Vec::new(),
            dropped_ranges: Vec::new(),
            received: Vec::new(),
            received_n: 0,
            duplicates: 0,
            unknown: 0,
            refused: 0,
            send_errors: Vec::new(),
            state: State::Connecting,
            opens: 0,
            deaths: 0,
            dropped: 0,
            pongs: 0,
            marker: None,
        }
    }

    fn has(&self, seq: u64) -> bool {
        self.received
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    fn receive(&mut self, seq: u64) {
        if seq >= self.next_seq {
            self.unknown += 1;
            return;
        }
        let w = (seq / 64) as usize;
        if self.received.len() <= w {
            self.received.resize(w + 1, 0);
        }
        let bit = 1 << (seq % 64);
        if self.received[w] & bit != 0 {
            self.duplicates += 1;
        } else {
            self.received[w] |= bit;
            self.received_n += 1;
        }
    }

    /// Heap bytes these books hold: they grow with the run (a bit per message, a range per
    /// exposure), and the resource check must not charge that to the library.
    fn footprint(&self) -> usize {
        (self.unconfirmed.capacity() + self.dropped_ranges.capacity())
            * std::mem::size_of::<(u64, u64)>()
            + self.received.capacity() * std::mem::size_of::<u64>()
    }

    /// A delivery report for ids `first .. first + count`.
    fn report(&mut self, first: u64, count: u64, outcome: Delivery) {
        if first != self.next_report || count == 0 {
            self.bad_reports += 1;
        }
        self.next_report = first + count;
        let (lo, hi) = (first - 1, first - 1 + count);
        match outcome {
            Delivery::Confirmed => {
                // The server read them before it answered the ping: its hook has booked them.
                self.confirmed += count;
                self.confirmed_not_received += (lo..hi).filter(|&s| !self.has(s)).count() as u64;
            }
            Delivery::Unconfirmed => push_range(&mut self.unconfirmed, lo, hi),
            Delivery::Dropped => push_range(&mut self.dropped_ranges, lo, hi),
        }
    }

    /// Sequence numbers in `ranges`, and how many of them the server never received.
    fn tally(&self, ranges: &[(u64, u64)]) -> (u64, u64) {
        ranges.iter().fold((0, 0), |(n, missing), &(lo, hi)| {
            let m = (lo..hi).filter(|&s| !self.has(s)).count() as u64;
            (n + hi - lo, missing + m)
        })
    }
}

fn push_range(ranges: &mut Vec<(u64, u64)>, lo: u64, hi: u64) {
    match ranges.last_mut() {
        Some(last) if last.1 == lo => last.1 = hi,
        _ => ranges.push((lo, hi)),
    }
}

/// A client's balance at the end.
#[derive(Default, Debug, Clone, Copy)]
struct Balance {
    accepted: u64,
    received: u64,
    dropped: u64,
    /// Missing at the server without a drop report.
    lost: u64,
    /// Reported unconfirmed, and of those, never received.
    unconfirmed: u64,
    unconfirmed_missing: u64,
    /// Missing, and neither dropped nor unconfirmed (must be 0).
    unreported: u64,
    /// Reported dropped, yet received (must be 0).
    dropped_received: u64,
    confirmed: u64,
    confirmed_not_received: u64,
    bad_reports: u64,
    duplicates: u64,
    unknown: u64,
    refused: u64,
    deaths: u64,
}

impl Balance {
    fn add(&mut self, o: &Balance) {
        self.accepted += o.accepted;
        self.received += o.received;
        self.dropped += o.dropped;
        self.lost += o.lost;
        self.unconfirmed += o.unconfirmed;
        self.unconfirmed_missing += o.unconfirmed_missing;
        self.unreported += o.unreported;
        self.dropped_received += o.dropped_received;
        self.confirmed += o.confirmed;
        self.confirmed_not_received += o.confirmed_not_received;
        self.bad_reports += o.bad_reports;
        self.duplicates += o.duplicates;
        self.unknown += o.unknown;
        self.refused += o.refused;
        self.deaths += o.deaths;
    }
}

/// Wakes waiters whenever a client or the server reports something.
#[derive(Default)]
struct Pulse {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Pulse {
    fn bump(&self) {
        *lock(&self.generation) += 1;
        self.cv.notify_all();
    }

    /// Waits until `pred` holds (re-checked after every event, and at least every 200 ms so a
    /// predicate that acts, such as re-sending a marker, gets to act). False on timeout.
    fn wait_until(&self, timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = *lock(&self.generation);
            if pred() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let until = (now + Duration::from_millis(200)).min(deadline);
            let mut g = lock(&self.generation);
            while *g == seen {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                g = self
                    .cv
                    .wait_timeout(g, until - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }
}

struct Shared {
    books: Vec<Mutex<Book>>,
    pulse: Pulse,
    /// RECONNECTING reasons seen, by name.
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn book(&self, i: usize) -> MutexGuard<'_, Book> {
        lock(&self.books[i])
    }

    /// The server received `text`, `"<client>:<seq>"`.
    fn on_server_text(&self, text: &str) {
        let parsed = text
            .split_once(':')
            .and_then(|(c, s)| Some((c.parse::<usize>().ok()?, s.parse::<u64>().ok()?)));
        match parsed {
            Some((c, seq)) if c < self.books.len() => self.book(c).receive(seq),
            _ => self.book(0).unknown += 1,
        }
        self.pulse.bump();
    }

    /// Sends client `i` its next numbered message; returns the sequence number if accepted.
    /// A `marker` is booked as the client's barrier marker (or cleared if refused).
    fn send(&self, clients: &[Client], i: usize, marker: bool) -> Option<u64> {
        let mut b = self.book(i);
        let seq = b.next_seq;
        if marker {
            b.marker = None;
        }
        // Under the book's lock, so the server cannot report it before it is booked, and no
        // connection death can slip between the send and the marker's record.
        match clients[i].send_text(&format!("{i}:{seq}")) {
            Ok(_) => {
                b.next_seq += 1;
                if marker {
                    b.marker = Some((seq, b.deaths));
                }
                Some(seq)
            }
            Err(SendError::QueueFull) => {
                b.refused += 1;
                None
            }
            Err(e) => {
                b.send_errors.push(format!("seq {seq}: {e:?}"));
                None
            }
        }
    }

    fn send_marker(&self, clients: &[Client], i: usize) {
        self.send(clients, i, true);
    }

    /// Sends every client a marker and waits until the server has all of them, re-sending a
    /// marker that may have died with its connection (or that a full queue refused).
    fn barrier(&self, clients: &[Client], what: &str) {
        for i in 0..clients.len() {
            self.send_marker(clients, i);
        }
        let mut pending = Vec::new();
        let ok = self.pulse.wait_until(WAIT, || {
            pending.clear();
            for i in 0..clients.len() {
                let resend = {
                    let b = self.book(i);
                    match b.marker {
                        Some((seq, _)) if b.has(seq) => continue,
                        Some((_, deaths)) => b.deaths > deaths,
                        None => true,
                    }
                };
                if resend {
                    self.send_marker(clients, i);
                }
                pending.push(i);
            }
            pending.is_empty()
        });
        if !ok {
            let detail: Vec<String> = pending
                .iter()
                .take(10)
                .map(|&i| {
                    let b = self.book(i);
                    format!(
                        "client {i}: state {:?}, marker {:?}, deaths {}, opens {}, stats {:?}",
                        b.state,
                        b.marker,
                        b.deaths,
                        b.opens,
                        clients[i].stats()
                    )
                })
                .collect();
            panic!(
                "{what}: {} of {} markers never reached the server within {WAIT:?}:\n{}",
                pending.len(),
                clients.len(),
                detail.join("\n")
            );
        }
    }

    fn wait_all_open(&self, clients: &[Client], what: &str) {
        let ok = self.pulse.wait_until(WAIT, || {
            (0..clients.len()).all(|i| self.book(i).state == State::Open)
        });
        if !ok {
            let not: Vec<String> = (0..clients.len())
                .filter_map(|i| {
                    let b = self.book(i);
                    (b.state != State::Open).then(|| format!("{i}: {:?}", b.state))
                })
                .take(20)
                .collect();
            panic!("{what}: clients not OPEN within {WAIT:?}: {not:?}");
        }
    }

    /// What all the books hold, in KiB (see [`Book::footprint`]).
    fn books_kb(&self) -> u64 {
        let bytes: usize = self.books.iter().map(|m| lock(m).footprint()).sum();
        bytes as u64 / 1024
    }

    fn balance(&self, i: usize) -> Balance {
        let b = self.book(i);
        let accepted = b.next_seq;
        let missing = accepted - b.received_n;
        assert!(
            b.dropped <= missing,
            "client {i}: {} reported dropped but only {missing} missing: some were received and \
             dropped",
            b.dropped
        );
        let (unconfirmed, unconfirmed_missing) = b.tally(&b.unconfirmed);
        let (dropped_ids, dropped_missing) = b.tally(&b.dropped_ranges);
        assert_eq!(
            dropped_ids, b.dropped,
            "client {i}: dropped ids vs Dropped counts"
        );
        // Ids not yet reported (in flight on the live connection) count as unreported if missing.
        let unreported = missing - unconfirmed_missing - dropped_missing;
        Balance {
            accepted,
            received: b.received_n,
            dropped: b.dropped,
            lost: missing - b.dropped,
            unconfirmed,
            unconfirmed_missing,
            unreported,
            dropped_received: dropped_ids - dropped_missing,
            confirmed: b.confirmed,
            confirmed_not_received: b.confirmed_not_received,
            bad_reports: b.bad_reports,
            duplicates: b.duplicates,
            unknown: b.unknown,
            refused: b.refused,
            deaths: b.deaths,
        }
    }
}

/// A client's event sink: keeps its state, counts connection deaths, drops and pongs.
struct Sink {
    i: usize,
    shared: Arc<Shared>,
}

impl EventSink for Sink {
    fn event(&mut self, e: &Event<'_>) {
        match e {
            Event::State(s) => {
                {
                    let mut b = self.shared.book(self.i);
                    if s.state == State::Reconnecting && b.state == State::Open {
                        b.deaths += 1;
                    }
                    if s.state == State::Open {
                        b.opens += 1;
                    }
                    b.state = s.state;
                }
                if s.state == State::Reconnecting {
                    *lock(&self.shared.reasons)
                        .entry(format!("{:?}", s.reason))
                        .or_default() += 1;
                }
                self.shared.pulse.bump();
            }
            Event::Dropped { count, .. } => {
                self.shared.book(self.i).dropped += count;
                self.shared.pulse.bump();
            }
            Event::Delivery {
                first,
                count,
                outcome,
            } => self.shared.book(self.i).report(*first, *count, *outcome),
            Event::Heartbeat(HeartbeatEvent::Pong { .. }) => self.shared.book(self.i).pongs += 1,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Sends numbered messages round-robin at `rate` per client per second while not `paused`, until
/// `stop` (the thread outlives the measurements, so the thread count compares like with like).
fn sender(
    shared: Arc<Shared>,
    clients: Arc<Vec<Client>>,
    rate: f64,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let tick = Duration::from_millis(20);
    let per_tick = rate * clients.len() as f64 * tick.as_secs_f64();
    let (mut credit, mut cursor) = (0.0, 0);
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if paused.load(Ordering::SeqCst) {
            credit = 0.0;
        } else {
            credit += per_tick;
        }
        while credit >= 1.0 {
            shared.send(&clients, cursor, false);
            cursor = (cursor + 1) % clients.len();
            credit -= 1.0;
        }
        // Pacing of the load generator, not a wait for anything.
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// Waits until every client is OPEN, the server holds exactly one connection per client, and
/// the descriptor count has not moved across several looks; returns it.
fn settle(shared: &Shared, srv: &Server, clients: &[Client]) -> usize {
    shared.wait_all_open(clients, "settle");
    let deadline = Instant::now() + WAIT;
    let (mut last, mut same) = (usize::MAX, 0);
    loop {
        let n = fds();
        let ok =
            srv.connections() == clients.len() && clients.iter().all(|c| c.state() == State::Open);
        same = if ok && n == last { same + 1 } else { 0 };
        last = n;
        if same >= 5 {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: server connections {} for {} clients, fds {n}",
            srv.connections(),
            clients.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(p: Params) {
    let _serial = lock(&SERIAL);
    let started = Instant::now();
    eprintln!("soak: {p:?} (replay with HBWS_SOAK_SEED={})", p.seed);
    let mut rng = Rng(p.seed);

    let shared = Arc::new(Shared {
        books: (0..p.clients).map(|_| Mutex::new(Book::new())).collect(),
        pulse: Pulse::default(),
        reasons: Mutex::new(BTreeMap::new()),
    });
    let hook: EventHook = {
        let shared = shared.clone();
        Arc::new(move |e: &ServerEvent| {
            if let ServerEvent::Text { text, .. } = e {
                shared.on_server_text(text);
            }
        })
    };
    let srv = Server::start(ServerConfig {
        // The server pings too (text and protocol) and drops clients silent for 2.5 s.
        ping_interval: Some(Duration::from_millis(500)),
        pong_timeout: Duration::from_millis(500),
        max_missed: 5,
        echo: false,
        on_event: Some(hook),
        ..ServerConfig::default()
    })
    .unwrap();
    let proxies: Vec<Proxy> = (0..p.proxies).map(|_| Proxy::start(srv.addr())).collect();
    let cfg = Arc::new(Config {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(100),
        max_missed: 3,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(500),
        backoff_min: Duration::from_millis(20),
        connect_timeout: Duration::from_millis(1000),
        ..Config::default()
    });
    let clients: Arc<Vec<Client>> = Arc::new(
        (0..p.clients)
            .map(|i| {
                let sink = Sink {
                    i,
                    shared: shared.clone(),
                };
                Client::connect(
                    &proxies[i % p.proxies].url(),
                    cfg.clone(),
                    Some(Box::new(sink)),
                )
                .unwrap()
            })
            .collect(),
    );
    shared.wait_all_open(&clients, "first connect");
    eprintln!(
        "soak: {} clients OPEN after {:?}",
        p.clients,
        started.elapsed()
    );

    let paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (shared, clients) = (shared.clone(), clients.clone());
        let (paused, stop) = (paused.clone(), stop.clone());
        std::thread::Builder::new()
            .name("soak-sender".into())
            .spawn(move || sender(shared, clients, p.rate, paused, stop))
            .unwrap()
    };

    let mut injected: BTreeMap<String, u64> = BTreeMap::new();
    let mut round = |rng: &mut Rng, n: usize| {
        let mut faults: Vec<Fault> = proxies.iter().map(|_| Fault::pick(rng)).collect();
        if faults.iter().all(|f| *f == Fault::None) {
            let k = rng.below(faults.len() as u64) as usize;
            faults[k] = FAULTS[0];
        }
        for (px, f) in proxies.iter().zip(&faults) {
            f.apply(px);
            if *f != Fault::None {
                *injected.entry(format!("{f:?}")).or_default() += 1;
            }
        }
        // The chaos schedule: the fault lasts a fixed time.
        std::thread::sleep(p.fault_time);
        for (px, f) in proxies.iter().zip(&faults) {
            f.heal(px);
        }
        shared.barrier(&clients, &format!("round {n}"));
        // The server's own log is not needed (the hook keeps the books): keep memory flat.
        srv.clear_events();
    };

    // Warm-up rounds, then the baseline. The process's memory grows to a plateau over the first
    // rounds (runtime, slab and buffer high-water marks of peak connection churn) and stays there:
    // 200 clients measured 28 MB after one round, 37 MB after ten, 37-39 MB from round 10 to 60.
    for n in 0..p.warmup_rounds {
        round(&mut rng, n);
    }
    let warm_fds = settle(&shared, &srv, &clients);
    let base = Figures {
        fds: warm_fds,
        ..figures()
    };
    let base_books_kb = shared.books_kb();
    let chaos_started = Instant::now();
    eprintln!(
        "soak: baseline after {} warm-up rounds: {base:?} ({:?})",
        p.warmup_rounds,
        started.elapsed()
    );

    let mut rounds = 0;
    loop {
        if p.rounds.is_some_and(|r| rounds >= r)
            || p.duration.is_some_and(|d| chaos_started.elapsed() >= d)
        {
            break;
        }
        rounds += 1;
        round(&mut rng, p.warmup_rounds + rounds);
        if rounds % 10 == 0 {
            eprintln!(
                "soak: round {rounds}, {:?}, {:?}",
                chaos_started.elapsed(),
                figures()
            );
        }
    }
    let chaos_time = chaos_started.elapsed();

    // Faults are all cleared (every round heals). Stop sending, flush, settle.
    paused.store(true, Ordering::SeqCst);
    shared.barrier(&clients, "final barrier");
    shared.wait_all_open(&clients, "the end");
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.state(), State::Open, "client {i}");
    }
    // Descriptors back to the baseline once connections abandoned during the chaos have closed.
    let deadline = Instant::now() + WAIT;
    while fds() != base.fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let end = figures();
    let end_books_kb = shared.books_kb();
    let books_growth_kb = end_books_kb.saturating_sub(base_books_kb);
    let heap_limit_kb = base.heap_kb + base.heap_kb / 20 + books_growth_kb;
    let rss_limit_kb = base.rss_trimmed_kb + base.rss_trimmed_kb * 3 / 10 + books_growth_kb;
    let server_conns = srv.connections();
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();

    // The books, before closing (nothing is queued: the final barrier flushed every client).
    let mut total = Balance::default();
    let mut per_client = Vec::with_capacity(p.clients);
    for i in 0..p.clients {
        let b = shared.balance(i);
        total.add(&b);
        per_client.push(b);
    }
    let send_errors: Vec<String> = (0..p.clients)
        .flat_map(|i| {
            shared
                .book(i)
                .send_errors
                .iter()
                .map(|e| format!("client {i}: {e}"))
                .collect::<Vec<_>>()
        })
        .collect();
    let (opens, pongs): (u64, u64) = (0..p.clients)
        .map(|i| {
            let b = shared.book(i);
            (b.opens, b.pongs)
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let accepted_by_proxies: u64 = proxies.iter().map(Proxy::accepted).sum();

    // Close everyone (in parallel: each close runs its own handshake).
    for c in clients.iter() {
        c.close(false);
    }
    for c in clients.iter() {
        c.wait_done();
    }
    let dropped_at_close: u64 =
        (0..p.clients).map(|i| shared.book(i).dropped).sum::<u64>() - total.dropped;

    eprintln!(
        "soak report (seed {}):\n  \
         clients {}, proxies {}, rounds {rounds} (+{} warm-up), chaos {chaos_time:?}, total {:?}\n  \
         faults injected: {} {injected:?}\n  \
         connection deaths {} ({:?}), OPENs {opens}, pongs {pongs}, proxy accepts {accepted_by_proxies}\n  \
         ledger: accepted {}, received {}, dropped {} (+{dropped_at_close} at close), missing unreported {}; \
         confirmed {} (not received {}), unconfirmed {} (of them missing {}); \
         duplicates {}, unknown {}, bad reports {}, dropped yet received {}, refused (queue full) {}\n  \
         fds {} -> {}, threads {} -> {}, RSS {} kB -> {} kB ({:+.1} %), trimmed {} kB -> {} kB \
         ({:+.1} %), heap in use {} kB -> {} kB, of which the test's books {base_books_kb} kB -> \
         {end_books_kb} kB; server connections {server_conns}",
        p.seed,
        p.clients,
        p.proxies,
        p.warmup_rounds,
        started.elapsed(),
        injected.values().sum::<u64>(),
        total.deaths,
        lock(&shared.reasons),
        total.accepted,
        total.received,
        total.dropped,
        total.unreported,
        total.confirmed,
        total.confirmed_not_received,
        total.unconfirmed,
        total.unconfirmed_missing,
        total.duplicates,
        total.unknown,
        total.bad_reports,
        total.dropped_received,
        total.refused,
        base.fds,
        end.fds,
        base.threads,
        end.threads,
        base.rss_kb,
        end.rss_kb,
        (end.rss_kb as f64 / base.rss_kb as f64 - 1.0) * 100.0,
        base.rss_trimmed_kb,
        end.rss_trimmed_kb,
        (end.rss_trimmed_kb as f64 / base.rss_trimmed_kb as f64 - 1.0) * 100.0,
        base.heap_kb,
        end.heap_kb,
    );

    // The chaos happened.
    assert!(!injected.is_empty() && total.deaths > 0, "no fault bit");
    assert!(send_errors.is_empty(), "sends refused: {send_errors:?}");
    // The ledger.
    assert_eq!(total.unknown, 0, "the server received messages never sent");
    assert_eq!(total.duplicates, 0, "sequence numbers received twice");
    for (i, b) in per_client.iter().enumerate() {
        assert_eq!(b.accepted, b.received + b.dropped + b.lost, "client {i}");
        assert_eq!(b.bad_reports, 0, "client {i}: reports out of order: {b:?}");
        assert_eq!(
            b.confirmed_not_received, 0,
            "client {i}: confirmed, not received: {b:?}"
        );
        assert_eq!(
            b.dropped_received, 0,
            "client {i}: dropped and received: {b:?}"
        );
        assert_eq!(
            b.unreported, 0,
            "client {i}: accepted, never received, and not reported dropped or unconfirmed: {b:?}"
        );
        assert_eq!(b.lost, b.unconfirmed_missing, "client {i}: {b:?}");
    }
    assert_eq!(dropped_at_close, 0, "messages dropped by a clean close");
    // Resources flat.
    assert_eq!(server_conns, p.clients, "server connections");
    assert_eq!(end.fds, base.fds, "descriptors: {base:?} -> {end:?}");
    assert_eq!(end.threads, base.threads, "threads: {base:?} -> {end:?}");
    // Memory: what the allocator has handed out and not got back is the leak check (+5 %,
    // after the test's own books, which grow with the run). RSS, even trimmed, also carries
    // fragmentation across the allocator's per-thread arenas under a million reconnections;
    // it gets a wider bound that still catches anything unbounded.
    assert!(
        end.heap_kb <= heap_limit_kb,
        "heap in use grew more than 5 % beyond the books' own {books_growth_kb} kB: \
         {base:?} -> {end:?}"
    );
    assert!(
        end.rss_trimmed_kb <= rss_limit_kb,
        "RSS (trimmed) grew more than 30 % beyond the books' own {books_growth_kb} kB: \
         {base:?} -> {end:?}"
    );
}

#[test]
fn soak_chaos() {
    let clients = 200;
    run(Params {
        clients,
        proxies: 8,
        rounds: Some(env("HBWS_SOAK_ROUNDS").unwrap_or(20)),
        duration: None,
        warmup_rounds: env("HBWS_SOAK_WARMUP").unwrap_or(10),
        fault_time: Duration::from_millis(1200),
        rate: env("HBWS_SOAK_RATE").unwrap_or(4.0),
        seed: seed(),
    });
}

#[test]
#[ignore = "long soak: run with --ignored"]
fn soak_chaos_long() {
    let clients: usize = env("HBWS_SOAK_CLIENTS").unwrap_or(1000).max(1);
    run(Params {
        clients,
        proxies: (clients / 25).clamp(1, 16),
        rounds: None,
        duration: Some(Duration::from_secs(env("HBWS_SOAK_SECS").unwrap_or(3600))),
        warmup_rounds: env("HBWS_SOAK_WARMUP").unwrap_or(10),
        fault_time: Duration::from_millis(1500),
        rate: env("HBWS_SOAK_RATE").unwrap_or(2.0),
        seed: seed(),
    });
}
