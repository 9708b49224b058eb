//! The shared vocabulary: the small types and checks that several layers speak of (ways of
//! reaching a device, channels, transport kinds, name checks, the invalid-input error). It
//! imports nothing from the rest of the crate but `id` and `topic`, so every module may use it.

pub mod channel;
pub mod session;

pub use channel::Channel;
pub use session::{EndReason, TransportKind};
mod agents;
pub mod chain;
mod device;
mod names;

pub use agents::AgentFilter;
pub use chain::check_chain;
pub use device::{Device, Way};
pub use names::{Invalid, MAX_DEPTH, MAX_NAME, MAX_TITLE, check_depth, check_name, invalid};
