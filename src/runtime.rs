//! The one private tokio runtime of the process.
//!
//! Started lazily by the first client, with 1 worker thread unless [`set_worker_threads`] said
//! otherwise before that. It installs no signal handlers and no logger. A runtime does not
//! survive `fork()`: the child sees [`RuntimeError::Forked`] from every call instead of a hang.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

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
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
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
