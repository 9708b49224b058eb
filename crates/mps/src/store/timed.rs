//! [`TimedStore`]: any [`Store`] with the duration and the failures of each operation in
//! metrics (`mps_store_seconds{op}`, `mps_store_errors_total{op}`), so PostgreSQL and SQLite
//! are watched the same way. The handles are looked up once, when the store is opened.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use metrics::{Counter, Histogram};
use mps_proto::{MessageRecord, Page, PushedMessage};

use super::*;
use crate::words::{Device, Way};

/// One operation's duration histogram and failure counter.
struct Timer {
    seconds: Histogram,
    errors: Counter,
}

impl Timer {
    fn new(op: &'static str) -> Timer {
        Timer {
            seconds: metrics::histogram!("mps_store_seconds", "op" => op),
            errors: metrics::counter!("mps_store_errors_total", "op" => op),
        }
    }

    async fn time<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.seconds.record(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors.increment(1);
        }
        result
    }
}

macro_rules! operations {
    ($($op:ident),* $(,)?) => {
        /// A timer per [`Store`] operation, named as the method.
        struct Timers {
            $($op: Timer,)*
        }

        impl Timers {
            fn new() -> Timers {
                Timers {
                    $($op: Timer::new(stringify!($op)),)*
                }
            }
        }
    };
}

operations!(
    insert,
    pending,
    mark_delivered,
    ack,
    list,
    get,
    delete,
    sweep,
    append_topic,
    topic_since,
    topics,
    trim_topics,
    write_keyed,
    record_push,
    claim_steps,
    record_steps,
    register_device,
    remove_devices,
    remove_device_token,
    devices_of,
    list_devices,
    expire_devices,
    set_terms,
    terms,
    resolve,
    set_preferences,
    preferences,
    check,
);

/// Times every call to the store it wraps.
pub struct TimedStore {
    inner: Arc<dyn Store>,
    timers: Timers,
}

impl TimedStore {
    pub fn new(inner: Arc<dyn Store>) -> TimedStore {
        TimedStore {
            inner,
            timers: Timers::new(),
        }
    }
}

#[async_trait]
impl Store for TimedStore {
    async fn set_terms(
        &self,
        app: &str,
        user: &str,
        set: TermSet,
        terms: Vec<String>,
    ) -> Result<(), StoreError> {
        self.timers
            .set_terms
            .time(self.inner.set_terms(app, user, set, terms))
            .await
    }

    async fn terms(&self, app: &str, user: &str) -> Result<Vec<String>, StoreError> {
        self.timers.terms.time(self.inner.terms(app, user)).await
    }

    async fn resolve(
        &self,
        app: &str,
        expr: &crate::audience::Expr,
        within: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.timers
            .resolve
            .time(self.inner.resolve(app, expr, within, limit))
            .await
    }

    async fn set_preferences(
        &self,
        app: &str,
        user: &str,
        preferences: Preferences,
    ) -> Result<(), StoreError> {
        self.timers
            .set_preferences
            .time(self.inner.set_preferences(app, user, preferences))
            .await
    }

    async fn preferences(
        &self,
        app: &str,
        users: &[String],
    ) -> Result<Vec<(String, Preferences)>, StoreError> {
        self.timers
            .preferences
            .time(self.inner.preferences(app, users))
            .await
    }

    async fn insert(&self, message: NewMessage) -> Result<(), StoreError> {
        self.timers.insert.time(self.inner.insert(message)).await
    }

    async fn pending(
        &self,
        app: &str,
        user: &str,
        agent: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PushedMessage>, StoreError> {
        self.timers
            .pending
            .time(self.inner.pending(app, user, agent, after, limit))
            .await
    }

    async fn mark_delivered(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        self.timers
            .mark_delivered
            .time(self.inner.mark_delivered(app, user, ids))
            .await
    }

    async fn ack(&self, app: &str, user: &str, ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
        self.timers.ack.time(self.inner.ack(app, user, ids)).await
    }

    async fn list(&self, query: MessageQuery) -> Result<Page<MessageRecord>, StoreError> {
        self.timers.list.time(self.inner.list(query)).await
    }

    async fn get(&self, id: u64) -> Result<Option<MessageRecord>, StoreError> {
        self.timers.get.time(self.inner.get(id)).await
    }

    async fn delete(&self, id: u64) -> Result<bool, StoreError> {
        self.timers.delete.time(self.inner.delete(id)).await
    }

    async fn sweep(&self, now: i64, keep_expired: i64, report: usize) -> Result<Swept, StoreError> {
        self.timers
            .sweep
            .time(self.inner.sweep(now, keep_expired, report))
            .await
    }

    async fn append_topic(
        &self,
        app: &str,
        entry: TopicEntry,
        created: i64,
        keep: u64,
    ) -> Result<(), StoreError> {
        self.timers
            .append_topic
            .time(self.inner.append_topic(app, entry, created, keep))
            .await
    }

    async fn topic_since(
        &self,
        app: &str,
        patterns: &[String],
        after: u64,
        limit: usize,
    ) -> Result<TopicReplay, StoreError> {
        self.timers
            .topic_since
            .time(self.inner.topic_since(app, patterns, after, limit))
            .await
    }

    async fn topics(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.timers.topics.time(self.inner.topics()).await
    }

    async fn trim_topics(&self, cutoffs: Vec<(String, String, i64)>) -> Result<u64, StoreError> {
        self.timers
            .trim_topics
            .time(self.inner.trim_topics(cutoffs))
            .await
    }

    async fn write_keyed(
        &self,
        key: IdempotencyKey,
        write: KeyedWrite,
    ) -> Result<Claimed, StoreError> {
        self.timers
            .write_keyed
            .time(self.inner.write_keyed(key, write))
            .await
    }

    async fn record_push(
        &self,
        app: &str,
        id: u64,
        results: Vec<PushRecord>,
    ) -> Result<u64, StoreError> {
        self.timers
            .record_push
            .time(self.inner.record_push(app, id, results))
            .await
    }

    async fn claim_steps(
        &self,
        now: i64,
        retry_at: i64,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError> {
        self.timers
            .claim_steps
            .time(self.inner.claim_steps(now, retry_at, limit))
            .await
    }

    async fn record_steps(&self, app: &str, records: Vec<StepRecord>) -> Result<u64, StoreError> {
        self.timers
            .record_steps
            .time(self.inner.record_steps(app, records))
            .await
    }

    async fn register_device(&self, device: Device) -> Result<Registered, StoreError> {
        self.timers
            .register_device
            .time(self.inner.register_device(device))
            .await
    }

    async fn remove_devices(&self, selector: DeviceSelector) -> Result<u64, StoreError> {
        self.timers
            .remove_devices
            .time(self.inner.remove_devices(selector))
            .await
    }

    async fn remove_device_token(
        &self,
        app: &str,
        way: Way,
        token: &str,
    ) -> Result<u64, StoreError> {
        self.timers
            .remove_device_token
            .time(self.inner.remove_device_token(app, way, token))
            .await
    }

    async fn devices_of(&self, app: &str, users: &[String]) -> Result<Vec<Device>, StoreError> {
        self.timers
            .devices_of
            .time(self.inner.devices_of(app, users))
            .await
    }

    async fn list_devices(&self, query: DeviceQuery) -> Result<Page<Device>, StoreError> {
        self.timers
            .list_devices
            .time(self.inner.list_devices(query))
            .await
    }

    async fn expire_devices(&self, refreshed_before: i64) -> Result<u64, StoreError> {
        self.timers
            .expire_devices
            .time(self.inner.expire_devices(refreshed_before))
            .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.timers.check.time(self.inner.check()).await
    }
}
