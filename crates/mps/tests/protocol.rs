//! The WebSocket endpoints under good and bad input: `/websocket/{token}`, and every documented
//! answer of `/ws` to broken open frames, broken frames after the open, oversize and invalid
//! UTF-8 frames, and abuse. Each test checks that the server still serves afterwards and that
//! `/metrics` counted the input in `mps_bad_input_total{kind}`.

mod common;

use common::*;
use futures_util::SinkExt;
use mps_client::PushClient;
use mps_client::proto::Status;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const FORGED_SECRET: &str = "not-the-server-secret";

/// Asserts that `kinds` were counted as bad input, and that the server still opens sessions
/// and delivers.
async fn still_serving_and_counted(server: &Server, kinds: &[&str]) {
    let mut client = server.connect("healthy", "bs", &[]).await;
    let sent = server
        .api()
        .send(&message(r#"{"ok":true}"#, Some(&["healthy"])))
        .await
        .unwrap();
    assert_eq!(client.next_push(WAIT).await.unwrap().id, sent.id);
    client.ping().await.unwrap();
    let metrics = server.metrics().await;
    for kind in kinds {
        let series = format!("mps_bad_input_total{{kind=\"{kind}\"}}");
        assert!(
            metrics.contains(&series),
            "{series} missing from:\n{metrics}"
        );
    }
}

/// Expects a `Type` 2 refusal with `code` (echoing `Seq` 231 when `seq`), then close `close`.
async fn expect_refusal(ws: &mut RawWs, code: &str, seq: bool, close: u16) {
    let (frames, closed) = until_close(ws).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    let refusal = &frames[0];
    assert_eq!(refusal["Type"], 2, "{refusal}");
    assert_eq!(refusal["Error"]["code"], code, "{refusal}");
    assert!(refusal["Error"]["message"].is_string(), "{refusal}");
    assert!(refusal.get("Session").is_none(), "{refusal}");
    if seq {
        assert_eq!(refusal["Seq"], 231, "{refusal}");
    }
    assert_eq!(closed, close);
}

#[tokio::test]
async fn simple_endpoint_refuses_bad_tokens_before_the_upgrade() {
    let server = Server::start();
    let expired = signed_token(JWT_SECRET, "alice", unix_now() - 120);
    let forged = signed_token(FORGED_SECRET, "alice", unix_now() + 3600);
    for (token, code) in [
        ("garbage", "invalid_token"),
        ("a.b.c", "invalid_token"),
        (expired.as_str(), "token_expired"),
        (forged.as_str(), "invalid_token"),
    ] {
        let answer = server.upgrade_request(&format!("/websocket/{token}")).await;
        assert_eq!(answer.status, 401, "{token}: {answer:?}");
        assert!(answer.header("upgrade").is_none(), "{answer:?}");
        assert_eq!(answer.error_code(), code);

        let url = format!("ws://{}/websocket/{token}", server.addr);
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401);
            }
            Err(other) => panic!("expected an HTTP refusal, got {other}"),
            Ok(_) => panic!("{token} was accepted"),
        }
    }
    assert!(server.api().clients().await.unwrap().is_empty());
    still_serving_and_counted(&server, &["invalid_token", "token_expired"]).await;
}

