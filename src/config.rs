//! Client configuration: every tunable with its default, and the validation of the whole.
//!
//! The C API exposes this through `hb_config_*` setters (one function per option, so the ABI grows
//! by adding functions). Defaults are chosen for phones: one ping every 30 s, small buffers.

use std::time::Duration;

pub use crate::connect::ResolverHook;

/// What proves the link alive while a heartbeat ping is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Only the pong (text `pong`, or a protocol Pong in protocol mode) answers a ping.
    PongOnly,
    /// Any inbound frame (data, ping, pong) answers an outstanding ping.
    AnyInbound,
}

/// How the client's own heartbeat ping is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// A text message (`ping_text`), answered by a text `pong_text`.
    Text,
    /// An RFC 6455 Ping control frame; a Pong frame or a text `pong_text` answers it.
    Protocol,
}

/// Log verbosity for the log callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum LogLevel {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

/// The configuration of one client. `Config::default()` is what `hb_config_new` returns.
#[derive(Clone, Debug)]
pub struct Config {
    // Heartbeat.
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub max_missed: u32,
    pub reprobe: bool,
    pub ping_text: String,
    pub pong_text: String,
    pub liveness: Liveness,
    pub heartbeat_mode: HeartbeatMode,
    /// Deliver heartbeat texts (`ping`/`pong`) to the message callback as well.
    pub deliver_heartbeats: bool,
    // Reconnection.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub backoff_jitter: bool,
    /// Floor under every reconnect delay, so no two attempts are ever back to back: at least
    /// [`limits::MIN_BACKOFF`] (5 ms); above `backoff_cap` it wins.
    pub backoff_min: Duration,
    /// Reconnect attempts in a row without a proven connection before giving up; 0 = never.
    pub max_attempts: u32,
    /// A connection that stays open this long counts as proven, pong or not; zero = pong only.
    pub stable_after: Duration,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    /// HTTP statuses of a refused handshake that stop reconnection.
    pub fatal_http_statuses: Vec<u16>,
    /// Close codes from the server that stop reconnection.
    pub fatal_close_codes: Vec<u16>,
    // Messages and buffers.
    pub max_message_size: usize,
    /// Most bytes asked for per read from the socket (a larger frame is read straight into
    /// place). Up to 16 KiB, reads go through the stack and nothing is kept between them.
    pub read_buffer_size: usize,
    /// Bytes batched before a write; 0 writes each frame at once.
    pub write_buffer_size: usize,
    /// Bound on messages accepted while OPEN and not yet written.
    pub send_queue_messages: usize,
    pub send_queue_bytes: usize,
    /// Bound on the queue while not OPEN; 0 messages disables offline queueing.
    pub offline_queue_messages: usize,
    pub offline_queue_bytes: usize,
    pub log_level: LogLevel,
    /// Extra HTTP headers sent with the upgrade request (name, value). Add them with
    /// [`Config::add_header`], which checks each; [`Config::validate`] checks them again.
    pub headers: Vec<(String, String)>,
    /// Subprotocols offered in `Sec-WebSocket-Protocol`, in order of preference; empty offers
    /// none. The server must choose one of them or none.
    pub subprotocols: Vec<String>,
    /// Longest wait a server's `Retry-After` can impose before the next attempt (seconds or
    /// HTTP-date); zero ignores Retry-After. Independent of `backoff_cap`.
    pub retry_after_max: Duration,
    /// Test hook: resolves names in place of the system resolver (on the lookup's own thread).
    #[doc(hidden)]
    pub resolver: Option<ResolverHook>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            max_missed: 3,
            reprobe: true,
            ping_text: "ping".into(),
            pong_text: "pong".into(),
            liveness: Liveness::PongOnly,
            heartbeat_mode: HeartbeatMode::Text,
            deliver_heartbeats: false,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
            backoff_jitter: true,
            backoff_min: Duration::from_millis(50),
            max_attempts: 0,
            stable_after: Duration::ZERO,
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            fatal_http_statuses: vec![400, 401, 403, 404, 426],
            fatal_close_codes: vec![1002, 1003, 1007, 1008, 1010],
            max_message_size: 1 << 20,
            // Read through the stack, so it costs an idle connection nothing; a frame larger
            // than it is read straight into a buffer that grows as the frame arrives.
            read_buffer_size: 4096,
            write_buffer_size: 0,
            send_queue_messages: 1024,
            send_queue_bytes: 4 << 20,
            offline_queue_messages: 256,
            offline_queue_bytes: 1 << 20,
            log_level: LogLevel::Info,
            headers: Vec::new(),
            subprotocols: Vec::new(),
            retry_after_max: Duration::from_secs(3600),
            resolver: None,
        }
    }
}

