//! Push modes against the real binary: device registration through the API and the protocol's
//! short connection, the one-user-per-token rule, unregistering, logout, expiry, who may act
//! on which devices, and bad input.

mod common;
#[path = "common/vendors.rs"]
mod vendors;

use common::*;
use serde_json::{Value, json};

const P256DH: &str =
    "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
const AUTH: &str = "tBHItJI5svbpez7KI4CCXg";

fn apns_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn subscription(endpoint: &str) -> Value {
    json!({"endpoint": endpoint, "expirationTime": null, "keys": {"p256dh": P256DH, "auth": AUTH}})
}

/// A request with a client token.
async fn as_client(
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> HttpResponse {
    let body = body.map(Value::to_string);
    server
        .request(
            method,
            path,
            Some(&format!("Bearer {token}")),
            body.as_deref(),
        )
        .await
}

fn json_of(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {response:?}"))
}

/// The registrations of `user`, as the operator sees them: (device, way) pairs.
async fn registrations(server: &Server, user: &str) -> Vec<(String, String)> {
    let response = server
        .admin("GET", &format!("/api/v1/devices?user={user}"))
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    let page = json_of(&response);
    let mut found: Vec<(String, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device"].as_str().unwrap().to_owned(),
                d["way"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(d, w)| (d.to_string(), w.to_string()))
        .collect()
}

#[tokio::test]
async fn a_client_opens_refreshes_lists_and_closes_its_push_modes() {
    let server = Server::start();
    let alice = server.token("alice").await;
    let phone = json!({"device": "phone-1", "way": "apns", "token": apns_token(1).to_uppercase(),
                       "components": ["esbm"]});
    let created = as_client(&server, &alice, "POST", "/api/v1/devices", Some(&phone)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let registration = json_of(&created);
    assert_eq!(registration["user"], "alice");
    assert_eq!(registration["app"], "default");
    assert_eq!(registration["agent"], "ios");
    assert_eq!(registration["token"], apns_token(1), "stored in lower case");
    assert_eq!(registration["components"], json!(["esbm"]));
    let first = registration["refreshed"].as_i64().unwrap();
    // Registering again refreshes it.
    let again = as_client(&server, &alice, "POST", "/api/v1/devices", Some(&phone)).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert!(json_of(&again)["refreshed"].as_i64().unwrap() >= first);
    // A browser of the same user, with its Web Push subscription.
    let laptop = json!({"device": "laptop", "way": "webpush",
                        "subscription": subscription("https://push.example.net/s/1")});
    let created = as_client(&server, &alice, "POST", "/api/v1/devices", Some(&laptop)).await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(json_of(&created)["agent"], "bs");
    // The client lists its own.
    let own = as_client(&server, &alice, "GET", "/api/v1/devices", None).await;
    assert_eq!(own.status, 200, "{own:?}");
    assert_eq!(json_of(&own)["total"], 2);
    assert_eq!(
        registrations(&server, "alice").await,
        pairs(&[("laptop", "webpush"), ("phone-1", "apns")])
    );
    // Closing one way of one device; closing it again finds nothing.
    let path = "/api/v1/devices?device=phone-1&way=apns";
    let closed = as_client(&server, &alice, "DELETE", path, None).await;
    assert_eq!(closed.status, 200, "{closed:?}");
    assert_eq!(json_of(&closed)["removed"], 1);
    let again = as_client(&server, &alice, "DELETE", path, None).await;
    assert_eq!(again.status, 404);
    assert_eq!(again.error_code(), "not_found");
    assert_eq!(
        registrations(&server, "alice").await,
        pairs(&[("laptop", "webpush")])
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"mps_devices_total{way="apns",event="refreshed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"mps_devices_removed_total{reason="unregistered"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_token_belongs_to_one_user_at_a_time() {
    let server = Server::start();
    let (alice, bob) = (server.token("alice").await, server.token("bob").await);
    let fcm = |device: &str| json!({"device": device, "way": "fcm", "token": "shared-fcm-token"});
    let r = as_client(
        &server,
        &alice,
        "POST",
        "/api/v1/devices",
        Some(&fcm("a-phone")),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    // The phone changes hands: bob registers the same token.
    let r = as_client(
        &server,
        &bob,
        "POST",
        "/api/v1/devices",
        Some(&fcm("b-phone")),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert!(registrations(&server, "alice").await.is_empty());
    assert_eq!(
        registrations(&server, "bob").await,
        pairs(&[("b-phone", "fcm")])
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"mps_devices_removed_total{reason="taken"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn logout_closes_one_device_or_every_device() {
    let server = Server::start();
    let carol = server.token("carol").await;
    for (device, way, token) in [
        ("phone", "apns", apns_token(2)),
        ("phone", "fcm", "carol-fcm".to_owned()),
        ("tablet", "fcm", "carol-tablet".to_owned()),
    ] {
        let body = json!({"device": device, "way": way, "token": token});
        let r = as_client(&server, &carol, "POST", "/api/v1/devices", Some(&body)).await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let phone = json!({"device": "phone"});
    let out = as_client(&server, &carol, "POST", "/api/v1/logout", Some(&phone)).await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(json_of(&out)["removed"], 2);
    assert_eq!(
        registrations(&server, "carol").await,
        pairs(&[("tablet", "fcm")])
    );
    // No body: every device of the user.
    let out = as_client(&server, &carol, "POST", "/api/v1/logout", None).await;
    assert_eq!(json_of(&out)["removed"], 1);
    assert!(registrations(&server, "carol").await.is_empty());
    let out = as_client(&server, &carol, "POST", "/api/v1/logout", None).await;
    assert_eq!(json_of(&out)["removed"], 0);
}

#[tokio::test]
async fn the_operator_lists_and_removes_any_users_devices() {
    let server = Server::start();
    for user in ["dan", "erin"] {
        let body =
            json!({"user": user, "device": "phone", "way": "fcm", "token": format!("{user}-t")});
        let r = server
            .admin_post("/api/v1/devices", &body.to_string())
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let all = server.admin("GET", "/api/v1/devices?way=fcm").await;
    assert_eq!(json_of(&all)["total"], 2);
    let paged = server.admin("GET", "/api/v1/devices?size=1&page=2").await;
    let paged = json_of(&paged);
    assert_eq!(paged["items"].as_array().unwrap().len(), 1);
    assert_eq!(paged["items"][0]["user"], "erin");
    // Every device of a user, by the back end (for example when the account is closed).
    let removed = server.admin("DELETE", "/api/v1/devices?user=dan").await;
    assert_eq!(json_of(&removed)["removed"], 1);
    assert!(registrations(&server, "dan").await.is_empty());
    // The operator must say whose.
    let r = server
        .admin_post(
            "/api/v1/devices",
            r#"{"device":"x","way":"fcm","token":"t"}"#,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid_name");
    let r = server.admin("DELETE", "/api/v1/devices?device=phone").await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_client_never_acts_on_another_users_devices() {
    let server = Server::start();
    let (mallory, victim) = (server.token("mallory").await, server.token("victim").await);
    let body = json!({"device": "phone", "way": "fcm", "token": "victim-token"});
    let r = as_client(&server, &victim, "POST", "/api/v1/devices", Some(&body)).await;
    assert_eq!(r.status, 201);

    let as_victim = json!({"user": "victim", "device": "x", "way": "fcm", "token": "m"});
    let other_app = json!({"app": "oa", "device": "x", "way": "fcm", "token": "m"});
    for (method, path, body) in [
        ("POST", "/api/v1/devices", Some(&as_victim)),
        ("POST", "/api/v1/devices", Some(&other_app)),
        ("DELETE", "/api/v1/devices?user=victim&device=phone", None),
        ("GET", "/api/v1/devices?user=victim", None),
        ("GET", "/api/v1/devices?app=oa", None),
    ] {
        let r = as_client(&server, &mallory, method, path, body).await;
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
        assert_eq!(r.error_code(), "forbidden");
    }
    // Mallory's own view and removals never reach the victim.
    let own = as_client(&server, &mallory, "GET", "/api/v1/devices", None).await;
    assert_eq!(json_of(&own)["total"], 0);
    let r = as_client(
        &server,
        &mallory,
        "DELETE",
        "/api/v1/devices?device=phone",
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let out = as_client(&server, &mallory, "POST", "/api/v1/logout", None).await;
    assert_eq!(json_of(&out)["removed"], 0);
    assert_eq!(
        registrations(&server, "victim").await,
        pairs(&[("phone", "fcm")])
    );
    // No token, a bad token, and the admin key where a client token is needed.
    let r = server
        .request("POST", "/api/v1/devices", None, Some(&body.to_string()))
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "missing_token"));
    let r = as_client(&server, "not.a.token", "GET", "/api/v1/devices", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "invalid_token"));
    let r = server.admin_post("/api/v1/logout", "").await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"mps_api_errors_total{code="forbidden"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_registrations_get_clear_errors() {
    let server = Server::start();
    let token = server.token("frank").await;
    let long_endpoint = format!("https://push.example.net/{}", "x".repeat(1100));
    let cases = [
        (
            json!({"device": "d", "way": "sms", "token": "t"}),
            "unsupported_way",
        ),
        (
            json!({"device": "d", "way": "apns", "token": "not-hex"}),
            "invalid_device_token",
        ),
        (
            json!({"device": "d", "way": "apns", "token": "abcd"}),
            "invalid_device_token",
        ),
        (
            json!({"device": "d", "way": "apns"}),
            "invalid_device_token",
        ),
        (
            json!({"device": "d", "way": "fcm", "token": "has space"}),
            "invalid_device_token",
        ),
        (
            json!({"device": "d", "way": "fcm", "token": ""}),
            "invalid_device_token",
        ),
        (
            json!({"device": "d", "way": "webpush", "subscription": subscription("http://push.example.net/1")}),
            "invalid_subscription",
        ),
        (
            json!({"device": "d", "way": "webpush", "subscription": subscription(&long_endpoint)}),
            "invalid_subscription",
        ),
        (
            json!({"device": "d", "way": "webpush", "subscription": {"endpoint": "https://push.example.net/1", "keys": {"p256dh": "AAAA", "auth": AUTH}}}),
            "invalid_subscription",
        ),
        (
            json!({"device": "d", "way": "webpush", "token": "{not json"}),
            "invalid_subscription",
        ),
        (
            json!({"device": "", "way": "fcm", "token": "t"}),
            "invalid_device",
        ),
        (
            json!({"device": "d", "way": "fcm", "token": "t", "agent": ""}),
            "invalid_device",
        ),
        (
            json!({"device": "d", "way": "fcm", "token": "t", "components": [""]}),
            "invalid_device",
        ),
        (json!({"way": "fcm", "token": "t"}), "bad_json"),
        (
            json!({"device": "d", "way": "fcm", "token": "t", "color": "red"}),
            "bad_json",
        ),
    ];
    for (body, code) in cases {
        let r = as_client(&server, &token, "POST", "/api/v1/devices", Some(&body)).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.error_code(), code, "{body}");
    }
    let r = as_client(&server, &token, "DELETE", "/api/v1/devices", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_device"));
    let r = as_client(
        &server,
        &token,
        "DELETE",
        "/api/v1/devices?device=d&way=sms",
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "unsupported_way")
    );
    let r = as_client(&server, &token, "GET", "/api/v1/devices?size=0", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_query"));
    let r = server
        .request(
            "POST",
            "/api/v1/logout",
            Some(&format!("Bearer {token}")),
            Some("{oops"),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_json"));
    assert!(registrations(&server, "frank").await.is_empty());
    let metrics = server.metrics().await;
    for kind in [
        "invalid_device_token",
        "invalid_subscription",
        "unsupported_way",
    ] {
        assert!(
            metrics.contains(&format!(r#"mps_bad_input_total{{kind="{kind}"}}"#)),
            "{kind}: {metrics}"
        );
    }
    // `push` is for directed messages only.
    let r = server
        .admin_post("/api/v1/messages", r#"{"content":1,"push":"always"}"#)
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_push"));
    let r = server
        .admin_post(
            "/api/v1/messages",
            r#"{"content":1,"receiver":["frank"],"push":"sometimes"}"#,
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_json"));
}

#[tokio::test]
async fn registrations_not_refreshed_in_time_expire() {
    let server = Server::with_env(&[
        ("MPS_PUSH__EXPIRE_AFTER", "1"),
        ("MPS_MESSAGES__SWEEP_INTERVAL", "1"),
    ]);
    let token = server.token("gina").await;
    let body = json!({"device": "phone", "way": "fcm", "token": "gina-token"});
    let r = as_client(&server, &token, "POST", "/api/v1/devices", Some(&body)).await;
    assert_eq!(r.status, 201);
    eventually("the registration to expire", || async {
        registrations(&server, "gina").await.is_empty()
    })
    .await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"mps_devices_removed_total{reason="expired"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_vapid_key_route_says_when_web_push_is_not_configured() {
    let server = Server::start();
    let r = server
        .request("GET", "/api/v1/webpush/vapid-public-key", None, None)
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_configured"));
    let r = server
        .request(
            "GET",
            "/api/v1/webpush/vapid-public-key?app=a%0Ab",
            None,
            None,
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_name"));
}

/// A short connection: sends one frame on `/ws` and returns what came back before the close.
async fn short_connection(server: &Server, frame: Value) -> (Vec<Value>, u16) {
    let mut ws = raw_ws(&server.ws()).await;
    send_text(&mut ws, frame.to_string()).await;
    until_close(&mut ws).await
}

#[tokio::test]
async fn the_protocols_short_connection_opens_and_turns_off_push_modes() {
    let server = Server::start();
    let token = server.token("hank").await;
    // iOS turns on APNs push (the seed's "open message push"), as its first and only frame.
    let open = json!({"Type": 1, "Seq": 41, "Version": 1,
        "Client": {"agent": "ios", "user": "hank", "way": "apns", "device": "iphone",
                   "deviceToken": apns_token(9), "componentSet": ["esbm"]},
        "Security": {"token": token}});
    let (frames, code) = short_connection(&server, open.clone()).await;
    assert_eq!(code, 1000, "{frames:?}");
    assert_eq!(frames.len(), 1, "{frames:?}");
    let answer = &frames[0];
    assert_eq!(answer["Type"], 2, "{answer}");
    assert_eq!(answer["Seq"], 41);
    assert!(answer.get("Session").is_none(), "{answer}");
    assert_eq!(answer["Device"]["way"], "apns");
    assert_eq!(answer["Device"]["device"], "iphone");
    assert_eq!(answer["Device"]["user"], "hank");
    assert_eq!(answer["Device"]["components"], json!(["esbm"]));
    // A browser turns on Web Push with its subscription.
    let web = json!({"Type": 1, "Seq": 42,
        "Client": {"agent": "bs", "way": "webpush", "device": "firefox",
                   "subscription": subscription("https://push.example.net/s/hank")},
        "Security": {"token": token}});
    let (frames, code) = short_connection(&server, web).await;
    assert_eq!(
        (frames[0]["Type"].as_u64(), code),
        (Some(2), 1000),
        "{frames:?}"
    );
    assert_eq!(
        registrations(&server, "hank").await,
        pairs(&[("firefox", "webpush"), ("iphone", "apns")])
    );
    // The seed's long connection still opens a session on the same endpoint.
    let mut long = server.open_raw("hank", "bs", &["esbm"]).await;
    send_text(&mut long, r#"{"Type":5,"Seq":1}"#).await;
    assert_eq!(next_json(&mut long).await["Type"], 6);
    // Turning APNs off (the seed's "turn off message push").
    let off = json!({"Type": 7, "Seq": 43,
        "Client": {"way": "apns", "device": "iphone"}, "Security": {"token": token}});
    let (frames, code) = short_connection(&server, off.clone()).await;
    assert_eq!(code, 1000);
    assert_eq!(frames, vec![json!({"Type": 7, "Seq": 43})]);
    assert_eq!(
        registrations(&server, "hank").await,
        pairs(&[("firefox", "webpush")])
    );
    // Turning it off again is answered the same way: the push mode is off.
    let (frames, code) = short_connection(&server, off).await;
    assert_eq!((frames.len(), code), (1, 1000));
    // The token moves with the phone: ivan opens APNs with hank's token over the protocol.
    let ivan = server.token("ivan").await;
    let mut taken = open.clone();
    taken["Client"]["user"] = "ivan".into();
    taken["Security"]["token"] = ivan.clone().into();
    short_connection(&server, open).await;
    let (frames, _) = short_connection(&server, taken).await;
    assert_eq!(frames[0]["Device"]["user"], "ivan");
    assert_eq!(
        registrations(&server, "hank").await,
        pairs(&[("firefox", "webpush")])
    );
}

#[tokio::test]
async fn refused_push_mode_frames_get_an_error_and_a_close_code() {
    let server = Server::start();
    let token = server.token("jane").await;
    let frame = |kind: u8, client: Value, token: &str| json!({"Type": kind, "Seq": 7, "Client": client, "Security": {"token": token}});
    let cases = [
        // (frame, answer type, error code, close code)
        (
            frame(
                1,
                json!({"way": "fcm", "device": "p", "deviceToken": "t"}),
                "bad",
            ),
            2,
            "invalid_token",
            4401,
        ),
        (
            frame(
                1,
                json!({"way": "fcm", "device": "p", "deviceToken": "t", "user": "zed"}),
                &token,
            ),
            2,
            "user_mismatch",
            4401,
        ),
        (
            frame(
                1,
                json!({"way": "apns", "device": "p", "deviceToken": "xyz"}),
                &token,
            ),
            2,
            "invalid_device_token",
            4400,
        ),
        (
            frame(1, json!({"way": "fcm", "deviceToken": "t"}), &token),
            2,
            "invalid_device",
            4400,
        ),
        (
            frame(
                1,
                json!({"way": "webpush", "device": "p", "subscription": {"endpoint": "ftp://x"}}),
                &token,
            ),
            2,
            "invalid_subscription",
            4400,
        ),
        (
            frame(
                1,
                json!({"way": "sms", "device": "p", "deviceToken": "t"}),
                &token,
            ),
            2,
            "unsupported_way",
            4400,
        ),
        (
            frame(7, json!({"way": "fcm"}), &token),
            9,
            "invalid_device",
            4400,
        ),
        (
            frame(7, json!({"way": "sms", "device": "p"}), &token),
            9,
            "unsupported_way",
            4400,
        ),
        (
            frame(7, json!({"way": "fcm", "device": "p"}), ""),
            9,
            "missing_token",
            4401,
        ),
        // Type 7 without a vendor way is no push mode: the first frame must open.
        (
            frame(7, json!({"way": "websocket"}), &token),
            2,
            "open_expected",
            4400,
        ),
    ];
    for (sent, kind, error, close) in cases {
        let (frames, code) = short_connection(&server, sent.clone()).await;
        assert_eq!(frames.len(), 1, "{sent}: {frames:?}");
        assert_eq!(frames[0]["Type"], kind, "{sent}: {frames:?}");
        assert_eq!(frames[0]["Seq"], 7, "{sent}");
        assert_eq!(frames[0]["Error"]["code"], error, "{sent}: {frames:?}");
        assert_eq!(code, close, "{sent}");
    }
    assert!(registrations(&server, "jane").await.is_empty());
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"mps_bad_input_total{kind="invalid_device_token"}"#),
        "{metrics}"
    );
}

// ---- The vendor fallback, end to end: the binary pushes to local stand-ins of APNs, FCM and a
// ---- Web Push service, which check the real protocols.

mod fallback {
    use mps_client::PushClient;
    use mps_client::proto::{ClientInfo, PushPolicy, Status};
    use mps_standins::{ApnsReason, FcmError, WebPushAnswer};
    use serde_json::{Value, json};

    use super::vendors::Vendors;
    use super::*;

    async fn register(server: &Server, user: &str, body: Value) {
        let token = server.token(user).await;
        let r = as_client(server, &token, "POST", "/api/v1/devices", Some(&body)).await;
        assert!(r.status == 201 || r.status == 200, "{body}: {r:?}");
    }

    /// A long connection of `user` from device `device`.
    async fn online(server: &Server, user: &str, device: &str) -> PushClient {
        let token = server.token(user).await;
        let client = ClientInfo {
            device: Some(device.into()),
            ..client_info(user, "bs", &[])
        };
        PushClient::open(&server.ws(), &token, client)
            .await
            .expect("open session")
    }

    async fn send(server: &Server, to: &[&str], content: &str, push: Option<PushPolicy>) -> String {
        let mut m = message(content, Some(to));
        m.title = Some("Fire".into());
        m.push = push;
        server.api().send(&m).await.expect("send").id
    }

    /// A recipient's status and reason.
    async fn status(server: &Server, id: &str, user: &str) -> (Status, Option<String>) {
        let record = server.api().message(id).await.expect("record");
        let r = record
            .recipients
            .unwrap()
            .into_iter()
            .find(|r| r.user == user)
            .expect("recipient");
        (r.status, r.reason)
    }

    async fn wait_status(server: &Server, id: &str, user: &str, wanted: Status) {
        eventually(&format!("{user} to be {wanted:?}"), || async {
            status(server, id, user).await.0 == wanted
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offline_devices_are_pushed_and_the_app_still_gets_the_message() {
        let vendors = Vendors::start().await;
        let server = Server::with_config(&vendors.config(), &[]);
        // bob: only his iPhone is registered, and nothing is connected.
        register(
            &server,
            "bob",
            json!({"device": "iphone", "way": "apns", "token": apns_token(0xb0)}),
        )
        .await;
        // carol: her Android phone is registered and holds a live connection.
        register(
            &server,
            "carol",
            json!({"device": "pixel", "way": "fcm", "token": "carol-fcm"}),
        )
        .await;
        let mut carol = online(&server, "carol", "pixel").await;
        // dave: online on the desktop, his iPhone is not.
        register(
            &server,
            "dave",
            json!({"device": "iphone", "way": "apns", "token": apns_token(0xd0)}),
        )
        .await;
        let mut dave = online(&server, "dave", "desk").await;

        let content = r#"{"text":"Smoke in room 2","room":"2-17"}"#;
        let id = send(&server, &["bob", "carol", "dave"], content, None).await;
        assert_eq!(carol.next_push(WAIT).await.unwrap().id, id);
        assert_eq!(dave.next_push(WAIT).await.unwrap().id, id);
        wait_status(&server, &id, "bob", Status::Pushed).await;
        // bob's push and dave's went out together; carol's online phone got none.
        let mut tokens = vendors.apns_tokens();
        tokens.sort();
        assert_eq!(tokens, [apns_token(0xb0), apns_token(0xd0)]);
        assert!(vendors.fcm_tokens().is_empty());
        let payload = &vendors.apns.accepted()[0].payload;
        assert_eq!(payload["aps"]["alert"]["title"], "Fire");
        assert_eq!(payload["mps"]["id"], id.as_str());
        assert_eq!(
            payload["mps"]["ext"],
            serde_json::from_str::<Value>(content).unwrap()
        );
        // dave and carol received it live: a push result does not move them back.
        assert_eq!(status(&server, &id, "carol").await.0, Status::Delivered);
        assert_eq!(status(&server, &id, "dave").await.0, Status::Delivered);
        let (bob_status, reason) = status(&server, &id, "bob").await;
        assert_eq!((bob_status, reason), (Status::Pushed, None));

        // bob opens the app: the full message comes from the backlog, and is acked as usual.
        let mut bob = online(&server, "bob", "iphone").await;
        let got = bob.next_push(WAIT).await.unwrap();
        assert_eq!(got.id, id);
        assert_eq!(got.event_data.ext.get(), content);
        wait_status(&server, &id, "bob", Status::Delivered).await;
        assert_eq!(bob.ack(std::slice::from_ref(&id)).await.unwrap(), 1);
        assert_eq!(status(&server, &id, "bob").await.0, Status::Acked);
        vendors.clean();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn always_pushes_online_devices_and_never_pushes_none() {
        let vendors = Vendors::start().await;
        let server = Server::with_config(&vendors.config(), &[]);
        register(
            &server,
            "erin",
            json!({"device": "pixel", "way": "fcm", "token": "erin-fcm"}),
        )
        .await;
        let erin = online(&server, "erin", "pixel").await;
        let always = send(&server, &["erin"], r#"{"n":1}"#, Some(PushPolicy::Always)).await;
        eventually("the push of an online device", || async {
            vendors.fcm_tokens().len() == 1
        })
        .await;
        erin.close().await.unwrap();
        server.wait_clients("erin", 0).await;
        let never = send(&server, &["erin"], r#"{"n":2}"#, Some(PushPolicy::Never)).await;
        let offline = send(&server, &["erin"], r#"{"n":3}"#, Some(PushPolicy::Offline)).await;
        wait_status(&server, &offline, "erin", Status::Pushed).await;
        let pushed_ids: Vec<String> = vendors
            .fcm
            .accepted()
            .iter()
            .map(|p| p.message["data"]["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(pushed_ids, [always, offline]);
        assert_eq!(status(&server, &never, "erin").await.0, Status::Pending);
        vendors.clean();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_recorded_and_gone_tokens_removed() {
        let vendors = Vendors::start().await;
        let server = Server::with_config(&vendors.config(), &[]);
        // frank's FCM token is refused; his APNs token is accepted: he counts as pushed.
        vendors.fcm.answer("frank-fcm", FcmError::InvalidArgument);
        register(
            &server,
            "frank",
            json!({"device": "pixel", "way": "fcm", "token": "frank-fcm"}),
        )
        .await;
        // gina's only device is refused too: she fails, with the vendor's reason.
        vendors.fcm.answer("gina-fcm", FcmError::InvalidArgument);
        register(
            &server,
            "gina",
            json!({"device": "pixel", "way": "fcm", "token": "gina-fcm"}),
        )
        .await;
        // hugo's app was uninstalled: APNs says the token is gone.
        vendors
            .apns
            .answer(&apns_token(0x40), ApnsReason::Unregistered);
        register(
            &server,
            "hugo",
            json!({"device": "iphone", "way": "apns", "token": apns_token(0x40)}),
        )
        .await;
        register(
            &server,
            "frank",
            json!({"device": "iphone", "way": "apns", "token": apns_token(0xf0)}),
        )
        .await;

        let id = send(
            &server,
            &["frank", "gina", "hugo"],
            r#"{"text":"hi"}"#,
            None,
        )
        .await;
        wait_status(&server, &id, "hugo", Status::Failed).await;
        wait_status(&server, &id, "gina", Status::Failed).await;
        let (frank, reason) = status(&server, &id, "frank").await;
        assert_eq!((frank, reason), (Status::Pushed, None));
        let (_, gina) = status(&server, &id, "gina").await;
        let gina = gina.expect("a reason");
        assert!(
            gina.starts_with("fcm: ") && gina.contains("INVALID_ARGUMENT"),
            "{gina}"
        );
        let (_, hugo) = status(&server, &id, "hugo").await;
        let hugo = hugo.expect("a reason");
        assert!(
            hugo.starts_with("apns: ") && hugo.contains("Unregistered"),
            "{hugo}"
        );
        // The gone registration is removed at once; the refused ones stay.
        assert!(registrations(&server, "hugo").await.is_empty());
        assert_eq!(
            registrations(&server, "gina").await,
            pairs(&[("pixel", "fcm")])
        );
        let metrics = server.metrics().await;
        assert!(
            metrics.contains(r#"mps_devices_removed_total{reason="gone"} 1"#),
            "{metrics}"
        );
        // A failed recipient is still owed the message: hugo's next login gets it in full.
        let mut hugo = online(&server, "hugo", "iphone").await;
        assert_eq!(
            hugo.next_push(WAIT).await.unwrap().event_data.ext.get(),
            r#"{"text":"hi"}"#
        );
        wait_status(&server, &id, "hugo", Status::Delivered).await;
        // Nothing is pushed to hugo's phone any more.
        let again = send(
            &server,
            &["hugo", "gina"],
            r#"{"text":"again"}"#,
            Some(PushPolicy::Always),
        )
        .await;
        wait_status(&server, &again, "gina", Status::Failed).await;
        assert_eq!(vendors.apns_tokens(), [apns_token(0xf0)]);
        vendors.clean();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_page_subscribes_to_web_push_and_receives_the_encrypted_frame() {
        let vendors = Vendors::start().await;
        let server = Server::with_config(&vendors.config(), &[]);
        // What subscribePush() does: the VAPID key, the browser's subscription, the registration.
        let key = server
            .request("GET", "/api/v1/webpush/vapid-public-key", None, None)
            .await;
        assert_eq!(key.status, 200, "{key:?}");
        let key = json_of(&key)["key"].as_str().unwrap().to_owned();
        let browser = vendors.webpush.subscribe(&key);
        let subscription: Value = serde_json::from_str(&browser.json()).unwrap();
        register(
            &server,
            "iris",
            json!({"device": "firefox", "way": "webpush", "subscription": subscription}),
        )
        .await;

        let content = r#"{"alarm":"fire","room":"2-17"}"#;
        let id = send(&server, &["iris"], content, None).await;
        wait_status(&server, &id, "iris", Status::Pushed).await;
        let delivered = vendors.webpush.delivered();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].endpoint, browser.endpoint);
        let frame: Value = serde_json::from_slice(&delivered[0].plaintext).unwrap();
        assert_eq!(frame["Type"], 3);
        assert_eq!(frame["Message"]["id"], id.as_str());
        assert_eq!(
            frame["Message"]["EventData"]["ext"],
            serde_json::from_str::<Value>(content).unwrap()
        );
        // The browser unsubscribed: the push service answers 410 and the registration goes.
        vendors.webpush.answer(&browser, WebPushAnswer::Gone);
        let id = send(&server, &["iris"], content, None).await;
        wait_status(&server, &id, "iris", Status::Failed).await;
        assert!(registrations(&server, "iris").await.is_empty());
        vendors.clean();
    }
}
