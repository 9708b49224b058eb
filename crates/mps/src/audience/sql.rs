//! An audience expression as one SQL query over `user_tags (app, user_id, tag)`, whose primary
//! key is `(app, user_id, tag)` and which has an index on `(app, tag, user_id)`.
//!
//! The query walks a *driver*, a set of users that holds every match, and keeps the users for
//! whom the whole expression holds:
//!
//! ```sql
//! SELECT d.u FROM (<driver>) AS d WHERE <predicate over d.u> LIMIT n
//! ```
//!
//! A term's driver is an index range scan of `(app, tag)`; an AND is driven by its smallest
//! child (estimated by a bounded count), an OR by the UNION of its children's drivers, and an
//! expression with no driver (`NOT tag:x`) by every user with a term in the app. Each term of
//! the predicate is a primary-key lookup. Given a list of users (the online ones), that list is
//! the driver.

use std::collections::HashMap;

use super::{Expr, Term, USER};

/// Placeholder and list syntax of the two stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    /// A list of users (SQLite: a JSON array for `json_each`; PostgreSQL: `text[]`).
    List(Vec<String>),
}

/// A compiled query: its text and parameters, the app first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub sql: String,
    pub params: Vec<Param>,
}

/// Counts above this are not told apart when choosing which child of an AND drives it.
pub const ESTIMATE_CAP: u64 = 10_000;

/// The query that counts a term's users up to [`ESTIMATE_CAP`]; parameters: app, stored term.
pub fn estimate_sql(dialect: Dialect) -> String {
    let (app, tag) = match dialect {
        Dialect::Sqlite => ("?1", "?2"),
        Dialect::Postgres => ("$1", "$2"),
    };
    format!(
        "SELECT count(*) FROM (SELECT 1 FROM user_tags WHERE app = {app} AND tag = {tag} LIMIT {ESTIMATE_CAP}) AS c"
    )
}

/// The stored terms whose counts help choose a driver: those of expressions with more than one
/// stored term (one alone needs no choice).
pub fn terms_to_estimate(expr: &Expr) -> Vec<String> {
    let mut stored: Vec<String> = expr
        .terms()
        .into_iter()
        .filter(|t| t.key != USER)
        .map(Term::stored)
        .collect();
    stored.sort_unstable();
    stored.dedup();
    if stored.len() < 2 {
        stored.clear();
    }
    stored
}

struct Compiler<'a> {
    dialect: Dialect,
    params: Vec<Param>,
    /// Users per stored term (capped); missing terms count as the cap.
    estimates: &'a HashMap<String, u64>,
}

impl Compiler<'_> {
    fn param(&mut self, param: Param) -> String {
        self.params.push(param);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    fn text(&mut self, text: String) -> String {
        let p = self.param(Param::Text(text));
        match self.dialect {
            Dialect::Sqlite => p,
            Dialect::Postgres => format!("{p}::text"),
        }
    }

    /// How many users `expr` may match, for choosing drivers; `None`: unbounded (needs the
    /// universe).
    fn estimate(&self, expr: &Expr) -> Option<u64> {
        match expr {
            // One user, known without asking: always the best driver.
            Expr::Term(t) if t.key == USER => Some(0),
            Expr::Term(t) => Some(
                self.estimates
                    .get(&t.stored())
                    .copied()
                    .unwrap_or(ESTIMATE_CAP),
            ),
            Expr::Not(_) => None,
            Expr::And(list) => list.iter().filter_map(|e| self.estimate(e)).min(),
            Expr::Or(list) => list.iter().map(|e| self.estimate(e)).sum::<Option<u64>>(),
        }
    }

    /// A query listing (column `u`) a superset of the users matching `expr`, if there is one
    /// short of every user.
    fn driver(&mut self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::Term(t) if t.key == USER => {
                let p = self.text(t.value.clone());
                Some(format!("SELECT {p} AS u"))
            }
            Expr::Term(t) => {
                let p = self.text(t.stored());
                Some(format!(
                    "SELECT user_id AS u FROM user_tags WHERE app = {} AND tag = {p}",
                    self.app()
                ))
            }
            Expr::Not(_) => None,
            Expr::And(list) => {
                let best = list
                    .iter()
                    .filter_map(|e| self.estimate(e).map(|n| (n, e)))
                    .min_by_key(|(n, _)| *n)
                    .map(|(_, e)| e)?;
                self.driver(best)
            }
            Expr::Or(list) => {
                if list.iter().any(|e| self.estimate(e).is_none()) {
                    return None;
                }
                let parts = list
                    .iter()
                    .map(|e| self.driver(e))
                    .collect::<Option<Vec<_>>>()?;
                Some(parts.join(" UNION "))
            }
        }
    }

    fn app(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "?1",
            Dialect::Postgres => "$1",
        }
    }

    /// A condition on `d.u` that holds when `expr` does.
    fn predicate(&mut self, expr: &Expr) -> String {
        match expr {
            Expr::Term(t) if t.key == USER => {
                let p = self.text(t.value.clone());
                format!("d.u = {p}")
            }
            Expr::Term(t) => {
                let p = self.text(t.stored());
                format!(
                    "EXISTS (SELECT 1 FROM user_tags x WHERE x.app = {} AND x.user_id = d.u AND x.tag = {p})",
                    self.app()
                )
            }
            Expr::Not(inner) => format!("NOT {}", self.predicate(inner)),
            Expr::And(list) => {
                let parts: Vec<String> = list.iter().map(|e| self.predicate(e)).collect();
                format!("({})", parts.join(" AND "))
            }
            Expr::Or(list) => {
                let parts: Vec<String> = list.iter().map(|e| self.predicate(e)).collect();
                format!("({})", parts.join(" OR "))
            }
        }
    }
}

