//! Client configuration: every tunable with its default, and the validation of the whole.
//!
//! The C API exposes this through `hb_config_*` setters (one function per option, so the ABI grows
//! by adding functions). Defaults are chosen for phones: one ping every 30 s, small buffers.

use std::time::Duration;

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
    /// Floor under every reconnect delay, so no two attempts are ever back to back.
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
    /// Extra HTTP headers sent with the upgrade request (name, value).
    pub headers: Vec<(String, String)>,
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
}

impl Config {
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
        if self.backoff_min > self.backoff_cap {
            return Err("backoff_min must not exceed backoff_cap".into());
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
}
