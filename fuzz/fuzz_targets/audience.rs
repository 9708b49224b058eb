//! Audience expressions (`crate::audience`), as sent in a message's `audience`: any text is
//! parsed without a panic; a parsed expression prints and parses back to itself; the agent
//! filter admits exactly the agents its `agent:` terms do; and the SQL the store runs for it
//! selects, in SQLite, exactly the users for whom the expression holds, whichever driver the
//! estimates choose.

#![no_main]

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use libfuzzer_sys::fuzz_target;
use mps::audience::sql::{self, Dialect, Param};
use mps::audience::{AGENT, Audience, Expr, USER, parse};
use rusqlite::Connection;

/// The expression with every operator in parentheses, as the parser reads it back.
fn print(expr: &Expr) -> String {
    match expr {
        Expr::Term(t) => t.to_string(),
        Expr::Not(inner) => format!("NOT {}", print(inner)),
        Expr::And(list) => join(list, " AND "),
        Expr::Or(list) => join(list, " OR "),
    }
}

fn join(list: &[Expr], operator: &str) -> String {
    let parts: Vec<String> = list.iter().map(print).collect();
    format!("({})", parts.join(operator))
}

/// A fixed pseudo-random choice, so that each input is one reproducible case.
fn coin(parts: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    hasher.finish()
}

thread_local! {
    static DB: Connection = {
        let db = Connection::open_in_memory().expect("in-memory SQLite");
        db.execute_batch(
            "CREATE TABLE user_tags (
                app     TEXT NOT NULL,
                user_id TEXT NOT NULL,
                tag     TEXT NOT NULL,
                PRIMARY KEY (app, user_id, tag)
            ) WITHOUT ROWID;
            CREATE INDEX user_tags_tag ON user_tags(app, tag, user_id);",
        )
        .expect("schema");
        db
    };
}

/// Runs the compiled query for `expr` in SQLite over users who each hold a pseudo-random half
/// of the expression's terms, and compares with evaluating it.
fn check_sql(text: &str, expr: &Expr) {
    let terms = expr.terms();
    let stored: Vec<String> = terms
        .iter()
        .filter(|t| t.key != USER)
        .map(|t| t.stored())
        .collect();
    let mut users: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    users.extend(
        terms
            .iter()
            .filter(|t| t.key == USER)
            .map(|t| t.value.clone()),
    );
    users.sort_unstable();
    users.dedup();
    // Every user holds a term of the app, so that all are in the universe a NOT ranges over.
    let holdings: HashMap<&str, Vec<String>> = users
        .iter()
        .map(|user| {
            let mut held: Vec<String> = stored
                .iter()
                .filter(|term| coin((text, user, term)) % 2 == 0)
                .cloned()
                .collect();
            held.push("fuzz-base:1".into());
            (user.as_str(), held)
        })
        .collect();
    let holds = |user: &str, expr: &Expr| {
        expr.eval(&mut |t| {
            if t.key == USER {
                t.value == user
            } else {
                holdings
                    .get(user)
                    .is_some_and(|held| held.contains(&t.stored()))
            }
        })
    };
    let estimates: HashMap<String, u64> = stored
        .iter()
        .map(|t| (t.clone(), coin((text, t)) % (sql::ESTIMATE_CAP + 1)))
        .collect();
    DB.with(|db| {
        db.execute("DELETE FROM user_tags", []).expect("delete");
        for (user, held) in &holdings {
            for tag in held {
                db.execute(
                    "INSERT OR IGNORE INTO user_tags (app, user_id, tag) VALUES ('app', ?1, ?2)",
                    [user, tag.as_str()],
                )
                .expect("insert");
            }
        }
        let ghost = "fuzz-ghost".to_owned();
        for within in [
            None,
            Some(users.iter().cloned().chain([ghost.clone()]).collect()),
        ] {
            let universe: Vec<String> = within.clone().unwrap_or_else(|| users.clone());
            let query = sql::compile(Dialect::Sqlite, "app", expr, within, &estimates, 1000);
            let params: Vec<String> = query
                .params
                .into_iter()
                .map(|p| match p {
                    Param::Text(text) => text,
                    Param::List(list) => serde_json::to_string(&list).expect("a list encodes"),
                })
                .collect();
            let mut stmt = db
                .prepare(&query.sql)
                .unwrap_or_else(|e| panic!("{}: {e}", query.sql));
            let mut found: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |r| r.get(0))
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
                .unwrap_or_else(|e| panic!("{}: {e}", query.sql));
            found.sort_unstable();
            found.dedup();
            let mut expected: Vec<String> = universe
                .iter()
                .filter(|user| holds(user, expr))
                .cloned()
                .collect();
            // The ghost may also be a `user:` of the expression.
            expected.sort_unstable();
            expected.dedup();
            assert_eq!(found, expected, "{}", query.sql);
        }
    });
    let _ = sql::compile(Dialect::Postgres, "app", expr, None, &estimates, 1000);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = parse::parse(text) else {
        let _ = Audience::parse(text);
        return;
    };
    let printed = print(&expr);
    let again = parse::parse(&printed).unwrap_or_else(|e| panic!("{printed:?}: {e}"));
    assert_eq!(print(&again), printed, "printing round-trips");

    let Ok(audience) = Audience::parse(text) else {
        return;
    };
    // The agent filter against the agent-only conjuncts it was made from.
    let conjuncts = match &expr {
        Expr::And(list) => list.clone(),
        other => vec![other.clone()],
    };
    let agent_only: Vec<&Expr> = conjuncts
        .iter()
        .filter(|c| c.terms().iter().all(|t| t.key == AGENT))
        .collect();
    let mut names: Vec<String> = expr
        .terms()
        .iter()
        .filter(|t| t.key == AGENT)
        .map(|t| t.value.clone())
        .collect();
    names.push("fuzz-unnamed".into());
    for name in &names {
        let admitted = agent_only.iter().all(|c| c.eval(&mut |t| t.value == *name));
        assert_eq!(audience.agents.admits(name), admitted, "agent {name:?}");
    }
    if let Some(users) = &audience.users {
        assert!(users.terms().iter().all(|t| t.key != AGENT));
        check_sql(text, users);
    }
});
