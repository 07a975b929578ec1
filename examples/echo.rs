//! An Autobahn|Testsuite echo client, driven only through the C ABI (`hb_*`).
//!
//! ```text
//! cargo run --release --example echo -- [--url ws://127.0.0.1:9001] [--agent hbws]
//!                                       [--cases FIRST..LAST] [--verbose]
//!                                       [--default-heartbeat-texts]
//! ```
//!
//! The fuzzing server (`wstest -m fuzzingserver`, see `conformance/run.sh`) tests a client like
//! this: the client asks `/getCaseCount` (the answer is one text message), then for each case
//! `N` connects to `/runCase?case=N&agent=AGENT`, echoes every message back unchanged (text as
//! text, binary as binary, same bytes) and waits until the server ends the connection; finally
//! it connects to `/updateReports?agent=AGENT` so the server writes its reports.
//!
//! hbws is a reconnecting client, but a test case must run on exactly one connection: the first
//! RECONNECTING or CLOSED event after the connection opened (or a failed first attempt) ends the
//! case, and the client is then closed with `hb_close`. `max_attempts` cannot express "never
//! retry" (0 means "never give up", 1 allows one retry), so the backoff is also set to a fixed
//! 60 s: the retry can never start before `hb_close` stops it.
//!
//! The configuration is the one a conformance run needs: limits large enough for the 16 MiB
//! messages of cases 9.*, queues large enough to echo them, and a heartbeat that stays out of the
//! way (one ping an hour, with texts no case sends, so no case message is swallowed as a
//! heartbeat and the client's own ping never lands in a case). `--default-heartbeat-texts` keeps
//! the library's `ping`/`pong` instead, to check that no case sends exactly those texts (a text
//! message equal to the ping text is answered with the pong text and not delivered; one equal to
//! the pong text is taken as a heartbeat answer and not delivered either).
//!
//! Exit status: 0 when every case connection ran and the reports were updated; 1 when the
//! server could not be reached, a case connection never opened, or an echo was refused by the
//! library (the conformance verdicts themselves are in the server's report).

use std::ffi::{c_char, c_void, CStr, CString};
use std::process::ExitCode;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hbws::ffi::*;

const OPEN: i32 = hb_state::HB_STATE_OPEN as i32;
const RECONNECTING: i32 = hb_state::HB_STATE_RECONNECTING as i32;
const CLOSED: i32 = hb_state::HB_STATE_CLOSED as i32;
const TEXT: i32 = hb_message_kind::HB_MESSAGE_TEXT as i32;

/// Largest message in either direction (the suite's largest is 16 MiB).
const MAX_MESSAGE: usize = 64 << 20;
/// Most read per call: the library's default, so the suite runs the shipped read path (through
/// the stack; a frame larger than this is read straight into place).
const READ_SIZE: usize = 4096;
/// Heartbeat texts no test case sends: the library swallows messages equal to them.
const PING_TEXT: &str = "hbws-autobahn-heartbeat-ping";
const PONG_TEXT: &str = "hbws-autobahn-heartbeat-pong";
/// Bound on one case connection (the server normally ends it within seconds).
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the report update (the server renders every case's report first).
const REPORT_TIMEOUT: Duration = Duration::from_secs(600);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn static_str(p: *const c_char) -> String {
    if p.is_null() {
        return "?".to_owned();
    }
    // SAFETY: the hb_*_str functions return static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn status_name(s: hb_status) -> String {
    format!("{s:?} ({})", static_str(hb_status_str(s as i32)))
}

fn check(what: &str, s: hb_status) -> Result<(), String> {
    if s == hb_status::HB_OK {
        Ok(())
    } else {
        Err(format!("{what} failed: {}", status_name(s)))
    }
}

/// How a connection ended, as the first RECONNECTING or CLOSED event told it.
#[derive(Clone, Debug)]
struct End {
    state: i32,
    reason: i32,
    close_code: u16,
    http_status: u16,
    detail: String,
}

#[derive(Default)]
struct Progress {
    opened: bool,
    end: Option<End>,
    /// Text messages received (kept only when `keep_texts`: getCaseCount).
    texts: Vec<String>,
}

/// One connection's `user_data`: an `Arc<Conn>` handed over as a raw pointer; `release` takes
/// it back.
struct Conn {
    /// The client handle, set before the callbacks are installed, for echoing.
    client: AtomicPtr<hb_client>,
    echo: bool,
    keep_texts: bool,
    verbose: bool,
    label: String,
    progress: Mutex<Progress>,
    cv: Condvar,
    received: AtomicU64,
    echoed: AtomicU64,
    /// Echoes the library refused (status of the first one).
    refused: AtomicU64,
    /// Accepted echoes the library reported through `on_dropped` (never written).
    dropped: AtomicU64,
    first_refusal: Mutex<Option<hb_status>>,
}

impl Conn {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut lock(&self.progress));
        self.cv.notify_all();
    }

    /// Waits until the connection has ended (or `timeout`); true if it ended.
    fn wait_end(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.progress);
        while g.end.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// # Safety
