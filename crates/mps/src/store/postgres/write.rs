//! The writer of the PostgreSQL store: group commit. Every write that arrived while the
//! previous transaction committed goes into the next one, its statements sent at once (pipelined
//! on one connection), so a batch costs about one round trip and one WAL flush. A batch refused
//! because of one bad write is committed again write by write, so that only that write fails.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use deadpool_postgres::{Pool, Transaction};
use mps_proto::Status;

use super::backend;
use super::topics::{append_topic, trim_topic};
use crate::store::rows::{self, status_code};
use crate::store::write::{Queue, Write, Written};
use crate::store::{
    Claimed, DeviceSelector, ExpiredRecipient, IdempotencyKey, KeyedWrite, NewMessage, PushRecord,
    Registered, StepRecord, StoreError, Swept, TermSet, formats_column,
};
use crate::words::{AgentFilter, Device, Way};

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 2048;

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

pub(super) async fn write_loop(pool: Pool, mut rx: Queue) {
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
        .filter_map(|op| op.topic_app().map(str::to_owned))
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
        .map(|op| match op.topic_app() {
            Some(app) => {
                let counter = counters.entry(app.to_owned()).or_default();
                *counter += 1;
                *counter
            }
            None => 0,
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
        Write::Insert(m) => insert(tx, m).await,
        Write::Status { app, user, ids, to } => set_status(tx, app, user, ids, *to).await,
        Write::Delete(id) => {
            let statement = tx
                .prepare_cached(
                    "WITH r AS (DELETE FROM recipients WHERE message_id = $1),
                          c AS (DELETE FROM channel_steps WHERE message_id = $1)
                     DELETE FROM messages WHERE id = $1",
                )
                .await?;
            Ok(Written::Count(
                tx.execute(&statement, &[&(*id as i64)]).await?,
            ))
        }
        Write::Sweep {
            now,
            keep_expired,
            report,
        } => sweep(tx, *now, *keep_expired, *report).await,
        Write::AppendTopic {
            app,
            entry,
            created,
            keep,
        } => append_topic(tx, app, entry, *created, *keep, seq).await,
        Write::Keyed(key, write) => keyed(tx, key, write, seq).await,
        Write::SetPreferences { app, user, doc } => set_preferences(tx, app, user, doc).await,
        Write::SetTerms {
            app,
            user,
            set,
            terms,
        } => set_terms(tx, app, user, *set, terms).await,
        Write::TrimTopics(cutoffs) => {
            let mut dropped = 0;
            for (app, topic, cutoff) in cutoffs {
                dropped += trim_topic(tx, app, topic, "created < $3", cutoff).await?;
            }
            Ok(Written::Count(dropped))
        }
        Write::RecordPush { app, id, results } => record_push(tx, app, *id, results).await,
        Write::ClaimSteps {
            now,
            retry_at,
            limit,
        } => claim_steps(tx, *now, *retry_at, *limit).await,
        Write::RecordSteps { app, records } => record_steps(tx, app, records).await,
        Write::RegisterDevice(d) => register_device(tx, d).await,
        Write::RemoveDevices(selector) => remove_devices(tx, selector).await,
        Write::RemoveToken { app, way, token } => {
            let statement = tx
                .prepare_cached("DELETE FROM devices WHERE app = $1 AND way = $2 AND token = $3")
                .await?;
            let removed = tx.execute(&statement, &[app, &way.as_str(), token]).await?;
            Ok(Written::Count(removed))
        }
        Write::ExpireDevices(before) => {
            let removed = tx
                .execute("DELETE FROM devices WHERE refreshed < $1", &[before])
                .await?;
            Ok(Written::Count(removed))
        }
    }
}

/// Delivery moves only pending rows (pushed or not); an ack moves pending or delivered ones.
async fn set_status(
    tx: &Transaction<'_>,
    app: &str,
    user: &str,
    ids: &[u64],
    to: Status,
) -> Result<Written, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(
            "UPDATE recipients SET status = $1, updated = $2
             WHERE app = $3 AND recipient = $4 AND message_id = ANY($5) AND status < $1
             RETURNING message_id",
        )
        .await?;
    let now = crate::id::now_ms() as i64;
    let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    let code = status_code(to) as i16;
    let changed = tx
        .query(&statement, &[&code, &now, &app, &user, &ids])
        .await?;
    Ok(Written::Ids(
        changed.iter().map(|r| r.get::<_, i64>(0) as u64).collect(),
    ))
}

