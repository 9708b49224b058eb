//! The channel chain: the steps of a directed message that run later (`{"channel": "email",
//! "after": "10m"}`), and every e-mail, are rows of the store with a due time. This runner
//! claims the due ones every second (and at once when the engine stored a step due now), so
//! they survive a restart and, in a cluster, run on one node.
//!
//! A step runs only for a recipient still owed the message or who got it without acking it:
//! an ack (over any transport) or the message's expiry before the step's time cancels it. A
//! claimed step is due again after [`RETRY_AFTER_MS`], so a step whose node died, or whose
//! channel's queue was full, is taken again later (at least once).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mps_proto::{ChannelStatus, EventData, PushPolicy, PushedMessage, Status};
use tokio_util::sync::CancellationToken;

use super::Channels;
use super::email::Email;
use crate::push::fallback::{Fallback, Job};
use crate::push::{Notification, Priority};
use crate::shutdown::Tasks;
use crate::store::{DueStep, StepRecord, Store};
use crate::words::{Channel, Way};

/// How long a claimed step waits before it is taken again when it was not settled.
pub const RETRY_AFTER_MS: i64 = 5 * 60_000;
/// How often the store is asked for due steps.
const TICK: Duration = Duration::from_secs(1);
/// Most steps claimed at once.
const BATCH: usize = 256;

/// Starts the runner, until `tasks` stop; [`Channels::nudge`] wakes it. Call in a runtime.
pub fn start(
    store: Arc<dyn Store>,
    fallback: Arc<Fallback>,
    channels: Arc<Channels>,
    tasks: &Tasks,
) {
    for channel in Channel::ALL {
        for result in ["run", "cancelled"] {
            metrics::counter!("mps_channel_steps_total", "channel" => channel.as_str(), "result" => result)
                .absolute(0);
        }
    }
    tasks.spawn(run(store, fallback, channels, tasks.token()));
}

/// Claims and runs due steps until `stop`, which it heeds between claims so that no claimed
/// step is left half handed over.
async fn run(
    store: Arc<dyn Store>,
    fallback: Arc<Fallback>,
    channels: Arc<Channels>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = channels.nudged() => {}
            _ = stop.cancelled() => return,
        }
        loop {
            let now = crate::id::now_ms() as i64;
            match store.claim_steps(now, now + RETRY_AFTER_MS, BATCH).await {
                Ok(steps) => {
                    let full = steps.len() == BATCH;
                    take(store.as_ref(), &fallback, &channels, steps).await;
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "claiming due channel steps failed");
                    break;
                }
            }
        }
    }
}

/// Runs claimed steps: cancels those of recipients who acked, hands the others to their
/// channel, and records what it settled at once.
async fn take(store: &dyn Store, fallback: &Fallback, channels: &Channels, steps: Vec<DueStep>) {
    let mut settled: BTreeMap<String, Vec<StepRecord>> = BTreeMap::new();
    let mut pushes: BTreeMap<u64, Job> = BTreeMap::new();
    for step in steps {
        let settle = |status, reason: Option<&str>| StepRecord {
            id: step.id,
            user: step.user.clone(),
            channel: step.channel.clone(),
            status,
            reason: reason.map(str::to_owned),
        };
        let record = if matches!(step.status, Status::Acked | Status::Expired) {
            count(&step.channel, "cancelled");
            Some(settle(ChannelStatus::Cancelled, None))
        } else {
            count(&step.channel, "run");
            match Channel::parse(&step.channel) {
                Some(Channel::Email) => {
                    // A full queue leaves the step claimed: it is taken again later.
                    channels
                        .email()
                        .offer(shaped(&step, Channel::Email.as_str()));
                    None
                }
                Some(Channel::Webhook) => {
                    channels.offer_webhook(
                        &step.app,
                        std::slice::from_ref(&step.user),
                        &message(&step),
                    );
                    None
                }
                Some(Channel::Push) if fallback.wanted(&step.app, PushPolicy::Offline) => {
                    pushes
                        .entry(step.id)
                        .or_insert_with(|| job(&step))
                        .recipients
                        .push(step.user.clone());
                    Some(settle(ChannelStatus::Sent, None))
                }
                Some(Channel::Push) => Some(settle(
                    ChannelStatus::Skipped,
                    Some("no vendor push configured"),
                )),
                None => Some(settle(
                    ChannelStatus::Skipped,
                    Some(&format!("unknown channel {:?}", step.channel)),
                )),
            }
        };
        if let Some(record) = record {
            settled.entry(step.app.clone()).or_default().push(record);
        }
    }
    for (app, records) in settled {
        if let Err(e) = store.record_steps(&app, records).await {
            tracing::warn!(error = %e, "recording channel steps failed");
        }
    }
    for job in pushes.into_values() {
        fallback.offer(job);
    }
}

fn count(channel: &str, result: &'static str) {
    metrics::counter!("mps_channel_steps_total", "channel" => channel.to_owned(), "result" => result)
        .increment(1);
}

/// The message as a live connection receives it.
fn message(step: &DueStep) -> PushedMessage {
    PushedMessage {
        id: step.id.to_string(),
        title: step.title.clone(),
        kind: step.kind,
        component: step.component.clone(),
        topic: None,
        sender: step.sender.clone(),
        created: step.created,
        ack: true,
        event_data: EventData {
            ext: step.content.clone(),
        },
    }
}

/// The e-mail of a step, in the message's `email` shape when it has one.
fn shaped(step: &DueStep, shape: &str) -> Email {
    let mut shaped = message(step);
    crate::formats::apply_stored(&mut shaped, step.formats.as_deref(), Some(shape));
    Email {
        app: step.app.clone(),
        id: step.id,
        user: step.user.clone(),
        title: shaped.title,
        component: shaped.component,
        sender: shaped.sender,
        content: shaped.event_data.ext.get().to_owned(),
    }
}

/// A vendor push of the step's message to devices without a live connection.
fn job(step: &DueStep) -> Job {
    let formats = crate::store::formats_from(step.formats.as_deref())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, shape)| Way::parse(&name).map(|way| (way, shape)))
        .collect();
    Job {
        note: Notification {
            id: step.id,
            app: step.app.clone(),
            title: step.title.clone(),
            kind: step.kind,
            component: step.component.clone(),
            content: Arc::from(step.content.clone()),
            expires: step.expires,
            collapse_id: None,
            priority: Priority::High,
            formats,
        },
        recipients: Vec::new(),
        agents: step.agents.clone(),
        policy: PushPolicy::Offline,
    }
}
