//! Per-agent shapes of a message: the clients of one agent (`ios`, `android`) may expect a
//! different title and content than the browser and desktop clients, which get the message as
//! sent (the Message Push Protocol's own shape). A shape comes from the message's `formats`, or
//! from the app's templates in the configuration (`[apps.<app>.formats.<agent>]`); the message's
//! own wins field by field. `apns`, `fcm` and `webpush` shape the vendors' notifications.
//!
//! The engine resolves the shapes once per message and encodes one frame per shape, shared by
//! every connection of that agent. docs/formats.md has the template language.

use std::collections::BTreeMap;

use mps_proto::{Format, PushedMessage};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::Template;
use crate::words::{Channel, Invalid, MAX_TITLE, Way, check_depth, check_name, invalid};

/// Most shapes one message may carry.
pub const MAX_FORMATS: usize = 16;

/// Checks a message's own formats.
pub fn check(formats: &BTreeMap<String, Format>) -> Result<(), Invalid> {
    if formats.len() > MAX_FORMATS {
        return Err(invalid(
            "invalid_formats",
            format!("at most {MAX_FORMATS} formats"),
        ));
    }
    for (agent, format) in formats {
        check_name("format agent", agent)?;
        if format.title.as_ref().is_some_and(|t| t.len() > MAX_TITLE) {
            return Err(invalid(
                "invalid_formats",
                format!("the title of format {agent:?} is longer than {MAX_TITLE} bytes"),
            ));
        }
        if let Some(content) = &format.content {
            check_depth(&format!("the content of format {agent:?}"), content.get())?;
        }
        if format.title.is_none() && format.content.is_none() {
            return Err(invalid(
                "invalid_formats",
                format!("format {agent:?} changes nothing: give a title or content"),
            ));
        }
    }
    Ok(())
}

/// Whether a shape is for a vendor's notifications or the e-mail channel rather than for
/// connections.
pub fn is_vendor(name: &str) -> bool {
    Way::parse(name).is_some() || Channel::parse(name) == Some(Channel::Email)
}

/// The shapes a message is sent with: the app's templates rendered for it, overridden field by
/// field by the message's own formats.
pub fn resolve(
    templates: Option<&BTreeMap<String, Template>>,
    own: Option<BTreeMap<String, Format>>,
    message: &PushedMessage,
) -> BTreeMap<String, Format> {
    let mut shapes = BTreeMap::new();
    if let Some(templates) = templates {
        let content: Value = serde_json::from_str(message.event_data.ext.get()).unwrap_or_default();
        for (agent, template) in templates {
            shapes.insert(agent.clone(), render(template, message, &content));
        }
    }
    for (agent, format) in own.into_iter().flatten() {
        match shapes.get_mut(&agent) {
            Some(shape) => {
                if format.title.is_some() {
                    shape.title = format.title;
                }
                if format.content.is_some() {
                    shape.content = format.content;
                }
            }
            None => {
                shapes.insert(agent, format);
            }
        }
    }
    shapes
}

/// The message as clients with this shape get it.
pub fn apply(message: &PushedMessage, format: &Format) -> PushedMessage {
    let mut shaped = message.clone();
    if let Some(title) = &format.title {
        shaped.title = Some(title.clone());
    }
    if let Some(content) = &format.content {
        shaped.event_data.ext = content.clone();
    }
    shaped
}

/// Applies the stored shapes (`formats` as JSON) for a connection of `agent`.
pub fn apply_stored(message: &mut PushedMessage, formats: Option<&str>, agent: Option<&str>) {
    let (Some(formats), Some(agent)) = (formats, agent) else {
        return;
    };
    // Written by the engine; a damaged column leaves the message as sent.
    let Ok(mut formats) = serde_json::from_str::<BTreeMap<String, Format>>(formats) else {
        return;
    };
    if let Some(format) = formats.remove(agent) {
        if let Some(title) = format.title {
            message.title = Some(title);
        }
        if let Some(content) = format.content {
            message.event_data.ext = content;
        }
    }
}