/// `ud` is the `Arc<Conn>` pointer given to `hb_set_callbacks`, alive until `release`.
unsafe fn conn<'a>(ud: *mut c_void) -> &'a Conn {
    &*(ud as *const Conn)
}

unsafe extern "C" fn on_state(ud: *mut c_void, ev: *const hb_state_event) {
    let c = conn(ud);
    let ev = &*ev;
    let detail = if ev.detail.is_null() {
        String::new()
    } else {
        CStr::from_ptr(ev.detail).to_string_lossy().into_owned()
    };
    if c.verbose {
        eprintln!(
            "  [{}] {} ({}) close={} http={}: {detail}",
            c.label,
            static_str(hb_state_str(ev.state)),
            static_str(hb_reason_str(ev.reason)),
            ev.close_code,
            ev.http_status
        );
    }
    match ev.state {
        OPEN => c.update(|p| p.opened = true),
        // The case is over at the first RECONNECTING or CLOSED, whether the connection opened
        // or the first attempt failed: a case never gets a second connection.
        RECONNECTING | CLOSED => c.update(|p| {
            if p.end.is_none() {
                p.end = Some(End {
                    state: ev.state,
                    reason: ev.reason,
                    close_code: ev.close_code,
                    http_status: ev.http_status,
                    detail,
                });
            }
        }),
        _ => {}
    }
}

unsafe extern "C" fn on_message(ud: *mut c_void, kind: i32, data: *const u8, len: usize) {
    let c = conn(ud);
    c.received.fetch_add(1, Ordering::Relaxed);
    if c.keep_texts && kind == TEXT {
        let bytes: &[u8] = if len == 0 || data.is_null() {
            &[]
        } else {
            std::slice::from_raw_parts(data, len)
        };
        let text = String::from_utf8_lossy(bytes).into_owned();
        c.update(|p| p.texts.push(text));
    }
    if !c.echo {
        return;
    }
    let client = c.client.load(Ordering::Acquire);
    // Same kind, same bytes; `hb_send_*` copies them, so `data` may go when this returns.
    let s = if kind == TEXT {
        hb_send_text(client, data.cast(), len, std::ptr::null_mut())
    } else {
        hb_send_binary(client, data, len, std::ptr::null_mut())
    };
    if s == hb_status::HB_OK {
        c.echoed.fetch_add(1, Ordering::Relaxed);
    } else {
        c.refused.fetch_add(1, Ordering::Relaxed);
        lock(&c.first_refusal).get_or_insert(s);
        if c.verbose {
            eprintln!(
                "  [{}] echo of {len} bytes refused: {}",
                c.label,
                status_name(s)
            );
        }
    }
}

