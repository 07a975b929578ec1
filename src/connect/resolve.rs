//! Name resolution that no slow name can hold up.
//!
//! The system resolver (`getaddrinfo`) blocks and cannot be cancelled. tokio's `lookup_host`
//! runs it on the runtime's small blocking pool, so a few lookups that hang fill the pool and
//! every other lookup of every client waits behind them. Here each lookup gets a thread of its
//! own, started for it and ended when `getaddrinfo` returns:
//!
//! - IP literals never get here (see [`super::open`]).
//! - Concurrent lookups of the same name and port share one thread and one answer, so a name
//!   that hangs costs one thread however many clients (or reconnect attempts) want it.
//! - The caller bounds its wait (the connect timeout) and then walks away; the thread is left to
//!   finish on its own, and its answer goes to whoever is still waiting.
//! - At most [`MAX_LOOKUPS`] lookup threads exist at once. Beyond that a new name fails at once
//!   with a message saying so, rather than waiting or starting yet another thread.
//!
//! docs/resolution.md states the thread budget for the README.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// A resolver in place of the system one: `(host, port)` to addresses. Runs on the lookup's own
/// thread and may block. For tests (a resolver that hangs on purpose); set through
/// `Config::resolver`.
pub type ResolveFn = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// A [`ResolveFn`] that can sit in a `Config`.
#[derive(Clone)]
pub struct ResolverHook(pub Arc<ResolveFn>);

impl ResolverHook {
    pub fn new(
        f: impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Self {
        ResolverHook(Arc::new(f))
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.0).cast::<()>() as usize
    }
}

impl fmt::Debug for ResolverHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResolverHook(..)")
    }
}

/// Most lookup threads alive at once, in the whole process.
pub const MAX_LOOKUPS: usize = 64;

/// A lookup's answer: the addresses, or why there are none.
type Answer = Result<Arc<[SocketAddr]>, String>;

#[derive(Clone, PartialEq, Eq)]
struct Key {
    host: Box<str>,
    port: u16,
    /// 0 for the system resolver, else the hook's address: answers of different resolvers are
    /// never shared.
    resolver: usize,
}

struct Running {
    key: Key,
    answer: watch::Receiver<Option<Answer>>,
    /// The process that started it.
    pid: u32,
}

/// The lookups in flight. A list, not a map: it holds at most `cap` entries.
pub(crate) struct Lookups {
    cap: usize,
    running: Mutex<Vec<Running>>,
}

/// The process's lookups.
static LOOKUPS: Lookups = Lookups::new(MAX_LOOKUPS);

/// Resolves `host:port` on a lookup thread; the caller bounds the wait (dropping the future
/// abandons the wait, not the thread). `Err` is a message naming the host.
pub async fn resolve(
    host: &str,
    port: u16,
    hook: Option<&ResolverHook>,
) -> Result<Arc<[SocketAddr]>, String> {
    LOOKUPS.resolve(host, port, hook).await
}

/// Lookup threads alive now (for tests and logs).
pub fn running() -> usize {
    LOOKUPS.len()
}

