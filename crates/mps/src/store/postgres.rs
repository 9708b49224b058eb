//! The cluster store: PostgreSQL, shared by every node, through `tokio-postgres` and a
//! `deadpool-postgres` pool.
//!
//! Writes are group-committed like the embedded store's: one writer task takes every write that
//! arrived while the previous commit ran and applies them in one transaction, sending all of its
//! statements at once (pipelined on one connection), so a batch costs about one round trip and
//! one WAL flush. If the batch fails on one bad write, each write is retried in a transaction of
//! its own so that it fails alone. Reads take a pooled connection each.
//!
//! The schema is embedded SQL (`postgres/*.sql`), applied in order at start under an advisory
//! lock, and recorded in `mps_migrations`, so starting any number of nodes at once applies each
//! migration exactly once.
//!
//! Topic messages get a per-app `seq` under the app's row lock in `topic_apps`, held until
//! commit: `seq` order is commit order across nodes. A client resuming after a retained topic
//! message gets everything committed after it, whatever the nodes' clocks said.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use mps_proto::{EventData, MessageRecord, Page, PushedMessage, RecipientStatus, Status};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::{MessageQuery, NewMessage, Store, StoreError, Swept, TopicEntry, TopicReplay};

/// Writes waiting for the writer task; senders wait when it is full.
const WRITE_QUEUE: usize = 8192;
/// Most writes folded into one transaction.
const MAX_BATCH: usize = 2048;
/// Waiting for a pooled connection or a new one longer than this means PostgreSQL is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries at start while PostgreSQL is not there yet, one second apart.
const START_TRIES: u32 = 30;

/// The migrations, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("postgres/001_init.sql"))];

fn status_code(status: Status) -> i16 {
    match status {
        Status::Pending => 0,
        Status::Delivered => 1,
        Status::Acked => 2,
        Status::Expired => 3,
    }
}

fn status_from(code: i16) -> Status {
    match code {
        0 => Status::Pending,
        1 => Status::Delivered,
        2 => Status::Acked,
        _ => Status::Expired,
    }
}

/// Every PostgreSQL or pool failure; the API answers it with 503 `store_unavailable`.
fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("postgres: {e}"))
}

enum Write {
    Insert(NewMessage),
    Status {
        app: String,
        user: String,
        ids: Vec<i64>,
        to: Status,
    },
    Delete(u64),
    Sweep {
        now: i64,
        keep_expired: i64,
    },
    AppendTopic {
        app: String,
        entry: TopicEntry,
        created: i64,
        keep: u64,
    },
    TrimTopics(Vec<(String, String, i64)>),
}

enum Written {
    Count(u64),
    Swept(Swept),
}

type Reply = oneshot::Sender<Result<Written, StoreError>>;

