//! The reads of the embedded store, each on one pooled read-only connection.

use std::collections::BTreeMap;

use mps_proto::{MessageRecord, Page, Preferences, PushedMessage};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::agents_from;
use crate::audience::Expr;
use crate::audience::sql::{self, Dialect, Param};
use crate::store::rows::ChannelRow;
use crate::store::rows::{self, Columns, RECORD_COLUMNS, status_condition};
use crate::store::{DeviceQuery, MessageQuery, TopicEntry, TopicReplay};
use crate::words::{Device, Way};

impl Columns for Row<'_> {
    type Error = rusqlite::Error;

    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }

    fn opt_int(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }

    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }

    fn opt_text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }

    fn code(&self, i: usize) -> rusqlite::Result<Option<i64>> {
        self.get(i)
    }

    fn agents(&self, i: usize) -> rusqlite::Result<Option<Vec<String>>> {
        Ok(agents_from(self.get(i)?))
    }

    fn components(&self, i: usize) -> rusqlite::Result<Vec<String>> {
        let json: String = self.get(i)?;
        Ok(serde_json::from_str(&json).unwrap_or_default())
    }
}

const DEVICE_COLUMNS: &str = "app, user, device, way, agent, token, components, refreshed";

pub(super) fn pending(
    conn: &Connection,
    app: &str,
    user: &str,
    agent: Option<&str>,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<PushedMessage>> {
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
        |row| rows::pushed(row, agent),
    )?;
    rows.collect()
}

pub(super) fn list(
    conn: &Connection,
    query: MessageQuery,
) -> rusqlite::Result<Page<MessageRecord>> {
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
        .query_map(params_from_iter(args.iter()), |r| rows::record(r))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    summaries(conn, &mut items)?;
    Ok(Page {
        items,
        page,
        size,
        total: total as u64,
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
        for row in stmt.query_map([id], |r| rows::status_count(r, 0))? {
            let (status, count) = row?;
            *record.summary.entry(status).or_default() += count;
        }
    }
    Ok(())
}

pub(super) fn get(conn: &Connection, id: u64) -> rusqlite::Result<Option<MessageRecord>> {
    let record = conn
        .query_row(
            &format!("SELECT {RECORD_COLUMNS} FROM messages m WHERE m.id = ?1"),
            [id as i64],
            |r| rows::record(r),
        )
        .optional()?;
    let Some(mut record) = record else {
        return Ok(None);
    };
    let mut channels: BTreeMap<String, Vec<ChannelRow>> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(
        "SELECT user, channel, status, due, reason, updated FROM channel_steps
         WHERE message_id = ?1",
    )?;
    for row in stmt.query_map([id as i64], |r| rows::channel_row(r))? {
        let (user, row) = row?;
        channels.entry(user).or_default().push(row);
    }
    let mut stmt = conn.prepare_cached(
        "SELECT user, status, push, updated, reason FROM recipients WHERE message_id = ?1
         ORDER BY user",
    )?;
    let recipients = stmt
        .query_map([id as i64], |r| rows::recipient(r, &mut channels))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for r in &recipients {
        *record.summary.entry(r.status).or_default() += 1;
    }
    record.recipients = Some(recipients);
    Ok(Some(record))
}

pub(super) fn topic_since(
    conn: &Connection,
    app: &str,
    patterns: &[String],
    after: u64,
    limit: usize,
) -> rusqlite::Result<TopicReplay> {
    let mut stmt = conn.prepare_cached("SELECT topic, trimmed FROM topics WHERE app = ?1")?;
    let known = stmt
        .query_map([app], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
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
        let rows = stmt.query_map(params![app, topic, after as i64, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
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
}

pub(super) fn topics(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached("SELECT app, topic FROM topics")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

pub(super) fn devices_of(
    conn: &Connection,
    app: &str,
    users: &[String],
) -> rusqlite::Result<Vec<Device>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE app = ?1 AND user = ?2"
    ))?;
    let mut devices = Vec::new();
    for user in users {
        for device in stmt.query_map(params![app, user], |r| rows::device(r))? {
            devices.push(device?);
        }
    }
    Ok(devices)
}

pub(super) fn list_devices(
    conn: &Connection,
    query: DeviceQuery,
) -> rusqlite::Result<Page<Device>> {
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
        .query_map(args, |r| rows::device(r))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page {
        items,
        page,
        size,
        total: total as u64,
    })
}

pub(super) fn preferences(
    conn: &Connection,
    app: &str,
    users: &[String],
) -> rusqlite::Result<Vec<(String, Preferences)>> {
    let users = serde_json::to_string(users).unwrap_or_default();
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
}

pub(super) fn terms(conn: &Connection, app: &str, user: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn
        .prepare_cached("SELECT tag FROM user_tags WHERE app = ?1 AND user_id = ?2 ORDER BY tag")?;
    let rows = stmt.query_map(params![app, user], |r| r.get(0))?;
    rows.collect()
}

pub(super) fn resolve(
    conn: &Connection,
    app: &str,
    expr: &Expr,
    within: Option<Vec<String>>,
    limit: usize,
) -> rusqlite::Result<Vec<String>> {
    let mut estimates = std::collections::HashMap::new();
    if within.is_none() {
        let mut stmt = conn.prepare_cached(&sql::estimate_sql(Dialect::Sqlite))?;
        for term in sql::terms_to_estimate(expr) {
            let n: i64 = stmt.query_row(params![app, term], |r| r.get(0))?;
            estimates.insert(term, n as u64);
        }
    }
    let query = sql::compile(Dialect::Sqlite, app, expr, within, &estimates, limit);
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
}
