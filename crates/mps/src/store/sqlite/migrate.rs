//! The embedded store's schema: numbered migrations (`migrations/NNNN_*.sql`, the same numbers
//! as the PostgreSQL store's), applied in order at open and recorded in `mps_migrations`.
//!
//! A store of a release before numbered migrations has no `mps_migrations`: its tables are
//! there and some of its columns were added later. Every migration creates only what is
//! missing, and on such a store a column the store already has is not added again, so each
//! migration is applied (as far as it is missing) and recorded once.

use std::collections::BTreeSet;

use rusqlite::{Connection, TransactionBehavior, params};

/// The migrations, in order. Never edit one that has shipped: add the next.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_idempotency.sql")),
    (3, include_str!("migrations/0003_devices.sql")),
    (4, include_str!("migrations/0004_audience.sql")),
    (5, include_str!("migrations/0005_channels.sql")),
    (6, include_str!("migrations/0006_partial_indexes.sql")),
];

/// Brings the store up to the last migration, in one transaction.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let versioned = tx
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mps_migrations'")?
        .exists([])?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS mps_migrations (
             version INTEGER PRIMARY KEY,
             applied INTEGER NOT NULL
         );",
    )?;
    let applied: BTreeSet<i64> = tx
        .prepare("SELECT version FROM mps_migrations")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        if versioned {
            tracing::info!(version, "applying SQLite migration");
            tx.execute_batch(sql)?;
        } else {
            tracing::info!(
                version,
                "bringing an SQLite store of an earlier release to migration"
            );
            catch_up(&tx, sql)?;
        }
        tx.execute(
            "INSERT INTO mps_migrations (version, applied) VALUES (?1, ?2)",
            params![version, crate::id::now_ms() as i64],
        )?;
    }
    tx.commit()
}

/// Applies a migration to a store that predates `mps_migrations`, statement by statement,
/// leaving out the columns the store has.
fn catch_up(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    for statement in statements(sql) {
        let present = match added_column(&statement) {
            Some((table, column)) => has_column(conn, table, column)?,
            None => false,
        };
        if !present {
            conn.execute_batch(&statement)?;
        }
    }
    Ok(())
}

/// The statements of a migration file: comments dropped, split where a line ends with `;`.
fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let line = line.split("--").next().unwrap_or_default().trim_end();
        if line.trim().is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.ends_with(';') {
            statements.push(std::mem::take(&mut current));
        }
    }
    statements
}

/// The table and column of an `ALTER TABLE t ADD COLUMN c ...` statement.
fn added_column(statement: &str) -> Option<(&str, &str)> {
    match statement.split_whitespace().collect::<Vec<_>>()[..] {
        ["ALTER", "TABLE", table, "ADD", "COLUMN", column, ..] => Some((table, column)),
        _ => None,
    }
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists(params![table, column])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_of_every_migration_is_found() {
        let before = |version: i64| {
            let conn = Connection::open_in_memory().unwrap();
            for (_, earlier) in MIGRATIONS.iter().take_while(|(v, _)| *v < version) {
                conn.execute_batch(earlier).unwrap();
            }
            conn
        };
        for (version, sql) in MIGRATIONS {
            // Split or whole, a migration leaves the same schema.
            let (conn, split) = (before(*version), before(*version));
            conn.execute_batch(sql).unwrap();
            catch_up(&split, sql).unwrap();
            assert_eq!(schema(&conn), schema(&split), "migration {version}");
        }
    }

    #[test]
    fn a_store_of_the_release_before_numbered_migrations_is_recognized() {
        let mut conn = Connection::open_in_memory().unwrap();
        for (_, sql) in MIGRATIONS {
            conn.execute_batch(sql).unwrap();
        }
        let before = schema(&conn);
        migrate(&mut conn).unwrap();
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM mps_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
        let after: Vec<String> = schema(&conn)
            .into_iter()
            .filter(|sql| !sql.contains("mps_migrations"))
            .collect();
        assert_eq!(after, before);
        // Opening again applies nothing.
        migrate(&mut conn).unwrap();
    }

    /// Every table's columns and every index, without the comments SQLite keeps.
    fn schema(conn: &Connection) -> Vec<String> {
        conn.prepare(
            "SELECT m.type || ' ' || m.name || coalesce(' ' || p.name || ' ' || p.type, '')
             FROM sqlite_master m LEFT JOIN pragma_table_info(m.name) p
             ORDER BY m.name, p.cid",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }
}
