//! Persistence of directed messages and their per-recipient status, behind the [`Store`] trait.
//! The embedded default is [`sqlite::SqliteStore`]; the cluster's [`postgres::PostgresStore`]
//! implements the same trait and passes the same suite (`suite.rs`).

pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod suite;

use async_trait::async_trait;
use mps_proto::{MessageRecord, Page, PushedMessage, Status};
use serde_json::value::RawValue;

/// A directed message to record, with its recipients.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: u64,
    pub app: String,
    pub title: Option<String>,
    pub kind: i64,
    pub component: Option<String>,
    pub sender: Option<String>,
    pub agents: Option<Vec<String>>,
    pub content: Box<RawValue>,
    /// Unix milliseconds.
    pub created: i64,
    pub expires: i64,
    pub recipients: Vec<String>,
}

/// Filter and page of `GET /api/v1/messages`.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    pub app: Option<String>,
    /// Messages with at least one recipient in this status.
    pub status: Option<Status>,
    pub sender: Option<String>,
    pub receiver: Option<String>,
    pub component: Option<String>,
    /// Created at or after (Unix ms).
    pub from: Option<i64>,
    /// Created before (Unix ms).
    pub to: Option<i64>,
    /// 1-based.
    pub page: u64,
    pub size: u64,
}

/// A message of a topic's retained log: the push frame exactly as it was sent live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicEntry {
    pub id: u64,
    pub topic: String,
    pub frame: bytes::Bytes,
}

/// What a resuming client missed on its topics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicReplay {
    /// Retained messages after the client's last id, oldest first.
    pub entries: Vec<TopicEntry>,
    /// Patterns some of whose topics were trimmed past the client's last id: the client missed
    /// messages that are no longer retained.
    pub truncated: Vec<String>,
}

/// What a sweep changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Recipients whose message expired before they acked it.
    pub expired: u64,
    /// Messages deleted after the retention of expired records.
    pub deleted: u64,
}

/// An idempotency key: the first message sent with it in an app is the only one recorded until
/// the key lapses.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub app: String,
    pub key: String,
    /// The message that claims it.
    pub id: u64,
    /// Unix milliseconds.
    pub created: i64,
    /// When it lapses (Unix ms): from then on the key is free again and a sweep deletes it.
    pub expires: i64,
}

/// The write an idempotency key guards, done in the same transaction as the key.
#[derive(Debug, Clone)]
pub enum KeyedWrite {
    /// A directed message ([`Store::insert`]).
    Message(NewMessage),
    /// A topic message ([`Store::append_topic`] in the key's app).
    Topic {
        entry: TopicEntry,
        created: i64,
        keep: u64,
    },
    /// A live-only message: only the key is recorded.
    KeyOnly,
}

/// What a keyed write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// The key was free: it and the write are recorded.
    Fresh,
    /// The key is held by this earlier message; nothing was written.
    Duplicate(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store is closed")]
    Closed,
}

/// Durable storage of directed messages. Every write returns only once it is durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a message and its recipients (all `pending`).
    async fn insert(&self, message: NewMessage) -> Result<(), StoreError>;

    /// Unexpired messages of a user still `pending`, addressed to `agent` (or to any agent when
    /// `None`), with an id above `after`, oldest first.
    async fn pending(
        &self,
        app: &str,
        user: &str,
        agent: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PushedMessage>, StoreError>;

    /// `pending` → `delivered` for these ids of this user; returns how many changed.
    async fn mark_delivered(&self, app: &str, user: &str, ids: Vec<u64>)
    -> Result<u64, StoreError>;

    /// `pending`/`delivered` → `acked`; returns how many changed.
    async fn ack(&self, app: &str, user: &str, ids: Vec<u64>) -> Result<u64, StoreError>;

    async fn list(&self, query: MessageQuery) -> Result<Page<MessageRecord>, StoreError>;

    /// One message with every recipient's status.
    async fn get(&self, id: u64) -> Result<Option<MessageRecord>, StoreError>;

    /// Deletes a message and its recipients; false when there was none.
    async fn delete(&self, id: u64) -> Result<bool, StoreError>;

    /// Marks recipients of messages expired at `now` as `expired`, deletes messages expired
    /// before `now - keep_expired` (Unix ms) and idempotency keys lapsed at `now`.
    async fn sweep(&self, now: i64, keep_expired: i64) -> Result<Swept, StoreError>;

    /// Appends a message to a topic's retained log and trims the log to `keep` messages.
    async fn append_topic(
        &self,
        app: &str,
        entry: TopicEntry,
        created: i64,
        keep: u64,
    ) -> Result<(), StoreError>;

    /// Retained messages of the topics matching any of `patterns` with an id above `after`,
    /// oldest first, at most `limit`; and the patterns whose history no longer reaches `after`.
    async fn topic_since(
        &self,
        app: &str,
        patterns: &[String],
        after: u64,
        limit: usize,
    ) -> Result<TopicReplay, StoreError>;

    /// Every (app, topic) that has a retained log.
    async fn topics(&self) -> Result<Vec<(String, String)>, StoreError>;

    /// Drops retained messages created before each topic's cutoff (Unix ms); returns how many.
    async fn trim_topics(&self, cutoffs: Vec<(String, String, i64)>) -> Result<u64, StoreError>;

    /// Does `write` and records `key` in one transaction, unless the key is held by an earlier
    /// message that has not lapsed at `key.created`: then nothing is written. [`Store::sweep`]
    /// deletes keys lapsed at its `now`.
    async fn write_keyed(
        &self,
        key: IdempotencyKey,
        write: KeyedWrite,
    ) -> Result<Claimed, StoreError>;

    /// Whether the store can be reached (for `/readyz`).
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
