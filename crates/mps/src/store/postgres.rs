//! The cluster store: PostgreSQL, shared by every node, through `tokio-postgres` and a
//! `deadpool-postgres` pool.
//!
//! Writes are group-committed like the embedded store's, by one writer task (`postgres/write.rs`);
//! reads take a pooled connection each.
//!
//! The schema is embedded SQL (`postgres/*.sql`), applied in order at start under an advisory
//! lock, and recorded in `mps_migrations`, so starting any number of nodes at once applies each
//! migration exactly once.
//!
//! Topic messages get a per-app `seq` under the app's row lock in `topic_apps`, held until
//! commit: `seq` order is commit order across nodes. A client resuming after a retained topic
//! message gets everything with a greater id and everything committed after it, whatever the
//! nodes' clocks said.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use mps_proto::{
    EventData, MessageRecord, Page, Preferences, PushedMessage, RecipientStatus, Status,
};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_postgres::types::{ToSql, Type};

mod write;

use write::{Write, Written};

use super::{
    ChannelRow, Claimed, DeviceQuery, DeviceSelector, DueStep, IdempotencyKey, KeyedWrite,
    MessageQuery, NewMessage, PushRecord, Registered, StepRecord, Store, StoreError, Swept,
    TermSet, TopicEntry, TopicReplay,
};
use crate::audience::Expr;
use crate::audience::sql::{self, Dialect, Param};
use crate::words::{Device, Way};

/// Writes waiting for the writer task; senders wait when it is full.
const WRITE_QUEUE: usize = 8192;
/// Waiting for a pooled connection or a new one longer than this means PostgreSQL is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a starting node waits for PostgreSQL to come up.
const START_WAIT: Duration = Duration::from_secs(30);

/// The migrations, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("postgres/001_init.sql")),
    (2, include_str!("postgres/002_idempotency.sql")),
    (3, include_str!("postgres/003_devices.sql")),
    (4, include_str!("postgres/004_audience.sql")),
    (5, include_str!("postgres/005_channels.sql")),
];

/// The stored `status` column: `pushed` and `failed` are pending rows with a `push` mark.
fn status_code(status: Status) -> i16 {
    match status {
        Status::Pending | Status::Pushed | Status::Failed => 0,
        Status::Delivered => 1,
        Status::Acked => 2,
        Status::Expired => 3,
    }
}

fn status_from(code: i16, push: Option<i16>) -> Status {
    match (code, push) {
        (0, Some(1)) => Status::Pushed,
        (0, Some(_)) => Status::Failed,
        (0, None) => Status::Pending,
        (1, _) => Status::Delivered,
        (2, _) => Status::Acked,
        _ => Status::Expired,
    }
}

/// The condition on a recipient row `r` that it is in `status`.
fn status_condition(status: Status) -> String {
    match status {
        Status::Pending => "r.status = 0 AND r.push IS NULL".into(),
        Status::Pushed => "r.status = 0 AND r.push = 1".into(),
        Status::Failed => "r.status = 0 AND r.push = 2".into(),
        other => format!("r.status = {}", status_code(other)),
    }
}

const DEVICE_COLUMNS: &str = "app, username, device, way, agent, token, components, refreshed";

fn device_from_row(row: &tokio_postgres::Row) -> Device {
    Device {
        app: row.get(0),
        user: row.get(1),
        device: row.get(2),
        // Only this store writes the column, from a `Way`.
        way: Way::parse(row.get(3)).unwrap_or(Way::Webpush),
        agent: row.get(4),
        token: row.get(5),
        components: row.get(6),
        refreshed: row.get(7),
    }
}

/// Every PostgreSQL or pool failure; the API answers it with 503 `store_unavailable`.
fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("postgres: {e}"))
}

