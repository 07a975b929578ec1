//! The one private tokio runtime of the process.
//!
//! Started lazily by the first client, with 1 worker thread unless [`set_worker_threads`] said
//! otherwise before that. It installs no signal handlers and no logger. [`shutdown`] stops it;
//! the next client then starts a fresh one.
//!
//! A runtime does not survive `fork()`: in a child the parent's runtime is left alone (leaked,
//! never dropped: its threads do not exist there and its locks may be held), the parent's
//! clients answer `HB_ERR_FORKED`, and the child's first client starts a runtime of its own.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

/// Why the runtime cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeError {
    /// This process is a `fork()` child and the object belongs to its parent.
    Forked,
    /// The OS refused to start the runtime's threads.
    Start(String),
    /// A setting that must come before the first client came after it.
    AlreadyStarted,
}

/// Who keeps the runtime going, and how to stop it.
enum Owner {
    /// A one-thread runtime lives on its own driver thread; it stops when told and says so.
    Driver {
        stop: oneshot::Sender<Duration>,
        stopped: std::sync::mpsc::Receiver<()>,
        thread: std::thread::JoinHandle<()>,
    },
    /// A multi-thread runtime is kept here.
    Multi(Runtime),
}

struct Instance {
    handle: Handle,
    owner: Owner,
    /// The [`fork_generation`] it was started in.
    generation: u64,
}

/// The running runtime, if any. Locked only to start or stop one (once per client, not per
/// message), and across `fork()` (see [`in_fork_prepare`]).
static CURRENT: Mutex<Option<Instance>> = Mutex::new(None);
static WORKER_THREADS: AtomicUsize = AtomicUsize::new(1);
/// The most worker threads one may ask for.
pub const MAX_WORKER_THREADS: usize = 64;

/// Bumped in a `fork()` child by the handler registered with `pthread_atfork`: every object
/// remembers the generation it was made in, and one from another generation belongs to a parent.
/// (A load per call, not a `getpid` system call: glibc no longer caches the pid.)
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
/// The registration failed (out of memory): [`fork_generation`] is the pid instead.
static NO_ATFORK: AtomicBool = AtomicBool::new(false);
static ATFORK: Once = Once::new();

thread_local! {
    static ON_RUNTIME_THREAD: Cell<bool> = const { Cell::new(false) };
    /// The locks [`in_fork_prepare`] took, released after the fork on the same thread.
    static FORK_GUARD: Cell<Option<MutexGuard<'static, Option<Instance>>>> = const { Cell::new(None) };
}

fn current() -> MutexGuard<'static, Option<Instance>> {
    CURRENT.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn in_fork_prepare() {
    FORK_GUARD.with(|g| g.set(Some(current())));
}

extern "C" fn in_fork_parent() {
    FORK_GUARD.with(|g| drop(g.take()));
}

extern "C" fn in_fork_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
    // The forking thread is the child's only thread, and no runtime thread there.
    ON_RUNTIME_THREAD.with(|c| c.set(false));
    FORK_GUARD.with(|g| drop(g.take()));
}

fn register_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: the handlers lock and unlock a mutex on the forking thread (the prepare
        // handler runs before the fork, in an ordinary context) and, in the child, store to an
        // atomic and a thread-local: nothing that allocates or waits.
        let r = unsafe {
            libc::pthread_atfork(
                Some(in_fork_prepare),
                Some(in_fork_parent),
                Some(in_fork_child),
            )
        };
        if r != 0 {
            NO_ATFORK.store(true, Ordering::SeqCst);
        }
    });
}

/// Which `fork()` generation this process is: changes in a child. Objects made in another
/// generation belong to a parent process and must not be touched.
pub fn fork_generation() -> u64 {
    if NO_ATFORK.load(Ordering::Relaxed) {
        u64::from(std::process::id())
    } else {
        FORK_GENERATION.load(Ordering::Relaxed)
    }
}

/// Sets the number of worker threads. Only while no runtime runs (before the first client, or
/// after [`shutdown`]).
pub fn set_worker_threads(n: usize) -> Result<(), RuntimeError> {
    let g = current();
    if g.as_ref()
        .is_some_and(|i| i.generation == fork_generation())
    {
        return Err(RuntimeError::AlreadyStarted);
    }
    WORKER_THREADS.store(n.clamp(1, MAX_WORKER_THREADS), Ordering::SeqCst);
    Ok(())
}