/// The query for the users of `app` matching `expr` (which holds no `agent:` terms), among
/// `within` when given, at most `limit` rows.
pub fn compile(
    dialect: Dialect,
    app: &str,
    expr: &Expr,
    within: Option<Vec<String>>,
    estimates: &HashMap<String, u64>,
    limit: usize,
) -> Query {
    let mut c = Compiler {
        dialect,
        params: vec![Param::Text(app.to_owned())],
        estimates,
    };
    let (driver, single_term) = match within {
        Some(users) => {
            let p = c.param(Param::List(users));
            let driver = match dialect {
                Dialect::Sqlite => format!("SELECT value AS u FROM json_each({p})"),
                Dialect::Postgres => format!("SELECT unnest({p}::text[]) AS u"),
            };
            (driver, false)
        }
        None => {
            let single = matches!(expr, Expr::Term(_));
            let driver = c.driver(expr).unwrap_or_else(|| {
                format!(
                    "SELECT DISTINCT user_id AS u FROM user_tags WHERE app = {}",
                    c.app()
                )
            });
            (driver, single)
        }
    };
    // A single term's driver is exactly its users.
    let filter = if single_term {
        String::new()
    } else {
        format!(" WHERE {}", c.predicate(expr))
    };
    Query {
        sql: format!("SELECT d.u FROM ({driver}) AS d{filter} LIMIT {limit}"),
        params: c.params,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::parse::parse;

    fn sql(text: &str, estimates: &[(&str, u64)]) -> Query {
        let estimates = estimates.iter().map(|(t, n)| (t.to_string(), *n)).collect();
        compile(
            Dialect::Sqlite,
            "default",
            &parse(text).unwrap(),
            None,
            &estimates,
            10,
        )
    }

    #[test]
    fn a_term_is_an_index_range() {
        let q = sql("tag:vip", &[]);
        assert_eq!(
            q.sql,
            "SELECT d.u FROM (SELECT user_id AS u FROM user_tags WHERE app = ?1 AND tag = ?2) AS d LIMIT 10"
        );
        assert_eq!(
            q.params,
            [Param::Text("default".into()), Param::Text("tag:vip".into())]
        );
    }

    #[test]
    fn the_smallest_child_drives_an_and() {
        let q = sql(
            "lang:zh AND tag:vip AND NOT agent:cs",
            &[("lang:zh", 10_000), ("tag:vip", 50)],
        );
        assert!(
            q.sql.starts_with("SELECT d.u FROM (SELECT user_id AS u FROM user_tags WHERE app = ?1 AND tag = ?2) AS d"),
            "{}",
            q.sql
        );
        assert_eq!(q.params[1], Param::Text("tag:vip".into()));
        // A user term beats any count.
        let q = sql("tag:vip AND user:alice", &[("tag:vip", 1)]);
        assert!(q.sql.contains("(SELECT ?2 AS u)"), "{}", q.sql);
        assert_eq!(q.params[1], Param::Text("alice".into()));
    }

    #[test]
    fn or_unions_and_not_needs_every_user() {
        let q = sql("tag:a OR user:bob", &[]);
        assert!(q.sql.contains("UNION SELECT ?3 AS u"), "{}", q.sql);
        let q = sql("NOT tag:a", &[]);
        assert!(
            q.sql
                .contains("SELECT DISTINCT user_id AS u FROM user_tags WHERE app = ?1")
        );
        assert!(q.sql.contains("WHERE NOT EXISTS"), "{}", q.sql);
        let q = sql("tag:a OR NOT tag:b", &[]);
        assert!(q.sql.contains("SELECT DISTINCT"), "{}", q.sql);
    }

    #[test]
    fn postgres_and_a_list_of_users() {
        let q = compile(
            Dialect::Postgres,
            "oa",
            &parse("tag:vip").unwrap(),
            Some(vec!["a".into(), "b".into()]),
            &HashMap::new(),
            5,
        );
        assert_eq!(
            q.sql,
            "SELECT d.u FROM (SELECT unnest($2::text[]) AS u) AS d WHERE EXISTS (SELECT 1 FROM user_tags x WHERE x.app = $1 AND x.user_id = d.u AND x.tag = $3::text) LIMIT 5"
        );
    }
}
