//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, so a commit is on disk when it
//! returns. One writer thread owns the write connection and commits every write that arrived
//! while the previous commit ran in one transaction (group commit); reads use a small pool of
//! read-only connections on the blocking thread pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use mps_proto::{
    EventData, MessageRecord, Page, Preferences, PushedMessage, RecipientStatus, Status,
};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::{
    ChannelRow, Claimed, DeviceQuery, DeviceSelector, DueStep, ExpiredRecipient, IdempotencyKey,
    KeyedWrite, MessageQuery, NewMessage, PushRecord, Registered, StepRecord, Store, StoreError,
    Swept, TermSet, TopicEntry, TopicReplay,
};
use crate::audience::Expr;
use crate::audience::sql::{self, Dialect, Param};
use crate::words::AgentFilter;
use crate::words::{Device, Way};

/// Writes waiting for the writer thread; senders wait when it is full.
const WRITE_QUEUE: usize = 8192;
/// Most writes folded into one transaction.
const MAX_BATCH: usize = 4096;
const READERS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id        INTEGER PRIMARY KEY,
    app       TEXT NOT NULL,
    title     TEXT,
    kind      INTEGER NOT NULL,
    component TEXT,
    sender    TEXT,
    agents    TEXT,
    except_agents TEXT,
    formats   TEXT,
    content   TEXT NOT NULL,
    created   INTEGER NOT NULL,
    expires   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_expires ON messages(expires);
-- Partial: most messages have no sender or component, and an index entry per message costs
-- the writer on every insert.
CREATE INDEX IF NOT EXISTS messages_by_sender ON messages(app, sender, id) WHERE sender IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_by_component ON messages(app, component, id)
    WHERE component IS NOT NULL;