pub struct PostgresStore {
    pool: Pool,
    writes: mpsc::Sender<(Write, write::Reply)>,
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
        migrate(&pool).await?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write::write_loop(pool.clone(), rx));
        Ok(PostgresStore { pool, writes: tx })
    }

    async fn write(&self, op: Write) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send((op, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn count(&self, op: Write) -> Result<u64, StoreError> {
        match self.write(op).await? {
            Written::Count(n) => Ok(n),
            _ => Err(backend("unexpected answer")),
        }
    }

    async fn ids(&self, op: Write) -> Result<Vec<u64>, StoreError> {
        match self.write(op).await? {
            Written::Ids(ids) => Ok(ids),
            _ => Err(backend("unexpected answer")),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| backend(format!("pool: {e}")))
    }
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| backend(format!("pool: {e}")))?;
    let tx = client.transaction().await.map_err(backend)?;
    // Nodes starting together wait for each other here.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7262730001);
         CREATE TABLE IF NOT EXISTS mps_migrations (version int PRIMARY KEY, applied bigint NOT NULL);",
    )
    .await
    .map_err(backend)?;
    let applied: BTreeSet<i32> = tx
        .query("SELECT version FROM mps_migrations", &[])
        .await
        .map_err(backend)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, "applying PostgreSQL migration");
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO mps_migrations (version, applied) VALUES ($1, $2)",
            &[version, &(crate::id::now_ms() as i64)],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

/// Content was valid JSON when stored; a damaged row still comes back as a JSON string.
fn raw(content: String) -> Box<RawValue> {
    RawValue::from_string(content).unwrap_or_else(|e| {
        RawValue::from_string(serde_json::Value::String(e.to_string()).to_string())
            .unwrap_or_default()
    })
}

const RECORD_COLUMNS: &str = "m.id, m.app, m.title, m.kind, m.component, m.sender, m.agents, m.content, m.created, m.expires, m.except_agents, m.formats";

