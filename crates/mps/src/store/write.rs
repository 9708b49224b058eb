//! The write commands both stores' group-commit writers take, and [`Writes`], the handle that
//! validates a write, queues it for the writer and waits until it is durable.

use mps_proto::{Preferences, Status};
use tokio::sync::{mpsc, oneshot};

use super::{
    Claimed, DeviceSelector, DueStep, IdempotencyKey, KeyedWrite, NewMessage, PushRecord,
    Registered, StepRecord, StoreError, Swept, TermSet, TopicEntry,
};
use crate::words::{Device, Way};

/// Writes waiting for the writer; senders wait when it is full.
const WRITE_QUEUE: usize = 8192;

/// One write, done by the writer in the next transaction.
pub enum Write {
    Insert(NewMessage),
    /// `pending` → `delivered`, or `pending`/`delivered` → `acked`: only rows in an earlier
    /// status move.
    Status {
        app: String,
        user: String,
        ids: Vec<u64>,
        to: Status,
    },
    Delete(u64),
    Sweep {
        now: i64,
        keep_expired: i64,
        report: usize,
    },
    AppendTopic {
        app: String,
        entry: TopicEntry,
        created: i64,
        keep: u64,
    },
    TrimTopics(Vec<(String, String, i64)>),
    Keyed(IdempotencyKey, KeyedWrite),
    RecordPush {
        app: String,
        id: u64,
        results: Vec<PushRecord>,
    },
    /// A claim is a write: the claimed steps are due again later, in the same transaction.
    ClaimSteps {
        now: i64,
        retry_at: i64,
        limit: usize,
    },
    RecordSteps {
        app: String,
        records: Vec<StepRecord>,
    },
    RegisterDevice(Device),
    RemoveDevices(DeviceSelector),
    RemoveToken {
        app: String,
        way: Way,
        token: String,
    },
    ExpireDevices(i64),
    SetTerms {
        app: String,
        user: String,
        set: TermSet,
        terms: Vec<String>,
    },
    /// `None` removes them.
    SetPreferences {
        app: String,
        user: String,
        doc: Option<String>,
    },
}

impl Write {
    /// The app whose topic log this write appends to, if any.
    pub fn topic_app(&self) -> Option<&str> {
        match self {
            Write::AppendTopic { app, .. } => Some(app),
            Write::Keyed(key, KeyedWrite::Topic { .. }) => Some(&key.app),
            _ => None,
        }
    }
}

/// What a write did.
pub enum Written {
    Count(u64),
    /// Ids whose status changed.
    Ids(Vec<u64>),
    Swept(Swept),
    Claimed(Claimed),
    Registered(Registered),
    Steps(Vec<DueStep>),
}

pub type Reply = oneshot::Sender<Result<Written, StoreError>>;

/// The writer's end of the queue.
pub type Queue = mpsc::Receiver<(Write, Reply)>;

/// The stores' end of the writer's queue: every write of the [`Store`](super::Store) trait, in
/// the form both writers take.
pub struct Writes(mpsc::Sender<(Write, Reply)>);

impl Writes {
    /// A handle and the queue its writer drains.
    pub fn new() -> (Writes, Queue) {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        (Writes(tx), rx)
    }