#[tokio::test]
async fn simple_endpoint_sends_the_backlog_at_once_and_takes_acks() {
    let server = Server::start();
    let api = server.api();
    let mut ids = Vec::new();
    for n in 0..3 {
        let m = message(&format!(r#"{{"n":{n}}}"#), Some(&["alice"]));
        ids.push(api.send(&m).await.unwrap().id);
    }
    let token = server.token("alice").await;
    let url = format!("ws://{}/websocket/{token}?components=esbm,oa", server.addr);
    let mut client = PushClient::connect_simple(&url).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let push = client.next_push(WAIT).await.unwrap();
        assert!(push.ack);
        got.push(push.id);
    }
    assert_eq!(got, ids, "the backlog, oldest first, with no open frame");

    assert_eq!(client.ack(&ids[..2]).await.unwrap(), 2);
    for (id, status) in ids
        .iter()
        .zip([Status::Acked, Status::Acked, Status::Delivered])
    {
        let api = api.clone();
        let id = id.clone();
        eventually(&format!("{id} to be {status:?}"), move || {
            let (api, id) = (api.clone(), id.clone());
            async move { api.message(&id).await.unwrap().recipients.unwrap()[0].status == status }
        })
        .await;
    }

    let clients = api.clients().await.unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].transport, "websocket-simple");
    assert_eq!(clients[0].user, "alice");
    assert_eq!(clients[0].agent, "bs");
    assert_eq!(clients[0].components, ["esbm", "oa"]);

    // Live pushes and the rest of the protocol work as on /ws.
    let live = api
        .send(&message(r#"{"live":1}"#, Some(&["alice"])))
        .await
        .unwrap()
        .id;
    assert_eq!(client.next_push(WAIT).await.unwrap().id, live);
    client.ping().await.unwrap();
    client.subscribe(&["hr"]).await.unwrap();
    assert_eq!(api.clients().await.unwrap()[0].components, ["hr"]);
}

#[tokio::test]
async fn malformed_or_unexpected_first_frames_are_refused_with_4400() {
    let server = Server::start();
    let token = server.token("alice").await;

    let mut ws = raw_ws(&server.ws()).await;
    send_text(&mut ws, "{\"Type\":1,").await;
    expect_refusal(&mut ws, "bad_json", false, 4400).await;

    let mut ws = raw_ws(&server.ws()).await;
    send_text(&mut ws, "hello").await;
    expect_refusal(&mut ws, "bad_json", false, 4400).await;

    let mut ws = raw_ws(&server.ws()).await;
    send_text(&mut ws, r#"{"Type":5,"Seq":231}"#).await;
    expect_refusal(&mut ws, "open_expected", true, 4400).await;

    // An ack before the open, with a valid token somewhere in it, is still not an open.
    let mut ws = raw_ws(&server.ws()).await;
    let text = open_text(&token, "alice", "bs", &[]).replace("\"Type\":1", "\"Type\":4");
    send_text(&mut ws, text).await;
    expect_refusal(&mut ws, "open_expected", true, 4400).await;

    let mut ws = raw_ws(&server.ws()).await;
    ws.send(WsMessage::binary(open_text(&token, "alice", "bs", &[])))
        .await
        .unwrap();
    assert_eq!(until_close(&mut ws).await, (vec![], 4400));

    // A way that is neither websocket nor a vendor's, and a bad component set.
    let mut ws = raw_ws(&server.ws()).await;
    let text = open_text(&token, "alice", "bs", &[]).replace("\"websocket\"", "\"sms\"");
    send_text(&mut ws, text).await;
    expect_refusal(&mut ws, "unsupported_way", true, 4400).await;
    let mut ws = raw_ws(&server.ws()).await;
    send_text(&mut ws, open_text(&token, "alice", "bs", &[""])).await;
    expect_refusal(&mut ws, "invalid_client", true, 4400).await;

    assert!(server.api().clients().await.unwrap().is_empty());
    still_serving_and_counted(
        &server,
        &[
            "bad_json",
            "open_expected",
            "unsupported_way",
            "invalid_client",
        ],
    )
    .await;
}

#[tokio::test]
async fn missing_expired_forged_or_foreign_tokens_are_refused_with_4401() {
    let server = Server::start();
    let good = server.token("alice").await;
    let expired = signed_token(JWT_SECRET, "alice", unix_now() - 120);
    let forged = signed_token(FORGED_SECRET, "alice", unix_now() + 3600);
    let cases = [
        (
            r#"{"Type":1,"Seq":231,"Version":1,"Client":{"agent":"bs","user":"alice","way":"websocket"}}"#
                .to_owned(),
            "missing_token",
        ),
        (open_text("", "alice", "bs", &[]), "missing_token"),
        (open_text(&expired, "alice", "bs", &[]), "token_expired"),
        (open_text(&forged, "alice", "bs", &[]), "invalid_token"),
        (open_text("not.a.jwt", "alice", "bs", &[]), "invalid_token"),
        (open_text(&good, "bob", "bs", &[]), "user_mismatch"),
    ];
    for (text, code) in cases {
        let mut ws = raw_ws(&server.ws()).await;
        send_text(&mut ws, text).await;
        expect_refusal(&mut ws, code, true, 4401).await;
    }
    // The client library reports the same refusal.
    let error = PushClient::open(&server.ws(), &forged, client_info("alice", "bs", &[]))
        .await
        .err()
        .expect("refused");
    assert_eq!(refused(error).1, "invalid_token");

    assert!(server.api().clients().await.unwrap().is_empty());
    still_serving_and_counted(
        &server,
        &[
            "missing_token",
            "token_expired",
            "invalid_token",
            "user_mismatch",
        ],
    )
    .await;
}

#[tokio::test]
async fn no_open_frame_in_time_is_closed_with_4408() {
    let server = Server::with_env(&[("MPS_CONNECTION__OPEN_TIMEOUT", "1")]);
    let started = std::time::Instant::now();
    let mut silent = raw_ws(&server.ws()).await;
    assert_eq!(until_close(&mut silent).await, (vec![], 4408));
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    // Pings alone are not an open frame.
    let mut pinging = raw_ws(&server.ws()).await;
    pinging
        .send(WsMessage::Ping(Bytes::from_static(b"hi")))
        .await
        .unwrap();
    assert_eq!(until_close(&mut pinging).await, (vec![], 4400));
    still_serving_and_counted(&server, &["open_timeout", "open_expected"]).await;
}

#[tokio::test]
async fn bad_frames_after_the_open_get_error_frames_and_the_session_goes_on() {
    let server = Server::start();
    let mut ws = server.open_raw("alice", "bs", &[]).await;
    let cases: [(WsMessage, &str, Option<u64>); 7] = [
        (WsMessage::text("{not json"), "bad_json", None),
        (WsMessage::text(""), "bad_json", None),
        (
            WsMessage::text(r#"{"Type":42,"Seq":5}"#),
            "unknown_type",
            Some(5),
        ),
        (WsMessage::text(r#"{"Type":"ack"}"#), "bad_frame", None),
        (WsMessage::text(r#"{"Type":5,"Seq":-1}"#), "bad_frame", None),
        (
            WsMessage::binary(&b"\x00\x01"[..]),
            "binary_not_supported",
            None,
        ),
        (
            WsMessage::text(r#"{"Type":4,"Seq":6,"Ids":["x"]}"#),
            "invalid_id",
            Some(6),
        ),
    ];
    for (input, code, seq) in cases {
        ws.send(input).await.unwrap();
        let answer = next_json(&mut ws).await;
        assert_eq!(answer["Type"], 9, "{answer}");
        assert_eq!(answer["Error"]["code"], code, "{answer}");
        match seq {
            Some(seq) => assert_eq!(answer["Seq"], seq, "{answer}"),
            None => assert!(answer.get("Seq").is_none(), "{answer}"),
        }
    }
    // A second open on an open session.
    let token = server.token("alice").await;
    send_text(&mut ws, open_text(&token, "alice", "bs", &[])).await;
    let answer = next_json(&mut ws).await;
    assert_eq!(answer["Error"]["code"], "already_open", "{answer}");
    assert_eq!(answer["Seq"], 231);

    // Still usable: ping, and a push arrives. (8 errors, under the default limit of 10.)
    send_text(&mut ws, r#"{"Type":5,"Seq":77}"#).await;
    let pong = next_json(&mut ws).await;
    assert_eq!(
        (pong["Type"].as_u64(), pong["Seq"].as_u64()),
        (Some(6), Some(77))
    );
    let sent = server
        .api()
        .send(&message(r#"{"after":"errors"}"#, Some(&["alice"])))
        .await
        .unwrap();
    let push = next_json(&mut ws).await;
    assert_eq!(push["Message"]["id"], sent.id.as_str());
    assert_eq!(server.client_ids("alice").await.len(), 1);
    still_serving_and_counted(
        &server,
        &[
            "bad_json",
            "unknown_type",
            "bad_frame",
            "binary",
            "invalid_id",
            "already_open",
        ],
    )
    .await;
}

#[tokio::test]
async fn oversize_frames_are_closed_with_1009() {
    let server = Server::with_env(&[("MPS_CONNECTION__MAX_FRAME", "1024")]);
    let big = format!(r#"{{"Type":5,"Seq":1,"pad":"{}"}}"#, "x".repeat(2048));

    let mut ws = server.open_raw("alice", "bs", &[]).await;
    // Just under the limit is fine.
    let fits = format!(r#"{{"Type":5,"Seq":1,"pad":"{}"}}"#, "x".repeat(900));
    send_text(&mut ws, fits).await;
    assert_eq!(next_json(&mut ws).await["Type"], 6);
    send_text(&mut ws, big.clone()).await;
    assert_eq!(until_close(&mut ws).await, (vec![], 1009));
    server.wait_clients("alice", 0).await;

    // Also as the first frame.
    let mut ws = raw_ws(&server.ws()).await;
    send_text(&mut ws, big).await;
    assert_eq!(until_close(&mut ws).await, (vec![], 1009));

    // A message split into fragments that add up to too much.
    let mut ws = server.open_raw("alice", "bs", &[]).await;
    let part = Bytes::from(vec![b' '; 700]);
    ws.send(WsMessage::Frame(WsFrame::message(
        part.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(WsMessage::Frame(WsFrame::message(
        part,
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(until_close(&mut ws).await, (vec![], 1009));
    still_serving_and_counted(&server, &["too_big"]).await;
}

#[tokio::test]
async fn invalid_utf8_text_is_closed_with_1007() {
    let server = Server::start();
    let bad = Bytes::from_static(b"{\"Type\":5,\"Seq\":1,\"x\":\"\xff\xfe\"}");
    let invalid_text = || {
        WsMessage::Frame(WsFrame::message(
            bad.clone(),
            OpCode::Data(Data::Text),
            true,
        ))
    };

    let mut ws = server.open_raw("alice", "bs", &[]).await;
    ws.send(invalid_text()).await.unwrap();
    assert_eq!(until_close(&mut ws).await, (vec![], 1007));
    server.wait_clients("alice", 0).await;

    let mut ws = raw_ws(&server.ws()).await;
    ws.send(invalid_text()).await.unwrap();
    assert_eq!(until_close(&mut ws).await, (vec![], 1007));
    still_serving_and_counted(&server, &["bad_utf8"]).await;
}

#[tokio::test]
async fn too_many_bad_frames_close_the_session_with_4400() {
    let server = Server::with_env(&[("MPS_CONNECTION__MAX_ERRORS", "3")]);
    let mut ws = server.open_raw("alice", "bs", &[]).await;
    send_text(&mut ws, "nope").await;
    send_text(&mut ws, r#"{"Type":99}"#).await;
    // Good frames in between do not reset the count.
    send_text(&mut ws, r#"{"Type":5,"Seq":3}"#).await;
    ws.send(WsMessage::binary(&b"x"[..])).await.unwrap();
    let (frames, code) = until_close(&mut ws).await;
    let kinds: Vec<_> = frames.iter().map(|f| f["Type"].as_u64().unwrap()).collect();
    assert_eq!(kinds, [9, 9, 6, 9], "{frames:?}");
    assert_eq!(code, 4400);
    server.wait_clients("alice", 0).await;
    still_serving_and_counted(&server, &["bad_json", "unknown_type", "binary"]).await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("mps_disconnects_total{reason=\"protocol_abuse\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn websocket_framing_violations_are_closed_with_1002() {
    let server = Server::start();
    let reserved_bit = || {
        let mut frame = WsFrame::message(
            Bytes::from_static(br#"{"Type":5,"Seq":1}"#),
            OpCode::Data(Data::Text),
            true,
        );
        frame.header_mut().rsv1 = true;
        WsMessage::Frame(frame)
    };

    let mut ws = server.open_raw("alice", "bs", &[]).await;
    ws.send(reserved_bit()).await.unwrap();
    assert_eq!(until_close(&mut ws).await, (vec![], 1002));
    server.wait_clients("alice", 0).await;

    let mut ws = raw_ws(&server.ws()).await;
    ws.send(reserved_bit()).await.unwrap();
    assert_eq!(until_close(&mut ws).await, (vec![], 1002));
    still_serving_and_counted(&server, &["ws_protocol"]).await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let server = Server::start();
    let mut ws = server.open_raw("alice", "bs", &[]).await;
    ws.send(WsMessage::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    // The server's reply, not a dropped connection (1006).
    assert_eq!(until_close(&mut ws).await, (vec![], 1000));
    server.wait_clients("alice", 0).await;
}

#[tokio::test]
async fn the_conformance_echo_is_only_there_when_configured() {
    let server = Server::start();
    let answer = server.upgrade_request("/conformance/echo").await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.error_code(), "not_found");

    let server = Server::with_env(&[("MPS_CONNECTION__CONFORMANCE_ECHO", "true")]);
    let mut ws = raw_ws(&format!("ws://{}/conformance/echo", server.addr)).await;
    send_text(&mut ws, r#"{"echo":1}"#).await;
    assert_eq!(next_json(&mut ws).await["echo"], 1);
}
