//! Persistence of directed messages and their per-recipient status, topic logs and device
//! registrations (push modes), behind the [`Store`] trait.
//! The embedded default is [`sqlite::SqliteStore`]; the cluster's [`postgres::PostgresStore`]
//! implements the same trait and passes the same suite (`suite.rs`). Both take their writes as
//! one command type ([`write::Write`]) through a group-commit writer, map rows the same way
//! (`rows.rs`), and migrate from numbered migrations with the same numbers.

pub mod postgres;
mod rows;
pub mod sqlite;
#[cfg(test)]
mod suite;
pub mod timed;
mod write;

use async_trait::async_trait;
use std::collections::BTreeMap;

use mps_proto::{ChannelStatus, Format, MessageRecord, Page, Preferences, PushedMessage, Status};
use serde_json::value::RawValue;

use crate::audience::Expr;
use crate::words::{AgentFilter, Device, Way};

/// The stored form of a message's shapes: JSON, or nothing when it has none.
pub fn formats_column(formats: &BTreeMap<String, Format>) -> Option<String> {
    (!formats.is_empty()).then(|| serde_json::to_string(formats).unwrap_or_default())
}

/// The shapes of a stored message, for its record.
pub fn formats_from(column: Option<&str>) -> Option<BTreeMap<String, Format>> {
    column.and_then(|text| serde_json::from_str(text).ok())
}

/// A directed message to record, with its recipients.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: u64,
    pub app: String,
    pub title: Option<String>,
    pub kind: i64,
    pub component: Option<String>,
    pub sender: Option<String>,
    /// Which agents' connections get it (the `agents` field, or an audience's `agent:` terms).
    pub agents: AgentFilter,
    /// Per-agent shapes (resolved: the app's templates and the message's own formats); a
    /// connection of one of these agents is owed the message in that shape.
    pub formats: BTreeMap<String, Format>,
    pub content: Box<RawValue>,
    /// Unix milliseconds.
    pub created: i64,
    pub expires: i64,
    pub recipients: Vec<String>,
    /// Steps of the message's channel chain run by [`Store::claim_steps`], for every
    /// recipient: (channel, due time in Unix ms).
    pub steps: Vec<(String, i64)>,
    /// Steps of recipients' own chains: (recipient, channel, due time in Unix ms).
    pub own_steps: Vec<(String, String, i64)>,
}

/// A step of a channel chain that came due, claimed by one node ([`Store::claim_steps`]), with
/// what running it needs.
#[derive(Debug, Clone)]
pub struct DueStep {
    pub id: u64,
    pub app: String,
    pub user: String,
    pub channel: String,
    /// The recipient's status: a step for an acked or expired recipient is cancelled.
    pub status: Status,
    pub title: Option<String>,
    pub kind: i64,
    pub component: Option<String>,
    pub sender: Option<String>,
    pub agents: AgentFilter,
    /// The message's shapes, as stored ([`formats_column`]).
    pub formats: Option<String>,
    pub content: Box<RawValue>,
    pub created: i64,
    pub expires: i64,
}

/// A channel's outcome for one recipient of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub id: u64,
    pub user: String,
    pub channel: String,
    pub status: ChannelStatus,
    pub reason: Option<String>,
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Recipients whose message expired before they acked it.
    pub expired: u64,
    /// Messages deleted after the retention of expired records.
    pub deleted: u64,
    /// The first of the `expired` recipients, as many as the sweep was asked to report (for
    /// webhooks).
    pub reported: Vec<ExpiredRecipient>,
}

/// A recipient whose message expired before it was acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredRecipient {
    pub app: String,
    pub id: u64,
    pub user: String,
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

/// What registering a device changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registered {
    /// The registration is new (not a refresh of the same device and way).
    pub created: bool,
    /// Other users whose registration of the same token was removed: a token belongs to one
    /// user at a time.
    pub taken_from: Vec<String>,
}

/// Which registrations to remove: one way of a device, every way of a device, or every device
/// of the user (logout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSelector {
    pub app: String,
    pub user: String,
    pub device: Option<String>,
    pub way: Option<Way>,
}

/// Filter and page of the registrations listed to an operator.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    pub app: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
    pub way: Option<Way>,
    /// 1-based.
    pub page: u64,
    pub size: u64,
}

/// The result of a vendor push to one recipient's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRecord {
    pub user: String,
    /// Some device's vendor accepted it (`pushed`); otherwise it `failed` with `reason`.
    pub pushed: bool,
    pub reason: Option<String>,
}

/// Which of a user's terms a write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TermSet {
    /// The tags: `tag:` terms.
    Tags,
    /// The attributes: terms of every other key (`lang:zh`, `region:eu`).
    Attributes,
}

impl TermSet {
    /// The prefix of every tag term.
    pub const TAG_PREFIX: &str = "tag:";

