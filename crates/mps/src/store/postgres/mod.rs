//! The cluster store: PostgreSQL, shared by every node, through `tokio-postgres` and a
//! `deadpool-postgres` pool.
//!
//! Writes are group-committed like the embedded store's, by one writer task (`write.rs`); reads
//! take a pooled connection each (`read.rs`); the schema comes from numbered migrations
//! (`migrate.rs`).
//!
//! Topic messages get a per-app `seq` under the app's row lock in `topic_apps`, held until
//! commit: `seq` order is commit order across nodes. A client resuming after a retained topic
//! message gets everything with a greater id and everything committed after it, whatever the
//! nodes' clocks said.

mod migrate;
mod read;
mod topics;
mod write;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use mps_proto::{MessageRecord, Page, Preferences, PushedMessage, Status};
use tokio_postgres::NoTls;

#[cfg(test)]
pub(crate) use migrate::MIGRATIONS;

use super::write::Writes;
use super::{
    Claimed, DeviceQuery, DeviceSelector, DueStep, IdempotencyKey, KeyedWrite, MessageQuery,
    NewMessage, PushRecord, Registered, StepRecord, Store, StoreError, Swept, TermSet, TopicEntry,
    TopicReplay,
};
use crate::audience::Expr;
use crate::words::{Device, Way};

/// Waiting for a pooled connection or a new one longer than this means PostgreSQL is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a starting node waits for PostgreSQL to come up.
const START_WAIT: Duration = Duration::from_secs(30);

/// Every PostgreSQL or pool failure; the API answers it with 503 `store_unavailable`.
fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("postgres: {e}"))
}

pub struct PostgresStore {
    pool: Pool,
    writes: Writes,
}

impl PostgresStore {
    /// Connects (waiting up to half a minute for PostgreSQL to come up), applies migrations and
    /// starts the writer.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(backend)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("mps");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A connection broken by a restart of PostgreSQL reports itself closed.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(backend)?;
        let started = std::time::Instant::now();
        loop {
            match pool.get().await {
                Ok(_) => break,
                Err(e) if started.elapsed() < START_WAIT => {
                    tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(backend(format!("pool: {e}"))),
            }
        }
        migrate::migrate(&pool).await?;
        let (writes, queue) = Writes::new();
        tokio::spawn(write::write_loop(pool.clone(), queue));
        Ok(PostgresStore { pool, writes })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| backend(format!("pool: {e}")))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert(&self, message: NewMessage) -> Result<(), StoreError> {
        self.writes.insert(message).await
    }

