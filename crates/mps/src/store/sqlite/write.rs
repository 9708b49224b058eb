//! The writer of the embedded store: one thread owns the write connection and commits every
//! write that arrived while the previous commit ran in one transaction (group commit). A batch
//! that fails is retried write by write, so that one bad write cannot fail the others.

use std::time::Instant;

use mps_proto::Status;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{agents_columns, backend, write_error};
use crate::store::rows::{self, status_code};
use crate::store::write::{Queue, Reply, Write, Written, kept};
use crate::store::{
    Claimed, ExpiredRecipient, IdempotencyKey, KeyedWrite, NewMessage, PushRecord, Registered,
    StepRecord, StoreError, Swept, TermSet, TopicEntry, formats_column,
};
use crate::words::{Device, Way};

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 4096;

pub(super) fn write_loop(mut conn: Connection, mut rx: Queue) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let started = Instant::now();
        let size = batch.len();
        // One transaction for the whole batch. Writes only fail on corrupt input or a broken
        // disk; if the batch fails, each write is retried alone.
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

fn apply(tx: &Transaction, op: &Write) -> rusqlite::Result<Written> {
    match op {
        Write::Insert(m) => insert(tx, m),
        Write::Keyed(key, write) => keyed(tx, key, write),
        Write::Status { app, user, ids, to } => set_status(tx, app, user, ids, *to),
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
        } => sweep(tx, *now, *keep_expired, *report),
        Write::AppendTopic {
            app,
            entry,
            created,
            keep,
        } => append_topic(tx, app, entry, *created, *keep),
        Write::TrimTopics(cutoffs) => trim_topics(tx, cutoffs),
        Write::RecordPush { app, id, results } => record_push(tx, app, *id, results),
        Write::ClaimSteps {
            now,
            retry_at,
            limit,
        } => claim_steps(tx, *now, *retry_at, *limit),
        Write::RecordSteps { app, records } => record_steps(tx, app, records),
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
        } => set_terms(tx, app, user, *set, terms),
    }
}

fn insert(tx: &Transaction, m: &NewMessage) -> rusqlite::Result<Written> {
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
            m.expires,
            formats_column(&m.formats),
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

/// Claims an idempotency key and does the write, or reports the message holding the key.
fn keyed(tx: &Transaction, key: &IdempotencyKey, write: &KeyedWrite) -> rusqlite::Result<Written> {
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

/// Moves recipients to `to`, only from an earlier status: delivery moves pending rows (pushed
/// or not), an ack pending or delivered ones.
fn set_status(
    tx: &Transaction,
    app: &str,
    user: &str,
    ids: &[u64],
    to: Status,
) -> rusqlite::Result<Written> {
    let now = crate::id::now_ms() as i64;
    let mut stmt = tx.prepare_cached(
        "UPDATE recipients SET status = ?1, updated = ?2
         WHERE message_id = ?3 AND user = ?4 AND app = ?5 AND status < ?1",
    )?;
    let mut changed = Vec::new();
    for id in ids {
        if stmt.execute(params![status_code(to), now, *id as i64, user, app])? > 0 {
            changed.push(*id);
        }
    }
    Ok(Written::Ids(changed))
}

fn sweep(
    tx: &Transaction,
    now: i64,
    keep_expired: i64,
    report: usize,
) -> rusqlite::Result<Written> {
    const EXPIRE: &str = "UPDATE recipients SET status = 3, updated = ?1
         WHERE status IN (0, 1) AND message_id IN (SELECT id FROM messages WHERE expires <= ?1)";
    let mut reported = Vec::new();
    let expired = if report == 0 {
        tx.execute(EXPIRE, [now])?
    } else {
        let mut stmt = tx.prepare(&format!("{EXPIRE} RETURNING app, message_id, user"))?;
        let mut rows = stmt.query([now])?;
        let mut count = 0;
        while let Some(row) = rows.next()? {
            count += 1;
            if reported.len() < report {
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

fn record_push(
    tx: &Transaction,
    app: &str,
    id: u64,
    results: &[PushRecord],
) -> rusqlite::Result<Written> {
    let now = crate::id::now_ms() as i64;
    let mut stmt = tx.prepare_cached(
        "UPDATE recipients SET push = ?1, reason = ?2, updated = ?3
         WHERE message_id = ?4 AND user = ?5 AND app = ?6 AND status = 0",
    )?;
    let mut changed = 0;
    for r in results {
        let push = rows::push_code(r.pushed);
        changed += stmt.execute(params![push, r.reason, now, id as i64, r.user, app])?;
    }
    Ok(Written::Count(changed as u64))
}

/// Takes the steps due at `now` (`queued`, due again at `retry_at`) with their messages.
fn claim_steps(
    tx: &Transaction,
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
        .query_map(params![now, limit as i64], |r| rows::due_step(r))?
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

fn record_steps(tx: &Transaction, app: &str, records: &[StepRecord]) -> rusqlite::Result<Written> {
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

/// Takes the token from any other registration, then inserts or refreshes this one.
fn register_device(tx: &Transaction, d: &Device) -> rusqlite::Result<Written> {
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

fn set_terms(
    tx: &Transaction,
    app: &str,
    user: &str,
    set: TermSet,
    terms: &[String],
) -> rusqlite::Result<Written> {
    tx.prepare_cached(
        "DELETE FROM user_tags WHERE app = ?1 AND user_id = ?2 AND (substr(tag, 1, 4) = 'tag:') = ?3",
    )?
    .execute(params![app, user, set == TermSet::Tags])?;
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO user_tags (app, user_id, tag) VALUES (?1, ?2, ?3)",
    )?;
    for term in terms {
        stmt.execute(params![app, user, term])?;
    }
    Ok(Written::Count(terms.len() as u64))
}

fn append_topic(
    tx: &Transaction,
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
            .query_row(params![app, entry.topic, kept(keep)], |r| r.get(0))
            .optional()?;
    if let Some(upto) = oldest_dropped {
        trim_topic(tx, app, &entry.topic, upto)?;
    }
    Ok(Written::Count(1))
}

fn trim_topics(tx: &Transaction, cutoffs: &[(String, String, i64)]) -> rusqlite::Result<Written> {
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

/// Drops a topic's log entries up to `upto` and remembers the watermark.
fn trim_topic(tx: &Transaction, app: &str, topic: &str, upto: i64) -> rusqlite::Result<usize> {
    let n = tx
        .prepare_cached("DELETE FROM topic_log WHERE app = ?1 AND topic = ?2 AND id <= ?3")?
        .execute(params![app, topic, upto])?;
    tx.prepare_cached(
        "UPDATE topics SET trimmed = max(trimmed, ?3) WHERE app = ?1 AND topic = ?2",
    )?
    .execute(params![app, topic, upto])?;
    Ok(n)
}