/// Limits shared by the setters and [`Config::validate`].
pub mod limits {
    use std::time::Duration;
    pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
    pub const MAX_MISSED: u32 = 1000;
    pub const MIN_BUFFER: usize = 256;
    pub const MAX_BUFFER: usize = 16 << 20;
    pub const MAX_MESSAGE: usize = 1 << 30;
    pub const MAX_HEARTBEAT_TEXT: usize = 1024;
    /// Floor under `backoff_min`: no two attempts ever closer than this.
    pub const MIN_BACKOFF: Duration = Duration::from_millis(5);
    /// Extra upgrade headers: at most this many, and this many bytes in all (`name: value\r\n`).
    pub const MAX_EXTRA_HEADERS: usize = 64;
    pub const MAX_EXTRA_HEADER_BYTES: usize = 8192;
    /// Subprotocols offered: at most this many, each at most this long.
    pub const MAX_SUBPROTOCOLS: usize = 32;
    pub const MAX_SUBPROTOCOL_LEN: usize = 256;
}

/// Headers the handshake sets itself (or that make no sense on an upgrade request), refused by
/// [`Config::add_header`], compared without case.
pub const RESERVED_HEADERS: &[&str] = &[
    "Host",
    "Upgrade",
    "Connection",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Accept",
    "Sec-WebSocket-Protocol",
    "Content-Length",
    "Transfer-Encoding",
];

/// An RFC 7230 token character (header names, subprotocol names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks one extra header on its own (not the totals).
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name is empty".into());
    }
    if let Some(b) = name.bytes().find(|&b| !is_tchar(b)) {
        return Err(format!(
            "header name {:?} has a character not allowed in an HTTP token ({:?})",
            name,
            char::from(b)
        ));
    }
    if let Some(r) = RESERVED_HEADERS
        .iter()
        .find(|r| name.eq_ignore_ascii_case(r))
    {
        let hint = if r.eq_ignore_ascii_case("Sec-WebSocket-Protocol") {
            " (offer subprotocols with hb_config_add_subprotocol)"
        } else {
            ""
        };
        return Err(format!(
            "header {r} is set by the handshake itself and cannot be added{hint}"
        ));
    }
    // The value is not quoted back: it may be a secret (Authorization).
    if let Some(i) = value
        .bytes()
        .position(|b| b.is_ascii_control() && b != b'\t')
    {
        return Err(format!(
            "value of header {name} has a control character (CR, LF, NUL, ...) at byte {i}"
        ));
    }
    Ok(())
}

/// Checks one subprotocol name (an RFC 7230 token, RFC 6455 section 4.1).
pub fn check_subprotocol(name: &str) -> Result<(), String> {
    use limits::MAX_SUBPROTOCOL_LEN;
    if name.is_empty() || name.len() > MAX_SUBPROTOCOL_LEN {
        return Err(format!(
            "subprotocol name must be 1..={MAX_SUBPROTOCOL_LEN} bytes, got {}",
            name.len()
        ));
    }
    if let Some(b) = name.bytes().find(|&b| !is_tchar(b)) {
        return Err(format!(
            "subprotocol name {:?} has a character not allowed in an HTTP token ({:?})",
            name,
            char::from(b)
        ));
    }
    Ok(())
}

