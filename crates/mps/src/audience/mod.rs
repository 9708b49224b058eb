//! Audiences: who a message is for, as a boolean expression over `key:value` terms
//! (`tag:vip AND lang:zh AND NOT agent:cs`), instead of a list of users. The grammar, the keys
//! and how an audience is resolved are in `docs/audience.md`.
//!
//! - [`parse`]: the tokenizer and recursive-descent parser, with limits.
//! - [`sql`]: an expression as one SQL query over the indexed `user_tags` table, for both stores.
//!
//! A user's tags and attributes are both stored as terms: `tag:vip`, `lang:zh`, `region:eu`.
//! `user:` terms name a user; `agent:` terms choose connections, not users, so they are taken out
//! of the expression into an [`AgentFilter`] (which is why they may only be joined to the rest by
//! a top-level AND).

pub mod parse;
pub mod sql;

use std::fmt;

use crate::words::AgentFilter;

/// A `key:value` term and where it starts in the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub key: String,
    pub value: String,
    /// Byte offset in the expression, for error messages.
    pub position: usize,
}

/// Key of the terms that name a user.
pub const USER: &str = "user";
/// Key of the terms that choose connections by agent.
pub const AGENT: &str = "agent";
/// Key of a user's tags.
pub const TAG: &str = "tag";
/// Keys an attribute cannot have: they mean something else in an expression.
pub const RESERVED: [&str; 4] = [USER, AGENT, TAG, "component"];

impl Term {
    /// The term as stored in `user_tags` (`tag:vip`, `lang:zh`).
    pub fn stored(&self) -> String {
        format!("{}:{}", self.key, self.value)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare = self
            .value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '(' | ')' | '"'));
        if bare {
            write!(f, "{}:{}", self.key, self.value)
        } else {
            let escaped = self.value.replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, "{}:\"{escaped}\"", self.key)
        }
    }
}

/// A parsed expression. `And` and `Or` hold two or more children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Term(Term),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    /// Evaluates the expression, asking `holds` about each term it needs.
    pub fn eval(&self, holds: &mut impl FnMut(&Term) -> bool) -> bool {
        match self {
            Expr::Term(t) => holds(t),
            Expr::Not(inner) => !inner.eval(holds),
            Expr::And(list) => list.iter().all(|e| e.eval(holds)),
            Expr::Or(list) => list.iter().any(|e| e.eval(holds)),
        }
    }

    /// Every term, left to right.
    pub fn terms(&self) -> Vec<&Term> {
        let mut out = Vec::new();
        self.collect_terms(&mut out);
        out
    }

    fn collect_terms<'a>(&'a self, out: &mut Vec<&'a Term>) {
        match self {
            Expr::Term(t) => out.push(t),
            Expr::Not(inner) => inner.collect_terms(out),
            Expr::And(list) | Expr::Or(list) => list.iter().for_each(|e| e.collect_terms(out)),
        }
    }
}

/// Most tags one user may have.
pub const MAX_TAGS: usize = 256;
/// Most attributes one user may have.
pub const MAX_ATTRIBUTES: usize = 64;

/// A user's tags as stored terms (`tag:vip`), sorted and without repeats; or what is wrong.
pub fn tag_terms(tags: &[String]) -> Result<Vec<String>, String> {
    if tags.len() > MAX_TAGS {
        return Err(format!("at most {MAX_TAGS} tags"));
    }
    let mut terms = Vec::with_capacity(tags.len());
    for tag in tags {
        if !parse::valid_value(tag) {
            return Err(format!(
                "tag {tag:?} must be 1 to {} bytes without control characters",
                parse::MAX_VALUE
            ));
        }
        terms.push(format!("{TAG}:{tag}"));
    }
    terms.sort_unstable();
    terms.dedup();
    Ok(terms)
}

/// A user's attributes as stored terms (`lang:zh`), sorted; or what is wrong.
pub fn attribute_terms<'a>(
    attributes: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<String>, String> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(format!("at most {MAX_ATTRIBUTES} attributes"));
    }
    let mut terms = Vec::with_capacity(attributes.len());
    for (key, value) in attributes {
        if !parse::valid_key(key) || RESERVED.contains(&key.as_str()) {
            return Err(format!(
                "attribute key {key:?} must be a lower-case letter, then letters, digits, '_' or '-', at most {} bytes, and not one of {}",
                parse::MAX_KEY,
                RESERVED.join(", ")
            ));
        }
        if !parse::valid_value(value) {
            return Err(format!(
                "attribute {key}'s value must be 1 to {} bytes without control characters",
                parse::MAX_VALUE
            ));
        }
        terms.push(format!("{key}:{value}"));
    }
    terms.sort_unstable();
    Ok(terms)
}

/// A bad expression: what is wrong and the byte offset where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audience: {message} at position {position}")]
pub struct AudienceError {
    pub position: usize,
    pub message: String,
}

/// A checked audience: the users it selects and the agents whose connections receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// The expression without its `agent:` terms; `None` when it had nothing else.
    pub users: Option<Expr>,
    pub agents: AgentFilter,
}

