//! hbws: a WebSocket client that keeps itself alive, with a C ABI.
//!
//! The safe core has no raw pointers: the pure rules ([`heartbeat`], [`backoff`]), the framing
//! ([`wire`]), the connection set-up ([`connect`]), the session loop (`session.rs`) and the
//! task around it (`task.rs`), the handle ([`client`]) and what the host hears ([`event`]),
//! [`config`] and [`runtime`]; [`ffi`] is the thin C boundary, one file per C object. The header
//! `include/hbws.h` is generated from [`ffi`] by cbindgen in `build.rs`.

pub mod backoff;
pub mod client;
pub mod config;
pub mod connect;
pub mod event;
pub mod ffi;
pub mod heartbeat;
pub mod runtime;
mod session;
mod task;
pub mod wire;

pub use client::Client;
pub use config::Config;
pub use event::{
    CreateError, Delivery, Event, EventSink, HeartbeatEvent, Reason, SendError, State, StateChange,
    Stats,
};

/// The header cbindgen generated for this build; a test compares it with `include/hbws.h`.
#[doc(hidden)]
pub const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/hbws.h"));
