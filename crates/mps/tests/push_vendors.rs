//! The vendor clients (APNs, FCM, Web Push) against local stand-ins that check the real
//! protocols: what arrives, how each vendor answer maps to an outcome, retries, credential
//! renewal, payload limits, the concurrency limit, and configuration errors at start; then the
//! real server pushing an offline user's devices through all three.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mps::config::{ApnsConfig, AppPush, FcmConfig, PushConfig, WebPushConfig};
use mps::push::{Notification, Outcome, Priority, Pushers, Vendor};
use mps::words::{Device, Way};
use mps_standins::{
    ApnsReason, ApnsStandIn, FcmError, FcmStandIn, Subscription, VapidKey, WebPushAnswer,
    WebPushStandIn,
};
use serde_json::json;
use serde_json::value::RawValue;

const APP: &str = "shop";
const APNS_TOKEN: &str = "5a1f3c0e9b7d4a2e8f6c1b3d5e7f9a0b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e0f";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn note(content: &str) -> Notification {
    Notification {
        id: 7_301_234_567_890,
        app: APP.into(),
        title: Some("Alarm".into()),
        kind: 2,
        component: Some("esbm".into()),
        content: Arc::from(RawValue::from_string(content.into()).unwrap()),
        expires: now_ms() + 3_600_000,
        collapse_id: Some("room-2".into()),
        priority: Priority::High,
        formats: Default::default(),
    }
}

fn device(way: Way, token: &str) -> Device {
    Device {
        app: APP.into(),
        user: "alice".into(),
        agent: "ios".into(),
        device: "phone-1".into(),
        way,
        token: token.into(),
        components: vec![],
        refreshed: now_ms(),
    }
}

/// Retries fast so tests do not wait on backoff.
fn base_config() -> PushConfig {
    PushConfig {
        attempts: 3,
        backoff_ms: 5,
        timeout_ms: 5_000,
        ..PushConfig::default()
    }
}

fn apns_config(standin: &ApnsStandIn) -> ApnsConfig {
    ApnsConfig {
        key_file: standin.key_file().to_owned(),
        key_id: ApnsStandIn::KEY_ID.into(),
        team_id: ApnsStandIn::TEAM_ID.into(),
        topic: ApnsStandIn::TOPIC.into(),
        endpoint: standin.endpoint(),
        ca_file: Some(standin.ca_file().to_owned()),
    }
}

fn fcm_config(standin: &FcmStandIn) -> FcmConfig {
    FcmConfig {
        service_account_file: standin.service_account_file().to_owned(),
        endpoint: standin.endpoint(),
        token_uri: None,
        ca_file: Some(standin.ca_file().to_owned()),
    }
}

fn webpush_config(standin: &WebPushStandIn, key_file: &Path) -> WebPushConfig {
    WebPushConfig {
        vapid_key_file: key_file.to_owned(),
        subject: "mailto:ops@example.com".into(),
        allowed_hosts: vec![],
        ca_file: Some(standin.ca_file().to_owned()),
    }
}

fn with_app(mut config: PushConfig, app: AppPush) -> PushConfig {
    config.apps = BTreeMap::from([(APP.to_owned(), app)]);
    config
}

fn vendor(config: &PushConfig, way: Way) -> Arc<dyn Vendor> {
    Pushers::from_config(config)
        .expect("push configuration")
        .get(APP, way)
        .expect("vendor configured")
        .clone()
}

async fn apns_vendor(standin: &ApnsStandIn, config: PushConfig) -> Arc<dyn Vendor> {
    let app = AppPush {
        apns: Some(apns_config(standin)),
        ..AppPush::default()
    };
    vendor(&with_app(config, app), Way::Apns)
}

async fn fcm_vendor(standin: &FcmStandIn, config: PushConfig) -> Arc<dyn Vendor> {
    let app = AppPush {
        fcm: Some(fcm_config(standin)),
        ..AppPush::default()
    };
    vendor(&with_app(config, app), Way::Fcm)
}

/// A Web Push stand-in, a VAPID key, the client and a subscription made with that key.
struct WebPushSetup {
    standin: WebPushStandIn,
    vapid: VapidKey,
    pushers: Pushers,
    subscription: Subscription,
}

