//! Names and titles as every layer checks them, and the invalid-input error the checks answer:
//! a stable code for programs and a message that says what to fix.

/// Longest user, component, agent, app or sender name.
pub const MAX_NAME: usize = 256;
pub const MAX_TITLE: usize = 1024;
/// Deepest nesting of arrays and objects in a message's content: clients' JSON parsers give up
/// on deeper documents (many at a few hundred levels, some by overflowing their stack).
pub const MAX_DEPTH: usize = 64;

/// The request is wrong; `code` is stable, the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

/// The invalid-input error as whichever error wraps it (`Invalid` itself, the engine's, the
/// API's), so a check answers in its caller's error type.
pub fn invalid<E: From<Invalid>>(code: &'static str, message: impl Into<String>) -> E {
    E::from(Invalid {
        code,
        message: message.into(),
    })
}

/// Checks that the JSON text `json` (already parsed once, so well-formed) nests arrays and
/// objects at most [`MAX_DEPTH`] deep.
pub fn check_depth(what: &str, json: &str) -> Result<(), Invalid> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(invalid(
                        "invalid_content",
                        format!("{what} nests arrays and objects more than {MAX_DEPTH} deep"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a user, component, agent, app or sender name.
pub fn check_name(what: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(invalid(
            "invalid_name",
            format!("{what} must be 1 to {MAX_NAME} bytes without control characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn content_nested_past_the_bound_is_refused() {
        assert!(check_depth("content", &nested(MAX_DEPTH)).is_ok());
        let refused = check_depth("content", &nested(100_000)).unwrap_err();
        assert_eq!(refused.code, "invalid_content");
        assert_eq!(
            refused.message,
            "content nests arrays and objects more than 64 deep"
        );
        let objects = format!("{}{}", r#"{"a":"#.repeat(65), "}".repeat(65));
        assert!(check_depth("content", &objects).is_err());
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!(
            r#"{{"s": "{}\"{}", "n": [1, {{}}]}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(check_depth("content", &text).is_ok());
        assert!(check_depth("content", r#"["\\", [[]]]"#).is_ok());
    }
}