fn record_from_row(row: &tokio_postgres::Row) -> MessageRecord {
    MessageRecord {
        id: row.get::<_, i64>(0).to_string(),
        app: row.get(1),
        title: row.get(2),
        kind: row.get(3),
        component: row.get(4),
        sender: row.get(5),
        agents: row.get(6),
        except_agents: row.get(10),
        formats: super::formats_from(row.get(11)),
        content: raw(row.get(7)),
        created: row.get(8),
        expires: row.get(9),
        summary: BTreeMap::new(),
        recipients: None,
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert(&self, message: NewMessage) -> Result<(), StoreError> {
        self.count(Write::Insert(message)).await.map(|_| ())
    }

    async fn pending(
        &self,
        app: &str,
        user: &str,
        agent: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PushedMessage>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT m.id, m.title, m.kind, m.component, m.sender, m.created, m.content, m.formats
                 FROM recipients r JOIN messages m ON m.id = r.message_id
                 WHERE r.app = $1 AND r.recipient = $2 AND r.status = 0 AND r.message_id > $3
                   AND m.expires > $4
                   AND ($5::text IS NULL OR ((m.agents IS NULL OR $5 = ANY(m.agents))
                        AND (m.except_agents IS NULL OR NOT ($5 = ANY(m.except_agents)))))
                 ORDER BY r.message_id LIMIT $6",
            )
            .await
            .map_err(backend)?;
        let now = crate::id::now_ms() as i64;
        let rows = client
            .query(
                &statement,
                &[&app, &user, &(after as i64), &now, &agent, &(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|row| {
                let mut message = PushedMessage {
                    id: row.get::<_, i64>(0).to_string(),
                    title: row.get(1),
                    kind: row.get(2),
                    component: row.get(3),
                    topic: None,
                    sender: row.get(4),
                    created: row.get(5),
                    ack: true,
                    event_data: EventData {
                        ext: raw(row.get(6)),
                    },
                };
                let formats: Option<&str> = row.get(7);
                crate::formats::apply_stored(&mut message, formats, agent);
                message
            })
            .collect())
    }

    async fn mark_delivered(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        self.ids(Write::Status {
            app: app.to_owned(),
            user: user.to_owned(),
            ids: ids.into_iter().map(|id| id as i64).collect(),
            to: Status::Delivered,
        })
        .await
    }

    async fn ack(&self, app: &str, user: &str, ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
        self.ids(Write::Status {
            app: app.to_owned(),
            user: user.to_owned(),
            ids: ids.into_iter().map(|id| id as i64).collect(),
            to: Status::Acked,
        })
        .await
    }

    async fn list(&self, query: MessageQuery) -> Result<Page<MessageRecord>, StoreError> {
        let mut filters: Vec<String> = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut add = |clause: &str, value: Box<dyn ToSql + Sync + Send>| {
            args.push(value);
            filters.push(clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(app) = query.app {
            add("m.app = ?", Box::new(app));
        }
        if let Some(sender) = query.sender {
            add("m.sender = ?", Box::new(sender));
        }
        if let Some(component) = query.component {
            add("m.component = ?", Box::new(component));
        }
        if let Some(from) = query.from {
            add("m.created >= ?", Box::new(from));
        }
        if let Some(to) = query.to {
            add("m.created < ?", Box::new(to));
        }
        match (query.receiver, query.status) {
            (Some(receiver), Some(status)) => {
                args.push(Box::new(receiver));
                filters.push(format!(
                    "m.id IN (SELECT r.message_id FROM recipients r WHERE r.recipient = ${} AND {})",
                    args.len(),
                    status_condition(status)
                ));
            }
            (Some(receiver), None) => add(
                "m.id IN (SELECT message_id FROM recipients WHERE recipient = ?)",
                Box::new(receiver),
            ),
            (None, Some(status)) => filters.push(format!(
                "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND {})",
                status_condition(status)
            )),
            (None, None) => {}
        }
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", filters.join(" AND "))
        };
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let size = query.size.clamp(1, 1000);
        let page = query.page.max(1);
        let offset = (page - 1).saturating_mul(size);
        let client = self.client().await?;
        let total: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM messages m {filter}"),
                &params,
            )
            .await
            .map_err(backend)?
            .get(0);
        let rows = client
            .query(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM messages m {filter}
                     ORDER BY m.id DESC LIMIT {size} OFFSET {offset}"
                ),
                &params,
            )
            .await
            .map_err(backend)?;
        let mut items: Vec<MessageRecord> = rows.iter().map(record_from_row).collect();
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        if !ids.is_empty() {
            let statement = client
                .prepare_cached(
                    "SELECT message_id, status, push, count(*) FROM recipients
                     WHERE message_id = ANY($1) GROUP BY message_id, status, push",
                )
                .await
                .map_err(backend)?;
            let mut by_id: HashMap<i64, &mut MessageRecord> = items
                .iter_mut()
                .filter_map(|r| Some((crate::id::read_back(&r.id)? as i64, r)))
                .collect();
            for row in client.query(&statement, &[&ids]).await.map_err(backend)? {
                if let Some(record) = by_id.get_mut(&row.get::<_, i64>(0)) {
                    *record
                        .summary
                        .entry(status_from(row.get(1), row.get(2)))
                        .or_default() += row.get::<_, i64>(3) as u64;
                }
            }
        }
        Ok(Page {
            items,
            page,
            size,
            total: total as u64,
        })
    }

    async fn get(&self, id: u64) -> Result<Option<MessageRecord>, StoreError> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                &format!("SELECT {RECORD_COLUMNS} FROM messages m WHERE m.id = $1"),
                &[&(id as i64)],
            )
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let mut record = record_from_row(&row);
        let mut rows: BTreeMap<String, Vec<ChannelRow>> = BTreeMap::new();
        for r in client
            .query(
                "SELECT recipient, channel, status, due, reason, updated FROM channel_steps
                 WHERE message_id = $1",
                &[&(id as i64)],
            )
            .await
            .map_err(backend)?
        {
            rows.entry(r.get(0)).or_default().push(ChannelRow {
                channel: r.get(1),
                status: r.get(2),
                due: r.get(3),
                reason: r.get(4),
                updated: r.get(5),
            });
        }
        let recipients: Vec<RecipientStatus> = client
            .query(
                "SELECT recipient, status, push, updated, reason FROM recipients
                 WHERE message_id = $1 ORDER BY recipient",
                &[&(id as i64)],
            )
            .await
            .map_err(backend)?
            .iter()
            .map(|r| {
                let status = status_from(r.get(1), r.get(2));
                let user: String = r.get(0);
                let updated = r.get(3);
                let reason: Option<String> = if status == Status::Failed {
                    r.get(4)
                } else {
                    None
                };
                let channels = super::channels_of(
                    status,
                    updated,
                    reason.as_deref(),
                    rows.remove(&user).unwrap_or_default(),
                );
                RecipientStatus {
                    user,
                    status,
                    updated,
                    reason,
                    channels,
                }
            })
            .collect();
        for r in &recipients {
            *record.summary.entry(r.status).or_default() += 1;
        }
        record.recipients = Some(recipients);
        Ok(Some(record))
    }

    async fn delete(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.count(Write::Delete(id)).await? > 0)
    }

    async fn sweep(&self, now: i64, keep_expired: i64, report: usize) -> Result<Swept, StoreError> {
        let sweep = Write::Sweep {
            now,
            keep_expired,
            report,
        };
        match self.write(sweep).await? {
            Written::Swept(s) => Ok(s),
            _ => Err(backend("unexpected answer")),
        }
    }

    async fn write_keyed(
        &self,
        key: IdempotencyKey,
        write: KeyedWrite,
    ) -> Result<Claimed, StoreError> {
        match self.write(Write::Keyed(key, write)).await? {
            Written::Claimed(claimed) => Ok(claimed),
            _ => Err(backend("unexpected answer")),
        }
    }

    async fn append_topic(
        &self,
        app: &str,
        entry: TopicEntry,
        created: i64,
        keep: u64,
    ) -> Result<(), StoreError> {
        self.count(Write::AppendTopic {
            app: app.to_owned(),
            entry,
            created,
            keep,
        })
        .await
        .map(|_| ())
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
        let client = self.client().await?;
        let known = client
            .query(
                "SELECT topic, trimmed, trimmed_seq FROM topics WHERE app = $1",
                &[&app],
            )
            .await
            .map_err(backend)?;
        // Everything with a greater id, as in any store; and when the client's last message is
        // in the log, also everything committed after it (a smaller id from a node whose clock
        // is behind, or a commit that took longer).
        let resume_seq: Option<i64> = client
            .query_opt(
                "SELECT seq FROM topic_log WHERE app = $1 AND id = $2",
                &[&app, &(after as i64)],
            )
            .await
            .map_err(backend)?
            .map(|row| row.get(0));
        let mut replay = TopicReplay::default();
        let mut matching = Vec::new();
        for row in known {
            let topic: String = row.get(0);
            let hits: Vec<&String> = patterns
                .iter()
                .filter(|p| crate::topic::matches(p, &topic))
                .collect();
            if hits.is_empty() {
                continue;
            }
            let cut = row.get::<_, i64>(1) as u64 > after
                || resume_seq.is_some_and(|seq| row.get::<_, i64>(2) > seq);
            if cut {
                for p in hits {
                    if !replay.truncated.contains(p) {
                        replay.truncated.push(p.clone());
                    }
                }
            }
            matching.push(topic);
        }
        replay.truncated.sort();
        if matching.is_empty() {
            return Ok(replay);
        }
        let rows = client
            .query(
                "SELECT id, topic, frame FROM topic_log
                 WHERE app = $1 AND topic = ANY($2) AND (id > $3 OR seq > $4)
                 ORDER BY id LIMIT $5",
                &[
                    &app,
                    &matching,
                    &(after as i64),
                    &resume_seq.unwrap_or(i64::MAX),
                    &(limit as i64),
                ],
            )
            .await
            .map_err(backend)?;
        replay.entries = rows
            .iter()
            .map(|row| TopicEntry {
                id: row.get::<_, i64>(0) as u64,
                topic: row.get(1),
                frame: row.get::<_, String>(2).into(),
            })
            .collect();
        Ok(replay)
    }

    async fn topics(&self) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT app, topic FROM topics", &[])
            .await
            .map_err(backend)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    async fn trim_topics(&self, cutoffs: Vec<(String, String, i64)>) -> Result<u64, StoreError> {
        self.count(Write::TrimTopics(cutoffs)).await
    }

    async fn record_push(
        &self,
        app: &str,
        id: u64,
        results: Vec<PushRecord>,
    ) -> Result<u64, StoreError> {
        self.count(Write::RecordPush {
            app: app.to_owned(),
            id: id as i64,
            results,
        })
        .await
    }

    async fn claim_steps(
        &self,
        now: i64,
        retry_at: i64,
        limit: usize,
    ) -> Result<Vec<DueStep>, StoreError> {
        // One statement: the rows another node is claiming are skipped, not waited for.
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH due AS (
                     SELECT message_id, recipient, channel FROM channel_steps
                     WHERE due IS NOT NULL AND due <= $1
                     ORDER BY due LIMIT $3
                     FOR UPDATE SKIP LOCKED),
                 claimed AS (
                     UPDATE channel_steps s SET due = $2, status = 'queued', updated = $1
                     FROM due
                     WHERE s.message_id = due.message_id AND s.recipient = due.recipient
                       AND s.channel = due.channel
                     RETURNING s.message_id, s.recipient, s.channel)
                 SELECT c.message_id, m.app, c.recipient, c.channel, r.status, r.push, m.title,
                        m.kind, m.component, m.sender, m.agents, m.except_agents, m.formats,
                        m.content, m.created, m.expires
                 FROM claimed c
                 JOIN messages m ON m.id = c.message_id
                 LEFT JOIN recipients r
                        ON r.message_id = c.message_id AND r.recipient = c.recipient",
                &[&now, &retry_at, &(limit as i64)],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| DueStep {
                id: r.get::<_, i64>(0) as u64,
                app: r.get(1),
                user: r.get(2),
                channel: r.get(3),
                // A recipient no longer there counts as expired.
                status: match r.get::<_, Option<i16>>(4) {
                    Some(code) => status_from(code, r.get(5)),
                    None => Status::Expired,
                },
                title: r.get(6),
                kind: r.get(7),
                component: r.get(8),
                sender: r.get(9),
                agents: super::agent_filter(r.get(10), r.get(11)),
                formats: r.get(12),
                content: raw(r.get(13)),
                created: r.get(14),
                expires: r.get(15),
            })
            .collect())
    }

    async fn record_steps(&self, app: &str, records: Vec<StepRecord>) -> Result<u64, StoreError> {
        self.count(Write::RecordSteps {
            app: app.to_owned(),
            records,
        })
        .await
    }

    async fn register_device(&self, device: Device) -> Result<Registered, StoreError> {
        match self.write(Write::RegisterDevice(device)).await? {
            Written::Registered(r) => Ok(r),
            _ => Err(backend("unexpected answer")),
        }
    }

    async fn remove_devices(&self, selector: DeviceSelector) -> Result<u64, StoreError> {
        self.count(Write::RemoveDevices(selector)).await
    }

    async fn remove_device_token(
        &self,
        app: &str,
        way: Way,
        token: &str,
    ) -> Result<u64, StoreError> {
        self.count(Write::RemoveToken {
            app: app.to_owned(),
            way,
            token: token.to_owned(),
        })
        .await
    }

    async fn devices_of(&self, app: &str, users: &[String]) -> Result<Vec<Device>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE app = $1 AND username = ANY($2)"
            ))
            .await
            .map_err(backend)?;
        Ok(client
            .query(&statement, &[&app, &users])
            .await
            .map_err(backend)?
            .iter()
            .map(device_from_row)
            .collect())
    }

    async fn list_devices(&self, query: DeviceQuery) -> Result<Page<Device>, StoreError> {
        let filter = "WHERE ($1::text IS NULL OR app = $1) AND ($2::text IS NULL OR username = $2)
                        AND ($3::text IS NULL OR device = $3) AND ($4::text IS NULL OR way = $4)";
        let way = query.way.map(Way::as_str);
        let args: [&(dyn ToSql + Sync); 4] = [&query.app, &query.user, &query.device, &way];
        let size = query.size.clamp(1, 1000);
        let page = query.page.max(1);
        let offset = (page - 1).saturating_mul(size);
        let client = self.client().await?;
        let total: i64 = client
            .query_one(&format!("SELECT count(*) FROM devices {filter}"), &args)
            .await
            .map_err(backend)?
            .get(0);
        let items = client
            .query(
                &format!(
                    "SELECT {DEVICE_COLUMNS} FROM devices {filter}
                     ORDER BY app, username, device, way LIMIT {size} OFFSET {offset}"
                ),
                &args,
            )
            .await
            .map_err(backend)?
            .iter()
            .map(device_from_row)
            .collect();
        Ok(Page {
            items,
            page,
            size,
            total: total as u64,
        })
    }

    async fn expire_devices(&self, refreshed_before: i64) -> Result<u64, StoreError> {
        self.count(Write::ExpireDevices(refreshed_before)).await
    }

    async fn set_terms(
        &self,
        app: &str,
        user: &str,
        set: TermSet,
        terms: Vec<String>,
    ) -> Result<(), StoreError> {
        self.count(Write::SetTerms {
            app: app.to_owned(),
            user: user.to_owned(),
            set,
            terms,
        })
        .await
        .map(|_| ())
    }

    async fn set_preferences(
        &self,
        app: &str,
        user: &str,
        preferences: Preferences,
    ) -> Result<(), StoreError> {
        let doc = (preferences != Preferences::default())
            .then(|| serde_json::to_string(&preferences).unwrap_or_default());
        self.count(Write::SetPreferences {
            app: app.to_owned(),
            user: user.to_owned(),
            doc,
        })
        .await
        .map(|_| ())
    }

    async fn preferences(
        &self,
        app: &str,
        users: &[String],
    ) -> Result<Vec<(String, Preferences)>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT user_id, doc FROM preferences WHERE app = $1 AND user_id = ANY($2)",
            )
            .await
            .map_err(backend)?;
        let rows = client
            .query(&statement, &[&app, &users])
            .await
            .map_err(backend)?;
        // Written by set_preferences; a damaged row mutes nothing.
        Ok(rows
            .iter()
            .map(|r| {
                let doc: String = r.get(1);
                (r.get(0), serde_json::from_str(&doc).unwrap_or_default())
            })
            .collect())
    }

    async fn terms(&self, app: &str, user: &str) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT tag FROM user_tags WHERE app = $1 AND user_id = $2 ORDER BY tag COLLATE \"C\"",
            )
            .await
            .map_err(backend)?;
        let rows = client
            .query(&statement, &[&app, &user])
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn resolve(
        &self,
        app: &str,
        expr: &Expr,
        within: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        let mut estimates = HashMap::new();
        if within.is_none() {
            let statement = client
                .prepare_cached(&sql::estimate_sql(Dialect::Postgres))
                .await
                .map_err(backend)?;
            for term in sql::terms_to_estimate(expr) {
                let row = client
                    .query_one(&statement, &[&app, &term])
                    .await
                    .map_err(backend)?;
                estimates.insert(term, row.get::<_, i64>(0) as u64);
            }
        }
        let query = sql::compile(Dialect::Postgres, app, expr, within, &estimates, limit);
        // Typed: a user term's query need not mention the app ($1).
        let types: Vec<Type> = query
            .params
            .iter()
            .map(|p| match p {
                Param::Text(_) => Type::TEXT,
                Param::List(_) => Type::TEXT_ARRAY,
            })
            .collect();
        let params: Vec<Box<dyn ToSql + Sync + Send>> = query
            .params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    Param::Text(text) => Box::new(text),
                    Param::List(list) => Box::new(list),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let statement = client
            .prepare_typed(&query.sql, &types)
            .await
            .map_err(backend)?;
        let rows = client.query(&statement, &refs).await.map_err(backend)?;
        let mut users: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        users.sort_unstable();
        users.dedup();
        Ok(users)
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
        migrate(&store.pool).await.unwrap();
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
