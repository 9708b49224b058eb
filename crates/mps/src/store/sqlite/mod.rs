//! The embedded store: SQLite in WAL mode with `synchronous=FULL`, so a commit is on disk when it
//! returns. One writer thread owns the write connection and group-commits (`write.rs`); reads
//! use a small pool of read-only connections on the blocking thread pool (`read.rs`); the schema
//! comes from numbered migrations (`migrate.rs`).

mod migrate;
mod read;
mod write;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use mps_proto::{MessageRecord, Page, Preferences, PushedMessage, Status};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

#[cfg(test)]
pub(crate) use migrate::MIGRATIONS;

use super::write::Writes;
use super::{
    Claimed, DeviceQuery, DeviceSelector, DueStep, IdempotencyKey, KeyedWrite, MessageQuery,
    NewMessage, PushRecord, Registered, StepRecord, Store, StoreError, Swept, TermSet, TopicEntry,
    TopicReplay,
};
use crate::audience::Expr;
use crate::words::AgentFilter;
use crate::words::{Device, Way};

const READERS: usize = 4;

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

pub struct SqliteStore {
    writes: Writes,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: tokio::sync::Semaphore,
    path: std::path::PathBuf,
}

impl SqliteStore {
    /// Opens (creating or migrating if needed) `messages.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join("messages.db");
        let mut writer = Connection::open(&path).map_err(backend)?;
        // An 8 MiB page cache: on a database under 1 GiB, SQLite's page cache walks every cached
        // page at the end of each commit whose b-tree balancing renumbered a page (most of them),
        // so a larger cache costs more per commit than its hits save.
        writer
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;
                 PRAGMA wal_autocheckpoint=16384; PRAGMA cache_size=-8192; PRAGMA temp_store=MEMORY;",
            )
            .map_err(backend)?;
        migrate::migrate(&mut writer).map_err(backend)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(open_reader(&path)?);
        }
        let (writes, queue) = Writes::new();
        std::thread::Builder::new()
            .name("mps-store-writer".into())
            .spawn(move || write::write_loop(writer, queue))
            .map_err(backend)?;
        Ok(SqliteStore {
            writes,
            readers: Arc::new(Mutex::new(readers)),
            read_permits: tokio::sync::Semaphore::new(READERS),
            path,
        })
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

#[async_trait]
impl Store for SqliteStore {
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
        let (app, user, agent) = (app.to_owned(), user.to_owned(), agent.map(str::to_owned));
        self.read(move |conn| read::pending(conn, &app, &user, agent.as_deref(), after, limit))
            .await
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
        self.read(move |conn| read::list(conn, query)).await
    }

    async fn get(&self, id: u64) -> Result<Option<MessageRecord>, StoreError> {
        self.read(move |conn| read::get(conn, id)).await
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
        let (app, patterns) = (app.to_owned(), patterns.to_vec());
        self.read(move |conn| read::topic_since(conn, &app, &patterns, after, limit))
            .await
    }

    async fn topics(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.read(read::topics).await
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
        let (app, users) = (app.to_owned(), users.to_vec());
        self.read(move |conn| read::devices_of(conn, &app, &users))
            .await
    }

    async fn list_devices(&self, query: DeviceQuery) -> Result<Page<Device>, StoreError> {
        self.read(move |conn| read::list_devices(conn, query)).await
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
        let (app, user) = (app.to_owned(), user.to_owned());
        self.read(move |conn| read::terms(conn, &app, &user)).await
    }

    async fn resolve(
        &self,
        app: &str,
        expr: &Expr,
        within: Option<Vec<String>>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (app, expr) = (app.to_owned(), expr.clone());
        self.read(move |conn| read::resolve(conn, &app, &expr, within, limit))
            .await
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
        let (app, users) = (app.to_owned(), users.to_vec());
        self.read(move |conn| read::preferences(conn, &app, &users))
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
