//! A timeline of hbws keeping one WebSocket connection alive, driven only through the C ABI.
//!
//! ```text
//! cargo run --release --example demo              # scripted scenario against a local server
//! cargo run --release --example demo -- ws://HOST:PORT/PATH
//! ```
//!
//! Without arguments the demo starts the reference server (`hbws-server`) on loopback and drives
//! ONE client exclusively through the exported `hb_*` functions, exactly as a C program would:
//! `hb_config_*` setters, `hb_connect` with an `hb_callbacks` struct and `user_data` (an
//! `Arc` turned into a raw pointer and given back, once, by `release`), `hb_send_text`,
//! `hb_get_stats`, `hb_close`. Every callback prints one line of the timeline (elapsed seconds,
//! then `client |`); the server's heartbeat side is printed with `server |`, and what the demo
//! itself does with `demo   |`. The scenario:
//!
//! 1. connect and wait for OPEN;
//! 2. send `hello` and see the echo; two heartbeat round trips with their RTT; the client
//!    answering the server's pings (text and protocol);
//! 3. the server hangs (`set_silent(true)`: TCP stays up, nothing is answered): misses 1..3,
//!    then the verdict HEARTBEAT_TIMEOUT; the detection time measured from the last pong is
//!    printed next to the documented bound `interval + max_missed × pong_timeout` (2500 ms here);
//! 4. reconnect attempts with backoff delays: first into the hung server (the handshake is never
//!    answered: CONNECT_TIMEOUT after 800 ms), then, with the server stopped, refused TCP
//!    connects (CONNECT_ERROR); a message sent meanwhile waits in the offline queue; the server
//!    comes back, the client is OPEN again, the queued message goes out and is echoed;
//! 5. the counters from `hb_get_stats`, then `hb_close`: CLOSING, CLOSED, and `release`.
//!
//! Along the way `on_delivery` reports each message by id: confirmed once the pong of a later
//! ping (or of the one `hb_close` sends before its Close) proves the server read it.
//!
//! The client's log level is WARN here (`client | log: [WARN] ...` lines: misses, lost
//! connections); at INFO each RECONNECTING event would be repeated by a log line.
//!
//! The demo waits on events, not on guesses: the callbacks record what they see in a
//! `Mutex<Vec<_>>` + `Condvar`, and the main thread waits for each expected event with a 15 s
//! bound. If one does not come, the demo says what was missing and exits with status 1, so it
//! doubles as a smoke test. A run takes about 10 to 15 seconds.
//!
//! With one argument, a `ws://` URL, it connects there instead (heartbeat every 5 s, pong
//! timeout 3 s, 3 misses, backoff 0.5 to 10 s) and prints the same timeline. Every line typed on
//! stdin is sent as a text message. On end of input (Ctrl-D) the client is closed with
//! `hb_close` and the demo exits; there is no signal handler, so Ctrl-C simply kills the process
//! (no close handshake). To keep it running without a terminal, feed it an endless stdin, e.g.
//! `sleep infinity | cargo run --release --example demo -- ws://127.0.0.1:9001/`.

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt::Display;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hbws::ffi::*;
use hbws_server::{Server, ServerConfig, ServerEvent};

/// Bound on every wait for an expected event.
const WAIT: Duration = Duration::from_secs(15);

// The client's heartbeat settings in the scripted scenario.
const PING_INTERVAL_MS: u64 = 1000;
const PONG_TIMEOUT_MS: u64 = 500;
const MAX_MISSED: u32 = 3;

const CONNECTING: i32 = hb_state::HB_STATE_CONNECTING as i32;
const OPEN: i32 = hb_state::HB_STATE_OPEN as i32;
const RECONNECTING: i32 = hb_state::HB_STATE_RECONNECTING as i32;
const CLOSING: i32 = hb_state::HB_STATE_CLOSING as i32;
const CLOSED: i32 = hb_state::HB_STATE_CLOSED as i32;

// ---------------------------------------------------------------------------------------------
// Timeline output
// ---------------------------------------------------------------------------------------------

