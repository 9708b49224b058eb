//! Names and titles as every layer checks them, and the invalid-input error the checks answer:
//! a stable code for programs and a message that says what to fix.

/// Longest user, component, agent, app or sender name.
pub const MAX_NAME: usize = 256;
pub const MAX_TITLE: usize = 1024;

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
