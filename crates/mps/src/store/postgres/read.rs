//! The reads of the PostgreSQL store, each on one pooled connection.

use std::collections::{BTreeMap, HashMap};

use deadpool_postgres::Client;
use mps_proto::{MessageRecord, Page, Preferences, PushedMessage};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::backend;
use crate::audience::Expr;
use crate::audience::sql::{self, Dialect, Param};
use crate::store::rows::ChannelRow;
use crate::store::rows::{self, Columns, RECORD_COLUMNS, status_condition};
use crate::store::{DeviceQuery, MessageQuery, StoreError, TopicEntry, TopicReplay};
use crate::words::{Device, Way};

impl Columns for Row {
    type Error = tokio_postgres::Error;

    fn int(&self, i: usize) -> Result<i64, Self::Error> {
        self.try_get(i)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, Self::Error> {
        self.try_get(i)
    }

    fn text(&self, i: usize) -> Result<String, Self::Error> {
        self.try_get(i)
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error> {
        self.try_get(i)
    }

    fn code(&self, i: usize) -> Result<Option<i64>, Self::Error> {
        Ok(self.try_get::<_, Option<i16>>(i)?.map(i64::from))
    }

    fn agents(&self, i: usize) -> Result<Option<Vec<String>>, Self::Error> {
        self.try_get(i)
    }

    fn components(&self, i: usize) -> Result<Vec<String>, Self::Error> {
        self.try_get(i)
    }
}

const DEVICE_COLUMNS: &str = "app, username, device, way, agent, token, components, refreshed";

pub(super) async fn pending(
    client: &Client,
    app: &str,
    user: &str,
    agent: Option<&str>,
    after: u64,
    limit: usize,
) -> Result<Vec<PushedMessage>, StoreError> {
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
    rows.iter()
        .map(|row| rows::pushed(row, agent))
        .collect::<Result<_, _>>()
        .map_err(backend)
}

pub(super) async fn list(
    client: &Client,
    query: MessageQuery,
) -> Result<Page<MessageRecord>, StoreError> {
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
    let mut items = rows
        .iter()
        .map(rows::record)
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let ids: Vec<i64> = items
        .iter()
        .filter_map(|r| Some(crate::id::read_back(&r.id)? as i64))
        .collect();
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
            let id = row.int(0).map_err(backend)?;
            if let Some(record) = by_id.get_mut(&id) {
                let (status, count) = rows::status_count(&row, 1).map_err(backend)?;
                *record.summary.entry(status).or_default() += count;
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

pub(super) async fn get(client: &Client, id: u64) -> Result<Option<MessageRecord>, StoreError> {
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
    let mut record = rows::record(&row).map_err(backend)?;
    let mut channels: BTreeMap<String, Vec<ChannelRow>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT recipient, channel, status, due, reason, updated FROM channel_steps
             WHERE message_id = $1",
            &[&(id as i64)],
        )
        .await
        .map_err(backend)?
    {
        let (user, row) = rows::channel_row(&row).map_err(backend)?;
        channels.entry(user).or_default().push(row);
    }
    let recipients = client
        .query(
            "SELECT recipient, status, push, updated, reason FROM recipients
             WHERE message_id = $1 ORDER BY recipient",
            &[&(id as i64)],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|row| rows::recipient(row, &mut channels))
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    for r in &recipients {
        *record.summary.entry(r.status).or_default() += 1;
    }
    record.recipients = Some(recipients);
    Ok(Some(record))
}

pub(super) async fn topic_since(
    client: &Client,
    app: &str,
    patterns: &[String],
    after: u64,
    limit: usize,
) -> Result<TopicReplay, StoreError> {
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

pub(super) async fn topics(client: &Client) -> Result<Vec<(String, String)>, StoreError> {
    Ok(client
        .query("SELECT app, topic FROM topics", &[])
        .await
        .map_err(backend)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub(super) async fn devices_of(
    client: &Client,
    app: &str,
    users: &[String],
) -> Result<Vec<Device>, StoreError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE app = $1 AND username = ANY($2)"
        ))
        .await
        .map_err(backend)?;
    client
        .query(&statement, &[&app, &users])
        .await
        .map_err(backend)?
        .iter()
        .map(rows::device)
        .collect::<Result<_, _>>()
        .map_err(backend)
}

pub(super) async fn list_devices(
    client: &Client,
    query: DeviceQuery,
) -> Result<Page<Device>, StoreError> {
    let filter = "WHERE ($1::text IS NULL OR app = $1) AND ($2::text IS NULL OR username = $2)
                    AND ($3::text IS NULL OR device = $3) AND ($4::text IS NULL OR way = $4)";
    let way = query.way.map(Way::as_str);
    let args: [&(dyn ToSql + Sync); 4] = [&query.app, &query.user, &query.device, &way];
    let size = query.size.clamp(1, 1000);
    let page = query.page.max(1);
    let offset = (page - 1).saturating_mul(size);
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
        .map(rows::device)
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    Ok(Page {
        items,
        page,
        size,
        total: total as u64,
    })
}

pub(super) async fn preferences(
    client: &Client,
    app: &str,
    users: &[String],
) -> Result<Vec<(String, Preferences)>, StoreError> {
    let statement = client
        .prepare_cached("SELECT user_id, doc FROM preferences WHERE app = $1 AND user_id = ANY($2)")
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

pub(super) async fn terms(
    client: &Client,
    app: &str,
    user: &str,
) -> Result<Vec<String>, StoreError> {
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

pub(super) async fn resolve(
    client: &Client,
    app: &str,
    expr: &Expr,
    within: Option<Vec<String>>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
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