    pub fn holds(self, term: &str) -> bool {
        term.starts_with(Self::TAG_PREFIX) == (self == TermSet::Tags)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store is closed")]
    Closed,
    /// The disk (or the database's quota) is full: nothing more can be written until space
    /// returns. Reads still work.
    #[error("store: the disk is full")]
    Full,
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

    /// `pending` → `delivered` for these ids of this user; returns the ids that changed.
    async fn mark_delivered(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
    ) -> Result<Vec<u64>, StoreError>;

    /// `pending`/`delivered` → `acked`; returns the ids that changed.
    async fn ack(&self, app: &str, user: &str, ids: Vec<u64>) -> Result<Vec<u64>, StoreError>;

    async fn list(&self, query: MessageQuery) -> Result<Page<MessageRecord>, StoreError>;

    /// One message with every recipient's status.
    async fn get(&self, id: u64) -> Result<Option<MessageRecord>, StoreError>;

    /// Deletes a message and its recipients; false when there was none.
    async fn delete(&self, id: u64) -> Result<bool, StoreError>;

    /// Marks recipients of messages expired at `now` as `expired`, deletes messages expired
    /// before `now - keep_expired` (Unix ms) and idempotency keys lapsed at `now`. Lists at most
    /// `report` of the recipients it marked expired.
    async fn sweep(&self, now: i64, keep_expired: i64, report: usize) -> Result<Swept, StoreError>;

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

    /// Records the vendor push of message `id` for these recipients: `pushed`, or `failed` with
    /// the reason. Only recipients still owed the message (`pending`, `pushed`, `failed`)
    /// change; they stay owed to the live channel. Returns how many changed.
    async fn record_push(
        &self,
        app: &str,
        id: u64,
        results: Vec<PushRecord>,
    ) -> Result<u64, StoreError>;

    /// Claims at most `limit` steps of channel chains due at `now`, oldest first, for this node:
    /// each claimed step is due again at `retry_at`, so that a node that dies while running
    /// it leaves it to another (at least once). [`Store::record_steps`] settles them.
    async fn claim_steps(
        &self,
        now: i64,
        retry_at: i64,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError>;

    /// Records channel outcomes of recipients (inserting or replacing each channel's row of a
    /// recipient the message still has); a settled step is no longer due. Returns how many
    /// rows changed.
    async fn record_steps(&self, app: &str, records: Vec<StepRecord>) -> Result<u64, StoreError>;

    /// Registers (or refreshes) a device for one way, keyed by (app, user, device, way). The
    /// token is removed from every other registration of the app and way that holds it.
    async fn register_device(&self, device: Device) -> Result<Registered, StoreError>;

    /// Removes the selected registrations; returns how many.
    async fn remove_devices(&self, selector: DeviceSelector) -> Result<u64, StoreError>;

    /// Removes every registration of this token (the vendor said it is gone); returns how many.
    async fn remove_device_token(
        &self,
        app: &str,
        way: Way,
        token: &str,
    ) -> Result<u64, StoreError>;

    /// The registrations of these users (for the vendor fallback).
    async fn devices_of(&self, app: &str, users: &[String]) -> Result<Vec<Device>, StoreError>;

    /// Registrations by app, user, device and way, ordered by them.
    async fn list_devices(&self, query: DeviceQuery) -> Result<Page<Device>, StoreError>;

    /// Removes registrations last refreshed before `refreshed_before` (Unix ms); returns how
    /// many.
    async fn expire_devices(&self, refreshed_before: i64) -> Result<u64, StoreError>;
    /// Replaces a user's tags or attributes (`set`) with `terms`, each `key:value` of that set.
    async fn set_terms(
        &self,
        app: &str,
        user: &str,
        set: TermSet,
        terms: Vec<String>,
    ) -> Result<(), StoreError>;

    /// Every term of a user (tags and attributes), sorted.
    async fn terms(&self, app: &str, user: &str) -> Result<Vec<String>, StoreError>;

    /// The users of `app` for whom `expr` (an audience without `agent:` terms) holds, sorted, at
    /// most `limit`; only among `within` when given (the online users of a live audience).
    async fn resolve(
        &self,
        app: &str,
        expr: &Expr,
        within: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Replaces a user's preferences; empty ones are removed.
    async fn set_preferences(
        &self,
        app: &str,
        user: &str,
        preferences: Preferences,
    ) -> Result<(), StoreError>;

    /// The preferences of those of `users` that have some.
    async fn preferences(
        &self,
        app: &str,
        users: &[String],
    ) -> Result<Vec<(String, Preferences)>, StoreError>;

    /// Whether the store can be reached (for `/readyz`).
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_stores_have_the_same_migration_numbers() {
        let sqlite: Vec<i64> = super::sqlite::MIGRATIONS.iter().map(|(v, _)| *v).collect();
        let postgres: Vec<i64> = super::postgres::MIGRATIONS
            .iter()
            .map(|(v, _)| i64::from(*v))
            .collect();
        assert_eq!(sqlite, postgres);
        assert!(sqlite.iter().copied().eq(1..=sqlite.len() as i64));
    }
}