CREATE TABLE IF NOT EXISTS recipients (
    message_id INTEGER NOT NULL,
    app        TEXT NOT NULL,
    user       TEXT NOT NULL,
    -- 0 pending, 1 delivered, 2 acked, 3 expired.
    status     INTEGER NOT NULL,
    updated    INTEGER NOT NULL,
    -- Vendor push of a message still pending: NULL none, 1 pushed, 2 failed (with reason).
    push       INTEGER,
    reason     TEXT,
    PRIMARY KEY (message_id, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_user ON recipients(app, user, status, message_id);
CREATE TABLE IF NOT EXISTS topics (
    app     TEXT NOT NULL,
    topic   TEXT NOT NULL,
    -- Greatest id dropped from the log: a client whose last id is below it missed messages.
    trimmed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topic_log (
    app     TEXT NOT NULL,
    topic   TEXT NOT NULL,
    id      INTEGER NOT NULL,
    created INTEGER NOT NULL,
    frame   TEXT NOT NULL,
    PRIMARY KEY (app, topic, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    app        TEXT NOT NULL,
    key        TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    created    INTEGER NOT NULL,
    expires    INTEGER NOT NULL,
    PRIMARY KEY (app, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency(expires);
-- Device registrations (push modes). A token belongs to one registration of an app and way.
CREATE TABLE IF NOT EXISTS devices (
    app        TEXT NOT NULL,
    user       TEXT NOT NULL,
    device     TEXT NOT NULL,
    way        TEXT NOT NULL,
    agent      TEXT NOT NULL,
    token      TEXT NOT NULL,
    components TEXT NOT NULL,  -- JSON array
    refreshed  INTEGER NOT NULL,
    PRIMARY KEY (app, user, device, way)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS devices_token ON devices(app, way, token);
CREATE INDEX IF NOT EXISTS devices_refreshed ON devices(refreshed);
-- Tags and attributes of users as `key:value` terms (`tag:vip`, `lang:zh`). The primary key
-- serves a user's terms and the per-user checks of an audience; the index, the users of a term.
CREATE TABLE IF NOT EXISTS user_tags (
    app     TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tag     TEXT NOT NULL,
    PRIMARY KEY (app, user_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_tags_tag ON user_tags(app, tag, user_id);
-- Channels of a directed message per recipient besides the live one and the vendor push: the
-- steps of its chain (`due` until they ran, Unix ms) and their outcomes (`status`, a
-- `ChannelStatus`).
CREATE TABLE IF NOT EXISTS channel_steps (
    message_id INTEGER NOT NULL,
    app        TEXT NOT NULL,
    user       TEXT NOT NULL,
    channel    TEXT NOT NULL,
    status     TEXT NOT NULL,
    due        INTEGER,
    reason     TEXT,
    updated    INTEGER NOT NULL,
    PRIMARY KEY (message_id, user, channel)
) WITHOUT ROWID;
-- The chain's runner: steps that came due.
CREATE INDEX IF NOT EXISTS channel_steps_due ON channel_steps(due) WHERE due IS NOT NULL;
-- Users' preferences about vendor push, as JSON.
CREATE TABLE IF NOT EXISTS preferences (
    app     TEXT NOT NULL,
    user_id TEXT NOT NULL,
    doc     TEXT NOT NULL,
    PRIMARY KEY (app, user_id)
) WITHOUT ROWID;
";

/// Brings a store created by an earlier version up to `SCHEMA`.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_push = conn
        .prepare("SELECT 1 FROM pragma_table_info('recipients') WHERE name = 'push'")?
        .exists([])?;
    if !has_push {
        conn.execute_batch(
            "ALTER TABLE recipients ADD COLUMN push INTEGER;
             ALTER TABLE recipients ADD COLUMN reason TEXT;",
        )?;
    }
    let has_except_agents = conn
        .prepare("SELECT 1 FROM pragma_table_info('messages') WHERE name = 'except_agents'")?
        .exists([])?;
    if !has_except_agents {
        conn.execute_batch(
            "ALTER TABLE messages ADD COLUMN except_agents TEXT;
             ALTER TABLE messages ADD COLUMN formats TEXT;",
        )?;
    }
    // The full indexes that the partial `messages_by_*` replaced.
    conn.execute_batch(
        "DROP INDEX IF EXISTS messages_sender; DROP INDEX IF EXISTS messages_component;",
    )?;
    Ok(())
}

/// The stored `status` column: `pushed` and `failed` are pending rows with a `push` mark.
fn status_code(status: Status) -> i64 {
    match status {
        Status::Pending | Status::Pushed | Status::Failed => 0,
        Status::Delivered => 1,
        Status::Acked => 2,
        Status::Expired => 3,
    }
}

fn status_from(code: i64, push: Option<i64>) -> Status {
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

fn device_from_row(row: &rusqlite::Row) -> rusqlite::Result<Device> {
    let way: String = row.get(3)?;
    let components: String = row.get(6)?;
    Ok(Device {
        app: row.get(0)?,
        user: row.get(1)?,
        device: row.get(2)?,
        // Only this store writes the column, from a `Way`.
        way: Way::parse(&way).unwrap_or(Way::Webpush),
        agent: row.get(4)?,
        token: row.get(5)?,
        components: serde_json::from_str(&components).unwrap_or_default(),
        refreshed: row.get(7)?,
    })
}

const DEVICE_COLUMNS: &str = "app, user, device, way, agent, token, components, refreshed";

/// Agent lists are stored as `,ios,bs,` so that one `instr` checks membership: the agents that
/// alone receive (`agents`), and those that do not (`except_agents`).
fn agents_columns(agents: &AgentFilter) -> (Option<String>, Option<String>) {
    let column = |list: &Vec<String>| Some(format!(",{},", list.join(",")));
    match agents {
        AgentFilter::Any => (None, None),
        AgentFilter::Only(list) => (column(list), None),
        AgentFilter::Except(list) => (None, column(list)),
    }
}

fn agents_from(column: Option<String>) -> Option<Vec<String>> {
    column.map(|text| {
        text.split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// A failed write: [`StoreError::Full`] when the disk is full, so that callers can say so.
fn write_error(e: rusqlite::Error) -> StoreError {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        StoreError::Full
    } else {
        backend(e)
    }
}

enum Write {
    Insert(NewMessage),
    Delivered {
        app: String,
        user: String,
        ids: Vec<u64>,
    },
    Ack {
        app: String,
        user: String,
        ids: Vec<u64>,
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

enum Written {
    Count(u64),
    /// Ids whose status changed.
    Ids(Vec<u64>),
    Swept(Swept),
    Claimed(Claimed),
    Registered(Registered),
    Steps(Vec<DueStep>),
}

type Reply = oneshot::Sender<Result<Written, StoreError>>;

pub struct SqliteStore {
    writes: mpsc::Sender<(Write, Reply)>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: tokio::sync::Semaphore,
    path: std::path::PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) `messages.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join("messages.db");
        let writer = Connection::open(&path).map_err(backend)?;
        // An 8 MiB page cache: on a database under 1 GiB, SQLite's page cache walks every cached
        // page at the end of each commit whose b-tree balancing renumbered a page (most of them),
        // so a larger cache costs more per commit than its hits save.
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;
                 PRAGMA wal_autocheckpoint=16384; PRAGMA cache_size=-8192; PRAGMA temp_store=MEMORY;",
            )
            .map_err(backend)?;
        writer.execute_batch(SCHEMA).map_err(backend)?;
        migrate(&writer).map_err(backend)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(&path)?);
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        std::thread::Builder::new()
            .name("mps-store-writer".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(backend)?;
        Ok(SqliteStore {
            writes: tx,
            readers: Arc::new(Mutex::new(readers)),
            read_permits: tokio::sync::Semaphore::new(READERS),
            path,
        })
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

    /// Runs a read on a pooled connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        // Reads wait for one of the pooled connections instead of opening more: a login burst
        // would otherwise open (and page in) hundreds of connections.
        let _permit = self
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().pop();
            let conn = match conn {
                Some(c) => c,
                None => open_reader(&path)?,
            };
            let out = f(&conn).map_err(backend);
            readers.lock().push(conn);
            out
        })
        .await
        .map_err(backend)?
    }
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(backend)?;
    conn.execute_batch("PRAGMA busy_timeout=5000;")
        .map_err(backend)?;
    Ok(conn)
}

fn write_loop(mut conn: Connection, mut rx: mpsc::Receiver<(Write, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let started = Instant::now();
        let size = batch.len();
        // One transaction for the whole batch. Writes only fail on corrupt input or a broken
        // disk; if the batch fails, each write is retried alone so that one bad write cannot
        // fail the others.
        let results = match commit(&mut conn, &batch) {
            Ok(results) => results,
            Err(e) if size > 1 => {
                tracing::warn!(error = %e, size, "batch commit failed; retrying writes one by one");
                batch
                    .iter()
                    .map(|op| match commit(&mut conn, std::slice::from_ref(op)) {
                        Ok(mut one) => one.pop().unwrap_or_else(|| Err(backend("no result"))),
                        Err(e) => Err(write_error(e)),
                    })
                    .collect()
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                vec![Err(write_error(e))]
            }
        };
        metrics::histogram!("mps_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("mps_store_commit_batch").record(size as f64);
        for ((_, reply), result) in batch.drain(..).zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Applies writes in one transaction; all or nothing.
fn commit(
    conn: &mut Connection,
    batch: &[(Write, Reply)],
) -> rusqlite::Result<Vec<Result<Written, StoreError>>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    for (op, _) in batch {
        results.push(Ok(apply(&tx, op)?));
    }
    tx.commit()?;
    Ok(results)
}

fn apply(tx: &rusqlite::Transaction, op: &Write) -> rusqlite::Result<Written> {
    match op {
        Write::Insert(m) => insert(tx, m),
        Write::Keyed(key, write) => {
            let held: Option<i64> = tx
                .prepare_cached(
                    "SELECT message_id FROM idempotency WHERE app = ?1 AND key = ?2 AND expires > ?3",
                )?
                .query_row(params![key.app, key.key, key.created], |r| r.get(0))
                .optional()?;
            if let Some(id) = held {
                return Ok(Written::Claimed(Claimed::Duplicate(id as u64)));
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (app, key, message_id, created, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                key.app,
                key.key,
                key.id as i64,
                key.created,
                key.expires
            ])?;
            match write {
                KeyedWrite::Message(m) => {
                    insert(tx, m)?;
                }
                KeyedWrite::Topic {
                    entry,
                    created,
                    keep,
                } => {
                    append_topic(tx, &key.app, entry, *created, *keep)?;
                }
                KeyedWrite::KeyOnly => {}
            }
            Ok(Written::Claimed(Claimed::Fresh))
        }
        Write::Delivered { app, user, ids } => {
            set_status(tx, app, user, ids, Status::Delivered, "status = 0")
        }
        Write::Ack { app, user, ids } => {
            set_status(tx, app, user, ids, Status::Acked, "status IN (0, 1)")
        }
        Write::Delete(id) => {
            let n = tx
                .prepare_cached("DELETE FROM messages WHERE id = ?1")?
                .execute([*id as i64])?;
            tx.prepare_cached("DELETE FROM recipients WHERE message_id = ?1")?
                .execute([*id as i64])?;
            tx.prepare_cached("DELETE FROM channel_steps WHERE message_id = ?1")?
                .execute([*id as i64])?;
            Ok(Written::Count(n as u64))
        }
        Write::Sweep {
            now,
            keep_expired,
            report,
        } => {
            const EXPIRE: &str = "UPDATE recipients SET status = 3, updated = ?1
                 WHERE status IN (0, 1) AND message_id IN (SELECT id FROM messages WHERE expires <= ?1)";
            let mut reported = Vec::new();
            let expired = if *report == 0 {
                tx.execute(EXPIRE, [now])?
            } else {
                let mut stmt = tx.prepare(&format!("{EXPIRE} RETURNING app, message_id, user"))?;
                let mut rows = stmt.query([now])?;
                let mut count = 0;
                while let Some(row) = rows.next()? {
                    count += 1;
                    if reported.len() < *report {
                        reported.push(ExpiredRecipient {
                            app: row.get(0)?,
                            id: row.get::<_, i64>(1)? as u64,
                            user: row.get(2)?,
                        });
                    }
                }
                count
            };
            let cutoff = now - keep_expired;
            tx.execute(
                "DELETE FROM recipients WHERE message_id IN (SELECT id FROM messages WHERE expires <= ?1)",
                [cutoff],
            )?;
            tx.execute(
                "DELETE FROM channel_steps WHERE message_id IN (SELECT id FROM messages WHERE expires <= ?1)",
                [cutoff],
            )?;
            let deleted = tx.execute("DELETE FROM messages WHERE expires <= ?1", [cutoff])?;
            tx.execute("DELETE FROM idempotency WHERE expires <= ?1", [now])?;
            Ok(Written::Swept(Swept {
                expired: expired as u64,
                deleted: deleted as u64,
                reported,
            }))
        }
        Write::AppendTopic {
            app,
            entry,
            created,
            keep,
        } => append_topic(tx, app, entry, *created, *keep),
        Write::RecordPush { app, id, results } => {
            let now = crate::id::now_ms() as i64;
            let mut stmt = tx.prepare_cached(
                "UPDATE recipients SET push = ?1, reason = ?2, updated = ?3
                 WHERE message_id = ?4 AND user = ?5 AND app = ?6 AND status = 0",
            )?;
            let mut changed = 0;
            for r in results {
                let push = if r.pushed { 1 } else { 2 };
                changed += stmt.execute(params![push, r.reason, now, *id as i64, r.user, app])?;
            }
            Ok(Written::Count(changed as u64))
        }
        Write::ClaimSteps {
            now,
            retry_at,
            limit,
        } => claim_steps(tx, *now, *retry_at, *limit),
        Write::RecordSteps { app, records } => {
            let now = crate::id::now_ms() as i64;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO channel_steps (message_id, app, user, channel, status, due, reason, updated)
                 SELECT ?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7
                 WHERE EXISTS (SELECT 1 FROM recipients WHERE message_id = ?1 AND user = ?3)
                 ON CONFLICT (message_id, user, channel) DO UPDATE SET
                     status = excluded.status, due = NULL, reason = excluded.reason,
                     updated = excluded.updated",
            )?;
            let mut changed = 0;
            for r in records {
                changed += stmt.execute(params![
                    r.id as i64,
                    app,
                    r.user,
                    r.channel,
                    r.status.as_str(),
                    r.reason,
                    now
                ])?;
            }
            Ok(Written::Count(changed as u64))
        }
        Write::RegisterDevice(d) => register_device(tx, d),
        Write::RemoveDevices(selector) => {
            let n = tx
                .prepare_cached(
                    "DELETE FROM devices WHERE app = ?1 AND user = ?2
                       AND (?3 IS NULL OR device = ?3) AND (?4 IS NULL OR way = ?4)",
                )?
                .execute(params![
                    selector.app,
                    selector.user,
                    selector.device,
                    selector.way.map(Way::as_str)
                ])?;
            Ok(Written::Count(n as u64))
        }
        Write::RemoveToken { app, way, token } => {
            let n = tx
                .prepare_cached("DELETE FROM devices WHERE app = ?1 AND way = ?2 AND token = ?3")?
                .execute(params![app, way.as_str(), token])?;
            Ok(Written::Count(n as u64))
        }
        Write::ExpireDevices(before) => {
            let n = tx
                .prepare_cached("DELETE FROM devices WHERE refreshed < ?1")?
                .execute([before])?;
            Ok(Written::Count(n as u64))
        }
        Write::SetPreferences { app, user, doc } => {
            let n = match doc {
                Some(doc) => tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO preferences (app, user_id, doc) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![app, user, doc])?,
                None => tx
                    .prepare_cached("DELETE FROM preferences WHERE app = ?1 AND user_id = ?2")?
                    .execute(params![app, user])?,
            };
            Ok(Written::Count(n as u64))
        }
        Write::SetTerms {
            app,
            user,
            set,
            terms,
        } => {
            tx.prepare_cached(
                "DELETE FROM user_tags WHERE app = ?1 AND user_id = ?2 AND (substr(tag, 1, 4) = 'tag:') = ?3",
            )?
            .execute(params![app, user, *set == TermSet::Tags])?;
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO user_tags (app, user_id, tag) VALUES (?1, ?2, ?3)",
            )?;
            for term in terms {
                stmt.execute(params![app, user, term])?;
            }
            Ok(Written::Count(terms.len() as u64))
        }
        Write::TrimTopics(cutoffs) => {
            let mut dropped = 0;
            for (app, topic, cutoff) in cutoffs {
                let upto: Option<i64> = tx
                    .prepare_cached(
                        "SELECT max(id) FROM topic_log WHERE app = ?1 AND topic = ?2 AND created < ?3",
                    )?
                    .query_row(params![app, topic, cutoff], |r| r.get(0))?;
                if let Some(upto) = upto {
                    dropped += trim_topic(tx, app, topic, upto)?;
                }
            }
            Ok(Written::Count(dropped as u64))
        }
    }
}

fn insert(tx: &rusqlite::Transaction, m: &NewMessage) -> rusqlite::Result<Written> {
    let (agents, except_agents) = agents_columns(&m.agents);
    tx.prepare_cached(
            "INSERT INTO messages (id, app, title, kind, component, sender, agents, except_agents, content, created, expires, formats)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            m.id as i64,
            m.app,
            m.title,
            m.kind,
            m.component,
            m.sender,
            agents,
            except_agents,
            m.content.get(),
            m.created,
            m.created.max(m.expires),
            super::formats_column(&m.formats),
        ])?;
    let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO recipients (message_id, app, user, status, updated) VALUES (?1, ?2, ?3, 0, ?4)",
        )?;
    for user in &m.recipients {
        stmt.execute(params![m.id as i64, m.app, user, m.created])?;
    }
    if !m.steps.is_empty() || !m.own_steps.is_empty() {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO channel_steps (message_id, app, user, channel, status, due, updated)
             VALUES (?1, ?2, ?3, ?4, 'scheduled', ?5, ?6)",
        )?;
        for user in &m.recipients {
            for (channel, due) in &m.steps {
                stmt.execute(params![m.id as i64, m.app, user, channel, due, m.created])?;
            }
        }
        for (user, channel, due) in &m.own_steps {
            stmt.execute(params![m.id as i64, m.app, user, channel, due, m.created])?;
        }
    }
    Ok(Written::Count(1))
}

/// Takes the steps due at `now` (`queued`, due again at `retry_at`) with their messages.
fn claim_steps(
    tx: &rusqlite::Transaction,
    now: i64,
    retry_at: i64,
    limit: usize,
) -> rusqlite::Result<Written> {
    let steps = tx
        .prepare_cached(
            "SELECT s.message_id, m.app, s.user, s.channel, r.status, r.push, m.title, m.kind,
                    m.component, m.sender, m.agents, m.except_agents, m.formats, m.content,
                    m.created, m.expires
             FROM channel_steps s
             JOIN messages m ON m.id = s.message_id
             LEFT JOIN recipients r ON r.message_id = s.message_id AND r.user = s.user
             WHERE s.due IS NOT NULL AND s.due <= ?1
             ORDER BY s.due LIMIT ?2",
        )?
        .query_map(params![now, limit as i64], |r| {
            Ok(DueStep {
                id: r.get::<_, i64>(0)? as u64,
                app: r.get(1)?,
                user: r.get(2)?,
                channel: r.get(3)?,
                // A recipient no longer there counts as expired.
                status: match r.get::<_, Option<i64>>(4)? {
                    Some(code) => status_from(code, r.get(5)?),
                    None => Status::Expired,
                },
                title: r.get(6)?,
                kind: r.get(7)?,
                component: r.get(8)?,
                sender: r.get(9)?,
                agents: super::agent_filter(agents_from(r.get(10)?), agents_from(r.get(11)?)),
                formats: r.get(12)?,
                content: raw(r.get(13)?),
                created: r.get(14)?,
                expires: r.get(15)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = tx.prepare_cached(
        "UPDATE channel_steps SET due = ?1, status = 'queued', updated = ?2
         WHERE message_id = ?3 AND user = ?4 AND channel = ?5",
    )?;
    for step in &steps {
        stmt.execute(params![
            retry_at,
            now,
            step.id as i64,
            step.user,
            step.channel
        ])?;
    }
    Ok(Written::Steps(steps))
}

/// Takes the token from any other registration, then inserts or refreshes this one.
fn register_device(tx: &rusqlite::Transaction, d: &Device) -> rusqlite::Result<Written> {
    let way = d.way.as_str();
    let mut taken_from: Vec<String> = tx
        .prepare_cached(
            "DELETE FROM devices WHERE app = ?1 AND way = ?2 AND token = ?3
               AND NOT (user = ?4 AND device = ?5)
             RETURNING user",
        )?
        .query_map(params![d.app, way, d.token, d.user, d.device], |r| {
            r.get::<_, String>(0)
        })?
        .collect::<rusqlite::Result<_>>()?;
    taken_from.retain(|u| *u != d.user);
    taken_from.sort();
    taken_from.dedup();
    let existed = tx
        .prepare_cached(
            "SELECT 1 FROM devices WHERE app = ?1 AND user = ?2 AND device = ?3 AND way = ?4",
        )?
        .exists(params![d.app, d.user, d.device, way])?;
    let components = serde_json::to_string(&d.components).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(
        "INSERT INTO devices (app, user, device, way, agent, token, components, refreshed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (app, user, device, way) DO UPDATE SET
             agent = excluded.agent, token = excluded.token,
             components = excluded.components, refreshed = excluded.refreshed",
    )?
    .execute(params![
        d.app,
        d.user,
        d.device,
        way,
        d.agent,
        d.token,
        components,
        d.refreshed
    ])?;
    Ok(Written::Registered(Registered {
        created: !existed,
        taken_from,
    }))
}

fn append_topic(
    tx: &rusqlite::Transaction,
    app: &str,
    entry: &TopicEntry,
    created: i64,
    keep: u64,
) -> rusqlite::Result<Written> {
    tx.prepare_cached("INSERT OR IGNORE INTO topics (app, topic) VALUES (?1, ?2)")?
        .execute(params![app, entry.topic])?;
    let frame = std::str::from_utf8(&entry.frame).unwrap_or("{}");
    tx.prepare_cached(
            "INSERT OR REPLACE INTO topic_log (app, topic, id, created, frame) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![app, entry.topic, entry.id as i64, created, frame])?;
    let oldest_dropped: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM topic_log WHERE app = ?1 AND topic = ?2 ORDER BY id DESC LIMIT 1 OFFSET ?3",
            )?
            .query_row(params![app, entry.topic, (keep).min(i64::MAX as u64) as i64], |r| r.get(0))
            .optional()?;
    if let Some(upto) = oldest_dropped {
        trim_topic(tx, app, &entry.topic, upto)?;
    }
    Ok(Written::Count(1))
}

/// Drops a topic's log entries up to `upto` and remembers the watermark.
fn trim_topic(
    tx: &rusqlite::Transaction,
    app: &str,
    topic: &str,
    upto: i64,
) -> rusqlite::Result<usize> {
    let n = tx
        .prepare_cached("DELETE FROM topic_log WHERE app = ?1 AND topic = ?2 AND id <= ?3")?
        .execute(params![app, topic, upto])?;
    tx.prepare_cached(
        "UPDATE topics SET trimmed = max(trimmed, ?3) WHERE app = ?1 AND topic = ?2",
    )?
    .execute(params![app, topic, upto])?;
    Ok(n)
}

fn set_status(
    tx: &rusqlite::Transaction,
    app: &str,
    user: &str,
    ids: &[u64],
    status: Status,
    from: &str,
) -> rusqlite::Result<Written> {
    let now = crate::id::now_ms() as i64;
    let sql = format!(
        "UPDATE recipients SET status = ?1, updated = ?2
         WHERE message_id = ?3 AND user = ?4 AND app = ?5 AND {from}"
    );
    let mut stmt = tx.prepare_cached(&sql)?;
    let mut changed = Vec::new();
    for id in ids {
        if stmt.execute(params![status_code(status), now, *id as i64, user, app])? > 0 {
            changed.push(*id);
        }
    }
    Ok(Written::Ids(changed))
}

fn record_from_row(row: &rusqlite::Row) -> rusqlite::Result<MessageRecord> {
    let content: String = row.get(7)?;
    Ok(MessageRecord {
        id: row.get::<_, i64>(0)?.to_string(),
        app: row.get(1)?,
        title: row.get(2)?,
        kind: row.get(3)?,
        component: row.get(4)?,
        sender: row.get(5)?,
        agents: agents_from(row.get(6)?),
        except_agents: agents_from(row.get(10)?),
        formats: super::formats_from(row.get::<_, Option<String>>(11)?.as_deref()),
        content: raw(content),
        created: row.get(8)?,
        expires: row.get(9)?,
        summary: BTreeMap::new(),
        recipients: None,
    })
}

/// Content was valid JSON when stored; a damaged row still comes back as a JSON string.
fn raw(content: String) -> Box<RawValue> {
    RawValue::from_string(content).unwrap_or_else(|e| {
        RawValue::from_string(serde_json::Value::String(e.to_string()).to_string())
            .unwrap_or_default()
    })
}

fn summaries(conn: &Connection, records: &mut [MessageRecord]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, push, COUNT(*) FROM recipients WHERE message_id = ?1 GROUP BY status, push",
    )?;
    for record in records {
        let Some(id) = crate::id::read_back(&record.id) else {
            continue;
        };
        let id = id as i64;
        let rows = stmt.query_map([id], |r| {
            Ok((status_from(r.get(0)?, r.get(1)?), r.get::<_, i64>(2)?))
        })?;
        for row in rows {
            let (status, count) = row?;
            *record.summary.entry(status).or_default() += count as u64;
        }
    }
    Ok(())
}

const RECORD_COLUMNS: &str = "m.id, m.app, m.title, m.kind, m.component, m.sender, m.agents, m.content, m.created, m.expires, m.except_agents, m.formats";

#[async_trait]
impl Store for SqliteStore {
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
        let (app, user, agent) = (app.to_owned(), user.to_owned(), agent.map(str::to_owned));
        self.read(move |conn| {
            let now = crate::id::now_ms() as i64;
            let mut stmt = conn.prepare_cached(
                "SELECT m.id, m.title, m.kind, m.component, m.sender, m.created, m.content, m.formats
                 FROM recipients r JOIN messages m ON m.id = r.message_id
                 WHERE r.app = ?1 AND r.user = ?2 AND r.status = 0 AND r.message_id > ?3
                   AND m.expires > ?4
                   AND (?5 IS NULL OR ((m.agents IS NULL OR instr(m.agents, ',' || ?5 || ',') > 0)
                        AND (m.except_agents IS NULL OR instr(m.except_agents, ',' || ?5 || ',') = 0)))
                 ORDER BY r.message_id LIMIT ?6",
            )?;
            let rows = stmt.query_map(
                params![app, user, after as i64, now, agent, limit as i64],
                |row| {
                    let mut message = PushedMessage {
                        id: row.get::<_, i64>(0)?.to_string(),
                        title: row.get(1)?,
                        kind: row.get(2)?,
                        component: row.get(3)?,
                        topic: None,
                        sender: row.get(4)?,
                        created: row.get(5)?,
                        ack: true,
                        event_data: EventData {
                            ext: raw(row.get(6)?),
                        },
                    };
                    let formats: Option<String> = row.get(7)?;
                    crate::formats::apply_stored(&mut message, formats.as_deref(), agent.as_deref());
                    Ok(message)
                },
            )?;
            rows.collect()
        })
        .await
    }

    async fn mark_delivered(
        &self,
        app: &str,
        user: &str,
        ids: Vec<u64>,
    ) -> Result<Vec<u64>, StoreError> {
        self.ids(Write::Delivered {
            app: app.to_owned(),
            user: user.to_owned(),
            ids,
        })
        .await
    }

    async fn ack(&self, app: &str, user: &str, ids: Vec<u64>) -> Result<Vec<u64>, StoreError> {
        self.ids(Write::Ack {
            app: app.to_owned(),
            user: user.to_owned(),
            ids,
        })
        .await
    }

    async fn list(&self, query: MessageQuery) -> Result<Page<MessageRecord>, StoreError> {
        self.read(move |conn| {
            let mut filters = Vec::new();
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut add = |clause: &str, value: rusqlite::types::Value| {
                args.push(value);
                filters.push(clause.replace('?', &format!("?{}", args.len())));
            };
            if let Some(app) = query.app {
                add("m.app = ?", app.into());
            }
            if let Some(sender) = query.sender {
                add("m.sender = ?", sender.into());
            }
            if let Some(component) = query.component {
                add("m.component = ?", component.into());
            }
            if let Some(from) = query.from {
                add("m.created >= ?", from.into());
            }
            if let Some(to) = query.to {
                add("m.created < ?", to.into());
            }
            match (query.receiver, query.status) {
                (Some(receiver), Some(status)) => {
                    args.push(receiver.into());
                    filters.push(format!(
                        "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.user = ?{} AND {})",
                        args.len(),
                        status_condition(status)
                    ));
                }
                (Some(receiver), None) => add(
                    "EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.user = ?)",
                    receiver.into(),
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
            let total: i64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM messages m {filter}"),
                params_from_iter(args.iter()),
                |r| r.get(0),
            )?;
            let size = query.size.clamp(1, 1000);
            let page = query.page.max(1);
            let offset = (page - 1).saturating_mul(size);
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM messages m {filter} ORDER BY m.id DESC LIMIT {size} OFFSET {offset}"
            );
            let mut stmt = conn.prepare(&sql)?;
            let mut items = stmt
                .query_map(params_from_iter(args.iter()), record_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            summaries(conn, &mut items)?;
            Ok(Page {
                items,
                page,
                size,
                total: total as u64,
            })
        })
        .await
    }

    async fn get(&self, id: u64) -> Result<Option<MessageRecord>, StoreError> {
        self.read(move |conn| {
            let record = conn
                .query_row(
                    &format!("SELECT {RECORD_COLUMNS} FROM messages m WHERE m.id = ?1"),
                    [id as i64],
                    record_from_row,
                )
                .optional()?;
            let Some(mut record) = record else {
                return Ok(None);
            };
            let mut rows: BTreeMap<String, Vec<ChannelRow>> = BTreeMap::new();
            let mut stmt = conn.prepare_cached(
                "SELECT user, channel, status, due, reason, updated FROM channel_steps
                 WHERE message_id = ?1",
            )?;
            let mut found = stmt.query([id as i64])?;
            while let Some(r) = found.next()? {
                rows.entry(r.get(0)?).or_default().push(ChannelRow {
                    channel: r.get(1)?,
                    status: r.get(2)?,
                    due: r.get(3)?,
                    reason: r.get(4)?,
                    updated: r.get(5)?,
                });
            }
            let mut stmt = conn.prepare_cached(
                "SELECT user, status, push, updated, reason FROM recipients WHERE message_id = ?1
                 ORDER BY user",
            )?;
            let recipients = stmt
                .query_map([id as i64], |r| {
                    let status = status_from(r.get(1)?, r.get(2)?);
                    let user: String = r.get(0)?;
                    let updated = r.get(3)?;
                    let reason: Option<String> = if status == Status::Failed {
                        r.get(4)?
                    } else {
                        None
                    };
                    let channels = super::channels_of(
                        status,
                        updated,
                        reason.as_deref(),
                        rows.remove(&user).unwrap_or_default(),
                    );
                    Ok(RecipientStatus {
                        user,
                        status,
                        updated,
                        reason,
                        channels,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for r in &recipients {
                *record.summary.entry(r.status).or_default() += 1;
            }
            record.recipients = Some(recipients);
            Ok(Some(record))
        })
        .await
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
        let (app, patterns) = (app.to_owned(), patterns.to_vec());
        self.read(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT topic, trimmed FROM topics WHERE app = ?1")?;
            let known = stmt
                .query_map([&app], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut replay = TopicReplay::default();
            let mut matching = Vec::new();
            for (topic, trimmed) in known {
                let hits: Vec<&String> = patterns
                    .iter()
                    .filter(|p| crate::topic::matches(p, &topic))
                    .collect();
                if hits.is_empty() {
                    continue;
                }
                if trimmed as u64 > after {
                    for p in hits {
                        if !replay.truncated.contains(p) {
                            replay.truncated.push(p.clone());
                        }
                    }
                }
                matching.push(topic);
            }
            let mut stmt = conn.prepare_cached(
                "SELECT id, frame FROM topic_log WHERE app = ?1 AND topic = ?2 AND id > ?3 ORDER BY id LIMIT ?4",
            )?;
            for topic in matching {
                let rows = stmt.query_map(
                    params![app, topic, after as i64, limit as i64],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )?;
                for row in rows {
                    let (id, frame) = row?;
                    replay.entries.push(TopicEntry {
                        id: id as u64,
                        topic: topic.clone(),
                        frame: frame.into(),
                    });
                }
            }
            replay.entries.sort_by_key(|e| e.id);
            replay.entries.truncate(limit);
            replay.truncated.sort();
            Ok(replay)
        })
        .await
    }

    async fn topics(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT app, topic FROM topics")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
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
            id,
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
        let claim = Write::ClaimSteps {
            now,
            retry_at,
            limit,
        };
        match self.write(claim).await? {
            Written::Steps(steps) => Ok(steps),
            _ => Err(backend("unexpected answer")),
        }
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
        let (app, users) = (app.to_owned(), users.to_vec());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE app = ?1 AND user = ?2"
            ))?;
            let mut devices = Vec::new();
            for user in &users {
                for device in stmt.query_map(params![app, user], device_from_row)? {
                    devices.push(device?);
                }
            }
            Ok(devices)
        })
        .await
    }

    async fn list_devices(&self, query: DeviceQuery) -> Result<Page<Device>, StoreError> {
        self.read(move |conn| {
            let filter = "WHERE (?1 IS NULL OR app = ?1) AND (?2 IS NULL OR user = ?2)
                            AND (?3 IS NULL OR device = ?3) AND (?4 IS NULL OR way = ?4)";
            let args = params![
                query.app,
                query.user,
                query.device,
                query.way.map(Way::as_str)
            ];
            let total: i64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM devices {filter}"),
                args,
                |r| r.get(0),
            )?;
            let size = query.size.clamp(1, 1000);
            let page = query.page.max(1);
            let offset = (page - 1).saturating_mul(size);
            let mut stmt = conn.prepare(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices {filter}
                 ORDER BY app, user, device, way LIMIT {size} OFFSET {offset}"
            ))?;
            let items = stmt
                .query_map(args, device_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Page {
                items,
                page,
                size,
                total: total as u64,
            })
        })
        .await
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
        let app = app.to_owned();
        let users = serde_json::to_string(users).unwrap_or_default();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT user_id, doc FROM preferences
                 WHERE app = ?1 AND user_id IN (SELECT value FROM json_each(?2))",
            )?;
            let rows = stmt.query_map(params![app, users], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (user, doc) = row?;
                // Written by set_preferences; a damaged row mutes nothing.
                out.push((user, serde_json::from_str(&doc).unwrap_or_default()));
            }
            Ok(out)
        })
        .await
    }

    async fn terms(&self, app: &str, user: &str) -> Result<Vec<String>, StoreError> {
        let (app, user) = (app.to_owned(), user.to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT tag FROM user_tags WHERE app = ?1 AND user_id = ?2 ORDER BY tag",
            )?;
            let rows = stmt.query_map(params![app, user], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }

    async fn resolve(
        &self,
        app: &str,
        expr: &Expr,
        within: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (app, expr) = (app.to_owned(), expr.clone());
        self.read(move |conn| {
            let mut estimates = std::collections::HashMap::new();
            if within.is_none() {
                let mut stmt = conn.prepare_cached(&sql::estimate_sql(Dialect::Sqlite))?;
                for term in sql::terms_to_estimate(&expr) {
                    let n: i64 = stmt.query_row(params![app, term], |r| r.get(0))?;
                    estimates.insert(term, n as u64);
                }
            }
            let query = sql::compile(Dialect::Sqlite, &app, &expr, within, &estimates, limit);
            let params: Vec<String> = query
                .params
                .into_iter()
                .map(|p| match p {
                    Param::Text(text) => text,
                    Param::List(list) => serde_json::to_string(&list).unwrap_or_default(),
                })
                .collect();
            let mut stmt = conn.prepare(&query.sql)?;
            let mut users = stmt
                .query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            users.sort_unstable();
            users.dedup();
            Ok(users)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn passes_the_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::SqliteStore::open(dir.path()).unwrap();
        super::super::suite::run(&store).await;
    }

    #[tokio::test]
    async fn opens_a_store_of_the_version_before_vendor_push() {
        use crate::store::{PushRecord, Store};
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("messages.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE recipients (message_id INTEGER NOT NULL, app TEXT NOT NULL,
                 user TEXT NOT NULL, status INTEGER NOT NULL, updated INTEGER NOT NULL,
                 PRIMARY KEY (message_id, user)) WITHOUT ROWID;
             INSERT INTO recipients VALUES (7, 'default', 'old', 0, 1);",
        )
        .unwrap();
        drop(conn);
        let store = super::SqliteStore::open(dir.path()).unwrap();
        let pushed = vec![PushRecord {
            user: "old".into(),
            pushed: false,
            reason: Some("no".into()),
        }];
        assert_eq!(store.record_push("default", 7, pushed).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn replaces_the_full_sender_and_component_indexes_with_partial_ones() {
        use crate::store::{MessageQuery, Store};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY, app TEXT NOT NULL, title TEXT,
                 kind INTEGER NOT NULL, component TEXT, sender TEXT, agents TEXT,
                 content TEXT NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL);
             CREATE INDEX messages_sender ON messages(app, sender, id);
             CREATE INDEX messages_component ON messages(app, component, id);
             INSERT INTO messages VALUES (7, 'default', 't', 1, 'orders', 'shop', NULL, '{}', 1, 9e15);",
        )
        .unwrap();
        drop(conn);
        let store = super::SqliteStore::open(dir.path()).unwrap();
        let page = store
            .list(MessageQuery {
                app: Some("default".into()),
                sender: Some("shop".into()),
                page: 1,
                size: 20,
                ..MessageQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.total, 1);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut names: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        names.sort();
        assert_eq!(
            names,
            [
                "messages_by_component",
                "messages_by_sender",
                "messages_expires"
            ]
        );
    }
}
