//! What travels on the cluster's pub/sub channels: a small binary header followed by the push
//! frame exactly as connections receive it (already encoded JSON), so a receiving node decodes
//! the header and shares the frame bytes with every local connection without re-encoding.
//!
//! Layout: version (1 byte), kind (1 byte; high bit: directed), origin (8 bytes), id (8 bytes),
//! then app, key and agents as u16-length-prefixed UTF-8, then the frame. The key is the user,
//! component or topic; agents are comma-joined (agent names cannot contain commas), empty for
//! none. A `kick` carries the connection id in `id` and nothing else.

use bytes::{BufMut, Bytes, BytesMut};

use crate::hub::{Envelope, Target};

const VERSION: u8 = 1;
const DIRECTED: u8 = 0x80;
const USER: u8 = 0;
const COMPONENT: u8 = 1;
const TOPIC: u8 = 2;
const ALL: u8 = 3;
const KICK: u8 = 4;
const HEADER: usize = 18;

/// What a node receives on a channel.
#[derive(Debug)]
pub enum Received {
    /// An envelope from the node whose instance is `origin`.
    Envelope { origin: u64, envelope: Envelope },
    /// Close this node's connection with this id (an operator's disconnect on another node).
    Kick(u64),
}

/// Encodes a broadcast, component or topic envelope.
pub fn encode(origin: u64, envelope: &Envelope) -> Bytes {
    let (kind, key) = match &envelope.target {
        Target::Users(users) => (USER, users.first().map(String::as_str).unwrap_or("")),
        Target::Component(component) => (COMPONENT, component.as_str()),
        Target::Topic(topic) => (TOPIC, topic.as_str()),
        Target::All => (ALL, ""),
    };
    encode_parts(origin, envelope, kind, key)
}

/// Encodes a directed envelope for one of its users (each user has a channel).
pub fn encode_for_user(origin: u64, envelope: &Envelope, user: &str) -> Bytes {
    encode_parts(origin, envelope, USER, user)
}

fn encode_parts(origin: u64, envelope: &Envelope, kind: u8, key: &str) -> Bytes {
    let agents = envelope
        .agents
        .as_ref()
        .map(|a| a.join(","))
        .unwrap_or_default();
    let mut out = BytesMut::with_capacity(
        HEADER + 6 + envelope.app.len() + key.len() + agents.len() + envelope.frame.len(),
    );
    out.put_u8(VERSION);
    out.put_u8(kind | if envelope.directed { DIRECTED } else { 0 });
    out.put_u64(origin);
    out.put_u64(envelope.id);
    for text in [envelope.app.as_str(), key, agents.as_str()] {
        put_str(&mut out, text);
    }
    out.put_slice(&envelope.frame);
    out.freeze()
}

/// Encodes the request to close connection `conn_id`.
pub fn encode_kick(origin: u64, conn_id: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + 6);
    out.put_u8(VERSION);
    out.put_u8(KICK);
    out.put_u64(origin);
    out.put_u64(conn_id);
    for _ in 0..3 {
        put_str(&mut out, "");
    }
    out.freeze()
}

fn put_str(out: &mut BytesMut, text: &str) {
    // Names are at most a few hundred bytes (engine::MAX_NAME, topic limits).
    let len = text.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&text.as_bytes()[..len]);
}

/// Decodes what `encode` or `encode_kick` produced; `None` for anything else.
pub fn decode(payload: Bytes) -> Option<Received> {
    if payload.len() < HEADER || payload[0] != VERSION {
        return None;
    }
    let kind = payload[1];
    let origin = u64::from_be_bytes(payload[2..10].try_into().ok()?);
    let id = u64::from_be_bytes(payload[10..18].try_into().ok()?);
    let mut at = HEADER;
    let mut texts = Vec::with_capacity(3);
    for _ in 0..3 {
        let len = u16::from_be_bytes(payload.get(at..at + 2)?.try_into().ok()?) as usize;
        let text = std::str::from_utf8(payload.get(at + 2..at + 2 + len)?).ok()?;
        texts.push(text.to_owned());
        at += 2 + len;
    }
    let agents = texts.pop().unwrap_or_default();
    let key = texts.pop().unwrap_or_default();
    let app = texts.pop().unwrap_or_default();
    let target = match kind & !DIRECTED {
        USER => Target::Users(vec![key]),
        COMPONENT => Target::Component(key),
        TOPIC => Target::Topic(key),
        ALL => Target::All,
        KICK => return Some(Received::Kick(id)),
        _ => return None,
    };
    Some(Received::Envelope {
        origin,
        envelope: Envelope {
            app,
            target,
            agents: (!agents.is_empty()).then(|| agents.split(',').map(str::to_owned).collect()),
            id,
            directed: kind & DIRECTED != 0,
            frame: payload.slice(at..),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(target: Target, agents: Option<Vec<String>>, directed: bool) -> Envelope {
        Envelope {
            app: "default".into(),
            target,
            agents,
            id: 0x0102_0304_0506_0708,
            directed,
            frame: Bytes::from_static(br#"{"Type":3,"Message":{"id":"1"}}"#),
        }
    }

    fn round_trip(sent: Envelope) {
        let Some(Received::Envelope { origin, envelope }) = decode(encode(42, &sent)) else {
            panic!("not an envelope");
        };
        assert_eq!(origin, 42);
        assert_eq!(envelope.app, sent.app);
        assert_eq!(envelope.target, sent.target);
        assert_eq!(envelope.agents, sent.agents);
        assert_eq!(envelope.id, sent.id);
        assert_eq!(envelope.directed, sent.directed);
        assert_eq!(envelope.frame, sent.frame);
    }

    #[test]
    fn envelopes_and_kicks_round_trip() {
        round_trip(envelope(
            Target::Users(vec!["al:ice".into()]),
            Some(vec!["ios".into(), "bs".into()]),
            true,
        ));
        round_trip(envelope(Target::Component("esbm".into()), None, false));
        round_trip(envelope(Target::Topic("alarms/site1".into()), None, false));
        round_trip(envelope(Target::All, Some(vec!["cs".into()]), false));
        assert!(matches!(
            decode(encode_kick(1, 77)),
            Some(Received::Kick(77))
        ));
        let two = envelope(Target::Users(vec!["a".into(), "b".into()]), None, true);
        let Some(Received::Envelope { envelope, .. }) = decode(encode_for_user(1, &two, "b"))
        else {
            panic!("not an envelope");
        };
        assert_eq!(envelope.target, Target::Users(vec!["b".into()]));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode(Bytes::from_static(b"")).is_none());
        assert!(decode(Bytes::from_static(b"{\"Type\":3}xxxxxxxxxxxxxxxxxx")).is_none());
        let mut short = encode(1, &envelope(Target::All, None, false)).to_vec();
        short.truncate(HEADER + 3);
        assert!(decode(Bytes::from(short)).is_none());
    }
}
