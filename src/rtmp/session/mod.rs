//! RTMP session state machines, sans-IO: bytes in through `handle_input`, events out
//! through `poll_event`, bytes to send through `take_output`. The server side
//! ([`ServerSession`]) answers publishers and players; the client side ([`ClientSession`])
//! is what `qrelay publish/play`, the bench and relays drive.
//!
//! Call order for both: `handle_input` with whatever the socket produced, then drain
//! `poll_event` until `None`, acting on each event (which may queue more output), then
//! write `take_output`. Media towards a player bypasses the output buffer: its chunk
//! bytes come from [`ServerSession::media_bytes`], shared across subscribers.

mod client;
mod core;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientEvent, ClientMode, ClientSession};
pub use core::{SessionConfig, SessionError};
pub use server::{MediaEncoder, ServerEvent, ServerSession};
