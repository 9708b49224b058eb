//! Channels besides the live connection, for directed messages (docs/channels.md): the vendor
//! push ([`crate::push`]), the webhook channel here (one signed request per recipient to a URL
//! of the app's back end, retried like webhooks), the e-mail channel ([`email`]), and the
//! chain that runs a message's channels in order, later ones only for recipients who have not
//! acked it by then ([`chain`]).
//!
//! A message picks its channels with `channels` on `SendMessage`; a server's [`Channels`] holds
//! every app's. Each app's webhook channel has a bounded queue and one task: a full queue drops
//! the request (counted), never blocking the sender; the task posts through
//! [`crate::webhooks`]' signing and retrying poster and records each recipient's outcome in the
//! store, and on shutdown posts what its queue holds, then ends.

pub mod chain;
pub mod email;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use mps_proto::PushedMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::{AppPush, WebhookChannelConfig, WebhookConfig};
use crate::shutdown::Tasks;
use crate::store::{StepRecord, Store};
use crate::webhooks::{Poster, Webhooks};
use crate::words::Channel;

/// What the webhook channel posts for one recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelMessage {
    /// Always `webhook`.
    pub channel: Channel,
    pub app: String,
    /// The recipient.
    pub user: String,
    /// The message as a live connection receives it.
    pub message: PushedMessage,
}

struct AppChannel {
    queue: mpsc::Sender<ChannelMessage>,
}

/// The webhook and e-mail channels of a server's apps, the wake-up of its chain runner, and
/// the back ends' events that the engine and the channels report.
pub struct Channels {
    webhooks: BTreeMap<String, AppChannel>,
    email: email::Mailer,
    /// Rung when the engine stored a chain step due now.
    nudge: Notify,
    events: Arc<Webhooks>,
}

impl Channels {
    /// Checks the apps' webhook and e-mail channels and starts a task for each, which takes
    /// requests until `tasks` stop, then sends what is queued. Call in a runtime.
    pub fn start(
        apps: &BTreeMap<String, AppPush>,
        store: Arc<dyn Store>,
        events: Arc<Webhooks>,
        tasks: &Tasks,
    ) -> anyhow::Result<Arc<Channels>> {
        let webhook_apps = apps
            .iter()
            .filter_map(|(app, push)| Some((app, push.webhook.as_ref()?)));
        let webhooks =
            webhook_channels(webhook_apps, &store, &events, tasks).context("channels")?;
        let email_apps = apps
            .iter()
            .filter_map(|(app, push)| Some((app, push.email.as_ref()?)));
        let email = email::Mailer::start(email_apps, store, tasks).context("e-mail channel")?;
        Ok(Arc::new(Channels {
            webhooks,
            email,
            nudge: Notify::new(),
            events,
        }))
    }

    /// Whether `app` has `channel` configured (the vendor push always counts as configured: a
    /// message to users without devices simply pushes nothing).
    pub fn configured(&self, app: &str, channel: Channel) -> bool {
        match channel {
            Channel::Webhook => self.has_webhook(app),
            Channel::Email => self.email.configured(app),
            Channel::Push => true,
        }
    }

    /// Whether `app` has a webhook channel.
    pub fn has_webhook(&self, app: &str) -> bool {
        self.webhooks.contains_key(app)
    }

    /// Queues `message` for each of `users` on `app`'s webhook channel; never waits.
    pub fn offer_webhook(&self, app: &str, users: &[String], message: &PushedMessage) {
        let Some(channel) = self.webhooks.get(app) else {
            return;
        };
        for user in users {
            let item = ChannelMessage {
                channel: Channel::Webhook,
                app: app.to_owned(),
                user: user.clone(),
                message: message.clone(),
            };
            if channel.queue.try_send(item).is_err() {
                count("dropped");
                tracing::warn!(
                    app,
                    id = %message.id,
                    "webhook channel queue full; the message waits for the live channel only"
                );
            }
        }
    }

    /// The back ends' event callbacks.
    pub fn events(&self) -> &Webhooks {
        &self.events
    }

    /// The e-mail channels, which the chain feeds.
    pub fn email(&self) -> &email::Mailer {
        &self.email
    }

    /// Wakes the chain runner: a step came due now.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Resolves at the next [`Channels::nudge`].
    pub(crate) async fn nudged(&self) {
        self.nudge.notified().await
    }
}

fn webhook_channels<'a>(
    apps: impl Iterator<Item = (&'a String, &'a WebhookChannelConfig)>,
    store: &Arc<dyn Store>,
    events: &Arc<Webhooks>,
    tasks: &Tasks,
) -> anyhow::Result<BTreeMap<String, AppChannel>> {
    let mut channels = BTreeMap::new();
    let mut client = None;
    for (app, config) in apps {
        let what = format!("[push.apps.{app}.webhook]");
        let url = reqwest::Url::parse(&config.url).with_context(|| format!("{what}: url"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "{what}: url must be http:// or https://"
        );
        anyhow::ensure!(!config.secret.is_empty(), "{what}: secret is empty");
        anyhow::ensure!(config.queue > 0, "{what}: queue must be at least 1");
        anyhow::ensure!(config.attempts > 0, "{what}: attempts must be at least 1");
        let client = match &client {
            Some(c) => c,
            None => client.insert(crate::webhooks::http_client()?),
        };
        let (tx, rx) = mpsc::channel(config.queue);
        let poster = Poster {
            name: format!("channel-{app}").into(),
            url,
            config: WebhookConfig {
                url: config.url.clone(),
                secret: config.secret.clone(),
                attempts: config.attempts,
                backoff_ms: config.backoff_ms,
                max_backoff_ms: config.max_backoff_ms,
                timeout: config.timeout,
                ..WebhookConfig::default()
            },
            client: client.clone(),
        };
        tasks.spawn(run(
            poster,
            rx,
            store.clone(),
            events.clone(),
            tasks.token(),
        ));
        channels.insert(app.clone(), AppChannel { queue: tx });
    }
    Ok(channels)
}

fn count(result: &'static str) {
    metrics::counter!("mps_channel_messages_total", "channel" => Channel::Webhook.as_str(), "result" => result)
        .increment(1);
}

async fn run(
    poster: Poster,
    mut rx: mpsc::Receiver<ChannelMessage>,
    store: Arc<dyn Store>,
    events: Arc<Webhooks>,
    stop: CancellationToken,
) {
    while let Some(item) = crate::shutdown::next(&mut rx, &stop).await {
        // Plain structs of strings and numbers always serialize.
        let body = Bytes::from(serde_json::to_vec(&item).unwrap_or_default());
        let delivery = format!("{}.{}", item.message.id, item.user);
        let taken = poster.post(&delivery, body).await;
        count(if taken { "sent" } else { "failed" });
        let Some(id) = crate::id::read_back(&item.message.id) else {
            continue;
        };
        let reason = "the webhook channel did not take it after its retries";
        if !taken {
            // The same event as a failed vendor push, with `way` `webhook` and no device.
            let way = Channel::Webhook.as_str();
            events.push_failed(&item.app, &item.user, id, "", way, reason);
        }
        let record = StepRecord {
            id,
            user: item.user.clone(),
            channel: Channel::Webhook.as_str().into(),
            status: if taken {
                mps_proto::ChannelStatus::Sent
            } else {
                mps_proto::ChannelStatus::Failed
            },
            reason: (!taken).then(|| reason.to_owned()),
        };
        if let Err(e) = store.record_steps(&item.app, vec![record]).await {
            tracing::warn!(id, error = %e, "recording a webhook channel outcome failed");
        }
    }
}