async fn set_preferences(
    tx: &Transaction<'_>,
    app: &str,
    user: &str,
    doc: &Option<String>,
) -> Result<Written, tokio_postgres::Error> {
    let changed = match doc {
        Some(doc) => {
            tx.execute(
                "INSERT INTO preferences (app, user_id, doc) VALUES ($1, $2, $3)
                 ON CONFLICT (app, user_id) DO UPDATE SET doc = EXCLUDED.doc",
                &[&app, &user, doc],
            )
            .await?
        }
        None => {
            tx.execute(
                "DELETE FROM preferences WHERE app = $1 AND user_id = $2",
                &[&app, &user],
            )
            .await?
        }
    };
    Ok(Written::Count(changed))
}

async fn set_terms(
    tx: &Transaction<'_>,
    app: &str,
    user: &str,
    set: TermSet,
    terms: &[String],
) -> Result<Written, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(
            "DELETE FROM user_tags WHERE app = $1 AND user_id = $2 AND (left(tag, 4) = 'tag:') = $3",
        )
        .await?;
    tx.execute(&statement, &[&app, &user, &(set == TermSet::Tags)])
        .await?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO user_tags (app, user_id, tag) SELECT $1, $2, unnest($3::text[])
             ON CONFLICT DO NOTHING",
        )
        .await?;
    tx.execute(&statement, &[&app, &user, &terms]).await?;
    Ok(Written::Count(terms.len() as u64))
}

async fn record_push(
    tx: &Transaction<'_>,
    app: &str,
    id: u64,
    results: &[PushRecord],
) -> Result<Written, tokio_postgres::Error> {
    let (users, pushes, reasons): (Vec<&str>, Vec<i16>, Vec<Option<&str>>) = results
        .iter()
        .map(|r| {
            let push = rows::push_code(r.pushed) as i16;
            (r.user.as_str(), push, r.reason.as_deref())
        })
        .collect();
    let statement = tx
        .prepare_cached(
            "UPDATE recipients SET push = v.push, reason = v.reason, updated = $3
             FROM unnest($4::text[], $5::int2[], $6::text[]) AS v(recipient, push, reason)
             WHERE recipients.message_id = $1 AND recipients.app = $2
               AND recipients.recipient = v.recipient AND recipients.status = 0",
        )
        .await?;
    let now = crate::id::now_ms() as i64;
    let changed = tx
        .execute(
            &statement,
            &[&(id as i64), &app, &now, &users, &pushes, &reasons],
        )
        .await?;
    Ok(Written::Count(changed))
}

/// Claims the steps due at `now` (`queued`, due again at `retry_at`) with their messages. The
/// rows another node is claiming are skipped, not waited for.
async fn claim_steps(
    tx: &Transaction<'_>,
    now: i64,
    retry_at: i64,
    limit: usize,
) -> Result<Written, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(
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
        )
        .await?;
    let steps = tx
        .query(&statement, &[&now, &retry_at, &(limit as i64)])
        .await?
        .iter()
        .map(rows::due_step)
        .collect::<Result<_, _>>()?;
    Ok(Written::Steps(steps))
}

async fn record_steps(
    tx: &Transaction<'_>,
    app: &str,
    records: &[StepRecord],
) -> Result<Written, tokio_postgres::Error> {
    let ids: Vec<i64> = records.iter().map(|r| r.id as i64).collect();
    let users: Vec<&str> = records.iter().map(|r| r.user.as_str()).collect();
    let channels: Vec<&str> = records.iter().map(|r| r.channel.as_str()).collect();
    let statuses: Vec<&str> = records.iter().map(|r| r.status.as_str()).collect();
    let reasons: Vec<Option<&str>> = records.iter().map(|r| r.reason.as_deref()).collect();
    let statement = tx
            .prepare_cached(
                "INSERT INTO channel_steps (message_id, app, recipient, channel, status, due, reason, updated)
                 SELECT v.id, $1, v.recipient, v.channel, v.status, NULL, v.reason, $2
                 FROM unnest($3::int8[], $4::text[], $5::text[], $6::text[], $7::text[])
                      AS v(id, recipient, channel, status, reason)
                 WHERE EXISTS (SELECT 1 FROM recipients r
                               WHERE r.message_id = v.id AND r.recipient = v.recipient)
                 ON CONFLICT (message_id, recipient, channel) DO UPDATE SET
                     status = EXCLUDED.status, due = NULL, reason = EXCLUDED.reason,
                     updated = EXCLUDED.updated",
            )
            .await?;
    let now = crate::id::now_ms() as i64;
    let changed = tx
        .execute(
            &statement,
            &[&app, &now, &ids, &users, &channels, &statuses, &reasons],
        )
        .await?;
    Ok(Written::Count(changed))
}