impl Lookups {
    pub(crate) const fn new(cap: usize) -> Lookups {
        Lookups {
            cap,
            running: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        // Nothing runs under the lock that can panic half-way; a poisoned list is still whole.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lookups in flight (those over are not counted).
    pub(crate) fn len(&self) -> usize {
        self.lock().iter().filter(|r| !r.is_over()).count()
    }

    pub(crate) async fn resolve(
        &'static self,
        host: &str,
        port: u16,
        hook: Option<&ResolverHook>,
    ) -> Result<Arc<[SocketAddr]>, String> {
        let mut rx = self.start(host, port, hook)?;
        let answer = match rx.wait_for(Option::is_some).await {
            Ok(a) => a.clone().expect("waited for Some"),
            Err(_) => Err("the lookup thread ended without an answer".into()),
        };
        match answer {
            Ok(addrs) if addrs.is_empty() => Err(format!("{host}: no addresses")),
            Ok(addrs) => Ok(addrs),
            Err(e) => Err(format!("{host}: {e}")),
        }
    }

    /// Joins the lookup of `host:port` in flight, or starts one.
    fn start(
        &'static self,
        host: &str,
        port: u16,
        hook: Option<&ResolverHook>,
    ) -> Result<watch::Receiver<Option<Answer>>, String> {
        let key = Key {
            host: host.into(),
            port,
            resolver: hook.map_or(0, ResolverHook::id),
        };
        let (tx, rx) = watch::channel(None);
        {
            let mut running = self.lock();
            let pid = std::process::id();
            // Entries of lookups that are over, or of a parent process (after fork() their
            // threads do not exist here), are gone.
            running.retain(|r| r.pid == pid && !r.is_over());
            if let Some(r) = running.iter().find(|r| r.key == key) {
                return Ok(r.answer.clone());
            }
            if running.len() >= self.cap {
                return Err(format!(
                    "{host}: not looked up: {} name lookups are already in progress, the most \
                     hbws runs at once (the system resolver seems to hang; each ends when it \
                     answers)",
                    running.len()
                ));
            }
            running.push(Running {
                key: key.clone(),
                answer: rx.clone(),
                pid,
            });
        }
        // Started outside the lock, so the lock is never held across a system call.
        let hook = hook.cloned();
        let leave = Leave {
            lookups: self,
            key,
            answer: rx.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("hbws-resolve".into())
            .spawn(move || {
                // Leaves the list however the lookup ends (a hook may panic).
                let leave = leave;
                let host = &*leave.key.host;
                let answer = match &hook {
                    Some(h) => (h.0)(host, port),
                    None => (host, port).to_socket_addrs().map(Iterator::collect),
                };
                // Nobody may be waiting any more: that is fine.
                let _ = tx.send(Some(
                    answer.map(Vec::into).map_err(|e: io::Error| e.to_string()),
                ));
            });
        // On failure the closure, and with it `leave`, is dropped: the entry goes.
        spawned.map_err(|e| format!("{host}: could not start a lookup thread: {e}"))?;
        Ok(rx)
    }
}

impl Running {
    /// Answered, or its thread ended without answering.
    fn is_over(&self) -> bool {
        self.answer.borrow().is_some() || self.answer.has_changed().is_err()
    }
}

/// Removes its lookup's entry when dropped (by the lookup thread, at its end).
struct Leave {
    lookups: &'static Lookups,
    key: Key,
    answer: watch::Receiver<Option<Answer>>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut running = self.lookups.lock();
        if let Some(i) = running
            .iter()
            .position(|r| r.key == self.key && r.answer.same_channel(&self.answer))
        {
            running.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::mpsc;
    use std::time::Duration;

    fn leak(cap: usize) -> &'static Lookups {
        Box::leak(Box::new(Lookups::new(cap)))
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A resolver that blocks each lookup until the test lets it go, and counts calls.
    fn gated() -> (ResolverHook, Arc<AtomicUsize>, mpsc::Sender<()>) {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let hook = ResolverHook::new(move |host, port| {
            c.fetch_add(1, SeqCst);
            if host.starts_with("hang") {
                let _ = go_rx.lock().unwrap().recv();
            }
            if host.starts_with("fail") {
                return Err(io::Error::other("no such name"));
            }
            if host.starts_with("empty") {
                return Ok(Vec::new());
            }
            Ok(vec![addr(port)])
        });
        (hook, calls, go_tx)
    }

    #[tokio::test]
    async fn answers_errors_and_empty_answers_name_the_host() {
        let l = leak(4);
        let (hook, _, _go) = gated();
        assert_eq!(
            &*l.resolve("ok.test", 7, Some(&hook)).await.unwrap(),
            &[addr(7)]
        );
        let e = l.resolve("fail.test", 7, Some(&hook)).await.unwrap_err();
        assert!(e.contains("fail.test") && e.contains("no such name"), "{e}");
        let e = l.resolve("empty.test", 7, Some(&hook)).await.unwrap_err();
        assert!(e.contains("empty.test: no addresses"), "{e}");
        // Threads leave the list when they end.
        let t0 = std::time::Instant::now();
        while l.len() != 0 {
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::yield_now();
        }
    }

    #[tokio::test]
    async fn a_hanging_name_delays_no_other_and_is_looked_up_once() {
        let l = leak(8);
        let (hook, calls, go) = gated();
        // Many waiters on one hanging name share one thread.
        let mut waits = Vec::new();
        for _ in 0..5 {
            let h = hook.clone();
            waits.push(tokio::spawn(async move {
                l.resolve("hang.test", 1, Some(&h)).await
            }));
        }
        let t0 = std::time::Instant::now();
        while calls.load(SeqCst) == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::task::yield_now().await;
        }
        // Another name answers at once meanwhile.
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            l.resolve("ok.test", 2, Some(&hook)),
        )
        .await
        .expect("another name was held up");
        assert_eq!(&*got.unwrap(), &[addr(2)]);
        // The answered lookup's thread leaves the list just after it answers.
        let t0 = std::time::Instant::now();
        while l.len() != 1 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} lookups left",
                l.len()
            );
            tokio::task::yield_now().await;
        }
        // A waiter that gives up leaves the thread running; a later one joins it.
        let joined = tokio::time::timeout(
            Duration::from_millis(50),
            l.resolve("hang.test", 1, Some(&hook)),
        )
        .await;
        assert!(joined.is_err());
        go.send(()).unwrap();
        for w in waits {
            assert_eq!(&*w.await.unwrap().unwrap(), &[addr(1)]);
        }
        assert_eq!(calls.load(SeqCst), 2, "hang.test once, ok.test once");
    }

    #[tokio::test]
    async fn beyond_the_cap_a_new_name_fails_at_once() {
        let l = leak(2);
        let (hook, calls, go) = gated();
        let mut waits = Vec::new();
        for name in ["hang1.test", "hang2.test"] {
            let h = hook.clone();
            waits.push(tokio::spawn(
                async move { l.resolve(name, 1, Some(&h)).await },
            ));
        }
        let t0 = std::time::Instant::now();
        while calls.load(SeqCst) < 2 {
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::task::yield_now().await;
        }
        let e = l.resolve("ok.test", 1, Some(&hook)).await.unwrap_err();
        assert!(
            e.contains("ok.test") && e.contains("2 name lookups are already in progress"),
            "{e}"
        );
        // A name already in flight can still be joined (joined here before it is let go).
        let mut joined = l.start("hang1.test", 1, Some(&hook)).unwrap();
        go.send(()).unwrap();
        go.send(()).unwrap();
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let answer = joined.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(&*answer.unwrap().unwrap(), &[addr(1)]);
        assert_eq!(calls.load(SeqCst), 2, "hang1 and hang2 looked up once each");
        // Once they are done, new names resolve again.
        let t0 = std::time::Instant::now();
        while l.len() != 0 {
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::task::yield_now().await;
        }
        l.resolve("ok.test", 1, Some(&hook)).await.unwrap();
    }

    #[tokio::test]
    async fn a_panicking_resolver_is_an_error_not_a_hang() {
        let l = leak(2);
        let hook = ResolverHook::new(|_, _| panic!("resolver bug"));
        let e = tokio::time::timeout(Duration::from_secs(10), l.resolve("x.test", 1, Some(&hook)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.contains("without an answer"), "{e}");
    }

    #[tokio::test]
    async fn the_system_resolver_answers_localhost() {
        let addrs = resolve("localhost", 9, None).await.unwrap();
        assert!(
            addrs.iter().all(|a| a.port() == 9 && a.ip().is_loopback()),
            "{addrs:?}"
        );
    }
}
