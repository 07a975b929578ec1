//! hbws: a WebSocket client that keeps itself alive, with a C ABI.
//!
//! The safe core ([`client`], [`heartbeat`], [`backoff`], [`connect`], [`config`], [`runtime`],
//! [`wire`])
//! has no raw pointers; [`ffi`] is the thin C boundary, one file per C object. The header
//! `include/hbws.h` is generated from [`ffi`] by cbindgen in `build.rs`.

pub mod backoff;
pub mod client;
pub mod config;
pub mod connect;
pub mod ffi;
pub mod heartbeat;
pub mod runtime;
pub mod wire;

pub use client::{
    Client, Delivery, Event, EventSink, HeartbeatEvent, Reason, SendError, State, StateChange,
    Stats,
};
pub use config::Config;

/// The header cbindgen generated for this build; a test compares it with `include/hbws.h`.
#[doc(hidden)]
pub const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/hbws.h"));