async fn remove_devices(
    tx: &Transaction<'_>,
    selector: &DeviceSelector,
) -> Result<Written, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(
            "DELETE FROM devices WHERE app = $1 AND username = $2
               AND ($3::text IS NULL OR device = $3) AND ($4::text IS NULL OR way = $4)",
        )
        .await?;
    let way = selector.way.map(Way::as_str);
    let removed = tx
        .execute(
            &statement,
            &[&selector.app, &selector.user, &selector.device, &way],
        )
        .await?;
    Ok(Written::Count(removed))
}

/// Takes the token from any other registration, then inserts or refreshes this one.
async fn register_device(
    tx: &Transaction<'_>,
    d: &Device,
) -> Result<Written, tokio_postgres::Error> {
    let way = d.way.as_str();
    let statement = tx
        .prepare_cached(
            "DELETE FROM devices WHERE app = $1 AND way = $2 AND token = $3
               AND NOT (username = $4 AND device = $5)
             RETURNING username",
        )
        .await?;
    let mut taken_from: Vec<String> = tx
        .query(&statement, &[&d.app, &way, &d.token, &d.user, &d.device])
        .await?
        .iter()
        .map(|r| r.get(0))
        .filter(|u: &String| *u != d.user)
        .collect();
    taken_from.sort();
    taken_from.dedup();
    let statement = tx
        .prepare_cached(
            "INSERT INTO devices (app, username, device, way, agent, token, components, refreshed)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (app, username, device, way) DO UPDATE SET
                 agent = EXCLUDED.agent, token = EXCLUDED.token,
                 components = EXCLUDED.components, refreshed = EXCLUDED.refreshed
             RETURNING (xmax = 0)",
        )
        .await?;
    let created: bool = tx
        .query_one(
            &statement,
            &[
                &d.app,
                &d.user,
                &d.device,
                &way,
                &d.agent,
                &d.token,
                &d.components,
                &d.refreshed,
            ],
        )
        .await?
        .get(0);
    Ok(Written::Registered(Registered {
        created,
        taken_from,
    }))
}

