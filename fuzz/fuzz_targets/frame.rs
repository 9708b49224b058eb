//! Client frames of the Message Push Protocol: the text of a WebSocket frame, parsed as the
//! sessions parse it (`transport/ws.rs`, `transport/session.rs`), then put through the checks a
//! session or a short connection makes on what it read. Nothing may panic; a frame that parses
//! encodes again and that encoding parses to the same encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mps::push::devices::{PushModeRequest, check_registration};
use mps_proto::Frame;

fuzz_target!(|data: &[u8]| {
    // The socket refuses text frames that are not UTF-8 before anything parses them.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = match serde_json::from_str::<Frame>(text) {
        Ok(frame) => frame,
        Err(e) => {
            // The session's error reply tells syntax from data errors and quotes the error.
            let _ = (e.classify(), e.to_string());
            return;
        }
    };
    let encoded = mps::engine::encode(&frame);
    let again: Frame = serde_json::from_slice(&encoded).expect("an encoded frame parses");
    assert_eq!(encoded, mps::engine::encode(&again), "encoding is stable");

    let limits = mps::config::TopicsConfig::default().limits();
    if let Some(ids) = &frame.ids {
        let _ = mps::engine::parse_ids(ids);
    }
    let short = mps::transport::push_mode::wanted(&frame);
    let Some(client) = frame.client else {
        return;
    };
    for value in [&client.agent, &client.device, &client.user]
        .into_iter()
        .flatten()
    {
        let _ = mps::words::check_name("client", value);
    }
    for component in client.component_set.iter().flatten() {
        let _ = mps::words::check_name("component", component);
    }
    for pattern in client.topics.iter().flatten() {
        if mps::topic::check_pattern(pattern, limits).is_ok() {
            assert!(
                mps::topic::covers(pattern, pattern),
                "{pattern:?} covers itself"
            );
        }
    }
    if let Some(last_id) = &client.last_id {
        let _ = last_id.parse::<u64>();
    }
    if short {
        let request = PushModeRequest::from(client);
        let hosts = ["fcm.googleapis.com".to_owned(), "push.example".to_owned()];
        for allowed in [&hosts[..], &[]] {
            let _ = check_registration("default", "alice", request.clone(), allowed, 0);
        }
    }
});
