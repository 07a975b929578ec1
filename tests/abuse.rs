//! Randomized abuse of the C boundary: seeded sequences of `hb_*` calls from several threads and
//! from inside callbacks, against one shared reference server.
//!
//! Every sequence runs 2..=4 threads of a few operations each: connect (real server, a closed
//! port, invalid arguments), set callbacks, send (text/binary, valid and invalid UTF-8, NULL
//! with len 0 and len > 0, odd lengths), close (twice, from several threads), calls on forged,
//! stale and NULL handles, `hb_get_stats` with good and bad sizes, config setters with random
//! values, and calls from inside callbacks (close itself, close or send to another client taken
//! from a shared mailbox, replace its own callbacks) driven by a per-client script.
//!
//! Checked after every sequence: every status is one the API documents for the call (never
//! `HB_ERR_PANIC`); the whole sequence ends within a watchdog bound (no deadlock); no callback
//! starts after `hb_close` returned (outside a callback), none after its `user_data` was
//! released, none overlapping another of the same client; `release` ran exactly once for every
//! `user_data` handed over successfully, before `hb_close` returned, never during one of its own
//! callbacks, and never for one refused with an error; and the ledger of every client whose
//! link never broke: messages accepted (`HB_OK`) == messages the server got from it + messages
//! reported through `on_dropped`; and for every client with callbacks, each accepted message
//! reported through `on_delivery` exactly once, in id order, drops agreeing with `on_dropped`.
//!
//! Environment: `HBWS_ABUSE_SEED` (base seed), `HBWS_ABUSE_SEQUENCES` (count, default 10000),
//! `HBWS_ABUSE_SEQ_SEED` (run just that sequence seed, as printed by a failure). Threads make
//! the interleaving nondeterministic; a failing seed reproduces the same calls, not always the
//! same timing, so repeat it with `HBWS_ABUSE_SEQUENCES=200 HBWS_ABUSE_SEQ_SEED=...`.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hbws::ffi::hb_reason::*;
use hbws::ffi::hb_state::*;
use hbws::ffi::hb_status::*;
use hbws::ffi::*;
use hbws_server::{Server, ServerConfig, ServerEvent};

/// A whole sequence (all its threads, the final closes and the checks) must end within this.
const WATCHDOG: Duration = Duration::from_secs(20);
/// Bound on waiting for releases and for the server to catch up at the end of a sequence.
const SETTLE: Duration = Duration::from_secs(8);
const DEFAULT_SEED: u64 = 0x6862_7773_2d61_6275; // "hbws-abu"
const DEFAULT_SEQUENCES: u64 = 10_000;