impl WebPushSetup {
    async fn start(config: PushConfig) -> WebPushSetup {
        let standin = WebPushStandIn::start().await;
        let vapid = VapidKey::generate();
        let key_file = vapid.write(standin.dir());
        let app = AppPush {
            webpush: Some(webpush_config(&standin, &key_file)),
            ..AppPush::default()
        };
        let pushers = Pushers::from_config(&with_app(config, app)).expect("push configuration");
        let subscription = standin.subscribe(&vapid.public_key);
        WebPushSetup {
            standin,
            vapid,
            pushers,
            subscription,
        }
    }

    fn vendor(&self) -> &Arc<dyn Vendor> {
        self.pushers.get(APP, Way::Webpush).unwrap()
    }

    async fn push(&self, subscription: &Subscription, note: &Notification) -> Outcome {
        self.vendor()
            .push(&device(Way::Webpush, &subscription.json()), note)
            .await
    }
}

fn assert_gone(outcome: Outcome, reason: &str) {
    match outcome {
        Outcome::Gone { reason: got } => assert!(got.contains(reason), "{got}"),
        other => panic!("expected Gone ({reason}), got {other:?}"),
    }
}

fn assert_failed(outcome: Outcome, reason: &str) {
    match outcome {
        Outcome::Failed { reason: got } => assert!(got.contains(reason), "{got}"),
        other => panic!("expected Failed ({reason}), got {other:?}"),
    }
}

fn ttl_of(note: &Notification) -> [u64; 2] {
    let ttl = ((note.expires - now_ms()) / 1000) as u64;
    [ttl, ttl.saturating_sub(1)]
}

// ---------------------------------------------------------------- APNs