    async fn send(&self, op: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send((op, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn count(&self, op: Write) -> Result<u64, StoreError> {
        match self.send(op).await? {
            Written::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    pub async fn insert(&self, message: NewMessage) -> Result<(), StoreError> {
        self.count(Write::Insert(valid_message(message)))
            .await
            .map(|_| ())
    }

    /// Moves these recipients of `user` to `to` (`delivered` or `acked`); returns the ids that
    /// changed.
    pub async fn status(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
        to: Status,
    ) -> Result<Vec<u64>, StoreError> {
        let op = Write::Status {
            app: app.to_owned(),
            user: user.to_owned(),
            ids,
            to,
        };
        match self.send(op).await? {
            Written::Ids(ids) => Ok(ids),
            _ => Err(unexpected()),
        }
    }

    pub async fn delete(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.count(Write::Delete(id)).await? > 0)
    }

    pub async fn sweep(
        &self,
        now: i64,
        keep_expired: i64,
        report: usize,
    ) -> Result<Swept, StoreError> {
        let op = Write::Sweep {
            now,
            keep_expired,
            report,
        };
        match self.send(op).await? {
            Written::Swept(swept) => Ok(swept),
            _ => Err(unexpected()),
        }
    }

    pub async fn append_topic(
        &self,
        app: &str,
        entry: TopicEntry,
        created: i64,
        keep: u64,
    ) -> Result<(), StoreError> {
        let op = Write::AppendTopic {
            app: app.to_owned(),
            entry,
            created,
            keep,
        };
        self.count(op).await.map(|_| ())
    }

    pub async fn trim_topics(
        &self,
        cutoffs: Vec<(String, String, i64)>,
    ) -> Result<u64, StoreError> {
        self.count(Write::TrimTopics(cutoffs)).await
    }

    pub async fn keyed(
        &self,
        key: IdempotencyKey,
        write: KeyedWrite,
    ) -> Result<Claimed, StoreError> {
        let write = match write {
            KeyedWrite::Message(message) => KeyedWrite::Message(valid_message(message)),
            other => other,
        };
        match self.send(Write::Keyed(key, write)).await? {
            Written::Claimed(claimed) => Ok(claimed),
            _ => Err(unexpected()),
        }
    }

    pub async fn record_push(
        &self,
        app: &str,
        id: u64,
        results: Vec<PushRecord>,
    ) -> Result<u64, StoreError> {
        let op = Write::RecordPush {
            app: app.to_owned(),
            id,
            results,
        };
        self.count(op).await
    }

    pub async fn claim_steps(
        &self,
        now: i64,
        retry_at: i64,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError> {
        let op = Write::ClaimSteps {
            now,
            retry_at,
            limit,
        };
        match self.send(op).await? {
            Written::Steps(steps) => Ok(steps),
            _ => Err(unexpected()),
        }
    }

    pub async fn record_steps(
        &self,
        app: &str,
        records: Vec<StepRecord>,
    ) -> Result<u64, StoreError> {
        let op = Write::RecordSteps {
            app: app.to_owned(),
            records,
        };
        self.count(op).await
    }

    pub async fn register_device(&self, device: Device) -> Result<Registered, StoreError> {
        match self.send(Write::RegisterDevice(device)).await? {
            Written::Registered(registered) => Ok(registered),
            _ => Err(unexpected()),
        }
    }

    pub async fn remove_devices(&self, selector: DeviceSelector) -> Result<u64, StoreError> {
        self.count(Write::RemoveDevices(selector)).await
    }

    pub async fn remove_device_token(
        &self,
        app: &str,
        way: Way,
        token: &str,
    ) -> Result<u64, StoreError> {
        let op = Write::RemoveToken {
            app: app.to_owned(),
            way,
            token: token.to_owned(),
        };
        self.count(op).await
    }

    pub async fn expire_devices(&self, refreshed_before: i64) -> Result<u64, StoreError> {
        self.count(Write::ExpireDevices(refreshed_before)).await
    }

    pub async fn set_terms(
        &self,
        app: &str,
        user: &str,
        set: TermSet,
        terms: Vec<String>,
    ) -> Result<(), StoreError> {
        let op = Write::SetTerms {
            app: app.to_owned(),
            user: user.to_owned(),
            set,
            terms,
        };
        self.count(op).await.map(|_| ())
    }

    /// Stores the preferences as JSON; empty ones are removed.
    pub async fn set_preferences(
        &self,
        app: &str,
        user: &str,
        preferences: Preferences,
    ) -> Result<(), StoreError> {
        let doc = (preferences != Preferences::default())
            .then(|| serde_json::to_string(&preferences).unwrap_or_default());
        let op = Write::SetPreferences {
            app: app.to_owned(),
            user: user.to_owned(),
            doc,
        };
        self.count(op).await.map(|_| ())
    }
}

/// A message never expires before it was created.
fn valid_message(mut message: NewMessage) -> NewMessage {
    message.expires = message.created.max(message.expires);
    message
}

/// How many messages a topic keeps, as the stores' signed integers count them.
pub fn kept(keep: u64) -> i64 {
    keep.min(i64::MAX as u64) as i64
}

fn unexpected() -> StoreError {
    StoreError::Backend("unexpected answer from the writer".into())
}
