//! A message's chain of channels (its `channels`, or a user's own in preferences), checked the
//! same way by the engine and preferences.

use mps_proto::{ChannelChoice, ChannelStep};

use super::Channel;

/// Checks a chain (a message's `channels` or a user's own): known channels, each once, and
/// delays that parse and fall within `ttl` seconds. Returns each channel with its delay in
/// seconds, in order; or what is wrong.
pub fn check_chain(choices: &[ChannelChoice], ttl: u64) -> Result<Vec<(Channel, u64)>, String> {
    let mut chain: Vec<(Channel, u64)> = Vec::with_capacity(choices.len());
    for choice in choices {
        let name = choice.channel();
        let Some(channel) = Channel::parse(name) else {
            let known = Channel::ALL.map(Channel::as_str).join(", ");
            return Err(format!("unknown channel {name:?} (known: {known})"));
        };
        if chain.iter().any(|(c, _)| *c == channel) {
            return Err(format!("channels lists {name:?} twice"));
        }
        let after = match choice {
            ChannelChoice::Step(ChannelStep {
                after: Some(delay), ..
            }) => delay.seconds().ok_or_else(|| {
                format!("after of {name:?} must be seconds or a number with s, m, h or d")
            })?,
            _ => 0,
        };
        if after >= ttl {
            return Err(format!(
                "after of {name:?} is not within the message's ttl ({ttl} s)"
            ));
        }
        chain.push((channel, after));
    }
    Ok(chain)
}