pub struct PostgresStore {
    pool: Pool,
    writes: mpsc::Sender<(Write, Reply)>,
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
        let mut tries = 0;
        loop {
            match migrate(&pool).await {
                Ok(()) => break,
                Err(e) if tries + 1 < START_TRIES && e.to_string().contains("pool") => {
                    tries += 1;
                    tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(write_loop(pool.clone(), rx));
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
            Written::Swept(_) => Err(backend("unexpected answer")),
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

/// Why a batch did not commit.
enum Failure {
    /// No connection, or it broke: every write of the batch fails the same way.
    Unavailable(String),
    /// PostgreSQL refused a statement: retry the writes one by one.
    Refused(String),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.code().is_some() {
            Failure::Refused(e.to_string())
        } else {
            Failure::Unavailable(e.to_string())
        }
    }
}

async fn write_loop(pool: Pool, mut rx: mpsc::Receiver<(Write, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let started = Instant::now();
        let size = batch.len();
        let ops: Vec<&Write> = batch.iter().map(|(op, _)| op).collect();
        let results: Vec<Result<Written, StoreError>> = match commit(&pool, &ops).await {
            Ok(written) => written.into_iter().map(Ok).collect(),
            Err(Failure::Refused(e)) if size > 1 => {
                tracing::warn!(error = %e, size, "batch refused; committing its writes one by one");
                let mut results = Vec::with_capacity(size);
                for op in &ops {
                    results.push(match commit(&pool, &[op]).await {
                        Ok(mut written) => written.pop().ok_or_else(|| backend("no answer")),
                        Err(Failure::Refused(e) | Failure::Unavailable(e)) => Err(backend(e)),
                    });
                }
                results
            }
            Err(Failure::Refused(e) | Failure::Unavailable(e)) => {
                tracing::error!(error = %e, "store commit failed");
                (0..size).map(|_| Err(backend(&e))).collect()
            }
        };
        metrics::histogram!("mps_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("mps_store_commit_batch").record(size as f64);
        for ((_, reply), result) in batch.drain(..).zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Applies writes in one transaction, their statements pipelined.
async fn commit(pool: &Pool, ops: &[&Write]) -> Result<Vec<Written>, Failure> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| Failure::Unavailable(format!("pool: {e}")))?;
    let tx = client.transaction().await?;
    // Topic sequence numbers: lock the apps' counters in name order (two nodes never wait on
    // each other in a cycle), number the appends, store the counters back before commit.
    let apps: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            Write::AppendTopic { app, .. } => Some(app.clone()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut counters: HashMap<String, i64> = HashMap::new();
    if !apps.is_empty() {
        tx.execute(
            "INSERT INTO topic_apps (app, seq) SELECT unnest($1::text[]), 0 ON CONFLICT DO NOTHING",
            &[&apps],
        )
        .await?;
        for row in tx
            .query(
                "SELECT app, seq FROM topic_apps WHERE app = ANY($1) ORDER BY app FOR UPDATE",
                &[&apps],
            )
            .await?
        {
            counters.insert(row.get(0), row.get(1));
        }
    }
    let seqs: Vec<i64> = ops
        .iter()
        .map(|op| match op {
            Write::AppendTopic { app, .. } => {
                let counter = counters.entry(app.clone()).or_default();
                *counter += 1;
                *counter
            }
            _ => 0,
        })
        .collect();
    let written = futures_util::future::try_join_all(
        ops.iter().zip(seqs).map(|(op, seq)| apply(&tx, op, seq)),
    )
    .await?;
    if !counters.is_empty() {
        let (names, values): (Vec<String>, Vec<i64>) = counters.into_iter().unzip();
        tx.execute(
            "UPDATE topic_apps SET seq = v.seq FROM unnest($1::text[], $2::int8[]) AS v(app, seq)
             WHERE topic_apps.app = v.app",
            &[&names, &values],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(written)
}

async fn apply(
    tx: &Transaction<'_>,
    op: &Write,
    seq: i64,
) -> Result<Written, tokio_postgres::Error> {
    match op {
        Write::Insert(m) => {
            let statement = tx
                .prepare_cached(
                    "WITH m AS (
                        INSERT INTO messages (id, app, title, kind, component, sender, agents, content, created, expires)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10))
                     INSERT INTO recipients (message_id, app, recipient, status, updated)
                     SELECT $1, $2, u, 0, $9 FROM unnest($11::text[]) AS u
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            tx.execute(
                &statement,
                &[
                    &(m.id as i64),
                    &m.app,
                    &m.title,
                    &m.kind,
                    &m.component,
                    &m.sender,
                    &m.agents,
                    &m.content.get(),
                    &m.created,
                    &m.created.max(m.expires),
                    &m.recipients,
                ],
            )
            .await?;
            Ok(Written::Count(1))
        }
        Write::Status { app, user, ids, to } => {
            // Delivery moves only pending rows; an ack moves pending or delivered ones.
            let statement = tx
                .prepare_cached(
                    "UPDATE recipients SET status = $1, updated = $2
                     WHERE app = $3 AND recipient = $4 AND message_id = ANY($5) AND status < $1",
                )
                .await?;
            let now = crate::id::now_ms() as i64;
            let changed = tx
                .execute(&statement, &[&status_code(*to), &now, app, user, ids])
                .await?;
            Ok(Written::Count(changed))
        }
        Write::Delete(id) => {
            let statement = tx
                .prepare_cached(
                    "WITH r AS (DELETE FROM recipients WHERE message_id = $1)
                     DELETE FROM messages WHERE id = $1",
                )
                .await?;
            Ok(Written::Count(
                tx.execute(&statement, &[&(*id as i64)]).await?,
            ))
        }
        Write::Sweep { now, keep_expired } => sweep(tx, *now, *keep_expired).await,
        Write::AppendTopic {
            app,
            entry,
            created,
            keep,
        } => {
            tx.execute(
                "INSERT INTO topics (app, topic) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[app, &entry.topic],
            )
            .await?;
            let frame = std::str::from_utf8(&entry.frame).unwrap_or("{}");
            let statement = tx
                .prepare_cached(
                    "INSERT INTO topic_log (app, topic, id, seq, created, frame)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (app, id) DO UPDATE SET frame = EXCLUDED.frame",
                )
                .await?;
            tx.execute(
                &statement,
                &[app, &entry.topic, &(entry.id as i64), &seq, created, &frame],
            )
            .await?;
            let keep = (*keep).min(i64::MAX as u64) as i64;
            let statement = tx
                .prepare_cached(
                    "SELECT seq FROM topic_log WHERE app = $1 AND topic = $2
                     ORDER BY seq DESC OFFSET $3 LIMIT 1",
                )
                .await?;
            if let Some(row) = tx
                .query_opt(&statement, &[app, &entry.topic, &keep])
                .await?
            {
                let upto: i64 = row.get(0);
                trim_topic(tx, app, &entry.topic, "seq <= $3", &upto).await?;
            }
            Ok(Written::Count(1))
        }
        Write::TrimTopics(cutoffs) => {
            let mut dropped = 0;
            for (app, topic, cutoff) in cutoffs {
                dropped += trim_topic(tx, app, topic, "created < $3", cutoff).await?;
            }
            Ok(Written::Count(dropped))
        }
    }
}

/// Drops a topic's log entries matching `condition` (on `$3`) and raises its watermarks.
async fn trim_topic(
    tx: &Transaction<'_>,
    app: &str,
    topic: &str,
    condition: &str,
    value: &i64,
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(&format!(
            "WITH d AS (DELETE FROM topic_log WHERE app = $1 AND topic = $2 AND {condition}
                        RETURNING id, seq),
                  u AS (UPDATE topics SET trimmed = greatest(trimmed, (SELECT max(id) FROM d)),
                                          trimmed_seq = greatest(trimmed_seq, (SELECT max(seq) FROM d))
                        WHERE app = $1 AND topic = $2)
             SELECT count(*) FROM d"
        ))
        .await?;
    let row = tx.query_one(&statement, &[&app, &topic, value]).await?;
    Ok(row.get::<_, i64>(0) as u64)
}

async fn sweep(
    tx: &Transaction<'_>,
    now: i64,
    keep_expired: i64,
) -> Result<Written, tokio_postgres::Error> {
    // One node sweeps at a time; the others find the row locked and skip this round.
    let Some(row) = tx
        .query_opt(
            "SELECT expired_upto FROM sweeps WHERE id = 1 FOR UPDATE SKIP LOCKED",
            &[],
        )
        .await?
    else {
        return Ok(Written::Swept(Swept::default()));
    };
    // Look a minute back past the last sweep: messages stored by a node whose clock is behind.
    let since: i64 = row.get::<_, i64>(0).saturating_sub(60_000);
    let expired = tx
        .execute(
            "UPDATE recipients SET status = 3, updated = $1
             WHERE status < 2 AND message_id IN
                 (SELECT id FROM messages WHERE expires > $2 AND expires <= $1)",
            &[&now, &since],
        )
        .await?;
    tx.execute(
        "UPDATE sweeps SET expired_upto = greatest(expired_upto, $1) WHERE id = 1",
        &[&now],
    )
    .await?;
    let cutoff = now.saturating_sub(keep_expired);
    let deleted = tx
        .execute(
            "WITH r AS (DELETE FROM recipients WHERE message_id IN
                          (SELECT id FROM messages WHERE expires <= $1))
             DELETE FROM messages WHERE expires <= $1",
            &[&cutoff],
        )
        .await?;
    Ok(Written::Swept(Swept { expired, deleted }))
}

/// Content was valid JSON when stored; a damaged row still comes back as a JSON string.
fn raw(content: String) -> Box<RawValue> {
    RawValue::from_string(content).unwrap_or_else(|e| {
        RawValue::from_string(serde_json::Value::String(e.to_string()).to_string())
            .unwrap_or_default()
    })
}

const RECORD_COLUMNS: &str = "m.id, m.app, m.title, m.kind, m.component, m.sender, m.agents, m.content, m.created, m.expires";

fn record_from_row(row: &tokio_postgres::Row) -> MessageRecord {
    MessageRecord {
        id: row.get::<_, i64>(0).to_string(),
        app: row.get(1),
        title: row.get(2),
        kind: row.get(3),
        component: row.get(4),
        sender: row.get(5),
        agents: row.get(6),
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
                "SELECT m.id, m.title, m.kind, m.component, m.sender, m.created, m.content
                 FROM recipients r JOIN messages m ON m.id = r.message_id
                 WHERE r.app = $1 AND r.recipient = $2 AND r.status = 0 AND r.message_id > $3
                   AND m.expires > $4
                   AND ($5::text IS NULL OR m.agents IS NULL OR $5 = ANY(m.agents))
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
            .map(|row| PushedMessage {
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
            })
            .collect())
    }

    async fn mark_delivered(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
    ) -> Result<u64, StoreError> {
        self.count(Write::Status {
            app: app.to_owned(),
            user: user.to_owned(),
            ids: ids.into_iter().map(|id| id as i64).collect(),
            to: Status::Delivered,
        })
        .await
    }

    async fn ack(&self, app: &str, user: &str, ids: Vec<u64>) -> Result<u64, StoreError> {
        self.count(Write::Status {
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
                args.push(Box::new(status_code(status)));
                filters.push(format!(
                    "m.id IN (SELECT message_id FROM recipients WHERE recipient = ${} AND status = ${})",
                    args.len() - 1,
                    args.len()
                ));
            }
            (Some(receiver), None) => add(
                "m.id IN (SELECT message_id FROM recipients WHERE recipient = ?)",
                Box::new(receiver),
            ),
            (None, Some(status)) => add(
                "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.status = ?)",
                Box::new(status_code(status)),
            ),
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
                    "SELECT message_id, status, count(*) FROM recipients
                     WHERE message_id = ANY($1) GROUP BY message_id, status",
                )
                .await
                .map_err(backend)?;
            let mut by_id: HashMap<i64, &mut MessageRecord> = items
                .iter_mut()
                .map(|r| (r.id.parse().unwrap_or_default(), r))
                .collect();
            for row in client.query(&statement, &[&ids]).await.map_err(backend)? {
                if let Some(record) = by_id.get_mut(&row.get::<_, i64>(0)) {
                    record
                        .summary
                        .insert(status_from(row.get(1)), row.get::<_, i64>(2) as u64);
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
        let recipients: Vec<RecipientStatus> = client
            .query(
                "SELECT recipient, status, updated FROM recipients WHERE message_id = $1
                 ORDER BY recipient",
                &[&(id as i64)],
            )
            .await
            .map_err(backend)?
            .iter()
            .map(|r| RecipientStatus {
                user: r.get(0),
                status: status_from(r.get(1)),
                updated: r.get(2),
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

    async fn sweep(&self, now: i64, keep_expired: i64) -> Result<Swept, StoreError> {
        match self.write(Write::Sweep { now, keep_expired }).await? {
            Written::Swept(s) => Ok(s),
            Written::Count(_) => Err(backend("unexpected answer")),
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
        // Resume by commit order after the client's last message when it is in the log, else
        // by id (its last message was not a retained topic message of this app).
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
            let cut = match resume_seq {
                Some(seq) => row.get::<_, i64>(2) > seq,
                None => row.get::<_, i64>(1) as u64 > after,
            };
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
        let (condition, bound) = match resume_seq {
            Some(seq) => ("seq > $3", seq),
            None => ("id > $3", after as i64),
        };
        let rows = client
            .query(
                &format!(
                    "SELECT id, topic, frame FROM topic_log
                     WHERE app = $1 AND topic = ANY($2) AND {condition}
                     ORDER BY seq LIMIT $4"
                ),
                &[&app, &matching, &bound, &(limit as i64)],
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
