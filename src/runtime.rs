//! The one private tokio runtime of the process.
//!
//! Started lazily by the first client, with 1 worker thread unless [`set_worker_threads`] said
//! otherwise before that. It installs no signal handlers and no logger. A runtime does not
//! survive `fork()`: the child sees [`RuntimeError::Forked`] from every call instead of a hang.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};

/// Why the runtime cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// This process is a `fork()` child of the one that started the runtime.
    Forked,
    /// The OS refused to start the runtime's threads.
    Start(String),
    /// A setting that must come before the first client came after it.
    AlreadyStarted,
}

struct Global {
    /// A multi-thread runtime is kept here; a one-thread runtime lives on its own driver thread
    /// and only its handle is kept.
    runtime: Result<(Handle, Option<Runtime>), String>,
    pid: u32,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();
static WORKER_THREADS: AtomicUsize = AtomicUsize::new(1);
/// The most worker threads one may ask for.
pub const MAX_WORKER_THREADS: usize = 64;

/// Set in a `fork()` child by the handler [`handle`] registers with `pthread_atfork`: the check
/// on every call is then a load, not a `getpid` system call (glibc no longer caches the pid).
static FORKED: AtomicBool = AtomicBool::new(false);
/// The registration failed (out of memory): [`forked`] compares the pid instead.
static NO_ATFORK: AtomicBool = AtomicBool::new(false);

extern "C" fn in_fork_child() {
    FORKED.store(true, Ordering::Relaxed);
}

thread_local! {
    static ON_RUNTIME_THREAD: Cell<bool> = const { Cell::new(false) };
    /// A message went to the host since the runtime thread last parked: an answer from the
    /// host's thread is likely to follow.
    static REPLY_LIKELY: Cell<bool> = const { Cell::new(false) };
}

/// How long the runtime thread spins for a host's answer before it parks (0: never).
static SPIN_NS: AtomicU64 = AtomicU64::new(0);
/// True while the runtime thread spins before parking: a host's wake-up is then handed over
/// in [`DEFERRED`] instead of through tokio's remote schedule (an eventfd write).
static SPINNING: AtomicBool = AtomicBool::new(false);
static DEFERRED_ANY: AtomicBool = AtomicBool::new(false);
static DEFERRED: Mutex<Vec<Waker>> = Mutex::new(Vec::new());

/// Prototype knob (issue 9 §5): spin for up to `ns` before the runtime thread parks after it
/// delivered a message. Read from `HBWS_SPIN_NS` at start if not set here.
pub fn set_spin_ns(ns: u64) {
    SPIN_NS.store(ns, Ordering::Relaxed);
}

/// Called on the runtime thread when a message is handed to the host.
pub(crate) fn reply_likely() {
    REPLY_LIKELY.with(|c| c.set(true));
}

/// Wakes a client's task from a host thread: handed to the spinning runtime thread if it is
/// spinning (no system call), else tokio's own wake.
pub(crate) fn wake_task(w: Waker) {
    if !SPINNING.load(Ordering::SeqCst) {
        w.wake();
        return;
    }
    DEFERRED.lock().unwrap_or_else(|p| p.into_inner()).push(w);
    DEFERRED_ANY.store(true, Ordering::SeqCst);
    // The runtime thread may have stopped spinning and drained before our push: then whoever
    // drains next (here) wakes it.
    if !SPINNING.load(Ordering::SeqCst) {
        drain();
    }
}

fn drain() {
    let ws = {
        let mut g = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
        DEFERRED_ANY.store(false, Ordering::SeqCst);
        std::mem::take(&mut *g)
    };
    for w in ws {
        w.wake();
    }
}

thread_local! {
    /// Spins in a row that the host did not answer in time, and chances left to skip.
    static SPIN_MISSES: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// Called from `Client::send` on the runtime thread: the host answered from its callback.
pub(crate) fn replied_in_callback() {
    REPLY_LIKELY.with(|c| c.set(false));
}

/// tokio's `on_thread_park` hook (one-thread runtime): spins a short while for a host's answer.
/// Backs off after misses: a host that does not answer soon costs at most one spin in 2^k.
fn before_park() {
    let ns = SPIN_NS.load(Ordering::Relaxed);
    if ns == 0 || !REPLY_LIKELY.with(|c| c.replace(false)) {
        return;
    }
    let (misses, skip) = SPIN_MISSES.with(|c| c.get());
    if skip > 0 {
        SPIN_MISSES.with(|c| c.set((misses, skip - 1)));
        return;
    }
    SPINNING.store(true, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_nanos(ns);
    'spin: loop {
        for _ in 0..64 {
            if DEFERRED_ANY.load(Ordering::SeqCst) {
                break 'spin;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= until {
            break;
        }
    }
    SPINNING.store(false, Ordering::SeqCst);
    let answered = DEFERRED_ANY.load(Ordering::SeqCst);
    SPIN_MISSES.with(|c| {
        c.set(if answered {
            (0, 0)
        } else {
            let m = (misses + 1).min(6);
            (m, (1 << m) - 1)
        })
    });
    // Woken here, on the runtime thread: a local schedule, no system call.
    drain();
}

/// Sets the number of worker threads. Only before the runtime has started.
pub fn set_worker_threads(n: usize) -> Result<(), RuntimeError> {
    if GLOBAL.get().is_some() {
        return Err(RuntimeError::AlreadyStarted);
    }
    WORKER_THREADS.store(n.clamp(1, MAX_WORKER_THREADS), Ordering::SeqCst);
    // A start racing with this call may have won; report it rather than pretend.
    if GLOBAL.get().is_some() {
        return Err(RuntimeError::AlreadyStarted);
    }
    Ok(())
}

/// Whether the runtime has been started in this process (or its parent, before a fork).
pub fn started() -> bool {
    GLOBAL.get().is_some()
}

/// True in a `fork()` child of the process that started the runtime. (A child made by a raw
/// `fork` system call, which runs no atfork handler, is caught by the pid check of [`handle`],
/// that is at its next `hb_connect`.)
pub fn forked() -> bool {
    FORKED.load(Ordering::Relaxed)
        || (NO_ATFORK.load(Ordering::Relaxed)
            && GLOBAL.get().is_some_and(|g| g.pid != std::process::id()))
}

/// True on one of the runtime's own threads, that is: inside any hbws callback.
pub fn on_runtime_thread() -> bool {
    ON_RUNTIME_THREAD.with(|c| c.get())
}

/// A handle to the runtime, starting it on first use.
pub fn handle() -> Result<Handle, RuntimeError> {
    let g = GLOBAL.get_or_init(|| {
        // SAFETY: registers a handler that only stores to an atomic, which is
        // async-signal-safe, as a fork child handler must be.
        if unsafe { libc::pthread_atfork(None, None, Some(in_fork_child)) } != 0 {
            NO_ATFORK.store(true, Ordering::Relaxed);
        }
        Global {
            runtime: start(WORKER_THREADS.load(Ordering::SeqCst)),
            pid: std::process::id(),
        }
    });
    if FORKED.load(Ordering::Relaxed) || g.pid != std::process::id() {
        return Err(RuntimeError::Forked);
    }
    match &g.runtime {
        Ok((handle, _)) => Ok(handle.clone()),
        Err(e) => Err(RuntimeError::Start(e.clone())),
    }
}

/// Starts the runtime. One thread (the default): a current-thread runtime driven by a thread of
/// our own, which costs less per event than a one-worker multi-thread scheduler. More threads: a
/// multi-thread runtime.
fn start(threads: usize) -> Result<(Handle, Option<Runtime>), String> {
    if let Some(ns) = std::env::var("HBWS_SPIN_NS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        SPIN_NS.store(ns, Ordering::Relaxed);
    }
    // Spinning only pays where the host's thread can run meanwhile.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        SPIN_NS.store(0, Ordering::Relaxed);
    }
    let mut builder = if threads <= 1 {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.on_thread_park(before_park);
        b
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        // Name resolution runs on the blocking pool; keep it small and short-lived.
        .max_blocking_threads(4)
        .thread_keep_alive(Duration::from_secs(5))
        .thread_name("hbws")
        .on_thread_start(|| ON_RUNTIME_THREAD.with(|c| c.set(true)))
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let handle = rt.handle().clone();
    if threads > 1 {
        return Ok((handle, Some(rt)));
    }
    std::thread::Builder::new()
        .name("hbws".into())
        .spawn(move || {
            ON_RUNTIME_THREAD.with(|c| c.set(true));
            // Drives every client's task until the process exits.
            rt.block_on(std::future::pending::<()>());
        })
        .map_err(|e| e.to_string())?;
    Ok((handle, None))
}