impl Audience {
    /// Parses and checks an expression.
    pub fn parse(text: &str) -> Result<Audience, AudienceError> {
        let expr = parse::parse(text)?;
        for term in expr.terms() {
            if term.key == "component" {
                return Err(AudienceError {
                    position: term.position,
                    message: "component: is not an audience term (set the message's component)"
                        .into(),
                });
            }
        }
        let conjuncts = match expr {
            Expr::And(list) => list,
            other => vec![other],
        };
        let mut users = Vec::new();
        let mut agents = Vec::new();
        for conjunct in conjuncts {
            let terms = conjunct.terms();
            let first_agent = terms.iter().find(|t| t.key == AGENT);
            match first_agent {
                None => users.push(conjunct),
                Some(_) if terms.iter().all(|t| t.key == AGENT) => agents.push(conjunct),
                Some(t) => {
                    return Err(AudienceError {
                        position: t.position,
                        message: "agent: terms may only be joined to the other terms by a \
                                  top-level AND"
                            .into(),
                    });
                }
            }
        }
        let agents = agent_filter(&agents)?;
        let users = match users.len() {
            0 => None,
            1 => users.pop(),
            _ => Some(Expr::And(users)),
        };
        Ok(Audience { users, agents })
    }
}

/// The agents admitted by the conjunction of agent-only expressions. Such an expression compares
/// one value with a few names, so it either admits a finite set of agents or all but a finite
/// set: evaluate it on each name it mentions and on one name it does not.
fn agent_filter(conjuncts: &[Expr]) -> Result<AgentFilter, AudienceError> {
    if conjuncts.is_empty() {
        return Ok(AgentFilter::Any);
    }
    let mut names: Vec<&str> = conjuncts
        .iter()
        .flat_map(Expr::terms)
        .map(|t| t.value.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let admits = |agent: Option<&str>| {
        conjuncts
            .iter()
            .all(|c| c.eval(&mut |t| Some(t.value.as_str()) == agent))
    };
    let filter = if admits(None) {
        AgentFilter::Except(
            names
                .iter()
                .filter(|n| !admits(Some(n)))
                .map(|n| n.to_string())
                .collect(),
        )
    } else {
        AgentFilter::Only(
            names
                .iter()
                .filter(|n| admits(Some(n)))
                .map(|n| n.to_string())
                .collect(),
        )
    };
    match filter {
        AgentFilter::Only(list) if list.is_empty() => Err(AudienceError {
            position: conjuncts[0].terms().first().map_or(0, |t| t.position),
            message: "the agent: terms admit no agent".into(),
        }),
        AgentFilter::Except(list) if list.is_empty() => Ok(AgentFilter::Any),
        filter => Ok(filter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(list: &[&str]) -> AgentFilter {
        AgentFilter::Only(list.iter().map(|s| s.to_string()).collect())
    }

    fn except(list: &[&str]) -> AgentFilter {
        AgentFilter::Except(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn agent_terms_become_a_filter() {
        let a = Audience::parse("tag:vip AND lang:zh AND NOT agent:cs").unwrap();
        assert_eq!(a.agents, except(&["cs"]));
        assert_eq!(a.users.unwrap().terms().len(), 2);
        let a = Audience::parse("(agent:ios OR agent:android) AND tag:vip").unwrap();
        assert_eq!(a.agents, only(&["android", "ios"]));
        let a = Audience::parse("agent:ios AND NOT agent:bs AND tag:x").unwrap();
        assert_eq!(a.agents, only(&["ios"]));
        let a = Audience::parse("NOT agent:bs AND NOT agent:cs").unwrap();
        assert_eq!(a.agents, except(&["bs", "cs"]));
        assert_eq!(a.users, None);
        let a = Audience::parse("agent:ios OR NOT agent:ios").unwrap();
        assert_eq!(a.agents, AgentFilter::Any);
        let a = Audience::parse("tag:vip").unwrap();
        assert_eq!(a.agents, AgentFilter::Any);
    }

    #[test]
    fn agent_terms_must_stand_apart() {
        let e = Audience::parse("tag:vip OR agent:ios").unwrap_err();
        assert_eq!(e.position, 11);
        let e = Audience::parse("tag:a AND (tag:b OR agent:ios)").unwrap_err();
        assert_eq!(e.position, 20);
        let e = Audience::parse("agent:ios AND agent:bs AND tag:x").unwrap_err();
        assert!(e.message.contains("no agent"), "{e}");
        let e = Audience::parse("tag:a AND component:esbm").unwrap_err();
        assert_eq!(e.position, 10);
    }

    #[test]
    fn evaluates_against_a_users_terms() {
        let a = Audience::parse("tag:vip AND (lang:zh OR region:\"hong kong\") AND NOT user:bob")
            .unwrap();
        let users = a.users.unwrap();
        let check = |user: &str, terms: &[&str]| {
            users.eval(&mut |t| {
                if t.key == USER {
                    t.value == user
                } else {
                    terms.contains(&t.stored().as_str())
                }
            })
        };
        assert!(check("alice", &["tag:vip", "lang:zh"]));
        assert!(check("carol", &["tag:vip", "region:hong kong"]));
        assert!(!check("bob", &["tag:vip", "lang:zh"]));
        assert!(!check("dave", &["lang:zh"]));
        assert!(!check("erin", &["tag:vip", "lang:en"]));
    }
}
