//! Wire types of mps, shared by the server, the Rust client, the CLI, the tests and the benchmark.
//!
//! Layout:
//! - [`frame`]: the Message Push Protocol frames exchanged over WebSocket (type codes, open, push,
//!   ack, ping, error) and the close codes.
//! - [`api`]: the bodies of the HTTP API under `/api/v1`.
//! - [`webhook`]: the bodies mps posts to back ends' webhook URLs.
//!
//! Nothing here does I/O; everything is plain `serde` data.

pub mod api;
pub mod frame;
pub mod webhook;

pub use api::*;
pub use frame::*;
pub use webhook::*;
