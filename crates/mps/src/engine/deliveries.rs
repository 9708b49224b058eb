//! Delivery records: which directed messages were written to a connection of their recipient.
//! Long connections hand them to a background recorder that commits them in batches; polls
//! record them before answering.

use std::collections::HashMap;
use std::sync::Arc;

use mps_proto::EventType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Engine, EngineError};
use crate::channels::Channels;
use crate::shutdown::Tasks;
use crate::store::Store;

/// A delivery written to a connection, to be recorded.
pub(super) struct Delivered {
    app: Arc<str>,
    user: Arc<str>,
    ids: Vec<u64>,
}

/// Starts the recorder among `tasks`; returns its queue.
pub(super) fn start(
    store: Arc<dyn Store>,
    channels: Arc<Channels>,
    tasks: &Tasks,
) -> mpsc::Sender<Delivered> {
    let (tx, rx) = mpsc::channel(4096);
    tasks.spawn(record_deliveries(store, rx, channels, tasks.token()));
    tx
}

impl Engine {
    /// Records that these directed messages were written to a connection of the user. Batched
    /// and committed in the background. Not async, so that it adds nothing to the state of every
    /// session task; when the recorder is far behind, the record waits in a task of its own.
    pub fn delivered(&self, app: Arc<str>, user: Arc<str>, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        crate::telemetry::hot()
            .directed_delivered
            .increment(ids.len() as u64);
        if let Err(mpsc::error::TrySendError::Full(record)) =
            self.delivered.try_send(Delivered { app, user, ids })
        {
            let recorder = self.delivered.clone();
            self.tasks.spawn(async move {
                let _ = recorder.send(record).await;
            });
        }
    }

    /// Records deliveries in the store before returning, for a transport whose next request
    /// starts afresh and must not find these messages pending again (polling).
    pub async fn delivered_now(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
    ) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        let count = ids.len() as u64;
        let changed = self.store.mark_delivered(app, user, ids).await?;
        crate::telemetry::hot().directed_delivered.increment(count);
        self.channels
            .events()
            .recipients(EventType::MessageDelivered, app, user, &changed);
        Ok(())
    }
}

/// Commits delivery records in batches: everything queued while the previous batch committed
/// goes into the store together, where the writer folds it into one transaction.
/// On shutdown it takes no more and commits what is queued.
async fn record_deliveries(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Delivered>,
    channels: Arc<Channels>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(256);
    while crate::shutdown::next_many(&mut rx, &mut batch, 256, &stop).await > 0 {
        let mut by_user: HashMap<(Arc<str>, Arc<str>), Vec<u64>> = HashMap::new();
        for d in batch.drain(..) {
            by_user.entry((d.app, d.user)).or_default().extend(d.ids);
        }
        let writes = by_user
            .into_iter()
            .map(|((app, user), ids)| {
                let store = store.clone();
                let events = channels.events();
                async move {
                    match store.mark_delivered(&app, &user, ids).await {
                        Ok(changed) => {
                            events.recipients(EventType::MessageDelivered, &app, &user, &changed)
                        }
                        Err(e) => tracing::warn!(error = %e, "recording deliveries failed"),
                    }
                }
            })
            .collect::<Vec<_>>();
        futures_util::future::join_all(writes).await;
    }
}