/// The value at `path` in the message, if any.
fn lookup(path: &str, message: &PushedMessage, content: &Value) -> Option<Value> {
    let text = |t: &Option<String>| t.clone().map(Value::String);
    match path {
        "id" => Some(Value::String(message.id.clone())),
        "title" => text(&message.title),
        "type" => Some(Value::from(message.kind)),
        "component" => text(&message.component),
        "topic" => text(&message.topic),
        "sender" => text(&message.sender),
        "created" => Some(Value::from(message.created)),
        "content" => Some(content.clone()),
        _ => {
            let rest = path.strip_prefix("content.")?;
            let mut at = content;
            for key in rest.split('.') {
                at = match at {
                    Value::Object(map) => map.get(key)?,
                    Value::Array(list) => list.get(key.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(at.clone())
        }
    }
}

/// `${path}` occurrences replaced by their text (strings as they are, absent values empty,
/// other values as JSON).
fn interpolate(text: &str, message: &PushedMessage, content: &Value) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        match lookup(&rest[start + 2..start + 2 + len], message, content) {
            Some(Value::String(s)) => out.push_str(&s),
            None | Some(Value::Null) => {}
            Some(other) => out.push_str(&other.to_string()),
        }
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    out
}

fn render_value(template: &Value, message: &PushedMessage, content: &Value) -> Value {
    match template {
        Value::String(s) => {
            let whole = s
                .strip_prefix("${")
                .and_then(|p| p.strip_suffix('}'))
                .filter(|p| !p.contains('}'));
            match whole {
                Some(path) => lookup(path, message, content).unwrap_or(Value::Null),
                None => Value::String(interpolate(s, message, content)),
            }
        }
        Value::Array(list) => Value::Array(
            list.iter()
                .map(|v| render_value(v, message, content))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render_value(v, message, content)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn render(template: &Template, message: &PushedMessage, content: &Value) -> Format {
    Format {
        title: template
            .title
            .as_ref()
            .map(|t| interpolate(t, message, content)),
        content: template.content.as_ref().map(|t| {
            let value = render_value(t, message, content);
            // Serializing a Value cannot fail.
            RawValue::from_string(value.to_string()).unwrap_or_default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mps_proto::EventData;

    fn message(content: &str) -> PushedMessage {
        PushedMessage {
            id: "42".into(),
            title: Some("Fire".into()),
            kind: 3,
            component: Some("esbm".into()),
            topic: None,
            sender: None,
            created: 1000,
            ack: true,
            event_data: EventData {
                ext: RawValue::from_string(content.into()).unwrap(),
            },
        }
    }

    fn template(title: Option<&str>, content: Option<Value>) -> Template {
        Template {
            title: title.map(str::to_owned),
            content,
        }
    }

    #[test]
    fn templates_render_whole_values_and_text() {
        let m = message(r#"{"room":"2-17","level":3,"tags":["a","b"]}"#);
        let templates = BTreeMap::from([(
            "ios".to_owned(),
            template(
                Some("${title} in ${content.room} (${content.level}) ${content.none}!"),
                Some(serde_json::json!({
                    "aps": {"alert": {"title": "${title}", "body": "Room ${content.room}"}},
                    "level": "${content.level}",
                    "first": "${content.tags.0}",
                    "data": "${content}",
                    "missing": "${content.none}",
                    "id": "${id}",
                    "kind": "${type}",
                    "plain": 7,
                    "dollar": "$5 {x}",
                })),
            ),
        )]);
        let shapes = resolve(Some(&templates), None, &m);
        let ios = &shapes["ios"];
        assert_eq!(ios.title.as_deref(), Some("Fire in 2-17 (3) !"));
        let content: Value = serde_json::from_str(ios.content.as_ref().unwrap().get()).unwrap();
        assert_eq!(
            content,
            serde_json::json!({
                "aps": {"alert": {"title": "Fire", "body": "Room 2-17"}},
                "level": 3,
                "first": "a",
                "data": {"room": "2-17", "level": 3, "tags": ["a", "b"]},
                "missing": null,
                "id": "42",
                "kind": 3,
                "plain": 7,
                "dollar": "$5 {x}",
            })
        );
    }

    #[test]
    fn the_messages_own_formats_win_field_by_field() {
        let m = message(r#"{"x":1}"#);
        let templates = BTreeMap::from([
            (
                "ios".to_owned(),
                template(Some("T ${title}"), Some(serde_json::json!({"t": 1}))),
            ),
            ("android".to_owned(), template(Some("A"), None)),
        ]);
        let own = BTreeMap::from([
            (
                "ios".to_owned(),
                Format {
                    title: None,
                    content: Some(RawValue::from_string(r#"{"own":true}"#.into()).unwrap()),
                },
            ),
            (
                "fcm".to_owned(),
                Format {
                    title: Some("F".into()),
                    content: None,
                },
            ),
        ]);
        let shapes = resolve(Some(&templates), Some(own), &m);
        assert_eq!(shapes["ios"].title.as_deref(), Some("T Fire"));
        assert_eq!(
            shapes["ios"].content.as_ref().unwrap().get(),
            r#"{"own":true}"#
        );
        assert_eq!(shapes["android"].title.as_deref(), Some("A"));
        assert!(shapes["android"].content.is_none());
        assert!(is_vendor("fcm") && !is_vendor("ios"));
        let shaped = apply(&m, &shapes["android"]);
        assert_eq!(shaped.title.as_deref(), Some("A"));
        assert_eq!(shaped.event_data.ext.get(), r#"{"x":1}"#);

        let stored = serde_json::to_string(&shapes).unwrap();
        let mut owed = m.clone();
        apply_stored(&mut owed, Some(&stored), Some("ios"));
        assert_eq!(owed.event_data.ext.get(), r#"{"own":true}"#);
        let mut browser = m.clone();
        apply_stored(&mut browser, Some(&stored), Some("bs"));
        assert_eq!(browser.title.as_deref(), Some("Fire"));
        apply_stored(&mut browser, Some("not json"), Some("ios"));
        assert_eq!(browser.title.as_deref(), Some("Fire"));
    }

    #[test]
    fn checks_a_messages_formats() {
        let format = |title: Option<&str>| Format {
            title: title.map(str::to_owned),
            content: None,
        };
        assert!(check(&BTreeMap::from([("ios".to_owned(), format(Some("t")))])).is_ok());
        assert!(check(&BTreeMap::from([("ios".to_owned(), format(None))])).is_err());
        assert!(check(&BTreeMap::from([("".to_owned(), format(Some("t")))])).is_err());
        let long = "x".repeat(MAX_TITLE + 1);
        assert!(check(&BTreeMap::from([("ios".to_owned(), format(Some(&long)))])).is_err());
        let many = (0..=MAX_FORMATS)
            .map(|i| (format!("a{i}"), format(Some("t"))))
            .collect();
        assert!(check(&many).is_err());
    }
}
