//! The topic log writes of the PostgreSQL writer: appending a message under its app's commit
//! sequence (`seq`, numbered by the writer's `commit`) and trimming a topic's log.

use deadpool_postgres::Transaction;

use crate::store::TopicEntry;
use crate::store::write::{Written, kept};

pub(super) async fn append_topic(
    tx: &Transaction<'_>,
    app: &str,
    entry: &TopicEntry,
    created: i64,
    keep: u64,
    seq: i64,
) -> Result<Written, tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO topics (app, topic) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&app, &entry.topic],
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
        &[
            &app,
            &entry.topic,
            &(entry.id as i64),
            &seq,
            &created,
            &frame,
        ],
    )
    .await?;
    let keep = kept(keep);
    let statement = tx
        .prepare_cached(
            "SELECT seq FROM topic_log WHERE app = $1 AND topic = $2
             ORDER BY seq DESC OFFSET $3 LIMIT 1",
        )
        .await?;
    if let Some(row) = tx
        .query_opt(&statement, &[&app, &entry.topic, &keep])
        .await?
    {
        let upto: i64 = row.get(0);
        trim_topic(tx, app, &entry.topic, "seq <= $3", &upto).await?;
    }
    Ok(Written::Count(1))
}

/// Drops a topic's log entries matching `condition` (on `$3`) and raises its watermarks.
pub(super) async fn trim_topic(
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
