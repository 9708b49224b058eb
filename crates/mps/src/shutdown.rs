//! The one shutdown: a [`Tasks`] is a cancellation token that every long-lived task watches and
//! a tracker of those tasks, so that the server can tell them all to stop and know when they
//! have. Loops that only wait stop at the token; loops that drain a queue stop taking new
//! items at the token and finish what is queued ([`next`]).

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Long-lived tasks that stop together.
#[derive(Clone, Default)]
pub struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Runs `task` to its end; it watches [`Tasks::stopping`] itself.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Runs `task` until it ends or the stop, whichever comes first.
    pub fn spawn_until_stopped(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            stop.run_until_cancelled(task).await;
        });
    }

    /// Resolves when the tasks are told to stop.
    pub fn stopping(&self) -> WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// The token the tasks watch, for a task that outlives the borrow of `self`.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Tells every task to stop; no task may be added after this.
    pub fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
    }

    /// Waits up to `bound` for every task to end; how many had not.
    pub async fn stopped(&self, bound: Duration) -> usize {
        let _ = tokio::time::timeout(bound, self.tracker.wait()).await;
        self.tracker.len()
    }
}

/// The next item of a queue that drains on shutdown: once `stop` is cancelled the queue takes
/// nothing new (senders see it closed), and what it holds is still handed out, then `None`.
pub async fn next<T>(queue: &mut mpsc::Receiver<T>, stop: &CancellationToken) -> Option<T> {
    if !stop.is_cancelled() {
        tokio::select! {
            item = queue.recv() => return item,
            _ = stop.cancelled() => {}
        }
    }
    queue.close();
    queue.recv().await
}

/// [`next`] for a batch: up to `limit` items into `batch`, how many; 0 when the queue is done.
pub async fn next_many<T>(
    queue: &mut mpsc::Receiver<T>,
    batch: &mut Vec<T>,
    limit: usize,
    stop: &CancellationToken,
) -> usize {
    if !stop.is_cancelled() {
        tokio::select! {
            n = queue.recv_many(batch, limit) => return n,
            _ = stop.cancelled() => {}
        }
    }
    queue.close();
    queue.recv_many(batch, limit).await
}
