//! Which channels a directed message takes besides the live one: the vendor push and the
//! webhook at once, and the steps of its chain (every e-mail, every delayed channel) from the
//! store; chosen by the message, else by each recipient's own preferences.

use std::collections::BTreeMap;

use mps_proto::ChannelChoice;

use super::{Engine, EngineError};
use crate::words::Channel;
use crate::words::invalid;

/// The channels a message (or a recipient's own chain) takes besides the live one.
#[derive(Debug, Default)]
pub(super) struct Chosen {
    /// The vendor push, at once.
    pub(super) push: bool,
    /// The webhook channel, at once.
    pub(super) webhook: bool,
    /// Steps of the chain, run from the store: (channel, seconds after sending).
    later: Vec<(Channel, u64)>,
}

impl Chosen {
    /// Splits a checked chain: the vendor push and the webhook without delay run at once,
    /// everything else (every e-mail) from the store.
    fn from_chain(chain: Vec<(Channel, u64)>) -> Chosen {
        let mut chosen = Chosen::default();
        for (channel, after) in chain {
            match channel {
                Channel::Push if after == 0 => chosen.push = true,
                Channel::Webhook if after == 0 => chosen.webhook = true,
                _ => chosen.later.push((channel, after)),
            }
        }
        chosen
    }
}

/// Where a message goes besides the live channel.
pub(super) struct Routes {
    /// The message's own choice, or the vendor push when it names no channels.
    pub(super) at_once: Chosen,
    /// The message's chain steps: (channel, when due).
    pub(super) steps: Vec<(String, i64)>,
    /// The recipients' own chains, for a message that names no channels.
    pub(super) own: BTreeMap<String, Chosen>,
    /// Their steps: (user, channel, when due).
    pub(super) own_steps: Vec<(String, String, i64)>,
    /// Whether a step is due now, for the chain runner to look at once.
    pub(super) step_now: bool,
}

impl Engine {
    /// The channels a message sent at `created` takes besides the live one: those it names
    /// (`channels`), else each recipient's own chain, else the vendor push. Only a directed
    /// message (with `recipients`) may name channels.
    pub(super) async fn choose_channels(
        &self,
        app: &str,
        recipients: Option<&[String]>,
        ttl: u64,
        channels: Option<&[ChannelChoice]>,
        created: i64,
    ) -> Result<Routes, EngineError> {
        let mut at_once = match channels {
            None => Chosen {
                push: true,
                ..Chosen::default()
            },
            Some(channels) => self.check_channels(app, recipients.is_some(), channels, ttl)?,
        };
        let steps: Vec<(String, i64)> = std::mem::take(&mut at_once.later)
            .into_iter()
            .map(|(channel, after)| {
                let due = created.saturating_add(after as i64 * 1000);
                (channel.as_str().to_owned(), due)
            })
            .collect();
        let own = match (channels, recipients) {
            (None, Some(recipients)) => self.own_chains(app, recipients, ttl).await,
            _ => BTreeMap::new(),
        };
        let own_steps: Vec<(String, String, i64)> = own
            .iter()
            .flat_map(|(user, chosen)| {
                chosen.later.iter().map(move |(channel, after)| {
                    let due = created.saturating_add(*after as i64 * 1000);
                    (user.clone(), channel.as_str().to_owned(), due)
                })
            })
            .collect();
        let step_now = steps.iter().any(|(_, due)| *due <= created)
            || own_steps.iter().any(|(_, _, due)| *due <= created);
        Ok(Routes {
            at_once,
            steps,
            own,
            own_steps,
            step_now,
        })
    }

    /// Checks a message's `channels`: which channels it takes at once, and which as steps of
    /// its chain (every e-mail, and every channel with an `after`).
    fn check_channels(
        &self,
        app: &str,
        directed: bool,
        channels: &[ChannelChoice],
        ttl: u64,
    ) -> Result<Chosen, EngineError> {
        if !directed {
            return Err(invalid(
                "invalid_channels",
                "channels apply to directed messages (with receiver)",
            ));
        }
        let chain = crate::words::check_chain(channels, ttl)
            .map_err(|e| invalid::<EngineError>("invalid_channels", e))?;
        if let Some((channel, _)) = chain
            .iter()
            .find(|(c, _)| !self.channels.configured(app, *c))
        {
            return Err(invalid(
                "channel_not_configured",
                format!("app {app:?} has no {channel} channel ([push.apps.{app}.{channel}])"),
            ));
        }
        Ok(Chosen::from_chain(chain))
    }

    /// The recipients' own chains (their preferences' `channels`), for a message that names
    /// none, in an app with a channel besides the vendor push. A chain that does not fit the
    /// message (a delay past its ttl) or the app (a channel it lacks) keeps what fits.
    async fn own_chains(
        &self,
        app: &str,
        recipients: &[String],
        ttl: u64,
    ) -> BTreeMap<String, Chosen> {
        if !self.channels.configured(app, Channel::Email)
            && !self.channels.configured(app, Channel::Webhook)
        {
            return BTreeMap::new();
        }
        let found = match self.store.preferences(app, recipients).await {
            Ok(found) => found,
            // Not knowing them, send as the message says.
            Err(e) => {
                tracing::warn!(error = %e, "reading preferences failed; using the message's channels");
                return BTreeMap::new();
            }
        };
        found
            .into_iter()
            .filter(|(_, p)| !p.channels.is_empty())
            .map(|(user, p)| {
                let chain = p
                    .channels
                    .iter()
                    .filter_map(|choice| {
                        let step = crate::words::check_chain(std::slice::from_ref(choice), ttl)
                            .ok()?
                            .pop()?;
                        self.channels.configured(app, step.0).then_some(step)
                    })
                    .collect();
                (user, Chosen::from_chain(chain))
            })
            .collect()
    }
}
