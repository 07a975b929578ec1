//! Shared helpers of the hbws benchmark binaries: /proc sampling, percentiles, a latency
//! histogram that does not allocate, and a separately spawned reference server.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A field of /proc/self/status in KiB (e.g. "VmRSS:").
pub fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Context switches (voluntary + involuntary) of every thread of this process except
/// `skip_tid` (normally the main thread, which only sleeps in the measurement window).
pub fn ctx_switches(skip_tid: Option<u32>) -> u64 {
    let mut total = 0;
    if let Ok(d) = std::fs::read_dir("/proc/self/task") {
        for e in d.flatten() {
            let tid: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
            if Some(tid) == skip_tid {
                continue;
            }
            let s = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            for l in s.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    total += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    total
}

/// User + system CPU time of this process, in seconds (clock ticks of 1/100 s).
pub fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / 100.0
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Latency histogram of 200,000 buckets of the caller's unit (1 µs for heartbeat RTTs, 0.1 µs for
/// echo round trips); static, no allocation while recording.
pub struct Hist {
    b: [AtomicU64; Hist::N],
}

impl Hist {
    pub const N: usize = 200_000;
    #[allow(clippy::declare_interior_mutable_const)]
    pub const fn new() -> Hist {
        const Z: AtomicU64 = AtomicU64::new(0);
        Hist { b: [Z; Hist::N] }
    }
    pub fn record(&self, us: u64) {
        self.b[(us as usize).min(Self::N - 1)].fetch_add(1, Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.b.iter().map(|x| x.load(Relaxed)).sum()
    }
    pub fn percentile(&self, p: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let want = ((n as f64 - 1.0) * p).round() as u64 + 1;
        let mut acc = 0;
        for (i, x) in self.b.iter().enumerate() {
            acc += x.load(Relaxed);
            if acc >= want {
                return i as u64;
            }
        }
        Self::N as u64 - 1
    }
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

/// The lean reference server (`bench-server`) running as a separate process, controlled
/// through its stdin ("silent", "rst", "fin", "quit").
pub struct SpawnedServer {
    pub child: Child,
    stdin: ChildStdin,
    pub port: u16,
}

impl SpawnedServer {
    /// `port` 0: OS-chosen. `args`: extra bench-server flags.
    pub fn start(port: u16, args: &[&str]) -> SpawnedServer {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().join("bench-server");
        // Binding the same port right after a kill can race with the old socket's teardown.
        for _ in 0..100 {
            let mut child = Command::new(&bin)
                .arg("--port")
                .arg(port.to_string())
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn bench-server");
            let mut line = String::new();
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let _ = out.read_line(&mut line);
            if let Some(p) = line.trim().strip_prefix("PORT ") {
                let port = p.parse().unwrap();
                let stdin = child.stdin.take().unwrap();
                // Keep draining stdout (nothing more is printed, but do not block the child).
                std::thread::spawn(move || for _ in out.lines() {});
                return SpawnedServer { child, stdin, port };
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("bench-server did not start on port {port}");
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    pub fn cmd(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// SIGKILL: the kernel closes every socket of the process at once.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Monotonic nanoseconds since the first call (process-local epoch).
pub fn now_ns() -> u64 {
    use std::sync::OnceLock;
    static T0: OnceLock<std::time::Instant> = OnceLock::new();
    T0.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

/// `hb_connect` with no error buffer, asserting it succeeded: the handle.
pub fn connect(
    url: &std::ffi::CStr,
    cfg: *const hbws::ffi::hb_config,
    cb: &hbws::ffi::hb_callbacks,
    user_data: *mut std::ffi::c_void,
) -> *mut hbws::ffi::hb_client {
    let mut h = std::ptr::null_mut();
    let st = hbws::ffi::hb_connect(
        url.as_ptr(),
        cfg,
        cb,
        user_data,
        &mut h,
        std::ptr::null_mut(),
        0,
    );
    assert_eq!(st, hbws::ffi::hb_status::HB_OK, "hb_connect failed");
    h
}