    async fn pending(
        &self,
        app: &str,
        user: &str,
        agent: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PushedMessage>, StoreError> {
        read::pending(&self.client().await?, app, user, agent, after, limit).await
    }

    async fn mark_delivered(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        self.writes.status(app, user, ids, Status::Delivered).await
    }

    async fn ack(&self, app: &str, user: &str, ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
        self.writes.status(app, user, ids, Status::Acked).await
    }

    async fn list(&self, query: MessageQuery) -> Result<Page<MessageRecord>, StoreError> {
        read::list(&self.client().await?, query).await
    }

    async fn get(&self, id: u64) -> Result<Option<MessageRecord>, StoreError> {
        read::get(&self.client().await?, id).await
    }

    async fn delete(&self, id: u64) -> Result<bool, StoreError> {
        self.writes.delete(id).await
    }

    async fn sweep(&self, now: i64, keep_expired: i64, report: usize) -> Result<Swept, StoreError> {
        self.writes.sweep(now, keep_expired, report).await
    }

    async fn write_keyed(
        &self,
        key: IdempotencyKey,
        write: KeyedWrite,
    ) -> Result<Claimed, StoreError> {
        self.writes.keyed(key, write).await
    }

    async fn append_topic(
        &self,
        app: &str,
        entry: TopicEntry,
        created: i64,
        keep: u64,
    ) -> Result<(), StoreError> {
        self.writes.append_topic(app, entry, created, keep).await
    }

    async fn topic_since(
        &self,
        app: &str,
        patterns: &[String],
        after: u64,
        limit: usize,
    ) -> Result<TopicReplay, StoreError> {
        if patterns.is_empty() {
            return Ok(TopicReplay::default());
        }
        read::topic_since(&self.client().await?, app, patterns, after, limit).await
    }

    async fn topics(&self) -> Result<Vec<(String, String)>, StoreError> {
        read::topics(&self.client().await?).await
    }

    async fn trim_topics(&self, cutoffs: Vec<(String, String, i64)>) -> Result<u64, StoreError> {
        self.writes.trim_topics(cutoffs).await
    }

    async fn record_push(
        &self,
        app: &str,
        id: u64,
        results: Vec<PushRecord>,
    ) -> Result<u64, StoreError> {
        self.writes.record_push(app, id, results).await
    }

    async fn claim_steps(
        &self,
        now: i64,
        retry_at: i64,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError> {
        self.writes.claim_steps(now, retry_at, limit).await
    }

    async fn record_steps(&self, app: &str, records: Vec<StepRecord>) -> Result<u64, StoreError> {
        self.writes.record_steps(app, records).await
    }

    async fn register_device(&self, device: Device) -> Result<Registered, StoreError> {
        self.writes.register_device(device).await
    }

    async fn remove_devices(&self, selector: DeviceSelector) -> Result<u64, StoreError> {
        self.writes.remove_devices(selector).await
    }

    async fn remove_device_token(
        &self,
        app: &str,
        way: Way,
        token: &str,
    ) -> Result<u64, StoreError> {
        self.writes.remove_device_token(app, way, token).await
    }

    async fn devices_of(&self, app: &str, users: &[String]) -> Result<Vec<Device>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        read::devices_of(&self.client().await?, app, users).await
    }

    async fn list_devices(&self, query: DeviceQuery) -> Result<Page<Device>, StoreError> {
        read::list_devices(&self.client().await?, query).await
    }

    async fn expire_devices(&self, refreshed_before: i64) -> Result<u64, StoreError> {
        self.writes.expire_devices(refreshed_before).await
    }

    async fn set_terms(
        &self,
        app: &str,
        user: &str,
        set: TermSet,
        terms: Vec<String>,
    ) -> Result<(), StoreError> {
        self.writes.set_terms(app, user, set, terms).await
    }

    async fn terms(&self, app: &str, user: &str) -> Result<Vec<String>, StoreError> {
        read::terms(&self.client().await?, app, user).await
    }

    async fn resolve(
        &self,
        app: &str,
        expr: &Expr,
        within: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        read::resolve(&self.client().await?, app, expr, within, limit).await
    }

    async fn set_preferences(
        &self,
        app: &str,
        user: &str,
        preferences: Preferences,
    ) -> Result<(), StoreError> {
        self.writes.set_preferences(app, user, preferences).await
    }

    async fn preferences(
        &self,
        app: &str,
        users: &[String],
    ) -> Result<Vec<(String, Preferences)>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        read::preferences(&self.client().await?, app, users).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        tokio::time::timeout(CONNECT_TIMEOUT, client.simple_query("SELECT 1"))
            .await
            .map_err(|_| backend("no answer in time"))?
            .map(|_| ())
            .map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    //! Runs the store suite in a schema of its own, created for the run and dropped after.
    //! `MPS_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`) names the
    //! server. When it cannot be reached the test fails under `CI=true` and is skipped (with a
    //! note) elsewhere.

    use super::*;

    #[tokio::test]
    async fn passes_the_store_suite() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let store = PostgresStore::connect(&schema.url, 4).await.unwrap();
        // Applying migrations again is a no-op.
        migrate::migrate(&store.pool).await.unwrap();
        super::super::suite::run(&store).await;
        store.check().await.unwrap();
        schema.drop().await;
    }

    #[tokio::test]
    async fn resume_covers_messages_committed_later_with_smaller_ids() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let store = PostgresStore::connect(&schema.url, 4).await.unwrap();
        let entry = |id: u64| TopicEntry {
            id,
            topic: "news".into(),
            frame: format!(r#"{{"id":"{id}"}}"#).into(),
        };
        // 2000 is seen by the client; 1500 (from a node whose clock is behind) commits later.
        for id in [1000, 2000, 1500, 2500] {
            store
                .append_topic("default", entry(id), 1, 100)
                .await
                .unwrap();
        }
        let patterns = vec!["news".to_owned()];
        let replay = store
            .topic_since("default", &patterns, 2000, 100)
            .await
            .unwrap();
        let ids: Vec<u64> = replay.entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1500, 2500]);
        // Resuming from an id that is not in the log goes by id alone.
        let replay = store
            .topic_since("default", &patterns, 1200, 100)
            .await
            .unwrap();
        let ids: Vec<u64> = replay.entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1500, 2000, 2500]);
        schema.drop().await;
    }

    /// A fresh schema, with the URL that makes it the connection's search path.
    pub struct TestSchema {
        base: String,
        name: String,
        pub url: String,
    }

    impl TestSchema {
        pub async fn create() -> Option<TestSchema> {
            let base = std::env::var("MPS_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let client = match tokio_postgres::connect(&base, NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    client
                }
                Err(e) => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "PostgreSQL at {base} is needed under CI: {e}"
                    );
                    eprintln!("skipped: PostgreSQL at {base} unreachable ({e})");
                    return None;
                }
            };
            let name = format!("mps_test_{}", hex::encode(rand::random::<[u8; 6]>()));
            client
                .batch_execute(&format!("CREATE SCHEMA {name}"))
                .await
                .unwrap();
            let separator = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{separator}options=-c%20search_path%3D{name}");
            Some(TestSchema { base, name, url })
        }

        pub async fn drop(self) {
            if let Ok((client, connection)) = tokio_postgres::connect(&self.base, NoTls).await {
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
                    .await;
            }
        }
    }
}
