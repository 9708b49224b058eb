//! The audience expression parser: a tokenizer and a recursive-descent parser for the grammar
//! of `docs/audience.md` (NOT binds tighter than AND, AND tighter than OR), with limits on
//! length, nesting and terms so that no input costs more than a bounded amount of work.

use super::{AudienceError, Expr, Term};

/// Longest expression, bytes.
pub const MAX_LENGTH: usize = 2048;
/// Deepest nesting of parentheses and NOTs.
pub const MAX_DEPTH: usize = 32;
/// Most terms in one expression.
pub const MAX_TERMS: usize = 64;
/// Longest key, bytes.
pub const MAX_KEY: usize = 32;
/// Longest value, bytes.
pub const MAX_VALUE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    And,
    Or,
    Not,
    Open,
    Close,
    Term(Term),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::And => "AND".into(),
            Token::Or => "OR".into(),
            Token::Not => "NOT".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::Term(t) => format!("the term {t}"),
        }
    }
}

fn error(position: usize, message: impl Into<String>) -> AudienceError {
    AudienceError {
        position,
        message: message.into(),
    }
}

/// Whether `key` is a well-formed term key: a lower-case ASCII letter, then letters, digits,
/// `_` or `-`, at most [`MAX_KEY`] bytes.
pub fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    key.len() <= MAX_KEY
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Whether `value` may be a term's value: 1 to [`MAX_VALUE`] bytes, no control characters.
pub fn valid_value(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_VALUE && !value.chars().any(char::is_control)
}

fn bare_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_control() && !matches!(c, '(' | ')' | '"')
}

type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;

/// Splits the text into tokens with their byte positions.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, AudienceError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '(' || c == ')' {
            chars.next();
            tokens.push((at, if c == '(' { Token::Open } else { Token::Close }));
            continue;
        }
        if c.is_control() || c == '"' {
            return Err(error(at, format!("unexpected {c:?}")));
        }
        // A word: a keyword, or a key followed by ':' and a value.
        let mut end = at;
        while let Some(&(i, c)) = chars.peek() {
            if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        let word = &text[at..end];
        if chars.peek().map(|&(_, c)| c) != Some(':') {
            tokens.push((at, keyword(word, at, c)?));
            continue;
        }
        if !valid_key(word) {
            return Err(error(
                at,
                format!(
                    "{word:?} is not a key: a lower-case letter, then letters, digits, '_' or '-', at most {MAX_KEY} bytes"
                ),
            ));
        }
        chars.next(); // the ':'
        let value_at = end + 1;
        let value = value(text, &mut chars, value_at)?;
        if !valid_value(&value) {
            return Err(error(
                value_at,
                format!("the value of {word}: must be 1 to {MAX_VALUE} bytes"),
            ));
        }
        tokens.push((
            at,
            Token::Term(Term {
                key: word.to_owned(),
                value,
                position: at,
            }),
        ));
    }
    Ok(tokens)
}

/// A word not followed by ':' (`c` is the character it starts at): AND, OR or NOT.
fn keyword(word: &str, at: usize, c: char) -> Result<Token, AudienceError> {
    match word.to_ascii_uppercase().as_str() {
        "AND" => Ok(Token::And),
        "OR" => Ok(Token::Or),
        "NOT" => Ok(Token::Not),
        _ if word.is_empty() => Err(error(at, format!("unexpected {c:?}"))),
        _ => Err(error(
            at,
            format!("expected a term key:value or AND, OR, NOT; found {word:?}"),
        )),
    }
}

/// A term's value starting at byte `at`, just after its ':': quoted, or bare up to the next
/// space, parenthesis or quote.
fn value(text: &str, chars: &mut Chars, at: usize) -> Result<String, AudienceError> {
    if chars.peek().map(|&(_, c)| c) == Some('"') {
        chars.next();
        return quoted(chars, at);
    }
    let mut end = at;
    while let Some(&(i, c)) = chars.peek() {
        if !bare_char(c) {
            break;
        }
        end = i + c.len_utf8();
        chars.next();
    }
    Ok(text[at..end].to_owned())
}

