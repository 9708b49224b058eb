//! What travels on the cluster's pub/sub channels: a small binary header followed by the push
//! frames exactly as connections receive them (already encoded JSON), so a receiving node decodes
//! the header and shares the frame bytes with every local connection without re-encoding.
//!
//! Layout: version (1 byte), kind (1 byte; high bit: directed; next bit: the agents are
//! excluded rather than the only ones), origin (8 bytes), id (8 bytes), then app, key, agents
//! and component as u16-length-prefixed UTF-8, then the number of per-agent variants (u16) and
//! each as its agent (u16-prefixed) and frame (u32-prefixed), then the default frame. The key is
//! the user, component or topic; agents are comma-joined (agent names cannot contain commas),
//! empty for none; the component is empty unless a live audience is restricted to one. A
//! `kick` carries the connection id in `id` and nothing else.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::hub::{Envelope, Target};
use crate::words::AgentFilter;

const VERSION: u8 = 2;
const DIRECTED: u8 = 0x80;
const EXCEPT: u8 = 0x40;
const FLAGS: u8 = DIRECTED | EXCEPT;
const USER: u8 = 0;
const COMPONENT: u8 = 1;
const TOPIC: u8 = 2;
const ALL: u8 = 3;
const KICK: u8 = 4;
const HEADER: usize = 18;
const TEXTS: usize = 4;

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
    let (agents, except) = match &envelope.agents {
        AgentFilter::Any => (String::new(), false),
        AgentFilter::Only(list) => (list.join(","), false),
        AgentFilter::Except(list) => (list.join(","), true),
    };
    let component = envelope.component.as_deref().unwrap_or("");
    let variants: usize = envelope
        .variants
        .iter()
        .map(|(agent, frame)| 6 + agent.len() + frame.len())
        .sum();
    let mut out = BytesMut::with_capacity(
        HEADER
            + 10
            + envelope.app.len()
            + key.len()
            + agents.len()
            + component.len()
            + variants
            + envelope.frame.len(),
    );
    out.put_u8(VERSION);
    let mut flags = 0;
    if envelope.directed {
        flags |= DIRECTED;
    }
    if except {
        flags |= EXCEPT;
    }
    out.put_u8(kind | flags);
    out.put_u64(origin);
    out.put_u64(envelope.id);
    for text in [envelope.app.as_str(), key, agents.as_str(), component] {
        put_str(&mut out, text);
    }
    out.put_u16(envelope.variants.len().min(u16::MAX as usize) as u16);
    for (agent, frame) in envelope.variants.iter().take(u16::MAX as usize) {
        put_str(&mut out, agent);
        out.put_u32(frame.len() as u32);
        out.put_slice(frame);
    }
    out.put_slice(&envelope.frame);
    out.freeze()
}

/// Encodes the request to close connection `conn_id`.
pub fn encode_kick(origin: u64, conn_id: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER + 10);
    out.put_u8(VERSION);
    out.put_u8(KICK);
    out.put_u64(origin);
    out.put_u64(conn_id);
    for _ in 0..TEXTS {
        put_str(&mut out, "");
    }
    out.put_u16(0);
    out.freeze()
}

fn put_str(out: &mut BytesMut, text: &str) {
    // Names are at most a few hundred bytes (engine::MAX_NAME, topic limits).
    let len = text.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&text.as_bytes()[..len]);
}

/// Takes a u16-length-prefixed string off the front of `rest`.
fn take_str(rest: &mut Bytes) -> Option<String> {
    if rest.len() < 2 {
        return None;
    }
    let len = rest.get_u16() as usize;
    if rest.len() < len {
        return None;
    }
    String::from_utf8(rest.split_to(len).to_vec()).ok()
}

/// Decodes what `encode` or `encode_kick` produced; `None` for anything else.
pub fn decode(payload: Bytes) -> Option<Received> {
    if payload.len() < HEADER || payload[0] != VERSION {
        return None;
    }
    let kind = payload[1];
    let origin = u64::from_be_bytes(payload[2..10].try_into().ok()?);
    let id = u64::from_be_bytes(payload[10..18].try_into().ok()?);
    let mut rest = payload.slice(HEADER..);
    let app = take_str(&mut rest)?;
    let key = take_str(&mut rest)?;
    let agents = take_str(&mut rest)?;
    let component = take_str(&mut rest)?;
    if rest.len() < 2 {
        return None;
    }
    let count = rest.get_u16() as usize;
    let mut variants = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let agent = take_str(&mut rest)?;
        if rest.len() < 4 {
            return None;
        }
        let len = rest.get_u32() as usize;
        if rest.len() < len {
            return None;
        }
        variants.push((agent, rest.split_to(len)));
    }
    let target = match kind & !FLAGS {
        USER => Target::Users(vec![key]),
        COMPONENT => Target::Component(key),
        TOPIC => Target::Topic(key),
        ALL => Target::All,
        KICK => return Some(Received::Kick(id)),
        _ => return None,
    };
    let list = || agents.split(',').map(str::to_owned).collect();
    let agents = match (agents.is_empty(), kind & EXCEPT != 0) {
        (true, _) => AgentFilter::Any,
        (false, false) => AgentFilter::Only(list()),
        (false, true) => AgentFilter::Except(list()),
    };
    Some(Received::Envelope {
        origin,
        envelope: Envelope {
            app,
            target,
            agents,
            component: (!component.is_empty()).then_some(component),
            id,
            directed: kind & DIRECTED != 0,
            frame: rest,
            variants,
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
            agents: AgentFilter::only(agents),
            component: None,
            id: 0x0102_0304_0506_0708,
            directed,
            frame: Bytes::from_static(br#"{"Type":3,"Message":{"id":"1"}}"#),
            variants: Vec::new(),
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
        assert_eq!(envelope.component, sent.component);
        assert_eq!(envelope.variants, sent.variants);
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
        round_trip(Envelope {
            agents: AgentFilter::Except(vec!["cs".into(), "bs".into()]),
            component: Some("esbm".into()),
            variants: vec![
                ("ios".into(), Bytes::from_static(br#"{"Type":3,"ios":1}"#)),
                ("android".into(), Bytes::from_static(b"{}")),
            ],
            ..envelope(Target::Users(vec!["bob".into()]), None, false)
        });
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