unsafe extern "C" fn on_dropped(ud: *mut c_void, count: u64, bytes: u64, reason: i32) {
    let c = conn(ud);
    c.dropped.fetch_add(count, Ordering::Relaxed);
    if c.verbose {
        eprintln!(
            "  [{}] dropped {count} queued messages ({bytes} bytes): {}",
            c.label,
            static_str(hb_reason_str(reason))
        );
    }
}

unsafe extern "C" fn on_log(ud: *mut c_void, level: i32, msg: *const c_char, _len: usize) {
    let c = conn(ud);
    if c.verbose && !msg.is_null() {
        eprintln!(
            "  [{}] log[{level}] {}",
            c.label,
            CStr::from_ptr(msg).to_string_lossy()
        );
    }
}

unsafe extern "C" fn release(ud: *mut c_void) {
    drop(Arc::from_raw(ud as *const Conn));
}

/// Builds the conformance configuration through the C setters.
fn make_config(verbose: bool, default_heartbeat_texts: bool) -> Result<*mut hb_config, String> {
    let mut cfg: *mut hb_config = std::ptr::null_mut();
    check("hb_config_new", hb_config_new(&mut cfg))?;
    let result = (|| {
        // Heartbeat out of the way: one ping an hour, texts that no case sends.
        check(
            "hb_config_set_ping_interval_ms",
            hb_config_set_ping_interval_ms(cfg, 3_600_000),
        )?;
        check(
            "hb_config_set_pong_timeout_ms",
            hb_config_set_pong_timeout_ms(cfg, 600_000),
        )?;
        if !default_heartbeat_texts {
            check(
                "hb_config_set_ping_text",
                hb_config_set_ping_text(cfg, PING_TEXT.as_ptr().cast(), PING_TEXT.len()),
            )?;
            check(
                "hb_config_set_pong_text",
                hb_config_set_pong_text(cfg, PONG_TEXT.as_ptr().cast(), PONG_TEXT.len()),
            )?;
        }
        // One connection per case: the retry waits 60 s, and hb_close comes long before.
        check(
            "hb_config_set_max_attempts",
            hb_config_set_max_attempts(cfg, 1),
        )?;
        check(
            "hb_config_set_backoff_jitter",
            hb_config_set_backoff_jitter(cfg, 0),
        )?;
        check(
            "hb_config_set_backoff",
            hb_config_set_backoff(cfg, 60_000, 60_000),
        )?;
        // Every close code ends the case the same way; none needs to be "fatal".
        check(
            "hb_config_set_fatal_close_codes",
            hb_config_set_fatal_close_codes(cfg, std::ptr::null(), 0),
        )?;
        // The 16 MiB messages of cases 9.* and their echoes.
        check(
            "hb_config_set_max_message_size",
            hb_config_set_max_message_size(cfg, MAX_MESSAGE),
        )?;
        check(
            "hb_config_set_buffer_sizes",
            hb_config_set_buffer_sizes(cfg, READ_SIZE, 0),
        )?;
        check(
            "hb_config_set_send_queue",
            hb_config_set_send_queue(cfg, 1 << 20, 1 << 30),
        )?;
        check(
            "hb_config_set_offline_queue",
            hb_config_set_offline_queue(cfg, 1 << 20, 1 << 30),
        )?;
        check(
            "hb_config_set_log_level",
            hb_config_set_log_level(
                cfg,
                if verbose {
                    hb_log_level::HB_LOG_DEBUG as i32
                } else {
                    hb_log_level::HB_LOG_WARN as i32
                },
            ),
        )
    })();
    match result {
        Ok(()) => Ok(cfg),
        Err(e) => {
            hb_config_free(cfg);
            Err(e)
        }
    }
}

/// The result of one connection.
struct Outcome {
    opened: bool,
    end: Option<End>,
    texts: Vec<String>,
    received: u64,
    echoed: u64,
    refused: u64,
    dropped: u64,
    first_refusal: Option<hb_status>,
    elapsed: Duration,
}