/// A quoted value after its opening quote, which is at byte `at`; `\"` and `\\` are its escapes.
fn quoted(chars: &mut Chars, at: usize) -> Result<String, AudienceError> {
    let mut value = String::new();
    loop {
        match chars.next() {
            None => return Err(error(at, "unterminated quoted value")),
            Some((_, '"')) => return Ok(value),
            Some((i, '\\')) => match chars.next() {
                Some((_, c @ ('"' | '\\'))) => value.push(c),
                _ => return Err(error(i, "only \\\" and \\\\ may be escaped")),
            },
            Some((i, c)) if c.is_control() => {
                return Err(error(i, "control characters are not allowed in a value"));
            }
            Some((_, c)) => value.push(c),
        }
    }
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    /// Byte length of the text: the position of "the end".
    end: usize,
    terms: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(at, _)| *at)
    }

    fn found(&self) -> String {
        self.peek()
            .map_or_else(|| "the end".to_owned(), Token::describe)
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.next += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, AudienceError> {
        let mut children = vec![self.and(depth)?];
        while self.eat(&Token::Or) {
            children.push(self.and(depth)?);
        }
        Ok(if children.len() == 1 {
            children.pop().unwrap_or(Expr::Or(Vec::new()))
        } else {
            Expr::Or(children)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, AudienceError> {
        let mut children = vec![self.not(depth)?];
        while self.eat(&Token::And) {
            children.push(self.not(depth)?);
        }
        Ok(if children.len() == 1 {
            children.pop().unwrap_or(Expr::And(Vec::new()))
        } else {
            Expr::And(children)
        })
    }

    fn not(&mut self, depth: usize) -> Result<Expr, AudienceError> {
        if depth >= MAX_DEPTH {
            return Err(error(
                self.position(),
                format!("nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        if self.eat(&Token::Not) {
            return Ok(Expr::Not(Box::new(self.not(depth + 1)?)));
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, AudienceError> {
        let at = self.position();
        match self.tokens.get(self.next).map(|(_, t)| t.clone()) {
            Some(Token::Open) => {
                self.next += 1;
                let inner = self.or(depth + 1)?;
                if !self.eat(&Token::Close) {
                    return Err(error(
                        self.position(),
                        format!(
                            "expected ')' to close the '(' at {at}, found {}",
                            self.found()
                        ),
                    ));
                }
                Ok(inner)
            }
            Some(Token::Term(term)) => {
                self.next += 1;
                self.terms += 1;
                if self.terms > MAX_TERMS {
                    return Err(error(at, format!("more than {MAX_TERMS} terms")));
                }
                Ok(Expr::Term(term))
            }
            _ => Err(error(
                at,
                format!(
                    "expected a term key:value, NOT or '(', found {}",
                    self.found()
                ),
            )),
        }
    }
}

/// Parses an expression (no checks of what its keys mean).
pub fn parse(text: &str) -> Result<Expr, AudienceError> {
    if text.len() > MAX_LENGTH {
        return Err(error(MAX_LENGTH, format!("longer than {MAX_LENGTH} bytes")));
    }
    let mut parser = Parser {
        tokens: tokenize(text)?,
        next: 0,
        end: text.len(),
        terms: 0,
    };
    if parser.tokens.is_empty() {
        return Err(error(0, "the expression is empty"));
    }
    let expr = parser.or(0)?;
    if parser.next < parser.tokens.len() {
        return Err(error(
            parser.position(),
            format!("expected AND, OR or the end, found {}", parser.found()),
        ));
    }
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expression with explicit parentheses around every operator, for comparing shapes.
    fn shape(expr: &Expr) -> String {
        match expr {
            Expr::Term(t) => t.to_string(),
            Expr::Not(inner) => format!("NOT {}", shape(inner)),
            Expr::And(list) => format!(
                "({})",
                list.iter().map(shape).collect::<Vec<_>>().join(" AND ")
            ),
            Expr::Or(list) => format!(
                "({})",
                list.iter().map(shape).collect::<Vec<_>>().join(" OR ")
            ),
        }
    }

    fn parsed(text: &str) -> String {
        shape(&parse(text).unwrap_or_else(|e| panic!("{text}: {e}")))
    }

    fn failed(text: &str) -> (usize, String) {
        let e = parse(text).expect_err(text);
        (e.position, e.message)
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        assert_eq!(parsed("tag:vip"), "tag:vip");
        assert_eq!(
            parsed("tag:a OR tag:b AND tag:c"),
            "(tag:a OR (tag:b AND tag:c))"
        );
        assert_eq!(
            parsed("tag:a AND tag:b OR tag:c"),
            "((tag:a AND tag:b) OR tag:c)"
        );
        assert_eq!(parsed("NOT tag:a AND tag:b"), "(NOT tag:a AND tag:b)");
        assert_eq!(parsed("NOT (tag:a AND tag:b)"), "NOT (tag:a AND tag:b)");
        assert_eq!(
            parsed("tag:vip AND lang:zh AND NOT agent:cs"),
            "(tag:vip AND lang:zh AND NOT agent:cs)"
        );
        assert_eq!(parsed("NOT NOT tag:a"), "NOT NOT tag:a");
        assert_eq!(
            parsed("(tag:a OR tag:b) AND (region:eu OR region:us)"),
            "((tag:a OR tag:b) AND (region:eu OR region:us))"
        );
    }

    #[test]
    fn keywords_spacing_and_values() {
        assert_eq!(
            parsed("tag:a and not(tag:b)or tag:c"),
            "((tag:a AND NOT tag:b) OR tag:c)"
        );
        assert_eq!(parsed(r#"tag:"two words""#), r#"tag:"two words""#);
        assert_eq!(parsed(r#"tag:"say \"hi\"""#), r#"tag:"say \"hi\"""#);
        assert_eq!(parsed("app-version:2.3.1"), "app-version:2.3.1");
        assert_eq!(parsed("tag:a:b"), "tag:a:b");
        assert_eq!(parsed("user:张三"), "user:张三");
        let Expr::Term(term) = parse(r#"  tag:"a b""#).unwrap() else {
            panic!("a term");
        };
        assert_eq!(
            (term.key.as_str(), term.value.as_str(), term.position),
            ("tag", "a b", 2)
        );
    }

    #[test]
    fn errors_name_the_position() {
        assert_eq!(failed("").0, 0);
        assert_eq!(failed("   ").0, 0);
        assert_eq!(failed("tag:vip AND").0, 11);
        assert_eq!(failed("tag:vip AND )").0, 12);
        assert_eq!(failed("tag:vip tag:x").0, 8);
        assert_eq!(failed("(tag:a OR tag:b").0, 15);
        assert_eq!(failed("tag:a)").0, 5);
        assert_eq!(failed("vip").0, 0);
        assert_eq!(failed("tag:").0, 4);
        assert_eq!(failed("Tag:x").0, 0);
        assert_eq!(failed("tag:a OR :b").0, 9);
        assert_eq!(failed(r#"tag:"open"#).0, 4);
        assert_eq!(failed("tag:a AND \u{1}").0, 10);
        assert_eq!(failed(r#"tag:"a\n""#).0, 6);
        let (at, message) = failed("tag:a AND AND tag:b");
        assert_eq!(at, 10);
        assert!(message.contains("found AND"), "{message}");
    }

    #[test]
    fn limits_are_enforced() {
        let long = format!("tag:{}", "x".repeat(MAX_LENGTH));
        assert!(failed(&long).1.contains("longer than"));
        let deep = format!(
            "{}tag:a{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert!(failed(&deep).1.contains("nested"));
        let nots = format!("{}tag:a", "NOT ".repeat(MAX_DEPTH + 1));
        assert!(failed(&nots).1.contains("nested"));
        let ok_deep = format!(
            "{}tag:a{}",
            "(".repeat(MAX_DEPTH - 1),
            ")".repeat(MAX_DEPTH - 1)
        );
        parse(&ok_deep).unwrap();
        let many = (0..=MAX_TERMS)
            .map(|i| format!("tag:t{i}"))
            .collect::<Vec<_>>()
            .join(" OR ");
        assert!(failed(&many).1.contains("terms"));
        let value = format!("tag:{}", "v".repeat(MAX_VALUE + 1));
        assert!(failed(&value).1.contains("bytes"));
        assert!(
            failed(&format!("{}:x", "k".repeat(MAX_KEY + 1)))
                .1
                .contains("key")
        );
    }
}