async fn insert(tx: &Transaction<'_>, m: &NewMessage) -> Result<Written, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(
            "WITH m AS (
                INSERT INTO messages (id, app, title, kind, component, sender, agents, content, created, expires, except_agents, formats)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $13))
             INSERT INTO recipients (message_id, app, recipient, status, updated)
             SELECT $1, $2, u, 0, $9 FROM unnest($11::text[]) AS u
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let (agents, except_agents) = match &m.agents {
        AgentFilter::Any => (None, None),
        AgentFilter::Only(list) => (Some(list), None),
        AgentFilter::Except(list) => (None, Some(list)),
    };
    tx.execute(
        &statement,
        &[
            &(m.id as i64),
            &m.app,
            &m.title,
            &m.kind,
            &m.component,
            &m.sender,
            &agents,
            &m.content.get(),
            &m.created,
            &m.expires,
            &m.recipients,
            &except_agents,
            &formats_column(&m.formats),
        ],
    )
    .await?;
    if !m.steps.is_empty() {
        let (channels, dues): (Vec<&str>, Vec<i64>) =
            m.steps.iter().map(|(c, due)| (c.as_str(), *due)).unzip();
        let statement = tx
            .prepare_cached(
                "INSERT INTO channel_steps (message_id, app, recipient, channel, status, due, updated)
                 SELECT $1, $2, u, s.channel, 'scheduled', s.due, $3
                 FROM unnest($4::text[]) AS u, unnest($5::text[], $6::int8[]) AS s(channel, due)
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(
            &statement,
            &[
                &(m.id as i64),
                &m.app,
                &m.created,
                &m.recipients,
                &channels,
                &dues,
            ],
        )
        .await?;
    }
    if !m.own_steps.is_empty() {
        let mut users = Vec::with_capacity(m.own_steps.len());
        let mut channels = Vec::with_capacity(m.own_steps.len());
        let mut dues = Vec::with_capacity(m.own_steps.len());
        for (user, channel, due) in &m.own_steps {
            users.push(user.as_str());
            channels.push(channel.as_str());
            dues.push(*due);
        }
        let statement = tx
            .prepare_cached(
                "INSERT INTO channel_steps (message_id, app, recipient, channel, status, due, updated)
                 SELECT $1, $2, s.recipient, s.channel, 'scheduled', s.due, $3
                 FROM unnest($4::text[], $5::text[], $6::int8[]) AS s(recipient, channel, due)
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        tx.execute(
            &statement,
            &[&(m.id as i64), &m.app, &m.created, &users, &channels, &dues],
        )
        .await?;
    }
    Ok(Written::Count(1))
}

/// Claims an idempotency key and does the write, or reports the message holding the key. One
/// statement claims it, so two writes with one key in a batch see each other in order.
async fn keyed(
    tx: &Transaction<'_>,
    key: &IdempotencyKey,
    write: &KeyedWrite,
    seq: i64,
) -> Result<Written, tokio_postgres::Error> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO idempotency (app, key, message_id, created, expires)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (app, key) DO UPDATE
                 SET message_id = EXCLUDED.message_id, created = EXCLUDED.created,
                     expires = EXCLUDED.expires
                 WHERE idempotency.expires <= EXCLUDED.created
             RETURNING message_id",
        )
        .await?;
    let claimed = tx
        .query_opt(
            &statement,
            &[
                &key.app,
                &key.key,
                &(key.id as i64),
                &key.created,
                &key.expires,
            ],
        )
        .await?;
    if claimed.is_none() {
        let holder = tx
            .query_one(
                "SELECT message_id FROM idempotency WHERE app = $1 AND key = $2",
                &[&key.app, &key.key],
            )
            .await?;
        return Ok(Written::Claimed(Claimed::Duplicate(
            holder.get::<_, i64>(0) as u64,
        )));
    }
    match write {
        KeyedWrite::Message(m) => {
            insert(tx, m).await?;
        }
        KeyedWrite::Topic {
            entry,
            created,
            keep,
        } => {
            append_topic(tx, &key.app, entry, *created, *keep, seq).await?;
        }
        KeyedWrite::KeyOnly => {}
    }
    Ok(Written::Claimed(Claimed::Fresh))
}

async fn sweep(
    tx: &Transaction<'_>,
    now: i64,
    keep_expired: i64,
    report: usize,
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
    const EXPIRE: &str = "UPDATE recipients SET status = 3, updated = $1
             WHERE status < 2 AND message_id IN
                 (SELECT id FROM messages WHERE expires > $2 AND expires <= $1)";
    let mut reported = Vec::new();
    let expired = if report == 0 {
        tx.execute(EXPIRE, &[&now, &since]).await?
    } else {
        use futures_util::TryStreamExt;
        let statement = format!("{EXPIRE} RETURNING app, message_id, recipient");
        let rows = tx
            .query_raw(
                &statement,
                [&now as &(dyn tokio_postgres::types::ToSql + Sync), &since],
            )
            .await?;
        let mut rows = std::pin::pin!(rows);
        let mut count = 0;
        while let Some(row) = rows.try_next().await? {
            count += 1;
            if reported.len() < report {
                reported.push(ExpiredRecipient {
                    app: row.get(0),
                    id: row.get::<_, i64>(1) as u64,
                    user: row.get(2),
                });
            }
        }
        count
    };
    tx.execute(
        "UPDATE sweeps SET expired_upto = greatest(expired_upto, $1) WHERE id = 1",
        &[&now],
    )
    .await?;
    let cutoff = now.saturating_sub(keep_expired);
    let deleted = tx
        .execute(
            "WITH r AS (DELETE FROM recipients WHERE message_id IN
                          (SELECT id FROM messages WHERE expires <= $1)),
                  c AS (DELETE FROM channel_steps WHERE message_id IN
                          (SELECT id FROM messages WHERE expires <= $1))
             DELETE FROM messages WHERE expires <= $1",
            &[&cutoff],
        )
        .await?;
    tx.execute("DELETE FROM idempotency WHERE expires <= $1", &[&now])
        .await?;
    Ok(Written::Swept(Swept {
        expired,
        deleted,
        reported,
    }))
}