/// Opens one connection to `url`, echoing (or not) every message, and waits until the server
/// ends it; then closes the client. Never retries.
fn run_connection(
    url: &str,
    cfg: *const hb_config,
    label: String,
    echo: bool,
    keep_texts: bool,
    verbose: bool,
    timeout: Duration,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let c = Arc::new(Conn {
        client: AtomicPtr::new(std::ptr::null_mut()),
        echo,
        keep_texts,
        verbose,
        label,
        progress: Mutex::new(Progress::default()),
        cv: Condvar::new(),
        received: AtomicU64::new(0),
        echoed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        first_refusal: Mutex::new(None),
    });
    let curl = CString::new(url).map_err(|_| format!("URL with a NUL byte: {url:?}"))?;
    let mut client: *mut hb_client = std::ptr::null_mut();
    let mut err = [0 as c_char; 512];
    // Without callbacks the client waits, not connecting, so the handle is known to the message
    // callback before the first message can arrive.
    let s = hb_connect(
        curl.as_ptr(),
        cfg,
        std::ptr::null(),
        std::ptr::null_mut(),
        &mut client,
        err.as_mut_ptr(),
        err.len(),
    );
    if s != hb_status::HB_OK {
        // SAFETY: hb_connect wrote a NUL-terminated message into err.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        return Err(format!("hb_connect({url}): {}: {msg}", status_name(s)));
    }
    c.client.store(client, Ordering::Release);
    let cb = hb_callbacks {
        size: std::mem::size_of::<hb_callbacks>(),
        on_state: Some(on_state),
        on_message: Some(on_message),
        on_dropped: Some(on_dropped),
        on_log: Some(on_log),
        release: Some(release),
        ..Default::default()
    };
    let ud = Arc::into_raw(c.clone()) as *mut c_void;
    let s = hb_set_callbacks(client, &cb, ud);
    if s != hb_status::HB_OK {
        // SAFETY: on error the library did not take user_data: take our reference back.
        drop(unsafe { Arc::from_raw(ud as *const Conn) });
        let _ = hb_close(client);
        return Err(format!("hb_set_callbacks: {}", status_name(s)));
    }
    let ended = c.wait_end(timeout);
    // Ends the case: stops the pending retry (or releases an already CLOSED client). Blocks
    // until the last callback has run.
    let s = hb_close(client);
    check("hb_close", s)?;
    let p = std::mem::take(&mut *lock(&c.progress));
    if !ended && c.verbose {
        eprintln!("  [{}] no end within {timeout:?}; closed", c.label);
    }
    let first_refusal = *lock(&c.first_refusal);
    Ok(Outcome {
        opened: p.opened,
        end: p.end,
        texts: p.texts,
        received: c.received.load(Ordering::Relaxed),
        echoed: c.echoed.load(Ordering::Relaxed),
        refused: c.refused.load(Ordering::Relaxed),
        dropped: c.dropped.load(Ordering::Relaxed),
        first_refusal,
        elapsed: started.elapsed(),
    })
}

fn describe_end(end: &Option<End>) -> String {
    match end {
        None => "no end (timed out, closed by us)".to_owned(),
        Some(e) => {
            let mut s = format!(
                "{} {}",
                static_str(hb_state_str(e.state)),
                static_str(hb_reason_str(e.reason))
            );
            if e.close_code != 0 {
                s += &format!(" code={}", e.close_code);
            }
            if e.http_status != 0 {
                s += &format!(" http={}", e.http_status);
            }
            if !e.detail.is_empty() {
                s += &format!(" ({})", e.detail);
            }
            s
        }
    }
}