/// Whether a runtime of this process is running.
pub fn started() -> bool {
    current()
        .as_ref()
        .is_some_and(|i| i.generation == fork_generation())
}

/// True on one of the runtime's own threads, that is: inside any hbws callback.
pub fn on_runtime_thread() -> bool {
    ON_RUNTIME_THREAD.with(|c| c.get())
}

/// A handle to the runtime, starting it on first use (and after [`shutdown`], and in a `fork()`
/// child, whose parent's runtime is leaked, never dropped).
pub fn handle() -> Result<Handle, RuntimeError> {
    register_atfork();
    let mut g = current();
    let generation = fork_generation();
    if let Some(i) = g.as_ref() {
        if i.generation == generation {
            return Ok(i.handle.clone());
        }
        // A parent's: its threads do not exist here. Dropping it would join them.
        std::mem::forget(g.take());
    }
    let i =
        start(WORKER_THREADS.load(Ordering::SeqCst), generation).map_err(RuntimeError::Start)?;
    let h = i.handle.clone();
    *g = Some(i);
    Ok(h)
}

/// Waits until no task is left on this process's runtime (every client's task has ended), for
/// at most `timeout` or until `give_up()`; true if none is left (or no runtime runs). Polls every
/// millisecond: only [`shutdown`]'s callers use it.
pub fn wait_idle(timeout: Duration, give_up: impl Fn() -> bool) -> bool {
    let handle = match current().as_ref() {
        Some(i) if i.generation == fork_generation() => i.handle.clone(),
        _ => return true,
    };
    let deadline = Instant::now() + timeout;
    loop {
        if handle.metrics().num_alive_tasks() == 0 {
            return true;
        }
        if Instant::now() >= deadline || give_up() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Stops this process's runtime, if one runs: every task still on it is dropped (a client's task
/// then ends at once and releases its callbacks), and its threads exit. Waits at most `timeout`
/// for that; returns false if the threads had not stopped by then (a callback still running, or
/// a name lookup in progress on the blocking pool: they finish on their own, then exit).
/// Must not be called on a runtime thread.
pub fn shutdown(timeout: Duration) -> bool {
    let taken = {
        let mut g = current();
        match g.take() {
            Some(i) if i.generation == fork_generation() => i,
            Some(parents) => {
                std::mem::forget(parents);
                return true;
            }
            None => return true,
        }
    };
    match taken.owner {
        Owner::Driver {
            stop,
            stopped,
            thread,
        } => {
            let deadline = Instant::now() + timeout;
            if stop.send(timeout).is_err() {
                // The driver is gone already (it only ends when told to).
                return thread.join().is_ok();
            }
            match stopped.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    thread.join().is_ok()
                }
                // Left to finish on its own (dropping the JoinHandle detaches it).
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => false,
            }
        }
        Owner::Multi(rt) => {
            if Handle::try_current().is_ok() {
                // Inside some other runtime's context (a Rust host): a blocking shutdown would
                // panic there.
                rt.shutdown_background();
                false
            } else {
                rt.shutdown_timeout(timeout);
                true
            }
        }
    }
}

/// Starts a runtime. One thread (the default): a current-thread runtime driven by a thread of
/// our own, which costs less per event than a one-worker multi-thread scheduler. More threads: a
/// multi-thread runtime.
fn start(threads: usize, generation: u64) -> Result<Instance, String> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder
        // Nothing of ours runs on the blocking pool (name lookups have threads of their own,
        // connect/resolve.rs); keep it small and short-lived.
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
        return Ok(Instance {
            handle,
            owner: Owner::Multi(rt),
            generation,
        });
    }
    let (stop, stop_rx) = oneshot::channel::<Duration>();
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("hbws".into())
        .spawn(move || {
            ON_RUNTIME_THREAD.with(|c| c.set(true));
            // Drives every client's task until told to stop.
            let grace = rt.block_on(stop_rx).unwrap_or(Duration::ZERO);
            // Drops what is left (each client's task releases its callbacks) and waits for the
            // blocking pool, here, outside any async context.
            rt.shutdown_timeout(grace);
            let _ = stopped_tx.send(());
        })
        .map_err(|e| e.to_string())?;
    Ok(Instance {
        handle,
        owner: Owner::Driver {
            stop,
            stopped,
            thread,
        },
        generation,
    })
}
