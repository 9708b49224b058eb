//! Hierarchical topics (`alarms/site1/room2`) and subscription patterns with MQTT's wildcards:
//! `+` matches exactly one level, `#` (last level only) matches the rest, including nothing.

use std::fmt;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicError {
    pub message: String,
    /// The limit the name is over, when that is why it was refused (the `limits` module counts
    /// it).
    pub exceeded: Option<Exceeded>,
}

impl TopicError {
    fn new(message: String) -> Self {
        TopicError {
            message,
            exceeded: None,
        }
    }
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Which of the [`Limits`] a refused name is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Length,
    Depth,
}

/// Limits on names, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_length: usize,
    pub max_depth: usize,
}

fn check_common(text: &str, what: &str, limits: Limits) -> Result<(), TopicError> {
    if text.is_empty() || text.len() > limits.max_length {
        return Err(TopicError {
            message: format!("{what} must be 1 to {} bytes", limits.max_length),
            exceeded: (!text.is_empty()).then_some(Exceeded::Length),
        });
    }
    if text.chars().any(char::is_control) {
        return Err(TopicError::new(format!("{what} has control characters")));
    }
    if text.split('/').count() > limits.max_depth {
        return Err(TopicError {
            message: format!("{what} has more than {} levels", limits.max_depth),
            exceeded: Some(Exceeded::Depth),
        });
    }
    if text.split('/').any(str::is_empty) {
        return Err(TopicError::new(format!("{what} has an empty level")));
    }
    Ok(())
}

/// Checks a topic a message is published to: no wildcards.
pub fn check_topic(topic: &str, limits: Limits) -> Result<(), TopicError> {
    check_common(topic, "topic", limits)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::new(
            "a published topic cannot contain '+' or '#'".into(),
        ));
    }
    Ok(())
}

/// Checks a subscription pattern: `+` and `#` only as whole levels, `#` only last.
pub fn check_pattern(pattern: &str, limits: Limits) -> Result<(), TopicError> {
    check_common(pattern, "topic pattern", limits)?;
    let levels: Vec<&str> = pattern.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wild = level.contains(['+', '#']);
        if wild && *level != "+" && *level != "#" {
            return Err(TopicError::new(format!(
                "wildcards must be whole levels in {pattern:?}"
            )));
        }
        if *level == "#" && i + 1 != levels.len() {
            return Err(TopicError::new(format!(
                "'#' must be the last level in {pattern:?}"
            )));
        }
    }
    Ok(())
}

/// Whether a (checked) pattern matches a (checked) topic.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in pattern.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if level == "+" || level == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Whether every topic `pattern` matches is also matched by `allowed` (used to check a
/// subscription against a token's topic claim).
pub fn covers(allowed: &str, pattern: &str) -> bool {
    let mut pattern_levels = pattern.split('/');
    for level in allowed.split('/') {
        if level == "#" {
            return true;
        }
        match pattern_levels.next() {
            // `+` in the claim covers any single level, including `+` in the pattern.
            Some(p) if p != "#" && (level == "+" || level == p) => {}
            _ => return false,
        }
    }
    pattern_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_length: 64,
        max_depth: 4,
    };

    #[test]
    fn wildcards_match_like_mqtt() {
        assert!(matches("alarms/#", "alarms/site1/room2"));
        assert!(matches("alarms/#", "alarms"));
        assert!(matches("alarms/+/room2", "alarms/site1/room2"));
        assert!(!matches("alarms/+/room2", "alarms/site1/room3"));
        assert!(!matches("alarms/+", "alarms/site1/room2"));
        assert!(matches("alarms/site1", "alarms/site1"));
        assert!(!matches("alarms/site1", "alarms/site1/room2"));
        assert!(!matches("alarms/site1/room2", "alarms/site1"));
        assert!(matches("#", "anything/at/all"));
        assert!(matches("+/+", "a/b"));
    }

    #[test]
    fn claims_cover_narrower_patterns_only() {
        assert!(covers("alarms/#", "alarms/site1/#"));
        assert!(covers("alarms/#", "alarms/+/room2"));
        assert!(covers("alarms/+/room2", "alarms/site1/room2"));
        assert!(covers("alarms/+", "alarms/+"));
        assert!(!covers("alarms/site1/#", "alarms/#"));
        assert!(!covers("alarms/+", "alarms/#"));
        assert!(!covers("alarms/site1", "alarms/+"));
        assert!(!covers("news/#", "alarms/x"));
        assert!(covers("#", "alarms/#"));
    }

    #[test]
    fn checks_names_and_patterns() {
        assert!(check_topic("alarms/site1", LIMITS).is_ok());
        assert!(check_topic("alarms/+", LIMITS).is_err());
        assert!(check_topic("alarms//x", LIMITS).is_err());
        assert!(check_topic("a/b/c/d/e", LIMITS).is_err());
        assert!(check_topic(&"x".repeat(65), LIMITS).is_err());
        assert!(check_topic("", LIMITS).is_err());
        assert!(check_pattern("alarms/#", LIMITS).is_ok());
        assert!(check_pattern("alarms/+/x", LIMITS).is_ok());
        assert!(check_pattern("alarms/#/x", LIMITS).is_err());
        assert!(check_pattern("alarms/si+", LIMITS).is_err());
        assert!(check_pattern("alarms\n", LIMITS).is_err());
    }
}