struct Args {
    url: String,
    agent: String,
    first: Option<u32>,
    last: Option<u32>,
    verbose: bool,
    default_heartbeat_texts: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: "ws://127.0.0.1:9001".to_owned(),
        agent: "hbws".to_owned(),
        first: None,
        last: None,
        verbose: std::env::var_os("HBWS_ECHO_VERBOSE").is_some(),
        default_heartbeat_texts: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--url" => a.url = value("--url")?.trim_end_matches('/').to_owned(),
            "--agent" => a.agent = value("--agent")?,
            "--cases" => {
                let v = value("--cases")?;
                let (f, l) = v.split_once("..").unwrap_or((&v, &v));
                let num = |x: &str| {
                    x.parse::<u32>()
                        .map_err(|_| format!("--cases wants N or FIRST..LAST, got {v:?}"))
                };
                a.first = Some(num(f)?);
                a.last = Some(num(l)?);
            }
            "--verbose" | "-v" => a.verbose = true,
            "--default-heartbeat-texts" => a.default_heartbeat_texts = true,
            "--help" | "-h" => {
                return Err(
                    "usage: echo [--url ws://127.0.0.1:9001] [--agent hbws] [--cases N|FIRST..LAST] [--verbose] [--default-heartbeat-texts]"
                        .to_owned(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if a.agent.is_empty()
        || !a
            .agent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!("agent must be [A-Za-z0-9._-]+, got {:?}", a.agent));
    }
    Ok(a)
}

fn run(args: &Args, cfg: *const hb_config) -> Result<bool, String> {
    let v = args.verbose;
    // 1. The number of cases: one text message, then the server closes.
    let count_url = format!("{}/getCaseCount", args.url);
    let o = run_connection(
        &count_url,
        cfg,
        "getCaseCount".into(),
        false,
        true,
        v,
        CASE_TIMEOUT,
    )?;
    if !o.opened {
        return Err(format!(
            "could not reach the fuzzing server at {count_url}: {}",
            describe_end(&o.end)
        ));
    }
    let count: u32 = o
        .texts
        .first()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| format!("getCaseCount answered {:?}", o.texts))?;
    let first = args.first.unwrap_or(1).max(1);
    let last = args.last.unwrap_or(count).min(count);
    println!(
        "hbws {} echo client: {count} cases on the server, running {first}..={last} as agent {:?}",
        static_str(hb_version()),
        args.agent
    );

    // 2. Each case on its own connection.
    let mut ok = true;
    let run_started = Instant::now();
    for n in first..=last {
        let url = format!("{}/runCase?case={n}&agent={}", args.url, args.agent);
        let o = run_connection(&url, cfg, format!("case {n}"), true, false, v, CASE_TIMEOUT)?;
        let mut line = format!(
            "case {n:>3}/{count}: {:>6} ms, received {}, echoed {}, ended: {}",
            o.elapsed.as_millis(),
            o.received,
            o.echoed,
            describe_end(&o.end)
        );
        if o.refused > 0 {
            ok = false;
            line += &format!(
                "; {} ECHOES REFUSED (first: {})",
                o.refused,
                o.first_refusal.map_or("?".to_owned(), status_name)
            );
        }
        if o.dropped > 0 {
            // Not an error of this program: the library accepted the echo but the connection
            // ended before it was written. The server's report judges the case.
            line += &format!("; {} accepted echoes never written (on_dropped)", o.dropped);
        }
        if !o.opened {
            ok = false;
            line += "; NEVER OPENED";
        }
        println!("{line}");
    }
    println!(
        "ran {} cases in {:.1} s",
        last + 1 - first,
        run_started.elapsed().as_secs_f64()
    );

    // 3. The reports: the server closes the connection once they are written.
    let url = format!("{}/updateReports?agent={}", args.url, args.agent);
    let o = run_connection(
        &url,
        cfg,
        "updateReports".into(),
        false,
        false,
        v,
        REPORT_TIMEOUT,
    )?;
    if !o.opened || o.end.is_none() {
        ok = false;
        println!("updateReports: {}", describe_end(&o.end));
    } else {
        println!("updateReports: done in {} ms", o.elapsed.as_millis());
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match make_config(args.verbose, args.default_heartbeat_texts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("echo: {e}");
            return ExitCode::from(1);
        }
    };
    let result = run(&args, cfg);
    hb_config_free(cfg);
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("echo: some case connections did not run as expected (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::from(1)
        }
    }
}
