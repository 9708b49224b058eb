//! The channels of a directed message besides the live connection: their names on the wire,
//! in the store, in preferences and in metrics labels.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A channel a message or a user's chain can name in `channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The vendor push (APNs, FCM, Web Push) to devices without a live connection.
    Push,
    /// One signed request per recipient to a URL of the app's back end.
    Webhook,
    /// One e-mail per recipient.
    Email,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Push, Channel::Webhook, Channel::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Push => "push",
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_as_text_and_json() {
        for channel in Channel::ALL {
            assert_eq!(Channel::parse(channel.as_str()), Some(channel));
            assert_eq!(channel.to_string(), channel.as_str());
            let json = serde_json::to_string(&channel).unwrap();
            assert_eq!(json, format!("\"{channel}\""));
            assert_eq!(serde_json::from_str::<Channel>(&json).unwrap(), channel);
        }
        assert_eq!(Channel::parse("sms"), None);
        assert_eq!(Channel::parse("Email"), None);
    }
}
