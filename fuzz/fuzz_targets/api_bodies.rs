//! Bodies of the HTTP API (`mps_proto::api`), parsed as the API parses them (JSON, unknown
//! fields refused) and put through the checks their routes make before touching the store:
//! names, topics, audiences, channel chains, formats and their templates, device registrations, tags,
//! attributes, preferences and message ids. Nothing may panic, and a body that parses encodes
//! and parses again.
//!
//! An input is the body's name on the first line (`send`, `device`, `tags`, `attributes`,
//! `preferences`, `ack`, `token`), then the body.

#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mps::audience::{Audience, attribute_terms, tag_terms};
use mps::config::Template;
use mps::engine::{encode_push, parse_ids};
use mps::preferences::Muting;
use mps::push::devices::{PushModeRequest, check_registration};
use mps::words::{Way, check_name};
use mps_proto::{
    AckRequest, AttributesRequest, EventData, PreferencesRequest, PushedMessage, RegisterDevice,
    SendMessage, TagsRequest, TokenRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An app's templates reaching into every path a template may name.
static TEMPLATES: LazyLock<BTreeMap<String, Template>> = LazyLock::new(|| {
    let template = Template {
        title: Some(
            "${title} (${component}/${topic}) from ${sender}: ${content.alarm.level}".into(),
        ),
        content: Some(serde_json::json!({
            "whole": "${content}",
            "first": "${content.list.0}",
            "deep": ["${content.a.b.c}", {"id": "${id}", "type": "${type}", "at": "${created}"}],
            "text": "id ${id} ${unclosed",
        })),
    };
    BTreeMap::from([
        ("ios".to_owned(), template.clone()),
        ("apns".to_owned(), template),
    ])
});

/// Parses a body as the API does; one that parses encodes and parses again.
fn body<T: DeserializeOwned + Serialize>(json: &[u8]) -> Option<T> {
    let parsed: T = serde_json::from_slice(json).ok()?;
    let encoded = serde_json::to_vec(&parsed).expect("a parsed body encodes");
    let again: T = serde_json::from_slice(&encoded).expect("an encoded body parses");
    assert_eq!(
        encoded,
        serde_json::to_vec(&again).expect("a parsed body encodes"),
        "encoding is stable"
    );
    Some(parsed)
}

fn send(message: SendMessage) {
    let limits = mps::config::TopicsConfig::default().limits();
    let _ = mps::words::check_depth("content", message.content.get());
    if let Some(formats) = &message.formats {
        let _ = mps::formats::check(formats);
    }
    for name in [
        &message.app,
        &message.component,
        &message.sender,
        &message.id,
    ]
    .into_iter()
    .flatten()
    {
        let _ = check_name("name", name);
    }
    for name in message.receiver.iter().chain(&message.agents).flatten() {
        let _ = check_name("name", name);
    }
    if let Some(topic) = &message.topic {
        let _ = mps::topic::check_topic(topic, limits);
    }
    if let Some(channels) = &message.channels {
        let _ = mps::words::check_chain(channels, message.ttl.unwrap_or(3 * 24 * 3600));
    }
    if let Some(audience) = &message.audience {
        let _ = Audience::parse(audience);
    }
    let pushed = PushedMessage {
        id: "42".into(),
        title: message.title,
        kind: message.kind,
        component: message.component,
        topic: message.topic,
        sender: message.sender,
        created: 1_700_000_000_000,
        ack: message.receiver.is_some(),
        event_data: EventData {
            ext: message.content,
        },
    };
    let _ = encode_push(&pushed);
    let shapes = mps::formats::resolve(Some(&TEMPLATES), message.formats, &pushed);
    for (agent, shape) in &shapes {
        let shaped = mps::formats::apply(&pushed, shape);
        let frame = encode_push(&shaped);
        serde_json::from_slice::<serde_json::Value>(&frame)
            .unwrap_or_else(|e| panic!("the frame for {agent:?} is not JSON: {e}"));
    }
}

fn device(request: RegisterDevice) {
    let request = PushModeRequest {
        way: request.way,
        device: Some(request.device),
        agent: request.agent,
        token: request.token,
        subscription: request.subscription,
        components: request.components,
    };
    let hosts = ["fcm.googleapis.com".to_owned(), "push.example".to_owned()];
    for allowed in [&hosts[..], &[]] {
        if let Ok(device) = check_registration("default", "alice", request.clone(), allowed, 0) {
            // What is stored is accepted again as it is.
            let again = PushModeRequest {
                way: device.way.as_str().into(),
                device: Some(device.device.clone()),
                agent: Some(device.agent.clone()),
                token: Some(device.token.clone()),
                subscription: None,
                components: Some(device.components.clone()),
            };
            let stored = check_registration("default", "alice", again, allowed, 0)
                .unwrap_or_else(|e| panic!("stored {device:?} is refused: {e}"));
            assert_eq!(stored, device, "a stored registration is already normal");
        }
    }
}

fn preferences(request: PreferencesRequest) {
    let Ok(preferences) = mps::preferences::check(request) else {
        return;
    };
    for now in [0, 1_700_000_000_000, -1, i64::MAX, i64::MIN] {
        for channel in Way::ALL
            .map(Way::as_str)
            .into_iter()
            .chain(["email", "webhook"])
        {
            let _ = preferences.mutes(Some("esbm"), channel, now);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(newline) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let (name, json) = (&data[..newline], &data[newline + 1..]);
    match name {
        b"send" => {
            if let Some(message) = body::<SendMessage>(json) {
                send(message);
            }
        }
        b"device" => {
            if let Some(request) = body::<RegisterDevice>(json) {
                device(request);
            }
        }
        b"tags" => {
            if let Some(request) = body::<TagsRequest>(json) {
                let _ = tag_terms(&request.tags);
            }
        }
        b"attributes" => {
            if let Some(request) = body::<AttributesRequest>(json) {
                let _ = attribute_terms(request.attributes.iter());
            }
        }
        b"preferences" => {
            if let Some(request) = body::<PreferencesRequest>(json) {
                preferences(request);
            }
        }
        b"ack" => {
            if let Some(request) = body::<AckRequest>(json) {
                let _ = parse_ids(&request.ids);
            }
        }
        b"token" => {
            if let Some(request) = body::<TokenRequest>(json) {
                let limits = mps::config::TopicsConfig::default().limits();
                let _ = check_name("user", &request.user);
                for pattern in request.topics.iter().flatten() {
                    let _ = mps::topic::check_pattern(pattern, limits);
                }
            }
        }
        _ => {}
    }
});