static START: OnceLock<Instant> = OnceLock::new();
/// Serialises output so lines from the three threads (main, client runtime, server runtime)
/// come out whole and in timestamp order.
static OUT: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prints one timeline line. Never panics (it runs inside `extern "C"` callbacks): a closed
/// stdout is ignored.
fn say(who: &str, msg: impl Display) {
    let _g = lock(&OUT);
    let t = START.get_or_init(Instant::now).elapsed();
    let _ = writeln!(
        std::io::stdout().lock(),
        "{:>7.3}s {who:<6} | {msg}",
        t.as_secs_f64()
    );
}

fn banner(title: impl Display) {
    let _g = lock(&OUT);
    let _ = writeln!(std::io::stdout().lock(), "\n=== {title} ===");
}

/// A static C string from the library (`hb_*_str`) as Rust text.
fn static_str(p: *const c_char) -> String {
    if p.is_null() {
        return "?".to_owned();
    }
    // SAFETY: the hb_*_str functions return static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn state_name(s: i32) -> String {
    static_str(hb_state_str(s))
}

fn reason_name(r: i32) -> String {
    static_str(hb_reason_str(r))
}

fn status_name(s: hb_status) -> String {
    format!("{s:?} ({})", static_str(hb_status_str(s as i32)))
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// What the callbacks saw (shared with the main thread through user_data)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Ev {
    State {
        state: i32,
        reason: i32,
        at: Instant,
    },
    Pong {
        at: Instant,
    },
    ServerPing,
    Missed,
    Message {
        text: String,
    },
    Dropped,
}

/// The client's `user_data`: an `Arc<Demo>` passed as a raw pointer; `release` takes it back.
struct Demo {
    events: Mutex<Vec<Ev>>,
    cv: Condvar,
    released: AtomicBool,
    max_missed: u32,
}

impl Demo {
    fn new(max_missed: u32) -> Arc<Demo> {
        Arc::new(Demo {
            events: Mutex::new(Vec::new()),
            cv: Condvar::new(),
            released: AtomicBool::new(false),
            max_missed,
        })
    }

    fn push(&self, ev: Ev) {
        lock(&self.events).push(ev);
        self.cv.notify_all();
    }

    /// Index of the next event, to wait for events from now on.
    fn mark(&self) -> usize {
        lock(&self.events).len()
    }