// ---------------------------------------------------------------------------------------------
// PRNG: splitmix64.

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }
    /// Uniform in `0..n` (0 if `n == 0`).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn pick<T: Copy>(&mut self, s: &[T]) -> T {
        s[self.below(s.len() as u64) as usize]
    }
    /// Values around the edges of the documented ranges, and anything.
    fn edgy_u64(&mut self) -> u64 {
        match self.below(12) {
            0 => 0,
            1 => 1,
            2 => 2,
            3 => 86_400_000,
            4 => 86_400_001,
            5 => u32::MAX as u64,
            6 => u64::MAX,
            7 => 1 << 30,
            8 => (1 << 30) + 1,
            9 => self.range(1, 100_000),
            10 => self.range(16 << 20, (16 << 20) + 1),
            _ => self.next(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Server side: what each client's connections delivered.

#[derive(Default)]
struct ConnInfo {
    owner: Option<u64>,
    seen: u64,
}

#[derive(Default)]
struct LedgerInner {
    conns: HashMap<u64, ConnInfo>,
    per_client: HashMap<u64, u64>,
    foreign: Vec<String>,
}

/// Counts application messages per client. A client's first message on a connection is
/// `hello:<id>`, which makes the connection its own; every later message on it (text, binary,
/// empty) counts for that client. Messages carrying another client's id are cross-talk.
#[derive(Default)]
struct ServerLedger {
    inner: Mutex<LedgerInner>,
    cv: Condvar,
}

fn hello_id(t: &str) -> Option<u64> {
    t.strip_prefix("hello:")?.parse().ok()
}

fn text_id(t: &str) -> Option<u64> {
    hello_id(t).or_else(|| t.strip_prefix('c')?.split(':').next()?.parse().ok())
}

fn binary_id(d: &[u8]) -> Option<u64> {
    (d.len() >= 9 && d[0] == b'B').then(|| u64::from_le_bytes(d[1..9].try_into().unwrap()))
}

impl ServerLedger {
    fn on_event(&self, ev: &ServerEvent) {
        let (conn, id, hello) = match ev {
            ServerEvent::Text { conn, text } => (*conn, text_id(text), hello_id(text)),
            ServerEvent::Binary { conn, data } => (*conn, binary_id(data), None),
            _ => return,
        };
        let mut g = lock(&self.inner);
        let g = &mut *g;
        let info = g.conns.entry(conn).or_default();
        if info.seen == 0 {
            info.owner = hello;
        }
        info.seen += 1;
        if let Some(owner) = info.owner {
            *g.per_client.entry(owner).or_default() += 1;
            if let Some(id) = id {
                if id != owner {
                    g.foreign
                        .push(format!("conn {conn} of client {owner} carried client {id}"));
                }
            }
        }
        self.cv.notify_all();
    }

    /// Waits until the server has `want` messages from `id` (or the timeout); returns the count.
    fn wait_received(&self, id: u64, want: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.inner);
        loop {
            let n = g.per_client.get(&id).copied().unwrap_or(0);
            let now = Instant::now();
            if n >= want || now >= deadline {
                return n;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test-side state.

struct Env {
    _server: Server,
    url: String,
    /// A loopback port nobody listens on: clients there never connect.
    offline_url: String,
    ledger: Arc<ServerLedger>,
    /// Handles of clients closed in earlier sequences (never valid again).
    stale: Mutex<Vec<usize>>,
    next_client: AtomicU64,
    /// Callbacks that ran after their sequence had been checked and finished.
    late_after_finish: AtomicUsize,
    totals: Totals,
}

#[derive(Default)]
struct Totals {
    ops: AtomicU64,
    real_clients: AtomicU64,
    offline_clients: AtomicU64,
    ledger_checked: AtomicU64,
    ledger_skipped_broken: AtomicU64,
    ledger_messages: AtomicU64,
    sends_ok: AtomicU64,
    dropped: AtomicU64,
    callbacks: AtomicU64,
    inside_actions: AtomicU64,
    releases: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// The reference server, a config of safe random values: ledger checked unless broken.
    Real,
    /// The reference server with wild values (tiny close timeout, tiny max message): no ledger.
    RealWild,
    /// A closed port, any config: nothing can arrive, so accepted == dropped.
    Offline,
}

/// What a callback does, from the client's script (one step per callback).
#[derive(Clone, Copy, Debug)]
enum Act {
    Nothing,
    SendText(u16),
    SendBinary(u16),
    SendBadUtf8,
    SendNull(usize),
    Stats,
    CloseSelf,
    CloseMailbox(usize),
    SendMailbox(usize),
    Publish(usize),
    SetCallbacksSelf,
}

struct Cl {
    id: u64,
    kind: Kind,
    /// Published (non-zero) only after `hello` was sent.
    handle: AtomicUsize,
    callbacks_at_connect: bool,
    hello_ok: AtomicBool,
    accepted: AtomicU64,
    dropped: AtomicU64,
    /// The next id a delivery report must start at, and ids reported dropped that way.
    next_report: AtomicU64,
    delivery_dropped: AtomicU64,
    broken: AtomicBool,
    close_returned: AtomicBool,
    in_cb: AtomicBool,
    script: Vec<Act>,
    pos: AtomicUsize,
}

/// A `user_data`: every callback gets one; `release` must see it exactly once.
struct Ud {
    seq: Arc<Seq>,
    cl: Arc<Cl>,
    released: AtomicUsize,
    active: AtomicBool,
}

struct Seq {
    env: &'static Env,
    clients: Mutex<Vec<Arc<Cl>>>,
    /// `user_data` handed over successfully / refused with an error.
    uds: Mutex<Vec<Arc<Ud>>>,
    refused: Mutex<Vec<Arc<Ud>>>,
    mailbox: [AtomicUsize; 4],
    violations: Mutex<Vec<String>>,
    finished: AtomicBool,
    msg_seq: AtomicU64,
}

impl Seq {
    fn violation(&self, s: String) {
        let mut v = lock(&self.violations);
        if v.len() < 50 {
            v.push(s);
        }
    }

    /// Checks `st` is among `allowed`; counts an accepted send for `cl`.
    fn check(&self, what: &str, st: hb_status, allowed: &[hb_status]) {
        if !allowed.contains(&st) {
            self.violation(format!("{what}: got {st:?}, allowed {allowed:?}"));
        }
    }

    fn client_by_handle(&self, h: usize) -> Option<Arc<Cl>> {
        lock(&self.clients)
            .iter()
            .find(|c| c.handle.load(SeqCst) == h)
            .cloned()
    }

    fn new_ud(self: &Arc<Self>, cl: &Arc<Cl>) -> Arc<Ud> {
        Arc::new(Ud {
            seq: self.clone(),
            cl: cl.clone(),
            released: AtomicUsize::new(0),
            active: AtomicBool::new(false),
        })
    }

    fn next_msg(&self) -> u64 {
        self.msg_seq.fetch_add(1, SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Callbacks.

unsafe fn enter<'a>(p: *mut c_void) -> &'a Ud {
    // SAFETY: every user_data we hand over is an `Arc<Ud>` kept alive for the whole process.
    let u = &*(p as *const Ud);
    u.seq.env.totals.callbacks.fetch_add(1, SeqCst);
    if u.seq.finished.load(SeqCst) {
        u.seq.env.late_after_finish.fetch_add(1, SeqCst);
    }
    if u.released.load(SeqCst) != 0 {
        u.seq
            .violation(format!("client {}: callback after release", u.cl.id));
    }
    if u.cl.close_returned.load(SeqCst) {
        u.seq.violation(format!(
            "client {}: callback after hb_close returned",
            u.cl.id
        ));
    }
    if u.cl.in_cb.swap(true, SeqCst) {
        u.seq.violation(format!(
            "client {}: two callbacks at once (or nested)",
            u.cl.id
        ));
    }
    u.active.store(true, SeqCst);
    u
}

fn leave(u: &Ud) {
    u.active.store(false, SeqCst);
    u.cl.in_cb.store(false, SeqCst);
}

unsafe extern "C" fn cb_state(ud: *mut c_void, ev: *const hb_state_event) {
    let u = enter(ud);
    let ev = &*ev;
    let detail = CStr::from_ptr(ev.detail);
    if detail.to_bytes().len() != ev.detail_len || detail.to_str().is_err() {
        u.seq
            .violation(format!("client {}: bad state detail", u.cl.id));
    }
    if !(1..=5).contains(&ev.state) {
        u.seq
            .violation(format!("client {}: state {}", u.cl.id, ev.state));
    }
    if ev.state == HB_STATE_RECONNECTING as i32
        || (ev.state == HB_STATE_CLOSED as i32 && ev.reason != HB_REASON_USER_CLOSE as i32)
    {
        u.cl.broken.store(true, SeqCst);
    }
    act(u);
    leave(u);
}

unsafe extern "C" fn cb_message(ud: *mut c_void, kind: i32, data: *const u8, len: usize) {
    let u = enter(ud);
    if len > 0 {
        let d = std::slice::from_raw_parts(data, len);
        if kind == 1 && std::str::from_utf8(d).is_err() {
            u.seq
                .violation(format!("client {}: text message not UTF-8", u.cl.id));
        }
    }
    if kind != 1 && kind != 2 {
        u.seq
            .violation(format!("client {}: message kind {kind}", u.cl.id));
    }
    act(u);
    leave(u);
}

unsafe extern "C" fn cb_heartbeat(ud: *mut c_void, _ev: *const hb_heartbeat_event) {
    let u = enter(ud);
    act(u);
    leave(u);
}

unsafe extern "C" fn cb_dropped(ud: *mut c_void, count: u64, _bytes: u64, reason: i32) {
    let u = enter(ud);
    u.cl.dropped.fetch_add(count, SeqCst);
    u.seq.env.totals.dropped.fetch_add(count, SeqCst);
    if reason != HB_REASON_USER_CLOSE as i32 {
        u.cl.broken.store(true, SeqCst);
    }
    act(u);
    leave(u);
}

unsafe extern "C" fn cb_delivery(ud: *mut c_void, first: u64, count: u64, outcome: i32) {
    let u = enter(ud);
    let next = u.cl.next_report.load(SeqCst);
    if first != next || count == 0 {
        u.seq.violation(format!(
            "client {}: delivery report {first}+{count}, expected to start at {next}",
            u.cl.id
        ));
    }
    u.cl.next_report.store(first + count, SeqCst);
    match outcome {
        o if o == hb_delivery::HB_DELIVERY_DROPPED as i32 => {
            u.cl.delivery_dropped.fetch_add(count, SeqCst);
        }
        o if o == hb_delivery::HB_DELIVERY_CONFIRMED as i32
            || o == hb_delivery::HB_DELIVERY_UNCONFIRMED as i32 => {}
        o => u
            .seq
            .violation(format!("client {}: delivery outcome {o}", u.cl.id)),
    }
    act(u);
    leave(u);
}

unsafe extern "C" fn cb_log(ud: *mut c_void, level: i32, msg: *const c_char, len: usize) {
    let u = enter(ud);
    let m = CStr::from_ptr(msg);
    if m.to_bytes().len() != len || m.to_str().is_err() || !(1..=4).contains(&level) {
        u.seq
            .violation(format!("client {}: bad log line (level {level})", u.cl.id));
    }
    leave(u);
}

unsafe extern "C" fn cb_release(ud: *mut c_void) {
    // SAFETY: as in `enter`.
    let u = &*(ud as *const Ud);
    u.seq.env.totals.releases.fetch_add(1, SeqCst);
    if u.seq.finished.load(SeqCst) {
        u.seq.env.late_after_finish.fetch_add(1, SeqCst);
    }
    let n = u.released.fetch_add(1, SeqCst) + 1;
    if n > 1 {
        u.seq
            .violation(format!("client {}: release #{n} of one user_data", u.cl.id));
    }
    if u.active.load(SeqCst) {
        u.seq.violation(format!(
            "client {}: release while a callback with that user_data runs",
            u.cl.id
        ));
    }
    if u.cl.close_returned.load(SeqCst) {
        u.seq.violation(format!(
            "client {}: release after hb_close returned",
            u.cl.id
        ));
    }
}

/// Callbacks with some of the optional ones left NULL (never `on_state`, `on_dropped`,
/// `on_delivery` and `release`, which the checks need).
fn callbacks(variant: u64) -> hb_callbacks {
    hb_callbacks {
        size: size_of::<hb_callbacks>(),
        on_state: Some(cb_state),
        on_message: (variant & 1 == 0).then_some(cb_message as _),
        on_heartbeat: (variant & 2 == 0).then_some(cb_heartbeat as _),
        on_dropped: Some(cb_dropped),
        on_log: (variant & 4 == 0).then_some(cb_log as _),
        release: Some(cb_release),
        on_delivery: Some(cb_delivery),
    }
}

/// One step of the client's script, run inside one of its callbacks.
fn act(u: &Ud) {
    let cl = &u.cl;
    let Some(a) = cl.script.get(cl.pos.fetch_add(1, SeqCst)).copied() else {
        return;
    };
    let seq = &u.seq;
    let h = cl.handle.load(SeqCst);
    if h == 0 {
        return;
    }
    seq.env.totals.inside_actions.fetch_add(1, SeqCst);
    let hp = h as *mut hb_client;
    match a {
        Act::Nothing => {}
        Act::SendText(pad) => {
            let st = send_text_payload(seq, hp, Some(cl), pad as usize);
            seq.check("inside: send_text self", st, SEND_ANY);
        }
        Act::SendBinary(pad) => {
            let st = send_binary_payload(seq, hp, Some(cl), pad as usize);
            seq.check("inside: send_binary self", st, SEND_ANY);
        }
        Act::SendBadUtf8 => {
            let b = b"c0:\xff\xfe";
            let st = hb_send_text(hp, b.as_ptr().cast(), b.len(), std::ptr::null_mut());
            seq.check(
                "inside: send_text bad utf8",
                st,
                &[HB_ERR_INVALID_UTF8, HB_ERR_INVALID_HANDLE],
            );
        }
        Act::SendNull(n) => {
            let st = hb_send_binary(hp, std::ptr::null(), n, std::ptr::null_mut());
            if n == 0 {
                account(seq, Some(cl), st, "inside: send_binary(NULL, 0)", SEND_ANY);
            } else {
                seq.check(
                    "inside: send_binary(NULL, n)",
                    st,
                    &[HB_ERR_NULL, HB_ERR_INVALID_HANDLE],
                );
            }
        }
        Act::Stats => stats_op(seq, hp, true, 0),
        Act::CloseSelf => {
            // The waiting close is refused inside a callback and leaves the handle valid; the
            // non-waiting one is the way to close from here.
            let st = hb_close(hp);
            seq.check(
                "inside: hb_close self",
                st,
                &[HB_ERR_IN_CALLBACK, HB_ERR_INVALID_HANDLE],
            );
            let st = hb_close_start(hp, 1000, std::ptr::null(), 0);
            seq.check(
                "inside: hb_close_start self",
                st,
                &[HB_OK, HB_ERR_INVALID_HANDLE],
            );
        }
        Act::CloseMailbox(slot) => {
            let v = seq.mailbox[slot].load(SeqCst);
            if v != 0 {
                let st = hb_close_start(v as *mut hb_client, 4000, c"bye".as_ptr(), 3);
                seq.check(
                    "inside: hb_close mailbox",
                    st,
                    &[HB_OK, HB_ERR_INVALID_HANDLE],
                );
            }
        }
        Act::SendMailbox(slot) => {
            let v = seq.mailbox[slot].load(SeqCst);
            if v != 0 {
                let target = seq.client_by_handle(v);
                let st = send_text_payload(seq, v as *mut hb_client, target.as_ref(), 3);
                seq.check("inside: send mailbox", st, SEND_ANY);
            }
        }
        Act::Publish(slot) => seq.mailbox[slot].store(h, SeqCst),
        Act::SetCallbacksSelf => {
            let new = seq.new_ud(cl);
            let cb = callbacks(cl.pos.load(SeqCst) as u64);
            let st = hb_set_callbacks(hp, &cb, Arc::as_ptr(&new) as *mut c_void);
            seq.check(
                "inside: set_callbacks self",
                st,
                &[HB_OK, HB_ERR_INVALID_HANDLE, HB_ERR_CLOSED],
            );
            if st == HB_OK {
                lock(&seq.uds).push(new);
            } else {
                lock(&seq.refused).push(new);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calls.

/// Statuses a send on a real (possibly closed) handle may return.
const SEND_ANY: &[hb_status] = &[
    HB_OK,
    HB_ERR_INVALID_HANDLE,
    HB_ERR_CLOSED,
    HB_ERR_QUEUE_FULL,
    HB_ERR_MESSAGE_TOO_BIG,
    HB_ERR_NOT_OPEN,
];

/// Checks a send's status and books an accepted one on `cl`'s ledger.
fn account(seq: &Seq, cl: Option<&Arc<Cl>>, st: hb_status, what: &str, allowed: &[hb_status]) {
    match cl {
        Some(cl) => {
            seq.check(what, st, allowed);
            if st == HB_OK {
                cl.accepted.fetch_add(1, SeqCst);
                seq.env.totals.sends_ok.fetch_add(1, SeqCst);
            }
        }
        None => seq.check(
            &format!("{what} (bogus handle)"),
            st,
            &[HB_ERR_INVALID_HANDLE],
        ),
    }
}

const PAD: &[&str] = &["x", "é", "日", "🦀", " ", "ab"];

fn send_text_payload(seq: &Seq, h: *mut hb_client, cl: Option<&Arc<Cl>>, pad: usize) -> hb_status {
    let id = cl.map_or(0, |c| c.id);
    let mut t = format!("c{id}:{}:", seq.next_msg());
    for i in 0..pad {
        t.push_str(PAD[i % PAD.len()]);
    }
    let st = hb_send_text(h, t.as_ptr().cast(), t.len(), std::ptr::null_mut());
    if h.is_null() {
        seq.check("send_text(NULL handle)", st, &[HB_ERR_NULL]);
    } else {
        account(seq, cl, st, "send_text", SEND_ANY);
    }
    st
}

fn send_binary_payload(
    seq: &Seq,
    h: *mut hb_client,
    cl: Option<&Arc<Cl>>,
    pad: usize,
) -> hb_status {
    let id = cl.map_or(0, |c| c.id);
    let mut b = vec![b'B'];
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&(seq.next_msg() as u32).to_le_bytes());
    b.extend((0..pad).map(|i| (i * 131 % 256) as u8));
    let st = hb_send_binary(h, b.as_ptr(), b.len(), std::ptr::null_mut());
    if h.is_null() {
        seq.check("send_binary(NULL handle)", st, &[HB_ERR_NULL]);
    } else {
        account(seq, cl, st, "send_binary", SEND_ANY);
    }
    st
}

/// `hb_get_stats` with a good (`bad == 0`), older (`bad == 4`) or bad declared size; the buffer
/// must be untouched on error, and past the declared size (or `sizeof(hb_stats)`) on success.
fn stats_op(seq: &Seq, h: *mut hb_client, known: bool, bad: u64) {
    const N: usize = size_of::<hb_stats>() / 8 + 8;
    const PATTERN: u64 = 0xA5A5_5A5A_C3C3_3C3C;
    let mut buf = [PATTERN; N];
    let good = size_of::<hb_stats>();
    let oldest = std::mem::offset_of!(hb_stats, messages_confirmed);
    let size = match bad {
        0 => good,
        1 => 0,
        2 => oldest - 1,
        3 => 8,
        4 => oldest,
        _ => good + 64,
    };
    buf[0] = size as u64;
    let before = buf;
    let st = hb_get_stats(h, buf.as_mut_ptr().cast::<hb_stats>());
    let too_small = size < oldest;
    let allowed: &[hb_status] = if h.is_null() {
        &[HB_ERR_NULL, HB_ERR_INVALID_ARGUMENT]
    } else if too_small {
        &[HB_ERR_INVALID_ARGUMENT, HB_ERR_INVALID_HANDLE]
    } else if known {
        &[HB_OK, HB_ERR_INVALID_HANDLE]
    } else {
        &[HB_ERR_INVALID_HANDLE]
    };
    seq.check(&format!("hb_get_stats(size {size})"), st, allowed);
    if st == HB_OK {
        // SAFETY: the buffer is 8-aligned and larger than hb_stats.
        let s = unsafe { &*buf.as_ptr().cast::<hb_stats>() };
        if !(0..=5).contains(&s.state) {
            seq.violation(format!("stats state {}", s.state));
        }
        let filled = size.min(good);
        if s.size != filled {
            seq.violation(format!("stats size {} for a declared {size}", s.size));
        }
        let bytes = |b: &[u64; N]| -> Vec<u8> { b.iter().flat_map(|w| w.to_ne_bytes()).collect() };
        if bytes(&buf)[filled..] != bytes(&before)[filled..] {
            seq.violation(format!("hb_get_stats wrote past the declared size {size}"));
        }
    } else if buf != before {
        seq.violation(format!("hb_get_stats wrote its output on error {st:?}"));
    }
    // A NULL output pointer.
    if bad == 9 {
        let st = hb_get_stats(h, std::ptr::null_mut());
        seq.check("hb_get_stats(out NULL)", st, &[HB_ERR_NULL]);
    }
}

/// Which handle an operation uses.
enum Target {
    Client(usize, Arc<Cl>),
    Bogus(usize),
    Null,
}

impl Target {
    fn ptr(&self) -> *mut hb_client {
        match self {
            Target::Client(h, _) | Target::Bogus(h) => *h as *mut hb_client,
            Target::Null => std::ptr::null_mut(),
        }
    }
    fn cl(&self) -> Option<&Arc<Cl>> {
        match self {
            Target::Client(_, c) => Some(c),
            _ => None,
        }
    }
}

/// A handle value that is never a live client. On 64-bit, handles are `gen << 32 | index + 1`
/// with `gen >= 1`, so every value below 2^32 is forged; so are an index past any slot and a
/// live handle with its generation's top bit flipped (generations never get that high here).
fn forged(seq: &Seq, rng: &mut Rng) -> usize {
    match rng.below(5) {
        0 => rng.range(1, u32::MAX as u64) as usize,
        1 => ((rng.range(1, 1000) << 32) | rng.range(0x4000_0000, 0xFFFF_FFFF)) as usize,
        2 => usize::MAX,
        3 => {
            let live = lock(&seq.clients)
                .first()
                .map(|c| c.handle.load(SeqCst))
                .unwrap_or(1);
            live ^ (1 << 63)
        }
        _ => (rng.range(1, 0xFFFF) << 32) as usize, // index part 0
    }
}

fn pick_target(seq: &Seq, rng: &mut Rng) -> Target {
    let r = rng.below(100);
    if r < 65 {
        let clients = lock(&seq.clients);
        if !clients.is_empty() {
            let c = clients[rng.below(clients.len() as u64) as usize].clone();
            return Target::Client(c.handle.load(SeqCst), c);
        }
    } else if r < 75 {
        let v = seq.mailbox[rng.below(4) as usize].load(SeqCst);
        if v != 0 {
            if let Some(c) = seq.client_by_handle(v) {
                return Target::Client(v, c);
            }
        }
    }
    if r < 87 {
        let stale = lock(&seq.env.stale);
        if !stale.is_empty() {
            return Target::Bogus(stale[rng.below(stale.len() as u64) as usize]);
        }
    }
    if r < 97 {
        Target::Bogus(forged(seq, rng))
    } else {
        Target::Null
    }
}

/// A script for a client's callbacks.
fn script(rng: &mut Rng) -> Vec<Act> {
    let n = rng.range(0, 12) as usize;
    (0..n)
        .map(|_| match rng.below(40) {
            0..=13 => Act::Nothing,
            14..=18 => Act::SendText(rng.below(40) as u16),
            19..=21 => Act::SendBinary(rng.below(40) as u16),
            22 => Act::SendBadUtf8,
            23 => Act::SendNull(rng.pick(&[0, 1, 7, usize::MAX])),
            24..=25 => Act::Stats,
            26..=27 => Act::CloseSelf,
            28..=30 => Act::CloseMailbox(rng.below(4) as usize),
            31..=33 => Act::SendMailbox(rng.below(4) as usize),
            34..=37 => Act::Publish(rng.below(4) as usize),
            _ => Act::SetCallbacksSelf,
        })
        .collect()
}

/// A config owned by one thread (configs are used by one thread at a time).
struct Cfg(*mut hb_config);

impl Cfg {
    fn new() -> Cfg {
        let mut p = std::ptr::null_mut();
        assert_eq!(hb_config_new(&mut p), HB_OK);
        Cfg(p)
    }
}

impl Drop for Cfg {
    fn drop(&mut self) {
        hb_config_free(self.0);
    }
}

/// A config for the reference server: random but within what keeps a healthy link healthy
/// (`wild`: values that may break it or the ledger).
fn real_config(rng: &mut Rng, wild: bool) -> Cfg {
    let c = Cfg::new();
    let p = c.0;
    let ok = |st: hb_status| assert_eq!(st, HB_OK);
    if rng.pct(50) {
        let interval = rng.range(200, 3000);
        ok(hb_config_set_ping_interval_ms(p, interval));
        ok(hb_config_set_pong_timeout_ms(p, rng.range(150, interval)));
    }
    if rng.pct(30) {
        ok(hb_config_set_heartbeat_mode(p, rng.below(2) as i32));
    }
    if rng.pct(30) {
        ok(hb_config_set_liveness(p, rng.below(2) as i32));
    }
    if rng.pct(30) {
        ok(hb_config_set_deliver_heartbeats(p, rng.below(2) as i32));
    }
    if rng.pct(50) {
        ok(hb_config_set_log_level(p, rng.below(5) as i32));
    }
    if rng.pct(40) {
        ok(hb_config_set_send_queue(
            p,
            rng.range(1, 8) as usize,
            rng.range(1, 4096) as usize,
        ));
    }
    if rng.pct(40) {
        ok(hb_config_set_offline_queue(
            p,
            rng.range(0, 8) as usize,
            rng.range(0, 4096) as usize,
        ));
    }
    if rng.pct(30) {
        ok(hb_config_set_max_message_size(
            p,
            rng.range(64, 70_000) as usize,
        ));
    }
    if rng.pct(30) {
        ok(hb_config_set_buffer_sizes(
            p,
            rng.range(256, 70_000) as usize,
            rng.range(0, 70_000) as usize,
        ));
    }
    if rng.pct(30) {
        ok(hb_config_set_close_timeout_ms(p, rng.range(2000, 5000)));
    }
    if rng.pct(20) {
        let name = std::ffi::CString::new(format!("X-Abuse-{}", rng.below(100))).unwrap();
        ok(hb_config_add_header(p, name.as_ptr(), c"v a l".as_ptr()));
    }
    if wild {
        match rng.below(3) {
            0 => ok(hb_config_set_close_timeout_ms(p, rng.range(1, 20))),
            1 => ok(hb_config_set_max_message_size(p, rng.range(1, 8) as usize)),
            _ => {
                ok(hb_config_set_ping_interval_ms(p, rng.range(1, 5)));
                ok(hb_config_set_pong_timeout_ms(p, 1));
                ok(hb_config_set_max_missed(p, 1));
            }
        }
        ok(hb_config_set_backoff(p, 5, 50));
        ok(hb_config_set_backoff_min_ms(p, 5));
    }
    c
}

/// A config setter with random values on the thread's scratch config (or NULL), checked
/// against the documented ranges.
fn config_op(seq: &Seq, rng: &mut Rng, scratch: &Cfg) {
    let null = rng.pct(8);
    let p = if null {
        std::ptr::null_mut()
    } else {
        scratch.0
    };
    let v = rng.edgy_u64();
    let ms_ok = (1..=86_400_000).contains(&v);
    let flag = rng.pick(&[0i32, 1, 2, -1, i32::MAX]);
    let flag_ok = flag == 0 || flag == 1;
    let inv = |ok: bool| if ok { HB_OK } else { HB_ERR_INVALID_ARGUMENT };
    let which = rng.below(24);
    let (name, st, want): (&str, hb_status, Vec<hb_status>) = match which {
        0 => (
            "ping_interval",
            hb_config_set_ping_interval_ms(p, v),
            vec![inv(ms_ok)],
        ),
        1 => (
            "pong_timeout",
            hb_config_set_pong_timeout_ms(p, v),
            vec![inv(ms_ok)],
        ),
        2 => {
            let n = v as u32;
            (
                "max_missed",
                hb_config_set_max_missed(p, n),
                vec![inv((1..=1000).contains(&n))],
            )
        }
        3 => (
            "reprobe",
            hb_config_set_reprobe(p, flag),
            vec![inv(flag_ok)],
        ),
        4 | 5 => {
            let variants: [&[u8]; 6] = [
                b"",
                b"hb",
                b"\xff\xfe",
                &[b'p'; 1024],
                &[b'p'; 1025],
                b"\xc3",
            ];
            let t = rng.pick(&variants);
            let want = match t.len() {
                0 | 1025 => HB_ERR_INVALID_ARGUMENT,
                _ if std::str::from_utf8(t).is_err() => HB_ERR_INVALID_UTF8,
                _ => HB_OK,
            };
            let st = if which == 4 {
                hb_config_set_ping_text(p, t.as_ptr().cast(), t.len())
            } else {
                hb_config_set_pong_text(p, t.as_ptr().cast(), t.len())
            };
            ("ping/pong text", st, vec![want])
        }
        6 => {
            let st = hb_config_set_ping_text(p, std::ptr::null(), rng.range(1, 5) as usize);
            ("ping_text(NULL, n)", st, vec![HB_ERR_NULL])
        }
        7 => (
            "liveness",
            hb_config_set_liveness(p, flag),
            vec![inv(flag_ok)],
        ),
        8 => (
            "heartbeat_mode",
            hb_config_set_heartbeat_mode(p, flag),
            vec![inv(flag_ok)],
        ),
        9 => (
            "deliver_heartbeats",
            hb_config_set_deliver_heartbeats(p, flag),
            vec![inv(flag_ok)],
        ),
        10 => {
            let cap = rng.edgy_u64();
            let ok = ms_ok && (1..=86_400_000).contains(&cap);
            ("backoff", hb_config_set_backoff(p, v, cap), vec![inv(ok)])
        }
        11 => (
            "backoff_jitter",
            hb_config_set_backoff_jitter(p, flag),
            vec![inv(flag_ok)],
        ),
        12 => (
            "backoff_min",
            hb_config_set_backoff_min_ms(p, v),
            vec![inv((5..=86_400_000).contains(&v))],
        ),
        13 => (
            "max_attempts",
            hb_config_set_max_attempts(p, v as u32),
            vec![HB_OK],
        ),
        14 => (
            "stable_after",
            hb_config_set_stable_after_ms(p, v),
            vec![inv(v <= 86_400_000)],
        ),
        15 => (
            "connect_timeout",
            hb_config_set_connect_timeout_ms(p, v),
            vec![inv(ms_ok)],
        ),
        16 => (
            "close_timeout",
            hb_config_set_close_timeout_ms(p, v),
            vec![inv(ms_ok)],
        ),
        17 | 18 => {
            let n = rng.below(4) as usize;
            let vals: Vec<u16> = (0..n)
                .map(|_| {
                    rng.pick(&[
                        99,
                        100,
                        404,
                        599,
                        600,
                        999,
                        1000,
                        1011,
                        4999,
                        5000,
                        0,
                        u16::MAX,
                    ])
                })
                .collect();
            let (st, range) = if which == 17 {
                (
                    hb_config_set_fatal_http_statuses(p, vals.as_ptr(), n),
                    100..=599,
                )
            } else {
                (
                    hb_config_set_fatal_close_codes(p, vals.as_ptr(), n),
                    1000..=4999,
                )
            };
            let ok = vals.iter().all(|c| range.contains(c));
            let st2 = if rng.pct(30) {
                // (NULL, n > 0) must be refused.
                if which == 17 {
                    hb_config_set_fatal_http_statuses(p, std::ptr::null(), 3)
                } else {
                    hb_config_set_fatal_close_codes(p, std::ptr::null(), 3)
                }
            } else {
                HB_ERR_NULL
            };
            seq.check("fatal codes (NULL, 3)", st2, &[HB_ERR_NULL]);
            ("fatal codes", st, vec![inv(ok)])
        }
        19 => {
            let n = v as usize;
            (
                "max_message_size",
                hb_config_set_max_message_size(p, n),
                vec![inv((1..=1 << 30).contains(&n))],
            )
        }
        20 => {
            let (r, w) = (v as usize, rng.edgy_u64() as usize);
            let ok = (256..=16 << 20).contains(&r) && w <= 16 << 20;
            (
                "buffer_sizes",
                hb_config_set_buffer_sizes(p, r, w),
                vec![inv(ok)],
            )
        }
        21 => {
            let (m, b) = (rng.pick(&[0usize, 1, 5, usize::MAX]), v as usize);
            (
                "send_queue",
                hb_config_set_send_queue(p, m, b),
                vec![inv(m != 0 && b != 0)],
            )
        }
        22 => {
            let (m, b) = (rng.pick(&[0usize, 1, 5, usize::MAX]), v as usize);
            (
                "offline_queue",
                hb_config_set_offline_queue(p, m, b),
                vec![HB_OK],
            )
        }
        _ => {
            let names: [(&CStr, bool); 6] = [
                (c"X-Ok", true),
                (c"Authorization", true),
                (c"Host", false),
                (c"sec-websocket-key", false),
                (c"bad name", false),
                (c"", false),
            ];
            let (name, ok) = rng.pick(&names);
            let values: [(&CStr, bool); 3] =
                [(c"Bearer x", true), (c"a\tb", true), (c"\x01", false)];
            let (value, vok) = rng.pick(&values);
            if rng.pct(20) {
                let st = hb_config_add_header(p, std::ptr::null(), value.as_ptr());
                seq.check("add_header(NULL name)", st, &[HB_ERR_NULL]);
            }
            let st = hb_config_add_header(p, name.as_ptr(), value.as_ptr());
            // The scratch config keeps what earlier ops added: past 64 headers (or 8 KiB) a
            // good header is refused too, and the config says so.
            let capped = !null && st == HB_ERR_INVALID_ARGUMENT && ok && vok && {
                let mut buf = [0 as std::ffi::c_char; 256];
                let mut n = 0;
                hb_config_last_error(p, buf.as_mut_ptr(), buf.len(), &mut n) == HB_OK
                    && unsafe { CStr::from_ptr(buf.as_ptr()) }
                        .to_string_lossy()
                        .contains("at most")
            };
            (
                "add_header",
                st,
                vec![if capped { st } else { inv(ok && vok) }],
            )
        }
    };
    let want = if null { vec![HB_ERR_NULL] } else { want };
    seq.check(&format!("hb_config_set {name} (value {v})"), st, &want);
}

/// `hb_connect` with arguments it must refuse; nothing may be created or released.
fn bad_connect(seq: &Arc<Seq>, rng: &mut Rng, scratch: &Cfg) {
    let cl = new_client(seq, rng, Kind::Offline, false);
    let ud = seq.new_ud(&cl);
    let mut cb = callbacks(rng.below(8));
    let mut url: Vec<u8> = b"ws://127.0.0.1:1/".to_vec();
    let mut out: *mut hb_client = std::ptr::null_mut();
    let mut out_ptr: *mut *mut hb_client = &mut out;
    let mut url_null = false;
    let mut config = std::ptr::null_mut::<hb_config>();
    let want: &[hb_status] = match rng.below(10) {
        0 => {
            url_null = true;
            &[HB_ERR_NULL]
        }
        1 => {
            out_ptr = std::ptr::null_mut();
            &[HB_ERR_NULL]
        }
        2 => {
            url = rng
                .pick(&[
                    &b"http://127.0.0.1/"[..],
                    b"",
                    b"ws://",
                    b"not a url",
                    b"ws://127.0.0.1:99999/",
                    b"ws://a b/",
                ])
                .to_vec();
            &[HB_ERR_INVALID_URL]
        }
        3 => {
            url = b"wss://127.0.0.1:1/".to_vec();
            &[HB_ERR_UNSUPPORTED]
        }
        4 => {
            url = b"ws://127.0.0.1:1/\xff\xfe".to_vec();
            &[HB_ERR_INVALID_UTF8]
        }
        5 | 6 => {
            cb.size = rng.pick(&[0, 1, std::mem::offset_of!(hb_callbacks, on_delivery) - 1]);
            &[HB_ERR_INVALID_ARGUMENT]
        }
        7 => {
            // Contradicting options: pong timeout above the interval, or cap below base.
            let c = Cfg::new();
            if rng.pct(50) {
                assert_eq!(hb_config_set_ping_interval_ms(c.0, 10), HB_OK);
                assert_eq!(hb_config_set_pong_timeout_ms(c.0, 11), HB_OK);
            } else {
                assert_eq!(hb_config_set_backoff(c.0, 100, 10), HB_OK);
            }
            let st = connect_raw(seq, rng, &url, c.0, Some(&cb), ud_ptr(&ud), out_ptr, false);
            finish_refused(
                seq,
                "hb_connect(invalid config)",
                st,
                &[HB_ERR_INVALID_CONFIG],
                ud,
            );
            return;
        }
        _ => {
            url = b"ws://127.0.0.1:1/".to_vec();
            url.insert(5, b' ');
            config = scratch.0;
            &[HB_ERR_INVALID_URL, HB_ERR_INVALID_CONFIG]
        }
    };
    let st = connect_raw(
        seq,
        rng,
        &url,
        config,
        Some(&cb),
        ud_ptr(&ud),
        out_ptr,
        url_null,
    );
    if !out.is_null() {
        seq.violation("hb_connect wrote client_out on error".into());
    }
    finish_refused(seq, "hb_connect(bad)", st, want, ud);
}

fn ud_ptr(ud: &Arc<Ud>) -> *mut c_void {
    Arc::as_ptr(ud) as *mut c_void
}

fn finish_refused(seq: &Seq, what: &str, st: hb_status, want: &[hb_status], ud: Arc<Ud>) {
    seq.check(what, st, want);
    lock(&seq.refused).push(ud);
}

/// Calls `hb_connect` with an error buffer of random size, checking what it writes there.
#[allow(clippy::too_many_arguments)]
fn connect_raw(
    seq: &Seq,
    rng: &mut Rng,
    url: &[u8],
    config: *const hb_config,
    cb: Option<&hb_callbacks>,
    ud: *mut c_void,
    out: *mut *mut hb_client,
    url_null: bool,
) -> hb_status {
    let mut u = url.to_vec();
    u.push(0);
    let mut err = [0x55u8; 64];
    let len = rng.pick(&[0usize, 1, 2, 7, 64]);
    let err_ptr = if rng.pct(15) {
        std::ptr::null_mut()
    } else {
        err.as_mut_ptr().cast::<c_char>()
    };
    let st = hb_connect(
        if url_null {
            std::ptr::null()
        } else {
            u.as_ptr().cast()
        },
        config,
        cb.map_or(std::ptr::null(), |c| c as *const hb_callbacks),
        ud,
        out,
        err_ptr,
        len,
    );
    if err[len..].iter().any(|&b| b != 0x55) {
        seq.violation(format!("hb_connect wrote past err_buf_len {len}"));
    }
    if st != HB_OK && !err_ptr.is_null() && len > 0 {
        match err[..len].iter().position(|&b| b == 0) {
            Some(n) if std::str::from_utf8(&err[..n]).is_ok() => {}
            _ => seq.violation(format!(
                "hb_connect err_buf (len {len}) not a NUL-terminated UTF-8 message"
            )),
        }
    }
    st
}

fn new_client(seq: &Arc<Seq>, rng: &mut Rng, kind: Kind, callbacks_at_connect: bool) -> Arc<Cl> {
    Arc::new(Cl {
        id: seq.env.next_client.fetch_add(1, SeqCst),
        kind,
        handle: AtomicUsize::new(0),
        callbacks_at_connect,
        hello_ok: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        next_report: AtomicU64::new(1),
        delivery_dropped: AtomicU64::new(0),
        broken: AtomicBool::new(false),
        close_returned: AtomicBool::new(false),
        in_cb: AtomicBool::new(false),
        script: script(rng),
        pos: AtomicUsize::new(0),
    })
}

/// Connects a client that will live: to the server or to the closed port. Sends `hello` first,
/// then publishes the handle to the other threads.
fn good_connect(seq: &Arc<Seq>, rng: &mut Rng, kind: Kind, scratch: &Cfg) {
    let with_cb = rng.pct(85);
    let cl = new_client(seq, rng, kind, with_cb);
    let ud = seq.new_ud(&cl);
    let cb = callbacks(rng.below(8));
    let (url, cfg) = match kind {
        Kind::Real => (&seq.env.url, Some(real_config(rng, false))),
        Kind::RealWild => (&seq.env.url, Some(real_config(rng, true))),
        Kind::Offline => (&seq.env.offline_url, None),
    };
    // Offline clients sometimes take the thread's scratch config, whatever the setters left.
    let use_scratch = kind == Kind::Offline && rng.pct(50);
    let config = match (&cfg, use_scratch) {
        (Some(c), _) => c.0 as *const hb_config,
        (None, true) => scratch.0,
        (None, false) => std::ptr::null(),
    };
    let mut out: *mut hb_client = std::ptr::null_mut();
    let (cbp, udp) = if with_cb {
        (Some(&cb), ud_ptr(&ud))
    } else {
        (None, std::ptr::null_mut())
    };
    let st = connect_raw(seq, rng, url.as_bytes(), config, cbp, udp, &mut out, false);
    drop(cfg);
    let allowed: &[hb_status] = if use_scratch {
        &[HB_OK, HB_ERR_INVALID_CONFIG]
    } else {
        &[HB_OK]
    };
    seq.check(&format!("hb_connect({kind:?})"), st, allowed);
    if st != HB_OK {
        lock(&seq.refused).push(ud);
        return;
    }
    if with_cb {
        lock(&seq.uds).push(ud);
    }
    match kind {
        Kind::Offline => seq.env.totals.offline_clients.fetch_add(1, SeqCst),
        _ => seq.env.totals.real_clients.fetch_add(1, SeqCst),
    };
    let hello = format!("hello:{}", cl.id);
    let st = hb_send_text(
        out,
        hello.as_ptr().cast(),
        hello.len(),
        std::ptr::null_mut(),
    );
    account(seq, Some(&cl), st, "send hello", SEND_ANY);
    cl.hello_ok.store(st == HB_OK, SeqCst);
    cl.handle.store(out as usize, SeqCst);
    lock(&seq.clients).push(cl.clone());
    if !with_cb && rng.pct(70) {
        set_callbacks_op(seq, rng, Target::Client(out as usize, cl));
    }
}

fn set_callbacks_op(seq: &Arc<Seq>, rng: &mut Rng, t: Target) {
    let owner = match t.cl() {
        Some(c) => c.clone(),
        None => new_client(seq, rng, Kind::Offline, false),
    };
    let ud = seq.new_ud(&owner);
    let mut cb = callbacks(rng.below(8));
    let bad = rng.below(10);
    let st = match bad {
        0 => hb_set_callbacks(t.ptr(), std::ptr::null(), Arc::as_ptr(&ud) as *mut c_void),
        1 => {
            cb.size = rng.pick(&[0, 8, std::mem::offset_of!(hb_callbacks, on_delivery) - 1]);
            hb_set_callbacks(t.ptr(), &cb, Arc::as_ptr(&ud) as *mut c_void)
        }
        _ => hb_set_callbacks(t.ptr(), &cb, Arc::as_ptr(&ud) as *mut c_void),
    };
    let allowed: &[hb_status] = match (&t, bad) {
        (Target::Null, _) => &[HB_ERR_NULL],
        (Target::Bogus(_), 0) => &[HB_ERR_INVALID_HANDLE, HB_ERR_NULL],
        (Target::Bogus(_), 1) => &[HB_ERR_INVALID_HANDLE, HB_ERR_INVALID_ARGUMENT],
        (Target::Bogus(_), _) => &[HB_ERR_INVALID_HANDLE],
        (Target::Client(..), 0) => &[HB_ERR_INVALID_HANDLE, HB_ERR_NULL],
        (Target::Client(..), 1) => &[HB_ERR_INVALID_HANDLE, HB_ERR_INVALID_ARGUMENT],
        (Target::Client(..), _) => &[HB_OK, HB_ERR_INVALID_HANDLE, HB_ERR_CLOSED],
    };
    seq.check("hb_set_callbacks", st, allowed);
    if st == HB_OK {
        lock(&seq.uds).push(ud);
    } else {
        lock(&seq.refused).push(ud);
    }
}

/// `hb_close` from outside any callback: when it returns `HB_OK`, every `user_data` handed over
/// before the call has been released and no callback of the client may start any more.
fn close_outside(seq: &Seq, t: &Target, what: &str) {
    let before: Vec<Arc<Ud>> = match t.cl() {
        Some(c) => lock(&seq.uds)
            .iter()
            .filter(|u| Arc::ptr_eq(&u.cl, c))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let st = hb_close(t.ptr());
    let allowed: &[hb_status] = match t {
        Target::Null => &[HB_ERR_NULL],
        Target::Bogus(_) => &[HB_ERR_INVALID_HANDLE],
        Target::Client(..) => &[HB_OK, HB_ERR_INVALID_HANDLE],
    };
    seq.check(what, st, allowed);
    if st == HB_OK {
        if let Some(c) = t.cl() {
            c.close_returned.store(true, SeqCst);
            for u in &before {
                if u.released.load(SeqCst) != 1 {
                    seq.violation(format!(
                        "client {}: hb_close returned before release of a user_data",
                        c.id
                    ));
                }
            }
        }
    }
}

const BAD_UTF8: &[&[u8]] = &[
    b"\xff",
    b"c0:\xc3",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"ok \xf0\x9f\xa6",
    b"\xf8\x88\x80\x80\x80",
];

/// One random operation from a sequence thread.
fn op(seq: &Arc<Seq>, rng: &mut Rng, real: bool, scratch: &Cfg) {
    seq.env.totals.ops.fetch_add(1, SeqCst);
    let n_clients = lock(&seq.clients).len();
    let w = rng.below(100);
    match w {
        0..=5 if real && n_clients < 4 => {
            let kind = if rng.pct(10) {
                Kind::RealWild
            } else {
                Kind::Real
            };
            good_connect(seq, rng, kind, scratch);
        }
        6..=7 if n_clients < 4 && (real || rng.pct(25)) => {
            good_connect(seq, rng, Kind::Offline, scratch)
        }
        8..=12 => bad_connect(seq, rng, scratch),
        13..=17 => {
            // A burst to one target, text and binary mixed, from this thread.
            let t = pick_target(seq, rng);
            for _ in 0..rng.range(2, 16) {
                let pad = rng.below(300) as usize;
                if rng.pct(60) {
                    send_text_payload(seq, t.ptr(), t.cl(), pad);
                } else {
                    send_binary_payload(seq, t.ptr(), t.cl(), pad);
                }
            }
        }
        18..=32 => {
            let t = pick_target(seq, rng);
            let pad = rng.pick(&[0, 1, 2, 3, 7, 33, 255, 4097, 70_001]);
            send_text_payload(seq, t.ptr(), t.cl(), pad);
        }
        33..=44 => {
            let t = pick_target(seq, rng);
            if t.ptr().is_null() {
                let st = hb_send_binary(t.ptr(), b"x".as_ptr(), 1, std::ptr::null_mut());
                seq.check("send_binary(NULL handle)", st, &[HB_ERR_NULL]);
            } else {
                let pad = rng.pick(&[0, 1, 2, 3, 7, 33, 255, 4097, 70_001]);
                send_binary_payload(seq, t.ptr(), t.cl(), pad);
            }
        }
        45..=48 => {
            let t = pick_target(seq, rng);
            let b = rng.pick(BAD_UTF8);
            let st = hb_send_text(t.ptr(), b.as_ptr().cast(), b.len(), std::ptr::null_mut());
            let allowed: &[hb_status] = match t {
                Target::Null => &[HB_ERR_NULL],
                _ => &[HB_ERR_INVALID_UTF8, HB_ERR_INVALID_HANDLE],
            };
            seq.check("send_text(invalid UTF-8)", st, allowed);
        }
        49..=54 => {
            // NULL data with len 0 (the empty message) and len > 0 (refused); empty non-NULL.
            let t = pick_target(seq, rng);
            let len = rng.pick(&[0usize, 0, 1, 5, usize::MAX]);
            let text = rng.pct(50);
            let nonnull = len == 0 && rng.pct(30);
            let data: *const u8 = if nonnull {
                b"".as_ptr()
            } else {
                std::ptr::null()
            };
            let st = if text {
                hb_send_text(t.ptr(), data.cast(), len, std::ptr::null_mut())
            } else {
                hb_send_binary(t.ptr(), data, len, std::ptr::null_mut())
            };
            let what = format!("send_{}(NULL, {len})", if text { "text" } else { "binary" });
            match (&t, len) {
                (Target::Null, _) => seq.check(&what, st, &[HB_ERR_NULL]),
                (_, 0) => account(seq, t.cl(), st, &what, SEND_ANY),
                _ => seq.check(&what, st, &[HB_ERR_NULL, HB_ERR_INVALID_HANDLE]),
            }
        }
        55..=61 => {
            let t = pick_target(seq, rng);
            close_outside(seq, &t, "hb_close");
            if rng.pct(30) {
                close_outside(seq, &t, "hb_close (again)");
            }
        }
        62..=67 => {
            let t = pick_target(seq, rng);
            let bad = if rng.pct(50) { 0 } else { rng.range(1, 9) };
            stats_op(seq, t.ptr(), t.cl().is_some(), bad);
        }
        68..=79 => config_op(seq, rng, scratch),
        80..=84 => {
            let t = pick_target(seq, rng);
            set_callbacks_op(seq, rng, t);
        }
        85..=89 => {
            let t = pick_target(seq, rng);
            if let Target::Client(h, _) = t {
                seq.mailbox[rng.below(4) as usize].store(h, SeqCst);
            }
        }
        90..=92 => {
            let v = rng.next() as i32;
            for s in [
                hb_status_str(v),
                hb_state_str(v),
                hb_reason_str(v),
                hb_version(),
            ] {
                // SAFETY: static NUL-terminated strings.
                if s.is_null() || unsafe { CStr::from_ptr(s) }.to_str().is_err() {
                    seq.violation(format!("string function gave a bad string for {v}"));
                }
            }
            let n = rng.pick(&[0u32, 1, 2, 64, 65, u32::MAX]);
            let st = hb_runtime_set_threads(n);
            let want = if (1..=64).contains(&n) {
                HB_ERR_ALREADY_STARTED
            } else {
                HB_ERR_INVALID_ARGUMENT
            };
            seq.check(&format!("hb_runtime_set_threads({n})"), st, &[want]);
            let st = hb_config_new(std::ptr::null_mut());
            seq.check("hb_config_new(NULL)", st, &[HB_ERR_NULL]);
            hb_config_free(std::ptr::null_mut());
        }
        _ => {
            if rng.pct(30) {
                std::thread::sleep(Duration::from_micros(rng.range(50, 1500)));
            } else {
                std::thread::yield_now();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A sequence.

struct Outcome {
    violations: Vec<String>,
}

fn run_sequence(env: &'static Env, seed: u64) -> Outcome {
    let mut rng = Rng(seed);
    let seq = Arc::new(Seq {
        env,
        clients: Mutex::new(Vec::new()),
        uds: Mutex::new(Vec::new()),
        refused: Mutex::new(Vec::new()),
        mailbox: Default::default(),
        violations: Mutex::new(Vec::new()),
        finished: AtomicBool::new(false),
        msg_seq: AtomicU64::new(0),
    });
    let real = rng.pct(30);
    let threads = rng.range(2, 4) as usize;
    let plans: Vec<(Rng, usize)> = (0..threads)
        .map(|i| {
            (
                Rng(mix(seed ^ ((i as u64 + 1) * 0x1234_5678_9ABC))),
                rng.range(3, 9) as usize,
            )
        })
        .collect();
    std::thread::scope(|s| {
        for (i, (mut trng, n)) in plans.into_iter().enumerate() {
            let seq = &seq;
            s.spawn(move || {
                let scratch = Cfg::new();
                if real && i == 0 {
                    good_connect(seq, &mut trng, Kind::Real, &scratch);
                }
                for _ in 0..n {
                    op(seq, &mut trng, real, &scratch);
                }
            });
        }
    });

    // Close everything from here (outside any callback); most may already be closed.
    let clients: Vec<Arc<Cl>> = lock(&seq.clients).clone();
    for c in &clients {
        let t = Target::Client(c.handle.load(SeqCst), c.clone());
        close_outside(&seq, &t, "final hb_close");
    }
    // Clients closed from inside a callback finish on their own: wait for their releases.
    let deadline = Instant::now() + SETTLE;
    let uds: Vec<Arc<Ud>> = lock(&seq.uds).clone();
    for u in &uds {
        while u.released.load(SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let n = u.released.load(SeqCst);
        if n != 1 {
            seq.violation(format!(
                "client {}: user_data handed over, released {n} times",
                u.cl.id
            ));
        }
    }
    // Nothing the API refused may ever be released.
    std::thread::sleep(Duration::from_millis(if real { 2 } else { 0 }));
    for u in lock(&seq.refused).iter() {
        let n = u.released.load(SeqCst);
        if n != 0 {
            seq.violation(format!(
                "client {}: refused user_data released {n} times",
                u.cl.id
            ));
        }
    }
    // The ledger of every client whose link never broke and whose drops we could see.
    for c in &clients {
        let had_sink = c.callbacks_at_connect || uds.iter().any(|u| Arc::ptr_eq(&u.cl, c));
        let accepted = c.accepted.load(SeqCst);
        let dropped = c.dropped.load(SeqCst);
        if !had_sink {
            continue;
        }
        if dropped > accepted {
            seq.violation(format!(
                "client {} ({:?}): {dropped} dropped > {accepted} accepted",
                c.id, c.kind
            ));
            continue;
        }
        // Every accepted message was reported by id, exactly once; dropped ones both ways.
        let reported = c.next_report.load(SeqCst) - 1;
        let delivery_dropped = c.delivery_dropped.load(SeqCst);
        if reported != accepted || delivery_dropped != dropped {
            seq.violation(format!(
                "client {} ({:?}): accepted {accepted}, delivery reports cover {reported} \
                 ({delivery_dropped} dropped; on_dropped said {dropped})",
                c.id, c.kind
            ));
        }
        let expect = accepted - dropped;
        match c.kind {
            Kind::Offline => {
                env.totals.ledger_checked.fetch_add(1, SeqCst);
                if expect != 0 {
                    seq.violation(format!(
                        "client {} (closed port): accepted {accepted} != dropped {dropped}",
                        c.id
                    ));
                }
            }
            Kind::Real if c.hello_ok.load(SeqCst) => {
                if c.broken.load(SeqCst) {
                    env.totals.ledger_skipped_broken.fetch_add(1, SeqCst);
                    continue;
                }
                env.totals.ledger_checked.fetch_add(1, SeqCst);
                env.totals.ledger_messages.fetch_add(expect, SeqCst);
                let got = env.ledger.wait_received(c.id, expect, SETTLE);
                // Anything extra would arrive right behind: give it a moment.
                let got = if got == expect {
                    env.ledger
                        .wait_received(c.id, expect + 1, Duration::from_millis(1))
                } else {
                    got
                };
                if got != expect {
                    seq.violation(format!(
                        "client {}: ledger: accepted {accepted} != server received {got} + dropped {dropped}",
                        c.id
                    ));
                }
            }
            _ => {}
        }
    }
    let foreign: Vec<String> = lock(&env.ledger.inner).foreign.drain(..).collect();
    for f in foreign {
        seq.violation(format!("cross-talk: {f}"));
    }

    seq.finished.store(true, SeqCst);
    {
        let mut stale = lock(&env.stale);
        for c in &clients {
            stale.push(c.handle.load(SeqCst));
        }
        let n = stale.len();
        if n > 256 {
            stale.drain(..n - 256);
        }
    }
    let violations = std::mem::take(&mut *lock(&seq.violations));
    // Every user_data stays allocated for the life of the process: a late callback or release
    // (a library bug) then touches valid memory and is counted in `late_after_finish`.
    for u in lock(&seq.uds).drain(..).chain(lock(&seq.refused).drain(..)) {
        std::mem::forget(u);
    }
    lock(&seq.clients).clear();
    Outcome { violations }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

fn start_env() -> &'static Env {
    let ledger = Arc::new(ServerLedger::default());
    let hook_ledger = ledger.clone();
    let server = Server::start(ServerConfig {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Duration::from_secs(3),
        on_event: Some(Arc::new(move |e| hook_ledger.on_event(e))),
        ..ServerConfig::default()
    })
    .unwrap();
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let offline_url = format!("ws://{}/", closed.local_addr().unwrap());
    drop(closed);
    let env: &'static Env = Box::leak(Box::new(Env {
        url: server.url(),
        _server: server,
        offline_url,
        ledger,
        stale: Mutex::new(Vec::new()),
        next_client: AtomicU64::new(1),
        late_after_finish: AtomicUsize::new(0),
        totals: Totals::default(),
    }));
    // Start the library's runtime so that `hb_runtime_set_threads` is reliably too late.
    let mut h = std::ptr::null_mut();
    let url = std::ffi::CString::new(env.offline_url.clone()).unwrap();
    assert_eq!(
        hb_connect(
            url.as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            std::ptr::null_mut(),
            &mut h,
            std::ptr::null_mut(),
            0
        ),
        HB_OK
    );
    assert_eq!(hb_close(h), HB_OK);
    env
}

struct Progress {
    index: AtomicU64,
    seed: AtomicU64,
    started: Mutex<Instant>,
    done: AtomicBool,
}

#[test]
fn random_call_sequences_keep_every_invariant() {
    let env = start_env();
    let one = env_u64("HBWS_ABUSE_SEQ_SEED");
    let base = env_u64("HBWS_ABUSE_SEED").unwrap_or(DEFAULT_SEED);
    let count = env_u64("HBWS_ABUSE_SEQUENCES").unwrap_or(if one.is_some() {
        1
    } else {
        DEFAULT_SEQUENCES
    });
    let seed_of =
        move |i: u64| one.unwrap_or_else(|| mix(base ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    match one {
        Some(s) => eprintln!("abuse: sequence seed {s:#018x}, {count} run(s)"),
        None => eprintln!("abuse: base seed {base:#018x} (HBWS_ABUSE_SEED), {count} sequences (HBWS_ABUSE_SEQUENCES)"),
    }
    let progress = Arc::new(Progress {
        index: AtomicU64::new(0),
        seed: AtomicU64::new(seed_of(0)),
        started: Mutex::new(Instant::now()),
        done: AtomicBool::new(false),
    });
    let t0 = Instant::now();
    let p = progress.clone();
    let worker = std::thread::spawn(move || {
        for i in 0..count {
            let seed = seed_of(i);
            p.index.store(i, SeqCst);
            p.seed.store(seed, SeqCst);
            *lock(&p.started) = Instant::now();
            let out = run_sequence(env, seed);
            if !out.violations.is_empty() {
                panic!(
                    "sequence {i} (seed {seed:#018x}) broke invariants:\n  {}\nreproduce: HBWS_ABUSE_SEQ_SEED={seed:#x} HBWS_ABUSE_SEQUENCES=100 cargo test --test abuse",
                    out.violations.join("\n  ")
                );
            }
            let late = env.late_after_finish.load(SeqCst);
            assert_eq!(late, 0, "callbacks or releases after their sequence ended (around sequence {i}, seed {seed:#018x})");
        }
        p.done.store(true, SeqCst);
    });
    // The watchdog: every sequence must finish within WATCHDOG.
    loop {
        if worker.is_finished() {
            break;
        }
        let elapsed = lock(&progress.started).elapsed();
        if elapsed > WATCHDOG {
            panic!(
                "deadlock or hang: sequence {} (seed {:#018x}) still running after {elapsed:?}\nreproduce: HBWS_ABUSE_SEQ_SEED={:#x} cargo test --test abuse",
                progress.index.load(SeqCst),
                progress.seed.load(SeqCst),
                progress.seed.load(SeqCst)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = worker.join() {
        std::panic::resume_unwind(e);
    }
    assert!(progress.done.load(SeqCst));
    let t = &env.totals;
    let g = |a: &AtomicU64| a.load(SeqCst);
    eprintln!(
        "abuse: {count} sequences, {} operations, {} real + {} closed-port clients, {} sends accepted, {} dropped, {} callbacks ({} scripted actions inside), {} releases; ledger checked for {} clients ({} messages seen by the server; {} skipped: link broke) in {:?}",
        g(&t.ops),
        g(&t.real_clients),
        g(&t.offline_clients),
        g(&t.sends_ok),
        g(&t.dropped),
        g(&t.callbacks),
        g(&t.inside_actions),
        g(&t.releases),
        g(&t.ledger_checked),
        g(&t.ledger_messages),
        g(&t.ledger_skipped_broken),
        t0.elapsed()
    );
    // Late callbacks of the last sequences.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        env.late_after_finish.load(SeqCst),
        0,
        "callbacks after the sequences ended"
    );
}
