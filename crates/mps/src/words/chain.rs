//! A message's chain of channels (its `channels`, or a user's own in preferences), checked the
//! same way by the engine and preferences.

use mps_proto::{ChannelChoice, ChannelStep};

/// The channels a message can name in `channels`.
pub const NAMES: [&str; 3] = ["push", "webhook", "email"];

/// Checks a chain (a message's `channels` or a user's own): known channels, each once, and
/// delays that parse and fall within `ttl` seconds. Returns each channel with its delay in
/// seconds, in order; or what is wrong.
pub fn check_chain(choices: &[ChannelChoice], ttl: u64) -> Result<Vec<(&str, u64)>, String> {
    let mut chain: Vec<(&str, u64)> = Vec::with_capacity(choices.len());
    for choice in choices {
        let channel = choice.channel();
        if !NAMES.contains(&channel) {
            return Err(format!(
                "unknown channel {channel:?} (known: {})",
                NAMES.join(", ")
            ));
        }
        if chain.iter().any(|(c, _)| *c == channel) {
            return Err(format!("channels lists {channel:?} twice"));
        }
        let after = match choice {
            ChannelChoice::Step(ChannelStep {
                after: Some(delay), ..
            }) => delay.seconds().ok_or_else(|| {
                format!("after of {channel:?} must be seconds or a number with s, m, h or d")
            })?,
            _ => 0,
        };
        if after >= ttl {
            return Err(format!(
                "after of {channel:?} is not within the message's ttl ({ttl} s)"
            ));
        }
        chain.push((channel, after));
    }
    Ok(chain)
}
