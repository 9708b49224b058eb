//! The PostgreSQL store's schema: numbered migrations (`migrations/NNNN_*.sql`, the same numbers
//! as the embedded store's; a number that concerns only the other store is a comment), applied
//! in order at start under an advisory lock and recorded in `mps_migrations`, so starting any
//! number of nodes at once applies each migration exactly once.

use std::collections::BTreeSet;

use deadpool_postgres::Pool;

use super::backend;
use crate::store::StoreError;

/// The migrations, in order. Never edit one that has shipped: add the next.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_idempotency.sql")),
    (3, include_str!("migrations/0003_devices.sql")),
    (4, include_str!("migrations/0004_audience.sql")),
    (5, include_str!("migrations/0005_channels.sql")),
    (6, include_str!("migrations/0006_partial_indexes.sql")),
];

pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
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