impl Config {
    /// Adds an extra upgrade-request header after checking it: an RFC 7230 token as name, not
    /// one of [`RESERVED_HEADERS`], a value without control characters, and the totals within
    /// [`limits::MAX_EXTRA_HEADERS`] and [`limits::MAX_EXTRA_HEADER_BYTES`]. On error nothing
    /// changes.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        check_header(name, value)?;
        self.headers.push((name.to_owned(), value.to_owned()));
        if let Err(e) = self.check_header_totals() {
            self.headers.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Adds a subprotocol to the offer, after the ones already there. Refuses a name that is not
    /// a token, one already offered, and more than [`limits::MAX_SUBPROTOCOLS`].
    pub fn add_subprotocol(&mut self, name: &str) -> Result<(), String> {
        check_subprotocol(name)?;
        if self.subprotocols.iter().any(|p| p == name) {
            return Err(format!("subprotocol {name} is already offered"));
        }
        if self.subprotocols.len() >= limits::MAX_SUBPROTOCOLS {
            return Err(format!(
                "at most {} subprotocols can be offered",
                limits::MAX_SUBPROTOCOLS
            ));
        }
        self.subprotocols.push(name.to_owned());
        Ok(())
    }

    fn check_header_totals(&self) -> Result<(), String> {
        use limits::{MAX_EXTRA_HEADERS, MAX_EXTRA_HEADER_BYTES};
        if self.headers.len() > MAX_EXTRA_HEADERS {
            return Err(format!(
                "at most {MAX_EXTRA_HEADERS} extra headers can be added"
            ));
        }
        let bytes: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum();
        if bytes > MAX_EXTRA_HEADER_BYTES {
            return Err(format!(
                "extra headers would take {bytes} bytes; at most {MAX_EXTRA_HEADER_BYTES} in all (\"name: value\\r\\n\" each)"
            ));
        }
        Ok(())
    }

    /// Checks the options against each other. Single options are range-checked by their setters;
    /// this repeats those checks so a `Config` built in Rust gets the same treatment.
    pub fn validate(&self) -> Result<(), String> {
        use limits::*;
        let dur = |name: &str, d: Duration| -> Result<(), String> {
            if d.is_zero() || d > MAX_DURATION {
                Err(format!("{name} must be between 1 ms and 24 h, got {d:?}"))
            } else {
                Ok(())
            }
        };
        dur("ping_interval", self.ping_interval)?;
        dur("pong_timeout", self.pong_timeout)?;
        dur("backoff_base", self.backoff_base)?;
        dur("backoff_cap", self.backoff_cap)?;
        dur("connect_timeout", self.connect_timeout)?;
        dur("close_timeout", self.close_timeout)?;
        if self.pong_timeout > self.ping_interval {
            return Err(format!(
                "pong_timeout ({:?}) must not exceed ping_interval ({:?})",
                self.pong_timeout, self.ping_interval
            ));
        }
        if self.max_missed == 0 || self.max_missed > MAX_MISSED {
            return Err(format!(
                "max_missed must be 1..={MAX_MISSED}, got {}",
                self.max_missed
            ));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(format!(
                "backoff_cap ({:?}) must be at least backoff_base ({:?})",
                self.backoff_cap, self.backoff_base
            ));
        }
        if self.backoff_min < MIN_BACKOFF {
            return Err(format!(
                "backoff_min must be at least {MIN_BACKOFF:?}, got {:?}",
                self.backoff_min
            ));
        }
        // backoff_min above backoff_cap is allowed: the floor wins (backoff(1, 1) waits
        // backoff_min between attempts, never a tight loop).
        if self.backoff_min > MAX_DURATION {
            return Err(format!(
                "backoff_min must be at most 24 h, got {:?}",
                self.backoff_min
            ));
        }
        if self.retry_after_max > MAX_DURATION {
            return Err(format!(
                "retry_after_max must be at most 24 h, got {:?}",
                self.retry_after_max
            ));
        }
        for (name, value) in &self.headers {
            check_header(name, value)?;
        }
        self.check_header_totals()?;
        for (i, p) in self.subprotocols.iter().enumerate() {
            check_subprotocol(p)?;
            if self.subprotocols[..i].contains(p) {
                return Err(format!("subprotocol {p} is offered twice"));
            }
        }
        if self.subprotocols.len() > MAX_SUBPROTOCOLS {
            return Err(format!(
                "at most {MAX_SUBPROTOCOLS} subprotocols can be offered"
            ));
        }
        for (name, t) in [
            ("ping_text", &self.ping_text),
            ("pong_text", &self.pong_text),
        ] {
            if t.is_empty() || t.len() > MAX_HEARTBEAT_TEXT {
                return Err(format!("{name} must be 1..={MAX_HEARTBEAT_TEXT} bytes"));
            }
        }
        if self.ping_text == self.pong_text {
            return Err("ping_text and pong_text must differ".into());
        }
        if self.max_message_size == 0 || self.max_message_size > MAX_MESSAGE {
            return Err(format!("max_message_size must be 1..={MAX_MESSAGE}"));
        }
        if !(MIN_BUFFER..=MAX_BUFFER).contains(&self.read_buffer_size) {
            return Err(format!(
                "read_buffer_size must be {MIN_BUFFER}..={MAX_BUFFER}"
            ));
        }
        if self.write_buffer_size > MAX_BUFFER {
            return Err(format!("write_buffer_size must be 0..={MAX_BUFFER}"));
        }
        if self.send_queue_messages == 0 || self.send_queue_bytes == 0 {
            return Err("send queue bounds must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_phone_friendly() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.pong_timeout, Duration::from_secs(10));
        assert_eq!(c.max_missed, 3);
        assert!(c.read_buffer_size <= 4096);
    }

    #[test]
    fn cross_field_errors_are_reported() {
        let c = Config {
            pong_timeout: Duration::from_secs(31),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("pong_timeout"));
        let c = Config {
            backoff_cap: Duration::from_millis(10),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("backoff_cap"));
        let c = Config {
            pong_text: "ping".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn backoff_min_has_a_floor() {
        let c = Config {
            backoff_min: Duration::from_millis(4),
            ..Config::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.contains("backoff_min must be at least 5ms"), "{e}");
        let c = Config {
            backoff_min: Duration::ZERO,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            backoff_min: limits::MIN_BACKOFF,
            ..Config::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn reserved_and_malformed_headers_are_refused_with_reasons() {
        let mut c = Config::default();
        for name in [
            "Host",
            "UPGRADE",
            "connection",
            "Sec-WebSocket-Key",
            "sec-websocket-version",
            "Sec-WebSocket-Extensions",
            "SEC-WEBSOCKET-ACCEPT",
            "Content-Length",
            "transfer-encoding",
        ] {
            let e = c.add_header(name, "x").unwrap_err();
            assert!(e.contains("set by the handshake itself"), "{name}: {e}");
        }
        let e = c.add_header("sec-websocket-protocol", "chat").unwrap_err();
        assert!(e.contains("hb_config_add_subprotocol"), "{e}");
        assert!(c.add_header("", "x").unwrap_err().contains("empty"));
        assert!(c.add_header("Bad Name", "x").unwrap_err().contains("token"));
        assert!(c.add_header("X:Y", "x").unwrap_err().contains("token"));
        for v in ["a\r\nX-Injected: 1", "a\nb", "a\0b", "\x7f"] {
            let e = c.add_header("X-Ok", v).unwrap_err();
            assert!(e.contains("control character"), "{v:?}: {e}");
            assert!(!e.contains("Injected"), "the value is not echoed: {e}");
        }
        assert!(c.headers.is_empty(), "nothing refused was added");
        c.add_header("Authorization", "Bearer t\tx ü").unwrap();
        c.add_header("X-Ok", "").unwrap();
        assert_eq!(c.headers.len(), 2);
        c.validate().unwrap();
        // A header slipped in past add_header is caught by validate.
        let bad = Config {
            headers: vec![("Host".into(), "evil".into())],
            ..Config::default()
        };
        assert!(bad.validate().unwrap_err().contains("Host"));
    }

    #[test]
    fn extra_headers_are_capped_in_count_and_size() {
        let mut c = Config::default();
        for i in 0..limits::MAX_EXTRA_HEADERS {
            c.add_header(&format!("X-{i}"), "v").unwrap();
        }
        let e = c.add_header("X-One-More", "v").unwrap_err();
        assert!(e.contains("at most 64 extra headers"), "{e}");
        assert_eq!(c.headers.len(), limits::MAX_EXTRA_HEADERS);
        let mut c = Config::default();
        c.add_header("X-Big", &"v".repeat(8000)).unwrap();
        let e = c.add_header("X-More", &"v".repeat(500)).unwrap_err();
        assert!(e.contains("at most 8192"), "{e}");
        assert_eq!(c.headers.len(), 1);
        let e = Config::default()
            .add_header("X-Huge", &"v".repeat(8200))
            .unwrap_err();
        assert!(e.contains("8192"), "{e}");
    }

    #[test]
    fn subprotocols_are_tokens_offered_once() {
        let mut c = Config::default();
        c.add_subprotocol("chat.v2").unwrap();
        c.add_subprotocol("chat.v1").unwrap();
        assert!(c
            .add_subprotocol("chat.v2")
            .unwrap_err()
            .contains("already offered"));
        assert!(c.add_subprotocol("a,b").unwrap_err().contains("token"));
        assert!(c.add_subprotocol("a b").unwrap_err().contains("token"));
        assert!(c.add_subprotocol("").unwrap_err().contains("1..=256"));
        assert!(c.add_subprotocol(&"p".repeat(257)).is_err());
        assert_eq!(c.subprotocols, ["chat.v2", "chat.v1"]);
        c.validate().unwrap();
        for i in 2..limits::MAX_SUBPROTOCOLS {
            c.add_subprotocol(&format!("p{i}")).unwrap();
        }
        assert!(c
            .add_subprotocol("last")
            .unwrap_err()
            .contains("at most 32"));
        let twice = Config {
            subprotocols: vec!["a".into(), "a".into()],
            ..Config::default()
        };
        assert!(twice.validate().unwrap_err().contains("twice"));
    }
}
