//! Topic names and patterns (`crate::topic`): any text is checked without a panic, and checked
//! names and patterns keep the matching invariants: a name is a pattern that matches itself,
//! `#` matches every name, a pattern covers itself, and what a claim covers it also matches.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mps::auth::Identity;
use mps::topic::{Limits, check_pattern, check_topic, covers, matches};

#[derive(Arbitrary, Debug)]
struct Input {
    /// A token's topic claim.
    allowed: String,
    /// A subscription pattern.
    pattern: String,
    /// A published topic.
    topic: String,
    max_length: u16,
    max_depth: u8,
}

/// A name the pattern matches: each `+` and `#` replaced by a level.
fn instance(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|level| match level {
            "+" => "x",
            "#" => "y/z",
            other => other,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        max_length: usize::from(input.max_length),
        max_depth: usize::from(input.max_depth),
    };
    let Input {
        allowed,
        pattern,
        topic,
        ..
    } = input;
    // Unchecked text is matched without a panic too (the matchers assume checked input).
    let _ = (matches(&pattern, &topic), covers(&allowed, &pattern));

    let topic_ok = check_topic(&topic, limits).is_ok();
    let pattern_ok = check_pattern(&pattern, limits).is_ok();
    let allowed_ok = check_pattern(&allowed, limits).is_ok();
    if topic_ok {
        assert!(check_pattern(&topic, limits).is_ok(), "a name is a pattern");
        assert!(matches(&topic, &topic), "{topic:?} matches itself");
        assert!(covers(&topic, &topic), "{topic:?} covers itself");
        assert!(matches("#", &topic), "# matches {topic:?}");
    }
    if pattern_ok {
        assert!(covers(&pattern, &pattern), "{pattern:?} covers itself");
        assert!(covers("#", &pattern), "# covers {pattern:?}");
        let name = instance(&pattern);
        assert!(matches(&pattern, &name), "{pattern:?} matches {name:?}");
        let identity = Identity {
            app: "default".into(),
            user: "alice".into(),
            topics: Some(vec![pattern.clone()]),
        };
        assert!(identity.may_subscribe(&pattern, true));
    }
    if pattern_ok
        && topic_ok
        && allowed_ok
        && matches(&pattern, &topic)
        && covers(&allowed, &pattern)
    {
        assert!(
            matches(&allowed, &topic),
            "{allowed:?} covers {pattern:?}, which matches {topic:?}"
        );
    }
    if allowed_ok && pattern_ok && covers(&allowed, &pattern) {
        let name = instance(&pattern);
        assert!(
            matches(&allowed, &name),
            "{allowed:?} covers {pattern:?}, which matches {name:?}"
        );
    }
});