    /// Waits until `pred` holds on the events recorded since `from`; returns them. On timeout
    /// the error says what was missing.
    fn wait(
        &self,
        what: &str,
        from: usize,
        pred: impl Fn(&[Ev]) -> bool,
    ) -> Result<Vec<Ev>, String> {
        let deadline = Instant::now() + WAIT;
        let mut g = lock(&self.events);
        loop {
            let since = &g[from.min(g.len())..];
            if pred(since) {
                return Ok(since.to_vec());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no {what} within {} s ({} events since the wait began)",
                    WAIT.as_secs(),
                    since.len()
                ));
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn states(evs: &[Ev], want: i32, reason: Option<i32>) -> usize {
    evs.iter()
        .filter(|e| {
            matches!(e, Ev::State { state, reason: r, .. }
                if *state == want && reason.is_none_or(|x| x == *r))
        })
        .count()
}

fn pongs(evs: &[Ev]) -> usize {
    evs.iter().filter(|e| matches!(e, Ev::Pong { .. })).count()
}

fn got_text(evs: &[Ev], want: &str) -> bool {
    evs.iter()
        .any(|e| matches!(e, Ev::Message { text } if text == want))
}

// ---------------------------------------------------------------------------------------------
// The C callbacks
// ---------------------------------------------------------------------------------------------

/// # Safety
/// `ud` is the `Arc<Demo>` pointer given to `hb_connect`, alive until `release`.
unsafe fn demo<'a>(ud: *mut c_void) -> &'a Demo {
    &*(ud as *const Demo)
}

unsafe extern "C" fn on_state(ud: *mut c_void, ev: *const hb_state_event) {
    let d = demo(ud);
    let ev = &*ev;
    let detail = if ev.detail.is_null() {
        String::new()
    } else {
        CStr::from_ptr(ev.detail).to_string_lossy().into_owned()
    };
    let name = state_name(ev.state);
    let reason = reason_name(ev.reason);
    let line = match ev.state {
        CONNECTING if ev.attempt == 0 => format!("{name}  {detail}"),
        CONNECTING => format!("{name}  {detail} (attempt {})", ev.attempt),
        OPEN if ev.attempt == 0 => format!("{name}  {detail}"),
        OPEN => format!("{name}  {detail} (after {} failed attempts)", ev.attempt),
        RECONNECTING => {
            let mut extra = String::new();
            if ev.close_code != 0 {
                extra += &format!(", close code {}", ev.close_code);
            }
            if ev.http_status != 0 {
                extra += &format!(", HTTP {}", ev.http_status);
            }
            format!(
                "{name}  attempt {} in {} ms ({reason}: {detail}{extra})",
                ev.attempt, ev.delay_ms
            )
        }
        _ => format!("{name}  ({reason}: {detail})"),
    };
    say("client", line);
    d.push(Ev::State {
        state: ev.state,
        reason: ev.reason,
        at: Instant::now(),
    });
}

unsafe extern "C" fn on_message(ud: *mut c_void, kind: i32, data: *const u8, len: usize) {
    let d = demo(ud);
    let bytes: &[u8] = if len == 0 || data.is_null() {
        &[]
    } else {
        std::slice::from_raw_parts(data, len)
    };
    if kind == hb_message_kind::HB_MESSAGE_TEXT as i32 {
        let text = String::from_utf8_lossy(bytes).into_owned();
        say("client", format!("message: {text:?} (text, {len} bytes)"));
        d.push(Ev::Message { text });
    } else {
        say("client", format!("message: binary, {len} bytes"));
    }
}

unsafe extern "C" fn on_heartbeat(ud: *mut c_void, ev: *const hb_heartbeat_event) {
    use hb_heartbeat_kind::*;
    let d = demo(ud);
    let ev = &*ev;
    match ev.kind {
        k if k == HB_HEARTBEAT_PONG as i32 => {
            say("client", format!("pong  rtt {}", ms(ev.rtt_us)));
            d.push(Ev::Pong { at: Instant::now() });
        }
        k if k == HB_HEARTBEAT_SERVER_PING as i32 => {
            say("client", "answered server ping (text)");
            d.push(Ev::ServerPing);
        }
        k if k == HB_HEARTBEAT_SERVER_PROTOCOL_PING as i32 => {
            say("client", "answered server ping (protocol Ping frame)");
        }
        k if k == HB_HEARTBEAT_MISSED as i32 => {
            say(
                "client",
                format!("heartbeat MISSED {}/{}", ev.missed, d.max_missed),
            );
            d.push(Ev::Missed);
        }
        k => say("client", format!("heartbeat event of unknown kind {k}")),
    }
}

unsafe extern "C" fn on_dropped(ud: *mut c_void, count: u64, bytes: u64, reason: i32) {
    let d = demo(ud);
    say(
        "client",
        format!(
            "dropped {count} messages ({bytes} bytes, {})",
            reason_name(reason)
        ),
    );
    d.push(Ev::Dropped);
}

unsafe extern "C" fn on_delivery(_ud: *mut c_void, first: u64, count: u64, outcome: i32) {
    let what = match outcome {
        o if o == hb_delivery::HB_DELIVERY_CONFIRMED as i32 => "confirmed: the server has read",
        o if o == hb_delivery::HB_DELIVERY_UNCONFIRMED as i32 => {
            "UNCONFIRMED: written to a dead link, may be lost:"
        }
        _ => "DROPPED: never sent:",
    };
    let ids = if count == 1 {
        format!("message #{first}")
    } else {
        format!("messages #{first}..#{}", first + count - 1)
    };
    say("client", format!("delivery {what} {ids}"));
}

unsafe extern "C" fn on_log(_ud: *mut c_void, level: i32, msg: *const c_char, _len: usize) {
    let level = match level {
        1 => "ERROR",
        2 => "WARN",
        3 => "INFO",
        4 => "DEBUG",
        _ => "?",
    };
    let msg = if msg.is_null() {
        String::new()
    } else {
        CStr::from_ptr(msg).to_string_lossy().into_owned()
    };
    say("client", format!("log: [{level}] {msg}"));
}

unsafe extern "C" fn release(ud: *mut c_void) {
    // Takes back the reference handed over in `connect`.
    let d = Arc::from_raw(ud as *const Demo);
    say("client", "release: user_data handed back");
    d.released.store(true, Ordering::SeqCst);
    d.cv.notify_all();
}

fn callbacks() -> hb_callbacks {
    hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        on_message: Some(on_message),
        on_heartbeat: Some(on_heartbeat),
        on_dropped: Some(on_dropped),
        on_log: Some(on_log),
        release: Some(release),
        on_delivery: Some(on_delivery),
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the C API
// ---------------------------------------------------------------------------------------------

fn check(what: &str, s: hb_status) -> Result<(), String> {
    if s == hb_status::HB_OK {
        Ok(())
    } else {
        Err(format!("{what} failed: {}", status_name(s)))
    }
}

/// Builds a config through the C setters. The caller frees it with `hb_config_free`.
fn make_config(
    interval_ms: u64,
    timeout_ms: u64,
    max_missed: u32,
    backoff: (u64, u64),
    connect_timeout_ms: u64,
    log_level: hb_log_level,
) -> Result<*mut hb_config, String> {
    let mut cfg = std::ptr::null_mut();
    check("hb_config_new", hb_config_new(&mut cfg))?;
    let set = || -> Result<(), String> {
        check(
            "hb_config_set_ping_interval_ms",
            hb_config_set_ping_interval_ms(cfg, interval_ms),
        )?;
        check(
            "hb_config_set_pong_timeout_ms",
            hb_config_set_pong_timeout_ms(cfg, timeout_ms),
        )?;
        check(
            "hb_config_set_max_missed",
            hb_config_set_max_missed(cfg, max_missed),
        )?;
        check(
            "hb_config_set_backoff",
            hb_config_set_backoff(cfg, backoff.0, backoff.1),
        )?;
        check(
            "hb_config_set_connect_timeout_ms",
            hb_config_set_connect_timeout_ms(cfg, connect_timeout_ms),
        )?;
        check(
            "hb_config_set_log_level",
            hb_config_set_log_level(cfg, log_level as i32),
        )
    };
    if let Err(e) = set() {
        hb_config_free(cfg);
        return Err(e);
    }
    Ok(cfg)
}

/// `hb_connect` with the demo's callbacks; `user_data` is a new reference to `demo`.
fn connect(url: &str, cfg: *const hb_config, demo: &Arc<Demo>) -> Result<*mut hb_client, String> {
    let c_url = CString::new(url).map_err(|_| "the URL contains a NUL byte".to_owned())?;
    let cb = callbacks();
    let user_data = Arc::into_raw(demo.clone()) as *mut c_void;
    let mut client = std::ptr::null_mut();
    let mut err = [0 as c_char; 256];
    let s = hb_connect(
        c_url.as_ptr(),
        cfg,
        &cb,
        user_data,
        &mut client,
        err.as_mut_ptr(),
        err.len(),
    );
    if s != hb_status::HB_OK {
        // On error the library did not take user_data and will not call release.
        // SAFETY: the pointer from Arc::into_raw above, not handed over.
        drop(unsafe { Arc::from_raw(user_data as *const Demo) });
        // SAFETY: hb_connect wrote a NUL-terminated message into err (zeroed beforehand).
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        return Err(format!("hb_connect failed: {}: {msg}", status_name(s)));
    }
    Ok(client)
}

fn send_text(client: *mut hb_client, text: &str) -> hb_status {
    hb_send_text(
        client,
        text.as_ptr().cast(),
        text.len(),
        std::ptr::null_mut(),
    )
}

fn stats(client: *const hb_client) -> Result<hb_stats, String> {
    let mut s = hb_stats {
        size: std::mem::size_of::<hb_stats>(),
        ..Default::default()
    };
    check("hb_get_stats", hb_get_stats(client, &mut s))?;
    Ok(s)
}

fn print_stats(s: &hb_stats) {
    say(
        "demo",
        format!(
            "stats: state {}, heartbeat pings sent {}, pongs received {}, pongs missed {}, \
             server pings answered {}",
            state_name(s.state),
            s.pings_sent,
            s.pongs_received,
            s.pongs_missed,
            s.server_pings_answered
        ),
    );
    say(
        "demo",
        format!(
            "stats: rtt last {}, min {}, mean {}",
            ms(s.rtt_last_us),
            ms(s.rtt_min_us),
            ms(s.rtt_mean_us)
        ),
    );
    say(
        "demo",
        format!(
            "stats: connects {} (connection attempts {}), messages sent {} ({} B), received {} \
             ({} B), dropped {}, queued {}",
            s.connects,
            s.connect_attempts,
            s.messages_sent,
            s.bytes_sent,
            s.messages_received,
            s.bytes_received,
            s.messages_dropped,
            s.queued_messages
        ),
    );
}

/// Closes the client from the main thread; `hb_close` returns after CLOSED and `release`.
fn close(client: *mut hb_client, demo: &Demo) -> Result<(), String> {
    let s = hb_close(client);
    let released = demo.released.load(Ordering::SeqCst);
    say(
        "demo",
        format!(
            "hb_close returned {}; release ran before it returned: {}",
            status_name(s),
            if released { "yes" } else { "NO" }
        ),
    );
    check("hb_close", s)?;
    if !released {
        return Err("release had not run when hb_close returned".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The scripted scenario
// ---------------------------------------------------------------------------------------------

/// Prints the server's side of the heartbeat (not every event: client pings show up once, as
/// the pong the server sent back).
fn server_hook(max_missed: u32) -> hbws_server::EventHook {
    Arc::new(move |ev: &ServerEvent| match ev {
        ServerEvent::Accepted { conn } => say("server", format!("conn #{conn}: handshake done")),
        ServerEvent::Refused { conn, status } => say(
            "server",
            format!("conn #{conn}: handshake refused ({status})"),
        ),
        ServerEvent::PongSent { conn } => {
            say("server", format!("conn #{conn}: answered client ping"))
        }
        ServerEvent::ServerPingSent { conn } => say(
            "server",
            format!("conn #{conn}: server ping sent (text + Ping frame)"),
        ),
        ServerEvent::PongReceived {
            conn,
            rtt,
            protocol,
        } => say(
            "server",
            format!(
                "conn #{conn}: {} received, rtt {}",
                if *protocol { "Pong frame" } else { "text pong" },
                ms(rtt.as_micros() as u64)
            ),
        ),
        ServerEvent::Missed { conn, count } => say(
            "server",
            format!("conn #{conn}: client missed heartbeat {count}/{max_missed}"),
        ),
        ServerEvent::DroppedUnresponsive { conn } => {
            say("server", format!("conn #{conn}: dropped (unresponsive)"))
        }
        ServerEvent::Text { conn, text } => say(
            "server",
            format!("conn #{conn}: received {text:?}, echoing it"),
        ),
        ServerEvent::Binary { conn, data } => say(
            "server",
            format!(
                "conn #{conn}: received {} bytes binary, echoing them",
                data.len()
            ),
        ),
        ServerEvent::CloseReceived { conn, code } => say(
            "server",
            format!(
                "conn #{conn}: close frame received (code {})",
                code.map_or("none".to_owned(), |c| c.to_string())
            ),
        ),
        ServerEvent::Disconnected { conn } => say("server", format!("conn #{conn}: ended")),
        ServerEvent::CloseSent { conn, code } => say(
            "server",
            format!("conn #{conn}: close frame sent (code {code})"),
        ),
        ServerEvent::ClientPing { .. }
        | ServerEvent::Connected { .. }
        | ServerEvent::UpgradeRequest { .. }
        | ServerEvent::HandshakeFailed { .. } => {}
    })
}

fn scenario() -> Result<(), String> {
    const SERVER_MAX_MISSED: u32 = 3;
    let server = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(700)),
        pong_timeout: Duration::from_millis(500),
        max_missed: SERVER_MAX_MISSED,
        on_event: Some(server_hook(SERVER_MAX_MISSED)),
        ..Default::default()
    })
    .map_err(|e| format!("the reference server did not start: {e}"))?;
    let url = server.url();
    say(
        "demo",
        format!("reference server listening on {url} (pings every 700 ms, pong timeout 500 ms)"),
    );

    let demo = Demo::new(MAX_MISSED);
    let cfg = make_config(
        PING_INTERVAL_MS,
        PONG_TIMEOUT_MS,
        MAX_MISSED,
        (200, 2000),
        800,
        // INFO would add a log line repeating every RECONNECTING event.
        hb_log_level::HB_LOG_WARN,
    )?;
    say(
        "demo",
        format!(
            "client config: ping every {PING_INTERVAL_MS} ms, pong timeout {PONG_TIMEOUT_MS} ms, \
             {MAX_MISSED} misses = dead, backoff 200..2000 ms, connect timeout 800 ms, \
             log level WARN"
        ),
    );
    let connected = connect(&url, cfg, &demo);
    // The config was copied by hb_connect; it can go now.
    hb_config_free(cfg);
    let client = connected?;

    // 1. ---------------------------------------------------------------------------------------
    banner("1. connect");
    demo.wait("OPEN", 0, |e| states(e, OPEN, None) >= 1)?;

    // 2. ---------------------------------------------------------------------------------------
    banner("2. echo, heartbeat round trips, server pings");
    let mark = demo.mark();
    say("demo", "hb_send_text(\"hello\")");
    check("hb_send_text", send_text(client, "hello"))?;
    demo.wait("echo of \"hello\"", mark, |e| got_text(e, "hello"))?;
    demo.wait("two pongs and an answered server ping", mark, |e| {
        pongs(e) >= 2 && e.iter().any(|x| matches!(x, Ev::ServerPing))
    })?;

    // 3. ---------------------------------------------------------------------------------------
    banner("3. the server hangs: dead-link detection");
    say(
        "demo",
        "server.set_silent(true): TCP stays open, the server reads and answers nothing",
    );
    server.set_silent(true);
    let mark3 = demo.mark();
    let seen = demo.wait("RECONNECTING after HEARTBEAT_TIMEOUT", mark3, |e| {
        states(e, RECONNECTING, None) >= 1
    })?;
    let verdict = seen.iter().find_map(|e| match e {
        Ev::State {
            state: RECONNECTING,
            reason,
            at,
        } => Some((*reason, *at)),
        _ => None,
    });
    let Some((reason, reconnecting_at)) = verdict else {
        return Err("RECONNECTING event vanished".to_owned());
    };
    if reason != hb_reason::HB_REASON_HEARTBEAT_TIMEOUT as i32 {
        return Err(format!(
            "verdict HEARTBEAT_TIMEOUT (got {})",
            reason_name(reason)
        ));
    }
    let misses = seen.iter().filter(|e| matches!(e, Ev::Missed)).count();
    let last_pong = lock(&demo.events)
        .iter()
        .rev()
        .find_map(|e| match e {
            Ev::Pong { at } if *at <= reconnecting_at => Some(*at),
            _ => None,
        })
        .ok_or("a pong before the verdict")?;
    let observed = reconnecting_at.duration_since(last_pong);
    let bound = PING_INTERVAL_MS + u64::from(MAX_MISSED) * PONG_TIMEOUT_MS;
    let observed_us = observed.as_micros() as i64;
    let delta_ms = (observed_us - bound as i64 * 1000) as f64 / 1000.0;
    say(
        "demo",
        format!(
            "verdict HEARTBEAT_TIMEOUT after {misses} misses, {:.1} ms after the last pong",
            observed_us as f64 / 1000.0
        ),
    );
    say(
        "demo",
        format!(
            "documented bound: interval + max_missed × pong_timeout = \
             {PING_INTERVAL_MS} + {MAX_MISSED}×{PONG_TIMEOUT_MS} = {bound} ms \
             (observed {delta_ms:+.1} ms from it)"
        ),
    );

    // 4. ---------------------------------------------------------------------------------------
    banner("4. reconnecting: hung server, then no server, then back");
    say(
        "demo",
        "the server is still silent: TCP connects, but the handshake is never answered",
    );
    demo.wait("two CONNECT_TIMEOUT reconnects", mark3, |e| {
        states(
            e,
            RECONNECTING,
            Some(hb_reason::HB_REASON_CONNECT_TIMEOUT as i32),
        ) >= 2
    })?;
    say(
        "demo",
        "server.stop(): listener closed, connections dropped; connects are refused now",
    );
    server.stop();
    let mark4 = demo.mark();
    let refused = |n: usize| {
        move |e: &[Ev]| {
            states(
                e,
                RECONNECTING,
                Some(hb_reason::HB_REASON_CONNECT_ERROR as i32),
            ) >= n
        }
    };
    demo.wait("a refused reconnect (CONNECT_ERROR)", mark4, refused(1))?;
    let offline = "sent while offline";
    let s = send_text(client, offline);
    let q = stats(client)?;
    say(
        "demo",
        format!(
            "hb_send_text({offline:?}) while offline: {}; queued messages: {}",
            status_name(s),
            q.queued_messages
        ),
    );
    check("hb_send_text while offline", s)?;
    demo.wait(
        "a second refused reconnect (CONNECT_ERROR)",
        mark4,
        refused(2),
    )?;
    say("demo", "server.set_silent(false); server.restart()");
    server.set_silent(false);
    server
        .restart()
        .map_err(|e| format!("server restart failed: {e}"))?;
    let mark5 = demo.mark();
    demo.wait("OPEN after the restart", mark5, |e| {
        states(e, OPEN, None) >= 1
    })?;
    demo.wait("echo of the queued message", mark5, |e| {
        got_text(e, offline)
    })?;
    demo.wait("a pong on the new connection", mark5, |e| pongs(e) >= 1)?;

    // 5. ---------------------------------------------------------------------------------------
    banner("5. stats and close");
    print_stats(&stats(client)?);
    let mark6 = demo.mark();
    say("demo", "hb_close(client)");
    close(client, &demo)?;
    let end = lock(&demo.events)[mark6..].to_vec();
    if states(&end, CLOSING, None) == 0 || states(&end, CLOSED, None) == 0 {
        return Err("CLOSING and CLOSED during hb_close".to_owned());
    }
    say("demo", "server.stop()");
    drop(server);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Connecting to a given URL
// ---------------------------------------------------------------------------------------------

fn interactive(url: &str) -> Result<(), String> {
    let demo = Demo::new(3);
    let cfg = make_config(
        5000,
        3000,
        3,
        (500, 10_000),
        10_000,
        hb_log_level::HB_LOG_INFO,
    )?;
    let connected = connect(url, cfg, &demo);
    hb_config_free(cfg);
    let client = connected?;
    say(
        "demo",
        format!(
            "hbws {} connecting to {url}: ping every 5 s, pong timeout 3 s, 3 misses = dead; \
             each stdin line is sent as text; end of input closes, Ctrl-C kills",
            static_str(hb_version())
        ),
    );
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let s = send_text(client, &line);
        if s != hb_status::HB_OK {
            say("demo", format!("hb_send_text: {}", status_name(s)));
        }
    }
    say("demo", "end of input: hb_close(client)");
    if let Ok(s) = stats(client) {
        print_stats(&s);
    }
    close(client, &demo)
}

fn main() -> ExitCode {
    START.get_or_init(Instant::now);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => scenario(),
        [url] => interactive(url),
        _ => {
            eprintln!("usage: demo [ws://host:port/path]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => {
            say("demo", "done");
            ExitCode::SUCCESS
        }
        Err(missing) => {
            say("demo", format!("FAILED: {missing}"));
            ExitCode::from(1)
        }
    }
}