#[tokio::test]
async fn apns_sends_the_documented_payload_over_one_http2_connection() {
    let apns = ApnsStandIn::start().await;
    let client = apns_vendor(&apns, base_config()).await;
    let note = note(r#"{"text":"Smoke in room 2","level":3}"#);
    for _ in 0..2 {
        assert_eq!(
            client.push(&device(Way::Apns, APNS_TOKEN), &note).await,
            Outcome::Sent
        );
    }

    let accepted = apns.accepted();
    assert_eq!(accepted.len(), 2);
    let push = &accepted[0];
    assert_eq!(push.token, APNS_TOKEN);
    assert_eq!(push.headers["apns-topic"], ApnsStandIn::TOPIC);
    assert_eq!(push.headers["apns-push-type"], "alert");
    assert_eq!(push.headers["apns-priority"], "10");
    assert_eq!(
        push.headers["apns-expiration"],
        (note.expires / 1000).to_string()
    );
    assert_eq!(push.headers["apns-collapse-id"], "room-2");
    assert_eq!(
        push.payload,
        json!({
            "aps": { "alert": { "title": "Alarm", "body": "Smoke in room 2" } },
            "mps": {
                "id": "7301234567890",
                "type": 2,
                "component": "esbm",
                "ext": { "text": "Smoke in room 2", "level": 3 },
            },
        })
    );
    assert!(apns.violations().is_empty(), "{:?}", apns.violations());
    assert_eq!(apns.traffic().connections(), 1, "one pooled connection");
    assert_eq!(apns.traffic().http2_requests(), 2);
    assert_eq!(
        apns.provider_tokens().len(),
        1,
        "the provider token is reused"
    );
}

#[tokio::test]
async fn apns_normal_priority_and_title_only_alerts() {
    let apns = ApnsStandIn::start().await;
    let client = apns_vendor(&apns, base_config()).await;
    let mut note = note(r#"{"level":3}"#);
    note.priority = Priority::Normal;
    note.collapse_id = None;
    assert_eq!(
        client.push(&device(Way::Apns, APNS_TOKEN), &note).await,
        Outcome::Sent
    );
    let push = &apns.accepted()[0];
    assert_eq!(push.headers["apns-priority"], "5");
    assert!(!push.headers.contains_key("apns-collapse-id"));
    assert_eq!(
        push.payload["aps"]["alert"],
        json!({ "title": "Alarm", "body": "Alarm" })
    );
}

#[tokio::test]
async fn apns_cleanup_answers_mean_the_token_is_gone() {
    let apns = ApnsStandIn::start().await;
    let client = apns_vendor(&apns, base_config()).await;
    let cases = [
        ("aa01", ApnsReason::Unregistered, "410 Unregistered"),
        ("aa02", ApnsReason::BadDeviceToken, "400 BadDeviceToken"),
        (
            "aa03",
            ApnsReason::DeviceTokenNotForTopic,
            "400 DeviceTokenNotForTopic",
        ),
    ];
    for (token, reason, expected) in cases {
        apns.answer(token, reason);
        assert_gone(
            client
                .push(&device(Way::Apns, token), &note("\"hi\""))
                .await,
            expected,
        );
    }
    assert_eq!(apns.traffic().requests(), 3, "no retry of a gone token");

    assert_gone(
        client
            .push(&device(Way::Apns, "not-hex!"), &note("\"hi\""))
            .await,
        "BadDeviceToken",
    );
    assert_eq!(
        apns.traffic().requests(),
        3,
        "a token that is not hex is never sent"
    );
    assert!(apns.violations().is_empty(), "{:?}", apns.violations());
}

#[tokio::test]
async fn apns_retries_429_and_5xx_then_sends() {
    let apns = ApnsStandIn::start().await;
    let client = apns_vendor(&apns, base_config()).await;
    apns.fail_next([ApnsReason::TooManyRequests, ApnsReason::ServiceUnavailable]);
    assert_eq!(
        client
            .push(&device(Way::Apns, APNS_TOKEN), &note("\"hi\""))
            .await,
        Outcome::Sent
    );
    assert_eq!(apns.traffic().requests(), 3);
    assert_eq!(apns.accepted().len(), 1);
}

#[tokio::test]
async fn apns_gives_up_after_the_configured_attempts() {
    let apns = ApnsStandIn::start().await;
    let client = apns_vendor(&apns, base_config()).await;
    apns.fail_next([ApnsReason::ServiceUnavailable; 3]);
    assert_failed(
        client
            .push(&device(Way::Apns, APNS_TOKEN), &note("\"hi\""))
            .await,
        "503 ServiceUnavailable (gave up after 3 attempts)",
    );
    assert_eq!(apns.traffic().requests(), 3);
    assert!(apns.accepted().is_empty());
}

#[tokio::test]
async fn apns_renews_the_provider_token_apns_calls_expired() {
    let apns = ApnsStandIn::start().await;
    let client = apns_vendor(&apns, base_config()).await;
    let device = device(Way::Apns, APNS_TOKEN);
    assert_eq!(client.push(&device, &note("\"one\"")).await, Outcome::Sent);
    apns.expire_provider_token_once();
    assert_eq!(client.push(&device, &note("\"two\"")).await, Outcome::Sent);
    assert_eq!(
        apns.provider_tokens().len(),
        2,
        "a new provider token was signed"
    );
    assert_eq!(apns.traffic().requests(), 3);
    assert_eq!(apns.accepted().len(), 2);
    assert!(apns.violations().is_empty(), "{:?}", apns.violations());
}

#[tokio::test]
async fn apns_payload_over_4_kib_fails_without_a_request() {
    let apns = ApnsStandIn::start().await;
    let client = apns_vendor(&apns, base_config()).await;
    let big = format!("\"{}\"", "x".repeat(4100));
    assert_failed(
        client
            .push(&device(Way::Apns, APNS_TOKEN), &note(&big))
            .await,
        "payload too large",
    );
    assert_eq!(apns.traffic().requests(), 0);
}

#[tokio::test]
async fn the_concurrency_limit_holds_per_vendor_across_apps() {
    let apns = ApnsStandIn::start().await;
    let mut config = PushConfig {
        concurrency: 2,
        ..base_config()
    };
    for app in ["a", "b"] {
        config.apps.insert(
            app.into(),
            AppPush {
                apns: Some(apns_config(&apns)),
                ..AppPush::default()
            },
        );
    }
    let pushers = Arc::new(Pushers::from_config(&config).unwrap());
    apns.traffic().hold();
    let mut pushes = Vec::new();
    for i in 0..6 {
        let pushers = pushers.clone();
        let app = if i % 2 == 0 { "a" } else { "b" };
        pushes.push(tokio::spawn(async move {
            let vendor = pushers.get(app, Way::Apns).unwrap();
            vendor
                .push(&device(Way::Apns, APNS_TOKEN), &note("\"hi\""))
                .await
        }));
    }
    for _ in 0..500 {
        if apns.traffic().in_flight() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give pushes beyond the limit the chance to show up, were the limit not kept.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(apns.traffic().in_flight(), 2);
    apns.traffic().release();
    for push in pushes {
        assert_eq!(push.await.unwrap(), Outcome::Sent);
    }
    assert_eq!(apns.traffic().max_in_flight(), 2);
    assert_eq!(apns.accepted().len(), 6);
}

// ---------------------------------------------------------------- FCM

#[tokio::test]
async fn fcm_sends_the_documented_message_with_one_access_token() {
    let fcm = FcmStandIn::start().await;
    let client = fcm_vendor(&fcm, base_config()).await;
    let note = note(r#""Smoke in room 2""#);
    let ttls = ttl_of(&note);
    for _ in 0..2 {
        assert_eq!(
            client.push(&device(Way::Fcm, "fcm-token-1"), &note).await,
            Outcome::Sent
        );
    }

    let accepted = fcm.accepted();
    assert_eq!(accepted.len(), 2);
    let mut message = accepted[0].message.clone();
    let ttl = message["android"]
        .as_object_mut()
        .unwrap()
        .remove("ttl")
        .unwrap();
    assert!(ttls.iter().any(|t| ttl == format!("{t}s")), "{ttl}");
    assert_eq!(
        message,
        json!({
            "token": "fcm-token-1",
            "notification": { "title": "Alarm", "body": "Smoke in room 2" },
            "data": {
                "id": "7301234567890",
                "type": "2",
                "component": "esbm",
                "ext": "\"Smoke in room 2\"",
            },
            "android": { "priority": "HIGH", "collapse_key": "room-2" },
        })
    );
    assert_eq!(fcm.token_requests(), 1, "the access token is cached");
    assert_eq!(accepted[0].access_token, accepted[1].access_token);
    assert_eq!(fcm.traffic().connections(), 1, "one reused connection");
    assert_eq!(fcm.traffic().http2_requests(), fcm.traffic().requests());
    assert!(fcm.violations().is_empty(), "{:?}", fcm.violations());
}

#[tokio::test]
async fn fcm_error_codes_map_to_outcomes() {
    let fcm = FcmStandIn::start().await;
    let client = fcm_vendor(&fcm, base_config()).await;
    fcm.answer("gone", FcmError::Unregistered);
    assert_gone(
        client.push(&device(Way::Fcm, "gone"), &note("1")).await,
        "404 UNREGISTERED",
    );
    for (token, error, expected) in [
        ("bad", FcmError::InvalidArgument, "400 INVALID_ARGUMENT"),
        (
            "other",
            FcmError::SenderIdMismatch,
            "403 SENDER_ID_MISMATCH",
        ),
        (
            "apns",
            FcmError::ThirdPartyAuthError,
            "401 THIRD_PARTY_AUTH_ERROR",
        ),
    ] {
        fcm.answer(token, error);
        assert_failed(
            client.push(&device(Way::Fcm, token), &note("1")).await,
            expected,
        );
    }
    assert_eq!(
        fcm.token_requests(),
        1,
        "a third-party auth error is not an expired token"
    );
    assert!(fcm.violations().is_empty(), "{:?}", fcm.violations());
}

#[tokio::test]
async fn fcm_backs_off_on_quota_exceeded_and_retries_5xx_then_sends() {
    let fcm = FcmStandIn::start().await;
    let client = fcm_vendor(
        &fcm,
        PushConfig {
            attempts: 4,
            ..base_config()
        },
    )
    .await;
    fcm.fail_next([
        FcmError::QuotaExceeded { retry_after: 1 },
        FcmError::Unavailable,
        FcmError::Internal,
    ]);
    assert_eq!(
        client.push(&device(Way::Fcm, "t"), &note("1")).await,
        Outcome::Sent
    );
    assert_eq!(fcm.accepted().len(), 1);
    // The stand-in counts a request before Retry-After has passed as a violation.
    assert!(fcm.violations().is_empty(), "{:?}", fcm.violations());
}

#[tokio::test]
async fn fcm_gives_up_after_the_configured_attempts() {
    let fcm = FcmStandIn::start().await;
    let client = fcm_vendor(&fcm, base_config()).await;
    fcm.fail_next([FcmError::Unavailable; 3]);
    assert_failed(
        client.push(&device(Way::Fcm, "t"), &note("1")).await,
        "503 UNAVAILABLE (gave up after 3 attempts)",
    );
    assert!(fcm.accepted().is_empty());
}

#[tokio::test]
async fn fcm_fetches_a_new_access_token_after_a_401() {
    let fcm = FcmStandIn::start().await;
    let client = fcm_vendor(&fcm, base_config()).await;
    let device = device(Way::Fcm, "t");
    assert_eq!(client.push(&device, &note("1")).await, Outcome::Sent);
    fcm.expire_access_tokens();
    assert_eq!(client.push(&device, &note("2")).await, Outcome::Sent);
    assert_eq!(fcm.token_requests(), 2);
    let accepted = fcm.accepted();
    assert_ne!(accepted[0].access_token, accepted[1].access_token);
    assert!(fcm.violations().is_empty(), "{:?}", fcm.violations());
}

#[tokio::test]
async fn fcm_renews_the_access_token_before_it_expires() {
    let fcm = FcmStandIn::start().await;
    fcm.set_token_lifetime(Duration::from_secs(2));
    let client = fcm_vendor(&fcm, base_config()).await;
    let device = device(Way::Fcm, "t");
    assert_eq!(client.push(&device, &note("1")).await, Outcome::Sent);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(client.push(&device, &note("2")).await, Outcome::Sent);
    assert_eq!(fcm.token_requests(), 2);
    // Two token requests and two sends: no send was refused with 401.
    assert_eq!(fcm.traffic().requests(), 4);
}

#[tokio::test]
async fn fcm_payload_over_4_kib_fails_without_a_request() {
    let fcm = FcmStandIn::start().await;
    let client = fcm_vendor(&fcm, base_config()).await;
    let big = format!("\"{}\"", "x".repeat(4100));
    assert_failed(
        client.push(&device(Way::Fcm, "t"), &note(&big)).await,
        "payload too large",
    );
    assert_eq!(fcm.traffic().requests(), 0);
}

#[tokio::test]
async fn fcm_refused_service_account_fails_the_push() {
    let fcm = FcmStandIn::start().await;
    let mut account = fcm.service_account().clone();
    account.client_email = "someone-else@mps-test.iam.gserviceaccount.com".into();
    let dir = tempfile::tempdir().unwrap();
    let mut config = fcm_config(&fcm);
    config.service_account_file = account.write(dir.path());
    let client = vendor(
        &with_app(
            base_config(),
            AppPush {
                fcm: Some(config),
                ..AppPush::default()
            },
        ),
        Way::Fcm,
    );
    assert_failed(
        client.push(&device(Way::Fcm, "t"), &note("1")).await,
        "invalid_grant",
    );
    assert_eq!(
        fcm.traffic().requests(),
        1,
        "a refused grant is not retried"
    );
}

// ---------------------------------------------------------------- Web Push

#[tokio::test]
async fn webpush_sends_the_push_frame_encrypted_with_vapid() {
    let setup = WebPushSetup::start(base_config()).await;
    assert_eq!(
        setup.pushers.vapid_public_key(APP),
        Some(setup.vapid.public_key.as_str())
    );
    let note = note(r#"{"text":"Smoke in room 2"}"#);
    let ttls = ttl_of(&note);
    assert_eq!(setup.push(&setup.subscription, &note).await, Outcome::Sent);

    let delivered = setup.standin.delivered();
    assert_eq!(delivered.len(), 1);
    let delivery = &delivered[0];
    assert_eq!(delivery.endpoint, setup.subscription.endpoint);
    let plaintext: serde_json::Value = serde_json::from_slice(&delivery.plaintext).unwrap();
    assert_eq!(
        plaintext,
        json!({
            "Type": 3,
            "Message": {
                "id": "7301234567890",
                "title": "Alarm",
                "type": 2,
                "component": "esbm",
                "EventData": { "ext": { "text": "Smoke in room 2" } },
            },
        })
    );
    assert!(ttls.contains(&delivery.ttl), "{}", delivery.ttl);
    assert_eq!(delivery.urgency.as_deref(), Some("high"));
    assert_eq!(delivery.topic.as_deref(), Some("room-2"));
    assert_eq!(delivery.subject, "mailto:ops@example.com");
    assert!(
        setup.standin.violations().is_empty(),
        "{:?}",
        setup.standin.violations()
    );
}

#[tokio::test]
async fn webpush_answers_map_to_outcomes() {
    let setup = WebPushSetup::start(base_config()).await;
    let gone = setup.standin.subscribe(&setup.vapid.public_key);
    setup.standin.unsubscribe(&gone);
    assert_gone(setup.push(&gone, &note("1")).await, "410");

    let not_found = setup.standin.subscribe(&setup.vapid.public_key);
    setup.standin.answer(&not_found, WebPushAnswer::NotFound);
    assert_gone(setup.push(&not_found, &note("1")).await, "404");

    let too_large = setup.standin.subscribe(&setup.vapid.public_key);
    setup
        .standin
        .answer(&too_large, WebPushAnswer::PayloadTooLarge);
    assert_failed(setup.push(&too_large, &note("1")).await, "413");
    assert_eq!(
        setup.standin.traffic().requests(),
        3,
        "none of these is retried"
    );

    let device = device(Way::Webpush, r#"{"endpoint":"https://x.example/1"}"#);
    assert_gone(
        setup.vendor().push(&device, &note("1")).await,
        "invalid subscription",
    );
    assert_eq!(setup.standin.traffic().requests(), 3);
    assert!(
        setup.standin.violations().is_empty(),
        "{:?}",
        setup.standin.violations()
    );
}

#[tokio::test]
async fn webpush_subscription_made_with_another_key_fails() {
    let setup = WebPushSetup::start(base_config()).await;
    let other = setup.standin.subscribe(&VapidKey::generate().public_key);
    assert_failed(setup.push(&other, &note("1")).await, "403");
}

#[tokio::test]
async fn webpush_endpoints_outside_allowed_hosts_are_not_contacted() {
    let standin = WebPushStandIn::start().await;
    let vapid = VapidKey::generate();
    let mut config = webpush_config(&standin, &vapid.write(standin.dir()));
    config.allowed_hosts = vec!["push.services.mozilla.com".into()];
    let client = vendor(
        &with_app(
            base_config(),
            AppPush {
                webpush: Some(config),
                ..AppPush::default()
            },
        ),
        Way::Webpush,
    );
    let subscription = standin.subscribe(&vapid.public_key);
    assert_gone(
        client
            .push(&device(Way::Webpush, &subscription.json()), &note("1"))
            .await,
        "allowed_hosts",
    );
    assert_eq!(standin.traffic().requests(), 0);
}

#[tokio::test]
async fn webpush_retries_429_after_retry_after_and_5xx_then_sends() {
    let setup = WebPushSetup::start(PushConfig {
        attempts: 4,
        ..base_config()
    })
    .await;
    setup.standin.fail_next([
        WebPushAnswer::TooManyRequests { retry_after: 1 },
        WebPushAnswer::ServerError(503),
        WebPushAnswer::ServerError(500),
    ]);
    assert_eq!(
        setup.push(&setup.subscription, &note("1")).await,
        Outcome::Sent
    );
    assert_eq!(setup.standin.delivered().len(), 1);
    assert!(
        setup.standin.violations().is_empty(),
        "{:?}",
        setup.standin.violations()
    );
}

#[tokio::test]
async fn webpush_gives_up_after_the_configured_attempts() {
    let setup = WebPushSetup::start(base_config()).await;
    setup
        .standin
        .fail_next([WebPushAnswer::ServerError(502); 3]);
    assert_failed(
        setup.push(&setup.subscription, &note("1")).await,
        "gave up after 3 attempts",
    );
    assert!(setup.standin.delivered().is_empty());
}

#[tokio::test]
async fn webpush_payload_over_the_limit_fails_without_a_request() {
    let setup = WebPushSetup::start(base_config()).await;
    let big = format!("\"{}\"", "x".repeat(4000));
    assert_failed(
        setup.push(&setup.subscription, &note(&big)).await,
        "payload too large",
    );
    assert_eq!(setup.standin.traffic().requests(), 0);
}

// ---------------------------------------------------------------- configuration

fn config_error(app: AppPush) -> String {
    match Pushers::from_config(&with_app(base_config(), app)) {
        Ok(_) => panic!("configuration accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn bad_credentials_are_clear_errors_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.p8");

    let apns = ApnsStandIn::start().await;
    let mut config = apns_config(&apns);
    config.key_file = missing.clone();
    let error = config_error(AppPush {
        apns: Some(config.clone()),
        ..AppPush::default()
    });
    assert!(error.contains("[push.apps.shop.apns]"), "{error}");
    assert!(error.contains("missing.p8"), "{error}");

    config.key_file = garbage.clone();
    let error = config_error(AppPush {
        apns: Some(config.clone()),
        ..AppPush::default()
    });
    assert!(error.contains("not a PKCS#8 P-256 key"), "{error}");

    config.key_file = apns.key_file().to_owned();
    config.ca_file = Some(missing.clone());
    let error = config_error(AppPush {
        apns: Some(config),
        ..AppPush::default()
    });
    assert!(error.contains("ca_file"), "{error}");

    let fcm = FcmStandIn::start().await;
    let mut config = fcm_config(&fcm);
    config.service_account_file = garbage.clone();
    let error = config_error(AppPush {
        fcm: Some(config),
        ..AppPush::default()
    });
    assert!(error.contains("[push.apps.shop.fcm]"), "{error}");
    assert!(error.contains("not a service-account JSON"), "{error}");

    let standin = WebPushStandIn::start().await;
    let key_file = VapidKey::generate().write(dir.path());
    let mut config = webpush_config(&standin, &garbage);
    let error = config_error(AppPush {
        webpush: Some(config.clone()),
        ..AppPush::default()
    });
    assert!(error.contains("[push.apps.shop.webpush]"), "{error}");
    assert!(error.contains("not a P-256 private key"), "{error}");

    config.vapid_key_file = key_file;
    config.subject = "ops@example.com".into();
    let error = config_error(AppPush {
        webpush: Some(config),
        ..AppPush::default()
    });
    assert!(error.contains("mailto:"), "{error}");
}

#[test]
fn the_server_refuses_to_start_with_a_bad_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "{data}"
[push.apps.shop.apns]
key_file = "{data}/AuthKey_NOPE.p8"
key_id = "NOPE"
team_id = "TEAM123456"
topic = "com.example.mps"
"#,
        data = dir.path().display()
    );
    let file = dir.path().join("mps.toml");
    std::fs::write(&file, toml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mps"))
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[push.apps.shop.apns]"), "{stderr}");
    assert!(stderr.contains("AuthKey_NOPE.p8"), "{stderr}");
}

// ---------------------------------------------------------------- the server

fn toml_path(path: &Path) -> String {
    path.display().to_string()
}

#[tokio::test]
async fn the_server_pushes_an_offline_users_devices_through_each_vendor() {
    let apns = ApnsStandIn::start().await;
    let fcm = FcmStandIn::start().await;
    let webpush = WebPushStandIn::start().await;
    let vapid = VapidKey::generate();
    let toml = format!(
        r#"
[push]
attempts = 2
backoff_ms = 10

[push.apps.default.apns]
key_file = "{apns_key}"
key_id = "{key_id}"
team_id = "{team_id}"
topic = "{topic}"
endpoint = "{apns_endpoint}"
ca_file = "{apns_ca}"

[push.apps.default.fcm]
service_account_file = "{fcm_account}"
endpoint = "{fcm_endpoint}"
ca_file = "{fcm_ca}"

[push.apps.default.webpush]
vapid_key_file = "{vapid_key}"
subject = "mailto:ops@example.com"
allowed_hosts = ["127.0.0.1"]
ca_file = "{webpush_ca}"
"#,
        apns_key = toml_path(apns.key_file()),
        key_id = ApnsStandIn::KEY_ID,
        team_id = ApnsStandIn::TEAM_ID,
        topic = ApnsStandIn::TOPIC,
        apns_endpoint = apns.endpoint(),
        apns_ca = toml_path(apns.ca_file()),
        fcm_account = toml_path(fcm.service_account_file()),
        fcm_endpoint = fcm.endpoint(),
        fcm_ca = toml_path(fcm.ca_file()),
        vapid_key = toml_path(&vapid.write(webpush.dir())),
        webpush_ca = toml_path(webpush.ca_file()),
    );
    let server = common::Server::with_config(&toml, &[]);
    let alice = format!("Bearer {}", server.token("alice").await);

    let key = server
        .request("GET", "/api/v1/webpush/vapid-public-key", None, None)
        .await;
    assert_eq!(key.status, 200, "{key:?}");
    let key: serde_json::Value = serde_json::from_str(&key.body).unwrap();
    assert_eq!(key["key"], vapid.public_key.as_str());
    let browser = webpush.subscribe(key["key"].as_str().unwrap());
    let subscription: serde_json::Value = serde_json::from_str(&browser.json()).unwrap();
    for device in [
        json!({"device": "iphone", "way": "apns", "token": APNS_TOKEN}),
        json!({"device": "pixel", "way": "fcm", "token": "fcm-token-1"}),
        json!({"device": "laptop", "way": "webpush", "subscription": subscription}),
    ] {
        let body = device.to_string();
        let created = server
            .request("POST", "/api/v1/devices", Some(&alice), Some(&body))
            .await;
        assert_eq!(created.status, 201, "{created:?}");
    }

    let message = json!({"receiver": ["alice"], "title": "Alarm", "component": "esbm",
                         "content": {"text": "Smoke in room 2"}});
    let sent = server
        .admin_post("/api/v1/messages", &message.to_string())
        .await;
    assert_eq!(sent.status, 201, "{sent:?}");
    let id = serde_json::from_str::<serde_json::Value>(&sent.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    common::eventually("a push at every vendor", || async {
        apns.accepted().len() == 1 && fcm.accepted().len() == 1 && webpush.delivered().len() == 1
    })
    .await;
    assert_eq!(apns.accepted()[0].payload["mps"]["id"], id.as_str());
    assert_eq!(
        apns.accepted()[0].payload["aps"]["alert"],
        json!({"title": "Alarm", "body": "Smoke in room 2"})
    );
    assert_eq!(fcm.accepted()[0].message["data"]["id"], id.as_str());
    let frame: serde_json::Value =
        serde_json::from_slice(&webpush.delivered()[0].plaintext).unwrap();
    assert_eq!(frame["Message"]["id"], id.as_str());
    assert_eq!(
        frame["Message"]["EventData"]["ext"]["text"],
        "Smoke in room 2"
    );
    common::eventually("the recipient marked pushed", || async {
        let record = server.admin("GET", &format!("/api/v1/messages/{id}")).await;
        record.body.contains(r#""status":"pushed""#)
    })
    .await;

    // APNs says the phone's token is gone: its registration goes, the others stay.
    apns.answer(APNS_TOKEN, ApnsReason::Unregistered);
    let sent = server
        .admin_post("/api/v1/messages", &message.to_string())
        .await;
    assert_eq!(sent.status, 201, "{sent:?}");
    common::eventually("the gone token removed", || async {
        let devices = server.admin("GET", "/api/v1/devices?user=alice").await;
        !devices.body.contains("iphone") && devices.body.contains("pixel")
    })
    .await;
    common::eventually("the other vendors pushed again", || async {
        fcm.accepted().len() == 2 && webpush.delivered().len() == 2
    })
    .await;
    for violations in [apns.violations(), fcm.violations(), webpush.violations()] {
        assert!(violations.is_empty(), "{violations:?}");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"mps_push_total{way="apns",outcome="gone"} 1"#),
        "{metrics}"
    );
}
